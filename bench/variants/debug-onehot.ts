/**
 * Debug print for the f16 forward on one-hot rows (edge.test.ts's logits of ±1e4): the elements of out
 * that differ from the float64 reference, with the row's two largest logits and whether the value is
 * one of v's rows.
 */
import { forward } from '../../src/index.js';
import { toF64 } from '../../src/tensor.js';
import { inputs, randomTensor } from '../../test/util.js';

const [Nq, Nk, H, D] = [67, 131, 2, 16];
const t = inputs({ B: 1, H, Hkv: H, Nq, Nk, D }, 'f16', 'BNHD');
const q = randomTensor('f16', [1, Nq, H, D], 11, 100);
const k = randomTensor('f16', [1, Nk, H, D], 12, 100);
const backend = (process.argv[2] ?? 'webgpu') as 'webgpu' | 'cpu';
for (const causal of [false, true]) {
  const got = toF64((await forward(q, k, t.v, { backend, causal })).out);
  const ref = toF64((await forward(q, k, t.v, { backend: 'reference', causal })).out);
  const [qf, kf, vf] = [toF64(q), toF64(k), toF64(t.v)];
  let shown = 0;
  for (let i = 0; i < Nq && shown < 12; i++)
    for (let h = 0; h < H && shown < 12; h++) {
      const at = (i * H + h) * D;
      const bad = [...Array(D).keys()].filter((d) => got[at + d] !== ref[at + d] && Math.abs(got[at + d] - ref[at + d]) > 1e-6);
      if (!bad.length) continue;
      const s = [...Array(Nk).keys()].filter((j) => !causal || j <= i + Nk - Nq).map((j) => {
        let x = 0;
        for (let d = 0; d < D; d++) x += qf[at + d] * kf[(j * H + h) * D + d];
        return { j, x: x * 0.25 * Math.LOG2E };
      });
      s.sort((a, b) => b.x - a.x);
      const d = bad[0];
      console.log(
        `causal=${causal} row ${i} head ${h}: ${bad.length} of ${D} off; d=${d} got ${got[at + d]} ref ${ref[at + d]} ` +
          `v[top1]=${vf[(s[0].j * H + h) * D + d]} v[top2]=${vf[(s[1].j * H + h) * D + d]}; log2 logits: ${s.slice(0, 3).map((e) => `key ${e.j}: ${e.x.toFixed(3)}`).join(', ')}; ` +
          `first key blocks' maxima: ${[0, 1, 2, 3, 4, 5, 6, 7, 8].map((b) => Math.max(...s.filter((e) => e.j >= 16 * b && e.j < 16 * b + 16).map((e) => e.x)).toFixed(1)).join(' ')}`,
      );
      shown++;
    }
  console.log(`causal=${causal}: done`);
}
