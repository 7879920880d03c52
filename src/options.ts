/**
 * The options of forward() and backward(), for the whole feature table of the product. Options for
 * features that are not implemented yet are part of the type already; setting one throws a
 * NotSupportedError instead of being ignored.
 */
import type { MemoryTracker } from './memory.js';
import type { Layout, Tensor } from './tensor.js';

/** 'auto' picks the fastest backend present for the inputs (today: cpu for f32/f16, reference for f64). */
export type Backend = 'auto' | 'cpu' | 'reference' | 'webgpu';
export const BACKENDS: readonly Backend[] = ['auto', 'cpu', 'reference', 'webgpu'];

/**
 * 'flash': tiled attention with an online softmax (never materialises Nq×Nk); on the reference backend
 * these are the paper's Algorithms 1 and 2 in f64.
 * 'standard': S = scale·QKᵀ, P = softmax(S), O = PV with S and P materialised: the baseline (and, on the
 * reference backend, the float64 oracle).
 */
export type Algorithm = 'flash' | 'standard';
export const ALGORITHMS: readonly Algorithm[] = ['flash', 'standard'];
export const LAYOUTS: readonly Layout[] = ['BNHD', 'BHND'];

/**
 * How exactly f32 inputs are multiplied, after PyTorch's float32 matmul precision:
 * 'highest' (default): f32 multiply-adds, as the standard attention's.
 * 'high': on GPUs with f16 subgroup matrices (tensor cores), each f32 value is split into two f16
 * halves (22 of its 24 significant bits) and every product is three on the tensor cores: faster, with an
 * error that is within the correctness rule on unit-normal inputs and about 2–3× the standard's at
 * magnitudes of 1e4 (README, Precision). Elsewhere, and for f16 and causal attention, as 'highest'.
 */
export type Precision = 'highest' | 'high';
export const PRECISIONS: readonly Precision[] = ['highest', 'high'];

export interface AttentionOptions {
  /** Causal mask, bottom-right aligned when Nq ≠ Nk: query i sees keys j ≤ i + Nk − Nq. Default false. */
  causal?: boolean;
  /** Softmax scale; default 1/sqrt(D). Any finite number. */
  scale?: number;
  /** Axis order of q, k, v, out, dout: 'BNHD' (default, as flash_attn_func) or 'BHND' (as PyTorch SDPA). */
  layout?: Layout;
  backend?: Backend;
  /** Default 'flash'. */
  algorithm?: Algorithm;
  /** f32 products: 'highest' (default) or 'high' (split into f16 halves on tensor cores; see Precision). */
  precision?: Precision;
  /** Where the library's allocations are counted; default: the shared `memory` tracker. */
  memory?: MemoryTracker;
  /** webgpu: run on this device (the caller's) instead of the library's own. GPUBuffer inputs must belong to it. */
  device?: GPUDevice;
  /**
   * Packed variable-length sequences, as flash_attn_varlen_func (both or neither): S + 1 offsets of the S
   * sequences' rows in the packed q, (1, totalQ, H, D), and in the packed k and v, (1, totalK, Hkv, D)
   * (axes per the layout). Sequence s: query rows cuSeqlensQ[s] .. cuSeqlensQ[s+1]−1, which see only key
   * rows cuSeqlensK[s] .. cuSeqlensK[s+1]−1; causal is per sequence. Runs one sub-problem per sequence
   * (src/varlen.ts).
   */
  cuSeqlensQ?: Int32Array;
  cuSeqlensK?: Int32Array;

  // Declared for the feature table; not supported yet (setting any of them throws NotSupportedError).
  /** Sliding window (left, right) in FlashAttention-2 semantics; -1 for unbounded. */
  window?: readonly [number, number];
  /** ALiBi slopes, one per head (or per batch and head). */
  alibiSlopes?: Float32Array;
  /** Soft-capping of the logits: softcap · tanh(S / softcap). */
  softcap?: number;
  /** Additive bias on the logits, broadcastable to (B, H, Nq, Nk). */
  bias?: Tensor;
  /** Boolean mask (1 = keep), broadcastable to (B, H, Nq, Nk). */
  mask?: Uint8Array;
  /** Fused dropout on P, reproducible from the seed. */
  dropout?: { p: number; seed: number };
}

/** Options not implemented yet, with the feature's name for the error message. */
export const UNSUPPORTED_OPTIONS: Readonly<Record<string, string>> = {
  window: 'sliding-window attention',
  alibiSlopes: 'ALiBi',
  softcap: 'logit soft-capping',
  bias: 'an additive attention bias',
  mask: 'an arbitrary boolean mask',
  dropout: 'dropout',
};

export const KNOWN_OPTIONS: ReadonlySet<string> = new Set([
  'causal',
  'scale',
  'layout',
  'backend',
  'algorithm',
  'precision',
  'memory',
  'device',
  'cuSeqlensQ',
  'cuSeqlensK',
  ...Object.keys(UNSUPPORTED_OPTIONS),
]);
