/**
 * The cpu flash kernels: FlashAttention-2 over cache-sized tiles, f32 in memory and f64 in registers
 * and scratch (JavaScript numbers are doubles, so the arithmetic costs the same and rounds less).
 *
 * forwardTask: one task owns query block Q_i of one head (Br rows). K_j and V_j (Bc rows) stream past;
 *   S = Q_i K_jᵀ (Br×Bc) lives in scratch with the running max m, running sum l and the unnormalised O_i;
 *   O_i and L_i are written once. Causal: key blocks above the diagonal are never visited, and in blocks
 *   that cross it each row only touches the keys it sees.
 * backwardTask: one task owns a run of key blocks K_j, V_j of one key/value head (every query head of its
 *   group). For each K_j it streams the query blocks, recomputes P = exp(S − L) and accumulates dK_j and
 *   dV_j in scratch (written once), and dQ into the task's own f64 partial, summed over tasks afterwards
 *   in a fixed order: no atomics, the result is deterministic.
 * Every tile is copied once into packed f64 scratch, so the inner loops read contiguous doubles; the
 * matrix products below are register-blocked (each load feeds two to four multiply-adds).
 * The variants (src/modifiers.ts), where the shape has them (s.mods; plain and causal calls run the loops
 * above untouched): blocks outside the band (causal, window) are never visited, tiles the band and block
 * mask leave empty are skipped, and in the others each row's segment of keys is modified (modifyRow:
 * soft-cap, ALiBi, bias, element rules — none on full tiles) before the online softmax; dropout scales P̃
 * where it meets V (l sums P̃ without it) and, in the backward, P for dV and dO V_jᵀ for dS; dQ and dK take
 * dS times the soft-cap's derivative; with biasGrad, each dS (before that derivative) is written into a
 * (B, H, Nq, Nk) f32 array by the one task that computes it, and summed to the bias's shape afterwards.
 * Scratch per thread: (2·Br·D + 2·Bc·D + Br·Bc + 3·Br) f64 forward,
 * (2·Br·D + 4·Bc·D + 2·Br·Bc + Br + G·Nq) f64 backward, Bc and 3·Bc more with the variants. Nothing of
 * size Nq×Nk is ever allocated but that dS for dbias.
 */
import { EMPTY, FULL, bandHi, bandLo, dropoutRow, keyRange, modifyRow, rowRange, scoreModifiers, tileClass, type Modifiers, type TileClass } from '../modifiers.js';
import { modifiersOf, type CpuShape } from './job.js';

export interface ForwardArrays {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  lse: Float32Array;
  /** With the variants: the bias's values and the mask (CpuMods). */
  bias?: Float64Array;
  mask?: Uint8Array;
}

export interface BackwardArrays {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  dout: Float32Array;
  lse: Float32Array;
  /** (chunks, B, H, Nq, D) partial sums of dQ. */
  dqPartial: Float64Array;
  dk: Float32Array;
  dv: Float32Array;
  bias?: Float64Array;
  mask?: Uint8Array;
  /** With biasGrad: (B, H, Nq, Nk) dS, zero where no task writes (reduceDbias sums it). */
  dS?: Float32Array;
  /** With dS: P (before dropout) of the same elements, for dbias's row correction (reduceDbias). */
  dbiasP?: Float32Array;
}

/** The variants of one task: the modifiers, those of its full tiles (no element rules), the bias values. */
export interface TaskMods {
  m: Modifiers;
  full: Modifiers;
  bias: Float64Array | undefined;
}

export function taskMods(s: CpuShape, a: { bias?: Float64Array; mask?: Uint8Array }): TaskMods | undefined {
  if (!s.mods) return undefined;
  const m = modifiersOf(s.mods, a.bias, a.mask);
  return { m, full: scoreModifiers(m), bias: a.bias };
}

/**
 * Row i of head (b, h) in the tile of keys [c0, c0 + cols) under the variants: S[sr + c] holds the scaled
 * score on entry, the modified logit on return over the row's segment of the band (modifyRow; on a full
 * tile, without element rules), −∞ before the segment; `dcap` (backward) the soft-cap's derivative, 1
 * before it. Returns the end of the segment, the row's n: keys past it are never read (0: none seen).
 */
function modifySegment(
  t: TaskMods, tile: TileClass, b: number, h: number, i: number, c0: number, cols: number, Nq: number, Nk: number,
  S: Float64Array, sr: number, dcap?: Float64Array,
): number {
  let lo = 0;
  let hi = cols;
  const band = t.m.band;
  if (tile !== FULL && band) {
    lo = Math.max(0, bandLo(band, i, Nk - Nq) - c0);
    hi = Math.min(cols, bandHi(band, i, Nk - Nq) + 1 - c0);
    if (hi <= lo) return 0;
    S.fill(-Infinity, sr, sr + lo);
    dcap?.fill(1, sr, sr + lo);
  }
  modifyRow(tile === FULL ? t.full : t.m, b, h, i, c0 + lo, hi - lo, S, sr + lo, Nq, Nk, t.bias, dcap);
  return hi;
}

/** Number of forward tasks: one per query block of each head. */
export function forwardTasks(s: CpuShape): number {
  return s.B * s.H * Math.ceil(s.Nq / s.Br);
}

/** Number of backward tasks: `chunks` runs of key blocks for each key/value head. */
export function backwardTasks(s: CpuShape): number {
  return s.B * s.Hkv * s.chunks;
}

/**
 * Backward task t: key/value head hkv of batch row b, and its share [jStart, jEnd) of the Tc key blocks
 * (chunk `chunk` of s.chunks, in order), whose dQ goes into partial `chunk`.
 */
export function backwardTaskOf(s: CpuShape, t: number): { b: number; hkv: number; chunk: number; jStart: number; jEnd: number } {
  const Tc = Math.ceil(s.Nk / s.Bc);
  const chunk = t % s.chunks;
  const bk = Math.floor(t / s.chunks);
  return {
    b: Math.floor(bk / s.Hkv),
    hkv: bk % s.Hkv,
    chunk,
    jStart: Math.floor((chunk * Tc) / s.chunks),
    jEnd: Math.floor(((chunk + 1) * Tc) / s.chunks),
  };
}

/** The key blocks [jStart, jEnd) that query rows [r0, r0 + rows) can see. */
function keyBlocks(s: CpuShape, r0: number, rows: number): number {
  const Tc = Math.ceil(s.Nk / s.Bc);
  if (!s.causal) return Tc;
  const lastKey = r0 + rows - 1 + s.Nk - s.Nq; // the last key the block's last row sees
  return Math.max(0, Math.min(Tc, Math.floor(lastKey / s.Bc) + 1));
}

/** Copy `rows` rows of D elements from `src` (row stride `stride`) into packed `dst`, times `f`. */
function load(dst: Float64Array, src: Float32Array, o: number, stride: number, rows: number, D: number, f: number): void {
  for (let r = 0; r < rows; r++) {
    const so = o + r * stride;
    const dO = r * D;
    for (let x = 0; x < D; x++) dst[dO + x] = src[so + x] * f;
  }
}

/** C[r·ldc + c] = A_r · B_c (packed rows of D) for r < rows, c < cols; 4 rows × 2 columns at a time. */
function abT(A: Float64Array, B: Float64Array, C: Float64Array, rows: number, cols: number, D: number, ldc: number): void {
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const a0 = r * D;
    const a1 = a0 + D;
    const a2 = a1 + D;
    const a3 = a2 + D;
    const o = r * ldc;
    let c = 0;
    for (; c + 2 <= cols; c += 2) {
      const b0 = c * D;
      const b1 = b0 + D;
      let s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
      for (let x = 0; x < D; x++) {
        const k0 = B[b0 + x];
        const k1 = B[b1 + x];
        const q0 = A[a0 + x];
        const q1 = A[a1 + x];
        const q2 = A[a2 + x];
        const q3 = A[a3 + x];
        s00 += q0 * k0;
        s01 += q0 * k1;
        s10 += q1 * k0;
        s11 += q1 * k1;
        s20 += q2 * k0;
        s21 += q2 * k1;
        s30 += q3 * k0;
        s31 += q3 * k1;
      }
      C[o + c] = s00;
      C[o + c + 1] = s01;
      C[o + ldc + c] = s10;
      C[o + ldc + c + 1] = s11;
      C[o + 2 * ldc + c] = s20;
      C[o + 2 * ldc + c + 1] = s21;
      C[o + 3 * ldc + c] = s30;
      C[o + 3 * ldc + c + 1] = s31;
    }
    if (c < cols) {
      const b0 = c * D;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let x = 0; x < D; x++) {
        const k0 = B[b0 + x];
        s0 += A[a0 + x] * k0;
        s1 += A[a1 + x] * k0;
        s2 += A[a2 + x] * k0;
        s3 += A[a3 + x] * k0;
      }
      C[o + c] = s0;
      C[o + ldc + c] = s1;
      C[o + 2 * ldc + c] = s2;
      C[o + 3 * ldc + c] = s3;
    }
  }
  for (; r < rows; r++) {
    const a0 = r * D;
    for (let c = 0; c < cols; c++) {
      const b0 = c * D;
      let s0 = 0;
      for (let x = 0; x < D; x++) s0 += A[a0 + x] * B[b0 + x];
      C[r * ldc + c] = s0;
    }
  }
}

/**
 * C[co + r·D ..] += Σ_{c < n[r]} A[r·lda + c] · B_c (packed rows of D): row r only meets the n[r] keys
 * it sees. Two rows × four columns at a time while both rows see them, then one row and one column.
 */
function addAB(C: Float64Array, co: number, A: Float64Array, lda: number, B: Float64Array, rows: number, n: Float64Array, D: number): void {
  let r = 0;
  let c = 0;
  for (; r + 2 <= rows; r += 2) {
    const both = Math.min(n[r], n[r + 1]);
    const a0 = r * lda;
    const a1 = a0 + lda;
    const o0 = co + r * D;
    const o1 = o0 + D;
    for (c = 0; c + 4 <= both; c += 4) {
      const p00 = A[a0 + c], p01 = A[a0 + c + 1], p02 = A[a0 + c + 2], p03 = A[a0 + c + 3];
      const p10 = A[a1 + c], p11 = A[a1 + c + 1], p12 = A[a1 + c + 2], p13 = A[a1 + c + 3];
      const b0 = c * D;
      const b1 = b0 + D;
      const b2 = b1 + D;
      const b3 = b2 + D;
      for (let x = 0; x < D; x++) {
        const v0 = B[b0 + x];
        const v1 = B[b1 + x];
        const v2 = B[b2 + x];
        const v3 = B[b3 + x];
        C[o0 + x] += p00 * v0 + p01 * v1 + p02 * v2 + p03 * v3;
        C[o1 + x] += p10 * v0 + p11 * v1 + p12 * v2 + p13 * v3;
      }
    }
    addRow(C, o0, A, a0, B, c, n[r], D);
    addRow(C, o1, A, a1, B, c, n[r + 1], D);
  }
  if (r < rows) addRow(C, co + r * D, A, r * lda, B, 0, n[r], D);
}

/** C[o ..] += Σ_{c0 <= c < c1} A[a + c] · B_c, four columns at a time. */
function addRow(C: Float64Array, o: number, A: Float64Array, a: number, B: Float64Array, c0: number, c1: number, D: number): void {
  let c = c0;
  for (; c + 4 <= c1; c += 4) {
    const p0 = A[a + c], p1 = A[a + c + 1], p2 = A[a + c + 2], p3 = A[a + c + 3];
    const b0 = c * D;
    const b1 = b0 + D;
    const b2 = b1 + D;
    const b3 = b2 + D;
    for (let x = 0; x < D; x++) C[o + x] += p0 * B[b0 + x] + p1 * B[b1 + x] + p2 * B[b2 + x] + p3 * B[b3 + x];
  }
  for (; c < c1; c++) {
    const p0 = A[a + c];
    const b0 = c * D;
    for (let x = 0; x < D; x++) C[o + x] += p0 * B[b0 + x];
  }
}

/**
 * C_c += Σ_{r : c < n[r]} A[r·lda + c] · B_r (packed rows of D), the transposed product: only the
 * (r, c) that row r sees contribute. Four rows × two columns at a time where all four rows see both.
 */
function addAtB(C: Float64Array, A: Float64Array, lda: number, B: Float64Array, rows: number, n: Float64Array, D: number): void {
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const all = Math.min(n[r], n[r + 1], n[r + 2], n[r + 3]);
    const a0 = r * lda;
    const a1 = a0 + lda;
    const a2 = a1 + lda;
    const a3 = a2 + lda;
    const b0 = r * D;
    const b1 = b0 + D;
    const b2 = b1 + D;
    const b3 = b2 + D;
    let c = 0;
    for (; c + 2 <= all; c += 2) {
      const p00 = A[a0 + c], p10 = A[a1 + c], p20 = A[a2 + c], p30 = A[a3 + c];
      const p01 = A[a0 + c + 1], p11 = A[a1 + c + 1], p21 = A[a2 + c + 1], p31 = A[a3 + c + 1];
      const o0 = c * D;
      const o1 = o0 + D;
      for (let x = 0; x < D; x++) {
        const d0 = B[b0 + x];
        const d1 = B[b1 + x];
        const d2 = B[b2 + x];
        const d3 = B[b3 + x];
        C[o0 + x] += p00 * d0 + p10 * d1 + p20 * d2 + p30 * d3;
        C[o1 + x] += p01 * d0 + p11 * d1 + p21 * d2 + p31 * d3;
      }
    }
    for (let i = 0; i < 4; i++) addCol(C, A, a0 + i * lda, B, b0 + i * D, c, n[r + i], D);
  }
  for (; r < rows; r++) addCol(C, A, r * lda, B, r * D, 0, n[r], D);
}

/** C_c += A[a + c] · B[b ..] for c0 <= c < c1: one row's remaining keys. */
function addCol(C: Float64Array, A: Float64Array, a: number, B: Float64Array, b: number, c0: number, c1: number, D: number): void {
  for (let c = c0; c < c1; c++) {
    const p = A[a + c];
    const o = c * D;
    for (let x = 0; x < D; x++) C[o + x] += p * B[b + x];
  }
}

export function forwardTask(s: CpuShape, a: ForwardArrays, t: number, scratch: Float64Array): void {
  const { B, H, Hkv, Nq, Nk, D, Br, Bc, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, lse } = a;
  const Tr = Math.ceil(Nq / Br);
  // Tasks with the most key blocks first (causal: the last query blocks), so threads finish together.
  const bh = t % (B * H);
  const i = Tr - 1 - Math.floor(t / (B * H));
  const b = Math.floor(bh / H);
  const h = bh % H;
  const qo = b * s.qBatch + h * s.qHead;
  const ko = b * s.kvBatch + Math.floor(h / (H / Hkv)) * s.kvHead;
  const r0 = i * Br;
  const rows = Math.min(Br, Nq - r0);
  const offset = Nk - Nq; // causal: row r sees keys c <= r + offset

  let at = 0;
  const take = (n: number) => scratch.subarray(at, (at += n));
  const Qi = take(Br * D);
  const Oi = take(Br * D);
  const Kj = take(Bc * D);
  const Vj = take(Bc * D);
  const S = take(Br * Bc);
  const m = take(Br);
  const l = take(Br);
  const seen = take(Br); // keys of the current block each row sees (0: none)
  const mods = taskMods(s, a);
  const Z = take(mods ? Bc : 0); // with the variants: dropout's multipliers of a row
  const dropout = mods?.m.dropout !== undefined;

  // Alg. 1 lines 4-5: load Q_i with the softmax scale folded in; O_i = 0, l = 0, m = −∞.
  load(Qi, q, qo + r0 * qRow, qRow, rows, D, scale);
  Oi.fill(0, 0, rows * D);
  l.fill(0, 0, rows);
  m.fill(-Infinity, 0, rows);

  let jStart = 0;
  let jEnd = keyBlocks(s, r0, rows);
  if (mods) {
    // The band: key blocks no row of Q_i sees are never visited.
    const [lo, hi] = keyRange(mods.m, r0, r0 + rows, Nq, Nk);
    jStart = Math.floor(lo / Bc);
    jEnd = Math.ceil(hi / Bc);
  }
  for (let j = jStart; j < jEnd; j++) {
    const c0 = j * Bc;
    const cols = Math.min(Bc, Nk - c0);
    let tile: TileClass = FULL;
    if (mods) {
      tile = tileClass(mods.m, b, h, r0, r0 + rows, c0, c0 + cols, Nq, Nk);
      if (tile === EMPTY) continue;
    }
    // Alg. 1 lines 7-8: load K_j, V_j; S = Q_i K_jᵀ.
    load(Kj, k, ko + c0 * kvRow, kvRow, cols, D, 1);
    load(Vj, v, ko + c0 * kvRow, kvRow, cols, D, 1);
    abT(Qi, Kj, S, rows, cols, D, Bc);

    for (let r = 0; r < rows; r++) {
      // Causal: a block that crosses the diagonal is cut per row (keys past a row's reach stay unread).
      const sr = r * Bc;
      const n = mods
        ? modifySegment(mods, tile, b, h, r0 + r, c0, cols, Nq, Nk, S, sr)
        : causal ? Math.max(0, Math.min(cols, r0 + r + offset + 1 - c0)) : cols;
      // Alg. 1 line 9: new running max, P̃ = exp(S − m), l = e^(m_old − m) l + rowsum(P̃).
      const mOld = m[r];
      let mNew = mOld;
      // Scores are rounded to f32, as the lse the forward returns is: the backward recomputes P = exp(S − L)
      // from the same f32 S, so a row's largest P stays 1 even where |S| ~ 1e4 and L's f32 ulp is 1e-3.
      for (let c = 0; c < n; c++) mNew = Math.max(mNew, (S[sr + c] = Math.fround(S[sr + c]))); // Math.max keeps a NaN: it poisons only its row
      if (mNew === -Infinity) {
        seen[r] = 0; // nothing visible yet in this row: P̃ = 0, nothing changes
        continue;
      }
      seen[r] = n;
      const alpha = Math.exp(mOld - mNew);
      let rowsum = 0;
      for (let c = 0; c < n; c++) rowsum += S[sr + c] = Math.exp(S[sr + c] - mNew);
      l[r] = alpha * l[r] + rowsum;
      m[r] = mNew;
      if (dropout) {
        // Dropout: P̃ ∘ Z meets V; l above is the sum without it.
        dropoutRow(mods!.m, bh, r0 + r, c0, n, Z, 0);
        for (let c = 0; c < n; c++) S[sr + c] *= Z[c];
      }
      if (alpha !== 1) {
        const or = r * D;
        for (let x = 0; x < D; x++) Oi[or + x] *= alpha;
      }
    }
    // Alg. 1 line 10: O_i = diag(e^(m_old − m)) O_i (above) + P̃ V_j.
    addAB(Oi, 0, S, Bc, Vj, rows, seen, D);
  }

  // Alg. 1 lines 12-15: O_i = O_i / l, L_i = m + log l (a row that saw no key: O = 0, L = −∞).
  for (let r = 0; r < rows; r++) {
    const inv = l[r] === 0 ? 0 : 1 / l[r];
    const dst = qo + (r0 + r) * qRow;
    for (let x = 0; x < D; x++) out[dst + x] = Oi[r * D + x] * inv;
    lse[(b * H + h) * Nq + r0 + r] = l[r] === 0 ? -Infinity : m[r] + Math.log(l[r]);
  }
}

export function backwardTask(s: CpuShape, a: BackwardArrays, t: number, scratch: Float64Array): void {
  const { B, H, Hkv, Nq, Nk, D, Br, Bc, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, dout, lse, dqPartial, dk, dv } = a;
  const G = H / Hkv; // query heads per key/value head
  const { b, hkv, chunk, jStart, jEnd } = backwardTaskOf(s, t);
  const ko = b * s.kvBatch + hkv * s.kvHead;
  const offset = Nk - Nq; // causal: row r sees keys c <= r + offset

  let at = 0;
  const take = (n: number) => scratch.subarray(at, (at += n));
  const dKj = take(Bc * D);
  const dVj = take(Bc * D);
  const Kj = take(Bc * D);
  const Vj = take(Bc * D);
  const Qi = take(Br * D);
  const dOi = take(Br * D);
  const P = take(Br * Bc);
  const dS = take(Br * Bc); // dP first, then dS in place, with the scale folded in
  const seen = take(Br); // keys of K_j each row sees (0: none)
  const Dg = take(G * Nq);
  const mods = taskMods(s, a);
  // With the variants, a row's modified logits, soft-cap derivatives and dropout multipliers.
  const Srow = take(mods ? Bc : 0);
  const dcap = take(mods ? Bc : 0);
  const Z = take(mods ? Bc : 0);
  const dropout = mods?.m.dropout !== undefined;
  const dSAll = a.dS;
  const PAll = a.dbiasP;

  // Alg. 2 line 4: D = rowsum(dO ∘ O) for every query head of the group.
  for (let g = 0; g < G; g++) {
    const qo = b * s.qBatch + (hkv * G + g) * s.qHead;
    for (let n = 0; n < Nq; n++) {
      const o = qo + n * qRow;
      let sum = 0;
      for (let x = 0; x < D; x++) sum += dout[o + x] * out[o + x];
      Dg[g * Nq + n] = sum;
    }
  }

  /**
   * With the variants, row i of head h in the tile of keys from c0, at sr in P (Q_i K_jᵀ on entry) and dS
   * (dP on entry): P = exp(S' − L) of the modified logit S' (rounded to f32, as the forward rounded it),
   * dS = P ∘ (dP ∘ Z − D), written for dbias where asked; then stored as the products below take them,
   * P ∘ Z for dV and scale · dS times the soft-cap's derivative for dQ and dK. Returns the row's n.
   */
  const modifiedRow = (i: number, sr: number, L: number, Dr: number, tile: TileClass, h: number, c0: number, cols: number): number => {
    for (let c = 0; c < cols; c++) Srow[c] = P[sr + c] * scale;
    const n = modifySegment(mods!, tile, b, h, i, c0, cols, Nq, Nk, Srow, 0, dcap);
    if (dropout) dropoutRow(mods!.m, b * H + h, i, c0, n, Z, 0);
    const dso = ((b * H + h) * Nq + i) * Nk + c0;
    for (let c = 0; c < n; c++) {
      const p = Math.exp(Math.fround(Srow[c]) - L);
      const z = dropout ? Z[c] : 1;
      const ds = p * (dS[sr + c] * z - Dr);
      if (dSAll) {
        dSAll[dso + c] = ds;
        PAll![dso + c] = p;
      }
      P[sr + c] = p * z;
      dS[sr + c] = scale * ds * dcap[c];
    }
    return n;
  };

  for (let j = jStart; j < jEnd; j++) {
    const c0 = j * Bc;
    const cols = Math.min(Bc, Nk - c0);
    // Alg. 2 lines 6-7: load K_j, V_j; dK_j = 0, dV_j = 0.
    load(Kj, k, ko + c0 * kvRow, kvRow, cols, D, 1);
    load(Vj, v, ko + c0 * kvRow, kvRow, cols, D, 1);
    dKj.fill(0, 0, cols * D);
    dVj.fill(0, 0, cols * D);
    // Alg. 2 line 8. Causal: the first query row that sees key c0; query blocks before it are skipped.
    // With the variants, the band's: query blocks that see no key of K_j are never visited.
    let rStart = causal ? Math.max(0, Math.floor((c0 - offset) / Br)) * Br : 0;
    let rEnd = Nq;
    if (mods) {
      const [lo, hi] = rowRange(mods.m, c0, c0 + cols, Nq, Nk);
      rStart = Math.floor(lo / Br) * Br;
      rEnd = hi;
    }
    for (let g = 0; g < G; g++) {
      const h = hkv * G + g;
      const qo = b * s.qBatch + h * s.qHead;
      const Lo = (b * H + h) * Nq;
      const dqo = ((chunk * B + b) * H + h) * Nq * D;
      for (let r0 = rStart; r0 < rEnd; r0 += Br) {
        const rows = Math.min(Br, Nq - r0);
        let tile: TileClass = FULL;
        if (mods) {
          tile = tileClass(mods.m, b, h, r0, r0 + rows, c0, c0 + cols, Nq, Nk);
          if (tile === EMPTY) continue;
        }
        // Alg. 2 lines 9-11 and 13-14: load Q_i, dO_i; S = Q_i K_jᵀ, P = exp(scale S − L), dP = dO_i V_jᵀ,
        // dS = P ∘ (dP − D) (stored times the scale, which dQ and dK carry).
        load(Qi, q, qo + r0 * qRow, qRow, rows, D, 1);
        load(dOi, dout, qo + r0 * qRow, qRow, rows, D, 1);
        abT(Qi, Kj, P, rows, cols, D, Bc);
        abT(dOi, Vj, dS, rows, cols, D, Bc);
        for (let r = 0; r < rows; r++) {
          const L = lse[Lo + r0 + r];
          const Dr = Dg[g * Nq + r0 + r];
          const sr = r * Bc;
          if (mods) {
            seen[r] = L === -Infinity ? 0 : modifiedRow(r0 + r, sr, L, Dr, tile, h, c0, cols);
            continue;
          }
          // Masked keys and rows that see none (L = −∞) have P = dS = 0: they are left out, not added.
          const n = L === -Infinity ? 0 : causal ? Math.max(0, Math.min(cols, r0 + r + offset + 1 - c0)) : cols;
          seen[r] = n;
          for (let c = 0; c < n; c++) {
            const p = Math.exp(Math.fround(P[sr + c] * scale) - L); // S in f32, as the forward rounded it
            P[sr + c] = p;
            dS[sr + c] = scale * (p * (dS[sr + c] - Dr));
          }
        }
        // Alg. 2 lines 12 and 16: dV_j += Pᵀ dO_i, dK_j += scale dSᵀ Q_i.
        addAtB(dVj, P, Bc, dOi, rows, seen, D);
        addAtB(dKj, dS, Bc, Qi, rows, seen, D);
        // Alg. 2 line 15: dQ_i += scale dS K_j, into this task's partial.
        addAB(dqPartial, dqo + r0 * D, dS, Bc, Kj, rows, seen, D);
      }
    }
    // Alg. 2 line 18: write dK_j, dV_j once, summed over the group's heads.
    for (let c = 0; c < cols; c++) {
      const dst = ko + (c0 + c) * kvRow;
      for (let x = 0; x < D; x++) {
        dk[dst + x] = dKj[c * D + x];
        dv[dst + x] = dVj[c * D + x];
      }
    }
  }
}

/** dq = sum over chunks of the f64 partials, written in the layout of q. */
export function reduceDq(s: CpuShape, dqPartial: Float64Array, dq: Float32Array): void {
  const { B, H, Nq, D, chunks, qRow } = s;
  const slice = B * H * Nq * D;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let n = 0; n < Nq; n++) {
        const src = ((b * H + h) * Nq + n) * D;
        const dst = b * s.qBatch + h * s.qHead + n * qRow;
        for (let x = 0; x < D; x++) {
          let sum = 0;
          for (let c = 0; c < chunks; c++) sum += dqPartial[c * slice + src + x];
          dq[dst + x] = sum;
        }
      }
    }
  }
}
