/**
 * The score modifiers that change every score of a tile, soft-cap and ALiBi (src/modifiers.ts's modifyRow,
 * steps 1 and 2), as one generated function that the forward and backward modules add when a call has
 * them (a compile-time parameter: the plain modules are built without it, their bytes unchanged):
 *
 *   modify(rows4, cols, d0, cap, slope)  on Sᵀ panels (4 rows of one key in one f32x4): soft-cap
 *        S ← cap·tanh(S / cap), then ALiBi S ← S − slope·|d − j| where d − j = d0 + r − c for row r and key
 *        c of the tile (d0 = r0 + Nk − Nq − c0); with `dcap`, the soft-cap's derivative 1 − tanh² is kept
 *        in panels of the same shape at byte dcap (the backward multiplies dS by it).
 * In f32, where flash.ts is in f64: the forward and backward run the same instructions on the same f32
 * score, so the backward's P = exp(S − L) sees the forward's S exactly. tanh is Cephes' tanhf: an odd
 * polynomial below |x| = 0.625, (1 − e)/(1 + e) with e = exp(−2|x|) above (no cancellation there); NaN in,
 * NaN out. Everything else of the variants (bias, band, masks, dropout) stays in variants.ts's hooks.
 */
import { Fn, f32, i32, op, simd, v128 } from './asm.js';
import { expConsts, splatF32, vexp } from './emit.js';

export interface ScoreMods {
  softcap: boolean;
  alibi: boolean;
}

/** Cephes tanhf's polynomial for |x| < 0.625, highest first: tanh x = x + x·x²·P(x²). */
const TANH_POLY = [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1];

/** The function `modify` over the panels at byte S (panelB bytes apart); dcap: byte offset of the derivative's panels. */
export function scoreModFn(has: ScoreMods, S: number, panelB: number, dcap?: number): Fn {
  const f = new Fn('modify', [i32, i32, i32, f32, f32], []);
  const [rows4, cols, d0, cap, slope] = f.params;
  const r = f.local(i32);
  const c = f.local(i32);
  const pa = f.local(i32);
  const s = f.local(v128);
  const x = f.local(v128);
  const ax = f.local(v128);
  const z = f.local(v128);
  const t = f.local(v128);
  const e = f.local(v128);
  const xc = f.local(v128);
  const nn = f.local(v128);
  const rr = f.local(v128);
  const capv = f.local(v128);
  const slopev = f.local(v128);
  const dv = f.local(v128);
  const one = f.local(v128);
  const k = expConsts(f);
  f.get(cap).simd(simd.f32x4_splat).set(capv);
  f.get(slope).simd(simd.f32x4_splat).set(slopev);
  splatF32(f, 1).set(one);
  f.for(r, () => f.i32(0), () => f.get(rows4), 4, () => {
    // dv: d − j of the 4 rows at key 0 of the tile; one less at each key
    f.get(d0).get(r).op(op.i32add).simd(simd.i32x4_splat);
    f.simd(0x0c, ...new Uint8Array(Int32Array.of(0, 1, 2, 3).buffer)).simd(simd.i32x4_add);
    f.simd(simd.f32x4_convert_i32x4_s).set(dv);
    f.for(c, () => f.i32(0), () => f.get(cols), 1, () => {
      f.get(r).i32(2).op(0x76 /* i32.shr_u */).i32(panelB).op(op.i32mul).get(c).i32(4).op(op.i32shl).op(op.i32add).set(pa);
      f.get(pa).memSimd(simd.load, S, 4).set(s);
      if (has.softcap) {
        f.get(s).get(capv).simd(simd.f32x4_div).tee(x).simd(simd.f32x4_abs).set(ax);
        // |x| < 0.625: x + x·z·P(z), z = x²
        f.get(x).get(x).simd(simd.f32x4_mul).set(z);
        splatF32(f, TANH_POLY[0]);
        for (const p of TANH_POLY.slice(1)) {
          f.get(z).simd(simd.f32x4_mul);
          splatF32(f, p);
          f.simd(simd.f32x4_add);
        }
        f.get(z).simd(simd.f32x4_mul).get(x).simd(simd.f32x4_mul).get(x).simd(simd.f32x4_add).set(t);
        // above: (1 − e)/(1 + e), e = exp(−2|x|), with x's sign
        f.get(ax);
        splatF32(f, -2);
        f.simd(simd.f32x4_mul).set(z);
        vexp(f, k, z, xc, nn, rr);
        f.set(e);
        f.get(x);
        f.get(one).get(e).simd(simd.f32x4_sub).get(one).get(e).simd(simd.f32x4_add).simd(simd.f32x4_div);
        splatF32(f, -0); // the sign bit
        f.simd(simd.v128_bitselect); // the sign from x, the rest from the quotient
        f.get(t);
        f.get(ax);
        splatF32(f, 0.625);
        f.simd(simd.f32x4_gt).simd(simd.v128_bitselect).set(t);
        if (dcap !== undefined) {
          f.get(pa).get(one).get(t).get(t).simd(simd.f32x4_mul).simd(simd.f32x4_sub).memSimd(simd.store, dcap, 4);
        }
        f.get(capv).get(t).simd(simd.f32x4_mul).set(s);
      }
      if (has.alibi) {
        f.get(s).get(slopev).get(dv).simd(simd.f32x4_abs).simd(simd.f32x4_mul).simd(simd.f32x4_sub).set(s);
        f.get(dv).get(one).simd(simd.f32x4_sub).set(dv);
      }
      f.get(pa).get(s).memSimd(simd.store, S, 4);
    });
  });
  return f;
}
