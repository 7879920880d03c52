/**
 * Check and time the register-tiled f32 backward (src/webgpu/kernels/backward-tiled.ts) on the GPU machine:
 * `bash .gpu/enter.sh node dist/bench/variants/backward-tiled.js ['[{"kv": tiles, "q": tiles}, ...]']`
 * where tiles = {"Br", "Bc", "TM", "TN"} (JSON), for each tile set given (BACKWARD_TILED_TILES set to it
 * for every D, the fallbacks still behind it; default: the shipped tiles):
 * 1. dq, dk, dv of the webgpu backend (the kernels backwardChoice picks, printed) against the float64
 *    reference, beside the webgpu standard attention in f32 (the correctness rule: error ≤ 3× standard's).
 * 2. Forward + backward at B·N = 16384, H·D = 2048, N = 4096, f32, D = 64 and 128, causal off and on,
 *    through the API with GPU-resident tensors: after 300 ms of calls back to back, 10 forwards and 10
 *    backwards between GpuTimer marks (timestamp queries), best of 3; TFLOP/s by PRODUCT.md's FLOP rule
 *    (3.5× forward).
 */
import { backward, forward, tensor, type Tensor } from '../../src/index.js';
import { checkBackward } from '../../src/problem.js';
import { defaultGpu } from '../../src/webgpu/device.js';
import { BACKWARD_TILED_TILES, backwardChoice } from '../../src/webgpu/index.js';
import { backwardTiledShape, backwardTiledWorkgroupBytes, type BackwardTiledTiles } from '../../src/webgpu/kernels/backward-tiled.js';
import { maxErr, randomF32, timeForwardBackward } from './util.js';

const gpu = await defaultGpu();
/** The float64 reference and the webgpu standard, by case and causal: computed once for all variants. */
const yardsticks = new Map<string, Record<'ref' | 'st', { out: Tensor; lse: Tensor }> & Record<'gref' | 'gst', { dq: Tensor; dk: Tensor; dv: Tensor }>>();
console.log(`${new Date().toISOString()} ${gpu.description}`);
type TileSet = { kv: BackwardTiledTiles; q: BackwardTiledTiles };
const variants: Array<TileSet | undefined> = process.argv[2] ? (JSON.parse(process.argv[2]) as TileSet[]) : [undefined];
const shipped = { ...BACKWARD_TILED_TILES };
for (const set of variants) {
  for (const D of [64, 128, 'other'] as const) BACKWARD_TILED_TILES[D] = set ?? shipped[D];
  console.log(`tiles ${set ? JSON.stringify(set) : 'shipped'}`);
  const cases = [
    { B: 2, H: 3, Hkv: 3, Nq: 113, Nk: 203, D: 64 },
    { B: 2, H: 3, Hkv: 3, Nq: 1023, Nk: 1024, D: 128 },
    { B: 2, H: 4, Hkv: 2, Nq: 256, Nk: 512, D: 128 },
    { B: 2, H: 3, Hkv: 3, Nq: 512, Nk: 256, D: 64 },
    { B: 1, H: 2, Hkv: 2, Nq: 256, Nk: 512, D: 59 },
    { B: 1, H: 2, Hkv: 1, Nq: 70, Nk: 40, D: 8 },
  ];
  for (const c of cases) {
    for (const causal of [false, true]) {
      const t = (N: number, H: number, seed: number) => tensor(randomF32(c.B * N * H * c.D, seed), [c.B, N, H, c.D], 'f32');
      const [q, k, v, dout] = [t(c.Nq, c.H, 1), t(c.Nk, c.Hkv, 2), t(c.Nk, c.Hkv, 3), t(c.Nq, c.H, 4)];
      const key = `${JSON.stringify(c)}/${causal}`;
      if (!yardsticks.has(key)) {
        const ref = await forward(q, k, v, { backend: 'reference', causal });
        const gref = await backward(dout, q, k, v, ref.out, ref.lse, { backend: 'reference', causal });
        const st = await forward(q, k, v, { backend: 'webgpu', causal, algorithm: 'standard' });
        const gst = await backward(dout, q, k, v, st.out, st.lse, { backend: 'webgpu', causal, algorithm: 'standard' });
        yardsticks.set(key, { ref, gref, st, gst });
      }
      const { ref, gref, st, gst } = yardsticks.get(key)!;
      const fl = await forward(q, k, v, { backend: 'webgpu', causal });
      const gfl = await backward(dout, q, k, v, fl.out, fl.lse, { backend: 'webgpu', causal }).catch((e: Error) => e);
      if (gfl instanceof Error) {
        console.log(`FAIL ${JSON.stringify(c)} causal=${causal}: ${gfl.message.slice(0, 800)}`);
        continue;
      }
      const choice = backwardChoice(checkBackward(dout, q, k, v, fl.out, fl.lse, { causal }), gpu);
      const kernel =
        choice.kernel === 'tiled'
          ? `tiled kv ${JSON.stringify(choice.kv)} (${backwardTiledWorkgroupBytes(choice.kv, true)} B, WG ${backwardTiledShape(choice.kv, true).WG}) q (${backwardTiledWorkgroupBytes(choice.q, false)} B, WG ${backwardTiledShape(choice.q, false).WG})`
          : choice.kernel;
      const cells = (['dq', 'dk', 'dv'] as const).map((n) => {
        const [e, s] = [maxErr(gfl[n], gref[n]), maxErr(gst[n], gref[n])];
        return { n, e, s, ok: e <= 3 * s + 1e-6 };
      });
      const out = { n: 'out', e: maxErr(fl.out, ref.out), s: maxErr(st.out, ref.out), ok: true };
      out.ok = out.e <= 2 * out.s + 1e-6;
      const all = [out, ...cells];
      console.log(`${all.every((x) => x.ok) ? 'ok  ' : 'FAIL'} ${JSON.stringify(c)} causal=${causal} ${all.map((x) => `${x.n} ${x.e.toExponential(2)} (std ${x.s.toExponential(2)})`).join(', ')} ${kernel}`);
    }
  }

  await timeForwardBackward(gpu, 'f32');
}
