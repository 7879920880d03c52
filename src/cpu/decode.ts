/**
 * The cpu decode kernel, split-KV (Flash-Decoding): the schedule for few queries per sequence (single-
 * token decode, speculative decoding) against many keys, where the work is reading K and V once and there
 * are too few query blocks to keep every core busy. The same semantics as the webgpu decode kernels
 * (src/webgpu/kernels/decode.ts), with f64 arithmetic as the rest of the cpu backend. Where the runtime
 * has WebAssembly SIMD, run.ts runs the same tasks on wasm/decode.ts's kernel instead, which writes the
 * same partials (mergeDecode serves both).
 *
 * decodeTask: one task owns one key/value head hk of one batch row b, up to R of the G·Nq query rows
 *   that share it (G = H / Hkv query heads, Nq queries each, head-major: row r is head hk·G + ⌊r / Nq⌋,
 *   query r mod Nq; each K/V element is read once per group, not once per query head), and one split of
 *   the keys, [s·chunk, min((s+1)·chunk, length)) (counted from the window's start, with a window). K
 *   and V are read where they live, never copied: key t of row b is at table[b·maxPages + ⌊t / pageSize⌋]
 *   ·kvPage + (t mod pageSize)·kvRow + hk·kvHead, which covers a (B, Nk, Hkv, D) tensor in either layout
 *   (one page per batch row, table = identity) and the KV cache's pool (pages, pageSize, Hkv, D) through
 *   its block table, in f32 or f16 storage (f16 widened as it is loaded, or, where a task has more than
 *   one 4-row group, once per tile into packed f32 K_j and V_j: staged()). Per tile of Bc keys (their
 *   offsets computed once): S = Q K_jᵀ (R×Bc, f64 scratch), the online softmax updates m and l per row
 *   (causal: query i of a row of length L sees keys j ≤ i + L − Nq), and O = diag(e^(m_old − m)) O + P̃ V_j,
 *   each row over only the keys it sees. A tile's K rows (Bc·D elements, about 16 KiB in f32) stay in L1
 *   while each 4-row group of the task reads them, and V's likewise. The split's O / l and its
 *   log-sum-exp m + log l are written as a partial (f64).
 * mergeDecode (on the calling thread: B·H·Nq rows × splits × D, small) combines the partials with the
 *   log-sum-exp rule, L = log Σ_s e^(L_s), O = Σ_s e^(L_s − L) O_s, into out (q's layout and dtype) and
 *   lse. A split that saw no key has L_s = −∞ and weighs 0; a row that saw none gives out 0 and lse −∞;
 *   a NaN logit makes its row's out and lse NaN, and no other row's.
 * The variants a decode step needs (src/modifiers.ts's semantics, each sequence's diagonal at its own
 * length − Nq): the window (band: a task reads only the keys its queries see, so a decode step reads
 * left + Nq keys however long the sequence), ALiBi and the soft-cap (modifyRow on each tile's scores).
 * Bias, mask, block mask and dropout stay with the tiled kernels (cpuDecodeFits).
 * Scratch per thread: (2·R·D + R·Bc + 3·R) f64 (Q, O, S, m, l, keys seen), and Bc·D more for the f32 K_j
 * and V_j where staged; partials B·H·Nq·splits·(D + 1) f64. Nothing of size Nq×Nk is ever allocated.
 */
import { f16ToNumber, numberToF16 } from '../f16.js';
import { bandHi, hasModifiers, keyRange, modifyRow, type Band, type Modifiers } from '../modifiers.js';

/**
 * Most queries per sequence forward() runs on the decode kernel rather than the tiled one, by storage
 * type: 16 for both, as the webgpu backend's DECODE_MAX_QUERIES. With both kernels in WebAssembly, on the
 * 2-core VM quiet (B = 1, H = 8, Hkv = 2, D = 64, Nk = 4096, `node dist/bench/variants/cpu-decode.js --nq
 * 8,16,32 --paths 'forward decode,forward tiled' --kernels wasm`, 2026-12-05), decode against tiled, the
 * fastest sample: f16 2.40 / 4.98 ms at Nq = 8, 4.65 / 6.92 at 16, 8.23 / 10.69 at 32; f32 2.43 / 3.48,
 * 4.61 / 4.82, 8.79 / 8.72. (With the JavaScript kernels f16 had been 8 % slower on decode at Nq = 16,
 * and its limit 8.)
 */
export const DECODE_MAX_QUERIES = { f32: 16, f16: 16 } as const;

/** Most query rows of a group one task owns: its O and S stay in a core's cache. */
const DECODE_MAX_ROWS = 32;

/** Tasks per thread a split plan aims for, so that threads that finish early take the rest. */
const DECODE_TASKS_PER_THREAD = 4;

/** Fewest key tiles a split gets: fewer would spend more on partials than they save. */
const DECODE_MIN_TILES_PER_SPLIT = 2;

/** The variants the decode kernel runs: the band (causal and window), ALiBi and the soft-cap. */
export type DecodeModifiers = Pick<Modifiers, 'band' | 'alibi' | 'softcap'>;

/** Whether the decode kernel runs a call's variants (none, or only those of DecodeModifiers). */
export function decodeRuns(m: Modifiers): boolean {
  return m.bias === undefined && m.mask === undefined && m.blockMask === undefined && m.dropout === undefined;
}

/** The decode kernel's variants of a call: undefined when it has none beyond causal (the plain kernel). */
export function decodeModifiers(m: Modifiers, causal: boolean): DecodeModifiers | undefined {
  return hasModifiers(m, causal) ? { ...(m.band && { band: m.band }), ...(m.alibi && { alibi: m.alibi }), ...(m.softcap !== undefined && { softcap: m.softcap }) } : undefined;
}

const CAUSAL: Band = { left: -1, right: 0 };

export interface DecodeShape {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  D: number;
  causal: boolean;
  scale: number;
  /** q: element (b, i, h, d) at b·qBatch + i·qRow + h·qHead + d. */
  qBatch: number;
  qRow: number;
  qHead: number;
  /** Keys: key t of kv head hk of batch row b at table[b·maxPages + ⌊t / pageSize⌋]·kvPage + (t mod pageSize)·kvRow + hk·kvHead. */
  kvPage: number;
  kvRow: number;
  kvHead: number;
  pageSize: number;
  maxPages: number;
  /** q, K and V in f16 storage (else f32). */
  f16: boolean;
  /** Keys per tile. */
  Bc: number;
  /** Query rows per task, and the tasks a group's G·Nq rows take. */
  R: number;
  rowChunks: number;
  /** Splits of each batch row's keys, `chunk` keys each (a multiple of Bc), from the first key a task's rows see. */
  splits: number;
  chunk: number;
  /** The variants (causal folded into the band), when the call has some beyond causal. */
  mods?: DecodeModifiers;
  /** Run decodeTask here, not the WebAssembly kernel (setCpuKernels('js')). */
  js?: boolean;
}

export interface DecodeArrays {
  q: Float32Array | Uint16Array;
  k: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
  /** (B, maxPages): the pages of each batch row's keys. */
  table: Int32Array;
  /** (B): keys of each batch row. */
  lengths: Int32Array;
  /** (B·H·Nq, splits, D): each split's O / l. */
  opart: Float64Array;
  /** (B·H·Nq, splits): each split's log-sum-exp. */
  lpart: Float64Array;
}

/** Keys per tile for head dim D: about 4096 elements of K (and of V), 16 to 256 keys. */
export function decodeTile(D: number): number {
  return Math.max(16, Math.min(256, 2 ** Math.floor(Math.log2(4096 / D))));
}

/** Query rows per task and tasks per group, for G·Nq rows sharing a key/value head. */
export function decodeRows(rows: number): { R: number; rowChunks: number } {
  const rowChunks = Math.ceil(rows / DECODE_MAX_ROWS);
  return { R: Math.ceil(rows / rowChunks), rowChunks };
}

/**
 * How the keys are split: enough tasks (B·Hkv·rowChunks·splits) for DECODE_TASKS_PER_THREAD per thread,
 * each split a multiple of Bc keys and at least DECODE_MIN_TILES_PER_SPLIT tiles; one split inline.
 */
export function decodeSplits(groups: number, Nk: number, Bc: number, threads: number): { splits: number; chunk: number } {
  const tiles = Math.max(1, Math.ceil(Nk / Bc));
  const wanted = threads > 1 ? Math.ceil((DECODE_TASKS_PER_THREAD * threads) / groups) : 1;
  const perSplit = Math.max(Math.min(tiles, DECODE_MIN_TILES_PER_SPLIT), Math.ceil(tiles / wanted));
  return { splits: Math.ceil(tiles / perSplit), chunk: perSplit * Bc };
}

export function decodeTasks(s: DecodeShape): number {
  return s.B * s.Hkv * s.rowChunks * s.splits;
}

/**
 * Whether a task widens f16 K_j and V_j into f32 tiles first: where it has more than one 4-row group,
 * each of which would otherwise widen every element again (at G·Nq = 64, f16 ran 9 % slower than the
 * tiled kernel without it; bench/variants/cpu-decode.ts --nq).
 */
function staged(s: DecodeShape): boolean {
  return s.f16 && s.R > 4;
}

/** f64 elements of scratch each thread needs. */
export function decodeScratch(s: DecodeShape): number {
  return 2 * s.R * s.D + s.R * s.Bc + 3 * s.R + (staged(s) ? s.Bc * s.D : 0);
}

/** Element offsets of the tile's key rows, and of a packed tile's (as many as the widest tile; one array per thread). */
let rowAt = new Uint32Array(0);
let packedAt = new Uint32Array(0);

/** dst[c·D ..] = row c (at src[at[c]]) widened from f16, for c < cols: a packed f32 tile. */
function widen(dst: Float32Array, src: Uint16Array, at: Uint32Array, cols: number, D: number): void {
  for (let c = 0; c < cols; c++) {
    const so = at[c];
    const o = c * D;
    for (let x = 0; x < D; x++) dst[o + x] = f16ToNumber(src[so + x]);
  }
}

/*
 * The products read K and V where they live (f32 in k32/v32, or f16 bits in k16/v16 when f16, the other
 * array empty so that every load site sees one array type), key c of the tile at element at[c]. Each is
 * a driver over small functions, one loop nest each: with its tail loops in the same function, V8's
 * TurboFan compiled the 4-row score loop 1.6× slower (2.3 against 1.4 ns a K element, D = 64).
 */

/**
 * S[r·ldc + c] = Q_r · K_c for r < rows, c < cols: four rows × two keys at a time (each element widened
 * once per four rows, eight independent sums), then the rows left one at a time, four keys at a time.
 */
function scores(Q: Float64Array, k32: Float32Array, k16: Uint16Array, f16: boolean, at: Uint32Array, rows: number, cols: number, D: number, S: Float64Array, ldc: number): void {
  let r = 0;
  for (; r + 4 <= rows; r += 4) scores4(Q, k32, k16, f16, at, r, cols, D, S, ldc);
  for (; r < rows; r++) scores1(Q, k32, k16, f16, at, r, cols, D, S, ldc);
}

function scores4(Q: Float64Array, k32: Float32Array, k16: Uint16Array, f16: boolean, at: Uint32Array, r: number, cols: number, D: number, S: Float64Array, ldc: number): void {
  const a0 = r * D;
  const a1 = a0 + D;
  const a2 = a1 + D;
  const a3 = a2 + D;
  const o = r * ldc;
  for (let c = 0; c < cols; c += 2) {
    const b0 = at[c];
    const b1 = c + 1 < cols ? at[c + 1] : b0; // an odd last key is computed twice, written once
    let s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
    for (let x = 0; x < D; x++) {
      const k0 = f16 ? f16ToNumber(k16[b0 + x]) : k32[b0 + x];
      const k1 = f16 ? f16ToNumber(k16[b1 + x]) : k32[b1 + x];
      const q0 = Q[a0 + x], q1 = Q[a1 + x], q2 = Q[a2 + x], q3 = Q[a3 + x];
      s00 += q0 * k0;
      s01 += q0 * k1;
      s10 += q1 * k0;
      s11 += q1 * k1;
      s20 += q2 * k0;
      s21 += q2 * k1;
      s30 += q3 * k0;
      s31 += q3 * k1;
    }
    S[o + c] = s00;
    S[o + ldc + c] = s10;
    S[o + 2 * ldc + c] = s20;
    S[o + 3 * ldc + c] = s30;
    if (c + 1 < cols) {
      S[o + c + 1] = s01;
      S[o + ldc + c + 1] = s11;
      S[o + 2 * ldc + c + 1] = s21;
      S[o + 3 * ldc + c + 1] = s31;
    }
  }
}

function scores1(Q: Float64Array, k32: Float32Array, k16: Uint16Array, f16: boolean, at: Uint32Array, r: number, cols: number, D: number, S: Float64Array, ldc: number): void {
  const a0 = r * D;
  const o = r * ldc;
  let c = 0;
  for (; c + 4 <= cols; c += 4) {
    const b0 = at[c], b1 = at[c + 1], b2 = at[c + 2], b3 = at[c + 3];
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let x = 0; x < D; x++) {
      const q = Q[a0 + x];
      s0 += q * (f16 ? f16ToNumber(k16[b0 + x]) : k32[b0 + x]);
      s1 += q * (f16 ? f16ToNumber(k16[b1 + x]) : k32[b1 + x]);
      s2 += q * (f16 ? f16ToNumber(k16[b2 + x]) : k32[b2 + x]);
      s3 += q * (f16 ? f16ToNumber(k16[b3 + x]) : k32[b3 + x]);
    }
    S[o + c] = s0;
    S[o + c + 1] = s1;
    S[o + c + 2] = s2;
    S[o + c + 3] = s3;
  }
  for (; c < cols; c++) {
    const b0 = at[c];
    let s0 = 0;
    for (let x = 0; x < D; x++) s0 += Q[a0 + x] * (f16 ? f16ToNumber(k16[b0 + x]) : k32[b0 + x]);
    S[o + c] = s0;
  }
}

/**
 * O_r += Σ_{c < n[r]} P[r·ldp + c] · V_c: row r only meets the n[r] keys it sees. Four rows × four keys
 * at a time over the keys all four see, then one row at a time, four keys at a time.
 */
function accumulate(O: Float64Array, P: Float64Array, ldp: number, v32: Float32Array, v16: Uint16Array, f16: boolean, at: Uint32Array, rows: number, n: Float64Array, D: number): void {
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const all = Math.min(n[r], n[r + 1], n[r + 2], n[r + 3]) & ~3;
    accumulate4(O, P, ldp, v32, v16, f16, at, r, all, D);
    for (let i = r; i < r + 4; i++) accumulate1(O, i * D, P, i * ldp, v32, v16, f16, at, all, n[i], D);
  }
  for (; r < rows; r++) accumulate1(O, r * D, P, r * ldp, v32, v16, f16, at, 0, n[r], D);
}

/** Rows r .. r + 3, keys 0 .. cols − 1 (a multiple of 4). */
function accumulate4(O: Float64Array, P: Float64Array, ldp: number, v32: Float32Array, v16: Uint16Array, f16: boolean, at: Uint32Array, r: number, cols: number, D: number): void {
  const o0 = r * D;
  const o1 = o0 + D;
  const o2 = o1 + D;
  const o3 = o2 + D;
  const a0 = r * ldp;
  const a1 = a0 + ldp;
  const a2 = a1 + ldp;
  const a3 = a2 + ldp;
  for (let c = 0; c < cols; c += 4) {
    const b0 = at[c], b1 = at[c + 1], b2 = at[c + 2], b3 = at[c + 3];
    const p00 = P[a0 + c], p01 = P[a0 + c + 1], p02 = P[a0 + c + 2], p03 = P[a0 + c + 3];
    const p10 = P[a1 + c], p11 = P[a1 + c + 1], p12 = P[a1 + c + 2], p13 = P[a1 + c + 3];
    const p20 = P[a2 + c], p21 = P[a2 + c + 1], p22 = P[a2 + c + 2], p23 = P[a2 + c + 3];
    const p30 = P[a3 + c], p31 = P[a3 + c + 1], p32 = P[a3 + c + 2], p33 = P[a3 + c + 3];
    for (let x = 0; x < D; x++) {
      const v0 = f16 ? f16ToNumber(v16[b0 + x]) : v32[b0 + x];
      const v1 = f16 ? f16ToNumber(v16[b1 + x]) : v32[b1 + x];
      const v2 = f16 ? f16ToNumber(v16[b2 + x]) : v32[b2 + x];
      const v3 = f16 ? f16ToNumber(v16[b3 + x]) : v32[b3 + x];
      O[o0 + x] += p00 * v0 + p01 * v1 + p02 * v2 + p03 * v3;
      O[o1 + x] += p10 * v0 + p11 * v1 + p12 * v2 + p13 * v3;
      O[o2 + x] += p20 * v0 + p21 * v1 + p22 * v2 + p23 * v3;
      O[o3 + x] += p30 * v0 + p31 * v1 + p32 * v2 + p33 * v3;
    }
  }
}

/** O[o ..] += Σ_{c0 <= c < c1} P[p + c] · V_c, four keys at a time. */
function accumulate1(O: Float64Array, o: number, P: Float64Array, p: number, v32: Float32Array, v16: Uint16Array, f16: boolean, at: Uint32Array, c0: number, c1: number, D: number): void {
  let c = c0;
  for (; c + 4 <= c1; c += 4) {
    const p0 = P[p + c], p1 = P[p + c + 1], p2 = P[p + c + 2], p3 = P[p + c + 3];
    const b0 = at[c], b1 = at[c + 1], b2 = at[c + 2], b3 = at[c + 3];
    for (let x = 0; x < D; x++) {
      O[o + x] +=
        f16
          ? p0 * f16ToNumber(v16[b0 + x]) + p1 * f16ToNumber(v16[b1 + x]) + p2 * f16ToNumber(v16[b2 + x]) + p3 * f16ToNumber(v16[b3 + x])
          : p0 * v32[b0 + x] + p1 * v32[b1 + x] + p2 * v32[b2 + x] + p3 * v32[b3 + x];
    }
  }
  for (; c < c1; c++) {
    const p0 = P[p + c];
    const b0 = at[c];
    for (let x = 0; x < D; x++) O[o + x] += p0 * (f16 ? f16ToNumber(v16[b0 + x]) : v32[b0 + x]);
  }
}

const NO_F32 = new Float32Array(0);
const NO_F16 = new Uint16Array(0);

/**
 * What task t owns (decodeTask's and the WebAssembly kernel's alike): batch row b, key/value head hk,
 * rows row0 .. row0 + rows of the group, the sequence's length, its band, its split and the keys [keyStart,
 * keyEnd) of its split (none a row of the task cannot see: past the band of its last query, before
 * that of its first).
 */
export function decodeTaskKeys(s: DecodeShape, a: Pick<DecodeArrays, 'lengths'>, t: number) {
  const { Hkv, Nq, R, rowChunks, splits, chunk, causal } = s;
  const G = s.H / Hkv;
  const split = t % splits;
  const rest = Math.floor(t / splits);
  const rc = rest % rowChunks;
  const bk = Math.floor(rest / rowChunks);
  const b = Math.floor(bk / Hkv);
  const hk = bk % Hkv;
  const len = a.lengths[b];
  const row0 = rc * R;
  const rows = Math.min(R, G * Nq - row0);
  const band = s.mods ? s.mods.band : causal ? CAUSAL : undefined;
  let [qFirst, qLast] = [Nq - 1, 0];
  for (let r = row0; r < row0 + rows; r++) [qFirst, qLast] = [Math.min(qFirst, r % Nq), Math.max(qLast, r % Nq)];
  const [lo, hi] = keyRange({ band }, qFirst, qLast + 1, Nq, len);
  const keyStart = lo + split * chunk;
  return { G, b, hk, len, row0, rows, band, split, keyStart, keyEnd: Math.min(hi, keyStart + chunk) };
}

export function decodeTask(s: DecodeShape, a: DecodeArrays, t: number, scratch: Float64Array): void {
  const { Nq, D, Bc, R, scale, f16, pageSize, kvPage, kvRow } = s;
  const { G, b, hk, len, row0, rows, band, split, keyStart, keyEnd } = decodeTaskKeys(s, a, t);
  const mods = s.mods;
  const offset = len - Nq; // query i's diagonal: key i + offset
  const tb = b * s.maxPages;
  const head = hk * s.kvHead;
  // Both views of each of q, K and V, one of them empty: every load site sees one array type.
  const [q32, k32, v32] = f16 ? [NO_F32, NO_F32, NO_F32] : [a.q as Float32Array, a.k as Float32Array, a.v as Float32Array];
  const [q16, k16, v16] = f16 ? [a.q as Uint16Array, a.k as Uint16Array, a.v as Uint16Array] : [NO_F16, NO_F16, NO_F16];

  let at = 0;
  const take = (n: number) => scratch.subarray(at, (at += n));
  const Q = take(R * D);
  const O = take(R * D);
  const S = take(R * Bc);
  const m = take(R);
  const l = take(R);
  const seen = take(R); // keys of the current tile each row sees (0: none)
  const stage = staged(s);
  // K_j and V_j widened (f16 with more than one 4-row group): 2·Bc·D f32 in Bc·D f64 of scratch.
  let tiles: Float32Array = NO_F32;
  if (stage) {
    const t = take(Bc * D);
    tiles = new Float32Array(t.buffer, t.byteOffset, 2 * Bc * D);
    if (packedAt.length < Bc || packedAt[1] !== D) packedAt = Uint32Array.from({ length: Bc }, (_, c) => c * D);
  }
  const Kj = tiles.subarray(0, Bc * D);
  const Vj = tiles.subarray(Bc * D);
  if (rowAt.length < Bc) rowAt = new Uint32Array(Bc);
  const keyAt = rowAt;

  // Q (the scale folded in), O = 0, l = 0, m = −∞.
  for (let r = 0; r < rows; r++) {
    const g = Math.floor((row0 + r) / Nq);
    const i = (row0 + r) % Nq;
    const so = b * s.qBatch + i * s.qRow + (hk * G + g) * s.qHead;
    for (let x = 0; x < D; x++) Q[r * D + x] = (f16 ? f16ToNumber(q16[so + x]) : q32[so + x]) * scale;
  }
  O.fill(0, 0, rows * D);
  l.fill(0, 0, rows);
  m.fill(-Infinity, 0, rows);

  for (let c0 = keyStart; c0 < keyEnd; c0 += Bc) {
    const cols = Math.min(Bc, keyEnd - c0);
    // Where the tile's keys live: the page of key t, then its row in the page.
    for (let c = 0; c < cols; c++) {
      const key = c0 + c;
      const page = Math.floor(key / pageSize);
      keyAt[c] = a.table[tb + page] * kvPage + (key - page * pageSize) * kvRow + head;
    }
    if (stage) {
      widen(Kj, k16, keyAt, cols, D);
      widen(Vj, v16, keyAt, cols, D);
      scores(Q, Kj, NO_F16, false, packedAt, rows, cols, D, S, Bc);
    } else {
      scores(Q, k32, k16, f16, keyAt, rows, cols, D, S, Bc);
    }
    for (let r = 0; r < rows; r++) {
      const i = (row0 + r) % Nq;
      // The row sees none of the tile's keys past n (its band's last); modifyRow drops those left of its window (−∞).
      const n = Math.max(0, Math.min(cols, bandHi(band, i, offset) + 1 - c0));
      if (mods && n > 0) modifyRow(mods, b, hk * G + Math.floor((row0 + r) / Nq), i, c0, n, S, r * Bc, Nq, len);
      // Running max, P̃ = exp(S − m), l = e^(m_old − m) l + rowsum(P̃); S rounded to f32 as in flash.ts.
      const mOld = m[r];
      let mNew = mOld;
      const sr = r * Bc;
      for (let c = 0; c < n; c++) mNew = Math.max(mNew, (S[sr + c] = Math.fround(S[sr + c]))); // Math.max keeps a NaN in its row
      if (mNew === -Infinity) {
        seen[r] = 0;
        continue;
      }
      seen[r] = n;
      const alpha = Math.exp(mOld - mNew);
      let rowsum = 0;
      for (let c = 0; c < n; c++) rowsum += S[sr + c] = Math.exp(S[sr + c] - mNew);
      l[r] = alpha * l[r] + rowsum;
      m[r] = mNew;
      if (alpha !== 1) {
        const or = r * D;
        for (let x = 0; x < D; x++) O[or + x] *= alpha;
      }
    }
    if (stage) accumulate(O, S, Bc, Vj, NO_F16, false, packedAt, rows, seen, D);
    else accumulate(O, S, Bc, v32, v16, f16, keyAt, rows, seen, D);
  }

  // The split's partial: O / l and L = m + log l (a row that saw no key here: O = 0, L = −∞).
  for (let r = 0; r < rows; r++) {
    const g = Math.floor((row0 + r) / Nq);
    const i = (row0 + r) % Nq;
    const part = ((b * s.H + hk * G + g) * Nq + i) * s.splits + split;
    const inv = l[r] === 0 ? 0 : 1 / l[r];
    for (let x = 0; x < D; x++) a.opart[part * D + x] = O[r * D + x] * inv;
    a.lpart[part] = l[r] === 0 ? -Infinity : m[r] + Math.log(l[r]);
  }
}

/** out (q's layout, f32 or f16 bits) and lse ((B, H, Nq) f32) from the splits' partials. */
export function mergeDecode(s: DecodeShape, opart: Float64Array, lpart: Float64Array, out: Float32Array | Uint16Array, lse: Float32Array): void {
  const { B, H, Nq, D, splits, f16 } = s;
  const acc = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Nq; i++) {
        const row = (b * H + h) * Nq + i;
        const dst = b * s.qBatch + i * s.qRow + h * s.qHead;
        if (splits === 1) {
          // One split: its O / l and L are the results (what the general path gives with the one weight 1).
          const L = lpart[row];
          lse[row] = L;
          const o = row * D;
          for (let x = 0; x < D; x++) {
            const y = L !== L ? NaN : L === -Infinity ? 0 : opart[o + x];
            out[dst + x] = f16 ? numberToF16(y) : y;
          }
          continue;
        }
        let M = -Infinity;
        let nan = false;
        for (let p = 0; p < splits; p++) {
          const L = lpart[row * splits + p];
          if (L !== L) nan = true;
          else if (L > M) M = L;
        }
        acc.fill(0);
        let sum = 0;
        if (nan) {
          acc.fill(NaN);
          sum = NaN;
        } else if (M !== -Infinity) {
          for (let p = 0; p < splits; p++) {
            const L = lpart[row * splits + p];
            if (L === -Infinity) continue;
            const w = Math.exp(L - M);
            sum += w;
            const o = (row * splits + p) * D;
            for (let x = 0; x < D; x++) acc[x] += w * opart[o + x];
          }
        }
        const inv = M === -Infinity && !nan ? 0 : 1 / sum;
        lse[row] = nan ? NaN : M === -Infinity ? -Infinity : M + Math.log(sum);
        if (f16) for (let x = 0; x < D; x++) out[dst + x] = numberToF16(acc[x] * inv);
        else for (let x = 0; x < D; x++) out[dst + x] = acc[x] * inv;
      }
    }
  }
}
