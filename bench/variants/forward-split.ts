/**
 * The f32 forward on subgroup matrices (inputs split into f16 halves: src/webgpu/kernels/split.ts),
 * against the register-tiled f32 forward, run on the GPU machine:
 * `bash .gpu/enter.sh node dist/bench/variants/forward-split.js [quick|full] [tiles as JSON]`.
 *
 * For each variant (Bc, RF, W, PAD, OC) of the split tiles by D (options.precision 'high'; the causal
 * forward runs the tiled kernel there, so causal rows time the split kernel forced):
 * 1. validates it through the library (FORWARD_MATRIX_SPLIT_TILES set to the variant) on shapes with
 *    tails, causal off and on, and on inputs of magnitudes past f16's range either way, against
 *    the float64 reference beside the webgpu standard attention in f32 (the correctness rule: error ≤ 2×
 *    standard's + 1e-6); it prints each case's errors, so the margin shows; a variant that fails on the
 *    unit-scale cases (the correctness grid's inputs) is not timed, one that fails only at the other
 *    magnitudes is, and its timing lines say REJECTED;
 * 2. times it through the API (webgpuForward on GPU-resident f32 tensors, the split passes included) at
 *    B·N = 16384, H·D = 2048: after 300 ms of calls, R calls between two GpuTimer marks, best of 3;
 *    TFLOP/s by PRODUCT.md's FLOP rule. The tiled f32 forward (what f32 ran before) is timed beside it.
 */
import { attentionFlops, forward, tensor, type GpuTensor } from '../../src/index.js';
import { checkForward, type Problem } from '../../src/problem.js';
import { defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { FORWARD_MATRIX_SPLIT_TILES, forwardMatrixParams, forwardTiledParams, webgpuForward, type ForwardChoice } from '../../src/webgpu/index.js';
import { forwardMatrixProblem, forwardMatrixWorkgroupBytes, type ForwardMatrixParams } from '../../src/webgpu/kernels/forward-matrix.js';
import { GpuTimer } from '../../src/webgpu/timer.js';
import { forwardErrors, forwardRuleBroken, randomNormal } from './util.js';

type Tiles = Pick<ForwardMatrixParams, 'Bc' | 'RF' | 'W' | 'PAD' | 'OC'>;

/** Seeded normal f32 values times `scale`. */
const values = (n: number, seed: number, scale = 1) => Float32Array.from(randomNormal(n, seed), (x) => x * scale);

/** The variant's errors on shapes of this D with tails (printed), and the first failure. */
async function validate(gpu: Gpu, D: number, tiles: Tiles): Promise<string | undefined> {
  FORWARD_MATRIX_SPLIT_TILES[D] = tiles;
  const cases = [
    { B: 2, H: 3, Nq: 1023, Nk: 1024, scale: 1 },
    { B: 2, H: 3, Nq: 113, Nk: 211, scale: 1 },
    { B: 1, H: 2, Nq: 300, Nk: 77, scale: 1 },
    { B: 1, H: 2, Nq: 128, Nk: 4096, scale: 1 },
    { B: 1, H: 2, Nq: 200, Nk: 300, scale: [1e4, 1e-4, 1e4] }, // magnitudes past f16's range, logits as usual
    { B: 1, H: 2, Nq: 200, Nk: 300, scale: [1e-3, 1e-3, 1e-6] }, // below f16's normal range
    { B: 1, H: 2, Nq: 200, Nk: 300, scale: [3, 3, 1] }, // logits about ±9
  ];
  let failure: string | undefined; // the first case that breaks the rule (every case is printed)
  for (const c of cases) {
    for (const causal of [false, true]) {
      const [qs, ks, vs] = Array.isArray(c.scale) ? c.scale : [c.scale, c.scale, c.scale];
      const q = tensor(values(c.B * c.Nq * c.H * D, 1, qs), [c.B, c.Nq, c.H, D], 'f32');
      const k = tensor(values(c.B * c.Nk * c.H * D, 2, ks), [c.B, c.Nk, c.H, D], 'f32');
      const v = tensor(values(c.B * c.Nk * c.H * D, 3, vs), [c.B, c.Nk, c.H, D], 'f32');
      const params = forwardMatrixParams(checkForward(q, k, v, { causal, precision: 'high' }), gpu);
      if (!params) continue;
      const fl = await forward(q, k, v, { backend: 'webgpu', causal, precision: 'high' }).catch((e: Error) => e);
      if (fl instanceof Error) return `${JSON.stringify(c)} causal=${causal}: ${fl.message.slice(0, 800)}`;
      const { e, std } = await forwardErrors(`${D}/${JSON.stringify(c)}/${causal}`, { q, k, v }, causal, fl);
      console.log(`  D=${D} ${JSON.stringify(c)} causal=${causal}: out ${e.out.toExponential(2)} (std ${std.out.toExponential(2)}) lse ${e.lse.toExponential(2)} (std ${std.lse.toExponential(2)})`);
      const broken = forwardRuleBroken(e, std);
      if (broken) failure ??= `${JSON.stringify(c)} W=${params.W} causal=${causal}: ${broken}`;
    }
  }
  return failure;
}

/** ms per forward call through the API with `choose`'s kernel, GPU-resident f32 tensors. */
async function timeCalls(gpu: Gpu, shape: { B: number; H: number; N: number; D: number; causal: boolean }, choose: (p: Problem, gpu: Gpu) => ForwardChoice): Promise<number> {
  const { device } = gpu;
  const { B, H, N, D, causal } = shape;
  const make = (seed: number): GpuTensor => {
    const x = values(B * N * H * D, seed);
    const data = device.createBuffer({ size: x.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
    device.queue.writeBuffer(data, 0, x);
    return { data, dtype: 'f32', shape: [B, N, H, D] };
  };
  const [q, k, v] = [make(1), make(2), make(3)];
  const p = checkForward(q, k, v, { causal, precision: 'high' });
  const call = async () => {
    const f = await webgpuForward(p, q, k, v, choose);
    (f.out.data as GPUBuffer).destroy();
    (f.lse.data as GPUBuffer).destroy();
  };
  for (const until = performance.now() + 300; performance.now() < until; ) {
    await call();
    await device.queue.onSubmittedWorkDone();
  }
  const timer = new GpuTimer(device);
  const R = 10;
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    await timer.start();
    for (let r = 0; r < R; r++) await call();
    await timer.mark();
    const [a] = await timer.finish();
    best = Math.min(best, a / R);
  }
  for (const x of [q, k, v]) x.data.destroy();
  return best;
}

async function main(): Promise<void> {
  const gpu = await defaultGpu();
  console.log(`${new Date().toISOString()} ${gpu.description} matrixF16=${gpu.matrixF16} subgroupSize=${gpu.subgroupSize}`);
  if (!gpu.matrixF16 || gpu.subgroupSize === undefined) return;
  const SGS = gpu.subgroupSize;
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const quick = process.argv[2] === 'quick';
  const t = (Bc: number, RF: number, W: number, OC: boolean): Tiles => ({ Bc, RF, W, PAD: 8, OC });
  const variants: Record<number, Tiles[]> = {
    64: [t(16, 1, 8, true), t(32, 1, 4, true)],
    128: [t(16, 1, 8, true), t(16, 1, 4, true)],
  };
  // `node forward-split.js quick '{"64": [...], "128": [...]}'`: these tiles instead.
  if (process.argv[3]) Object.assign(variants, JSON.parse(process.argv[3]) as Record<number, Tiles[]>);
  const saved = { ...FORWARD_MATRIX_SPLIT_TILES };
  for (const D of [128, 64]) {
    const ok: Array<Tiles & { rejected?: true }> = [];
    for (const tiles of variants[D] ?? []) {
      const params: ForwardMatrixParams = { D, ...tiles, SGS, causal: false, dtype: 'f32' };
      const bytes = forwardMatrixWorkgroupBytes(params);
      const why = forwardMatrixProblem(params) ?? (bytes > limit ? `${bytes} B of workgroup memory` : undefined);
      const bad = why ?? (await validate(gpu, D, tiles).catch((e: Error) => `threw ${e.message.slice(0, 800)}`));
      console.log(`D=${D} ${JSON.stringify(tiles)}: ${bad ? `REJECTED ${bad}` : 'valid'}`);
      // A variant that breaks the rule is timed too when the rule held on every unit-scale case (the
      // correctness grid's inputs): its line says so.
      if (!bad || (!why && !bad.includes('threw') && !bad.includes('"scale":1,'))) ok.push({ ...tiles, ...(bad ? { rejected: true } : {}) });
    }
    for (const N of quick ? [4096] : [1024, 4096, 16384]) {
      for (const causal of [false, true]) {
        const shape = { B: 16384 / N, H: 2048 / D, N, D, causal };
        const flops = attentionFlops({ ...shape, Nq: N, Nk: N });
        const tf = (ms: number) => `${ms.toFixed(2)} ms ${(flops / ms / 1e9).toFixed(1)} TFLOP/s`;
        for (const { rejected, ...tiles } of ok) {
          FORWARD_MATRIX_SPLIT_TILES[D] = tiles;
          const choose = (p: Problem): ForwardChoice => ({ kernel: 'forwardMatrix', params: { D, ...tiles, SGS, causal: p.causal, dtype: 'f32' } });
          console.log(`D=${D} N=${N} causal=${causal} split ${JSON.stringify(tiles)} ${tf(await timeCalls(gpu, shape, choose))}${rejected ? ' (REJECTED above)' : ''}`);
        }
        const tiled = (p: Problem, g: Gpu): ForwardChoice => ({ kernel: 'forwardTiled', params: forwardTiledParams(p, g)! });
        console.log(`D=${D} N=${N} causal=${causal} tiled ${tf(await timeCalls(gpu, shape, tiled))}`);
      }
    }
    FORWARD_MATRIX_SPLIT_TILES[D] = saved[D];
  }
}

await main();
