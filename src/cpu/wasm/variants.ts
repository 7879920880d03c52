/**
 * The variants (src/modifiers.ts) in the WebAssembly kernels: hooks that forward.ts and backward.ts call
 * between a module's functions, in JavaScript over the module's memory, so the generated modules stay
 * those of plain attention (their bytes unchanged) and the semantics stay flash.ts's, hook for hook:
 *
 *   scoreHook    after qk (forward) or scores (backward), on a tile that is not EMPTY: each row's keys of
 *                the Sᵀ panels (f32) through flash.ts's modifySegment (the band's segment, soft-cap, ALiBi,
 *                bias, the element rules; none of those on a FULL tile), written back rounded to f32, and
 *                N[r] = the segment's end, the keys the generated functions let the row see (0: a row past
 *                the tile, one that saw no key in the forward, or one the band leaves out). A FULL tile
 *                without a score modifier only sets N. With `dcap` it keeps the soft-cap's derivative.
 *   dropoutHook  forward, after softmax: P̃ ∘ Z before pv (l was summed without it), Z from dropoutRow,
 *                the same counter-based hash as flash.ts and the WGSL; rows that saw nothing (N = 0) skip.
 *   dPHook       backward, before ds, with dropout: dP ∘ Z − D in place of dP (dp ran with D = 0).
 *   dSHook       backward, after ds ran with scale 1: dS written for dbias where asked, then dS times the
 *                scale and the soft-cap's derivative for dQ and dK, and P ∘ Z for dV.
 * A row's keys are at F[S + (r >> 2)·panel + 4c + (r & 3)] (Sᵀ panels of 4 rows, key-major). The rows of
 * one tile use a Br×Bc f64 buffer (the modified logits, then the soft-cap's derivatives and the dropout
 * multipliers in two more), which a thread allocates once per job.
 */
import { FULL, dropoutRow, scoreModifiers, type TileClass } from '../../modifiers.js';
import { modifySegment, type TaskMods } from '../flash.js';

/** Where a tile lives in a module's memory: f32 and i32 views and element offsets. */
export interface TileMemory {
  F: Float32Array;
  I: Int32Array;
  /** f32 element of the first Sᵀ panel, and from one panel to the next. */
  S: number;
  panel: number;
  /** i32 element of N[0]. */
  N: number;
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

/** The variants of a task as the hooks use them, with a thread's row buffers (Br×Bc f64 each). */
export interface VariantRows {
  mods: TaskMods;
  /** Does the call change scores (soft-cap, ALiBi, bias), not only drop them? */
  scores: boolean;
  dropout: boolean;
  rows: Float64Array;
  dcap: Float64Array;
  z: Float64Array;
  Bc: number;
}

export function variantRows(mods: TaskMods, Br: number, Bc: number, backward: boolean): VariantRows {
  const full = scoreModifiers(mods.m);
  const scores = full.softcap !== undefined || full.alibi !== undefined || full.bias !== undefined;
  const dropout = mods.m.dropout !== undefined;
  const tile = () => new Float64Array(Br * Bc);
  return {
    mods, scores, dropout, Bc, rows: tile(),
    dcap: backward && mods.m.softcap !== undefined ? tile() : new Float64Array(0),
    z: dropout ? tile() : new Float64Array(0),
  };
}

/**
 * The score modifier and masks of a tile (not EMPTY) on its Sᵀ panels; N[r] for every row of rows4.
 * `seesNothing(r)`: a row the backward leaves out (L = −∞). Nq, Nk: the head's sizes.
 */
export function scoreHook(v: VariantRows, m: TileMemory, t: TileAt, rows4: number, Nq: number, Nk: number, seesNothing?: (r: number) => boolean): void {
  const { F, I, S, panel, N } = m;
  const { Bc } = v;
  const dcap = v.dcap.length ? v.dcap : undefined;
  const touch = t.tile !== FULL || v.scores || dcap !== undefined;
  for (let r = 0; r < rows4; r++) {
    if (r >= t.rows || seesNothing?.(r)) {
      I[N + r] = 0;
      continue;
    }
    if (!touch) {
      I[N + r] = t.cols;
      continue;
    }
    const p = S + (r >> 2) * panel + (r & 3);
    const sr = r * Bc;
    const row = v.rows;
    for (let c = 0; c < t.cols; c++) row[sr + c] = F[p + 4 * c];
    const n = modifySegment(v.mods, t.tile, t.b, t.h, t.r0 + r, t.c0, t.cols, Nq, Nk, row, sr, dcap);
    for (let c = 0; c < n; c++) F[p + 4 * c] = row[sr + c];
    I[N + r] = n;
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
  return v.dropout || v.dcap.length > 0 || dS !== undefined;
}

/**
 * Backward, after ds ran with scale 1 (P on the panels at m.S, dS = P ∘ (dP − D) on those at dP): dS into
 * `dSAll` (B, H, Nq, Nk) where asked, then scale · dS times the soft-cap's derivative, and P ∘ Z.
 */
export function dSHook(v: VariantRows, m: TileMemory, t: TileAt, dP: number, scale: number, H: number, Nq: number, Nk: number, dSAll: Float32Array | undefined): void {
  const { F, I, S, panel, N } = m;
  const { Bc } = v;
  const dcap = v.dcap.length ? v.dcap : undefined;
  for (let r = 0; r < t.rows; r++) {
    const n = I[N + r];
    if (n === 0) continue;
    const o = (r >> 2) * panel + (r & 3);
    const sr = r * Bc;
    if (dSAll) {
      const dso = ((t.b * H + t.h) * Nq + t.r0 + r) * Nk + t.c0;
      for (let c = 0; c < n; c++) dSAll[dso + c] = F[dP + o + 4 * c];
    }
    if (dcap) for (let c = 0; c < n; c++) F[dP + o + 4 * c] *= scale * dcap[sr + c];
    else for (let c = 0; c < n; c++) F[dP + o + 4 * c] *= scale;
    if (v.dropout) for (let c = 0; c < n; c++) F[S + o + 4 * c] *= v.z[sr + c];
  }
}
