/**
 * Position probe for the GPU machine: does a subgroup-matrix product's f32 result for one (row, key) pair
 * depend on where the pair sits in the 16×16 fragment? The kernels' overlapping last blocks compute the
 * same pair at shifted positions (the forward's last key block starts at Nk − Bc, the dK/dV kernel's last
 * workgroup at Nk − 16·W), and edge.test.ts's f16 ±1e4 case needs the backward's S to be the forward's bit
 * for bit. For T tiles of Q (32 rows) and K (32 keys), D = 16, f16 values of scale 100: S from rows
 * 0..15 × keys 0..15 against S from rows `shift`..`shift`+15 (and keys likewise); prints how many of the
 * shared pairs differ, and by how many f32 ulps at most.
 * `bash .gpu/enter.sh node dist/bench/variants/probe-position.js`
 */
import { defaultGpu } from '../../src/webgpu/device.js';
import { decodeF16, encodeF16 } from '../../src/f16.js';
import { MATRIX_ENABLES } from '../../src/webgpu/kernels/matrix.js';
import { randomF16, runOnce } from './util.js';

const T = 4096;
const [qb, kb] = [11, 12].map((seed) => encodeF16(Float64Array.from(decodeF16(randomF16(T * 512, seed)), (v) => v * 100)));
const { device } = await defaultGpu();
// Output per tile: 9 variants (row shift a, key shift b for a, b in {0, 3, 8}) × 256 results.
const shifts = [0, 3, 8];
const code = `${MATRIX_ENABLES}
@group(0) @binding(0) var<storage, read> q: array<f16>;
@group(0) @binding(1) var<storage, read> k: array<f16>;
@group(0) @binding(2) var<storage, read_write> s: array<f32>;
@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wid: vec3u) {
  let t = wid.x;
  let o = t * 512u;
${shifts
  .flatMap((a, ia) =>
    shifts.map(
      (b, ib) => `  {
    let x = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&q, o + ${a * 16}u, 16u);
    let y = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&k, o + ${b * 16}u, 16u);
    subgroupMatrixStore<row_major>(&s, (t * 9u + ${ia * 3 + ib}u) * 256u, subgroupMatrixMultiplyAccumulate(x, y, subgroup_matrix_result<f32, 16, 16>()), 16u);
  }`,
    ),
  )
  .join('\n')}
}`;
const [bytes] = await runOnce(device, code, [qb, kb], [T * 9 * 256 * 4], T);
const s = new Float32Array(bytes);
const ulp = (x: number) => 2 ** (Math.floor(Math.log2(Math.max(Math.abs(x), 2 ** -126))) - 23);
for (let ia = 0; ia < 3; ia++) {
  for (let ib = 0; ib < 3; ib++) {
    if (ia === 0 && ib === 0) continue;
    const [a, b] = [shifts[ia], shifts[ib]];
    let [n, off, worst] = [0, 0, 0];
    for (let t = 0; t < T; t++) {
      // Row R (of the tile's 32) and key C appear at (R, C) in variant (0, 0) and at (R − a, C − b) in (a, b).
      for (let R = a; R < 16; R++) {
        for (let C = b; C < 16; C++) {
          const x = s[(t * 9) * 256 + R * 16 + C];
          const y = s[(t * 9 + ia * 3 + ib) * 256 + (R - a) * 16 + (C - b)];
          n++;
          if (x !== y) {
            off++;
            worst = Math.max(worst, Math.abs(x - y) / ulp(x));
          }
        }
      }
    }
    console.log(`rows shifted by ${a}, keys by ${b}: ${off} of ${n} results differ (${((100 * off) / n).toFixed(2)}%), by up to ${worst.toFixed(1)} ulp`);
  }
}
