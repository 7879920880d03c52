/**
 * The WebAssembly backward kernel of the cpu backend (FlashAttention-2's Algorithm 2 over one tile of
 * Br query rows × Bc keys), generated for one padded head dim Dp (a multiple of 4) and tile sizes Br × Bc
 * (multiples of 4). backward.ts copies K_j, V_j and the query rows into the module's memory and calls, per
 * tile, in this order:
 *
 *   scores(rows4, cols2, kb, qb) Sᵀ = (Q_i K_jᵀ)ᵀ from f64 rows (Q times the scale), each score rounded to
 *                        f32 once: the forward's own S (emit.ts's emitQK), so P's largest value stays 1.
 *   dp(rows4, cols2, vb, ob, db) (dP − D)ᵀ the same way from f64 rows of dO_i and V_j, each row's D
 *                        (f64) subtracted before the rounding: where P is one-hot, dP and D agree to the
 *                        last bits and their difference is small; an f32 dP would leave its rounding there.
 *   ds(rows4, cols, lb, scale)   P = exp(S − L) and dS = scale · P ∘ (dP − D) (Alg. 2 lines 11, 14), in
 *                        place of Sᵀ and (dP − D)ᵀ; both 0 at keys a row does not see (c ≥ N[r]).
 *   dq(rows4, kb, qb)            dQ_i += dS K_j (line 15): emit.ts's emitPV over f32 K rows into f64 rows.
 *   atb(rows, cols, pb, xb, ob)  Y_c += Σ_r A[r][c] X_r (lines 12, 16: dV_j += Pᵀ dO_i, dK_j += dSᵀ Q_i):
 *                        4 keys × 8 columns a time, over the rows at the end that see all 4 keys untested,
 *                        the rows before them with each key tested, so a pair (r, c) that row r does not
 *                        see is never multiplied (a NaN in Q_r or dO_r reaches only the keys r sees). Sums
 *                        of CHUNK rows in f32, then added to Y in f64.
 *   atbExact(…)          the same with every product and sum in f64 (a product of two f32 values is exact
 *                        there), for dV_j += Pᵀ dO_i: where few keys share the rows' probability (P near 1,
 *                        as with one key, or a key every row attends to), dV_j sums many rows' dO_i of the
 *                        same sign of weight, and f32 sums of CHUNK rows made dV's error 2.5–4.4 times the
 *                        standard attention's (Nk = 1, 72 to 4096 rows), past the error rule's 3; in f64 it
 *                        is the standard's. dK_j keeps atb: dS sums to zero over a row's keys, and its own
 *                        error (dP − D) is far above the f32 sums'. The backward took about 20 % more CPU time.
 * With soft-cap or ALiBi (a compile-time parameter), a sixth function: score-mod.ts's modify, run between
 * scores and ds, which with the soft-cap keeps its derivative in panels of its own (dcap).
 * Scores, P, dP − D and dS are f32 in Sᵀ panels (4 rows of one key in one f32x4, key-major, as the forward's);
 * dQ, dK_j and dV_j accumulate in f64.
 * Memory (bytes): Sᵀ/P (Br/4 panels of Bc×4 f32 and 64 bytes) | dPᵀ/dS (the same) | dK_j, dV_j (Bc×Dp f64 each) |
 * N (Br i32) | from `bytes` on, rows where backward.ts puts them: K_j (f64 and f32), V_j (f64 and f32), and for
 * the query rows Q (f64, times the scale, and f32), dO (f64 and f32), dQ (f64), L (f32) and D (f64).
 */
import { assemble, f32, Fn, i32, op, simd, v128, type Local } from './asm.js';
import { addToF64, CHUNK, emitPV, emitQK, expConsts, lanes, layoutOf, madd, vexp, zero, type TileGeometry } from './emit.js';
import { scoreModFn, type ScoreMods } from './score-mod.js';

/** atbExact's run of rows: all of them at once (a tile has far fewer). */
const MAX_ROWS = 1 << 20;

export interface BackwardLayout {
  Dp: number;
  /** Row strides of the f32 and the f64 rows in elements (emit.ts's layoutOf). */
  ld: number;
  ldq: number;
  Br: number;
  Bc: number;
  /** Bytes from one Sᵀ panel to the next: Bc·16 and a cache line, so that the panels atb walks down do not share cache sets. */
  panelB: number;
  S: number;
  dP: number;
  dK: number;
  dV: number;
  N: number;
  /** With the soft-cap: its derivative's panels (as Sᵀ's), else -1. */
  dcap: number;
  bytes: number;
}

export function backwardLayout(Dp: number, Br: number, Bc: number, softcap = false): BackwardLayout {
  const { ld, ldq, take, at } = layoutOf(Dp);
  const panelB = Bc * 16 + 64;
  const S = take((Br / 4) * panelB);
  const dP = take((Br / 4) * panelB);
  const dK = take(Bc * Dp * 8);
  const dV = take(Bc * Dp * 8);
  const N = take(Br * 4);
  const dcap = softcap ? take((Br / 4) * panelB) : -1;
  return { Dp, ld, ldq, Br, Bc, panelB, S, dP, dK, dV, N, dcap, bytes: at() };
}

/** block { loop { if any of exits() break; body(); continue } }: each exit pushes an i32. */
function until(f: Fn, exits: (() => void)[], body: () => void): void {
  f.op(0x02, 0x40, 0x03, 0x40);
  for (const exit of exits) {
    exit();
    f.op(0x0d, 1); // br_if 1: out of the block
  }
  body();
  f.op(0x0c, 0, 0x0b, 0x0b); // br 0: again; end loop, end block
}

/**
 * The module's bytes: `relaxed` uses f32x4.relaxed_madd for the f32 products, else mul then add; `mods`,
 * the score modifiers that add the function modify (none: the plain module; the soft-cap needs a layout
 * with dcap).
 */
export function backwardModule(lay: BackwardLayout, relaxed: boolean, mods?: ScoreMods): Uint8Array {
  const { Dp, Bc, panelB } = lay;
  const rowB = lay.ld * 4; // bytes from one f32 row to the next
  const g: TileGeometry = { Dp, rowQB: lay.ldq * 8, rowB, panelB };

  // ---- scores(rows4, cols2, kb, qb) ----
  const scores = new Fn('scores', [i32, i32, i32, i32], []);
  emitQK(scores, g, { Q: 0, S: lay.S }, ...(scores.params as [Local, Local, Local, Local]));

  // ---- dp(rows4, cols2, vb, ob, db) ----
  const dp = new Fn('dp', [i32, i32, i32, i32, i32], []);
  {
    const [rows4, cols2, vb, ob, db] = dp.params;
    emitQK(dp, g, { Q: 0, S: lay.dP }, rows4, cols2, vb, ob, db);
  }

  // ---- ds(rows4, cols, lb, scale) ----
  const ds = new Fn('ds', [i32, i32, i32, f32], []);
  {
    const f = ds;
    const [rows4, cols, lb, scale] = f.params;
    const r = f.local(i32);
    const c = f.local(i32);
    const pa = f.local(i32);
    const nv = f.local(v128);
    const lv = f.local(v128);
    const sc = f.local(v128);
    const seen = f.local(v128);
    const p = f.local(v128);
    const x = f.local(v128);
    const xc = f.local(v128);
    const nn = f.local(v128);
    const rr = f.local(v128);
    const k = expConsts(f);
    f.get(scale).simd(simd.f32x4_splat).set(sc);
    f.for(r, () => f.i32(0), () => f.get(rows4), 4, () => {
      f.get(r).i32(2).op(op.i32shl).memSimd(simd.load, lay.N, 4).set(nv);
      f.get(r).i32(2).op(op.i32shl).get(lb).op(op.i32add).memSimd(simd.load, 0, 2).set(lv);
      f.for(c, () => f.i32(0), () => f.get(cols), 1, () => {
        f.get(r).i32(2).op(0x76).i32(panelB).op(op.i32mul).get(c).i32(4).op(op.i32shl).op(op.i32add).set(pa);
        f.get(nv).get(c).simd(simd.i32x4_splat).simd(simd.i32x4_gt_s).set(seen);
        // Alg. 2 line 11: P = exp(S − L), 0 where the row does not see the key
        f.get(pa).memSimd(simd.load, lay.S, 4).get(lv).simd(simd.f32x4_sub).set(x);
        f.get(pa);
        vexp(f, k, x, xc, nn, rr);
        f.get(seen).simd(simd.v128_and).tee(p);
        f.memSimd(simd.store, lay.S, 4);
        // line 14: dS = scale · P ∘ (dP − D)
        f.get(pa);
        f.get(sc).get(p).get(pa).memSimd(simd.load, lay.dP, 4).simd(simd.f32x4_mul).simd(simd.f32x4_mul);
        f.get(seen).simd(simd.v128_and);
        f.memSimd(simd.store, lay.dP, 4);
      });
    });
  }

  // ---- dq(rows4, kb, qb) ----
  const dq = new Fn('dq', [i32, i32, i32], []);
  emitPV(dq, g, { S: lay.dP, O: 0, N: lay.N }, relaxed, dq.params[0], dq.params[1], dq.params[2]);

  // ---- atb(rows, cols, pb, xb, ob), and atbExact: its sums in f64 ----
  const atbFn = (name: string, exact: boolean): Fn => {
    const f = new Fn(name, [i32, i32, i32, i32, i32], []);
    const [rows, cols, pb, xb, ob] = f.params;
    const c = f.local(i32); // first key of the block of 4
    const rLo = f.local(i32); // rows before it see no key of the block
    const rFull = f.local(i32); // rows from it on see all 4
    const xo = f.local(i32); // byte offset of the column chunk in an f32 row
    const r = f.local(i32);
    const cs = f.local(i32);
    const end = f.local(i32);
    const n = f.local(i32);
    const pa = f.local(i32);
    const xa = f.local(i32);
    const ya = f.local(i32);
    // f32: acc[2k + j], key k, columns 4j..4j+3; exact: acc[4k + 2j + h], key k, columns 4j + 2h and 4j + 2h + 1 in f64
    const acc = Array.from({ length: exact ? 16 : 8 }, () => f.local(v128));
    const xv = Array.from({ length: 2 }, () => f.local(v128));
    const xd = exact ? Array.from({ length: 4 }, () => f.local(v128)) : []; // X_r's columns in f64, two a vector
    const sp = f.local(v128);
    const accs = (w: number) => (exact ? Array.from({ length: 4 }, (_, k) => acc.slice(4 * k, 4 * k + 2 * w)).flat() : Array.from({ length: 4 }, (_, k) => acc.slice(2 * k, 2 * k + w)).flat());
    const nAt = (row: () => void) => {
      row();
      f.i32(2).op(op.i32shl).mem(op.i32load, lay.N, 2);
    };
    /** acc[key k] += A[r][c + k] X_r (w vectors). */
    const term = (k: number, w: number) => {
      if (!exact) {
        f.get(pa).memSimd(simd.load32_splat, 16 * k, 2).set(sp);
        for (let j = 0; j < w; j++) madd(f, relaxed, acc[2 * k + j], () => f.get(sp), () => f.get(xv[j]));
        return;
      }
      // The product of two f32 values is exact in f64.
      f.get(pa).memSimd(simd.load32_splat, 16 * k, 2).simd(simd.f64x2_promote_low_f32x4).set(sp);
      for (let j = 0; j < 2 * w; j++) f.get(acc[4 * k + j]).get(sp).get(xd[j]).simd(simd.f64x2_mul).simd(simd.f64x2_add).set(acc[4 * k + j]);
    };
    const loadX = (w: number) => {
      for (let j = 0; j < w; j++) {
        f.get(xa).memSimd(simd.load, 16 * j, 2).set(xv[j]);
        if (!exact) continue;
        f.get(xv[j]).simd(simd.f64x2_promote_low_f32x4).set(xd[2 * j]);
        f.get(xv[j]).get(xv[j]).simd(simd.shuffle, ...lanes(2, 3, 0, 1)).simd(simd.f64x2_promote_low_f32x4).set(xd[2 * j + 1]);
      }
    };
    /** Y rows c..c+3 (f64) += the accumulators, at column chunk xo. */
    const flush = (w: number) => {
      f.get(c).i32(Dp * 8).op(op.i32mul).get(xo).i32(1).op(op.i32shl).op(op.i32add).get(ob).op(op.i32add).set(ya);
      for (let k = 0; k < 4; k++) {
        for (let j = 0; j < w; j++) {
          if (!exact) {
            addToF64(f, ya, k * Dp * 8 + j * 32, acc[2 * k + j]);
            continue;
          }
          for (let h = 0; h < 2; h++) {
            const off = k * Dp * 8 + j * 32 + h * 16;
            f.get(ya).get(ya).memSimd(simd.load, off, 4).get(acc[4 * k + 2 * j + h]).simd(simd.f64x2_add).memSimd(simd.store, off, 4);
          }
        }
      }
    };
    /** Rows [from, to) in runs of `chunk` (f32 sums: CHUNK; exact: all of them), each row's keys tested or (all) not. */
    const runs = exact ? MAX_ROWS : CHUNK;
    const range = (w: number, from: Local, to: Local, all: boolean) => {
      f.for(cs, () => f.get(from), () => f.get(to), runs, () => {
        for (const a of accs(w)) zero(f, a);
        f.get(cs).i32(runs).op(op.i32add).tee(end).get(to).get(end).get(to).op(op.i32lt_s).op(op.select).set(end);
        // (A unrolled over 4 rows with constant offsets, this loop ran 1.7× slower: V8, Node 20.)
        f.for(r, () => f.get(cs), () => f.get(end), 1, () => {
          const row = () => {
            // pa: A's entry of (key c, row r); xa: X_r at column chunk xo
            f.get(r).i32(2).op(0x76 /* i32.shr_u */).i32(panelB).op(op.i32mul).get(c).i32(4).op(op.i32shl).op(op.i32add);
            f.get(r).i32(3).op(0x71 /* i32.and */).i32(2).op(op.i32shl).op(op.i32add).get(pb).op(op.i32add).set(pa);
            f.get(r).i32(rowB).op(op.i32mul).get(xb).op(op.i32add).get(xo).op(op.i32add).set(xa);
            loadX(w);
          };
          if (all) {
            row();
            for (let k = 0; k < 4; k++) term(k, w);
            return;
          }
          // n: the keys of the block row r sees (N[r] − c); key k only where n > k
          nAt(() => f.get(r));
          f.get(c).op(op.i32sub).tee(n).i32(0).op(op.i32gt_s);
          f.if(() => {
            row();
            const key = (k: number) => {
              term(k, w);
              if (k < 3) f.get(n).i32(k + 1).op(op.i32gt_s).if(() => key(k + 1));
            };
            key(0);
          });
        });
        flush(w);
      });
    };
    const chunk = (w: number) => {
      range(w, rLo, rFull, false);
      range(w, rFull, rows, true);
    };
    f.for(c, () => f.i32(0), () => f.get(cols), 4, () => {
      // rFull: the start of the rows at the end that see all of keys c..c+3; rLo: the first row that sees one
      f.get(rows).set(rFull);
      until(f, [
        () => f.get(rFull).op(op.i32eqz),
        () => {
          nAt(() => f.get(rFull).i32(1).op(op.i32sub));
          f.get(c).i32(4).op(op.i32add).op(op.i32lt_s);
        },
      ], () => f.get(rFull).i32(1).op(op.i32sub).set(rFull));
      f.i32(0).set(rLo);
      until(f, [
        () => f.get(rLo).get(rFull).op(op.i32ge_s),
        () => {
          nAt(() => f.get(rLo));
          f.get(c).op(op.i32gt_s);
        },
      ], () => f.get(rLo).i32(1).op(op.i32add).set(rLo));
      const full = Math.floor(Dp / 8);
      if (full > 0) f.for(xo, () => f.i32(0), () => f.i32(full * 32), 32, () => chunk(2));
      if (Dp % 8 === 4) {
        f.i32(full * 32).set(xo);
        chunk(1);
      }
    });
    return f;
  };
  const atb = atbFn('atb', false);
  const atbExact = atbFn('atbExact', true);

  const fns = [scores, dp, ds, dq, atb, atbExact];
  if (mods && (mods.softcap || mods.alibi)) {
    if (mods.softcap && lay.dcap < 0) throw new Error('backwardModule: the soft-cap needs a layout with dcap (backwardLayout(..., true))');
    fns.push(scoreModFn(mods, lay.S, panelB, mods.softcap ? lay.dcap : undefined));
  }
  const pages = Math.ceil(lay.bytes / 65536);
  return assemble([], fns, pages);
}
