/**
 * The variants' speed on webgpu, through the public forward() and backward() on GPUBuffer tensors (so
 * each call runs on the family the library picks for it):
 * `node dist/bench/variants/modifiers.js [--n=16384] [--d=128] [--h=16] [--dtype=f16] [--small]`
 * (on the GPU machine: `bash .gpu/enter.sh node dist/bench/variants/modifiers.js`).
 *
 * 1. Every option set is first checked on a small shape (Nq = Nk = 300) against the float64 oracle, beside
 *    the webgpu standard attention with the same options (the correctness rule: out within 2× the
 *    standard's error + 1e-6); a set that fails is not timed.
 * 2. Then forward and forward + backward at B = 1, H, N, D: full, causal, sliding windows of 4096, 1024
 *    and 256 keys (causal), block-sparse masks keeping 50 %, 25 % and 10 % of 128×128 blocks, ALiBi,
 *    soft-cap, a key-padding mask, and dropout. Time per call: the median of 5 runs of
 *    R back-to-back calls between GPU timestamps, after a warm-up; the speedup column is against full
 *    causal (windows) or the dense call (block masks). The kept fraction of the score matrix is printed too.
 */
import { backward, forward, type AttentionOptions, type GpuTensor, type Tensor } from '../../src/index.js';
import { keeps, mix32 } from '../../src/modifiers.js';
import { checkForward } from '../../src/problem.js';
import { standardForward } from '../../src/reference/index.js';
import { toF64 } from '../../src/tensor.js';
import { encodeF16 } from '../../src/f16.js';
import { defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { forwardChoice } from '../../src/webgpu/index.js';
import { GpuTimer } from '../../src/webgpu/timer.js';
import { randomNormal } from './util.js';

const args = process.argv.slice(2);
const arg = (name: string, fallback: number) => Number(args.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback);
const small = args.includes('--small');
const N = arg('n', small ? 1024 : 16384);
const D = arg('d', small ? 64 : 128);
const H = arg('h', small ? 2 : 16);
const dtype = (args.find((a) => a.startsWith('--dtype='))?.split('=')[1] ?? 'f16') as 'f16' | 'f32';
const R = small ? 1 : 3;

/** A block mask keeping about `density` of the (rows × cols) blocks, the diagonal always kept. */
function blockMask(n: number, h: number, size: number, density: number): AttentionOptions['blockMask'] {
  const T = Math.ceil(n / size);
  const data = new Uint8Array(h * T * T);
  for (let e = 0; e < data.length; e++) {
    const [i, j] = [Math.floor(e / T) % T, e % T];
    data[e] = i === j || mix32(e * 2654435761 + 17) / 2 ** 32 < density ? 1 : 0;
  }
  return { data, shape: [1, h, T, T], blockSize: [size, size] };
}

function sets(n: number, h: number): [string, AttentionOptions, string][] {
  const slopes = Float32Array.from({ length: h }, (_, i) => 2 ** (-8 * (i + 1) / h));
  const keep = Uint8Array.from({ length: n }, (_, j) => (j < n - Math.floor(n / 8) ? 1 : 0));
  return [
    ['full', {}, 'dense'],
    ['causal', { causal: true }, 'causal'],
    ['causal, window 4096', { causal: true, window: [4096, 0] }, 'causal'],
    ['causal, window 1024', { causal: true, window: [1024, 0] }, 'causal'],
    ['causal, window 256', { causal: true, window: [256, 0] }, 'causal'],
    ['block mask 50 %', { blockMask: blockMask(n, h, 128, 0.5) }, 'dense'],
    ['block mask 25 %', { blockMask: blockMask(n, h, 128, 0.25) }, 'dense'],
    ['block mask 10 %', { blockMask: blockMask(n, h, 128, 0.1) }, 'dense'],
    ['causal, ALiBi', { causal: true, alibiSlopes: slopes }, 'causal'],
    ['causal, soft-cap 30', { causal: true, softcap: 30 }, 'causal'],
    ['key padding mask (1/8 dropped)', { mask: { data: keep, shape: [1, 1, 1, n] } }, 'dense'],
    ['causal, dropout 0.1', { causal: true, dropout: { p: 0.1, seed: 1 } }, 'causal'],
  ];
}

/** Fraction of head 0's score matrix a set keeps (every n/512-th row), for reading the times. */
function kept(o: AttentionOptions, n: number): number {
  const t = (rows: number, heads: number): Tensor => ({ data: new Float32Array(rows * heads), dtype: 'f32', shape: [1, rows, heads, 1] });
  const p = checkForward(t(n, H), t(n, 1), t(n, 1), o);
  let [count, total] = [0, 0];
  for (let i = 0; i < n; i += Math.max(1, Math.floor(n / 512))) {
    for (let j = 0; j < n; j++, total++) if (keeps(p.mods, 0, 0, i, j, n, n)) count++;
  }
  return count / total;
}

function upload(gpu: Gpu, values: Float64Array, shape: number[]): GpuTensor {
  const data = dtype === 'f16' ? encodeF16(values) : Float32Array.from(values);
  const buffer = gpu.device.createBuffer({ size: Math.ceil(data.byteLength / 4) * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  gpu.device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, Math.ceil(data.byteLength / 4) * 4);
  return { data: buffer, dtype, shape };
}

function host(values: Float64Array, shape: number[]): Tensor {
  return dtype === 'f16' ? { data: encodeF16(values), dtype, shape } : { data: Float32Array.from(values), dtype, shape };
}

/** Max |x − y| of out. */
function maxErr(x: Float64Array, y: Float64Array): number {
  let e = 0;
  for (let i = 0; i < x.length; i++) e = Math.max(e, Math.abs(x[i] - y[i]));
  return e;
}

/** The check of step 1: out of flash and standard (webgpu) against the oracle on a small shape. */
async function check(o: AttentionOptions): Promise<string> {
  const n = 300;
  const [q, k, v] = [1, 2, 3].map((s) => host(randomNormal(n * 2 * D, s), [1, n, 2, D]));
  const options = { ...o, blockMask: o.blockMask && blockMask(n, 2, 128, 0.3), mask: o.mask && { data: Uint8Array.from({ length: n }, (_, j) => (j < n - 37 ? 1 : 0)), shape: [1, 1, 1, n] }, alibiSlopes: o.alibiSlopes && Float32Array.of(0.25, 0.0625) } as AttentionOptions;
  const f64 = (t: Tensor): Tensor => ({ data: toF64(t), dtype: 'f64', shape: t.shape });
  const p = checkForward(f64(q), f64(k), f64(v), options);
  const oracle = standardForward(p, toF64(q), toF64(k), toF64(v)).out;
  const flash = toF64((await forward(q, k, v, { ...options, backend: 'webgpu' })).out);
  const standard = toF64((await forward(q, k, v, { ...options, backend: 'webgpu', algorithm: 'standard' })).out);
  const [ef, es] = [maxErr(flash, oracle), maxErr(standard, oracle)];
  return ef <= 2 * es + 1e-6 ? `ok ${ef.toExponential(2)} (std ${es.toExponential(2)})` : `FAILS ${ef.toExponential(2)} > 2 × ${es.toExponential(2)} + 1e-6`;
}

async function time(gpu: Gpu, run: () => Promise<unknown>): Promise<number> {
  await run();
  await gpu.device.queue.onSubmittedWorkDone();
  const timer = new GpuTimer(gpu.device);
  const ms: number[] = [];
  for (let rep = 0; rep < 5; rep++) {
    await timer.start();
    for (let i = 0; i < R; i++) await run();
    await timer.mark();
    await gpu.device.queue.onSubmittedWorkDone();
    ms.push((await timer.finish())[0] / R);
  }
  timer.destroy();
  ms.sort((a, b) => a - b);
  return ms[2];
}

const gpu = await defaultGpu();
console.log(`# ${gpu.description}; ${new Date().toISOString()}; node ${process.version}`);
console.log(`# B=1 H=${H} N=${N} D=${D} ${dtype}; ms per call (median of 5 × ${R} calls, GPU timestamps)\n`);
const q = upload(gpu, randomNormal(N * H * D, 1), [1, N, H, D]);
const k = upload(gpu, randomNormal(N * H * D, 2), [1, N, H, D]);
const v = upload(gpu, randomNormal(N * H * D, 3), [1, N, H, D]);
const dout = upload(gpu, randomNormal(N * H * D, 4), [1, N, H, D]);
const base: Record<string, { fwd: number; bwd: number }> = {};
console.log(`${'options'.padEnd(32)} ${'kept'.padStart(6)}  ${'forward'.padStart(9)} ${'fwd+bwd'.padStart(9)}  ${'speedup'.padStart(8)}  family       check`);
for (const [name, options, against] of sets(N, H)) {
  const verdict = await check(options).catch((e: Error) => `FAILS: ${e.message}`);
  if (verdict.startsWith('FAILS')) {
    console.log(`${name.padEnd(32)} not timed: ${verdict}`);
    continue;
  }
  const family = forwardChoice(checkForward(q, k, v, options), gpu).kernel;
  const fwd = await time(gpu, async () => {
    const r = await forward(q, k, v, options);
    r.out.data.destroy();
    r.lse.data.destroy();
  });
  const both = await time(gpu, async () => {
    const r = await forward(q, k, v, options);
    const g = await backward(dout, q, k, v, r.out, r.lse, options);
    for (const t of [r.out, r.lse, g.dq, g.dk, g.dv]) t.data.destroy();
  });
  if (name === 'full' || name === 'causal') base[name === 'full' ? 'dense' : 'causal'] = { fwd, bwd: both };
  const ref = base[against];
  const speedup = ref && name !== 'full' && name !== 'causal' ? `${(ref.fwd / fwd).toFixed(2)}×` : '';
  console.log(`${name.padEnd(32)} ${(100 * kept(options, N)).toFixed(1).padStart(5)}%  ${fwd.toFixed(3).padStart(9)} ${both.toFixed(3).padStart(9)}  ${speedup.padStart(8)}  ${family.padEnd(12)} ${verdict}`);
}
