/**
 * The WebAssembly decode kernel's memory and its one generated function of its own. The decode kernel
 * (decode.ts) runs the forward module's qk, softmax and pv (forward-module.ts) on a tile of R4 query
 * rows (Br = R4) against Bc keys; what it adds is the tile's K_j and V_j, which it cannot read where
 * they live (a caller's arrays, the KV cache's pools, f32 or f16) and copies, raw, into a staging area
 * of this memory, and `tile`, a second module on the same memory (it imports it), which widens them:
 *
 *   tile(n, kb, vb, stride)  for each of the n keys staged from byte kb (K) and vb (V), `stride` bytes
 *             apart, K_j's row to f64 (qk multiplies f64 rows: f32 products are exact there, as in the
 *             forward) and V_j's row to f32, 4 elements a time, columns from D on zero; f16 is widened
 *             by its bits ((h & 0x7fff) << 13 times 2^112 as f32, the exponent forced to all ones for
 *             Inf and NaN, the sign or'ed back in), exact for every f16, subnormals included.
 *
 * Memory (bytes), from the forward layout's `bytes` on: K_j ((Bc + 1) rows of ldq f64: qk reads keys in
 * pairs, so an odd count reads, and masks, one row more) | V_j (Bc rows of ld f32) | the staged K_j and
 * V_j (`stage` elements each, f32 or f16 bits, and 4 more: a row's last load may reach past it). At
 * D = 128, Bc = 32, R4 = 4, rows staged Dp apart: 34 + 17 + 16 + 16 KiB (f32) after the forward's 11 KiB.
 */
import { assemble, Fn, i32, op, simd, v128, type Local } from './asm.js';
import { forwardLayout, type ForwardLayout } from './forward-module.js';
import { f16Consts, layoutOf, lanes, widenF16 } from './emit.js';

export interface DecodeLayout {
  /** The forward module's layout for (Dp, R4, Bc): Q, Sᵀ, O, m, l, α, N. */
  fw: ForwardLayout;
  D: number;
  f16: boolean;
  /** Byte offsets of K_j (f64 rows), V_j (f32 rows) and the staged K_j and V_j (`stage` elements each). */
  K: number;
  V: number;
  stageK: number;
  stageV: number;
  bytes: number;
}

/** The layout for head dim D (Dp = D rounded up to 4), R4 query rows, Bc keys, and `stage` staged elements of K (and of V). */
export function decodeLayout(D: number, R4: number, Bc: number, f16: boolean, stage: number): DecodeLayout {
  const Dp = Math.ceil(D / 4) * 4;
  const fw = forwardLayout(Dp, R4, Bc);
  const { take, at } = layoutOf(Dp);
  take(fw.bytes);
  const es = f16 ? 2 : 4;
  const K = take((Bc + 1) * fw.ldq * 8);
  const V = take(Bc * fw.ld * 4);
  // 4 elements more: the last row's last 4-element load may reach past D
  const stageK = take((stage + 4) * es);
  const stageV = take((stage + 4) * es);
  return { fw, D, f16, K, V, stageK, stageV, bytes: at() };
}

/**
 * The `tile` module: it imports the memory of the decode kernel's forward module (m.mem). tile(n, kb, vb,
 * stride): the n staged rows of K from byte kb and of V from byte vb, `stride` bytes apart.
 */
export function decodeTileModule(lay: DecodeLayout): Uint8Array {
  const { Dp, ldq, ld } = lay.fw;
  const es = lay.f16 ? 2 : 4;
  const f = new Fn('tile', [i32, i32, i32, i32], []);
  const [n, kb, vb, stride] = f.params;
  const c = f.local(i32); // key index
  const x = f.local(i32); // element index in the row
  const sa = f.local(i32); // byte offset of the staged element
  const ka = f.local(i32); // byte offset of the K element
  const va = f.local(i32); // byte offset of the V element
  const kRow = f.local(i32); // byte offsets of staged row c of K and of V
  const vRow = f.local(i32);
  const h = f.local(v128);
  const y = f.local(v128);
  const tail = f.local(v128);
  const consts = lay.f16 ? f16Consts(f) : undefined;
  // The lanes of the last 4 columns that are < D (a staged row may be followed by other rows' elements).
  const full = lay.D % 4 === 0 ? Dp : Dp - 4;
  f.i32(-1).simd(simd.i32x4_splat).set(tail);
  for (let lane = lay.D % 4 || 4; lane < 4; lane++) f.get(tail).i32(0).simd(simd.i32x4_replace_lane, lane).set(tail);
  /** Pushes the f32x4 of columns x..x+3 of the row staged at byte `row` (f16 widened; `masked`: columns from D on 0). */
  const load = (row: Local, masked: boolean) => {
    f.get(row).get(x).i32(es).op(op.i32mul).op(op.i32add).set(sa);
    if (!lay.f16) {
      f.get(sa).memSimd(simd.load, 0, 2);
    } else {
      f.get(sa).memSimd(simd.load16x4_u, 0, 1).set(h);
      widenF16(f, consts!, h, y);
    }
    if (masked) f.get(tail).simd(simd.v128_and);
  };
  /** Columns x..x+3 of row c: K to f64 (two f64x2), V to f32. */
  const columns = (masked: boolean) => {
    f.get(c).i32(ldq * 8).op(op.i32mul).get(x).i32(3).op(op.i32shl).op(op.i32add).set(ka);
    f.get(c).i32(ld * 4).op(op.i32mul).get(x).i32(2).op(op.i32shl).op(op.i32add).set(va);
    load(kRow, masked);
    f.set(y);
    f.get(ka).get(y).simd(simd.f64x2_promote_low_f32x4).memSimd(simd.store, lay.K, 3);
    f.get(ka).get(y).get(y).simd(simd.shuffle, ...lanes(2, 3, 0, 1)).simd(simd.f64x2_promote_low_f32x4).memSimd(simd.store, lay.K + 16, 3);
    f.get(va);
    load(vRow, masked);
    f.memSimd(simd.store, lay.V, 2);
  };
  f.get(kb).set(kRow);
  f.get(vb).set(vRow);
  f.for(c, () => f.i32(0), () => f.get(n), 1, () => {
    f.for(x, () => f.i32(0), () => f.i32(full), 4, () => columns(false));
    if (full < Dp) {
      f.i32(full).set(x);
      columns(true);
    }
    f.get(kRow).get(stride).op(op.i32add).set(kRow);
    f.get(vRow).get(stride).op(op.i32add).set(vRow);
  });
  return assemble([], [f], Math.ceil(lay.bytes / 65536), 'm');
}
