/**
 * The data of one `flashattn bench` run, as results.json holds it: the environment, the settings, the
 * attention sweeps with every measurement (raw times, median, spread, peak memory, HBM bytes), the
 * validations that gated them, the encoder experiment, and PyTorch's figures where --anchor gave them.
 * Everything the terminal tables, the charts and index.html show is computed from this one object.
 */
import type { Algorithm, Precision } from '../index.js';
import type { DecodeAnchor, SdpaAnchor, SeedAnchor } from './anchors.js';

export type BenchBackend = 'cpu' | 'reference' | 'webgpu';
export type BenchDType = 'f32' | 'f16';
export type Suite = 'default' | 'product' | 'decode';
/** The timed passes: the forward alone, and forward then backward (the backward fed that forward's out and lse). */
export type Pass = 'forward' | 'forward+backward';
/** How a time was taken: GPU timestamps, wall clock until the GPU queue is idle, or wall clock (cpu). */
export type TimerMethod = 'timestamp-query' | 'onSubmittedWorkDone' | 'wall-clock';
export type Status = 'ok' | 'failed-validation' | 'out-of-memory' | 'error';

/** One attention problem: q, k, v of shape (B, N, H, D), layout BNHD, Nq = Nk = N. */
export interface Case {
  B: number;
  H: number;
  N: number;
  D: number;
  causal: boolean;
  dtype: BenchDType;
}

/** A validation run: the case it ran (B, H, N smaller than the timed one's), and its verdict. */
export interface Validation extends Case {
  algorithm: Algorithm;
  /** The kernel validated: forward (out, lse) or backward (dq, dk, dv). */
  kernel: 'forward' | 'backward';
  ok: boolean;
  tolerance: number;
  /** Per tensor: max |kernel − reference| / max |reference|. */
  errors: Record<string, number>;
  /** Why validation could not run (an exception), if it could not. */
  message?: string;
}

/** Bytes moved between main memory (HBM on a GPU, DRAM on a CPU) and the kernels, per the paper's IO analysis. */
export interface Io {
  bytes: number;
  /** Flash: the on-chip bytes one tile set uses (M in the paper: workgroup memory, or the cpu tile scratch). */
  onChipBytes: number | null;
  /** How the bytes were counted, in a few words. */
  model: string;
}

export interface Measurement extends Case {
  algorithm: Algorithm;
  pass: Pass;
  status: Status;
  flops: number;
  /** Time per call of each timed sample, ms (a sample is the mean of `inner` back-to-back calls). */
  timesMs: number[];
  medianMs: number | null;
  minMs: number | null;
  maxMs: number | null;
  /** flops / median time. */
  tflops: number | null;
  /** Largest MemoryTracker peak of one call over the samples, bytes. */
  peakBytes: number | null;
  io: Io | null;
  /** Calls per timed sample. */
  inner: number;
  message?: string;
}

export type SweepAxis = 'N' | 'D' | 'causal' | 'dtype';

/** A sweep varies one axis of the case from a base; several sweeps may share a case (measured once). */
export interface Sweep {
  id: string;
  title: string;
  axis: SweepAxis;
  cases: Case[];
}

export interface AttentionResult {
  sweeps: Sweep[];
  validations: Validation[];
  measurements: Measurement[];
}

export interface EncoderSettings {
  layers: number;
  dModel: number;
  heads: number;
  ffn: number;
  batch: number;
  causal: boolean;
  dtype: BenchDType;
  /** The sequence lengths tried: from the first, doubling, to the cap. */
  ns: number[];
  /** Timed forwards per point (after one warm-up forward per variant). */
  repeats: number;
}

export interface EncoderPoint {
  attention: 'flash' | 'standard';
  N: number;
  status: Status | 'not-run';
  timesMs: number[];
  medianMs: number | null;
  minMs: number | null;
  maxMs: number | null;
  /** MemoryTracker peak during one forward (weights and activations the library holds), bytes. */
  peakBytes: number | null;
  /** What the MemoryTracker held before each forward (the weights): peakBytes less this is what grows with N. Absent in older results. */
  weightsBytes?: number | null;
  message?: string;
}

export interface EncoderResult {
  settings: EncoderSettings;
  points: EncoderPoint[];
}

export interface Environment {
  date: string;
  flashattn: string;
  node: string;
  /** Version of the `webgpu` package (Dawn) where the webgpu backend ran. */
  webgpu?: string;
  cpu: string;
  cores: number;
  platform: string;
  arch: string;
  backend: BenchBackend;
  /** The WebGPU adapter, where the webgpu backend ran. */
  adapter?: { description: string; features: string[]; software: boolean };
  timer: TimerMethod;
}

export interface Settings {
  suite: Suite;
  repeats: number;
  seed: number;
  standard: boolean;
  /** f32 products (options.precision); absent in reports from before it existed: 'highest'. */
  precision?: Precision;
}

/**
 * One decode problem (the decode suite): q of shape (B, 1, H, D) against k and v of shape (B, Nk, Hkv, D),
 * layout BNHD, not causal.
 */
export interface DecodeCase {
  B: number;
  H: number;
  Hkv: number;
  Nk: number;
  D: number;
  dtype: BenchDType;
}

/**
 * How a decode case is run: `forward` is forward() on GPUBuffer tensors (typed arrays on the cpu), which
 * makes its out and lse each call; `cache` a contiguous KV cache filled once with append(), timed on
 * cache.forward(q) into out and lse the caller supplies; `paged` the same with a paged cache.
 */
export type DecodeVariant = 'forward' | 'cache' | 'paged';

/** A decode validation: the batch rows and key/value heads compared with the float64 reference. */
export interface DecodeValidation extends DecodeCase {
  variant: DecodeVariant;
  /** (batch row, key/value head) pairs checked, each with its H/Hkv query heads: the first row's first head, the last row's last. */
  slices: [number, number][];
  ok: boolean;
  tolerance: number;
  /** Per tensor: max |ours − reference| / max |reference| over the rows and heads checked. */
  errors: Record<string, number>;
  message?: string;
}

export interface DecodeMeasurement extends DecodeCase {
  variant: DecodeVariant;
  /** Tokens per page of the paged cache (null for the others). */
  pageSize: number | null;
  status: Status;
  /** Bytes of K and V the attention reads: 2·B·Nk·Hkv·D·(bytes per element). */
  kvBytes: number;
  /** Back-to-back calls per timed sample. */
  calls: number;
  /** Time per call of each sample (the sample's interval / calls), GPU timestamps where there are. */
  timesMs: number[];
  medianMs: number | null;
  minMs: number | null;
  maxMs: number | null;
  /** The host's wall time per call of each sample: before the first call to after the queue is idle, / calls. */
  wallMs: number[];
  wallMedianMs: number | null;
  /** wallMedianMs / medianMs: how far the host's cost per call is above the device's (1: hidden). */
  wallRatio: number | null;
  /** kvBytes / medianMs, GB/s (10^9 bytes per second). */
  gbps: number | null;
  message?: string;
}

/** A case of the decode grid that was left out, and why. */
export interface DroppedDecodeCase extends DecodeCase {
  reason: string;
}

export interface DecodeSettings {
  /** Tokens per page of the paged variant. */
  pageSize: number;
  calls: number;
  /** The device's peak memory bandwidth, GB/s, for the % of peak column (null: unknown). */
  peakGBps: number | null;
  /** Where peakGBps came from: '--peak-bandwidth', or the adapter's name. */
  peakSource: string | null;
  /** How K and V were filled (a hash of each element's index: the values need not be drawn on the host). */
  inputs: string;
}

export interface DecodeResult {
  settings: DecodeSettings;
  cases: DecodeCase[];
  dropped: DroppedDecodeCase[];
  validations: DecodeValidation[];
  measurements: DecodeMeasurement[];
}

export interface Results {
  tool: 'flashattn bench';
  schema: 1;
  environment: Environment;
  settings: Settings;
  /** The attention sweeps (empty for the decode suite). */
  attention: AttentionResult;
  encoder?: EncoderResult;
  /** The decode suite. */
  decode?: DecodeResult;
  anchors?: { sdpa?: SdpaAnchor; seed?: SeedAnchor; decode?: DecodeAnchor };
}

/** A stable key for a decode case. */
export function decodeKey(c: DecodeCase): string {
  return `B${c.B}-H${c.H}-Hkv${c.Hkv}-Nk${c.Nk}-D${c.D}-${c.dtype}`;
}

/** A stable key for a case (measurements and charts join on it). */
export function caseKey(c: Case): string {
  return `B${c.B}-H${c.H}-N${c.N}-D${c.D}-${c.causal ? 'causal' : 'full'}-${c.dtype}`;
}
