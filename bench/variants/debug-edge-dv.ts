/**
 * Debug, on the GPU machine, of edge.test.ts's failing f16 case (logits of ±1e4, D = 16, Nq = 67, Nk = 131,
 * not causal), where the webgpu flash dv is off by 7.8e-3 and the cpu simulation of the kernels'
 * arithmetic (simulate-lse.ts) predicts 1.95e-3. Differential runs: the flash backward fed the out and
 * lse of the forward through the subgroup-matrix, the tiled and the portable kernels, and the flash out
 * with the float64 reference's L rounded to f32; each forward's lse against the reference's. For the worst dv element: its key, head, d, the values and the
 * query rows whose P for that key is not 0 in the reference.
 * `bash .gpu/enter.sh node dist/bench/variants/debug-edge-dv.js`
 */
import { backward, forward, tensor, type Tensor } from '../../src/index.js';
import { checkForward } from '../../src/problem.js';
import { toF64 } from '../../src/tensor.js';
import { forwardParams, forwardTiledParams, webgpuForward } from '../../src/webgpu/index.js';
import { inputs, randomTensor } from '../../test/util.js';

const [B, H, Nq, Nk, D] = [1, 2, 67, 131, 16];
const t = inputs({ B, H, Hkv: H, Nq, Nk, D }, 'f16', 'BNHD');
const q = randomTensor('f16', [B, Nq, H, D], 11, 100);
const k = randomTensor('f16', [B, Nk, H, D], 12, 100);
const { v, dout } = t;
const f64 = (x: Tensor) => tensor(toF64(x), x.shape, 'f64');
const ref = await forward(f64(q), f64(k), f64(v), { backend: 'reference' });
const gref = await backward(f64(dout), f64(q), f64(k), f64(v), ref.out, ref.lse, { backend: 'reference' });
const fl = await forward(q, k, v, { backend: 'webgpu' });
// The same forward through the tiled and the portable kernels (the matrix kernel is the default here).
const p = checkForward(q, k, v, {});
const tiled = (await webgpuForward(p, q, k, v, (x, gpu) => ({ kernel: 'forwardTiled', params: forwardTiledParams(x, gpu)! }))) as { out: Tensor; lse: Tensor };
const portable = (await webgpuForward(p, q, k, v, (x, gpu) => ({ kernel: 'forward', params: forwardParams(x, gpu) }))) as { out: Tensor; lse: Tensor };
const st = await forward(q, k, v, { backend: 'webgpu', algorithm: 'standard' });
const L32 = tensor(Float32Array.from(toF64(ref.lse)), ref.lse.shape, 'f32');
const err = (a: Tensor, b: Tensor) => {
  const [x, y] = [toF64(a), toF64(b)];
  let [e, at] = [0, 0];
  for (let i = 0; i < x.length; i++) if (Math.abs(x[i] - y[i]) > e) [e, at] = [Math.abs(x[i] - y[i]), i];
  return { e, at };
};
console.log(`forward: out error ${err(fl.out, ref.out).e.toExponential(3)} (standard ${err(st.out, ref.out).e.toExponential(3)}), lse error ${err(fl.lse, ref.lse).e.toExponential(3)} (standard ${err(st.lse, ref.lse).e.toExponential(3)})`);
console.log(`lse error: tiled forward ${err(tiled.lse, ref.lse).e.toExponential(3)}, portable forward ${err(portable.lse, ref.lse).e.toExponential(3)}; flash − portable ${err(fl.lse, portable.lse).e.toExponential(3)}`);
const runs = {
  'flash out, lse': [fl.out, fl.lse],
  'tiled forward out, lse': [tiled.out, tiled.lse],
  'portable forward out, lse': [portable.out, portable.lse],
  'flash out, f32 of exact L': [fl.out, L32],
} as const;
for (const [name, [out, lse]] of Object.entries(runs)) {
  for (const algorithm of ['flash'] as const) {
    const g = await backward(dout, q, k, v, out, lse, { backend: 'webgpu', algorithm });
    const cells = (['dq', 'dk', 'dv'] as const).map((n) => `${n} ${err(g[n], gref[n]).e.toExponential(3)}`).join(', ');
    console.log(`backward ${algorithm.padEnd(8)} fed ${name}: ${cells}`);
    if (algorithm === 'flash' && name === 'flash out, lse') {
      const { at } = err(g.dv, gref.dv);
      const [j, h, d] = [Math.floor(at / (H * D)), Math.floor(at / D) % H, at % D];
      const [gv, rv] = [toF64(g.dv)[at], toF64(gref.dv)[at]];
      console.log(`  worst dv: key ${j} head ${h} d ${d}: webgpu ${gv} reference ${rv}`);
      // The reference's P for that key, by query row (those above 1e-6).
      const [qq, kk, L] = [toF64(q), toF64(k), toF64(ref.lse)];
      const rows: string[] = [];
      for (let i = 0; i < Nq; i++) {
        let s = 0;
        for (let x = 0; x < D; x++) s += qq[(i * H + h) * D + x] * kk[(j * H + h) * D + x];
        const p = Math.exp(s / Math.sqrt(D) - L[h * Nq + i]);
        if (p > 1e-6) rows.push(`row ${i}: P ${p.toPrecision(6)}, dO ${toF64(dout)[(i * H + h) * D + d]}, flash lse − exact ${(toF64(fl.lse)[h * Nq + i] - L[h * Nq + i]).toExponential(2)}`);
      }
      console.log(`  ${rows.join('\n  ')}`);
    }
  }
}
