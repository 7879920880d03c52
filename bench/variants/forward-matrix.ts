/**
 * Tuning sweep for the subgroup-matrix forward (src/webgpu/kernels/forward-matrix.ts), run on the GPU
 * machine: `bash .gpu/enter.sh node dist/bench/variants/forward-matrix.js [quick|long|full] [tiles as JSON]`
 * (N = 4096; 4096 and 16384; 1024, 4096 and 16384).
 *
 * For each variant (Bc, RF, W, PAD) of the tiles by D:
 * 1. validates it through the library (FORWARD_MATRIX_TILES set to the variant) on shapes with tails,
 *    causal off and on, against the float64 reference beside the webgpu standard attention in the same
 *    dtype (the correctness rule: error ≤ 2× standard's); a variant that fails is not timed;
 * 2. times it at B·N = 16384, H·D = 2048, f16, forward: after 300 ms of dispatches (clocks up), R
 *    dispatches in one submission, wall clock until the queue is done, best of 3; TFLOP/s by PRODUCT.md's
 *    FLOP rule.
 * The kernel session 4 shipped (forward-matrix-session4.ts, with its tiles) is timed beside them as the
 * baseline (NO_BASELINE=1: not), and with PINGPONG=1 the ping-pong kernel (forward-pingpong.ts).
 * DAWN_EXTRA=toggle,…: more Dawn toggles (e.g. disable_robustness). One line per result, printed as it comes.
 */
import { attentionFlops, forward, tensor } from '../../src/index.js';
import { checkForward } from '../../src/problem.js';
import type { Gpu } from '../../src/webgpu/device.js';
import { FORWARD_MATRIX_TILES, forwardKernel, forwardMatrixParams } from '../../src/webgpu/index.js';
import { forwardMatrixProblem, forwardMatrixWorkgroupBytes, type ForwardMatrixParams } from '../../src/webgpu/kernels/forward-matrix.js';
import { pipeline } from '../../src/webgpu/pipelines.js';
import { forwardMatrixWGSL as baseWGSL } from './forward-matrix-session4.js';
import { forwardPingPongRows, forwardPingPongWGSL } from './forward-pingpong.js';
import { forwardBuffers, forwardErrors, forwardRuleBroken, gpuWithExtraToggles, randomF16, timeForward } from './util.js';

type Tiles = Pick<ForwardMatrixParams, 'Bc' | 'RF' | 'W' | 'PAD'>;

/** The variant's errors on shapes of this D with tails, or the first failure. */
async function validate(gpu: Gpu, D: number, tiles: Tiles): Promise<string | undefined> {
  FORWARD_MATRIX_TILES[D] = tiles;
  const cases = [
    { B: 2, H: 3, Nq: 1023, Nk: 1024 },
    { B: 2, H: 3, Nq: 113, Nk: 211 },
    { B: 1, H: 2, Nq: 300, Nk: 77 },
    { B: 1, H: 2, Nq: 64, Nk: 64 },
  ];
  for (const c of cases) {
    for (const causal of [false, true]) {
      const q = tensor(randomF16(c.B * c.Nq * c.H * D, 1), [c.B, c.Nq, c.H, D], 'f16');
      const k = tensor(randomF16(c.B * c.Nk * c.H * D, 2), [c.B, c.Nk, c.H, D], 'f16');
      const v = tensor(randomF16(c.B * c.Nk * c.H * D, 3), [c.B, c.Nk, c.H, D], 'f16');
      const params = forwardMatrixParams(checkForward(q, k, v, { causal }), gpu);
      if (!params) continue;
      const fl = await forward(q, k, v, { backend: 'webgpu', causal }).catch((e: Error) => e);
      if (fl instanceof Error) return `${JSON.stringify(c)} causal=${causal}: ${fl.message.slice(0, 800)}`;
      const { e, std } = await forwardErrors(`${D}/${JSON.stringify(c)}/${causal}`, { q, k, v }, causal, fl);
      const broken = forwardRuleBroken(e, std);
      if (broken) return `${JSON.stringify(c)} W=${params.W} causal=${causal}: ${broken}`;
    }
  }
  return undefined;
}

async function main(): Promise<void> {
  const gpu = await gpuWithExtraToggles();
  console.log(`${new Date().toISOString()} ${gpu.description} matrixF16=${gpu.matrixF16} subgroupSize=${gpu.subgroupSize}`);
  if (!gpu.matrixF16 || gpu.subgroupSize === undefined) return;
  const SGS = gpu.subgroupSize;
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const quick = process.argv[2] === 'quick';
  const Ds = process.argv[4] ? process.argv[4].split(',').map(Number) : [128, 64];
  const t = (Bc: number, RF: number, W: number): Tiles => ({ Bc, RF, W, PAD: 8 });
  const variants: Record<number, Tiles[]> = {
    64: [t(16, 1, 8), t(32, 1, 8), t(16, 2, 4), t(32, 1, 4)],
    128: [t(32, 1, 8), t(16, 1, 16), t(32, 2, 4), t(16, 1, 8)],
  };
  // `node forward-matrix.js quick '[{"Bc":32,"RF":1,"W":1,"PAD":8}]'`: these tiles for every D instead
  // (or '{"64": [...], "128": [...]}': by D).
  if (process.argv[3]) {
    const arg = JSON.parse(process.argv[3]) as Tiles[] | Record<number, Tiles[]>;
    for (const D of [64, 128]) variants[D] = Array.isArray(arg) ? arg : arg[D];
  }
  const shipped: Record<number, { Bc: number; RF: number; W: number; PAD: number }> = { 64: { Bc: 16, RF: 1, W: 8, PAD: 8 }, 128: { Bc: 32, RF: 1, W: 8, PAD: 8 } };
  const saved = { ...FORWARD_MATRIX_TILES };
  for (const D of Ds) {
    const ok: Tiles[] = [];
    for (const t of variants[D]) {
      const params: ForwardMatrixParams = { D, ...t, SGS, causal: false };
      const why = forwardMatrixProblem(params) ?? (forwardMatrixWorkgroupBytes(params) > limit ? `${forwardMatrixWorkgroupBytes(params)} B of workgroup memory` : undefined);
      const bad = why ?? (await validate(gpu, D, t).catch((e: Error) => `threw ${e.message.slice(0, 800)}`));
      console.log(`D=${D} ${JSON.stringify(t)}: ${bad ? `REJECTED ${bad}` : 'valid'}`);
      if (!bad) ok.push(t);
    }
    FORWARD_MATRIX_TILES[D] = saved[D];
    for (const N of quick ? [4096] : process.argv[2] === 'long' ? [4096, 16384] : [1024, 4096, 16384]) {
      const base = { B: 16384 / N, H: 2048 / D, N, D };
      const bufs = forwardBuffers(gpu, base);
      for (const causal of [false, true]) {
        const shape = { ...base, causal };
        const flops = attentionFlops({ ...shape, Nq: N, Nk: N });
        const tf = (ms: number) => (flops / ms / 1e9).toFixed(1);
        for (const t of ok) {
          const { pipe, Br } = await forwardKernel(gpu, { kernel: 'forwardMatrix', params: { D, ...t, SGS, causal } });
          console.log(`D=${D} N=${N} causal=${causal} ${JSON.stringify(t)} ${tf(await timeForward(gpu, shape, bufs, pipe, Br))} TFLOP/s`);
        }
        // PINGPONG=1: the ping-pong kernel (forward-pingpong.ts) too, timed only: its validation ran through
        // the library in session 8 (commit 91dce3f), where it was 0.55× (D = 128) and 0.72× (D = 64) of the shipped.
        if (process.env.PINGPONG) {
          const pp = { D, Bc: 16, W: D <= 64 ? 16 : 8, PAD: 8, SGS, causal };
          const pipe = await pipeline(gpu.device, 'forwardPingPong', pp, (x) => forwardPingPongWGSL(x, limit));
          console.log(`D=${D} N=${N} causal=${causal} pingpong ${JSON.stringify(pp)} ${tf(await timeForward(gpu, shape, bufs, pipe, forwardPingPongRows(pp)))} TFLOP/s`);
        }
        if (process.env.NO_BASELINE) continue; // NO_BASELINE=1: without session 4's kernel
        const d = { D, ...shipped[D], SGS, causal };
        const pipe = await pipeline(gpu.device, 'forwardMatrixSession4', d, (x) => baseWGSL(x, limit));
        console.log(`D=${D} N=${N} causal=${causal} session4 ${JSON.stringify(shipped[D])} ${tf(await timeForward(gpu, shape, bufs, pipe, 16 * d.RF * d.W))} TFLOP/s`);
      }
      for (const b of bufs) b.destroy();
    }
  }
}

await main();
