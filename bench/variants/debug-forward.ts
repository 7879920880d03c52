/** Debug print for the subgroup-matrix forward: which (row, key) pairs of P·V are lost. */
import { forward, tensor } from '../../src/index.js';
import { encodeF16 } from '../../src/f16.js';
import { toF64 } from '../../src/tensor.js';

const [B, H, Nq, Nk, D] = [1, 1, 32, 64, 16];
const mk = (n: number, f: (i: number) => number) => tensor(encodeF16(Float64Array.from({ length: n }, (_, i) => f(i))), [B, n / (H * D), H, D], 'f16');
const q = mk(Nq * D, (i) => Math.sin(i * 1.3));
const k = mk(Nk * D, () => 0);
for (let g = 0; g < 4; g++) {
  const v = mk(Nk * D, (i) => (Math.floor(i / D) === (i % D) + 16 * g ? 1 : 0));
  const got = toF64((await forward(q, k, v, { backend: 'webgpu' })).out);
  const lost: string[] = [];
  for (let r = 0; r < Nq; r++) for (let d = 0; d < D; d++) if (Math.round(got[r * D + d] * 64) !== 1) lost.push(`(${r},${d + 16 * g}:${(got[r * D + d] * 64).toFixed(2)})`);
  console.log(`keys ${16 * g}..${16 * g + 15}: wrong (row,key:64·O) ${lost.join(' ') || 'none'}`);
}
