/**
 * The cpu backward in WebAssembly SIMD: backwardTask of flash.ts (one task per run of key blocks of a
 * key/value head, FlashAttention-2's Algorithm 2), with the tiles' arithmetic in the generated module of
 * backward-module.ts. Each thread instantiates a module for (Dp, Br, Bc) once, with a memory of its own.
 * A task copies the query-side rows of its group's heads into it once (Q times the scale and dO in f64
 * and in f32, L, and D = rowsum(dO ∘ O) computed here, Alg. 2 line 4; HEAD_BYTES at most: past that, one query
 * block at a time), then for each K_j, V_j (copied in, f64 and f32) streams the query blocks that see it
 * (causal: blocks above the diagonal are skipped) and runs scores, dp, ds, dq, atbExact (dV_j) and atb (dK_j).
 * dK_j and dV_j (f64) are written once per key block; dQ (f64) into the task's own partial, as flash.ts
 * does (summed over tasks afterwards, in a fixed order: deterministic). Rows are padded with zeros to Dp,
 * a multiple of 4. Semantics are the JavaScript kernel's: a row that sees no key (L = −∞) gives zero
 * gradients; a pair (row, key) the row does not see is never multiplied, so a NaN stays in its row's dQ
 * and in dK, dV of the keys that row sees. The variants (s.mods) run the same module with flash.ts's hooks
 * around it (variants.ts): query blocks outside the band are never visited and EMPTY tiles skipped; after
 * scores, soft-cap and ALiBi in the module (its function modify, built only for calls that have them),
 * then the band's segment, the bias and the element rules in JavaScript, N[r] the end of the row's
 * segment; with dropout dp runs with D = 0 and dP ∘ Z − D is formed before ds; with dropout, a soft-cap or
 * dbias, ds runs with scale 1 and a hook writes dS for dbias, then the scale and the soft-cap's derivative
 * into dS and Z into P.
 */
import { EMPTY, FULL, alibiSlope, rowRange, tileClass, type TileClass } from '../../modifiers.js';
import { backwardTaskOf, taskMods, type BackwardArrays } from '../flash.js';
import type { CpuShape } from '../job.js';
import { backwardLayout, backwardModule, type BackwardLayout } from './backward-module.js';
import { copyRows, HEAD_BYTES, instance, reserve, wasmSupport, type Instance } from './instance.js';
import type { ScoreMods } from './score-mod.js';
import { dPHook, dSHook, needsDSHook, scoreHook, variantRows, type TileMemory, type VariantRows } from './variants.js';

/** This thread's backward module for (Dp, Br, Bc) and the score modifiers, with its layout and functions. */
interface Backward {
  w: Instance;
  lay: BackwardLayout;
  scores: (rows4: number, cols2: number, kb: number, qb: number) => void;
  dp: (rows4: number, cols2: number, vb: number, ob: number, db: number) => void;
  ds: (rows4: number, cols: number, lb: number, scale: number) => void;
  dq: (rows4: number, kb: number, qb: number) => void;
  atb: (rows: number, cols: number, pb: number, xb: number, ob: number) => void;
  /** atb with its products and sums in f64 (for dV_j: backward-module.ts). */
  atbExact: (rows: number, cols: number, pb: number, xb: number, ob: number) => void;
  /** With soft-cap or ALiBi: score-mod.ts's modify. */
  modify?: (rows4: number, cols: number, d0: number, cap: number, slope: number) => void;
}

function backwardInstance(Dp: number, Br: number, Bc: number, mods: ScoreMods): Backward | undefined {
  const lay = backwardLayout(Dp, Br, Bc, mods.softcap);
  const w = instance(`backward ${Dp} ${Br} ${Bc} ${mods.softcap} ${mods.alibi}`, (relaxed) => backwardModule(lay, relaxed, mods));
  if (!w) return undefined;
  const e = w.exports as Pick<Backward, 'scores' | 'dp' | 'ds' | 'dq' | 'atb' | 'atbExact' | 'modify'>;
  return { w, lay, scores: e.scores, dp: e.dp, ds: e.ds, dq: e.dq, atb: e.atb, atbExact: e.atbExact, modify: e.modify };
}

/**
 * Byte offsets of the rows backward.ts places from the layout's `bytes` on: K_j and V_j (f64, then f32),
 * then R query rows: Q (times the scale) and dO in f64, dQ and D (f64), Q and dO in f32, L (f32); then
 * Br zeros (f64), the D that dp subtracts under dropout.
 */
interface Zones {
  Kd: number;
  Vd: number;
  Kf: number;
  V: number;
  Qd: number;
  dOd: number;
  dQ: number;
  D: number;
  Qf: number;
  dO: number;
  L: number;
  zero: number;
  end: number;
}

function zones(lay: BackwardLayout, R: number): Zones {
  const { Bc, Dp, ld, ldq } = lay;
  const Kd = lay.bytes;
  const Vd = Kd + Bc * ldq * 8;
  const Kf = Vd + Bc * ldq * 8;
  const V = Kf + Bc * ld * 4;
  const Qd = V + Bc * ld * 4;
  const dOd = Qd + R * ldq * 8;
  const dQ = dOd + R * ldq * 8;
  const D = dQ + R * Dp * 8;
  const Qf = D + R * 8;
  const dO = Qf + R * ld * 4;
  const L = dO + R * ld * 4;
  const zero = Math.ceil((L + R * 4) / 16) * 16;
  return { Kd, Vd, Kf, V, Qd, dOd, dQ, D, Qf, dO, L, zero, end: zero + lay.Br * 8 };
}

/**
 * The task function of the WebAssembly backward for a job's shape and arrays, or undefined where it
 * cannot run here (no SIMD, or no module could be made): the caller runs flash.ts's then. A task keeps
 * its group's query rows whole where they take at most `headBytes` (tests pass less to run the other way).
 */
export function wasmBackward(s: CpuShape, a: BackwardArrays, headBytes = HEAD_BYTES): ((t: number) => void) | undefined {
  if (wasmSupport() === 'none') return undefined;
  const Dp = Math.ceil(s.D / 4) * 4;
  const mods = taskMods(s, a);
  const vr = mods && variantRows(mods, s.Br, s.Bc);
  const bw = backwardInstance(Dp, s.Br, s.Bc, vr?.score ?? { softcap: false, alibi: false });
  if (!bw) return undefined;
  const { lay } = bw;
  // The query rows of a group's heads, 4 rows more for the last block's padding to a multiple of 4.
  const groupRows = Math.ceil(((s.H / s.Hkv) * s.Nq) / 4) * 4 + 4;
  const whole = zones(lay, groupRows).end <= headBytes;
  const z = zones(lay, whole ? groupRows : s.Br);
  if (!reserve(bw.w, z.end)) return undefined;
  return (t) => backwardTaskWasm(s, a, t, bw, z, whole, vr);
}

/**
 * Query rows [r0, r0 + rows) of head h into the module's rows from `at` on (zones z): Q times the scale
 * (f64) and Q (f32), dO (f64 and f32), L, and D = rowsum(dO ∘ O) (Alg. 2 line 4, in f64).
 */
function loadQueries(s: CpuShape, a: BackwardArrays, w: Instance, lay: BackwardLayout, z: Zones, b: number, h: number, r0: number, rows: number, at: number): void {
  const { H, Nq, D, qRow, scale } = s;
  const { q, out, dout, lse } = a;
  const { f32: F, f64: F64 } = w;
  const { ld, ldq } = lay;
  const qo = b * s.qBatch + h * s.qHead + r0 * qRow;
  const Qd = z.Qd / 8 + at * ldq;
  for (let r = 0; r < rows; r++) {
    const so = qo + r * qRow;
    const d = Qd + r * ldq;
    for (let x = 0; x < D; x++) F64[d + x] = q[so + x] * scale;
  }
  copyRows(F, z.Qf / 4 + at * ld, ld, q, qo, qRow, rows, D);
  copyRows(F64, z.dOd / 8 + at * ldq, ldq, dout, qo, qRow, rows, D);
  copyRows(F, z.dO / 4 + at * ld, ld, dout, qo, qRow, rows, D);
  F.set(lse.subarray((b * H + h) * Nq + r0, (b * H + h) * Nq + r0 + rows), z.L / 4 + at);
  for (let r = 0; r < rows; r++) {
    const o = qo + r * qRow;
    let sum = 0;
    for (let x = 0; x < D; x++) sum += dout[o + x] * out[o + x];
    F64[z.D / 8 + at + r] = sum;
  }
}

function backwardTaskWasm(s: CpuShape, a: BackwardArrays, t: number, bw: Backward, z: Zones, whole: boolean, vr?: VariantRows): void {
  const { B, H, Hkv, Nq, Nk, D, Br, Bc, scale, causal, kvRow } = s;
  const { k, v, dqPartial, dk, dv } = a;
  const { lay } = bw;
  const { f32: F, f64: F64, i32: I } = bw.w;
  const { Dp, ld, ldq } = lay;
  const G = H / Hkv;
  const { b, hkv, chunk, jStart, jEnd } = backwardTaskOf(s, t);
  const ko = b * s.kvBatch + hkv * s.kvHead;
  const offset = Nk - Nq; // causal: row r sees keys c <= r + offset
  const N = lay.N / 4;
  /** Zero the query zones (padding columns, dQ) before rows are copied in (and the zeros after them). */
  const clearQueries = () => {
    F64.fill(0, z.Qd / 8, z.Qf / 8);
    F.fill(0, z.Qf / 4, z.end / 4);
  };
  const tm: TileMemory | undefined = vr && { F, I, S: lay.S / 4, panel: lay.panelB / 4, N, ...(lay.dcap >= 0 && { dcap: lay.dcap / 4 }) };
  const post = vr !== undefined && needsDSHook(vr, a.dS);
  /** dQ rows of the module from `at` into the task's partial at query rows [r0, r0 + rows) of head h (add: += ). */
  const storeDq = (h: number, r0: number, rows: number, at: number, add: boolean) => {
    const dqo = ((chunk * B + b) * H + h) * Nq * D + r0 * D;
    const src = z.dQ / 8 + at * Dp;
    for (let r = 0; r < rows; r++) {
      for (let x = 0; x < D; x++) {
        if (add) dqPartial[dqo + r * D + x] += F64[src + r * Dp + x];
        else dqPartial[dqo + r * D + x] = F64[src + r * Dp + x];
      }
    }
  };

  if (whole) {
    clearQueries();
    for (let g = 0; g < G; g++) loadQueries(s, a, bw.w, lay, z, b, hkv * G + g, 0, Nq, g * Nq);
  }

  for (let j = jStart; j < jEnd; j++) {
    const c0 = j * Bc;
    const cols = Math.min(Bc, Nk - c0);
    const cols2 = cols + (cols & 1); // scores and dp read keys in pairs: the row past the last is zero, and masked
    // Alg. 2 lines 6-7: load K_j (f64 and f32), V_j; dK_j = 0, dV_j = 0.
    F64.fill(0, z.Kd / 8, z.Kf / 8);
    F.fill(0, z.Kf / 4, z.Qd / 4);
    copyRows(F64, z.Kd / 8, ldq, k, ko + c0 * kvRow, kvRow, cols, D);
    copyRows(F64, z.Vd / 8, ldq, v, ko + c0 * kvRow, kvRow, cols, D);
    copyRows(F, z.Kf / 4, ld, k, ko + c0 * kvRow, kvRow, cols, D);
    copyRows(F, z.V / 4, ld, v, ko + c0 * kvRow, kvRow, cols, D);
    F64.fill(0, lay.dK / 8, lay.dK / 8 + Bc * Dp);
    F64.fill(0, lay.dV / 8, lay.dV / 8 + Bc * Dp);
    // Alg. 2 line 8. Causal: the first query row that sees key c0; query blocks before it are skipped.
    // With the variants, the band's: query blocks that see no key of K_j are never visited.
    let rStart = causal ? Math.max(0, Math.floor((c0 - offset) / Br)) * Br : 0;
    let rEnd = Nq;
    if (vr) {
      const [lo, hi] = rowRange(vr.mods.m, c0, c0 + cols, Nq, Nk);
      rStart = Math.floor(lo / Br) * Br;
      rEnd = hi;
    }
    for (let g = 0; g < G; g++) {
      const h = hkv * G + g;
      for (let r0 = rStart; r0 < rEnd; r0 += Br) {
        const rows = Math.min(Br, Nq - r0);
        const rows4 = Math.ceil(rows / 4) * 4;
        let tile: TileClass = FULL;
        if (vr) {
          tile = tileClass(vr.mods.m, b, h, r0, r0 + rows, c0, c0 + cols, Nq, Nk);
          if (tile === EMPTY) continue;
        }
        const at = whole ? g * Nq + r0 : 0;
        if (!whole) {
          clearQueries();
          loadQueries(s, a, bw.w, lay, z, b, h, r0, rows, 0);
        }
        const L0 = z.L / 4 + at;
        if (!vr) {
          // The keys of K_j each row sees (0: none, or a row that saw no key in the forward, L = −∞).
          for (let r = 0; r < rows4; r++) {
            I[N + r] = r >= rows || F[L0 + r] === -Infinity ? 0 : causal ? Math.max(0, Math.min(cols, r0 + r + offset + 1 - c0)) : cols;
          }
        }
        // Alg. 2 lines 9-16.
        bw.scores(rows4, cols2, z.Kd, z.Qd + at * ldq * 8);
        bw.dp(rows4, cols2, z.Vd, z.dOd + at * ldq * 8, vr?.dropout ? z.zero : z.D + at * 8);
        const ta = vr && { b, h, r0, rows, c0, cols, tile };
        if (vr) {
          bw.modify?.(rows4, cols, r0 + offset - c0, vr.mods.m.softcap ?? 1, vr.score.alibi ? alibiSlope(vr.mods.m, b, h) : 0);
          scoreHook(vr, tm!, ta!, rows4, Nq, Nk, (r) => F[L0 + r] === -Infinity);
          if (vr.dropout) dPHook(vr, tm!, ta!, lay.dP / 4, b * H + h, F64, z.D / 8 + at);
        }
        bw.ds(rows4, cols, z.L + at * 4, post ? 1 : scale);
        if (post) dSHook(vr!, tm!, ta!, lay.dP / 4, scale, H, Nq, Nk, a.dS, a.dbiasP);
        bw.dq(rows4, z.Kf, z.dQ + at * Dp * 8);
        bw.atbExact(rows, cols, lay.S, z.dO + at * ld * 4, lay.dV);
        bw.atb(rows, cols, lay.dP, z.Qf + at * ld * 4, lay.dK);
        if (!whole) storeDq(h, r0, rows, 0, true);
      }
    }
    // Alg. 2 line 18: write dK_j, dV_j once, summed over the group's heads.
    for (let c = 0; c < cols; c++) {
      const dst = ko + (c0 + c) * kvRow;
      const src = c * Dp;
      for (let x = 0; x < D; x++) {
        dk[dst + x] = F64[lay.dK / 8 + src + x];
        dv[dst + x] = F64[lay.dV / 8 + src + x];
      }
    }
  }
  if (whole) for (let g = 0; g < G; g++) storeDq(hkv * G + g, 0, Nq, g * Nq, false);
}
