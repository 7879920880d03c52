/**
 * Semantics probe for subgroup-matrix loads on the GPU machine: C = L·R with L, R loaded from known
 * arrays in each layout, compared against the product under each reading of the layout.
 */
import { defaultGpu } from '../../src/webgpu/device.js';
import { encodeF16 } from '../../src/f16.js';

const n = 16;
const A = Array.from({ length: 256 }, (_, i) => ((i * 7) % 13) - 6);
const B = Array.from({ length: 256 }, (_, i) => ((i * 5) % 11) - 5);
const at = (X: number[], layout: string, i: number, j: number) => (layout === 'row_major' ? X[i * n + j] : X[j * n + i]);
const { device } = await defaultGpu();
for (const ll of ['col_major', 'row_major']) {
  for (const rl of ['col_major', 'row_major']) {
    const code = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> b: array<f16>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(32)
fn main() {
  let l = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, ${ll}>(&a, 0u, 16u);
  let r = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, ${rl}>(&b, 0u, 16u);
  let acc = subgroupMatrixMultiplyAccumulate(l, r, subgroup_matrix_result<f32, 16, 16>());
  subgroupMatrixStore<row_major>(&c, 0u, acc, 16u);
}`;
    const mk = (data: ArrayBufferView, usage: number) => {
      const buf = device.createBuffer({ size: data.byteLength, usage });
      device.queue.writeBuffer(buf, 0, data.buffer, data.byteOffset, data.byteLength);
      return buf;
    };
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const ba = mk(encodeF16(Float64Array.from(A)), S);
    const bb = mk(encodeF16(Float64Array.from(B)), S);
    const bc = mk(new Float32Array(256), S);
    const rd = device.createBuffer({ size: 1024, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const module = device.createShaderModule({ code });
    const pipe = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const bind = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [ba, bb, bc].map((buffer, binding) => ({ binding, resource: { buffer } })) });
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
    rd.unmap();
    const verdicts: string[] = [];
    for (const la of ['col_major', 'row_major']) {
      for (const lb of ['col_major', 'row_major']) {
        for (const st of ['row_major', 'col_major']) {
          let ok = true;
          for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
            let s = 0;
            for (let t = 0; t < n; t++) s += at(A, la, i, t) * at(B, lb, t, j);
            if (s !== at(Array.from(C), st, i, j)) ok = false;
          }
          if (ok) verdicts.push(`L read as ${la}, R read as ${lb}, C stored ${st}`);
        }
      }
    }
    console.log(`load L ${ll}, R ${rl}: matches ${verdicts.join('; ') || 'nothing'}`);
  }
}
