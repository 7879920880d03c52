/**
 * Code the forward and backward modules share, emitted into a function of asm.ts: constants, the f32x4
 * multiply-add (fused with relaxed SIMD), the vector exp, and two tile products over Sᵀ panels (a tile
 * of scores kept as panels of 4 rows, key-major: 4 rows' values of one key in one f32x4):
 *   emitQK  Sᵀ = (Q Kᵀ)ᵀ from f64 rows, each score rounded to f32 once (the forward's qk, the backward's S);
 *   emitPV  O += P V for f64 rows of O, each row meeting only the keys it sees (the forward's pv, with
 *           O's rescale by α; the backward's dQ += dS K, without).
 */
import { Fn, i32, op, simd, v128, type Local } from './asm.js';

/**
 * The start of a module's layout: the row strides for padded head dim Dp, and `take`, which hands out
 * regions in order, each 16-byte aligned; `at()` is the bytes taken so far.
 */
export function layoutOf(Dp: number) {
  let at = 0;
  const take = (bytes: number) => {
    const o = at;
    at += Math.ceil(bytes / 16) * 16;
    return o;
  };
  return {
    /** Row stride of f32 rows in elements: Dp, or Dp + 4 where Dp·4 bytes is a multiple of 64 (rows a power of two apart share cache sets). */
    ld: Dp % 16 === 0 ? Dp + 4 : Dp,
    /** Row stride of f64 rows in elements: Dp, or Dp + 2 where Dp·8 bytes is a multiple of 64. */
    ldq: Dp % 8 === 0 ? Dp + 2 : Dp,
    take,
    at: () => at,
  };
}

/** The byte indices of an i8x16.shuffle that picks f32 lanes (0-3 of the first operand, 4-7 of the second). */
export function lanes(...l: number[]): number[] {
  return l.flatMap((x) => [4 * x, 4 * x + 1, 4 * x + 2, 4 * x + 3]);
}

export const v128Const = (f: Fn, bytes: Uint8Array) => f.simd(0x0c, ...bytes);

/** The constants of widenF16, splatted into locals of f. */
export interface F16Consts {
  abs: Local;
  sign: Local;
  infAbove: Local;
  expOnes: Local;
  pow112: Local;
}

export function f16Consts(f: Fn): F16Consts {
  const splat = (bits: number) => {
    const l = f.local(v128);
    f.i32(bits).simd(simd.i32x4_splat).set(l);
    return l;
  };
  return {
    abs: splat(0x7fff),
    sign: splat(0x8000),
    infAbove: splat(0x0f7fffff), // (0x7c00 << 13) − 1: the f16 exponent all ones
    expOnes: splat(0x7f800000),
    pow112: splat(0x77800000), // 2^112 as f32 bits
  };
}

/**
 * Pushes the f32x4 of the four f16 in local h (their bits zero-extended to i32 lanes, as load16x4_u
 * gives them), exact for every f16: (h & 0x7fff) << 13 as f32 times 2^112 (subnormals included), the
 * exponent forced to all ones for Inf and NaN, the sign or'ed back in. y: a v128 local it uses.
 */
export function widenF16(f: Fn, k: F16Consts, h: Local, y: Local): void {
  f.get(h).get(k.abs).simd(simd.v128_and).i32(13).simd(simd.i32x4_shl).set(y);
  f.get(y).get(k.pow112).simd(simd.f32x4_mul);
  f.get(y).get(k.infAbove).simd(simd.i32x4_gt_s).get(k.expOnes).simd(simd.v128_and).simd(simd.v128_or);
  f.get(h).get(k.sign).simd(simd.v128_and).i32(16).simd(simd.i32x4_shl).simd(simd.v128_or);
}
export const splatF32 = (f: Fn, x: number) => v128Const(f, new Uint8Array(new Float32Array([x, x, x, x]).buffer));
export const zero = (f: Fn, l: Local) => {
  splatF32(f, 0).set(l);
};

/** acc += a * b (f32x4): f32x4.relaxed_madd where `relaxed`, else mul then add. */
export function madd(f: Fn, relaxed: boolean, acc: Local, a: () => void, b: () => void): void {
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
}

/** The 2 f64x2 at byte p + off += the f32x4 in local a, widened (a flush of f32 partial sums into f64). */
export function addToF64(f: Fn, p: Local, off: number, a: Local): void {
  for (let h = 0; h < 2; h++) {
    f.get(p);
    f.get(p).memSimd(simd.load, off + h * 16, 4);
    if (h === 0) f.get(a);
    else f.get(a).get(a).simd(simd.shuffle, ...lanes(2, 3, 0, 1));
    f.simd(simd.f64x2_promote_low_f32x4).simd(simd.f64x2_add);
    f.memSimd(simd.store, off + h * 16, 4);
  }
}

/** Sums of f32 products are added into f64 after this many terms (pv's keys, the backward's rows). */
export const CHUNK = 32;

/** exp's constants, each an f32x4 splat: the polynomial's coefficients, highest first, then 1. */
const POLY = [1.987569150e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
/** 1.5·2^23: x + MAGIC rounds x to an integer n held in the low bits of the sum (|n| < 2^22). */
const MAGIC = 12582912;
const MAGIC_BITS = 0x4b400000;
const EXP_CONSTS = { lo: -87.5, log2e: Math.LOG2E, magic: MAGIC, c1: 0.693359375, c2: -2.12194440e-4, one: 1 };

export type ExpConsts = Record<keyof typeof EXP_CONSTS, Local> & { poly: Local[]; bias: Local };

/** Locals holding exp's constants, set at the start of f (loops then read registers, not constants). */
export function expConsts(f: Fn): ExpConsts {
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
}

/**
 * Pushes exp(x) of the f32x4 in local x (x ≤ 0, −∞ or NaN): Cephes' expf (n = round(x log2 e),
 * r = x − n ln 2 in two parts, a degree-7 polynomial, times 2^n through the exponent bits); 0 below −87.5,
 * NaN for NaN. pmax (one instruction) keeps a NaN x as it is. xc, n, r: v128 temporaries.
 */
export function vexp(f: Fn, k: ExpConsts, x: Local, xc: Local, n: Local, r: Local): void {
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
}

/** Where a tile product finds its operands: Dp and the strides of rows and Sᵀ panels, in bytes. */
export interface TileGeometry {
  Dp: number;
  /** Bytes from one f64 row of Q or K to the next (qk). */
  rowQB: number;
  /** Bytes from one f32 row of V to the next (pv). */
  rowB: number;
  /** Bytes from one Sᵀ panel to the next: Bc·16, or more where a power-of-two stride would make panels share cache sets. */
  panelB: number;
}

/**
 * Sᵀ (panels at byte S) of rows [0, rows4) against keys [kb, kb + cols2 rows): 4 query rows × 2 keys a
 * time, 8 f64x2 accumulators along D (products of f32 inputs are exact in f64, and each score is rounded
 * to f32 once). Q's rows are at byte Q, plus the value of local qb where given. With `minus` (the byte
 * address of one f64 per row), each row's value is subtracted before the rounding (the backward's dP − D).
 */
export function emitQK(f: Fn, g: TileGeometry, at: { Q: number; S: number }, rows4: Local, cols2: Local, kb: Local, qb?: Local, minus?: Local): void {
  const { Dp, rowQB, panelB } = g;
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
  const ma = minus && f.local(i32);
  f.for(r, () => f.i32(0), () => f.get(rows4).i32(rowQB).op(op.i32mul), 4 * rowQB, () => {
    // Sᵀ address of (key kb, rows r..r+3): panel r / 4; then 32 bytes (two keys) a pass of the loop below
    f.get(r).i32(4 * rowQB).op(0x6d /* i32.div_s */).i32(panelB).op(op.i32mul).set(sa);
    if (ma) f.get(r).i32(rowQB).op(0x6d).i32(3).op(op.i32shl).get(minus!).op(op.i32add).set(ma);
    f.for(c, () => f.get(kb), () => f.get(kb).get(cols2).i32(rowQB).op(op.i32mul).op(op.i32add), 2 * rowQB, () => {
      for (const a of acc) zero(f, a);
      // qa walks Q's row r along D; K's row c is ka = qa + x, x = c − (r + qb) (one add a step, not two)
      f.get(c).get(r).op(op.i32sub);
      if (qb) f.get(qb).op(op.i32sub);
      f.set(x);
      const q0 = () => {
        f.get(r);
        if (qb) f.get(qb).op(op.i32add);
      };
      f.for(qa, q0, () => { q0(); f.i32(Dp * 8).op(op.i32add); }, 16, () => {
        f.get(qa).get(x).op(op.i32add).set(ka);
        for (let i = 0; i < 4; i++) f.get(qa).memSimd(simd.load, at.Q + i * rowQB, 4).set(qv[i]);
        for (let j = 0; j < 2; j++) f.get(ka).memSimd(simd.load, j * rowQB, 4).set(kv[j]);
        for (let i = 0; i < 4; i++) {
          for (let j = 0; j < 2; j++) {
            f.get(acc[2 * i + j]).get(qv[i]).get(kv[j]).simd(simd.f64x2_mul).simd(simd.f64x2_add).set(acc[2 * i + j]);
          }
        }
      });
      /** Less the rows' values (rows 2h, 2h + 1), where asked. */
      const less = (h: number) => {
        if (ma) f.get(ma).memSimd(simd.load, 16 * h, 3).simd(simd.f64x2_sub);
      };
      for (let j = 0; j < 2; j++) {
        // [Σ row 0, Σ row 1] and [Σ row 2, Σ row 3] for key j in f64, each rounded to f32 once
        const [a, b, cc, d] = [acc[j], acc[2 + j], acc[4 + j], acc[6 + j]];
        f.get(a).get(b).simd(simd.shuffle, ...lanes(0, 1, 4, 5)).get(a).get(b).simd(simd.shuffle, ...lanes(2, 3, 6, 7)).simd(simd.f64x2_add);
        less(0);
        f.simd(simd.f32x4_demote_f64x2_zero).set(t0);
        f.get(cc).get(d).simd(simd.shuffle, ...lanes(0, 1, 4, 5)).get(cc).get(d).simd(simd.shuffle, ...lanes(2, 3, 6, 7)).simd(simd.f64x2_add);
        less(1);
        f.simd(simd.f32x4_demote_f64x2_zero).set(t1);
        f.get(sa);
        f.get(t0).get(t1).simd(simd.shuffle, ...lanes(0, 1, 4, 5));
        f.memSimd(simd.store, at.S + j * 16, 4);
      }
      f.get(sa).i32(32).op(op.i32add).set(sa);
    });
  });
}

/**
 * O += P V over rows [0, rows4): P from the Sᵀ panels at byte S, V's rows from byte vb (stride rowB, f32),
 * O's rows (f64, Dp each) at byte O plus the value of local ob where given; N (i32 per row, at byte N) is
 * the keys each row sees. 4 rows × 8 columns a time while all 4 rows see the key, then each row alone up
 * to its N[r] (a masked key's V is never read, so a NaN there cannot reach a row that does not see it).
 * The products of CHUNK keys are summed in f32, then added to O. With `alpha` (byte offset of one f64 per
 * row), O's rows are first multiplied by it (the online softmax's rescale).
 */
export function emitPV(f: Fn, g: TileGeometry, at: { S: number; O: number; N: number; alpha?: number }, relaxed: boolean, rows4: Local, vb: Local, obase?: Local): void {
  const { Dp, rowB } = g;
  const r = f.local(i32);
  const c = f.local(i32);
  const xb = f.local(i32); // byte offset of the column chunk in a V row
  const common = f.local(i32);
  const end = f.local(i32);
  const cs = f.local(i32);
  const ce = f.local(i32);
  const pa = f.local(i32);
  const paEnd = f.local(i32);
  const va = f.local(i32);
  const ob = f.local(i32);
  const acc = Array.from({ length: 8 }, () => f.local(v128)); // acc[2i + j]: row i, columns 4j..4j+3
  const pvv = Array.from({ length: 4 }, () => f.local(v128));
  const vv = Array.from({ length: 2 }, () => f.local(v128));
  const al = at.alpha === undefined ? undefined : f.local(v128);
  const n = (i: number) => f.get(r).i32(2).op(op.i32shl).mem(op.i32load, at.N + 4 * i, 2);
  /** ob: byte offset of O[r][xb/4]. */
  const rowOfO = () => {
    f.get(r).i32(Dp * 8).op(op.i32mul).get(xb).i32(1).op(op.i32shl).op(op.i32add);
    if (obase) f.get(obase).op(op.i32add);
    f.set(ob);
  };

  /** O rows (f64) of the 4 rows at column chunk xb (w vectors) times α: once per row and block. */
  const scale = (w: number, A: number, al: Local) => {
    rowOfO();
    for (let i = 0; i < 4; i++) {
      f.get(r).i32(3).op(op.i32shl).mem(op.f64load, A + 8 * i, 3).simd(simd.f64x2_splat).set(al);
      for (let h = 0; h < 2 * w; h++) {
        const off = at.O + i * Dp * 8 + h * 16;
        f.get(ob).get(ob).memSimd(simd.load, off, 4).get(al).simd(simd.f64x2_mul).memSimd(simd.store, off, 4);
      }
    }
  };

  /** O rows (f64) += the accumulators of `rowsIn` rows × `w` vectors, at column chunk xb. */
  const flush = (rowsIn: number[], w: number) => {
    rowOfO();
    rowsIn.forEach((i, k) => {
      for (let j = 0; j < w; j++) addToF64(f, ob, at.O + i * Dp * 8 + j * 32, acc[2 * k + j]);
    });
  };

  /**
   * O rows `rowsIn` (offsets from r) += P V over keys [from, to), w vectors at column chunk xb: the
   * products of CHUNK keys at a time summed in f32, then added to O in f64.
   */
  const accumulate = (rowsIn: number[], w: number, from: () => void, to: () => void) => {
    to();
    f.set(end);
    f.for(cs, from, () => f.get(end), CHUNK, () => {
      for (let k = 0; k < rowsIn.length; k++) for (let j = 0; j < w; j++) zero(f, acc[2 * k + j]);
      // ce = min(cs + CHUNK, end)
      f.get(cs).i32(CHUNK).op(op.i32add).tee(ce).get(end).get(ce).get(end).op(op.i32lt_s).op(op.select).set(ce);
      // pa: byte offset of Sᵀ[c][r], va: byte offset of V[c][xb], from key cs on, each a step along the keys
      // (added, not multiplied out again each key: fewer instructions in the loop)
      f.get(r).i32(g.panelB / 4).op(op.i32mul).get(cs).i32(4).op(op.i32shl).op(op.i32add).set(pa); // r is a multiple of 4
      f.get(cs).i32(rowB).op(op.i32mul).get(xb).op(op.i32add).get(vb).op(op.i32add).set(va);
      f.get(pa).get(ce).get(cs).op(op.i32sub).i32(4).op(op.i32shl).op(op.i32add).set(paEnd);
      f.for(pa, () => f.get(pa), () => f.get(paEnd), 16, () => {
        rowsIn.forEach((i, k) => f.get(pa).memSimd(simd.load32_splat, at.S + 4 * i, 2).set(pvv[k]));
        for (let j = 0; j < w; j++) f.get(va).memSimd(simd.load, 16 * j, 4).set(vv[j]);
        f.get(va).i32(rowB).op(op.i32add).set(va);
        rowsIn.forEach((_, k) => {
          for (let j = 0; j < w; j++) madd(f, relaxed, acc[2 * k + j], () => f.get(pvv[k]), () => f.get(vv[j]));
        });
      });
      flush(rowsIn, w);
    });
  };

  const chunk = (w: number) => {
    if (at.alpha !== undefined) scale(w, at.alpha, al!);
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
