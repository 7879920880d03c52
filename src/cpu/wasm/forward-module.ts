/**
 * The WebAssembly forward kernel of the cpu backend, generated for one padded head dim Dp (a multiple
 * of 4) and tile sizes Br × Bc (multiples of 4): three functions over the tiles that forward.ts copies
 * into the module's memory; every address is a loop's pointer plus a constant.
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
 * Memory (bytes): Q (Br×ldq f64, the scale folded in) | Sᵀ (Br/4 panels of Bc×4 f32) | O (Br×Dp f64)
 * | m (Br f32) | l (Br f64) | α (Br f64) | N (Br i32) | 16 bytes of scratch | from `bytes` on, K rows
 * (ldq f64 each) and V rows (ld f32 each) where forward.ts puts them.
 */
import { assemble, f32, f64, Fn, i32, op, simd, v128, type Local } from './asm.js';

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
  bytes: number;
}

export function forwardLayout(Dp: number, Br: number, Bc: number): ForwardLayout {
  let at = 0;
  const take = (bytes: number) => {
    const o = at;
    at += Math.ceil(bytes / 16) * 16;
    return o;
  };
  const ld = Dp % 16 === 0 ? Dp + 4 : Dp;
  const ldq = Dp % 8 === 0 ? Dp + 2 : Dp;
  const Q = take(Br * ldq * 8);
  const S = take(Bc * Br * 4);
  const O = take(Br * Dp * 8);
  const M = take(Br * 4);
  const L = take(Br * 8);
  const A = take(Br * 8);
  const N = take(Br * 4);
  const T = take(16);
  return { Dp, ld, ldq, Br, Bc, Q, S, O, M, L, A, N, T, bytes: at };
}

/** The byte indices of an i8x16.shuffle that picks f32 lanes (0-3 of the first operand, 4-7 of the second). */
function lanes(...l: number[]): number[] {
  return l.flatMap((x) => [4 * x, 4 * x + 1, 4 * x + 2, 4 * x + 3]);
}

const v128Const = (f: Fn, bytes: Uint8Array) => f.simd(0x0c, ...bytes);
const splatF32 = (f: Fn, x: number) => v128Const(f, new Uint8Array(new Float32Array([x, x, x, x]).buffer));

/** The module's bytes: `relaxed` uses f32x4.relaxed_madd for pv's products, else mul then add. */
export function forwardModule(lay: ForwardLayout, relaxed: boolean): Uint8Array {
  const { Dp, Bc } = lay;
  const rowB = lay.ld * 4; // bytes from one V row to the next
  const rowQB = lay.ldq * 8; // bytes from one Q or K row to the next
  const panelB = Bc * 16; // bytes of a panel of Sᵀ: 4 rows × Bc keys, key-major

  /** acc += a * b (f32x4). */
  const madd = (f: Fn, acc: Local, a: () => void, b: () => void) => {
    if (relaxed) {
      a();
      b();
      f.get(acc).simd(simd.f32x4_relaxed_madd).set(acc);
    } else {
      f.get(acc);
      a();
      b();
      f.simd(simd.f32x4_mul).simd(simd.f32x4_add).set(acc);
    }
  };
  /** pv sums the products of this many keys in f32 before adding them to O in f64. */
  const CHUNK = 32;
  const zero = (f: Fn, l: Local) => {
    splatF32(f, 0).set(l);
  };

  // ---- qk(rows4, cols2, kb) ----
  const qk = new Fn('qk', [i32, i32, i32], []);
  {
    const f = qk;
    const [rows4, cols2, kb] = f.params;
    const r = f.local(i32); // byte offset of row r in Q
    const c = f.local(i32); // byte address of key c
    const x = f.local(i32);
    const qa = f.local(i32);
    const ka = f.local(i32);
    const sa = f.local(i32);
    const acc = Array.from({ length: 8 }, () => f.local(v128)); // acc[2i + j]: row i, key j (f64x2)
    const qv = Array.from({ length: 4 }, () => f.local(v128));
    const kv = Array.from({ length: 2 }, () => f.local(v128));
    const t0 = f.local(v128);
    const t1 = f.local(v128);
    f.for(r, () => f.i32(0), () => f.get(rows4).i32(rowQB).op(op.i32mul), 4 * rowQB, () => {
      f.for(c, () => f.get(kb), () => f.get(kb).get(cols2).i32(rowQB).op(op.i32mul).op(op.i32add), 2 * rowQB, () => {
        for (const a of acc) zero(f, a);
        f.for(x, () => f.i32(0), () => f.i32(Dp * 8), 16, () => {
          f.get(r).get(x).op(op.i32add).set(qa);
          f.get(c).get(x).op(op.i32add).set(ka);
          for (let i = 0; i < 4; i++) f.get(qa).memSimd(simd.load, lay.Q + i * rowQB, 4).set(qv[i]);
          for (let j = 0; j < 2; j++) f.get(ka).memSimd(simd.load, j * rowQB, 4).set(kv[j]);
          for (let i = 0; i < 4; i++) {
            for (let j = 0; j < 2; j++) {
              f.get(acc[2 * i + j]).get(qv[i]).get(kv[j]).simd(simd.f64x2_mul).simd(simd.f64x2_add).set(acc[2 * i + j]);
            }
          }
        });
        // Sᵀ address of (key c, rows r..r+3): panel r / 4, key c
        f.get(r).i32(4 * rowQB).op(0x6d /* i32.div_s */).i32(panelB).op(op.i32mul);
        f.get(c).get(kb).op(op.i32sub).i32(rowQB).op(0x6d).i32(16).op(op.i32mul).op(op.i32add).set(sa);
        for (let j = 0; j < 2; j++) {
          // [Σ row 0, Σ row 1] and [Σ row 2, Σ row 3] for key j in f64, each rounded to f32 once
          const [a, b, cc, d] = [acc[j], acc[2 + j], acc[4 + j], acc[6 + j]];
          f.get(a).get(b).simd(simd.shuffle, ...lanes(0, 1, 4, 5)).get(a).get(b).simd(simd.shuffle, ...lanes(2, 3, 6, 7)).simd(simd.f64x2_add);
          f.simd(simd.f32x4_demote_f64x2_zero).set(t0);
          f.get(cc).get(d).simd(simd.shuffle, ...lanes(0, 1, 4, 5)).get(cc).get(d).simd(simd.shuffle, ...lanes(2, 3, 6, 7)).simd(simd.f64x2_add);
          f.simd(simd.f32x4_demote_f64x2_zero).set(t1);
          f.get(sa);
          f.get(t0).get(t1).simd(simd.shuffle, ...lanes(0, 1, 4, 5));
          f.memSimd(simd.store, lay.S + j * 16, 4);
        }
      });
    });
  }

  /** exp's constants, each an f32x4 splat: the polynomial's coefficients, highest first, then 1. */
  const POLY = [1.987569150e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
  /** 1.5·2^23: x + MAGIC rounds x to an integer n held in the low bits of the sum (|n| < 2^22). */
  const MAGIC = 12582912;
  const MAGIC_BITS = 0x4b400000;
  const EXP_CONSTS = { lo: -87.5, log2e: Math.LOG2E, magic: MAGIC, c1: 0.693359375, c2: -2.12194440e-4, one: 1 };

  /** Locals holding exp's constants, set at the start of f (loops then read registers, not constants). */
  const expConsts = (f: Fn) => {
    const k = Object.fromEntries(Object.keys(EXP_CONSTS).map((name) => [name, f.local(v128)])) as Record<keyof typeof EXP_CONSTS, Local>;
    for (const [name, x] of Object.entries(EXP_CONSTS)) splatF32(f, x).set(k[name as keyof typeof EXP_CONSTS]);
    const poly = POLY.map((x) => {
      const l = f.local(v128);
      splatF32(f, x).set(l);
      return l;
    });
    const bias = f.local(v128); // bits of MAGIC less the exponent bias
    f.i32(MAGIC_BITS - 127).simd(simd.i32x4_splat).set(bias);
    return { ...k, poly, bias };
  };

  /**
   * Pushes exp(x) of the f32x4 in local x (x ≤ 0, −∞ or NaN): Cephes' expf (n = round(x log2 e),
   * r = x − n ln 2 in two parts, a degree-7 polynomial, times 2^n through the exponent bits); 0 below −87.5,
   * NaN for NaN. pmax (one instruction) keeps a NaN x as it is.
   */
  const vexp = (f: Fn, k: ReturnType<typeof expConsts>, x: Local, xc: Local, n: Local, r: Local) => {
    f.get(x).get(k.lo).simd(simd.f32x4_pmax).set(xc);
    f.get(xc).get(k.log2e).simd(simd.f32x4_mul).get(k.magic).simd(simd.f32x4_add).set(n); // MAGIC + n
    f.get(xc).get(n).get(k.magic).simd(simd.f32x4_sub).tee(r).get(k.c1).simd(simd.f32x4_mul).simd(simd.f32x4_sub);
    f.get(r).get(k.c2).simd(simd.f32x4_mul).simd(simd.f32x4_sub).set(r);
    f.get(k.poly[0]);
    for (const c of k.poly.slice(1)) f.get(r).simd(simd.f32x4_mul).get(c).simd(simd.f32x4_add);
    f.get(r).simd(simd.f32x4_mul).get(r).simd(simd.f32x4_mul).get(r).simd(simd.f32x4_add);
    f.get(k.one).simd(simd.f32x4_add);
    // times 2^n: (n + 127) << 23 as the bits of an f32
    f.get(n).get(k.bias).simd(simd.i32x4_sub).i32(23).simd(simd.i32x4_shl);
    f.simd(simd.f32x4_mul);
    // 0 where x < −87.5 (and −∞)
    f.get(x).get(k.lo).simd(simd.f32x4_lt).simd(simd.v128_andnot);
  };

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
      // the new running max over the keys each row sees (a NaN among them kept aside: pmax drops it)
      keys((masked) => {
        f.get(r).i32(Bc * 4).op(op.i32mul).get(c).i32(4).op(op.i32shl).op(op.i32add).memSimd(simd.load, lay.S, 4);
        if (masked) {
          f.get(ninf);
          sees();
          f.simd(simd.v128_bitselect);
        }
        f.tee(s).get(s).simd(simd.f32x4_ne).get(nan).simd(simd.v128_or).set(nan);
        f.get(mx).get(s).simd(simd.f32x4_pmax).set(mx);
      });
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

  // ---- pv(rows4) ----
  const pv = new Fn('pv', [i32, i32], []);
  {
    const f = pv;
    const [rows4, vb] = f.params;
    const r = f.local(i32);
    const c = f.local(i32);
    const xb = f.local(i32); // byte offset of the column chunk in a V row
    const common = f.local(i32);
    const end = f.local(i32);
    const cs = f.local(i32);
    const ce = f.local(i32);
    const pa = f.local(i32);
    const va = f.local(i32);
    const ob = f.local(i32);
    const acc = Array.from({ length: 8 }, () => f.local(v128)); // acc[2i + j]: row i, columns 4j..4j+3
    const pvv = Array.from({ length: 4 }, () => f.local(v128));
    const vv = Array.from({ length: 2 }, () => f.local(v128));
    const al = f.local(v128);
    const n = (i: number) => f.get(r).i32(2).op(op.i32shl).mem(op.i32load, lay.N + 4 * i, 2);

    /** O rows (f64) of the 4 rows at column chunk xb (w vectors) times α: once per row and block. */
    const scale = (w: number) => {
      f.get(r).i32(Dp * 8).op(op.i32mul).get(xb).i32(1).op(op.i32shl).op(op.i32add).set(ob);
      for (let i = 0; i < 4; i++) {
        f.get(r).i32(3).op(op.i32shl).mem(op.f64load, lay.A + 8 * i, 3).simd(simd.f64x2_splat).set(al);
        for (let h = 0; h < 2 * w; h++) {
          const off = lay.O + i * Dp * 8 + h * 16;
          f.get(ob).get(ob).memSimd(simd.load, off, 4).get(al).simd(simd.f64x2_mul).memSimd(simd.store, off, 4);
        }
      }
    };

    /** O rows (f64) += the accumulators of `rowsIn` rows × `w` vectors, at column chunk xb. */
    const flush = (rowsIn: number[], w: number) => {
      // ob: byte offset of O[r][xb/4]
      f.get(r).i32(Dp * 8).op(op.i32mul).get(xb).i32(1).op(op.i32shl).op(op.i32add).set(ob);
      rowsIn.forEach((i, k) => {
        for (let j = 0; j < w; j++) {
          const a = acc[2 * k + j];
          for (let h = 0; h < 2; h++) {
            const off = lay.O + i * Dp * 8 + j * 32 + h * 16;
            f.get(ob);
            f.get(ob).memSimd(simd.load, off, 4);
            if (h === 0) f.get(a);
            else f.get(a).get(a).simd(simd.shuffle, ...lanes(2, 3, 0, 1));
            f.simd(simd.f64x2_promote_low_f32x4).simd(simd.f64x2_add);
            f.memSimd(simd.store, off, 4);
          }
        }
      });
    };

    /**
     * O rows `rowsIn` (offsets from r) += P̃ V over keys [from, to), w vectors at column chunk xb: the
     * products of CHUNK keys at a time summed in f32, then added to O in f64.
     */
    const accumulate = (rowsIn: number[], w: number, from: () => void, to: () => void) => {
      to();
      f.set(end);
      f.for(cs, from, () => f.get(end), CHUNK, () => {
        for (let k = 0; k < rowsIn.length; k++) for (let j = 0; j < w; j++) zero(f, acc[2 * k + j]);
        // ce = min(cs + CHUNK, end)
        f.get(cs).i32(CHUNK).op(op.i32add).tee(ce).get(end).get(ce).get(end).op(op.i32lt_s).op(op.select).set(ce);
        // pa: byte offset of Sᵀ[c][r]; va: byte offset of V[c][xb]
        f.for(c, () => f.get(cs), () => f.get(ce), 1, () => {
          f.get(r).i32(Bc * 4).op(op.i32mul).get(c).i32(4).op(op.i32shl).op(op.i32add).set(pa);
          f.get(c).i32(rowB).op(op.i32mul).get(xb).op(op.i32add).get(vb).op(op.i32add).set(va);
          rowsIn.forEach((i, k) => f.get(pa).memSimd(simd.load32_splat, lay.S + 4 * i, 2).set(pvv[k]));
          for (let j = 0; j < w; j++) f.get(va).memSimd(simd.load, 16 * j, 4).set(vv[j]);
          rowsIn.forEach((_, k) => {
            for (let j = 0; j < w; j++) madd(f, acc[2 * k + j], () => f.get(pvv[k]), () => f.get(vv[j]));
          });
        });
        flush(rowsIn, w);
      });
    };

    const chunk = (w: number) => {
      scale(w);
      accumulate([0, 1, 2, 3], w, () => f.i32(0), () => f.get(common));
      for (let i = 0; i < 4; i++) accumulate([i], w, () => f.get(common), () => n(i));
    };

    f.for(r, () => f.i32(0), () => f.get(rows4), 4, () => {
      // common = min over the 4 rows of N
      n(0).set(common);
      for (let i = 1; i < 4; i++) {
        n(i).set(ce);
        f.get(ce).get(common).get(ce).get(common).op(op.i32lt_s).op(op.select).set(common);
      }
      const full = Math.floor(Dp / 8);
      if (full > 0) f.for(xb, () => f.i32(0), () => f.i32(full * 32), 32, () => chunk(2));
      if (Dp % 8 === 4) {
        f.i32(full * 32).set(xb);
        chunk(1);
      }
    });
  }

  const pages = Math.ceil(lay.bytes / 65536);
  return assemble([{ module: 'm', field: 'exp', params: [f64], results: [f64] }], [qk, sm, pv], pages);
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
