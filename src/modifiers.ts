/**
 * Modifiers of the score matrix: the attention variants (causal, sliding window, ALiBi, soft-capping, an
 * additive bias, a boolean mask, block-sparse attention, dropout), written once, apart from the schedules
 * (the kernels' loop orders and tiles). Every kernel family calls the same few hooks:
 *
 *   1. the band: the keys a query row can see at all, lo(i) ≤ j ≤ hi(i) (causal and window), from which a
 *      tile's key (or query) block range follows: blocks outside it are never visited;
 *   2. tile classification: for a (query block, key block) pair, empty / full / partial (band and block
 *      mask); empty tiles are skipped, full ones need no per-element test;
 *   3. the element rule on partial tiles: keep or drop S_ij (band, mask, block mask);
 *   4. the score modifier after S = scale·QKᵀ: soft-capping first, then ALiBi and the bias; the backward
 *      multiplies dS by the soft-cap's derivative and, when asked, sums dS into dbias;
 *   5. dropout on P from a counter-based hash of (seed, b, h, i, j): the backward regenerates the mask,
 *      nothing is stored.
 *
 * This file is the semantics for the TypeScript backends (the float64 oracle, the paper's algorithms and
 * the cpu kernels); src/webgpu/kernels/modifiers.ts is the same in WGSL. Row i and key j are indices of
 * one (b, h) head; offset = Nk − Nq aligns the diagonal bottom-right, as FlashAttention-2 does.
 */

/** A row's visible keys are [lo, hi] (inclusive, clipped by the caller to [0, Nk)). */
export interface Band {
  /** Keys left of the diagonal a row may see; -1: unbounded. */
  left: number;
  /** Keys right of the diagonal a row may see; -1: unbounded (causal makes it 0). */
  right: number;
}

/** A broadcast index over (B, H, Nq, Nk): element strides, 0 on an axis of size 1. */
export interface Broadcast {
  shape: readonly [number, number, number, number];
  strides: readonly [number, number, number, number];
}

/** Block-sparse attention: which (rows × cols) blocks of the score matrix are computed at all. */
export interface BlockMask {
  /** 1: the block is attended to; 0: skipped. Shape (B or 1, H or 1, ⌈Nq/rows⌉, ⌈Nk/cols⌉), row-major. */
  data: Uint8Array;
  rows: number;
  cols: number;
  index: Broadcast;
}

/** Everything a kernel needs of the modifiers of one call (checked by problem.ts). */
export interface Modifiers {
  /** causal and window as one band; undefined when neither is set (every key visible). */
  band?: Band;
  /** ALiBi slopes, one per (b, h): B·H of them (a caller's H slopes are repeated per batch); H heads. */
  alibi?: { slopes: Float32Array; H: number };
  /** Soft-cap c > 0: S ← c·tanh(S / c). */
  softcap?: number;
  /** Additive bias, values as f64 (read once from the caller's tensor), broadcast over (B, H, Nq, Nk). */
  bias?: { data: Float32Array | Float64Array | Uint16Array | GPUBuffer; dtype: 'f32' | 'f16' | 'f64'; index: Broadcast; grad: boolean };
  /** Boolean mask (nonzero: keep), broadcast over (B, H, Nq, Nk). */
  mask?: { data: Uint8Array; index: Broadcast };
  blockMask?: BlockMask;
  /**
   * Dropout on P: keep iff hash ≥ threshold (24-bit), kept values scaled by 1/(1 − p). `headOffset` is
   * added to the head b·H + h the hash takes: a sub-problem's first head in the whole call, so that packed
   * sequences (src/varlen.ts: sequence s runs as batch 0 of its own problem, with s·H here) draw the masks
   * of heads s·H + h, as batch row s would; absent for a call of its own.
   */
  dropout?: { p: number; seed: number; threshold: number; scale: number; headOffset?: number };
}

/** True when the call has any modifier beyond the plain (or causal-only) schedule. */
export function hasModifiers(m: Modifiers, causal: boolean): boolean {
  const bandOnlyCausal = m.band === undefined || (causal && m.band.left < 0 && m.band.right === 0);
  return !bandOnlyCausal || !!(m.alibi || m.softcap !== undefined || m.bias || m.mask || m.blockMask || m.dropout);
}

/**
 * Whether dbias is zero by the algebra, whatever the inputs: a bias with one value along the keys (its key
 * axis of size 1) adds the same number to every logit of a row, and softmax takes it away again. dS sums
 * to zero along every row (Σ_j P_ij·(dP_ij·Z_ij − D_i) = D_i − D_i; dropout and masks too), so the sum
 * dbias takes of it is zero. The backends return zeros without writing dS: summed, it would hold only the
 * rounding by which FlashAttention's D = rowsum(dO ∘ O) differs from Σ_j P_ij·dP_ij, a few ulp per row that
 * a bias of shape (1, H, 1, 1) adds up over every row of every batch.
 */
export function biasGradIsZero(m: Modifiers): boolean {
  return m.bias?.grad === true && m.bias.index.shape[3] === 1;
}

/** The band of causal and window together (FlashAttention-2: causal is window (−1, 0)). */
export function bandOf(causal: boolean, window: readonly [number, number] | undefined): Band | undefined {
  if (!causal && window === undefined) return undefined;
  let [left, right] = window ?? [-1, -1];
  if (causal) right = right < 0 ? 0 : Math.min(right, 0);
  if (left < 0 && right < 0) return undefined;
  return { left, right };
}

/** First key row i sees under the band (may be < 0 or ≥ Nk: the caller clips). */
export function bandLo(band: Band | undefined, i: number, offset: number): number {
  return band === undefined || band.left < 0 ? -Infinity : i + offset - band.left;
}

/** Last key row i sees under the band (inclusive). */
export function bandHi(band: Band | undefined, i: number, offset: number): number {
  return band === undefined || band.right < 0 ? Infinity : i + offset + band.right;
}

/** Keys [lo, hi) that rows [r0, r1) see at all under the band, clipped to [0, Nk). */
export function keyRange(m: Modifiers, r0: number, r1: number, Nq: number, Nk: number): [number, number] {
  const offset = Nk - Nq;
  const lo = Math.max(0, bandLo(m.band, r0, offset));
  const hi = Math.min(Nk, bandHi(m.band, r1 - 1, offset) + 1);
  return hi > lo ? [lo, hi] : [0, 0];
}

/** Rows [lo, hi) that see any of keys [c0, c1) under the band, clipped to [0, Nq). */
export function rowRange(m: Modifiers, c0: number, c1: number, Nq: number, Nk: number): [number, number] {
  const offset = Nk - Nq;
  const b = m.band;
  const lo = b === undefined || b.right < 0 ? 0 : Math.max(0, c0 - offset - b.right);
  const hi = b === undefined || b.left < 0 ? Nq : Math.min(Nq, c1 - 1 - offset + b.left + 1);
  return hi > lo ? [lo, hi] : [0, 0];
}

/**
 * How many keys the Nq query rows of a sequence of Nk keys see at most, under the band: all Nk, or with a
 * window's left bound the left + Nq it shows (the decode schedules split only those keys).
 */
export function keysSeen(m: Pick<Modifiers, 'band'> | undefined, Nq: number, Nk: number): number {
  const [lo, hi] = keyRange(m ?? {}, 0, Nq, Nq, Nk);
  return hi - lo;
}

export const EMPTY = 0;
export const FULL = 1;
export const PARTIAL = 2;
export type TileClass = typeof EMPTY | typeof FULL | typeof PARTIAL;

/** The index of a dense tensor of `shape` (each axis its size or 1) broadcast over (B, H, Nq, Nk). */
export function broadcastIndex(shape: readonly [number, number, number, number]): Broadcast {
  const dense = [shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1];
  return { shape, strides: dense.map((d, i) => (shape[i] === 1 ? 0 : d)) as unknown as Broadcast['strides'] };
}

/** Offset of (b, h, i, j) in a broadcast tensor. */
export function at(x: Broadcast, b: number, h: number, i: number, j: number): number {
  const s = x.strides;
  return b * s[0] + h * s[1] + i * s[2] + j * s[3];
}

/**
 * The class of tile rows [r0, r1) × keys [c0, c1) of head (b, h): EMPTY when the band or the block mask
 * leaves no element, FULL when both keep every element and there is no element mask, else PARTIAL.
 */
export function tileClass(m: Modifiers, b: number, h: number, r0: number, r1: number, c0: number, c1: number, Nq: number, Nk: number): TileClass {
  const offset = Nk - Nq;
  let full = m.mask === undefined;
  if (m.band) {
    // The first row sees the leftmost keys, the last row the rightmost.
    if (c0 > bandHi(m.band, r1 - 1, offset) || c1 - 1 < bandLo(m.band, r0, offset)) return EMPTY;
    if (c1 - 1 > bandHi(m.band, r0, offset) || c0 < bandLo(m.band, r1 - 1, offset)) full = false;
  }
  const bm = m.blockMask;
  if (bm) {
    let any = false;
    let all = true;
    for (let bi = Math.floor(r0 / bm.rows); bi <= Math.floor((r1 - 1) / bm.rows); bi++) {
      for (let bj = Math.floor(c0 / bm.cols); bj <= Math.floor((c1 - 1) / bm.cols); bj++) {
        if (bm.data[at(bm.index, b, h, bi, bj)]) any = true;
        else all = false;
      }
    }
    if (!any) return EMPTY;
    if (!all) full = false;
  }
  return full ? FULL : PARTIAL;
}

/** The element rule: does row i of head (b, h) see key j (band, mask, block mask)? */
export function keeps(m: Modifiers, b: number, h: number, i: number, j: number, Nq: number, Nk: number): boolean {
  if (m.band) {
    const offset = Nk - Nq;
    if (j < bandLo(m.band, i, offset) || j > bandHi(m.band, i, offset)) return false;
  }
  if (m.mask && !m.mask.data[at(m.mask.index, b, h, i, j)]) return false;
  const bm = m.blockMask;
  if (bm && !bm.data[at(bm.index, b, h, Math.floor(i / bm.rows), Math.floor(j / bm.cols))]) return false;
  return true;
}

/** Does the call drop elements per element (band, mask, block mask)? */
function masksElements(m: Modifiers): boolean {
  return m.band !== undefined || m.mask !== undefined || m.blockMask !== undefined;
}

/**
 * Row i of head (b, h), keys c0 .. c0 + n − 1: S[off + c] holds scale·q_i·k_j on entry, the modified logit
 * on return (soft-cap, then ALiBi and bias; dropped elements −∞). When `dcap` is given, it receives the
 * soft-cap's derivative dS_out/dS_in (1 where there is no soft-cap) for the backward.
 * `bias` is the bias as f64 values (biasValues), when there is one.
 */
export function modifyRow(
  m: Modifiers,
  b: number,
  h: number,
  i: number,
  c0: number,
  n: number,
  S: Float64Array,
  off: number,
  Nq: number,
  Nk: number,
  bias?: Float64Array,
  dcap?: Float64Array,
): void {
  const c = m.softcap;
  if (c !== undefined) {
    for (let x = 0; x < n; x++) {
      const t = Math.tanh(S[off + x] / c);
      S[off + x] = c * t;
      if (dcap) dcap[off + x] = 1 - t * t;
    }
  } else if (dcap) dcap.fill(1, off, off + n);
  if (m.alibi) {
    const s = alibiSlope(m, b, h);
    const d = i + Nk - Nq;
    for (let x = 0; x < n; x++) S[off + x] -= s * Math.abs(d - (c0 + x));
  }
  if (m.bias && bias) {
    const o = at(m.bias.index, b, h, i, c0);
    const sj = m.bias.index.strides[3];
    for (let x = 0; x < n; x++) S[off + x] += bias[o + x * sj];
  }
  if (masksElements(m)) {
    for (let x = 0; x < n; x++) if (!keeps(m, b, h, i, c0 + x, Nq, Nk)) S[off + x] = -Infinity;
  }
}

/** ALiBi slope of head (b, h). */
export function alibiSlope(m: Modifiers, b: number, h: number): number {
  const a = m.alibi!;
  return a.slopes[b * a.H + h];
}

// ---- dropout: a counter-based hash, the same bits on every backend (Math.imul here, u32 products in WGSL) ----

/** A 32-bit integer mix (lowbias32): every input bit flips about half the output bits. */
export function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** The per-row key of dropout's hash: seed, head (b·H + h) and row i. */
export function dropoutRowKey(seed: number, bh: number, i: number): number {
  const k = mix32(mix32(seed ^ 0x3c6ef372) ^ bh);
  return mix32((k + Math.imul(i, 0x85ebca6b)) >>> 0);
}

/** Is element (row key, j) kept? 24 random bits against the threshold round(p·2^24). */
export function dropoutKeeps(rowKey: number, j: number, threshold: number): boolean {
  return mix32((rowKey + Math.imul(j, 0x9e3779b9)) >>> 0) >>> 8 >= threshold;
}

/** Dropout's multiplier of row i of head bh (b·H + h), keys c0 .. c0 + n − 1 into Z[off + x]: 0 dropped, 1/(1 − p) kept. */
export function dropoutRow(m: Modifiers, bh: number, i: number, c0: number, n: number, Z: Float64Array, off: number): void {
  const d = m.dropout!;
  const key = dropoutRowKey(d.seed, bh + (d.headOffset ?? 0), i);
  for (let x = 0; x < n; x++) Z[off + x] = dropoutKeeps(key, c0 + x, d.threshold) ? d.scale : 0;
}

/**
 * The modifiers of a FULL tile: the score modifier without the element rules (band, mask, block mask),
 * which keep every element there; modifyRow with these skips the per-element test.
 */
export function scoreModifiers(m: Modifiers): Modifiers {
  return { ...m, band: undefined, mask: undefined, blockMask: undefined };
}
