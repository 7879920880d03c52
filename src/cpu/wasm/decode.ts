/**
 * The cpu decode kernel in WebAssembly SIMD: decodeTask of ../decode.ts (split-KV, Flash-Decoding), with
 * the tiles' arithmetic in the forward module's qk, softmax and pv (forward-module.ts) and the K_j, V_j
 * widening of decode-module.ts. The tasks, their splits and their partials are decodeTask's (so
 * mergeDecode is unchanged): one task owns key/value head hk of batch row b, up to R of the G·Nq query
 * rows that share it (head-major, as there) and one split of the keys the rows see.
 *
 * Per task: Q (its rows times the scale, f64) is written into the module's memory, O = 0, l = 0, m = −∞.
 * Per tile of Bc keys, in order: the keys' offsets through the block table (table[b·maxPages + ⌊t / pageSize⌋]
 * ·kvPage + (t mod pageSize)·kvRow + hk·kvHead, either layout, paged or not); their K and V rows are
 * copied, raw (f32 or f16 bits), into the staging area (one copy per row, or, where rows of one page
 * lie close, SPAN_MAX_RATIO, one per page with what lies between them; nothing past the tile's rows
 * is copied) and widened by `tile`; the next tile's rows are touched, a line each 64 bytes (touch), so
 * that they arrive while this one computes; N[r] = the keys of the tile row r sees up to its band's
 * right edge (its diagonal at i + length − Nq); qk; with variants, modifyRow
 * on each row's scores (the window's left edge as −∞, ALiBi, the soft-cap); softmax; pv. Then the
 * split's O / l and m + log l go to the partials, as decodeTask writes them.
 *
 * Precision, step by step: S = Q K_jᵀ from f64 products of f32 values (exact) summed in f64, rounded to
 * f32 once: the scores decodeTask and the backward compute, so an lse from here gives the backward P ≤ 1
 * even where |S| ~ 1e4; m is that f32 max; α = e^(m_old − m) in f64; P̃ = exp(S − m) in f32 (a polynomial
 * within 2 ulp); l sums P̃ in f64; P̃ V_j sums the f32 products of 32 keys at a time in f32, then adds
 * them to O in f64; O / l and log l in f64. Where f32 rounding is allowed (P̃ and the 32-key sums) the
 * error stays far under the cpu standard attention's own, which the error rule measures against; the
 * scores are kept exact because they cost little here: one thread, D = 128, 4 rows, K and V in cache,
 * a key took about 180 ns to copy in (two rows: a subarray and a set each), 27 to widen, 48 for qk in
 * f64, 8 for the softmax and 30 for pv.
 *
 * The copy is the cost: the module cannot read the caller's arrays, and a copy per row of one head costs
 * a call (about 70 ns), where memcpy of whole arrays runs at about 11 GB/s here (bench/variants/
 * cpu-decode.ts --cpu).
 */
import { f16ToNumber } from '../../f16.js';
import { bandHi, modifyRow } from '../../modifiers.js';
import { decodeTaskKeys, type DecodeArrays, type DecodeShape } from '../decode.js';
import { decodeLayout, decodeTileModule, type DecodeLayout } from './decode-module.js';
import { forwardModule } from './forward-module.js';
import { companion, instance, reserve, wasmSupport, type Instance } from './instance.js';

/** This thread's decode modules for one job's shape, their layout and functions, and its staging views. */
interface Decode {
  w: Instance;
  lay: DecodeLayout;
  qk: (rows4: number, cols2: number, kb: number) => void;
  softmax: (rows4: number, cols: number) => void;
  pv: (rows4: number, vb: number) => void;
  tile: (n: number, kb: number, vb: number, stride: number) => void;
  /** The staging area's view in the storage type (element offsets of K's and V's), and its rows' stride in elements. */
  stage: Float32Array | Uint16Array;
  stageK: number;
  stageV: number;
  stride: number;
  /** Whether runs of rows kvRow apart are copied whole, what lies between them included. */
  spanned: boolean;
  /** Element offsets of the tile's keys in k and v, and of the next tile's; one row of scores for modifyRow. */
  keyAt: Uint32Array;
  nextAt: Uint32Array;
  row: Float64Array;
  /** The sum of the touched elements (kept, so that the loads are not dropped). */
  touched: number;
}

/**
 * The task function of the WebAssembly decode kernel for a job's shape and arrays, or undefined where it
 * cannot run here (no SIMD, or no module could be made): the caller runs decode.ts's then.
 */
export function wasmDecode(s: DecodeShape, a: DecodeArrays): ((t: number) => void) | undefined {
  if (wasmSupport() === 'none') return undefined;
  const Dp = Math.ceil(s.D / 4) * 4;
  const R4 = Math.ceil(s.R / 4) * 4;
  const es = s.f16 ? 2 : 4;
  const spanned = s.kvRow <= SPAN_MAX_RATIO * s.D;
  const stride = spanned ? s.kvRow : Dp;
  const lay = decodeLayout(s.D, R4, s.Bc, s.f16, s.Bc * stride);
  const w = instance(`decode ${Dp} ${R4} ${s.Bc}`, (relaxed) => forwardModule(lay.fw, relaxed));
  if (!w || !reserve(w, lay.bytes)) return undefined;
  const t = companion(w, `tile ${s.D} ${s.f16}`, () => decodeTileModule(lay)) as { tile: Decode['tile'] } | null;
  if (!t) return undefined;
  const e = w.exports as Pick<Decode, 'qk' | 'softmax' | 'pv'>;
  const d: Decode = {
    w,
    lay,
    qk: e.qk,
    softmax: e.softmax,
    pv: e.pv,
    tile: t.tile,
    stage: s.f16 ? new Uint16Array(w.mem.buffer) : new Float32Array(w.mem.buffer),
    stageK: lay.stageK / es,
    stageV: lay.stageV / es,
    stride,
    spanned,
    keyAt: new Uint32Array(s.Bc),
    nextAt: new Uint32Array(s.Bc),
    row: new Float64Array(s.Bc),
    touched: 0,
  };
  return (task) => decodeTaskWasm(s, a, task, d);
}

/** Offsets of the keys [c0, c0 + cols) of batch row b's head in k and v, through the block table. */
function keyOffsets(s: DecodeShape, a: DecodeArrays, at: Uint32Array, tb: number, head: number, c0: number, cols: number): void {
  for (let c = 0; c < cols; c++) {
    const key = c0 + c;
    const page = Math.floor(key / s.pageSize);
    at[c] = a.table[tb + page] * s.kvPage + (key - page * s.pageSize) * s.kvRow + head;
  }
}

/**
 * One element of every 64-byte line of the rows (D elements at at[0 .. cols)): independent loads that
 * bring the next tile's K and V towards the core while this one's products run, where the row-by-row
 * copies alone wait for memory one row at a time (the kernel took 20 % less CPU time with them, f32,
 * H = 32, Hkv = 8, D = 128, Nk = 4096 and 32768: bench/variants/cpu-decode.ts).
 */
function touch(src: Float32Array | Uint16Array, at: Uint32Array, cols: number, D: number, step: number): number {
  let sum = 0;
  for (let c = 0; c < cols; c++) {
    const o = at[c];
    for (let x = 0; x < D; x += step) sum += src[o + x];
  }
  return sum;
}

/**
 * Where a tile's rows lie kvRow elements apart (a page of one head in the BNHD layout or the KV cache's
 * pools) and kvRow is at most this many times D, they are copied as one span, the other heads' elements
 * between them included: one copy per page instead of one per row, which costs a call. CPU time per
 * call, paged(16), Nq = 1 (bench/variants/cpu-decode.ts --cpu, alternated runs): Hkv = 2, D = 64 (twice
 * the bytes read) 25–35 % less with spans, f32 and f16, Nk = 4096 and 32768; Hkv = 4, D = 128 (four
 * times) 5 % more for f16 and 45 % more for f32.
 */
const SPAN_MAX_RATIO = 2;

/**
 * Rows of D elements of src at offsets at[0 .. cols) into dst from `to`, row c at c·stride: with
 * `spanned`, one copy for each run of rows `stride` apart in src (the span from the first to the end of
 * the last), else one per row.
 */
function stageRows(dst: Float32Array | Uint16Array, to: number, src: Float32Array | Uint16Array, at: Uint32Array, cols: number, D: number, stride: number, spanned: boolean): void {
  for (let c = 0; c < cols; ) {
    let e = c + 1;
    if (spanned) while (e < cols && at[e] === at[e - 1] + stride) e++;
    // a subarray and a set per run: a per-element loop from shared memory is 4× slower (instance.ts)
    dst.set(src.subarray(at[c], at[e - 1] + D) as Uint16Array, to + c * stride);
    c = e;
  }
}

function decodeTaskWasm(s: DecodeShape, a: DecodeArrays, t: number, d: Decode): void {
  const { Nq, D, Bc, R, scale, f16 } = s;
  const { lay, row } = d;
  const { fw } = lay;
  const { f32: F, f64: F64, i32: I } = d.w;
  const { Dp, ldq } = fw;
  const { G, b, hk, len, row0, rows, band, split, keyStart, keyEnd } = decodeTaskKeys(s, a, t);
  const rows4 = Math.ceil(rows / 4) * 4;
  const mods = s.mods;
  const offset = len - Nq; // query i's diagonal: key i + offset
  const tb = b * s.maxPages;
  const head = hk * s.kvHead;

  const Q = fw.Q / 8;
  const O = fw.O / 8;
  const M = fw.M / 4;
  const L = fw.L / 8;
  const N = fw.N / 4;
  const S = fw.S / 4;
  // Q (the scale folded in; rows past the task's and columns past D zero), O = 0, l = 0, m = −∞.
  F64.fill(0, Q, Q + rows4 * ldq);
  for (let r = 0; r < rows; r++) {
    const so = b * s.qBatch + ((row0 + r) % Nq) * s.qRow + (hk * G + Math.floor((row0 + r) / Nq)) * s.qHead;
    const dq = Q + r * ldq;
    if (f16) for (let x = 0; x < D; x++) F64[dq + x] = f16ToNumber(a.q[so + x]) * scale;
    else for (let x = 0; x < D; x++) F64[dq + x] = a.q[so + x] * scale;
  }
  F64.fill(0, O, O + rows4 * Dp);
  F64.fill(0, L, L + rows4);
  F.fill(-Infinity, M, M + rows4);

  let [at, next] = [d.keyAt, d.nextAt];
  const step = f16 ? 32 : 16; // elements in 64 bytes
  if (keyStart < keyEnd) keyOffsets(s, a, at, tb, head, keyStart, Math.min(Bc, keyEnd - keyStart));
  for (let c0 = keyStart; c0 < keyEnd; c0 += Bc) {
    const cols = Math.min(Bc, keyEnd - c0);
    stageRows(d.stage, d.stageK, a.k, at, cols, D, d.stride, d.spanned);
    stageRows(d.stage, d.stageV, a.v, at, cols, D, d.stride, d.spanned);
    d.tile(cols, lay.stageK, lay.stageV, d.stride * (f16 ? 2 : 4));
    if (c0 + Bc < keyEnd) {
      const n = Math.min(Bc, keyEnd - c0 - Bc);
      keyOffsets(s, a, next, tb, head, c0 + Bc, n);
      d.touched += touch(a.k, next, n, D, step) + touch(a.v, next, n, D, step);
    }
    [at, next] = [next, at];
    // N[r]: the tile's keys row r sees up to its band's right edge (0 past the task's rows).
    for (let r = 0; r < rows4; r++) I[N + r] = r < rows ? Math.max(0, Math.min(cols, bandHi(band, (row0 + r) % Nq, offset) + 1 - c0)) : 0;
    d.qk(rows4, cols + (cols & 1), lay.K);
    if (mods) {
      // modifyRow on each row's scores (Sᵀ: panels of 4 rows, key-major), as decodeTask calls it
      for (let r = 0; r < rows; r++) {
        const n = I[N + r];
        if (n === 0) continue;
        const p = S + (r >> 2) * Bc * 4 + (r & 3);
        for (let c = 0; c < n; c++) row[c] = F[p + 4 * c];
        modifyRow(mods, b, hk * G + Math.floor((row0 + r) / Nq), (row0 + r) % Nq, c0, n, row, 0, Nq, len);
        for (let c = 0; c < n; c++) F[p + 4 * c] = row[c];
      }
    }
    d.softmax(rows4, cols);
    d.pv(rows4, lay.V);
  }

  // The split's partial: O / l and L = m + log l (a row that saw no key here: O = 0, L = −∞).
  for (let r = 0; r < rows; r++) {
    const g = Math.floor((row0 + r) / Nq);
    const i = (row0 + r) % Nq;
    const part = ((b * s.H + hk * G + g) * Nq + i) * s.splits + split;
    const l = F64[L + r];
    const inv = l === 0 ? 0 : 1 / l;
    const src = O + r * Dp;
    for (let x = 0; x < D; x++) a.opart[part * D + x] = F64[src + x] * inv;
    a.lpart[part] = l === 0 ? -Infinity : F[M + r] + Math.log(l);
  }
}
