/**
 * The data of one `flashattn bench` run, as results.json holds it: the environment, the settings, the
 * attention sweeps with every measurement (raw times, median, spread, peak memory, HBM bytes), the
 * validations that gated them, the encoder experiment, and PyTorch's figures where --anchor gave them.
 * Everything the terminal tables, the charts and index.html show is computed from this one object.
 */
import type { Algorithm, Precision } from '../index.js';
import type { SdpaAnchor, SeedAnchor } from './anchors.js';

export type BenchBackend = 'cpu' | 'reference' | 'webgpu';
export type BenchDType = 'f32' | 'f16';
export type Suite = 'default' | 'product';
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

export interface Results {
  tool: 'flashattn bench';
  schema: 1;
  environment: Environment;
  settings: Settings;
  attention: AttentionResult;
  encoder?: EncoderResult;
  anchors?: { sdpa?: SdpaAnchor; seed?: SeedAnchor };
}

/** A stable key for a case (measurements and charts join on it). */
export function caseKey(c: Case): string {
  return `B${c.B}-H${c.H}-N${c.N}-D${c.D}-${c.causal ? 'causal' : 'full'}-${c.dtype}`;
}
