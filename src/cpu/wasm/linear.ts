/**
 * The nn linear's micro-kernel in WebAssembly SIMD (cpu/linear.ts packs the rows and applies bias,
 * activation and residual; this replaces its JavaScript microKernel where the runtime has SIMD):
 *
 *   tiles(xp, wp, t, groups, K)  for each of `groups` row groups, the 4×4 tile Σ_k xp[4k + i] · wp[4k + j]
 *                         (f64; xp from byte xp + 32K·g, wp from byte wp, both four-interleaved as
 *                         linear.ts packs them) into the 16 f64 from byte t + 128g. Per k: W's four
 *                         values as two f64x2 loads, each x value splatted by a load64_splat, 8 f64x2
 *                         multiplies and 8 adds into 8 accumulators.
 * Every entry is summed over k in order, one f64 multiply and one f64 add a term, as the JavaScript
 * kernel sums: the same bits. (f32 and f16 inputs widened to f64 multiply exactly; relaxed SIMD's fused
 * multiply-add would round differently, so it is not used here.)
 * Memory (bytes): xp (MB·K f64) | wp (4·K f64) | tiles (MB/4 · 16 f64), grown to the shape's size.
 */
import { assemble, Fn, i32, op, simd, v128 } from './asm.js';
import { instance, reserve, wasmSupport } from './instance.js';
import type { LinearKernel, LinearShape } from '../linear.js';

const LOAD64_SPLAT = 0x0a;

function linearModule(): Uint8Array {
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
        f.get(xa).memSimd(LOAD64_SPLAT, 8 * i, 3).set(x);
        for (let h = 0; h < 2; h++) f.get(acc[2 * i + h]).get(x).get(w[h]).simd(simd.f64x2_mul).simd(simd.f64x2_add).set(acc[2 * i + h]);
      }
      f.get(xa).i32(32).op(op.i32add).set(xa);
    });
    f.get(t).get(g).i32(128).op(op.i32mul).op(op.i32add).set(ta);
    acc.forEach((a, n) => f.get(ta).get(a).memSimd(simd.store, 16 * n, 4));
  });
  return assemble([], [f], 1);
}

/**
 * This thread's WebAssembly kernel for a linear's shape (packing into the module's memory), or undefined
 * where the runtime has no SIMD or the memory cannot grow: linear.ts's JavaScript kernel runs then.
 */
export function wasmLinearKernel(s: LinearShape): LinearKernel | undefined {
  if (wasmSupport() === 'none') return undefined;
  const w = instance('linear', linearModule);
  const [XP, WP, T] = [0, s.MB * s.K * 8, (s.MB + 4) * s.K * 8];
  if (!w || !reserve(w, T + s.MB * 32)) return undefined;
  const tiles = w.exports.tiles as (xp: number, wp: number, t: number, groups: number, K: number) => void;
  return { xp: w.f64, xo: XP / 8, wp: w.f64, wo: WP / 8, tile: w.f64, to: T / 8, tiles: (groups) => tiles(XP, WP, T, groups, s.K) };
}
