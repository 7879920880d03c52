/**
 * The options of forward() and backward(), for the whole feature table of the product.
 */
import type { MemoryTracker } from './memory.js';
import type { AnyTensor, GpuTensor, Layout } from './tensor.js';

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
   * forward() on GPUBuffer tensors: write out here (q's shape and dtype, a STORAGE buffer of the same
   * device, not one of the inputs) instead of a new buffer, and return it as `out`. With `lse` too, a call
   * makes no buffers for its results (a decode loop's step reuses the same two). backward() ignores both.
   */
  out?: GpuTensor;
  /** forward() on GPUBuffer tensors: write lse here ((B, H, Nq), f32) instead of a new buffer; as `out`. */
  lse?: GpuTensor;
  /**
   * Packed variable-length sequences, as flash_attn_varlen_func (both or neither): S + 1 offsets of the S
   * sequences' rows in the packed q, (1, totalQ, H, D), and in the packed k and v, (1, totalK, Hkv, D)
   * (axes per the layout). Sequence s: query rows cuSeqlensQ[s] .. cuSeqlensQ[s+1]−1, which see only key
   * rows cuSeqlensK[s] .. cuSeqlensK[s+1]−1; causal is per sequence. Runs one sub-problem per sequence
   * (src/varlen.ts). The variants take the sequences as a batch padded to the longest one would: sequence s
   * is batch row s of max nq queries and max nk keys (the longest sequence's lengths), so alibiSlopes are H
   * or S·H, and bias, mask and blockMask are broadcast over (S, H, max nq, max nk), indexed by (sequence,
   * head, row within the sequence, key within the sequence): sequence s reads the (nq, nk) corner of its
   * row and nothing past its own lengths (dbias is 0 there).
   */
  cuSeqlensQ?: Int32Array;
  cuSeqlensK?: Int32Array;

  // The attention variants (src/modifiers.ts): each modifies the score matrix S = scale·QKᵀ of every head,
  // in this order: soft-cap, then ALiBi and bias added, then window / causal / mask / block mask drop
  // elements (a dropped element has P = 0; a row that keeps no key gives out = 0 and lse = −∞), then
  // dropout on P. Shapes over (B, H, Nq, Nk) are in that order whatever the layout.
  /**
   * Sliding window [left, right], FlashAttention-2 semantics: query i sees keys j with
   * i + Nk − Nq − left ≤ j ≤ i + Nk − Nq + right; −1 leaves that side unbounded. With causal, right is at
   * most 0. Key blocks outside every row's window are skipped.
   */
  window?: readonly [number, number];
  /**
   * ALiBi: H slopes (or B·H, per batch and head; packed sequences: S·H, per sequence and head), f32; adds
   * −slope·|i + Nk − Nq − j| to the score.
   */
  alibiSlopes?: Float32Array;
  /** Soft-capping of the scaled score, before any bias or mask: S ← softcap·tanh(S / softcap); 0 or undefined: off. */
  softcap?: number;
  /**
   * Additive bias on the scores, shape (B or 1, H or 1, Nq or 1, Nk or 1), f32 or f16 (f64 on the reference
   * backend), typed array or GPUBuffer as q is. backward() returns its gradient as `dbias` (the bias's own
   * shape, f32) when `biasGrad` is true. Packed sequences (cuSeqlensQ/K): shape (S or 1, H or 1, max nq
   * or 1, max nk or 1), element (s, h, i, j) the bias of sequence s's own query i and key j.
   */
  bias?: AnyTensor;
  /**
   * backward(): also return dbias, the gradient of the bias reduced to its shape. Default false. A bias
   * with one value along the keys (last axis of size 1) has gradient zero: softmax removes it.
   */
  biasGrad?: boolean;
  /**
   * Boolean mask, 1 (nonzero) = keep, shape (B or 1, H or 1, Nq or 1, Nk or 1), a Uint8Array. Packed
   * sequences: (S or 1, H or 1, max nq or 1, max nk or 1), indexed within each sequence, as the bias.
   */
  mask?: MaskTensor;
  /**
   * Block-sparse attention (FlashAttention, section 3.3): the score matrix is cut into blocks of
   * blockSize = [rows, cols], and only blocks whose entry is nonzero are computed at all (the others are
   * skipped as causal skips the blocks above the diagonal). Shape (B or 1, H or 1, ⌈Nq/rows⌉, ⌈Nk/cols⌉).
   * Packed sequences: (S or 1, H or 1, ⌈max nq/rows⌉, ⌈max nk/cols⌉), each sequence's blocks counted from
   * its own first query and key.
   * On webgpu, what a call makes from the block mask and mask arrays (tile tables; their bits and tables on
   * the device, from the second call with the same contents on) is kept for later calls with the same
   * array while the caller keeps it: each call compares the array with a copy of the contents these were
   * made from, so an array changed in place is seen (the call after the change makes them again).
   */
  blockMask?: BlockMaskTensor;
  /**
   * Dropout on P, fused into the forward and the backward: each element is kept with probability 1 − p
   * (and scaled by 1/(1 − p)) from a counter-based hash of (seed, b, h, i, j), so the backward regenerates
   * the same mask and every backend drops the same elements. p in [0, 1); seed an integer in [0, 2³²).
   * lse is that of the softmax before dropout.
   */
  dropout?: { p: number; seed: number };
}

/** A boolean tensor: `data` holds one byte per element (nonzero: true), row-major over `shape`. */
export interface MaskTensor {
  readonly data: Uint8Array;
  readonly shape: readonly number[];
}

/** options.blockMask: a MaskTensor of blocks, and the block's size in rows (queries) and columns (keys). */
export interface BlockMaskTensor extends MaskTensor {
  readonly blockSize: readonly [number, number];
}

export const KNOWN_OPTIONS: ReadonlySet<string> = new Set([
  'causal',
  'scale',
  'layout',
  'backend',
  'algorithm',
  'precision',
  'memory',
  'device',
  'out',
  'lse',
  'cuSeqlensQ',
  'cuSeqlensK',
  'window',
  'alibiSlopes',
  'softcap',
  'bias',
  'biasGrad',
  'mask',
  'blockMask',
  'dropout',
]);
