/**
 * The decode suite of `flashattn bench`: one new query per sequence (Nq = 1) against a long K and V, the
 * step an inference server repeats for every generated token. It reads all of K and V once and does
 * little arithmetic per byte, so its measure is the memory bandwidth it reaches: 2·B·Nk·Hkv·D·2 bytes
 * (f16) per call over the time per call.
 *
 * Each case runs three ways (DecodeVariant): forward() on the tensors (GPUBuffers on webgpu, written into
 * the same out and lse every call through options.out / options.lse; typed arrays on the cpu); a contiguous KV cache and a paged one (DECODE_PAGE_SIZE tokens a page), each filled once
 * with append() and timed on cache.forward(q) into out and lse the caller supplies (on webgpu: nothing
 * created, no wait for the GPU). Each is first validated: its out and lse on the first batch row's first
 * key/value head and the last row's last (with their query heads) against the float64 reference over the same values,
 * max|error| / max|reference| within the bench's f16 tolerance. Then: spin-up (SPIN_UP_MS of calls back to
 * back), and `repeats` samples of `calls` back-to-back calls between two clock marks (GPU timestamps
 * where the adapter has them): the time per call is the interval / calls. The same samples give the
 * host's wall time per call, from before the first call to after the queue is idle, / calls: its ratio
 * to the GPU's time says whether the host's cost per call is hidden behind the GPU's.
 */
import { createKVCache, forward, MemoryTracker, type GpuTensor, type KVCache, type Tensor } from '../index.js';
import { decodeF16 } from '../f16.js';
import { tensor } from '../tensor.js';
import type { Gpu } from '../webgpu/device.js';
import { SPIN_UP_MS, TOLERANCE, errorMessage, isOutOfMemory, relativeMaxError, summarize, withinTolerance } from './bench.js';
import type { Clock } from './clock.js';
import { fillHashedF16, hashedF16 } from './decode-inputs.js';
import type { Progress } from './progress.js';
import { mulberry32, randomTensor } from './random.js';
import type { DecodeCase, DecodeMeasurement, DecodeValidation, DecodeVariant } from './results.js';
import { kvBytes } from './suites.js';

export const DECODE_VARIANTS: readonly DecodeVariant[] = ['forward', 'cache', 'paged'];
/** Timed samples per row unless --repeats says otherwise. */
export const DECODE_REPEATS = 5;
/** Back-to-back calls per timed sample, by backend: the cpu's calls take milliseconds each. */
export const DECODE_CALLS = { gpu: 100, cpu: 10 } as const;
/** The peak bandwidth assumed for an adapter whose name says H200 (HBM3e, 4.8 TB/s). */
export const H200_PEAK_GBPS = 4800;

// ---------------------------------------------------------------------------------------------------
// Pure helpers

/** GB/s (10^9 bytes per second) of `bytes` moved in `ms` milliseconds. */
export function bandwidthGBps(bytes: number, ms: number): number {
  return ms > 0 ? bytes / (ms * 1e6) : Infinity;
}

/** The peak bandwidth to show for an adapter: H200_PEAK_GBPS where its description names an H200, else none. */
export function defaultPeakGBps(description: string | undefined): number | null {
  return description !== undefined && /\bH200\b/i.test(description) ? H200_PEAK_GBPS : null;
}

/** "forward", "cache", "paged (16 tokens/page)": how a variant shows in tables and charts. */
export function variantLabel(variant: DecodeVariant, pageSize: number | null): string {
  return variant === 'paged' ? `paged (${pageSize} tokens/page)` : variant;
}

/** A decode row before it is timed (or when it cannot be). */
export function emptyDecodeMeasurement(c: DecodeCase, variant: DecodeVariant, pageSize: number, calls: number, status: DecodeMeasurement['status'] = 'ok', message?: string): DecodeMeasurement {
  const m: DecodeMeasurement = {
    ...c,
    variant,
    pageSize: variant === 'paged' ? pageSize : null,
    status,
    kvBytes: kvBytes(c),
    calls,
    timesMs: [],
    medianMs: null,
    minMs: null,
    maxMs: null,
    wallMs: [],
    wallMedianMs: null,
    wallRatio: null,
    gbps: null,
  };
  if (message !== undefined) m.message = message;
  return m;
}

/** Fill a decode row from its samples: GPU (or wall-clock) ms per call, and the host's wall ms per call. */
export function finishDecodeMeasurement(m: DecodeMeasurement, timesMs: number[], wallMs: number[]): void {
  const t = summarize(timesMs);
  const wall = summarize(wallMs).medianMs;
  Object.assign(m, t, { timesMs, wallMs, wallMedianMs: wall, wallRatio: wall / t.medianMs, gbps: bandwidthGBps(m.kvBytes, t.medianMs) });
}

/**
 * The (batch row, key/value head) pairs a validation compares, each with its H/Hkv query heads: the first
 * row's first head and the last row's last (one pair where there is one row and one head). Two, not all
 * four: the float64 reference takes seconds per pair at Nk = 128k.
 */
export function checkedSlices(c: Pick<DecodeCase, 'B' | 'Hkv'>): [number, number][] {
  return c.B === 1 && c.Hkv === 1 ? [[0, 0]] : [[0, 0], [c.B - 1, c.Hkv - 1]];
}

// ---------------------------------------------------------------------------------------------------
// Running

export interface DecodeContext {
  /** 'webgpu' needs `gpu`: tensors and caches live on its device. */
  backend: 'cpu' | 'webgpu';
  gpu?: Gpu;
  repeats: number;
  calls: number;
  seed: number;
  pageSize: number;
  clock: Clock;
  progress: Progress;
  /** Called with each measurement as it is final. */
  record?: (m: DecodeMeasurement) => void;
}

/** Seeds of the three tensors of a case (k and v are hashed, q drawn). */
const SEED = { q: 1, k: 2, v: 3 };

/** The tensors of a case: q on the host (small) and where the backend runs; k and v where it runs. */
interface DecodeInputs {
  qHost: Tensor;
  q: Tensor | GpuTensor;
  k: Tensor | GpuTensor;
  v: Tensor | GpuTensor;
  dispose(): void;
}

/** Seeds of a case's tensors under the run's seed. */
function seeds(seed: number): { q: number; k: number; v: number } {
  return { q: seed * 3 + SEED.q, k: seed * 3 + SEED.k, v: seed * 3 + SEED.v };
}

function gpuBuffer(device: GPUDevice, bytes: number, label: string): GPUBuffer {
  return device.createBuffer({ size: Math.max(4, Math.ceil(bytes / 4) * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST, label });
}

async function makeInputs(c: DecodeCase, ctx: DecodeContext): Promise<DecodeInputs> {
  const s = seeds(ctx.seed);
  const qHost = randomTensor([c.B, 1, c.H, c.D], 'f16', mulberry32(s.q));
  const kvShape = [c.B, c.Nk, c.Hkv, c.D];
  const elements = c.B * c.Nk * c.Hkv * c.D;
  if (ctx.backend === 'cpu') {
    const k = tensor(hashedF16(s.k, elements), kvShape, 'f16');
    const v = tensor(hashedF16(s.v, elements), kvShape, 'f16');
    return { qHost, q: qHost, k, v, dispose() {} };
  }
  const device = ctx.gpu!.device;
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  const q = gpuBuffer(device, qHost.data.byteLength, 'decode q');
  const k = gpuBuffer(device, elements * 2, 'decode k');
  const v = gpuBuffer(device, elements * 2, 'decode v');
  const padded = new Uint16Array(Math.ceil(qHost.data.length / 2) * 2);
  padded.set(qHost.data as Uint16Array);
  device.queue.writeBuffer(q, 0, padded);
  fillHashedF16(device, k, s.k, elements);
  fillHashedF16(device, v, s.v, elements);
  const [invalid, oom] = [await device.popErrorScope(), await device.popErrorScope()];
  const dispose = () => [q, k, v].forEach((b) => b.destroy());
  if (oom || invalid) {
    dispose();
    const e = (oom ?? invalid)!;
    throw oom ? new RangeError(`out of memory: K and V of ${kvBytes(c)} bytes (${e.message})`) : new Error(`cannot make the inputs: ${e.message}`);
  }
  return { qHost, q: { data: q, dtype: 'f16', shape: [c.B, 1, c.H, c.D] }, k: { data: k, dtype: 'f16', shape: kvShape }, v: { data: v, dtype: 'f16', shape: kvShape }, dispose };
}

/** The float64 reference's out and lse over the checked slices: per (row, kv head), its G query heads. */
interface Reference {
  out: Float64Array;
  lse: Float64Array;
}

/**
 * The reference over the same values: for each checked batch row b and key/value head g, q of b's heads
 * g·G .. g·G + G − 1 against k and v of (b, g), recomputed from the hash; out and lse concatenated in
 * (row, head, d) order.
 */
async function reference(c: DecodeCase, qHost: Tensor, seed: number): Promise<Reference> {
  const s = seeds(seed);
  const G = c.H / c.Hkv;
  const q = decodeF16(qHost.data as Uint16Array);
  const outs: number[] = [];
  const lses: number[] = [];
  for (const [b, g] of checkedSlices(c)) {
    const qs = new Float64Array(G * c.D);
    for (let h = 0; h < G; h++) for (let d = 0; d < c.D; d++) qs[h * c.D + d] = q[(b * c.H + g * G + h) * c.D + d];
    // Element (j, d) of (b, g) in BNHD: ((b·Nk + j)·Hkv + g)·D + d.
    const at = (j: number) => ((b * c.Nk + Math.floor(j / c.D)) * c.Hkv + g) * c.D + (j % c.D);
    const kv = (sd: number) => tensor(Float64Array.from(decodeF16(hashedF16(sd, c.Nk * c.D, at))), [1, c.Nk, 1, c.D], 'f64');
    const r = await forward(tensor(qs, [1, 1, G, c.D], 'f64'), kv(s.k), kv(s.v), { backend: 'reference', algorithm: 'standard' });
    outs.push(...(r.out.data as Float64Array));
    lses.push(...(r.lse.data as Float64Array));
  }
  return { out: Float64Array.from(outs), lse: Float64Array.from(lses) };
}

/** Our out (B, 1, H, D) and lse (B, H, 1) cut to the checked slices, in the reference's order. */
function slices(c: DecodeCase, out: Float32Array, lse: Float32Array): { out: Float64Array; lse: Float64Array } {
  const G = c.H / c.Hkv;
  const o: number[] = [];
  const l: number[] = [];
  for (const [b, g] of checkedSlices(c)) {
    for (let h = g * G; h < (g + 1) * G; h++) {
      for (let d = 0; d < c.D; d++) o.push(out[(b * c.H + h) * c.D + d]);
      l.push(lse[b * c.H + h]);
    }
  }
  return { out: Float64Array.from(o), lse: Float64Array.from(l) };
}

async function readBack(device: GPUDevice, buffer: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'decode readback' });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, 0, staging, 0, size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const data = staging.getMappedRange(0, size).slice(0, bytes);
  staging.unmap();
  staging.destroy();
  return data;
}

/** One variant of a case, ready to call: the timed call, one call whose outputs are read back, cleanup. */
interface Runner {
  call(): Promise<unknown>;
  /** Run once and return out (B·H·D values) and lse (B·H). */
  outputs(): Promise<{ out: Float32Array; lse: Float32Array }>;
  dispose(): void;
}

async function makeRunner(c: DecodeCase, variant: DecodeVariant, x: DecodeInputs, ctx: DecodeContext): Promise<Runner> {
  const memory = new MemoryTracker();
  const device = ctx.gpu?.device;
  if (variant === 'forward') {
    if (!device) {
      const [q, k, v] = [x.q, x.k, x.v] as Tensor[];
      const run = () => forward(q, k, v, { backend: 'cpu', memory });
      return {
        call: run,
        async outputs() {
          const r = await run();
          return { out: decodeF16(r.out.data as Uint16Array), lse: r.lse.data as Float32Array };
        },
        dispose() {},
      };
    }
    const [q, k, v] = [x.q, x.k, x.v] as GpuTensor[];
    // As a decode loop calls it: the same out and lse every step (options.out / options.lse), so a call makes no buffers.
    const out: GpuTensor = { data: gpuBuffer(device, c.B * c.H * c.D * 2, 'decode out'), dtype: 'f16', shape: [c.B, 1, c.H, c.D] };
    const lse: GpuTensor = { data: gpuBuffer(device, c.B * c.H * 4, 'decode lse'), dtype: 'f32', shape: [c.B, c.H, 1] };
    const run = () => forward(q, k, v, { memory, out, lse });
    return {
      call: run,
      async outputs() {
        await run();
        return {
          out: decodeF16(new Uint16Array(await readBack(device, out.data, c.B * c.H * c.D * 2))),
          lse: new Float32Array(await readBack(device, lse.data, c.B * c.H * 4)),
        };
      },
      dispose() {
        out.data.destroy();
        lse.data.destroy();
      },
    };
  }
  const cache: KVCache = await createKVCache({
    batch: c.B,
    kvHeads: c.Hkv,
    headDim: c.D,
    maxLength: c.Nk,
    dtype: 'f16',
    backend: ctx.backend,
    ...(variant === 'paged' ? { pageSize: ctx.pageSize } : {}),
    ...(device ? { device } : {}),
    memory,
  });
  try {
    await cache.append(x.k as Tensor, x.v as Tensor);
  } catch (e) {
    cache.dispose();
    throw e;
  }
  if (!device) {
    const q = x.q as Tensor;
    const run = () => cache.forward(q);
    return {
      call: run,
      async outputs() {
        const r = (await run()) as { out: Tensor; lse: Tensor };
        return { out: decodeF16(r.out.data as Uint16Array), lse: r.lse.data as Float32Array };
      },
      dispose: () => cache.dispose(),
    };
  }
  const q = x.q as GpuTensor;
  const out: GpuTensor = { data: gpuBuffer(device, c.B * c.H * c.D * 2, 'decode out'), dtype: 'f16', shape: [c.B, 1, c.H, c.D] };
  const lse: GpuTensor = { data: gpuBuffer(device, c.B * c.H * 4, 'decode lse'), dtype: 'f32', shape: [c.B, c.H, 1] };
  const run = () => cache.forward(q, undefined, undefined, { out, lse });
  return {
    call: run,
    async outputs() {
      await run();
      return {
        out: decodeF16(new Uint16Array(await readBack(device, out.data, c.B * c.H * c.D * 2))),
        lse: new Float32Array(await readBack(device, lse.data, c.B * c.H * 4)),
      };
    },
    dispose() {
      cache.dispose();
      out.data.destroy();
      lse.data.destroy();
    },
  };
}

async function validateRunner(c: DecodeCase, variant: DecodeVariant, runner: Runner, ref: Reference): Promise<DecodeValidation> {
  const tolerance = TOLERANCE[c.dtype];
  const base: DecodeValidation = { ...c, variant, slices: checkedSlices(c), ok: false, tolerance, errors: {} };
  try {
    const got = await runner.outputs();
    const ours = slices(c, got.out, got.lse);
    const errors = { out: relativeMaxError(ours.out, ref.out), lse: relativeMaxError(ours.lse, ref.lse) };
    return { ...base, ok: withinTolerance(errors, tolerance), errors };
  } catch (e) {
    return { ...base, message: errorMessage(e) };
  }
}

/** Spin-up, then `repeats` samples of `calls` back-to-back calls: per-call GPU (clock) and wall ms. */
async function timeRunner(runner: Runner, ctx: DecodeContext): Promise<{ timesMs: number[]; wallMs: number[] }> {
  const device = ctx.gpu?.device;
  const idle = async () => {
    if (device) await device.queue.onSubmittedWorkDone();
  };
  if (device) {
    // An idle GPU clocks down (the validation ran on the host): calls back to back first.
    const start = performance.now();
    while (performance.now() - start < SPIN_UP_MS) {
      for (let i = 0; i < 10; i++) await runner.call();
      await idle();
    }
  }
  const timesMs: number[] = [];
  const wallMs: number[] = [];
  for (let r = 0; r < ctx.repeats; r++) {
    await ctx.clock.start(); // waits until the queue is idle
    const t0 = performance.now();
    for (let i = 0; i < ctx.calls; i++) await runner.call();
    await ctx.clock.mark();
    await idle();
    const t1 = performance.now();
    const [ms] = await ctx.clock.finish();
    timesMs.push(ms / ctx.calls);
    wallMs.push((t1 - t0) / ctx.calls);
  }
  return { timesMs, wallMs };
}

function label(c: DecodeCase): string {
  return `B=${c.B} H=${c.H} Hkv=${c.Hkv} D=${c.D} Nk=${c.Nk}`;
}

/** Run the decode cases: per case the inputs, the reference over its checked slices, then each variant validated and timed. */
export async function runDecode(cases: readonly DecodeCase[], ctx: DecodeContext): Promise<{ validations: DecodeValidation[]; measurements: DecodeMeasurement[] }> {
  const validations: DecodeValidation[] = [];
  const measurements: DecodeMeasurement[] = [];
  const say = ctx.progress;
  const done = (m: DecodeMeasurement) => {
    measurements.push(m);
    ctx.record?.(m);
    say.done(1);
  };
  for (const c of cases) {
    say.step(`decode ${label(c)}: inputs and the float64 reference`);
    let x: DecodeInputs;
    let ref: Reference;
    try {
      x = await makeInputs(c, ctx);
    } catch (e) {
      const status = isOutOfMemory(e) ? 'out-of-memory' : 'error';
      say.note(`decode ${label(c)}: ${errorMessage(e)}`);
      for (const variant of DECODE_VARIANTS) done(emptyDecodeMeasurement(c, variant, ctx.pageSize, ctx.calls, status, errorMessage(e)));
      continue;
    }
    try {
      try {
        ref = await reference(c, x.qHost, ctx.seed);
      } catch (e) {
        say.note(`decode ${label(c)}: the reference: ${errorMessage(e)}`);
        for (const variant of DECODE_VARIANTS) done(emptyDecodeMeasurement(c, variant, ctx.pageSize, ctx.calls, 'error', `the reference: ${errorMessage(e)}`));
        continue;
      }
      for (const variant of DECODE_VARIANTS) {
        const m = emptyDecodeMeasurement(c, variant, ctx.pageSize, ctx.calls);
        let runner: Runner | undefined;
        try {
          say.step(`decode ${label(c)}: ${variantLabel(variant, m.pageSize)}: validating`);
          runner = await makeRunner(c, variant, x, ctx);
          const v = await validateRunner(c, variant, runner, ref);
          validations.push(v);
          if (!v.ok) {
            Object.assign(m, { status: 'failed-validation', message: v.message ?? 'failed validation' });
            say.note(`FAILED validation: decode ${label(c)} ${variant}: ${v.message ?? JSON.stringify(v.errors)}`);
          } else {
            say.step(`decode ${label(c)}: ${variantLabel(variant, m.pageSize)}: timing`);
            const t = await timeRunner(runner, ctx);
            finishDecodeMeasurement(m, t.timesMs, t.wallMs);
          }
        } catch (e) {
          Object.assign(m, { status: isOutOfMemory(e) ? 'out-of-memory' : 'error', message: errorMessage(e) });
          say.note(`decode ${label(c)} ${variant}: ${errorMessage(e)}`);
        } finally {
          runner?.dispose();
        }
        done(m);
      }
    } finally {
      x.dispose();
    }
  }
  return { validations, measurements };
}
