/**
 * Accumulation probe for the GPU machine: how exact is a subgroup-matrix product's f32 sum? For T tiles
 * of S = Q Kᵀ (16×16, D = 16, f16 values of scale 100 as in the ±1e4 edge test, so |S| reaches 1e5 and
 * an f32 ulp of S is up to 8e-3), one 16×16×16 multiply-accumulate from zero against the same sum by
 * f32 fused multiply-adds in d order, both against the exact sum (float64: products of f16 values and
 * their sums of 16 are exact there). Prints max and mean |error| in f32 ulps of the exact value.
 * `bash .gpu/enter.sh node dist/bench/variants/probe-accumulate.js`
 */
import { defaultGpu } from '../../src/webgpu/device.js';
import { decodeF16, encodeF16 } from '../../src/f16.js';
import { MATRIX_ENABLES } from '../../src/webgpu/kernels/matrix.js';
import { randomF16, runOnce } from './util.js';

const T = 4096; // tiles
const [qb, kb] = [11, 12].map((seed) => encodeF16(Float64Array.from(decodeF16(randomF16(T * 256, seed)), (v) => v * 100)));
const [q, k] = [decodeF16(qb), decodeF16(kb)]; // the f16 values the GPU sees
const { device } = await defaultGpu();
const code = `${MATRIX_ENABLES}
@group(0) @binding(0) var<storage, read> q: array<f16>;
@group(0) @binding(1) var<storage, read> k: array<f16>;
@group(0) @binding(2) var<storage, read_write> mma: array<f32>;
@group(0) @binding(3) var<storage, read_write> fused: array<f32>;
@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(subgroup_invocation_id) lane: u32) {
  let t = wid.x + wid.y * 65535u;
  let o = t * 256u;
  // Q rows r (16 × D, row-major), K rows c: S[r][c] = Σ_d Q[r][d] K[c][d].
  let a = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&q, o, 16u);
  let b = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&k, o, 16u);
  let s = subgroupMatrixMultiplyAccumulate(a, b, subgroup_matrix_result<f32, 16, 16>());
  subgroupMatrixStore<row_major>(&mma, o, s, 16u);
  for (var e = lane; e < 256u; e += 32u) {
    let r = e / 16u;
    let c = e % 16u;
    var x = 0.0;
    for (var d = 0u; d < 16u; d++) { x = fma(f32(q[o + r * 16u + d]), f32(k[o + c * 16u + d]), x); }
    fused[o + e] = x;
  }
}`;
const [mma, fma] = (await runOnce(device, code, [qb, kb], [T * 1024, T * 1024], T)).map((b) => new Float32Array(b));
const ulp = (x: number) => 2 ** (Math.floor(Math.log2(Math.max(Math.abs(x), 2 ** -126))) - 23);
const stats = { mma: { max: 0, sum: 0, off: 0 }, fma: { max: 0, sum: 0, off: 0 } };
for (let t = 0; t < T; t++) {
  for (let r = 0; r < 16; r++) {
    for (let c = 0; c < 16; c++) {
      let exact = 0;
      for (let d = 0; d < 16; d++) exact += q[t * 256 + r * 16 + d] * k[t * 256 + c * 16 + d];
      const e = t * 256 + r * 16 + c;
      for (const [name, got] of [['mma', mma[e]], ['fma', fma[e]]] as const) {
        const u = Math.abs(got - exact) / ulp(exact);
        const s = stats[name];
        s.max = Math.max(s.max, u);
        s.sum += u;
        if (got !== Math.fround(exact)) s.off++;
      }
    }
  }
}
const n = T * 256;
for (const [name, s] of Object.entries(stats)) {
  console.log(`${name}: max ${s.max.toFixed(2)} ulp, mean ${(s.sum / n).toFixed(3)} ulp, ${((100 * s.off) / n).toFixed(1)}% not the correctly rounded f32 (${n} sums of 16 products, |S| up to ${fma.reduce((a, x) => Math.max(a, Math.abs(x)), 0).toExponential(1)})`);
}
