/**
 * Tuning sweep for the register-tiled forward (src/webgpu/kernels/forward-tiled.ts), f32:
 * `node dist/bench/variants/forward-tiled.js [--small] [--causal] [--only=D]` (on the GPU machine:
 * `bash .gpu/enter.sh node dist/bench/variants/forward-tiled.js`).
 *
 * For each tile set in VARIANTS and each D in {128, 64}:
 * 1. validates that kernel against the float64 reference on small shapes with tails (causal and not,
 *    grouped-query heads, rows that see no key), beside the webgpu standard attention in f32 (the
 *    correctness rule: error ≤ 2× standard's + 1e-6); a variant that fails is not timed;
 * 2. times B=4, H=16, N=4096, D=128 and B=4, H=32, N=4096, D=64 (--small: B=1, H=4, N=1024, for
 *    lavapipe): R dispatches between two GpuTimer marks (timestamp queries where the adapter has them),
 *    5 repetitions after a warm-up, median; TFLOP/s = 4·B·H·N²·D / time (halved when causal).
 * One line per result, printed as it comes, so that a run cut short keeps what it measured. The library's
 * own choice (index.ts forwardTiledParams) and the portable kernel (forward.ts) are timed last.
 */
import { attentionFlops, forward, tensor, type Tensor } from '../../src/index.js';
import { checkForward, type Problem } from '../../src/problem.js';
import { defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { forwardChoice, forwardKernel, forwardParams, forwardTiledParams, sizesOf, webgpuForward, type ForwardChoice, type TiledTiles } from '../../src/webgpu/index.js';
import { sizesBytes } from '../../src/webgpu/kernels/common.js';
import { forwardTiledAccumulator, forwardTiledProblem, forwardTiledShape, forwardTiledWorkgroupBytes, type ForwardTiledParams } from '../../src/webgpu/kernels/forward-tiled.js';
import { dispatch } from '../../src/webgpu/pipelines.js';
import { GpuTimer } from '../../src/webgpu/timer.js';
import { forwardRuleBroken, maxErr, randomF32 } from './util.js';

/**
 * The tile sets to try: Br query rows and Bc keys per block, a TM×TN micro-tile of S per invocation
 * ((Br/TM)·(Bc/TN) invocations), split = K_j and V_j in two tiles (2 barriers per block instead of 4),
 * blockSum = each block's P̃V_j summed apart (f32 error as the portable kernel's; doubles the O_i
 * registers). `unroll` (constant loop bounds) defaults to true on a GPU, false on lavapipe. A set that
 * does not fit the device's workgroup memory (48 KiB on an H100 under Dawn) or invocations is skipped.
 */
const VARIANTS: Array<TiledTiles & { unroll?: boolean }> = [
  // Fit D = 128 and D = 64 (invocations; workgroup bytes and O_i registers per invocation at D = 128).
  { Br: 32, Bc: 32, TM: 4, TN: 4, split: false, blockSum: true }, // 64; 39424 B; 128 floats: the D = 128 default
  { Br: 32, Bc: 32, TM: 4, TN: 4, split: false, blockSum: false }, // 64 floats
  { Br: 32, Bc: 16, TM: 4, TN: 2, split: true, blockSum: true }, // 64; 37120 B
  { Br: 32, Bc: 32, TM: 4, TN: 2, split: false, blockSum: true }, // 128; 40192 B; 64 floats
  { Br: 32, Bc: 32, TM: 2, TN: 2, split: false, blockSum: true }, // 256; 40192 B; 32 floats
  { Br: 32, Bc: 32, TM: 8, TN: 4, split: false, blockSum: false }, // 32; 39424 B; 128 floats
  { Br: 64, Bc: 16, TM: 4, TN: 4, split: false, blockSum: false }, // 64; 48384 B; 128 floats
  { Br: 64, Bc: 16, TM: 8, TN: 2, split: false, blockSum: false }, // 64; 48896 B; 128 floats
  { Br: 64, Bc: 16, TM: 4, TN: 2, split: false, blockSum: true }, // 128; 48896 B; 128 floats
  { Br: 64, Bc: 16, TM: 2, TN: 2, split: false, blockSum: true }, // 256; 48896 B; 64 floats
  { Br: 16, Bc: 64, TM: 4, TN: 4, split: false, blockSum: true }, // 64; 47616 B; 64 floats
  // Fit D = 64 only (invocations; bytes and floats at D = 64).
  { Br: 64, Bc: 32, TM: 4, TN: 4, split: false, blockSum: true }, // 128; 37376 B; 64 floats: the D = 64 default
  { Br: 64, Bc: 32, TM: 4, TN: 4, split: false, blockSum: false }, // 32 floats
  { Br: 64, Bc: 32, TM: 8, TN: 4, split: false, blockSum: true }, // 64; 128 floats
  { Br: 64, Bc: 32, TM: 8, TN: 8, split: false, blockSum: false }, // 32; 128 floats
  { Br: 64, Bc: 32, TM: 4, TN: 2, split: false, blockSum: true }, // 256; 38912 B
  { Br: 64, Bc: 32, TM: 4, TN: 4, split: true, blockSum: true }, // 128; 46080 B
  { Br: 32, Bc: 64, TM: 4, TN: 4, split: false, blockSum: true }, // 128; 36864 B
  { Br: 32, Bc: 64, TM: 4, TN: 8, split: false, blockSum: true }, // 64
  { Br: 128, Bc: 8, TM: 4, TN: 2, split: false, blockSum: true }, // 128; 44160 B
];

const args = process.argv.slice(2);
const small = args.includes('--small');
const causal = args.includes('--causal');
const only = args.find((a) => a.startsWith('--only='))?.slice('--only='.length);

/** Shapes validated for each variant (BNHD; Hkv < H in one; rows that see no key in the causal Nq > Nk one). */
const CHECKS = [
  { B: 1, H: 2, Hkv: 2, Nq: 113, Nk: 203 },
  { B: 2, H: 2, Hkv: 1, Nq: 150, Nk: 70 },
];

function randomTensor(shape: number[], seed: number): Tensor {
  return tensor(randomF32(shape.reduce((a, b) => a * b, 1), seed), shape);
}

/** Checks the tiled kernel with `tiles` (causal as each check needs) on the CHECKS shapes at head dim D. */
async function validate(D: number, tiles: Omit<ForwardTiledParams, 'D' | 'causal'>): Promise<string | undefined> {
  const choice = (p: Problem): ForwardChoice => ({ kernel: 'forwardTiled', params: { ...tiles, D, causal: p.causal } });
  for (const c of CHECKS) {
    const q = randomTensor([c.B, c.Nq, c.H, D], 1);
    const k = randomTensor([c.B, c.Nk, c.Hkv, D], 2);
    const v = randomTensor([c.B, c.Nk, c.Hkv, D], 3);
    for (const causal of [false, true]) {
      const p = checkForward(q, k, v, { causal, backend: 'webgpu' });
      const got = await webgpuForward(p, q, k, v, choice).catch((e: Error) => e);
      if (got instanceof Error) return got.message.slice(0, 600);
      const ref = await forward(q, k, v, { backend: 'reference', causal });
      const std = await forward(q, k, v, { backend: 'webgpu', causal, algorithm: 'standard' });
      const broken = forwardRuleBroken(
        { out: maxErr(got.out as Tensor, ref.out), lse: maxErr(got.lse as Tensor, ref.lse) },
        { out: maxErr(std.out, ref.out), lse: maxErr(std.lse, ref.lse) },
      );
      if (broken) return `Nq=${c.Nq} Nk=${c.Nk} Hkv=${c.Hkv} causal=${causal}: ${broken}`;
    }
  }
  return undefined;
}

interface Shape {
  B: number;
  H: number;
  N: number;
  D: number;
}

/** q, k, v, out, lse on the device for a shape (q, k, v hold the same random values). */
function buffers(gpu: Gpu, { B, H, N, D }: Shape): GPUBuffer[] {
  const { device } = gpu;
  const data = randomF32(B * N * H * D, 1);
  const input = () => {
    const buf = device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(buf, 0, data);
    return buf;
  };
  const out = device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.STORAGE });
  const lse = device.createBuffer({ size: B * H * N * 4, usage: GPUBufferUsage.STORAGE });
  return [input(), input(), input(), out, lse];
}

/** Milliseconds per forward: median of 5 timed runs of R dispatches each (R: about 0.3 s a run). */
async function time(gpu: Gpu, p: Problem, bufs: GPUBuffer[], choice: ForwardChoice): Promise<number> {
  const { device } = gpu;
  const { pipe, Br } = await forwardKernel(gpu, choice);
  const sizes = device.createBuffer({ size: 48, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(sizes, 0, sizesBytes(sizesOf(p)));
  const submit = (R: number) => {
    const enc = device.createCommandEncoder();
    for (let r = 0; r < R; r++) dispatch(enc, device, pipe, [sizes, ...bufs], [Math.ceil(p.Nq / Br), p.B * p.H]);
    device.queue.submit([enc.finish()]);
  };
  const t0 = performance.now();
  submit(1); // warm-up, and the time that sets R
  await device.queue.onSubmittedWorkDone();
  const once = performance.now() - t0;
  const R = Math.max(1, Math.min(50, Math.round(300 / once)));
  const timer = new GpuTimer(device);
  await timer.start();
  for (let i = 0; i < 5; i++) {
    submit(R);
    await timer.mark();
  }
  const runs = (await timer.finish()).map((ms) => ms / R).sort((a, b) => a - b);
  timer.destroy();
  sizes.destroy();
  return runs[2];
}

/** Br/Bc/TM/TN, then split, direct (blockSum off) and opaque (unroll off) where they apply. */
const label = (t: TiledTiles & { unroll?: boolean }) =>
  `Br${t.Br}/Bc${t.Bc}/TM${t.TM}/TN${t.TN}${t.split ? '/split' : ''}${t.blockSum ? '' : '/direct'}${t.unroll === false ? '/opaque' : ''}`;

async function main(): Promise<void> {
  const gpu = await defaultGpu();
  const limits = gpu.limits;
  console.log(`${new Date().toISOString()} ${gpu.description} software=${gpu.software} timer=${gpu.timestamps ? 'timestamp-query' : 'onSubmittedWorkDone'} workgroupStorage=${limits.maxComputeWorkgroupStorageSize} invocations=${limits.maxComputeInvocationsPerWorkgroup}`);
  const shapes: Shape[] = small
    ? [
        { B: 1, H: 4, N: 1024, D: 128 },
        { B: 1, H: 4, N: 1024, D: 64 },
      ]
    : [
        { B: 4, H: 16, N: 4096, D: 128 },
        { B: 4, H: 32, N: 4096, D: 64 },
      ];
  for (const shape of shapes.filter((s) => !only || String(s.D) === only)) {
    const { B, H, N, D } = shape;
    const bufs = buffers(gpu, shape);
    const gt = (data: GPUBuffer) => ({ data, dtype: 'f32' as const, shape: [B, N, H, D] });
    const p = checkForward(gt(bufs[0]), gt(bufs[1]), gt(bufs[2]), { causal });
    const tflops = (ms: number) => (attentionFlops({ B, H, Nq: N, Nk: N, D, causal }) / ms / 1e9).toPrecision(3);
    const at = `B=${B} H=${H} N=${N} D=${D} causal=${causal}`;
    for (const v of VARIANTS) {
      const params: ForwardTiledParams = { D, unroll: !gpu.software, dtype: 'f32', causal, ...v };
      const { WG } = forwardTiledShape(params);
      const bytes = forwardTiledWorkgroupBytes(params);
      const problem =
        forwardTiledProblem(params) ??
        (bytes > limits.maxComputeWorkgroupStorageSize ? `${bytes} B of workgroup memory` : WG > limits.maxComputeInvocationsPerWorkgroup ? `${WG} invocations` : undefined);
      const name = `${label(params)} (WG ${WG}, ${bytes} B, ${forwardTiledAccumulator(params)} accumulator floats)`;
      if (problem) {
        console.log(`skip ${at} ${name}: ${problem}`);
        continue;
      }
      const choice: ForwardChoice = { kernel: 'forwardTiled', params };
      const t0 = performance.now();
      const bad = await validate(D, params);
      const compile = ((performance.now() - t0) / 1000).toFixed(1);
      if (bad) {
        console.log(`FAIL ${at} ${name}: ${bad}`);
        continue;
      }
      console.log(`${at} ${name}: ${tflops(await time(gpu, p, bufs, choice))} TFLOP/s (validated in ${compile} s)`);
    }
    const chosen = forwardTiledParams(p, gpu);
    if (chosen) console.log(`${at} chosen ${label(chosen)}: ${tflops(await time(gpu, p, bufs, forwardChoice(p, gpu)))} TFLOP/s`);
    console.log(`${at} portable: ${tflops(await time(gpu, p, bufs, { kernel: 'forward', params: forwardParams(p, gpu) }))} TFLOP/s`);
    for (const b of bufs) b.destroy();
  }
}

await main();
process.exit(0);
