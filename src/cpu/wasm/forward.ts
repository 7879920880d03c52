/**
 * The cpu forward in WebAssembly SIMD: forwardTask of flash.ts (one task per query block of a head,
 * FlashAttention-2 over tiles), with the tiles' arithmetic in the generated module of forward-module.ts.
 * Each thread instantiates a module for (Dp, Br, Bc) once, with a memory of its own; a task copies Q_i's
 * rows (f32, which the module's load widens to f64 and scales) and the K (f64) and V (f32) rows of its
 * head from the job's shared arrays into it (rows padded with zeros to Dp, a multiple of 4), runs qk,
 * softmax and pv per key block, and writes O_i = O / l (the module's store, f32 rows) and
 * L_i = m + log l back. The causal cut is flash.ts's: key blocks past the diagonal are
 * never visited, and N[r] gives each row the keys of a block it sees. Results follow the JavaScript
 * kernel's semantics (a row that sees no key: out 0, lse −∞; a NaN poisons only its row) and its
 * scores (S from f64 products, rounded to f32 once); P̃ and the products P̃V are f32, O and l f64.
 * The variants (s.mods) run flash.ts's hooks around the module's functions (variants.ts): key blocks
 * outside the band are never visited and EMPTY tiles skipped; after qk, soft-cap and ALiBi in the module
 * (its function modify, built only for calls that have them), then the band's segment, the bias and the
 * element rules in JavaScript, N[r] the end of the row's segment; after softmax, dropout scales P̃
 * before pv.
 */
import { EMPTY, FULL, alibiSlope, keyRange, tileClass, type TileClass } from '../../modifiers.js';
import { taskMods, type ForwardArrays } from '../flash.js';
import type { CpuShape } from '../job.js';
import { forwardLayout, forwardModule, type ForwardLayout } from './forward-module.js';
import { copyRows, HEAD_BYTES, instance, reserve, wasmSupport, type Instance } from './instance.js';
import type { ScoreMods } from './score-mod.js';
import { dropoutHook, scoreHook, variantRows, type TileMemory, type VariantRows } from './variants.js';

/** This thread's forward module for (Dp, Br, Bc) and the score modifiers, with its layout and functions. */
interface Forward {
  w: Instance;
  lay: ForwardLayout;
  qk: (rows4: number, cols2: number, kb: number) => void;
  softmax: (rows4: number, cols: number) => void;
  pv: (rows4: number, vb: number) => void;
  load: (rows: number, scale: number) => void;
  store: (rows4: number) => void;
  /** With soft-cap or ALiBi: score-mod.ts's modify. */
  modify?: (rows4: number, cols: number, d0: number, cap: number, slope: number) => void;
}

function forwardInstance(Dp: number, Br: number, Bc: number, mods: ScoreMods): Forward | undefined {
  const lay = forwardLayout(Dp, Br, Bc);
  const w = instance(`forward ${Dp} ${Br} ${Bc} ${mods.softcap} ${mods.alibi}`, (relaxed) => forwardModule(lay, relaxed, mods));
  if (!w) return undefined;
  const e = w.exports as Pick<Forward, 'qk' | 'softmax' | 'pv' | 'load' | 'store' | 'modify'>;
  return { w, lay, qk: e.qk, softmax: e.softmax, pv: e.pv, load: e.load, store: e.store, modify: e.modify };
}

/**
 * The task function of the WebAssembly forward for a job's shape and arrays, or undefined where it
 * cannot run here (no SIMD, or no module could be made): the caller runs flash.ts's then. Tasks go head
 * by head (the query blocks of a head, the last first), and a thread keeps the K and V of the head it
 * last ran in its module's memory (HEAD_BYTES at most: past that, one block at a time), so consecutive
 * tasks of one head copy them once.
 */
export function wasmForward(s: CpuShape, a: ForwardArrays): ((t: number) => void) | undefined {
  if (wasmSupport() === 'none') return undefined;
  const Dp = Math.ceil(s.D / 4) * 4;
  const mods = taskMods(s, a);
  const vr = mods && variantRows(mods, s.Br, s.Bc);
  const fw = forwardInstance(Dp, s.Br, s.Bc, vr?.score ?? { softcap: false, alibi: false });
  if (!fw) return undefined;
  const { lay } = fw;
  const rowBytes = lay.ldq * 8 + lay.ld * 4; // a K row (f64) and a V row (f32)
  const whole = s.Nk * rowBytes <= HEAD_BYTES;
  const window = whole ? s.Nk : s.Bc; // K and V rows the memory holds
  // one K row more: qk reads keys in pairs, so an odd count reads (and masks) the row past the last
  if (!reserve(fw.w, lay.bytes + window * rowBytes + lay.ldq * 8)) return undefined;
  const kv = { held: -1 }; // the key/value head (b · Hkv + hkv) whose K and V are in memory, whole
  return (t) => forwardTaskWasm(s, a, t, fw, whole, window, kv, vr);
}

function forwardTaskWasm(s: CpuShape, a: ForwardArrays, t: number, fw: Forward, whole: boolean, window: number, kv: { held: number }, vr?: VariantRows): void {
  const { H, Hkv, Nq, Nk, D, Br, Bc, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, lse } = a;
  const { lay } = fw;
  const { f32: F, f64: F64, i32: I } = fw.w;
  const { ld, ldq } = lay;
  const Tr = Math.ceil(Nq / Br);
  // Head by head; in each, the query blocks with the most key blocks first.
  const bh = Math.floor(t / Tr);
  const i = Tr - 1 - (t % Tr);
  const b = Math.floor(bh / H);
  const h = bh % H;
  const hkv = Math.floor(h / (H / Hkv));
  const qo = b * s.qBatch + h * s.qHead;
  const ko = b * s.kvBatch + hkv * s.kvHead;
  const r0 = i * Br;
  const rows = Math.min(Br, Nq - r0);
  const rows4 = Math.ceil(rows / 4) * 4;
  const offset = Nk - Nq; // causal: row r sees keys c <= r + offset

  const M = lay.M / 4;
  const L = lay.L / 8;
  const N = lay.N / 4;
  const K = lay.bytes / 8; // K rows (f64) from here, then V rows (f32)
  const V = (lay.bytes + window * ldq * 8) / 4;
  // Q_i's rows to Fq (its columns past D stay 0), then Q_i = their values times the scale in f64 (rows
  // past the block 0), O = 0, l = 0, m = −∞ (load).
  const Fq = lay.Fq / 4;
  for (let r = 0; r < rows; r++) {
    const so = qo + (r0 + r) * qRow;
    F.set(q.subarray(so, so + D), Fq + r * ld);
  }
  fw.load(rows, scale);

  const Tc = Math.ceil(Nk / Bc);
  const lastKey = r0 + rows - 1 + offset;
  let jStart = 0;
  let jEnd = causal ? Math.max(0, Math.min(Tc, Math.floor(lastKey / Bc) + 1)) : Tc;
  if (vr) {
    // The band: key blocks no row of Q_i sees are never visited.
    const [lo, hi] = keyRange(vr.mods.m, r0, r0 + rows, Nq, Nk);
    jStart = Math.floor(lo / Bc);
    jEnd = Math.ceil(hi / Bc);
  }
  const tm: TileMemory | undefined = vr && { F, I, S: lay.S / 4, panel: Bc * 4, N };
  const head = b * Hkv + hkv;
  if (whole && (fw.w.owner !== kv || kv.held !== head)) {
    // the head's K and V, the padding columns (D to Dp) zero
    F64.fill(0, K, K + window * ldq);
    F.fill(0, V, V + window * ld);
    copyRows(F64, K, ldq, k, ko, kvRow, Nk, D);
    copyRows(F, V, ld, v, ko, kvRow, Nk, D);
    kv.held = head;
    fw.w.owner = kv;
  }
  if (!whole) {
    F64.fill(0, K, K + window * ldq);
    F.fill(0, V, V + window * ld);
  }
  for (let j = jStart; j < jEnd; j++) {
    const c0 = j * Bc;
    const cols = Math.min(Bc, Nk - c0);
    let tile: TileClass = FULL;
    if (vr) {
      tile = tileClass(vr.mods.m, b, h, r0, r0 + rows, c0, c0 + cols, Nq, Nk);
      if (tile === EMPTY) continue;
    }
    let at = c0;
    if (!whole) {
      copyRows(F64, K, ldq, k, ko + c0 * kvRow, kvRow, cols, D);
      copyRows(F, V, ld, v, ko + c0 * kvRow, kvRow, cols, D);
      at = 0;
    }
    if (!vr) {
      for (let r = 0; r < rows4; r++) {
        I[N + r] = r >= rows ? 0 : causal ? Math.max(0, Math.min(cols, r0 + r + offset + 1 - c0)) : cols;
      }
    }
    // qk reads K rows up to an even count: past Nk, the row after the head's last (V's first rows, or zero) is read and masked
    fw.qk(rows4, cols + (cols & 1), (K + at * ldq) * 8);
    const ta = vr && { b, h, r0, rows, c0, cols, tile };
    if (vr) {
      fw.modify?.(rows4, cols, r0 + offset - c0, vr.mods.m.softcap ?? 1, vr.score.alibi ? alibiSlope(vr.mods.m, b, h) : 0);
      scoreHook(vr, tm!, ta!, rows4, Nq, Nk);
    }
    fw.softmax(rows4, cols);
    if (vr?.dropout) dropoutHook(vr, tm!, ta!, bh);
    fw.pv(rows4, (V + at * ld) * 4);
  }

  // O_i = O_i / l (store, to Fo), L_i = m + log l (a row that saw no key: O = 0, L = −∞).
  fw.store(rows4);
  const Fo = lay.Fo / 4;
  for (let r = 0; r < rows; r++) {
    const l = F64[L + r];
    out.set(F.subarray(Fo + r * ld, Fo + r * ld + D), qo + (r0 + r) * qRow);
    lse[(b * H + h) * Nq + r0 + r] = l === 0 ? -Infinity : F[M + r] + Math.log(l);
  }
}
