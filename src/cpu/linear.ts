/**
 * The cpu backend's matrix-product kernel, for the nn ops (src/nn/cpu/ops.ts) on the same worker threads
 * as attention: f32 or f16 in memory and f64 in registers; the packed path's 4×4 micro-kernel runs in
 * WebAssembly SIMD where the runtime has it (wasm/linear.ts: the same bits, 4× the JavaScript loop's
 * rate on one core of the 2-core VM), else in JavaScript (microKernel).
 *
 * linearTask: y = act(x·Wᵀ + b) (+ r), x (M, K) → y (M, N) with W (N, K), act none, ReLU or GELU (tanh
 *   approximation), r an optional residual (M, N) added last. One task owns a block of MB rows of x and
 *   NB columns of y (several column blocks where there are few row blocks, as in single-token decode, so
 *   that every thread has work): it packs its rows into f64 (the thread's scratch, or the WebAssembly
 *   module's memory: LinearKernel), four rows interleaved
 *   (xp[g·4K + 4k + i] = x[4g + i][k]), then for each group of four rows of W packs those the same way (wp[4k + j] = W[n + j][k]) and runs a
 *   4×4 register-blocked micro-kernel over k for every row group: each step loads 4 + 4 doubles from two
 *   contiguous streams for 16 multiply-adds. The packed x block (MB·K doubles) stays in L2 and the packed
 *   W group (4·K) in L1. Tails (M, N not multiples of 4) are packed as zeros and not stored.
 *   Scratch per thread: (MB + 4)·K + 4·MB f64 (the tiles of the row groups).
 */
import { f16ToNumber, numberToF16 } from '../f16.js';
/** f32 values, or f16 bits. */
export type HostData = Float32Array | Uint16Array;

export interface LinearShape {
  M: number;
  N: number;
  K: number;
  /** Rows of x per task (a multiple of 4). */
  MB: number;
  /** Columns of y per task (a multiple of 4). */
  NB: number;
  activation: Activation;
  /** y gets r (M, N) added after the activation. */
  residual: boolean;
}

/** What linear applies to x·Wᵀ + b: nothing, ReLU, or GELU with the tanh approximation (GPT-2's). */
export type Activation = 'none' | 'relu' | 'gelu';

/** √(2/π), GELU's tanh approximation: 0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³))). */
export const GELU_C = Math.sqrt(2 / Math.PI);

export function gelu(v: number): number {
  return 0.5 * v * (1 + Math.tanh(GELU_C * (v + 0.044715 * v * v * v)));
}

function activate(activation: Activation, v: number): number {
  return activation === 'relu' ? (v < 0 ? 0 : v) : activation === 'gelu' ? gelu(v) : v;
}

export interface LinearArrays {
  x: HostData;
  w: HostData;
  b: HostData;
  y: HostData;
  r?: HostData;
}

export function linearTasks(s: LinearShape): number {
  return Math.ceil(s.M / s.MB) * Math.ceil(s.N / s.NB);
}

/** f64 elements of scratch each thread needs: x's rows, a W group, and the row groups' 4×4 tiles. */
export function linearScratch(s: LinearShape): number {
  return (s.MB + 4) * s.K + 4 * s.MB;
}

/**
 * Rows of x per task: about one row block per thread, 16 to 64 rows each (linearColumnBlock adds column
 * blocks where that leaves fewer than two tasks a thread). Each row block packs all of W again, so fewer
 * and taller blocks pay less for it: GPT-2's 128-token prefill on 2 threads went from 32 rows (4 blocks)
 * to 64 with the WebAssembly micro-kernel, 1.05–1.4 s against 1.2–1.5.
 */
export function linearRowBlock(M: number, threads: number): number {
  return Math.min(64, Math.max(16, 4 * Math.ceil(M / (4 * threads))));
}

/** Columns of y per task: all of them, unless there are fewer row blocks than twice the threads. */
export function linearColumnBlock(M: number, N: number, MB: number, threads: number): number {
  const columnBlocks = Math.max(1, Math.ceil((2 * threads) / Math.ceil(M / MB)));
  return 4 * Math.ceil(N / (4 * columnBlocks));
}

/** dst[d + step·k] = src[o + k] for k < K (step 4: a row into its lane of a 4-interleaved pack). */
function packRow(dst: Float64Array, d: number, src: HostData, o: number, K: number, step = 4): void {
  if (src instanceof Uint16Array) {
    for (let k = 0; k < K; k++) dst[d + step * k] = f16ToNumber(src[o + k]);
  } else {
    for (let k = 0; k < K; k++) dst[d + step * k] = src[o + k];
  }
}

function zeroLane(dst: Float64Array, d: number, K: number): void {
  for (let k = 0; k < K; k++) dst[d + 4 * k] = 0;
}

export function store(y: HostData, i: number, v: number): void {
  y[i] = y instanceof Uint16Array ? numberToF16(v) : v;
}

/**
 * tile[to + 4i + j] = Σ_k xp[ia + 4k + i] · wp[wo + 4k + j]: the 4×4 micro-kernel over packed rows. A
 * function of its own so that V8 optimises it whole once, rather than the loop alone and then again around it.
 */
function microKernel(xp: Float64Array, ia: number, wp: Float64Array, wo: number, K: number, tile: Float64Array, to: number): void {
  let c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
  let c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
  for (let k = 0, ib = wo; k < K; k++, ia += 4, ib += 4) {
    const a0 = xp[ia], a1 = xp[ia + 1], a2 = xp[ia + 2], a3 = xp[ia + 3];
    const b0 = wp[ib], b1 = wp[ib + 1], b2 = wp[ib + 2], b3 = wp[ib + 3];
    c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
    c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
    c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
    c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
  }
  tile[to] = c00; tile[to + 1] = c01; tile[to + 2] = c02; tile[to + 3] = c03;
  tile[to + 4] = c10; tile[to + 5] = c11; tile[to + 6] = c12; tile[to + 7] = c13;
  tile[to + 8] = c20; tile[to + 9] = c21; tile[to + 10] = c22; tile[to + 11] = c23;
  tile[to + 12] = c30; tile[to + 13] = c31; tile[to + 14] = c32; tile[to + 15] = c33;
}

/**
 * Rows of x up to which a task reads W in place (linearRows) instead of packing it: packing a group of
 * four W rows costs about what the 4×4 kernel then does with it, and with one or two rows of x (single-
 * token decode) most of that kernel's products are of zeros. Measured through the ops on 2 threads (f32,
 * K = 768, 2026-12-05), in place against packed, ms a call: N = 3072, M = 4: 3.4–3.9 / 4.4–4.8; M = 6: 5.0 /
 * 7.4; M = 8: 6.2 / 6.9; N = 50257 (GPT-2's logits), M = 4: 50 / 68–71; M = 6: 76 / 102; M = 8: 98 / 100.
 */
export const DIRECT_ROWS = 8;

/**
 * y rows m0 .. m0 + rows − 1, columns [n0, n1), with W read where it is. In WebAssembly (kernel.direct,
 * wasm/linear.ts's dots) x's rows and eight W rows at a time are copied into the module's memory (f16
 * widened to f32 there), and each product is summed in f32 over four lanes of k, the lanes then in f64: a
 * decode step's linears are bound by reading W, which that does at the copy's speed. In JavaScript (no SIMD)
 * each x row is widened to f64 once (scratch), then eight W rows at a time are dotted with it (eight sums
 * in flight: 1.25× four's speed), every sum over k in order, in f64, as the packed kernel sums.
 */
function linearRows(s: LinearShape, a: LinearArrays, m0: number, rows: number, n0: number, n1: number, scratch: Float64Array, kernel: LinearKernel): void {
  const { N, K, activation } = s;
  const r = s.residual ? a.r : undefined;
  const put = (m: number, n: number, sum: number) => {
    const e = m * N + n;
    const v = activate(activation, sum + at(a.b, n));
    store(a.y, e, r ? v + at(r, e) : v);
  };
  if (kernel.direct) {
    const dots = kernel.direct(a.x, m0, rows, a.w);
    for (let n = n0; n < n1; n += 8) {
      const count = Math.min(8, n1 - n);
      const d = dots(n, count);
      for (let i = 0; i < rows; i++) for (let j = 0; j < count; j++) put(m0 + i, n + j, d[8 * i + j]);
    }
    return;
  }
  const x = scratch.subarray(0, rows * K);
  for (let i = 0; i < rows; i++) packRow(x, i * K, a.x, (m0 + i) * K, K, 1);
  // Eight W rows at a time against every x row, so that each W row is read from memory once.
  let n = n0;
  for (; n + 8 <= n1; n += 8) {
    for (let i = 0; i < rows; i++) {
      const d = a.w instanceof Uint16Array ? dot8F16(x, i * K, a.w, n * K, K) : dot8F32(x, i * K, a.w, n * K, K);
      for (let j = 0; j < 8; j++) put(m0 + i, n + j, d[j]);
    }
  }
  for (; n < n1; n++) {
    for (let i = 0; i < rows; i++) {
      let sum = 0;
      for (let k = 0, xo = i * K, o = n * K; k < K; k++, o++) sum += x[xo + k] * at(a.w, o);
      put(m0 + i, n, sum);
    }
  }
}

const DOT8 = new Float64Array(8);

/** The dot products of x's K elements from xo with the eight f32 rows of w from element o (K each), in DOT8. */
function dot8F32(x: Float64Array, xo: number, w: Float32Array, o: number, K: number): Float64Array {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  const [o1, o2, o3, o4, o5, o6, o7] = [o + K, o + 2 * K, o + 3 * K, o + 4 * K, o + 5 * K, o + 6 * K, o + 7 * K];
  for (let k = 0; k < K; k++) {
    const xk = x[xo + k];
    s0 += xk * w[o + k]; s1 += xk * w[o1 + k]; s2 += xk * w[o2 + k]; s3 += xk * w[o3 + k];
    s4 += xk * w[o4 + k]; s5 += xk * w[o5 + k]; s6 += xk * w[o6 + k]; s7 += xk * w[o7 + k];
  }
  DOT8[0] = s0; DOT8[1] = s1; DOT8[2] = s2; DOT8[3] = s3; DOT8[4] = s4; DOT8[5] = s5; DOT8[6] = s6; DOT8[7] = s7;
  return DOT8;
}

/** dot8F32 for f16 rows (bits). */
function dot8F16(x: Float64Array, xo: number, w: Uint16Array, o: number, K: number): Float64Array {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  const [o1, o2, o3, o4, o5, o6, o7] = [o + K, o + 2 * K, o + 3 * K, o + 4 * K, o + 5 * K, o + 6 * K, o + 7 * K];
  for (let k = 0; k < K; k++) {
    const xk = x[xo + k];
    s0 += xk * f16ToNumber(w[o + k]); s1 += xk * f16ToNumber(w[o1 + k]); s2 += xk * f16ToNumber(w[o2 + k]); s3 += xk * f16ToNumber(w[o3 + k]);
    s4 += xk * f16ToNumber(w[o4 + k]); s5 += xk * f16ToNumber(w[o5 + k]); s6 += xk * f16ToNumber(w[o6 + k]); s7 += xk * f16ToNumber(w[o7 + k]);
  }
  DOT8[0] = s0; DOT8[1] = s1; DOT8[2] = s2; DOT8[3] = s3; DOT8[4] = s4; DOT8[5] = s5; DOT8[6] = s6; DOT8[7] = s7;
  return DOT8;
}

/**
 * Where a task packs its rows and how it multiplies them (JavaScript's microKernel, or the WebAssembly
 * module of wasm/linear.ts on its memory): xp holds groups·4·K f64 from element xo (rows four-interleaved),
 * packW puts a group of four W rows beside it (interleaved the same way), and `tiles(groups)` leaves
 * the 4×4 tile of row group g in tile[to + 16g ..] (Σ over k in order, in f64: the same bits either way).
 */
export interface LinearKernel {
  xp: Float64Array;
  xo: number;
  tile: Float64Array;
  to: number;
  tiles(groups: number): void;
  /** Pack W's rows n .. n + cols − 1 (cols ≤ 4) into wp, zero lanes past them. */
  packW(w: HostData, n: number, cols: number): void;
  /**
   * For rows of x few enough to read W in place (linearRows): stage x's rows m0 .. m0 + rows − 1 and give
   * a function of W's rows n .. n + count − 1 (count ≤ 8) that returns their dot products with the staged
   * rows, d[8i + j]. Absent (JavaScript's kernel): linearRows' own loop.
   */
  direct?(x: HostData, m0: number, rows: number, w: HostData): (n: number, count: number) => Float64Array;
}

/** The JavaScript kernel on a thread's scratch ((MB + 4)·K + 4·MB f64, linearScratch). */
function jsKernel(s: LinearShape, scratch: Float64Array): LinearKernel {
  const { MB, K } = s;
  const [wo, to] = [MB * K, (MB + 4) * K];
  return {
    xp: scratch,
    xo: 0,
    tile: scratch,
    to,
    tiles: (groups) => {
      for (let g = 0; g < groups; g++) microKernel(scratch, g * 4 * K, scratch, wo, K, scratch, to + 16 * g);
    },
    packW: (w, n, cols) => {
      for (let j = 0; j < 4; j++) {
        if (j < cols) packRow(scratch, wo + j, w, (n + j) * K, K);
        else zeroLane(scratch, wo + j, K);
      }
    },
  };
}

export function linearTask(s: LinearShape, a: LinearArrays, t: number, scratch: Float64Array, kernel: LinearKernel = jsKernel(s, scratch)): void {
  const { M, N, K, activation } = s;
  const r = s.residual ? a.r : undefined;
  const columnBlocks = Math.ceil(N / s.NB);
  const m0 = Math.floor(t / columnBlocks) * s.MB;
  const n0 = (t % columnBlocks) * s.NB;
  const n1 = Math.min(N, n0 + s.NB);
  const rows = Math.min(s.MB, M - m0);
  if (rows <= DIRECT_ROWS) return linearRows(s, a, m0, rows, n0, n1, scratch, kernel);
  const groups = Math.ceil(rows / 4);
  const { xp, xo, tile, to } = kernel;
  for (let r = 0; r < groups * 4; r++) {
    const d = xo + (r >> 2) * 4 * K + (r & 3);
    if (r < rows) packRow(xp, d, a.x, (m0 + r) * K, K);
    else zeroLane(xp, d, K);
  }
  const bias = new Float64Array(4);
  for (let n = n0; n < n1; n += 4) {
    const cols = Math.min(4, n1 - n);
    kernel.packW(a.w, n, cols);
    for (let j = 0; j < cols; j++) bias[j] = at(a.b, n + j);
    kernel.tiles(groups);
    for (let g = 0; g < groups; g++) {
      const m = m0 + 4 * g;
      for (let i = 0; i < 4 && m + i < M; i++) {
        for (let j = 0; j < cols; j++) {
          const e = (m + i) * N + n + j;
          const v = activate(activation, tile[to + 16 * g + 4 * i + j] + bias[j]);
          store(a.y, e, r ? v + at(r, e) : v);
        }
      }
    }
  }
}

export function at(t: HostData, i: number): number {
  return t instanceof Uint16Array ? f16ToNumber(t[i]) : t[i];
}

