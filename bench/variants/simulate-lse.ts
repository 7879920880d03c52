/**
 * A simulation, in f32/f16 arithmetic on the cpu, of how the subgroup-matrix kernels' L (the forward's
 * log-sum-exp) feeds the backward's dv, on edge.test.ts's f16 case with logits of ±1e4 (D = 16, Nq = 67,
 * Nk = 131). The forward is modelled as the kernel runs it: x = S·scale·log2e in f32, key blocks of 16,
 * m moved only by more than TAU = 8, P̃ = 2^(x − m); the backward's P = 2^((S·scale − L)·log2e) rounded
 * to f16. It prints dv's max error against float64 for L computed each way:
 *   exact     L of float64 (what the backward would want);
 *   f32       L rounded once to f32 (about what the standard attention gets);
 *   log2      (m + log2 l)·ln 2, l the f16 P̃ summed (the kernel before this change);
 *   raw max   sm·scale + ln l32, sm the raw score m came from, l32 the unrounded P̃ summed.
 * It rounds every product, so it cannot show what broke the H100's dv (a fused multiply-add in the
 * forward's P̃; bench/results/2026-11-22-h100-session4.md).
 * `node dist/bench/variants/simulate-lse.js`
 */
import { decodeF16, roundToF16 } from '../../src/f16.js';
import { inputs, randomTensor } from '../../test/util.js';

const [Nq, Nk, H, D, Bc, TAU] = [67, 131, 2, 16, 16, 8];
const t = inputs({ B: 1, H, Hkv: H, Nq, Nk, D }, 'f16', 'BNHD');
const q = decodeF16(randomTensor('f16', [1, Nq, H, D], 11, 100).data as Uint16Array);
const k = decodeF16(randomTensor('f16', [1, Nk, H, D], 12, 100).data as Uint16Array);
const dO = decodeF16(t.dout.data as Uint16Array);
const f = Math.fround;
const scale = 1 / Math.sqrt(D);
const [LOG2E, LN2, scale2] = [f(Math.LOG2E), f(Math.LN2), f(scale * Math.LOG2E)];
const ways = ['exact', 'f32', 'log2', 'raw max'] as const;
const dv = Object.fromEntries(ways.map((w) => [w, new Float64Array(Nk * H * D)])) as Record<(typeof ways)[number], Float64Array>;
const dvRef = new Float64Array(Nk * H * D);
for (let h = 0; h < H; h++) {
  for (let i = 0; i < Nq; i++) {
    const exact: number[] = []; // products of f16 values and their sums of 16 are exact in float64
    for (let j = 0; j < Nk; j++) {
      let a = 0;
      for (let d = 0; d < D; d++) a += q[(i * H + h) * D + d] * k[(j * H + h) * D + d];
      exact.push(a);
    }
    const s = exact.map(f); // S as the kernels hold it: f32, correctly rounded
    const top = Math.max(...exact);
    const Lref = top * scale + Math.log(exact.reduce((acc, x) => acc + Math.exp((x - top) * scale), 0));
    let [m, sm, l16, l32] = [-Infinity, 0, 0, 0];
    for (let jc = 0; jc < Nk; jc += Bc) {
      const c0 = Math.min(jc, Nk - Bc);
      const raw = s.slice(Math.max(c0, jc), c0 + Bc);
      const xs = raw.map((x) => f(x * scale2));
      const bm = Math.max(...xs);
      if (bm > m + TAU) {
        const alpha = m === -Infinity ? 1 : f(2 ** (m - bm));
        [l16, l32, m, sm] = [f(l16 * alpha), f(l32 * alpha), bm, raw[xs.indexOf(bm)]];
      }
      for (const x of xs) {
        const p = f(2 ** (x - m));
        [l16, l32] = [f(l16 + roundToF16(p)), f(l32 + p)];
      }
    }
    const L = { exact: Lref, f32: f(Lref), log2: f(f(m + f(Math.log2(l16))) * LN2), 'raw max': f(f(sm * scale) + f(Math.log(l32))) };
    for (let j = 0; j < Nk; j++) {
      const pRef = Math.exp(exact[j] * scale - Lref);
      for (let d = 0; d < D; d++) dvRef[(j * H + h) * D + d] += pRef * dO[(i * H + h) * D + d];
      for (const w of ways) {
        const p = roundToF16(f(2 ** f(f(f(s[j] * scale) - L[w]) * LOG2E)));
        for (let d = 0; d < D; d++) dv[w][(j * H + h) * D + d] += p * dO[(i * H + h) * D + d];
      }
    }
  }
}
for (const w of ways) {
  let e = 0;
  for (let x = 0; x < dvRef.length; x++) e = Math.max(e, Math.abs(roundToF16(dv[w][x]) - dvRef[x]));
  console.log(`${w.padEnd(8)} dv max error ${e.toExponential(3)}`);
}
