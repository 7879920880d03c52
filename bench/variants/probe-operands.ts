/**
 * Probe for subgroup-matrix loads by operand, layout, memory and stride, on the GPU machine. A 16×16
 * block X is loaded as the left operand (times the identity) or the right one (the identity times it),
 * from a storage buffer or from workgroup memory, row_major or col_major, with a row stride of 16 or
 * 24 elements; the product, stored row_major, must be X as that layout reads it.
 */
import { defaultGpu } from '../../src/webgpu/device.js';
import { encodeF16 } from '../../src/f16.js';

const { device } = await defaultGpu();
const size = 24 * 16;
const A = Float64Array.from({ length: size }, (_, i) => (i % 97) - 48);
for (const role of ['left', 'right'] as const) {
  for (const layout of ['row_major', 'col_major'] as const) {
    for (const memory of ['storage', 'workgroup'] as const) {
      for (const stride of [16, 24]) {
        const type = `subgroup_matrix_${role}<f16, 16, 16>`;
        const other = `subgroup_matrix_${role === 'left' ? 'right' : 'left'}<f16, 16, 16>`;
        const src = memory === 'storage' ? '&a' : '&T';
        const code = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> eye: array<f16>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
var<workgroup> T: array<f16, ${size}>;
@compute @workgroup_size(32)
fn main(@builtin(local_invocation_index) lid: u32) {
  for (var e = lid; e < ${size}u; e += 32u) { T[e] = a[e]; }
  workgroupBarrier();
  let x = subgroupMatrixLoad<${type}, ${layout}>(${src}, 0u, ${stride}u);
  let i = subgroupMatrixLoad<${other}, row_major>(&eye, 0u, 16u);
  let y = subgroupMatrixMultiplyAccumulate(${role === 'left' ? 'x, i' : 'i, x'}, subgroup_matrix_result<f32, 16, 16>());
  subgroupMatrixStore<row_major>(&c, 0u, y, 16u);
}`;
        const name = `${role} ${layout} from ${memory}, stride ${stride}`;
        device.pushErrorScope('validation');
        const module = device.createShaderModule({ code });
        const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
        const pipe = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
        const err = await device.popErrorScope();
        if (errors.length || err) {
          console.log(`${name}: does not compile: ${(errors[0]?.message ?? err?.message ?? '').slice(0, 200)}`);
          continue;
        }
        const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
        const mk = (data: ArrayBufferView) => {
          const buf = device.createBuffer({ size: data.byteLength, usage: S });
          device.queue.writeBuffer(buf, 0, data.buffer, data.byteOffset, data.byteLength);
          return buf;
        };
        const bc = mk(new Float32Array(256));
        const entries = [mk(encodeF16(A)), mk(encodeF16(Float64Array.from({ length: 256 }, (_, i) => (i % 17 === 0 ? 1 : 0)))), bc];
        const rd = device.createBuffer({ size: 1024, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
        const bind = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: entries.map((buffer, binding) => ({ binding, resource: { buffer } })) });
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setPipeline(pipe);
        pass.setBindGroup(0, bind);
        pass.dispatchWorkgroups(1);
        pass.end();
        enc.copyBufferToBuffer(bc, 0, rd, 0, 1024);
        device.queue.submit([enc.finish()]);
        await rd.mapAsync(GPUMapMode.READ);
        const C = new Float32Array(rd.getMappedRange().slice(0));
        const reading = (l: string) => (i: number, j: number) => (l === 'row_major' ? A[i * stride + j] : A[j * stride + i]);
        const matches = ['row_major', 'col_major'].filter((l) => {
          const x = reading(l);
          for (let i = 0; i < 16; i++) for (let j = 0; j < 16; j++) if (C[i * 16 + j] !== x(i, j)) return false;
          return true;
        });
        console.log(`${name}: ${matches.length ? `reads as ${matches.join(', ')}${matches[0] === layout ? '' : '  <-- NOT as asked'}` : `matches neither; C[0..4] = ${Array.from(C.subarray(0, 4)).join(',')}`}`);
      }
    }
  }
}
