/**
 * Check and time the subgroup-matrix backward on the GPU machine:
 * `bash .gpu/enter.sh node dist/bench/variants/backward-matrix.js ['[dQ tiles, ...]' ['[dK/dV tiles, ...]']]`
 * (JSON), for each pair of tilings given (BACKWARD_Q_MATRIX_TILES and BACKWARD_KV_MATRIX_TILES set to them
 * for every D; default: the shipped tiles):
 * 1. dq, dk, dv of the webgpu backend (matrix kernels where they apply) against the float64 reference,
 *    beside the webgpu standard attention in f16 (the correctness rule: error ≤ 3× standard's).
 * 2. Forward + backward at B·N = 16384, H·D = 2048, N = 4096, f16, through the API with GPU-resident
 *    tensors: after 300 ms of calls back to back, 10 forwards and 10 backwards between GpuTimer marks
 *    (timestamp queries), best of 3; TFLOP/s by PRODUCT.md's FLOP rule (3.5× forward).
 */
import { backward, forward, tensor, type Tensor } from '../../src/index.js';
import { checkBackward } from '../../src/problem.js';
import { defaultGpu } from '../../src/webgpu/device.js';
import { BACKWARD_KV_MATRIX_TILES, BACKWARD_Q_MATRIX_TILES, backwardMatrixParams } from '../../src/webgpu/index.js';
import { maxErr, randomF16, timeForwardBackward } from './util.js';


const gpu = await defaultGpu();
/** The float64 reference and the webgpu standard, by case and causal: computed once for all variants. */
const yardsticks = new Map<string, Record<'ref' | 'st', { out: Tensor; lse: Tensor }> & Record<'gref' | 'gst', { dq: Tensor; dk: Tensor; dv: Tensor }>>();
console.log(`${new Date().toISOString()} ${gpu.description}`);
type Tiles = (typeof BACKWARD_Q_MATRIX_TILES)['other'];
type KVTiles = (typeof BACKWARD_KV_MATRIX_TILES)['other'];
const qVariants: Array<Tiles | undefined> = process.argv[2] ? (JSON.parse(process.argv[2]) as Tiles[]) : [undefined];
const kvVariants: Array<KVTiles | undefined> = process.argv[3] ? (JSON.parse(process.argv[3]) as KVTiles[]) : [undefined];
for (const [tiles, kvTiles] of qVariants.flatMap((t) => kvVariants.map((kt) => [t, kt] as const))) {
if (tiles) for (const D of [64, 128, 'other'] as const) BACKWARD_Q_MATRIX_TILES[D] = tiles;
if (kvTiles) for (const D of [64, 128, 'other'] as const) BACKWARD_KV_MATRIX_TILES[D] = kvTiles;
console.log(`dQ tiles ${JSON.stringify(tiles ?? BACKWARD_Q_MATRIX_TILES.other)}, dK/dV tiles ${JSON.stringify(kvTiles ?? BACKWARD_KV_MATRIX_TILES.other)}`);
const cases = [
  { B: 2, H: 3, Hkv: 3, Nq: 113, Nk: 203, D: 64 },
  { B: 2, H: 3, Hkv: 3, Nq: 1023, Nk: 1024, D: 128 },
  { B: 2, H: 4, Hkv: 2, Nq: 256, Nk: 512, D: 128 },
  { B: 2, H: 3, Hkv: 3, Nq: 512, Nk: 256, D: 64 },
  { B: 1, H: 2, Hkv: 2, Nq: 256, Nk: 512, D: 256 },
  { B: 1, H: 2, Hkv: 1, Nq: 70, Nk: 40, D: 32 },
];
for (const c of cases) {
  for (const causal of [false, true]) {
    const t = (N: number, H: number, seed: number) => tensor(randomF16(c.B * N * H * c.D, seed), [c.B, N, H, c.D], 'f16');
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
    const kernel = backwardMatrixParams(checkBackward(dout, q, k, v, fl.out, fl.lse, { causal }), gpu) ? 'matrix' : 'portable';
    const cells = (['dq', 'dk', 'dv'] as const).map((n) => {
      const [e, s] = [maxErr(gfl[n], gref[n]), maxErr(gst[n], gref[n])];
      return { n, e, s, ok: e <= 3 * s + 1e-6 };
    });
    const out = { n: 'out', e: maxErr(fl.out, ref.out), s: maxErr(st.out, ref.out), ok: true };
    out.ok = out.e <= 2 * out.s + 1e-6;
    const all = [out, ...cells];
    console.log(`${all.every((x) => x.ok) ? 'ok  ' : 'FAIL'} ${kernel} ${JSON.stringify(c)} causal=${causal} ${all.map((x) => `${x.n} ${x.e.toExponential(2)} (std ${x.s.toExponential(2)})`).join(', ')}`);
  }
}

await timeForwardBackward(gpu, 'f16');
}
