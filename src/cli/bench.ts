/**
 * The benchmark behind `flashattn bench`: for each sequence length N, the flash algorithm and the
 * standard baseline (S and P materialised), forward and backward, each first validated against the
 * float64 reference on a small problem and then timed. Everything here but runBench is a pure function,
 * so the statistics, the error measure and the validation rule can be tested without timing anything.
 */
import {
  MemoryTracker,
  OutOfMemoryError,
  attentionFlops,
  backward,
  decodeF16,
  forward,
  type Algorithm,
  type Tensor,
} from '../index.js';
import { preferWebgpu, webgpuDevice } from '../webgpu/device.js';
import type { GpuTensor } from '../tensor.js';
import { mulberry32, randomTensor } from './random.js';

export type BenchBackend = 'cpu' | 'reference' | 'webgpu';
export type BenchDType = 'f32' | 'f16';
export type Pass = 'forward' | 'backward';

export const BENCH_BACKENDS: readonly BenchBackend[] = ['cpu', 'reference', 'webgpu'];

/** The backend `--backend auto` means here: webgpu on a real GPU adapter, else cpu. */
export async function bestBackend(dtype: BenchDType): Promise<BenchBackend> {
  return (await preferWebgpu(dtype)) ? 'webgpu' : 'cpu';
}
export const BENCH_DTYPES: readonly BenchDType[] = ['f32', 'f16'];

export interface BenchConfig {
  backend: BenchBackend;
  /** Sequence lengths; Nq = Nk = N. */
  ns: number[];
  batch: number;
  heads: number;
  dim: number;
  causal: boolean;
  dtype: BenchDType;
  /** Timed calls per measurement (after one warm-up call). */
  repeats: number;
  /** Also run the standard baseline. */
  standard: boolean;
  /** Seed of the random inputs. */
  seed: number;
}

/** Sizes of the validation problem: B=1, H=2, N = min(N, VALIDATION_MAX_N). */
export const VALIDATION_B = 1;
export const VALIDATION_H = 2;
export const VALIDATION_MAX_N = 256;

/** Largest allowed max|kernel − reference| / max|reference|, per tensor, by dtype. */
export const TOLERANCE: Record<BenchDType, number> = { f32: 1e-4, f16: 1e-2 };

export interface Validation {
  algorithm: Algorithm;
  pass: Pass;
  B: number;
  H: number;
  N: number;
  ok: boolean;
  tolerance: number;
  /** Per tensor (out, lse; or dq, dk, dv): max abs error relative to max |reference|. */
  errors: Record<string, number>;
  /** Why validation could not run (an exception), if it could not. */
  message?: string;
}

export type Status = 'ok' | 'failed-validation' | 'out-of-memory' | 'error' | 'skipped';

export interface Measurement {
  N: number;
  pass: Pass;
  algorithm: Algorithm;
  status: Status;
  /** Validation that gated this measurement (absent if skipped before validating). */
  validation?: Validation;
  flops: number;
  /** Wall time of each timed call (not the warm-up), ms. */
  timesMs: number[];
  medianMs: number | null;
  minMs: number | null;
  maxMs: number | null;
  /** flops / median time, in GFLOP/s. */
  gflops: number | null;
  /** Largest MemoryTracker peak over the calls, bytes; null where the backend counts nothing (reference). */
  peakBytes: number | null;
  /** For flash rows: flash peak / standard peak for the same N and pass. */
  peakRatio: number | null;
  /** For backward rows: which forward's out and lse were fed in (its own, unless it failed). */
  outLseFrom?: Algorithm;
  message?: string;
}

export interface BenchResult {
  config: BenchConfig;
  validations: Validation[];
  measurements: Measurement[];
}

export interface BenchHooks {
  /** A line of progress (the CLI prints these to stderr). */
  progress?: (line: string) => void;
}

// ---------------------------------------------------------------------------------------------------
// Pure helpers

/** Median of a non-empty list (mean of the middle two for even length). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError('median of an empty list');
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function summarize(timesMs: readonly number[]): { medianMs: number; minMs: number; maxMs: number } {
  return { medianMs: median(timesMs), minMs: Math.min(...timesMs), maxMs: Math.max(...timesMs) };
}

/** GFLOP/s of `flops` done in `ms` milliseconds. */
export function gflopsOf(flops: number, ms: number): number {
  return ms > 0 ? flops / (ms * 1e6) : Infinity;
}

/** The values of a tensor as numbers (f16 is decoded). */
export function valuesOf(t: Tensor): Float32Array | Float64Array {
  return t.dtype === 'f16' ? decodeF16(t.data as Uint16Array) : (t.data as Float32Array | Float64Array);
}

/**
 * max |a − ref| / max |ref| over all elements (max |a − ref| when ref is all zeros). Equal infinities
 * (an lse of −∞ for a row that sees no key) count as no error; NaN anywhere, or a lone infinity, is
 * an infinite error.
 */
export function relativeMaxError(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (a.length !== ref.length) return Infinity;
  let err = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    const x = a[i];
    const r = ref[i];
    if (x === r) {
      if (Number.isFinite(r)) scale = Math.max(scale, Math.abs(r));
      continue;
    }
    const d = Math.abs(x - r);
    if (!(d < Infinity)) return Infinity; // NaN, or an infinity on one side only
    err = Math.max(err, d);
    scale = Math.max(scale, Math.abs(r));
  }
  return scale > 0 ? err / scale : err;
}

/** Validation passes when every tensor's relative error is at most the tolerance. */
export function withinTolerance(errors: Record<string, number>, tolerance: number): boolean {
  return Object.values(errors).every((e) => e <= tolerance);
}

/** True for the errors that mean "this allocation does not fit": shown as "out of memory". */
export function isOutOfMemory(e: unknown): boolean {
  return e instanceof OutOfMemoryError || e instanceof RangeError;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** Shape of q, k, v, out, dout in the benchmark's layout, BNHD. */
export function shapeBNHD(B: number, N: number, H: number, D: number): number[] {
  return [B, N, H, D];
}

/** flash peak / standard peak for each (N, pass), written into the flash rows. */
export function fillPeakRatios(ms: Measurement[]): void {
  for (const m of ms) {
    if (m.algorithm !== 'flash') continue;
    const s = ms.find((x) => x.algorithm === 'standard' && x.N === m.N && x.pass === m.pass);
    m.peakRatio = m.peakBytes !== null && s?.peakBytes ? m.peakBytes / s.peakBytes : null;
  }
}

/** Rows in table order: by N, then forward before backward, then flash before standard. */
export function sortMeasurements(ms: readonly Measurement[]): Measurement[] {
  const passRank = (p: Pass) => (p === 'forward' ? 0 : 1);
  const algRank = (a: Algorithm) => (a === 'flash' ? 0 : 1);
  return [...ms].sort((a, b) => a.N - b.N || passRank(a.pass) - passRank(b.pass) || algRank(a.algorithm) - algRank(b.algorithm));
}

// ---------------------------------------------------------------------------------------------------
// Running

interface Inputs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  dout: Tensor;
}

function makeInputs(B: number, N: number, H: number, D: number, dtype: BenchDType, seed: number): Inputs {
  const uniform = mulberry32(seed);
  const shape = shapeBNHD(B, N, H, D);
  return {
    q: randomTensor(shape, dtype, uniform),
    k: randomTensor(shape, dtype, uniform),
    v: randomTensor(shape, dtype, uniform),
    dout: randomTensor(shape, dtype, uniform),
  };
}

/**
 * Compare one backend/algorithm/pass with the float64 reference ('reference' backend, 'standard'
 * algorithm) on a B=1, H=2, N=min(N, 256) problem with the benchmark's D, dtype and causal flag.
 * The backward is fed the reference forward's out and lse, so it is judged on its own.
 */
export async function validate(config: BenchConfig, algorithm: Algorithm, pass: Pass, N: number): Promise<Validation> {
  const Nv = Math.min(N, VALIDATION_MAX_N);
  const tolerance = TOLERANCE[config.dtype];
  const base: Validation = { algorithm, pass, B: VALIDATION_B, H: VALIDATION_H, N: Nv, ok: false, tolerance, errors: {} };
  try {
    const { q, k, v, dout } = makeInputs(VALIDATION_B, Nv, VALIDATION_H, config.dim, config.dtype, config.seed ^ 0x5eed);
    const refOpts = { backend: 'reference', algorithm: 'standard', causal: config.causal, memory: new MemoryTracker() } as const;
    const opts = { backend: config.backend, algorithm, causal: config.causal, memory: new MemoryTracker() };
    const ref = await forward(q, k, v, refOpts);
    let errors: Record<string, number>;
    if (pass === 'forward') {
      const got = await forward(q, k, v, opts);
      errors = {
        out: relativeMaxError(valuesOf(got.out), valuesOf(ref.out)),
        lse: relativeMaxError(valuesOf(got.lse), valuesOf(ref.lse)),
      };
    } else {
      const refG = await backward(dout, q, k, v, ref.out, ref.lse, refOpts);
      const got = await backward(dout, q, k, v, ref.out, ref.lse, opts);
      errors = {
        dq: relativeMaxError(valuesOf(got.dq), valuesOf(refG.dq)),
        dk: relativeMaxError(valuesOf(got.dk), valuesOf(refG.dk)),
        dv: relativeMaxError(valuesOf(got.dv), valuesOf(refG.dv)),
      };
    }
    return { ...base, ok: withinTolerance(errors, tolerance), errors };
  } catch (e) {
    return { ...base, message: errorMessage(e) };
  }
}

/**
 * On the webgpu backend the benchmark keeps its tensors on the device (zero-copy), so a timed call is the
 * kernels alone: it ends when the queue has finished the work, and the outputs of calls that are not kept
 * are destroyed.
 */
interface Device {
  device: GPUDevice;
  upload(t: Tensor): GpuTensor;
}

async function benchDevice(backend: BenchBackend): Promise<Device | undefined> {
  if (backend !== 'webgpu') return undefined;
  const device = await webgpuDevice();
  return {
    device,
    upload(t) {
      const bytes = Math.ceil(t.data.byteLength / 4) * 4;
      const data = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
      const padded = new Uint8Array(bytes);
      padded.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
      device.queue.writeBuffer(data, 0, padded);
      return { data, dtype: t.dtype as 'f32' | 'f16', shape: t.shape };
    },
  };
}

/** Wait for the device (if any) and free the GPU outputs of a result that is not kept. */
async function settle(dev: Device | undefined, result: object, keep: boolean): Promise<void> {
  if (!dev) return;
  await dev.device.queue.onSubmittedWorkDone();
  if (!keep) for (const t of Object.values(result)) if (t && typeof t === 'object' && 'data' in t && t.data instanceof GPUBuffer) t.data.destroy();
}

/** One warm-up call, then `repeats` timed calls, each with a fresh MemoryTracker; the last result is kept. */
async function time<T extends object>(
  repeats: number,
  dev: Device | undefined,
  call: (memory: MemoryTracker) => Promise<T>,
): Promise<{ timesMs: number[]; peak: number; last: T }> {
  let last = await call(new MemoryTracker());
  await settle(dev, last, repeats === 0);
  let peak = 0;
  const timesMs: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const memory = new MemoryTracker();
    await settle(dev, last, false);
    const t0 = performance.now();
    last = await call(memory);
    await settle(dev, last, true);
    timesMs.push(performance.now() - t0);
    peak = Math.max(peak, memory.peak);
  }
  return { timesMs, peak, last };
}

function emptyMeasurement(N: number, pass: Pass, algorithm: Algorithm, flops: number, status: Status): Measurement {
  return { N, pass, algorithm, status, flops, timesMs: [], medianMs: null, minMs: null, maxMs: null, gflops: null, peakBytes: null, peakRatio: null };
}

/**
 * The cpu backend starts its worker threads on first use, and a thread that is still starting competes
 * with the timed calls for the cores. One untimed forward and backward big enough to run on the pool
 * (2^21 multiply-adds and up) makes sure every worker has started and answered before any timing.
 */
export async function warmUpPool(config: BenchConfig): Promise<void> {
  const { q, k, v, dout } = makeInputs(1, 128, 2, 64, config.dtype, config.seed);
  const opts = { backend: config.backend, algorithm: 'flash', causal: false, memory: new MemoryTracker() } as const;
  const { out, lse } = await forward(q, k, v, opts);
  await backward(dout, q, k, v, out, lse, opts);
}

/** Run the whole benchmark. Measurements come back in table order, with peak ratios filled in. */
export async function runBench(config: BenchConfig, hooks: BenchHooks = {}): Promise<BenchResult> {
  const say = hooks.progress ?? (() => undefined);
  const algorithms: Algorithm[] = config.standard ? ['flash', 'standard'] : ['flash'];
  const validations: Validation[] = [];
  const cache = new Map<string, Validation>();
  const measurements: Measurement[] = [];
  const { batch: B, heads: H, dim: D, causal } = config;

  const validated = async (algorithm: Algorithm, pass: Pass, N: number): Promise<Validation> => {
    const key = `${algorithm}/${pass}/${Math.min(N, VALIDATION_MAX_N)}`;
    let v = cache.get(key);
    if (!v) {
      say(`N=${N} ${algorithm} ${pass}: validating against the float64 reference (B=${VALIDATION_B} H=${VALIDATION_H} N=${Math.min(N, VALIDATION_MAX_N)}) ...`);
      v = await validate(config, algorithm, pass, N);
      cache.set(key, v);
      validations.push(v);
      say(`  ${v.ok ? 'ok' : 'FAILED'}: ${formatErrors(v)}`);
    }
    return v;
  };

  if (config.backend === 'cpu') {
    say('starting the cpu worker threads (one untimed call) ...');
    await warmUpPool(config);
  }
  const dev = await benchDevice(config.backend);

  for (const N of config.ns) {
    say(`N=${N}: generating inputs (B=${B} H=${H} D=${D} ${config.dtype}) ...`);
    const host = makeInputs(B, N, H, D, config.dtype, config.seed + N);
    // On webgpu the inputs live on the device for the whole N (the overloads take all-host or all-GPU tensors).
    const [q, k, v, dout] = [host.q, host.k, host.v, host.dout].map((t) => (dev ? dev.upload(t) : t)) as Tensor[];
    const size = { B, H, Nq: N, Nk: N, D, causal };
    const forwards = new Map<Algorithm, { out: Tensor; lse: Tensor }>();

    for (const pass of ['forward', 'backward'] as const) {
      const flops = attentionFlops(size, pass);
      for (const algorithm of algorithms) {
        const validation = await validated(algorithm, pass, N);
        const m = emptyMeasurement(N, pass, algorithm, flops, 'ok');
        m.validation = validation;
        measurements.push(m);
        if (!validation.ok) {
          m.status = 'failed-validation';
          m.message = validation.message ?? 'validation failed';
          continue;
        }
        const options = (memory: MemoryTracker) => ({ backend: config.backend, algorithm, causal, memory });
        let outLse: { out: Tensor; lse: Tensor } | undefined;
        if (pass === 'backward') {
          // Its own forward's out and lse; the other algorithm's if its own forward did not run.
          m.outLseFrom = forwards.has(algorithm) ? algorithm : [...forwards.keys()][0];
          outLse = m.outLseFrom && forwards.get(m.outLseFrom);
          if (!outLse) {
            m.status = 'skipped';
            m.message = 'no forward output to differentiate';
            continue;
          }
        }
        say(`N=${N} ${algorithm} ${pass}: 1 warm-up + ${config.repeats} timed ...`);
        try {
          if (pass === 'forward') {
            const r = await time(config.repeats, dev, (memory) => forward(q, k, v, options(memory)));
            forwards.set(algorithm, { out: r.last.out, lse: r.last.lse });
            Object.assign(m, summarize(r.timesMs), { timesMs: r.timesMs, peakBytes: r.peak || null });
          } else {
            const { out, lse } = outLse!;
            const r = await time(config.repeats, dev, (memory) => backward(dout, q, k, v, out, lse, options(memory)));
            await settle(dev, r.last, false);
            Object.assign(m, summarize(r.timesMs), { timesMs: r.timesMs, peakBytes: r.peak || null });
          }
          m.gflops = gflopsOf(flops, m.medianMs!);
          say(`  median ${m.medianMs!.toFixed(2)} ms`);
        } catch (e) {
          m.status = isOutOfMemory(e) ? 'out-of-memory' : 'error';
          m.message = errorMessage(e);
          say(`  ${m.status === 'out-of-memory' ? 'out of memory' : 'error'}: ${m.message}`);
        }
      }
    }
    if (dev) for (const t of [q, k, v, dout, ...[...forwards.values()].flatMap((f) => [f.out, f.lse])]) (t.data as unknown as GPUBuffer).destroy();
  }
  fillPeakRatios(measurements);
  return { config, validations, measurements: sortMeasurements(measurements) };
}

/** "out 1.2e-7, lse 3.4e-8 (tolerance 1e-4)", or the reason validation could not run. */
export function formatErrors(v: Validation): string {
  if (v.message) return v.message;
  const parts = Object.entries(v.errors).map(([name, e]) => `${name} ${e.toExponential(1)}`);
  return `max|err|/max|ref|: ${parts.join(', ')} (tolerance ${v.tolerance.toExponential(0)})`;
}
