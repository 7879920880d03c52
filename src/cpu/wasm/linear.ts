/**
 * The nn linear's micro-kernel in WebAssembly SIMD (cpu/linear.ts packs the rows and applies bias,
 * activation and residual; this replaces its JavaScript microKernel where the runtime has SIMD):
 *
 *   tiles(xp, wp, t, groups, K)  for each of `groups` row groups, the 4×4 tile Σ_k xp[4k + i] · wp[4k + j]
 *                         (f64; xp from byte xp + 32K·g, wp from byte wp, both four-interleaved as
 *                         linear.ts packs them) into the 16 f64 from byte t + 128g. Per k: W's four
 *                         values as two f64x2 loads, each x value splatted by a load64_splat, 8 f64x2
 *                         multiplies and 8 adds into 8 accumulators.
 *   packw(raw, wp, K4)   four f32 rows of W (4·K4 elements each, copied raw from byte raw) into wp as
 *                         tiles reads it (wp[4k + j] = W[j][k], f64): four k a step, a 4×4 transpose by
 *                         shuffles, each column widened by two promotes.
 *   dots(X, W, Y, M, K4)  the direct path (linearRows: rows of x at most DIRECT_ROWS, W read where it is):
 *                         Y[8i + j] = Σ_k X[i][k] · W[j][k] for M staged rows of x and 8 of W (f32 rows
 *                         of 4·K4, zero past K), products and sums in f32 over four lanes of k, the four
 *                         lanes added in f64 at the end. Within the error bound of any f32 sum
 *                         (γ_K·Σ|x_k w_k|, test/nn.test.ts), not the JavaScript kernel's bits.
 *   widen(src, dst, n4)   4·n4 f16 (bits, staged raw) to f32, exactly (emit.ts's widenF16): f16 weights and
 *                         rows of x go through it before packw and dots.
 * Every entry of tiles is summed over k in order, one f64 multiply and one f64 add a term, as the JavaScript
 * kernel sums: the same bits. (f32 and f16 inputs widened to f64 multiply exactly; relaxed SIMD's fused
 * multiply-add would round differently, so it is not used here.)
 * Memory (bytes): xp (MB·K f64) | wp (4·Kp f64, Kp = K rounded up to 4) | tiles (MB/4 · 16 f64) | W's
 * four raw rows (4·Kp f32); the direct path's x rows, W rows and results over the same bytes; then 8·Kp
 * u16 where f16 rows are staged raw; grown to the shape's size.
 */
import { assemble, Fn, i32, op, simd, v128 } from './asm.js';
import { f16Consts, lanes, widenF16 } from './emit.js';
import { instance, reserve, wasmSupport } from './instance.js';
import { DIRECT_ROWS, type HostData, type LinearKernel, type LinearShape } from '../linear.js';

/** The module of tiles, packw, dots and widen (exported for the tests). */
export function linearModule(): Uint8Array {
  const f = new Fn('tiles', [i32, i32, i32, i32, i32], []);
  const [xp, wp, t, groups, K] = f.params;
  const g = f.local(i32);
  const xa = f.local(i32);
  const wa = f.local(i32);
  const end = f.local(i32);
  const ta = f.local(i32);
  const acc = Array.from({ length: 8 }, () => f.local(v128)); // acc[2i + h]: row i, columns 2h, 2h + 1
  const w = [f.local(v128), f.local(v128)];
  const x = f.local(v128);
  f.for(g, () => f.i32(0), () => f.get(groups), 1, () => {
    f.get(xp).get(g).get(K).op(op.i32mul).i32(32).op(op.i32mul).op(op.i32add).set(xa);
    f.get(wp).get(K).i32(32).op(op.i32mul).op(op.i32add).set(end);
    for (const a of acc) f.f64(0).simd(simd.f64x2_splat).set(a);
    f.for(wa, () => f.get(wp), () => f.get(end), 32, () => {
      f.get(wa).memSimd(simd.load, 0, 4).set(w[0]);
      f.get(wa).memSimd(simd.load, 16, 4).set(w[1]);
      for (let i = 0; i < 4; i++) {
        f.get(xa).memSimd(simd.load64_splat, 8 * i, 3).set(x);
        for (let h = 0; h < 2; h++) f.get(acc[2 * i + h]).get(x).get(w[h]).simd(simd.f64x2_mul).simd(simd.f64x2_add).set(acc[2 * i + h]);
      }
      f.get(xa).i32(32).op(op.i32add).set(xa);
    });
    f.get(t).get(g).i32(128).op(op.i32mul).op(op.i32add).set(ta);
    acc.forEach((a, n) => f.get(ta).get(a).memSimd(simd.store, 16 * n, 4));
  });
  // ---- packw(raw, wp, K4): four f32 rows of 4·K4 elements each from byte raw, four-interleaved into f64 at wp ----
  const p = new Fn('packw', [i32, i32, i32], []);
  {
    const [raw, wp2, K4] = p.params;
    const q = p.local(i32);
    const r = [0, 1, 2, 3].map(() => p.local(v128));
    const t = [0, 1, 2, 3].map(() => p.local(v128));
    const c = p.local(v128);
    const ra = p.local(i32);
    const wa2 = p.local(i32);
    p.get(raw).set(ra);
    p.get(wp2).set(wa2);
    p.for(q, () => p.i32(0), () => p.get(K4), 1, () => {
      // r[j] = row j's 4 values at k = 4q .. 4q + 3
      r.forEach((rj, j) => p.get(ra).get(K4).i32(16 * j).op(op.i32mul).op(op.i32add).memSimd(simd.load, 0, 4).set(rj));
      // transpose: t0 = (r0[0], r1[0], r0[1], r1[1]), t1 = (r2[0], r3[0], r2[1], r3[1]), t2, t3 the same of lanes 2, 3
      p.get(r[0]).get(r[1]).simd(simd.shuffle, ...lanes(0, 4, 1, 5)).set(t[0]);
      p.get(r[2]).get(r[3]).simd(simd.shuffle, ...lanes(0, 4, 1, 5)).set(t[1]);
      p.get(r[0]).get(r[1]).simd(simd.shuffle, ...lanes(2, 6, 3, 7)).set(t[2]);
      p.get(r[2]).get(r[3]).simd(simd.shuffle, ...lanes(2, 6, 3, 7)).set(t[3]);
      for (let k = 0; k < 4; k++) {
        // column values of the four rows at k = 4q + k, widened, into wp[4k .. 4k + 3]
        const [a, b] = k < 2 ? [t[0], t[1]] : [t[2], t[3]];
        p.get(a).get(b).simd(simd.shuffle, ...(k % 2 === 0 ? lanes(0, 1, 4, 5) : lanes(2, 3, 6, 7))).set(c);
        p.get(wa2).get(c).simd(simd.f64x2_promote_low_f32x4).memSimd(simd.store, 32 * k, 4);
        p.get(wa2).get(c).get(c).simd(simd.shuffle, ...lanes(2, 3, 0, 1)).simd(simd.f64x2_promote_low_f32x4).memSimd(simd.store, 32 * k + 16, 4);
      }
      p.get(ra).i32(16).op(op.i32add).set(ra);
      p.get(wa2).i32(128).op(op.i32add).set(wa2);
    });
  }
  // ---- dots(X, W, Y, M, K4): Y[8i + j] = Σ_k X[i][k] · W[j][k] for M rows of X and 8 of W (f32 rows of 4·K4) ----
  const d = new Fn('dots', [i32, i32, i32, i32, i32], []);
  {
    const [X, W, Y, M, K4] = d.params;
    const i = d.local(i32);
    const q = d.local(i32);
    const xa = d.local(i32);
    const wa = [0, 1, 2, 3, 4, 5, 6, 7].map(() => d.local(i32));
    const acc = [0, 1, 2, 3, 4, 5, 6, 7].map(() => d.local(v128));
    const xv = d.local(v128);
    const h = d.local(v128);
    d.for(i, () => d.i32(0), () => d.get(M), 1, () => {
      d.get(X).get(i).get(K4).op(op.i32mul).i32(16).op(op.i32mul).op(op.i32add).set(xa);
      wa.forEach((w, j) => d.get(W).get(K4).i32(16 * j).op(op.i32mul).op(op.i32add).set(w));
      for (const a of acc) d.f32(0).simd(simd.f32x4_splat).set(a);
      d.for(q, () => d.i32(0), () => d.get(K4), 1, () => {
        d.get(xa).memSimd(simd.load, 0, 4).set(xv);
        acc.forEach((a, j) => d.get(a).get(xv).get(wa[j]).memSimd(simd.load, 0, 4).simd(simd.f32x4_mul).simd(simd.f32x4_add).set(a));
        d.get(xa).i32(16).op(op.i32add).set(xa);
        for (const w of wa) d.get(w).i32(16).op(op.i32add).set(w);
      });
      // each accumulator's four lanes summed in f64: (l0 + l2) + (l1 + l3)
      acc.forEach((a, j) => {
        d.get(Y).get(i).i32(64).op(op.i32mul).op(op.i32add);
        d.get(a).simd(simd.f64x2_promote_low_f32x4).get(a).get(a).simd(simd.shuffle, ...lanes(2, 3, 0, 1)).simd(simd.f64x2_promote_low_f32x4).simd(simd.f64x2_add).set(h);
        d.get(h).simd(simd.f64x2_extract_lane, 0).get(h).simd(simd.f64x2_extract_lane, 1).op(op.f64add);
        d.mem(op.f64store, 8 * j, 3);
      });
    });
  }
  // ---- widen(src, dst, n4): 4·n4 f16 (bits) from byte src into f32 at dst ----
  const wd = new Fn('widen', [i32, i32, i32], []);
  {
    const [src, dst, n4] = wd.params;
    const q = wd.local(i32);
    const hv = wd.local(v128);
    const y = wd.local(v128);
    const k = f16Consts(wd);
    wd.for(q, () => wd.i32(0), () => wd.get(n4), 1, () => {
      wd.get(dst).get(q).i32(4).op(op.i32shl).op(op.i32add);
      wd.get(src).get(q).i32(3).op(op.i32shl).op(op.i32add).memSimd(simd.load16x4_u, 0, 1).set(hv);
      widenF16(wd, k, hv, y);
      wd.memSimd(simd.store, 0, 4);
    });
  }
  return assemble([], [f, p, d, wd], 1);
}

/**
 * This thread's WebAssembly kernel for a linear's shape (packing into the module's memory), or undefined
 * where the runtime has no SIMD or the memory cannot grow: linear.ts's JavaScript kernel runs then.
 */
export function wasmLinearKernel(s: LinearShape): LinearKernel | undefined {
  if (wasmSupport() === 'none') return undefined;
  const w = instance('linear', linearModule);
  const Kp = Math.ceil(s.K / 4) * 4;
  const [XP, WP, T, RAW] = [0, s.MB * s.K * 8, s.MB * s.K * 8 + 4 * Kp * 8, s.MB * s.K * 8 + 4 * Kp * 8 + s.MB * 32];
  // The direct path's staging: x's rows (at most DIRECT_ROWS) and 8 W rows, Kp f32 each, then 8 · DIRECT_ROWS f64 results.
  const [DX, DW, DY] = [0, DIRECT_ROWS * Kp * 4, (DIRECT_ROWS + 8) * Kp * 4];
  // f16 rows are staged raw here (at most 8 rows of Kp), then widened to f32 where the f32 rows go.
  const S16 = Math.max(RAW + 4 * Kp * 4, DY + DIRECT_ROWS * 64);
  if (!w || !reserve(w, S16 + 8 * Kp * 2)) return undefined;
  const e = w.exports as {
    tiles: (xp: number, wp: number, t: number, groups: number, K: number) => void;
    packw: (raw: number, wp: number, K4: number) => void;
    dots: (X: number, W: number, Y: number, M: number, K4: number) => void;
    widen: (src: number, dst: number, n4: number) => void;
  };
  const F = w.f32;
  const U = new Uint16Array(w.mem.buffer);
  const K = s.K;
  /**
   * Rows [r0, r0 + count) of `src` (K each) as f32 rows Kp apart from byte `to`, zero past K, rows count ..
   * upto − 1 zero: f32 copied there, f16 copied raw to S16 and widened.
   */
  const stage = (src: HostData, r0: number, count: number, to: number, upto: number) => {
    const f16 = src instanceof Uint16Array;
    const [view, at] = f16 ? [U, S16 / 2] : [F, to / 4];
    if (K === Kp) view.set(src.subarray(r0 * K, (r0 + count) * K), at);
    else {
      for (let j = 0; j < count; j++) {
        view.set(src.subarray((r0 + j) * K, (r0 + j + 1) * K), at + j * Kp);
        view.fill(0, at + j * Kp + K, at + (j + 1) * Kp);
      }
    }
    view.fill(0, at + count * Kp, at + upto * Kp);
    if (f16) e.widen(S16, to, (upto * Kp) / 4);
  };

  return {
    xp: w.f64,
    xo: XP / 8,
    tile: w.f64,
    to: T / 8,
    tiles: (groups) => e.tiles(XP, WP, T, groups, s.K),
    // W's rows copied raw (zero past K and past the last column; f16 widened to f32), then interleaved and widened here
    packW: (W, n, cols) => {
      stage(W, n, cols, RAW, 4);
      e.packw(RAW, WP, Kp / 4);
    },
    direct: (x, m0, rows, W) => {
      stage(x, m0, rows, DX, rows);
      const Y = new Float64Array(w.mem.buffer, DY, 8 * rows);
      return (n, count) => {
        stage(W, n, count, DW, 8);
        e.dots(DX, DW, DY, rows, Kp / 4);
        return Y;
      };
    },
  };
}
