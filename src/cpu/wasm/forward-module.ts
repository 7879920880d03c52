/**
 * The WebAssembly forward kernel of the cpu backend, generated for one padded head dim Dp (a multiple
 * of 4) and tile sizes Br × Bc (multiples of 4): functions over the tiles that forward.ts copies into
 * the module's memory; every address is a loop's pointer plus a constant.
 *
 *   qk(rows4, cols2, kb) Sᵀ = (Q_i K_jᵀ)ᵀ, K_j's rows from byte kb: 4 query rows × 2 keys a time, 8 f64x2
 *                        accumulators along D (Q and K are f64 here: the products of f32 inputs are exact,
 *                        and each score is rounded to f32 once, as flash.ts rounds it, so the backward's
 *                        P = exp(S − L) recomputed from the same f32 S keeps its largest value 1 where
 *                        |S| ~ 1e4), 4 rows' scores stored at once. Sᵀ is kept in panels of 4 rows,
 *                        key-major, so the softmax below runs 4 rows a lane each and pv reads it in order.
 *   softmax(rows4, cols) the online softmax of Algorithm 1, line 9, 4 rows at a time: keys past a row's
 *                        reach (N[r], the causal cut) are masked, new max m, α = e^(m_old − m) (f64, by
 *                        the host's exp), P̃ = exp(S − m) in f32x4 (polynomial), l = α l + rowsum(P̃) (f64).
 *   pv(rows4, vb)        O_i = α O_i + P̃ V_j, V_j's rows from byte vb: 4 rows × 8 columns a time while all
 *                        4 rows see the key, then each row alone up to its N[r] (a masked key's V is never
 *                        read, so a NaN there cannot reach a row that does not see it). The products of
 *                        32 keys are summed in f32, then added to O_i, which is f64.
 *   load(rows, scale)    Q_i = scale · Q_i's f32 rows (copied to Fq), widened to f64, rows past `rows` 0;
 *                        O_i = 0, l = 0, m = −∞: a task's start, 4 columns a step (rather than JavaScript's
 *                        element loop: the same products).
 *   store(rows4)         Fo = O_i / l as f32 (0 where l = 0), each product of f64s rounded to f32 once, as
 *                        JavaScript's store into a Float32Array rounds it: a task's end.
 * With soft-cap or ALiBi (a compile-time parameter), one more function: score-mod.ts's modify, run between
 * qk and softmax.
 * Memory (bytes): Q (Br×ldq f64, the scale folded in) | Sᵀ (Br/4 panels of Bc×4 f32) | O (Br×Dp f64)
 * | m (Br f32) | l (Br f64) | α (Br f64) | N (Br i32) | 16 bytes of scratch | Fq, Fo (Br×ld f32 each) |
 * from `bytes` on, K rows (ldq f64 each) and V rows (ld f32 each) where forward.ts puts them.
 */
import { assemble, f32, f64, Fn, i32, op, simd, v128, type Local } from './asm.js';
import { emitPV, emitQK, expConsts, layoutOf, lanes, splatF32, vexp, zero, type TileGeometry } from './emit.js';
import { scoreModFn, type ScoreMods } from './score-mod.js';

export interface ForwardLayout {
  Dp: number;
  /** Row stride of V (f32) in elements: Dp, or Dp + 4 where Dp·4 bytes is a multiple of 64 (rows a power of two apart share cache sets). */
  ld: number;
  /** Row stride of Q and K (f64) in elements: Dp, or Dp + 2 where Dp·8 bytes is a multiple of 64. */
  ldq: number;
  Br: number;
  Bc: number;
  Q: number;
  S: number;
  O: number;
  M: number;
  L: number;
  A: number;
  N: number;
  T: number;
  /** Q_i's rows as f32 (ld each, the columns past D zero), which load widens into Q. */
  Fq: number;
  /** O_i / l as f32 rows (ld each), which store writes. */
  Fo: number;
  bytes: number;
}

export function forwardLayout(Dp: number, Br: number, Bc: number): ForwardLayout {
  const { ld, ldq, take, at } = layoutOf(Dp);
  const Q = take(Br * ldq * 8);
  const S = take(Bc * Br * 4);
  const O = take(Br * Dp * 8);
  const M = take(Br * 4);
  const L = take(Br * 8);
  const A = take(Br * 8);
  const N = take(Br * 4);
  const T = take(16);
  const Fq = take(Br * ld * 4);
  const Fo = take(Br * ld * 4);
  return { Dp, ld, ldq, Br, Bc, Q, S, O, M, L, A, N, T, Fq, Fo, bytes: at() };
}

/**
 * The module's bytes: `relaxed` uses f32x4.relaxed_madd for pv's products, else mul then add; `mods`, the
 * score modifiers that add the function modify (none: the plain module).
 */
export function forwardModule(lay: ForwardLayout, relaxed: boolean, mods?: ScoreMods): Uint8Array {
  const { Br, Bc } = lay;
  const g: TileGeometry = { Dp: lay.Dp, rowQB: lay.ldq * 8, rowB: lay.ld * 4, panelB: Bc * 16 };

  // ---- qk(rows4, cols2, kb) ----
  const qk = new Fn('qk', [i32, i32, i32], []);
  emitQK(qk, g, { Q: lay.Q, S: lay.S }, ...(qk.params as [Local, Local, Local]));

  // ---- softmax(rows4, cols) ----
  const sm = new Fn('softmax', [i32, i32], []);
  {
    const f = sm;
    const [rows4, cols] = f.params;
    const r = f.local(i32); // row index
    const c = f.local(i32); // key index
    const sa = f.local(i32);
    const common = f.local(i32); // keys all 4 rows see
    const t = f.local(i32);
    const nv = f.local(v128);
    const mx = f.local(v128);
    const mx2 = f.local(v128);
    const nan = f.local(v128);
    const s = f.local(v128);
    const x = f.local(v128);
    const xc = f.local(v128);
    const nn = f.local(v128);
    const rr = f.local(v128);
    const sum0 = f.local(v128);
    const sum1 = f.local(v128);
    const mo = f.local(f32);
    const mn = f.local(f32);
    const ninf = f.local(v128);
    splatF32(f, -Infinity).set(ninf);
    const k = expConsts(f);
    /** Pushes the mask of lanes whose row sees key c (c < N[row]). */
    const sees = () => f.get(nv).get(c).simd(simd.i32x4_splat).simd(simd.i32x4_gt_s);
    /** Sets nv to N of the 4 rows and common to their least. */
    const loadN = () => {
      f.get(r).i32(2).op(op.i32shl).memSimd(simd.load, lay.N, 4).set(nv);
      f.get(nv).simd(0x1b /* i32x4.extract_lane */, 0).set(common);
      for (let i = 1; i < 4; i++) {
        f.get(nv).simd(0x1b, i).set(t);
        f.get(t).get(common).get(t).get(common).op(op.i32lt_s).op(op.select).set(common);
      }
    };
    /** body(masked) for keys [0, common) unmasked, then [common, cols) masked. */
    const keys = (body: (masked: boolean) => void) => {
      f.for(c, () => f.i32(0), () => f.get(common), 1, () => body(false));
      f.for(c, () => f.get(common), () => f.get(cols), 1, () => body(true));
    };
    f.for(r, () => f.i32(0), () => f.get(rows4), 4, () => {
      loadN();
      f.get(r).i32(2).op(op.i32shl).memSimd(simd.load, lay.M, 4).set(mx);
      zero(f, nan);
      // the new running max over the keys each row sees (a NaN among them kept aside: pmax drops it); over
      // the keys all 4 rows see, even keys into mx and odd ones into mx2, two chains of pmax, not one (the
      // same maximum: the order can only change which of equal zeros is kept, and exp(S − m) and m + log l
      // do not see a zero's sign)
      const maxOf = (at: number, into: Local, masked: boolean) => {
        f.get(r).i32(Bc * 4).op(op.i32mul).get(c).i32(4).op(op.i32shl).op(op.i32add).memSimd(simd.load, lay.S + at, 4);
        if (masked) {
          f.get(ninf);
          sees();
          f.simd(simd.v128_bitselect);
        }
        f.tee(s).get(s).simd(simd.f32x4_ne).get(nan).simd(simd.v128_or).set(nan);
        f.get(into).get(s).simd(simd.f32x4_pmax).set(into);
      };
      f.get(mx).set(mx2);
      f.for(c, () => f.i32(0), () => f.get(common).i32(1).op(op.i32sub), 2, () => {
        maxOf(0, mx, false);
        maxOf(16, mx2, false);
      });
      f.get(mx).get(mx2).simd(simd.f32x4_pmax).set(mx);
      f.for(c, () => f.get(common).i32(-2).op(0x71 /* i32.and */), () => f.get(common), 1, () => maxOf(0, mx, false));
      f.for(c, () => f.get(common), () => f.get(cols), 1, () => maxOf(0, mx, true));
      f.i32(0);
      splatF32(f, NaN);
      f.get(mx).get(nan).simd(simd.v128_bitselect).memSimd(simd.store, lay.T, 4);
      // per row: α = e^(m_old − m) (1 and no keys for a row that sees nothing yet), m = m_new
      for (let i = 0; i < 4; i++) {
        f.get(r).i32(2).op(op.i32shl).mem(op.f32load, lay.M + 4 * i, 2).set(mo);
        f.i32(0).mem(op.f32load, lay.T + 4 * i, 2).tee(mn);
        f.f32(-Infinity).op(op.f32eq);
        f.if(
          () => {
            f.get(r).i32(3).op(op.i32shl).f64(1).mem(op.f64store, lay.A + 8 * i, 3);
            f.get(r).i32(2).op(op.i32shl).i32(0).mem(op.i32store, lay.N + 4 * i, 2);
          },
          () => {
            f.get(r).i32(3).op(op.i32shl);
            f.get(mo).op(op.f64promote).get(mn).op(op.f64promote).op(op.f64sub).op(op.call, 0);
            f.mem(op.f64store, lay.A + 8 * i, 3);
            f.get(r).i32(2).op(op.i32shl).get(mn).mem(op.f32store, lay.M + 4 * i, 2);
          },
        );
      }
      loadN();
      f.get(r).i32(2).op(op.i32shl).memSimd(simd.load, lay.M, 4).set(mx);
      zero(f, sum0);
      zero(f, sum1);
      // P̃ = exp(S − m) where the row sees the key, else 0; rowsum in f64
      keys((masked) => {
        f.get(r).i32(Bc * 4).op(op.i32mul).get(c).i32(4).op(op.i32shl).op(op.i32add).tee(sa);
        f.memSimd(simd.load, lay.S, 4).get(mx).simd(simd.f32x4_sub).set(x);
        f.get(sa);
        vexp(f, k, x, xc, nn, rr);
        if (masked) {
          sees();
          f.simd(simd.v128_and);
        }
        f.tee(s);
        f.memSimd(simd.store, lay.S, 4);
        f.get(sum0).get(s).simd(simd.f64x2_promote_low_f32x4).simd(simd.f64x2_add).set(sum0);
        f.get(sum1).get(s).get(s).simd(simd.shuffle, ...lanes(2, 3, 0, 1)).simd(simd.f64x2_promote_low_f32x4).simd(simd.f64x2_add).set(sum1);
      });
      // l = α l + rowsum
      for (let i = 0; i < 4; i++) {
        f.get(r).i32(3).op(op.i32shl);
        f.get(r).i32(3).op(op.i32shl).mem(op.f64load, lay.A + 8 * i, 3);
        f.get(r).i32(3).op(op.i32shl).mem(op.f64load, lay.L + 8 * i, 3);
        f.op(op.f64mul);
        f.get(i < 2 ? sum0 : sum1).simd(simd.f64x2_extract_lane, i % 2);
        f.op(op.f64add).mem(op.f64store, lay.L + 8 * i, 3);
      }
    });
  }

  // ---- pv(rows4, vb) ----
  const pv = new Fn('pv', [i32, i32], []);
  emitPV(pv, g, { S: lay.S, O: lay.O, N: lay.N, alpha: lay.A }, relaxed, ...(pv.params as [Local, Local]));

  // ---- load(rows, scale): Q_i = scale · (f32 rows at Fq) in f64, rows past `rows` 0; O = 0, l = 0, m = −∞ ----
  const load = new Fn('load', [i32, f64], []);
  {
    const f = load;
    const [rows, scale] = f.params;
    const r = f.local(i32); // byte offset of row r in Fq
    const x = f.local(i32); // byte offset of a column in the row
    const qa = f.local(i32);
    const sc = f.local(v128);
    const v = f.local(v128);
    const z = f.local(v128);
    f.get(scale).simd(simd.f64x2_splat).set(sc);
    zero(f, z);
    const fq = lay.ld * 4;
    // Q row r (ldq f64 from byte Q + r·ldq·8) from Fq row r (ld f32): 4 columns a step, each widened then scaled
    f.for(r, () => f.i32(0), () => f.get(rows).i32(fq).op(op.i32mul), fq, () => {
      f.get(r).i32(fq).op(0x6d /* i32.div_s */).i32(lay.ldq * 8).op(op.i32mul).set(qa);
      f.for(x, () => f.i32(0), () => f.i32(lay.Dp * 4), 16, () => {
        f.get(r).get(x).op(op.i32add).memSimd(simd.load, lay.Fq, 4).set(v);
        f.get(qa).get(x).i32(1).op(op.i32shl).op(op.i32add);
        f.get(v).simd(simd.f64x2_promote_low_f32x4).get(sc).simd(simd.f64x2_mul).memSimd(simd.store, lay.Q, 3);
        f.get(qa).get(x).i32(1).op(op.i32shl).op(op.i32add);
        f.get(v).get(v).simd(simd.shuffle, ...lanes(2, 3, 0, 1)).simd(simd.f64x2_promote_low_f32x4).get(sc).simd(simd.f64x2_mul).memSimd(simd.store, lay.Q + 16, 3);
      });
    });
    // rows past `rows`, to Br: Q = 0 (qk reads them in groups of 4)
    f.for(qa, () => f.get(rows).i32(lay.ldq * 8).op(op.i32mul), () => f.i32(Br * lay.ldq * 8), 16, () => f.get(qa).get(z).memSimd(simd.store, lay.Q, 3));
    f.for(qa, () => f.i32(0), () => f.i32(Br * lay.Dp * 8), 16, () => f.get(qa).get(z).memSimd(simd.store, lay.O, 3));
    f.for(qa, () => f.i32(0), () => f.i32(Br * 8), 16, () => f.get(qa).get(z).memSimd(simd.store, lay.L, 3));
    splatF32(f, -Infinity).set(v);
    f.for(qa, () => f.i32(0), () => f.i32(Br * 4), 16, () => f.get(qa).get(v).memSimd(simd.store, lay.M, 2));
  }

  // ---- store(rows4): f32 rows at Fo = O_i / l (0 where l = 0), each product in f64 rounded to f32 once ----
  const store = new Fn('store', [i32], []);
  {
    const f = store;
    const [rows4] = f.params;
    const r = f.local(i32); // row index
    const x = f.local(i32); // byte offset of 2 f64 columns in O's row
    const oa = f.local(i32);
    const fa = f.local(i32);
    const l = f.local(f64);
    const inv = f.local(v128);
    f.for(r, () => f.i32(0), () => f.get(rows4), 1, () => {
      f.get(r).i32(3).op(op.i32shl).mem(op.f64load, lay.L, 3).tee(l);
      f.f64(0).op(op.f64eq);
      f.if(
        () => {
          f.f64(0).simd(simd.f64x2_splat).set(inv);
        },
        () => {
          f.f64(1).get(l).op(0xa3 /* f64.div */).simd(simd.f64x2_splat).set(inv);
        },
      );
      f.get(r).i32(lay.Dp * 8).op(op.i32mul).set(oa);
      f.get(r).i32(lay.ld * 4).op(op.i32mul).set(fa);
      f.for(x, () => f.i32(0), () => f.i32(lay.Dp * 8), 32, () => {
        f.get(fa).get(x).i32(1).op(0x76 /* i32.shr_u */).op(op.i32add);
        f.get(oa).get(x).op(op.i32add).memSimd(simd.load, lay.O, 3).get(inv).simd(simd.f64x2_mul).simd(simd.f32x4_demote_f64x2_zero);
        f.get(oa).get(x).op(op.i32add).memSimd(simd.load, lay.O + 16, 3).get(inv).simd(simd.f64x2_mul).simd(simd.f32x4_demote_f64x2_zero);
        f.simd(simd.shuffle, ...lanes(0, 1, 4, 5));
        f.memSimd(simd.store, lay.Fo, 4);
      });
    });
  }

  const fns = [qk, sm, pv, load, store];
  if (mods && (mods.softcap || mods.alibi)) fns.push(scoreModFn(mods, lay.S, Bc * 16));
  const pages = Math.ceil(lay.bytes / 65536);
  return assemble([{ module: 'm', field: 'exp', params: [f64], results: [f64] }], fns, pages);
}

/** A module with one relaxed-SIMD instruction, to ask the runtime whether it has relaxed SIMD. */
export function relaxedProbe(): Uint8Array {
  const f = new Fn('probe', [], [v128]);
  splatF32(f, 1);
  splatF32(f, 2);
  splatF32(f, 3);
  f.simd(simd.f32x4_relaxed_madd);
  return assemble([], [f], 1);
}

/** A module with one SIMD instruction, to ask the runtime whether it has SIMD at all. */
export function simdProbe(): Uint8Array {
  const f = new Fn('probe', [], [v128]);
  splatF32(f, 1);
  splatF32(f, 2);
  f.simd(simd.f32x4_add);
  return assemble([], [f], 1);
}
