/**
 * The variants (src/modifiers.ts) in the WebAssembly kernels: hooks that forward.ts and backward.ts call
 * between a module's functions, in JavaScript over the module's memory, with the semantics of flash.ts's
 * hooks (modifySegment, dropoutRow, the soft-cap's derivative and dS for dbias). Soft-cap and ALiBi, which
 * change every score, run in the module itself (score-mod.ts's modify, before scoreHook); the rest here:
 *
 *   scoreHook    after qk (forward) or scores (backward), on a tile that is not EMPTY: each row's segment
 *                of the band (keys before it −∞, N[r] = its end: the keys the generated functions let the
 *                row see; 0 for a row past the tile, one that saw no key in the forward, or one the band
 *                leaves out), and on it the bias and the element rules (mask, block mask; none on a FULL
 *                tile) through modifyRow, written back rounded to f32. Without a bias or element rules only
 *                the segment's ends are written: inside it the band keeps every key.
 *   dropoutHook  forward, after softmax: P̃ ∘ Z before pv (l was summed without it), Z from dropoutRow,
 *                the same counter-based hash as flash.ts and the WGSL; rows that saw nothing (N = 0) skip.
 *   dPHook       backward, before ds, with dropout: dP ∘ Z − D in place of dP (dp ran with D = 0).
 *   dSHook       backward, after ds ran with scale 1: dS written for dbias where asked, then dS times the
 *                scale and the soft-cap's derivative (the module's dcap panels) for dQ and dK, and P ∘ Z.
 * A row's keys are at F[S + (r >> 2)·panel + 4c + (r & 3)] (Sᵀ panels of 4 rows, key-major). A thread
 * allocates its buffers once per job: a row's logits (Bc f64) and, with dropout, the tile's multipliers
 * (Br×Bc f64, which the backward uses twice).
 */
import { FULL, at, bandHi, bandLo, dropoutRow, modifyRow, scoreModifiers, type Modifiers, type TileClass } from '../../modifiers.js';
import type { TaskMods } from '../flash.js';
import type { ScoreMods } from './score-mod.js';

/** Where a tile lives in a module's memory: f32 and i32 views and element offsets. */
export interface TileMemory {
  F: Float32Array;
  I: Int32Array;
  /** f32 element of the first Sᵀ panel, and from one panel to the next. */
  S: number;
  panel: number;
  /** i32 element of N[0]. */
  N: number;
  /** f32 element of the soft-cap's derivative's first panel (backward, with the soft-cap). */
  dcap?: number;
}

/** One tile's position: head (b, h), query rows [r0, r0 + rows), keys [c0, c0 + cols), its class. */
export interface TileAt {
  b: number;
  h: number;
  r0: number;
  rows: number;
  c0: number;
  cols: number;
  tile: TileClass;
}

/** The variants of a task as the hooks use them, with a thread's buffers. */
export interface VariantRows {
  mods: TaskMods;
  /** What the module's modify does (soft-cap, ALiBi). */
  score: ScoreMods;
  /** The modifiers left to scoreHook on PARTIAL and FULL tiles: those less the module's and the band (the segment is the band). */
  partial: Modifiers;
  full: Modifiers;
  /** Does scoreHook run modifyRow on PARTIAL / FULL tiles (a bias, element rules), or only cut the segment? */
  perPartial: boolean;
  perFull: boolean;
  dropout: boolean;
  rows: Float64Array;
  z: Float64Array;
  Bc: number;
}

export function variantRows(mods: TaskMods, Br: number, Bc: number): VariantRows {
  const m = mods.m;
  const score = { softcap: m.softcap !== undefined, alibi: m.alibi !== undefined };
  const partial: Modifiers = { ...m, band: undefined, softcap: undefined, alibi: undefined };
  const full = scoreModifiers(partial);
  const dropout = m.dropout !== undefined;
  return {
    mods, score, partial, full, dropout, Bc,
    perPartial: partial.bias !== undefined || partial.mask !== undefined || partial.blockMask !== undefined,
    perFull: full.bias !== undefined,
    rows: new Float64Array(Bc),
    z: new Float64Array(dropout ? Br * Bc : 0),
  };
}

/**
 * The band's segment, the bias and the element rules of a tile (not EMPTY) on its Sᵀ panels, after the
 * module's modify; N[r] for every row of rows4. `seesNothing(r)`: a row the backward leaves out (L = −∞).
 */
export function scoreHook(v: VariantRows, m: TileMemory, t: TileAt, rows4: number, Nq: number, Nk: number, seesNothing?: (r: number) => boolean): void {
  const { F, I, S, panel, N } = m;
  const band = t.tile === FULL ? undefined : v.mods.m.band;
  const per = t.tile === FULL ? v.perFull : v.perPartial;
  const mods = t.tile === FULL ? v.full : v.partial;
  const row = v.rows;
  // A bias and nothing else per element: added straight to the panel.
  const bias = per && mods.mask === undefined && mods.blockMask === undefined ? mods.bias : undefined;
  for (let r = 0; r < rows4; r++) {
    if (r >= t.rows || seesNothing?.(r)) {
      I[N + r] = 0;
      continue;
    }
    const i = t.r0 + r;
    let lo = 0;
    let hi = t.cols;
    if (band) {
      lo = Math.max(0, bandLo(band, i, Nk - Nq) - t.c0);
      hi = Math.min(t.cols, bandHi(band, i, Nk - Nq) + 1 - t.c0);
      if (hi <= lo) {
        I[N + r] = 0;
        continue;
      }
    }
    const p = S + (r >> 2) * panel + (r & 3);
    for (let c = 0; c < lo; c++) F[p + 4 * c] = -Infinity;
    if (per && bias) {
      // modifyRow's one step here (the bias), on the panel without a copy: the same sum, rounded once
      const o = at(bias.index, t.b, t.h, i, t.c0);
      const sj = bias.index.strides[3];
      const values = v.mods.bias!;
      for (let c = lo; c < hi; c++) F[p + 4 * c] += values[o + c * sj];
    } else if (per) {
      for (let c = lo; c < hi; c++) row[c] = F[p + 4 * c];
      modifyRow(mods, t.b, t.h, i, t.c0 + lo, hi - lo, row, lo, Nq, Nk, v.mods.bias);
      for (let c = lo; c < hi; c++) F[p + 4 * c] = row[c];
    }
    I[N + r] = hi;
  }
}

/** Forward: P̃ ∘ Z on the panels of rows that see keys (N[r] > 0), bh = b·H + h. */
export function dropoutHook(v: VariantRows, m: TileMemory, t: TileAt, bh: number): void {
  const { F, I, S, panel, N } = m;
  const Z = v.z;
  for (let r = 0; r < t.rows; r++) {
    const n = I[N + r];
    if (n === 0) continue;
    dropoutRow(v.mods.m, bh, t.r0 + r, t.c0, n, Z, 0);
    const p = S + (r >> 2) * panel + (r & 3);
    for (let c = 0; c < n; c++) F[p + 4 * c] *= Z[c];
  }
}

/**
 * Backward, with dropout: dP (on the dP panels at element dP, dp run with D = 0) becomes dP ∘ Z − D for
 * the rows that see keys; Z kept per row for dSHook. D: f64 view and the element of row 0's D.
 */
export function dPHook(v: VariantRows, m: TileMemory, t: TileAt, dP: number, bh: number, D: Float64Array, d0: number): void {
  const { F, I, panel, N } = m;
  const { Bc } = v;
  for (let r = 0; r < t.rows; r++) {
    const n = I[N + r];
    if (n === 0) continue;
    const zr = r * Bc;
    dropoutRow(v.mods.m, bh, t.r0 + r, t.c0, n, v.z, zr);
    const p = dP + (r >> 2) * panel + (r & 3);
    const Dr = D[d0 + r];
    for (let c = 0; c < n; c++) F[p + 4 * c] = F[p + 4 * c] * v.z[zr + c] - Dr;
  }
}

/** Does the backward need dSHook (ds then runs with scale 1)? */
export function needsDSHook(v: VariantRows, dS: Float32Array | undefined): boolean {
  return v.dropout || v.score.softcap || dS !== undefined;
}

/**
 * Backward, after ds ran with scale 1 (P on the panels at m.S, dS = P ∘ (dP − D) on those at dP): dS into
 * `dSAll` (B, H, Nq, Nk) and P into `PAll` where asked, then scale · dS times the soft-cap's derivative,
 * and P ∘ Z.
 */
export function dSHook(
  v: VariantRows,
  m: TileMemory,
  t: TileAt,
  dP: number,
  scale: number,
  H: number,
  Nq: number,
  Nk: number,
  dSAll: Float32Array | undefined,
  PAll: Float32Array | undefined,
): void {
  const { F, I, S, panel, N, dcap } = m;
  const { Bc } = v;
  for (let r = 0; r < t.rows; r++) {
    const n = I[N + r];
    if (n === 0) continue;
    const o = (r >> 2) * panel + (r & 3);
    if (dSAll) {
      const dso = ((t.b * H + t.h) * Nq + t.r0 + r) * Nk + t.c0;
      for (let c = 0; c < n; c++) dSAll[dso + c] = F[dP + o + 4 * c];
      for (let c = 0; c < n; c++) PAll![dso + c] = F[S + o + 4 * c];
    }
    if (dcap !== undefined) for (let c = 0; c < n; c++) F[dP + o + 4 * c] *= scale * F[dcap + o + 4 * c];
    else for (let c = 0; c < n; c++) F[dP + o + 4 * c] *= scale;
    if (v.dropout) {
      const sr = r * Bc;
      for (let c = 0; c < n; c++) F[S + o + 4 * c] *= v.z[sr + c];
    }
  }
}
