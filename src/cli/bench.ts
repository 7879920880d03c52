/**
 * The attention measurements behind `flashattn bench`. For each case of the sweeps and each algorithm
 * (flash, and the standard baseline that materialises S and P), the forward and backward kernels are
 * first validated against the float64 reference on a small problem, then timed: the forward alone, and
 * the forward followed by the backward (fed that forward's out and lse). Each row gets the median and
 * min–max of the samples, TFLOP/s (src/flops.ts), the MemoryTracker's peak, and the HBM bytes of the
 * paper's IO analysis (io.ts). A call that runs out of memory makes an 'out-of-memory' row and the run
 * goes on. The helpers above runAttention are pure, so the error measure and the statistics are tested
 * without timing anything.
 */
import { warmUp } from './warmup.js';
import { isGpuBuffer } from '../tensor.js';
import { MemoryTracker, OutOfMemoryError, attentionFlops, backward, decodeF16, forward, type Algorithm, type GpuTensor, type Precision, type Tensor } from '../index.js';
import type { Clock } from './clock.js';
import { ioOf, type KernelGeometry } from './io.js';
import type { Progress } from './progress.js';
import { mulberry32, randomTensor } from './random.js';
import { caseKey, type AttentionResult, type BenchBackend, type BenchDType, type Case, type Measurement, type Pass, type Sweep, type Validation } from './results.js';
import { uniqueCases } from './suites.js';

/** Sizes of the validation problem: B=1, H=2, N = min(N, VALIDATION_MAX_N). */
export const VALIDATION_B = 1;
export const VALIDATION_H = 2;
export const VALIDATION_MAX_N = 256;

/** Largest allowed max|kernel − reference| / max|reference|, per tensor, by dtype. */
export const TOLERANCE: Record<BenchDType, number> = { f32: 1e-4, f16: 1e-2 };

/** On webgpu a timed sample repeats the call until it lasts about this long (host gaps amortised). */
export const TARGET_SAMPLE_MS = 100;
export const MAX_INNER = 64;
/**
 * On webgpu the calls run back to back for at least this long before the samples: a GPU left idle (the
 * validation runs on the host) clocks down, and on an H100 the samples that followed a short warm-up
 * read up to 4× slow (a median of 40 ms against a minimum of 10 ms for the same call).
 */
export const SPIN_UP_MS = 300;

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

/** TFLOP/s of `flops` done in `ms` milliseconds. */
export function tflopsOf(flops: number, ms: number): number {
  return ms > 0 ? flops / (ms * 1e9) : Infinity;
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

/** "out 1.2e-7, lse 3.4e-8 (tolerance 1e-4)", or the reason validation could not run. */
export function formatErrors(v: Validation): string {
  if (v.message) return v.message;
  const parts = Object.entries(v.errors).map(([name, e]) => `${name} ${e.toExponential(1)}`);
  return `max|err|/max|ref|: ${parts.join(', ')} (tolerance ${v.tolerance.toExponential(0)})`;
}

/** A row before it is timed (or when it cannot be). */
export function emptyMeasurement(c: Case, algorithm: Algorithm, pass: Pass, status: Measurement['status'] = 'ok', message?: string): Measurement {
  const m: Measurement = {
    ...c,
    algorithm,
    pass,
    status,
    flops: attentionFlops({ B: c.B, H: c.H, Nq: c.N, Nk: c.N, D: c.D, causal: c.causal }, pass),
    timesMs: [],
    medianMs: null,
    minMs: null,
    maxMs: null,
    tflops: null,
    peakBytes: null,
    io: null,
    inner: 1,
  };
  if (message !== undefined) m.message = message;
  return m;
}

/** Fill a row's statistics from its samples. */
export function finishMeasurement(m: Measurement, timesMs: number[], peakBytes: number | null): void {
  Object.assign(m, summarize(timesMs), { timesMs, peakBytes });
  m.tflops = tflopsOf(m.flops, m.medianMs!);
}

/** Calls per timed sample on a GPU, from the time of one call. */
export function innerCalls(callMs: number): number {
  return Math.max(1, Math.min(MAX_INNER, Math.ceil(TARGET_SAMPLE_MS / Math.max(callMs, 1e-3))));
}

/** Score-matrix elements of a case: what the standard algorithm's memory grows with. */
function scoreElements(c: Case): number {
  return c.B * c.H * c.N * c.N;
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
  const shape = [B, N, H, D];
  return { q: randomTensor(shape, dtype, uniform), k: randomTensor(shape, dtype, uniform), v: randomTensor(shape, dtype, uniform), dout: randomTensor(shape, dtype, uniform) };
}

/**
 * Compare one backend/algorithm/kernel with the float64 reference ('reference' backend, 'standard'
 * algorithm) on a B=1, H=2, N=min(N, 256) problem with the case's D, dtype and causal flag. The backward
 * is fed the reference forward's out and lse, so it is judged on its own.
 */
export async function validate(backend: BenchBackend, c: Case, algorithm: Algorithm, kernel: 'forward' | 'backward', seed: number, precision: Precision = 'highest'): Promise<Validation> {
  const N = Math.min(c.N, VALIDATION_MAX_N);
  const tolerance = TOLERANCE[c.dtype];
  const base: Validation = { algorithm, kernel, B: VALIDATION_B, H: VALIDATION_H, N, D: c.D, causal: c.causal, dtype: c.dtype, ok: false, tolerance, errors: {} };
  try {
    const { q, k, v, dout } = makeInputs(VALIDATION_B, N, VALIDATION_H, c.D, c.dtype, seed ^ 0x5eed);
    const refOpts = { backend: 'reference', algorithm: 'standard', causal: c.causal, memory: new MemoryTracker() } as const;
    const opts = { backend, algorithm, causal: c.causal, precision, memory: new MemoryTracker() };
    const ref = await forward(q, k, v, refOpts);
    let errors: Record<string, number>;
    if (kernel === 'forward') {
      const got = await forward(q, k, v, opts);
      errors = { out: relativeMaxError(valuesOf(got.out), valuesOf(ref.out)), lse: relativeMaxError(valuesOf(got.lse), valuesOf(ref.lse)) };
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

/** What a run needs besides the sweeps. */
export interface AttentionContext {
  backend: BenchBackend;
  repeats: number;
  seed: number;
  standard: boolean;
  /** f32 products (options.precision); default 'highest'. */
  precision?: Precision;
  clock: Clock;
  /** webgpu: the device the tensors live on (zero-copy: the timed calls are the kernels alone). */
  device?: GPUDevice;
  /** The kernels' tiles for the IO counts (undefined for the reference backend, which has none). */
  geometry?: (c: Case) => KernelGeometry;
  progress: Progress;
  /** Called with each measurement as it is final (so a run that is stopped keeps what it measured). */
  record?: (m: Measurement) => void;
}

type AnyInputs = { q: Tensor | GpuTensor; k: Tensor | GpuTensor; v: Tensor | GpuTensor; dout: Tensor | GpuTensor };

function upload(device: GPUDevice, t: Tensor): GpuTensor {
  const bytes = Math.ceil(t.data.byteLength / 4) * 4;
  const data = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  const padded = new Uint8Array(bytes);
  padded.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  device.queue.writeBuffer(data, 0, padded);
  return { data, dtype: t.dtype as 'f32' | 'f16', shape: t.shape };
}

/** Destroy the GPUBuffers among a result's tensors (host tensors need nothing). */
function release(result: object): void {
  for (const t of Object.values(result)) if (t && typeof t === 'object' && 'data' in t && isGpuBuffer(t.data)) t.data.destroy();
}

/** The two calls of a case, on host or device tensors alike. */
function calls(ctx: AttentionContext, c: Case, algorithm: Algorithm, x: AnyInputs) {
  const options = (memory: MemoryTracker) => ({ backend: ctx.backend, algorithm, causal: c.causal, precision: ctx.precision, memory });
  // The overloads take all-host or all-GPU tensors; the benchmark never mixes them.
  const q = x.q as Tensor;
  const k = x.k as Tensor;
  const v = x.v as Tensor;
  const dout = x.dout as Tensor;
  return {
    forward: (memory: MemoryTracker) => forward(q, k, v, options(memory)),
    backward: (f: { out: Tensor; lse: Tensor }, memory: MemoryTracker) => backward(dout, q, k, v, f.out, f.lse, options(memory)),
  };
}

/**
 * Time one case and algorithm: a warm-up (which also compiles GPU pipelines; on the cpu, calls until their
 * times are steady: warmup.ts), on webgpu SPIN_UP_MS of
 * forwards back to back, whose time per call sets how many calls a sample repeats, then `repeats`
 * samples of: `inner` forwards, a mark, `inner`
 * backwards (of the last forward's out and lse), a mark. The forward row's time per call is the first
 * interval / inner; the forward+backward row's is both intervals / inner.
 */
async function timeCase(
  ctx: AttentionContext,
  c: Case,
  algorithm: Algorithm,
  x: AnyInputs,
  withBackward: boolean,
): Promise<{ fwd: number[]; both: number[]; peakF: number; peakB: number; inner: number; backwardError?: unknown }> {
  const call = calls(ctx, c, algorithm, x);
  const warm = await call.forward(new MemoryTracker());
  let backwardError: unknown;
  if (withBackward) {
    try {
      release(await call.backward(warm, new MemoryTracker()));
    } catch (e) {
      // The backward does not fit (or fails): the forward is still timed.
      backwardError = e;
      withBackward = false;
    }
  }
  release(warm);
  let inner = 1;
  // On the cpu the first calls of a process run cold (worker start, JIT): call until times are steady.
  if (!ctx.device) await warmUp(async () => release(await call.forward(new MemoryTracker())));
  if (ctx.device) {
    // Spin-up: batches of 1, 2, 4, … forwards back to back (each batch waited for) until SPIN_UP_MS
    // have passed; the last batch's time per call, which the wait's latency hardly touches, sets inner.
    const spin = new MemoryTracker();
    const start = performance.now();
    for (let batch = 1; ; batch = Math.min(2 * batch, MAX_INNER)) {
      const t0 = performance.now();
      for (let i = 0; i < batch; i++) release(await call.forward(spin));
      await ctx.device.queue.onSubmittedWorkDone();
      const now = performance.now();
      inner = innerCalls((now - t0) / batch);
      if (now - start >= SPIN_UP_MS) break;
    }
  }
  const fwd: number[] = [];
  const both: number[] = [];
  let peakF = 0;
  let peakB = 0;
  for (let r = 0; r < ctx.repeats; r++) {
    const memF = new MemoryTracker();
    const memB = new MemoryTracker();
    await ctx.clock.start();
    let last = await call.forward(memF);
    for (let i = 1; i < inner; i++) {
      release(last);
      last = await call.forward(memF);
    }
    await ctx.clock.mark();
    if (withBackward) {
      for (let i = 0; i < inner; i++) release(await call.backward(last, memB));
      await ctx.clock.mark();
    }
    const [f, b = 0] = await ctx.clock.finish();
    release(last);
    fwd.push(f / inner);
    both.push((f + b) / inner);
    peakF = Math.max(peakF, memF.peak);
    peakB = Math.max(peakB, memB.peak);
  }
  return { fwd, both, peakF, peakB, inner, backwardError };
}

/** The progress units runAttention reports done: one per case and algorithm. */
export function attentionUnits(sweeps: readonly Sweep[], standard: boolean): number {
  return uniqueCases(sweeps).length * (standard ? 2 : 1);
}

/** Run the attention sweeps: every case once, flash then standard. The caller plans attentionUnits() of progress. */
export async function runAttention(sweeps: readonly Sweep[], ctx: AttentionContext): Promise<AttentionResult> {
  const algorithms: Algorithm[] = ctx.standard ? ['flash', 'standard'] : ['flash'];
  const validations: Validation[] = [];
  const cache = new Map<string, Validation>();
  const measurements: Measurement[] = [];
  const outOfMemory: Case[] = []; // standard cases that did not fit
  const say = ctx.progress;

  const validated = async (c: Case, algorithm: Algorithm, kernel: 'forward' | 'backward'): Promise<Validation> => {
    const key = `${algorithm}/${kernel}/${c.D}/${c.causal}/${c.dtype}/${Math.min(c.N, VALIDATION_MAX_N)}`;
    let v = cache.get(key);
    if (!v) {
      say.step(`validate ${algorithm} ${kernel} D=${c.D} ${c.dtype}${c.causal ? ' causal' : ''} (vs float64)`);
      v = await validate(ctx.backend, c, algorithm, kernel, ctx.seed, ctx.precision);
      cache.set(key, v);
      validations.push(v);
      if (!v.ok) say.note(`FAILED validation: ${algorithm} ${kernel} D=${c.D} ${c.dtype}${c.causal ? ' causal' : ''}: ${formatErrors(v)}`);
    }
    return v;
  };

  /** One algorithm of a case is finished: its rows are final. */
  const done = (...rows: Measurement[]): void => {
    for (const m of rows) ctx.record?.(m);
    say.done(1);
  };

  /** Validate and time one case with each algorithm. */
  const measureCase = async (c: Case, x: AnyInputs): Promise<void> => {
    for (const algorithm of algorithms) {
      const label = `${algorithm} N=${c.N} D=${c.D} ${c.dtype}${c.causal ? ' causal' : ''} B=${c.B} H=${c.H}`;
      const rows = { fwd: emptyMeasurement(c, algorithm, 'forward'), both: emptyMeasurement(c, algorithm, 'forward+backward') };
      measurements.push(rows.fwd, rows.both);
      if (ctx.geometry) {
        const g = ctx.geometry(c);
        rows.fwd.io = ioOf(c, algorithm, 'forward', g);
        rows.both.io = ioOf(c, algorithm, 'forward+backward', g);
      }
      const smaller = algorithm === 'standard' && outOfMemory.find((o) => o.D === c.D && o.causal === c.causal && o.dtype === c.dtype && scoreElements(o) <= scoreElements(c));
      if (smaller) {
        for (const m of [rows.fwd, rows.both]) Object.assign(m, { status: 'out-of-memory', message: `not tried: N=${smaller.N} (B=${smaller.B}, H=${smaller.H}) already ran out of memory` });
        done(rows.fwd, rows.both);
        continue;
      }
      const vf = await validated(c, algorithm, 'forward');
      const vb = await validated(c, algorithm, 'backward');
      if (!vf.ok) {
        for (const m of [rows.fwd, rows.both]) Object.assign(m, { status: 'failed-validation', message: vf.message ?? 'forward failed validation' });
        done(rows.fwd, rows.both);
        continue;
      }
      if (!vb.ok) Object.assign(rows.both, { status: 'failed-validation', message: vb.message ?? 'backward failed validation' });
      say.step(`timing ${label}`);
      try {
        const t = await timeCase(ctx, c, algorithm, x, vb.ok);
        finishMeasurement(rows.fwd, t.fwd, t.peakF || null);
        rows.fwd.inner = t.inner;
        if (t.backwardError !== undefined) throw t.backwardError;
        if (vb.ok) {
          finishMeasurement(rows.both, t.both, Math.max(t.peakF, t.peakB) || null);
          rows.both.inner = t.inner;
        }
      } catch (e) {
        const status = isOutOfMemory(e) ? 'out-of-memory' : 'error';
        if (status === 'out-of-memory' && algorithm === 'standard') outOfMemory.push(c);
        // A forward that ran leaves its row; the failure belongs to whatever had not finished.
        for (const m of [rows.fwd, rows.both]) if (m.status === 'ok' && m.medianMs === null) Object.assign(m, { status, message: errorMessage(e) });
        say.note(`${label}: ${status === 'out-of-memory' ? 'out of memory' : 'error'}: ${errorMessage(e)}`);
      }
      done(rows.fwd, rows.both);
    }
  };

  // Inputs are drawn once per element count and dtype and re-shaped for each case of that size: the
  // sweeps keep B·N·H·D fixed on a GPU, where drawing 4 × 33M normal values per case would cost seconds.
  let held: { key: string; x: AnyInputs } | undefined;
  const drop = () => {
    if (held && ctx.device) release(held.x);
    held = undefined;
  };
  try {
    for (const c of uniqueCases(sweeps)) {
      const key = `${c.dtype}/${c.B * c.N * c.H * c.D}`;
      if (held?.key !== key) {
        drop();
        try {
          const host = makeInputs(c.B, c.N, c.H, c.D, c.dtype, ctx.seed);
          held = { key, x: ctx.device ? { q: upload(ctx.device, host.q), k: upload(ctx.device, host.k), v: upload(ctx.device, host.v), dout: upload(ctx.device, host.dout) } : host };
        } catch (e) {
          // Inputs too large to place: every row of the case says so.
          for (const algorithm of algorithms) {
            const rows = (['forward', 'forward+backward'] as const).map((pass) => emptyMeasurement(c, algorithm, pass, isOutOfMemory(e) ? 'out-of-memory' : 'error', errorMessage(e)));
            measurements.push(...rows);
            done(...rows);
          }
          continue;
        }
      }
      const shape = [c.B, c.N, c.H, c.D];
      const x = { q: { ...held.x.q, shape }, k: { ...held.x.k, shape }, v: { ...held.x.v, shape }, dout: { ...held.x.dout, shape } } as AnyInputs;
      await measureCase(c, x);
    }
  } finally {
    drop();
  }
  return { sweeps: [...sweeps], validations, measurements };
}

/** The measurement of a case, algorithm and pass, if there is one. */
export function measurementOf(ms: readonly Measurement[], c: Case, algorithm: Algorithm, pass: Pass): Measurement | undefined {
  const key = caseKey(c);
  return ms.find((m) => m.algorithm === algorithm && m.pass === pass && caseKey(m) === key);
}
