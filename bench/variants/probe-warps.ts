/**
 * Probe for subgroup-matrix operations at per-warp offsets (workgroups of several subgroups), on the GPU
 * machine. Each of W warps copies its own 16×16 block through a fragment: loaded from storage or from
 * workgroup memory at an offset that depends on its warp, multiplied by the identity, stored at a per-warp
 * offset. Prints, per way of naming the warp and per path, how many blocks came back right.
 */
import { defaultGpu } from '../../src/webgpu/device.js';
import { encodeF16 } from '../../src/f16.js';

const W = 4;
const n = 16 * 16 * W;
const A = Float64Array.from({ length: n }, (_, i) => (i % 61) - 30);
const { device } = await defaultGpu();
const warpIds: Record<string, { param: string; expr: string }> = {
  'local_invocation_index / 32': { param: '', expr: 'lid / 32u' },
  subgroup_id: { param: ', @builtin(subgroup_id) sid: u32', expr: 'sid' },
};
const paths: Record<string, string> = {
  storage: `let x = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&a, w * 256u, 16u);`,
  workgroup: `for (var e = lid; e < ${n}u; e += ${32 * W}u) { T[e] = a[e]; }
  workgroupBarrier();
  let x = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&T, w * 256u, 16u);`,
};
for (const [idName, id] of Object.entries(warpIds)) {
  for (const [pathName, load] of Object.entries(paths)) {
    const code = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> eye: array<f16>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
var<workgroup> T: array<f16, ${n}>;
@compute @workgroup_size(${32 * W})
fn main(@builtin(local_invocation_index) lid: u32${id.param}) {
  let w = ${id.expr};
  ${load}
  let e = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&eye, 0u, 16u);
  let y = subgroupMatrixMultiplyAccumulate(x, e, subgroup_matrix_result<f32, 16, 16>());
  subgroupMatrixStore<row_major>(&c, w * 256u, y, 16u);
}`;
    try {
      device.pushErrorScope('validation');
      const module = device.createShaderModule({ code });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === 'error');
      const pipe = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      const err = await device.popErrorScope();
      if (errors.length || err) {
        console.log(`${idName}, ${pathName}: does not compile: ${(errors[0]?.message ?? err?.message ?? '').slice(0, 300)}`);
        continue;
      }
      const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
      const mk = (data: ArrayBufferView, size = data.byteLength) => {
        const buf = device.createBuffer({ size, usage: S });
        device.queue.writeBuffer(buf, 0, data.buffer, data.byteOffset, data.byteLength);
        return buf;
      };
      const ba = mk(encodeF16(A));
      const be = mk(encodeF16(Float64Array.from({ length: 256 }, (_, i) => (i % 17 === 0 ? 1 : 0))));
      const bc = mk(new Float32Array(n).fill(-999));
      const rd = device.createBuffer({ size: 4 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      const bind = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [ba, be, bc].map((buffer, binding) => ({ binding, resource: { buffer } })) });
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(pipe);
      pass.setBindGroup(0, bind);
      pass.dispatchWorkgroups(1);
      pass.end();
      enc.copyBufferToBuffer(bc, 0, rd, 0, 4 * n);
      device.queue.submit([enc.finish()]);
      await rd.mapAsync(GPUMapMode.READ);
      const C = new Float32Array(rd.getMappedRange().slice(0));
      const right = Array.from({ length: W }, (_, w) => C.subarray(256 * w, 256 * (w + 1)).every((x, i) => x === A[256 * w + i]));
      console.log(`${idName}, ${pathName}: blocks right ${right.map((r, w) => `${w}:${r ? 'yes' : 'NO'}`).join(' ')}; block 1 starts ${Array.from(C.subarray(256, 260)).join(',')}`);
    } catch (e) {
      console.log(`${idName}, ${pathName}: threw ${(e as Error).message.slice(0, 300)}`);
    }
  }
}
