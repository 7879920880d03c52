/**
 * Lab notebook: the subgroup-matrix decode kernel on small shapes against the float64 reference, row by
 * row (out and lse errors), to find where it goes wrong. Run: node dist/bench/variants/debug-decode-matrix.js
 */
import { checkForward } from '../../src/problem.js';
import { standardForward } from '../../src/reference/index.js';
import { toF64 } from '../../src/tensor.js';
import { decodeFits } from '../../src/webgpu/decode.js';
import { defaultGpu } from '../../src/webgpu/device.js';
import { webgpuDecodeForward } from '../../src/webgpu/index.js';
import { inputs } from '../../test/util.js';
import { decodeMatrixWGSL } from '../../src/webgpu/kernels/decode-matrix.js';

const gpu = await defaultGpu();
for (const c of [
  { B: 1, H: 2, Hkv: 1, Nq: 1, Nk: 16, D: 16 },
  { B: 1, H: 2, Hkv: 1, Nq: 1, Nk: 5, D: 16 },
  { B: 1, H: 2, Hkv: 1, Nq: 1, Nk: 48, D: 16 },
  { B: 1, H: 4, Hkv: 1, Nq: 1, Nk: 300, D: 64 },
]) {
  const { q, k, v } = inputs(c, 'f16', 'BNHD');
  const p = checkForward(q, k, v, {});
  const choice = decodeFits(p, gpu, 'matrix')!;
  const got = await webgpuDecodeForward(p, gpu, choice, q, k, v);
  const ref = standardForward(p, toF64(q), toF64(k), toF64(v));
  const out = toF64(got.out as never);
  const lse = toF64(got.lse as never);
  console.log(`\n${choice.kernel} ${JSON.stringify(c)}`);
  for (let h = 0; h < c.H; h++) {
    let e = 0;
    for (let d = 0; d < c.D; d++) e = Math.max(e, Math.abs(out[h * c.D + d] - ref.out[h * c.D + d]));
    console.log(`head ${h}: out err ${e.toExponential(2)}  lse ${lse[h].toFixed(4)} ref ${ref.lse[h].toFixed(4)}`);
    console.log(`  got ${Array.from(out.subarray(h * c.D, h * c.D + 8), (x) => x.toFixed(3)).join(' ')}`);
    console.log(`  ref ${Array.from(ref.out.subarray(h * c.D, h * c.D + 8), (x) => x.toFixed(3)).join(' ')}`);
  }
}

// Micro-kernels: the fragment layouts this kernel assumes, on their own.
async function micro(name: string, body: string, inputs: Float32Array, n: number, WG = 32): Promise<Float32Array> {
  const code = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
var<workgroup> F: array<f32, 273>;
var<workgroup> T: array<f16, 1024>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lane: u32) {
  for (var e = lane; e < 1024u; e += ${WG}u) { T[e] = f16(src[e]); }
  workgroupBarrier();
${body}
  workgroupBarrier();
  for (var e = lane; e < 273u; e += ${WG}u) { dst[e] = F[e]; }
}`;
  const d = gpu.device;
  const module = d.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  for (const m of info.messages) console.log(`${name}: ${m.type} ${m.message}`);
  const pipe = await d.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const a = d.createBuffer({ size: 4096, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  d.queue.writeBuffer(a, 0, inputs);
  const o = d.createBuffer({ size: 273 * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const r = d.createBuffer({ size: 273 * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = d.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, d.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: a } }, { binding: 1, resource: { buffer: o } }] }));
  pass.dispatchWorkgroups(1);
  pass.end();
  enc.copyBufferToBuffer(o, 0, r, 0, 273 * 4);
  d.queue.submit([enc.finish()]);
  await r.mapAsync(GPUMapMode.READ);
  return new Float32Array(r.getMappedRange().slice(0, n * 4));
}
{
  // T[0..256): A [row][k] (row-major 16×16); T[256..512): B [n][k] (B's column n contiguous).
  const x = new Float32Array(1024);
  for (let i = 0; i < 512; i++) x[i] = ((i * 7) % 11) - 5;
  for (let i = 768; i < 1024; i++) x[i] = 1;
  const A = (r: number, kk: number) => x[r * 16 + kk];
  const Bt = (n: number, kk: number) => x[256 + n * 16 + kk];
  const got = await micro('AB', `  let a = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&T, 0u, 16u);
  let b = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&T, 256u, 16u);
  var c = subgroup_matrix_result<f32, 16, 16>();
  c = subgroupMatrixMultiplyAccumulate(a, b, c);
  subgroupMatrixStore<col_major>(&F, 0u, c, 16u);`, x, 256);
  let err = 0;
  for (let r = 0; r < 16; r++) for (let n = 0; n < 16; n++) {
    let want = 0;
    for (let kk = 0; kk < 16; kk++) want += A(r, kk) * Bt(n, kk);
    err = Math.max(err, Math.abs(got[n * 16 + r] - want));
  }
  console.log(`A·Bᵀ stored col_major: max err ${err}; got[0..4] ${Array.from(got.subarray(0, 4)).join(' ')}`);
  const ones = await micro('ones', `  let p = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, col_major>(&T, 0u, 16u);
  let o = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&T, 768u, 16u);
  var c = subgroup_matrix_result<f32, 16, 16>();
  c = subgroupMatrixMultiplyAccumulate(p, o, c);
  subgroupMatrixStore<col_major>(&F, 0u, c, 16u);`, x, 256);
  let e2 = 0;
  for (let r = 0; r < 16; r++) {
    let want = 0;
    for (let kk = 0; kk < 16; kk++) want += x[kk * 16 + r];
    e2 = Math.max(e2, Math.abs(ones[r] - want));
  }
  console.log(`P·1 (P col_major): max err ${e2}; got[0..4] ${Array.from(ones.subarray(0, 4)).join(' ')}`);
  console.log(`AB ${JSON.stringify(Array.from(got))}`);
  console.log(`ONES ${JSON.stringify(Array.from(ones))}`);
  const wide = await micro('AB128', `  let a = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&T, 0u, 16u);
  let b = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&T, 256u, 16u);
  var c = subgroup_matrix_result<f32, 16, 16>();
  c = subgroupMatrixMultiplyAccumulate(a, b, c);
  if (lane < 32u) { subgroupMatrixStore<col_major>(&F, 0u, c, 16u); }`, x, 256, 128);
  console.log(`AB128 ${JSON.stringify(Array.from(wide))}`);
}
{
  const code = decodeMatrixWGSL({ D: 16, dtype: 'f16', SGS: 32, W: 4, causal: false, cache: false, paged: false, split: false }, 49152);
  const info = await gpu.device.createShaderModule({ code }).getCompilationInfo();
  console.log(`decodeMatrix WGSL: ${info.messages.length} messages`);
  for (const m of info.messages) console.log(`  ${m.type} ${m.lineNum}:${m.linePos} ${m.message}`);
}
process.exit(0);
