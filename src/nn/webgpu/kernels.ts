/**
 * WGSL of the nn ops, generated from typed params (the params object is the pipeline's cache key).
 * Storage is f32 or f16 (`dtype`); arithmetic is f32 always.
 *
 * linear: y = act(x·Wᵀ + b) (+ r), x (M, K), W (N, K) as torch.nn.Linear's weight, y (M, N), act none,
 *   ReLU or GELU (tanh approximation), r an optional residual (M, N).
 *   One workgroup of 256 invocations (16×16) owns a BM×BN tile of y, BM = 16·RM, BN = 64·CN (dispatch x:
 *   tiles along N, y: tiles along M, grid-strided past the dispatch limit). Invocation (tx, ty) owns RM
 *   rows (row quads ty + 16g) by 4·CN columns (column quads tx + 16c), held in RM·CN named vec4<f32>
 *   accumulators (no private array: lavapipe's LLVM compiles those slowly). K runs in BK-deep steps: the
 *   BK×BM slice of x and the BK×BN slice of W are loaded (f32, zero past the edges) into workgroup memory
 *   as vec4s of four consecutive rows, each row of the slice padded by one vec4 so that the stores of
 *   neighbouring k do not fall in one bank; then each k of the step costs RM/4 + CN vec4 loads for
 *   4·RM·CN vec4 multiply-adds. Workgroup memory: 16·BK·(BM/4 + BN/4 + 2) bytes (8.4 KiB for 64×64 at
 *   BK = 16, 8.4 KiB for 128×128 at BK = 8). The bias, the activation and the residual are applied as y is stored.
 * linearRows: the same y for few rows (M ≤ MR, MR ∈ {1, 2, 4, 8}: single-token decode, the LM head of the
 *   last positions), where linear's 64-row tiles would be mostly empty. Matrix-vector products: one
 *   invocation owns one column n of y for every row (MR named f32 accumulators) and runs down row n of W
 *   and the rows of x, four k at a time; WG invocations per workgroup (dispatch x: columns, grid-strided);
 *   no workgroup memory, no barrier. W is read once. (A workgroup of 32 lanes per column with a tree
 *   reduction, coalesced reads of W, ran 2–5× slower on lavapipe, whose barriers are dear: see linearSplit.)
 * linearSplit: linearRows' y on a GPU (not a software adapter): 32 invocations a column, each over a
 *   32nd of K with coalesced reads of W, their sums added in workgroup memory; 8 columns a workgroup.
 *   On an H200 a decode step's GPU work with linearRows was 18 ms at batch 1 (its 73 linears give
 *   768–50257 invocations, each looping over all of K); linearSplit is not yet measured there.
 * layerNorm: y = (v − mean) / sqrt(var + eps) · weight + bias with v = x (+ r), per row of C (biased
 *   variance, as torch.nn.LayerNorm). One workgroup owns a row (dispatch x: rows, grid-strided); its WG
 *   invocations stride over the row three times (sum, centred sum of squares, store: v is re-read rather
 *   than kept, so the row length is free), with tree reductions in workgroup memory (4·WG bytes).
 * embedding: y[m] = wte[tokens[m]] + wpe[positions[m]], rows of C, ids (u32) in one buffer: the M
 *   tokens, then the M positions. One invocation per element of y (dispatch x, grid-strided).
 * copy: dst[dst0 + i] = src[src0 + i] for i < count elements, bit for bit: slice and write (a model's
 *   batch cut into slices and joined again). Both buffers are bound as u32 words, in ranges that start on
 *   the device's storage offset alignment, so src0 and dst0 are element offsets into those ranges, at any
 *   alignment: copyBufferToBuffer needs 4-byte offsets, which rows of an odd number of f16 elements lack.
 *   f32: one invocation per element. f16: one invocation per 32-bit word of dst, which it writes whole,
 *   each half from src or, outside the range (its first and last word), as it was; so no two
 *   invocations write one word. Grid-strided (dispatch x); no workgroup memory.
 */
import { checkWorkgroupBytes, enables, type StorageType } from '../../webgpu/kernels/common.js';
import { reduceWGSL } from '../../webgpu/kernels/standard.js';

export interface LinearParams {
  dtype: StorageType;
  activation: 'none' | 'relu' | 'gelu';
  /** y gets r (M, N) added after the activation (binding 5). */
  residual: boolean;
  /** Rows of y per invocation: 4 or 8. */
  RM: number;
  /** Column quads of y per invocation: 1 or 2. */
  CN: number;
  BK: number;
}

/** Invocations per side of a linear workgroup (16×16 = 256, WebGPU's guaranteed minimum). */
const T = 16;

export function linearTile(p: Pick<LinearParams, 'RM' | 'CN'>): { BM: number; BN: number } {
  return { BM: T * p.RM, BN: T * 4 * p.CN };
}

export function linearWorkgroupBytes(p: Pick<LinearParams, 'RM' | 'CN' | 'BK'>): number {
  const { BM, BN } = linearTile(p);
  return 16 * p.BK * (BM / 4 + 1 + BN / 4 + 1);
}

/** The uniform block of a linear: M, N, K (u32), padded to 16 bytes. */
export function linearDims(M: number, N: number, K: number): ArrayBuffer {
  return new Uint32Array([M, N, K, 0]).buffer;
}

export function linearWGSL(p: LinearParams, workgroupLimit: number): string {
  const { dtype, activation, residual, RM, CN, BK } = p;
  const act = activationWGSL(activation);
  const { BM, BN } = linearTile(p);
  checkWorkgroupBytes('linear', linearWorkgroupBytes(p), workgroupLimit);
  const G = RM / 4; // row quads per invocation
  const acc: { g: number; i: number; c: number }[] = [];
  for (let g = 0; g < G; g++) for (let i = 0; i < 4; i++) for (let c = 0; c < CN; c++) acc.push({ g, i, c });
  const name = ({ g, i, c }: { g: number; i: number; c: number }) => `acc${g}${i}${c}`;
  const lane = ['x', 'y', 'z', 'w'];
  return `${enables(dtype)}
${linearBindingsWGSL(dtype, residual)}
const BM = ${BM}u;
const BN = ${BN}u;
const BK = ${BK}u;
const XQ = ${BM / 4 + 1}u; // vec4s per k in Xs: BM/4 row quads and one of padding
const WQ = ${BN / 4 + 1}u;

var<workgroup> Xs: array<vec4<f32>, ${BK * (BM / 4 + 1)}>; // Xs[kk·XQ + q] = x[m0 + 4q + (0..3)][k0 + kk]
var<workgroup> Ws: array<vec4<f32>, ${BK * (BN / 4 + 1)}>; // Ws[kk·WQ + q] = W[n0 + 4q + (0..3)][k0 + kk]

fn xAt(m: u32, k: u32) -> f32 {
  if (m < u.M && k < u.K) {
    return f32(x[m * u.K + k]);
  }
  return 0.0;
}

fn wAt(n: u32, k: u32) -> f32 {
  if (n < u.N && k < u.K) {
    return f32(w[n * u.K + k]);
  }
  return 0.0;
}

// Entries (row, col .. col+3) of y: the sums plus the bias${activation === 'none' ? '' : `, ${activation}`}${residual ? ', plus r' : ''}, stored where inside y.
fn store(row: u32, col: u32, acc: vec4<f32>) {
  if (row >= u.M) {
    return;
  }
  for (var j = 0u; j < 4u; j++) {
    let n = col + j;
    if (n < u.N) {
      let v = acc[j] + f32(bias[n]);
      y[row * u.N + n] = ${dtype}(${act}${residual ? ' + f32(r[row * u.N + n])' : ''});
    }
  }
}

@compute @workgroup_size(${T * T})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let tx = lid % ${T}u;
  let ty = lid / ${T}u;
  let tilesM = (u.M + BM - 1u) / BM;
  let tilesN = (u.N + BN - 1u) / BN;
  for (var tm = wid.y; tm < tilesM; tm += nwg.y) {
    for (var tn = wid.x; tn < tilesN; tn += nwg.x) {
      let m0 = tm * BM;
      let n0 = tn * BN;
${acc.map((a) => `      var ${name(a)} = vec4<f32>(0.0);`).join('\n')}
      for (var k0 = 0u; k0 < u.K; k0 += BK) {
        for (var e = lid; e < BK * (BM / 4u); e += ${T * T}u) {
          let kk = e % BK;
          let q = e / BK;
          let m = m0 + 4u * q;
          let k = k0 + kk;
          Xs[kk * XQ + q] = vec4<f32>(xAt(m, k), xAt(m + 1u, k), xAt(m + 2u, k), xAt(m + 3u, k));
        }
        for (var e = lid; e < BK * (BN / 4u); e += ${T * T}u) {
          let kk = e % BK;
          let q = e / BK;
          let n = n0 + 4u * q;
          let k = k0 + kk;
          Ws[kk * WQ + q] = vec4<f32>(wAt(n, k), wAt(n + 1u, k), wAt(n + 2u, k), wAt(n + 3u, k));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
${Array.from({ length: G }, (_, g) => `          let a${g} = Xs[kk * XQ + ty + ${16 * g}u];`).join('\n')}
${Array.from({ length: CN }, (_, c) => `          let b${c} = Ws[kk * WQ + tx + ${16 * c}u];`).join('\n')}
${acc.map((a) => `          ${name(a)} += a${a.g}.${lane[a.i]} * b${a.c};`).join('\n')}
        }
        workgroupBarrier();
      }
${acc.map((a) => `      store(m0 + 4u * (ty + ${16 * a.g}u) + ${a.i}u, n0 + 4u * (tx + ${16 * a.c}u), ${name(a)});`).join('\n')}
    }
  }
}
`;
}

export interface LinearRowsParams {
  dtype: StorageType;
  activation: 'none' | 'relu' | 'gelu';
  residual: boolean;
  /** The most rows of x (M ≤ MR): 1, 2, 4 or 8. */
  MR: number;
  WG: number;
}

/** The largest M linearRows takes. */
export const LINEAR_ROWS_MAX = 8;

/** x[row][k .. k+3] (0 past the rows of x and past its columns) and W[n][k .. k+3] (0 past its columns), as vec4s. */
const LOADS_WGSL = `fn x4(row: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (row < u.M) {
    for (var j = 0u; j < 4u && k + j < u.K; j++) {
      v[j] = f32(x[row * u.K + k + j]);
    }
  }
  return v;
}

fn w4(n: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u && k + j < u.K; j++) {
    v[j] = f32(w[n * u.K + k + j]);
  }
  return v;
}`;

/**
 * The linear kernels' uniform block (M, N, K) and bindings: x (M, K), W (N, K), bias (N), y (M, N), and with
 * the residual r (M, N), binding 5.
 */
function linearBindingsWGSL(dtype: StorageType, residual: boolean): string {
  return `struct Dims {
  M: u32,
  N: u32,
  K: u32,
  pad: u32,
}
@group(0) @binding(0) var<uniform> u: Dims;
@group(0) @binding(1) var<storage, read> x: array<${dtype}>;
@group(0) @binding(2) var<storage, read> w: array<${dtype}>;
@group(0) @binding(3) var<storage, read> bias: array<${dtype}>;
@group(0) @binding(4) var<storage, read_write> y: array<${dtype}>;
${residual ? `@group(0) @binding(5) var<storage, read> r: array<${dtype}>;\n` : ''}`;
}

/** The matrix-vector kernels' store of y[row][n] = act(v) (+ r[row][n]), with v = the sum plus bias[n] in scope. */
function storeYWGSL(dtype: StorageType, activation: LinearParams['activation'], residual: boolean): string {
  return `y[row * u.N + n] = ${dtype}(${activationWGSL(activation)}${residual ? ' + f32(r[row * u.N + n])' : ''});`;
}

/** GELU's tanh approximation on v (f32); the argument is clamped where tanh is ±1 in f32 anyway, so that
 * an implementation of tanh through exp cannot overflow to NaN. */
function activationWGSL(activation: LinearParams['activation']): string {
  return { none: 'v', relu: 'max(v, 0.0)', gelu: '0.5 * v * (1.0 + tanh(clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0)))' }[activation];
}

export function linearRowsWGSL(p: LinearRowsParams): string {
  const { dtype, activation, residual, MR, WG } = p;
  const rows = Array.from({ length: MR }, (_, r) => r);
  return `${enables(dtype)}
${linearBindingsWGSL(dtype, residual)}
${LOADS_WGSL}

fn store(row: u32, n: u32, sum: f32) {
  if (row < u.M) {
    let v = sum + f32(bias[n]);
    ${storeYWGSL(dtype, activation, residual)}
  }
}

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  for (var n = gid.x; n < u.N; n += nwg.x * ${WG}u) {
${rows.map((r) => `    var acc${r} = 0.0;`).join('\n')}
    for (var k = 0u; k < u.K; k += 4u) {
      let wk = w4(n, k);
${rows.map((r) => `      acc${r} += dot(x4(${r}u, k), wk);`).join('\n')}
    }
${rows.map((r) => `    store(${r}u, n, acc${r});`).join('\n')}
  }
}
`;
}

export interface LinearSplitParams {
  dtype: StorageType;
  activation: 'none' | 'relu' | 'gelu';
  residual: boolean;
  /** The most rows of x (M ≤ MR): 1, 2, 4 or 8. */
  MR: number;
}

/** linearSplit's workgroup: COLS columns of y, LANES invocations each. */
export const SPLIT_COLS = 8;
export const SPLIT_LANES = 32;

/**
 * linearRows' y with the K of each column split among SPLIT_LANES invocations: lane l runs down k = 4l,
 * 4l + 4·LANES, … of row n of W (neighbouring lanes read neighbouring words: coalesced) and of the rows
 * of x, then the lanes' sums are added in a tree in workgroup memory (4·MR·COLS·LANES bytes). A workgroup
 * owns SPLIT_COLS columns (dispatch x, grid-strided), so N = 768 gives 96 workgroups of 256 invocations
 * where linearRows gives 6 of 128, each invocation looping over all of K: on a GPU, decode's linears are
 * bound by that loop's latency, not by reading W.
 */
export function linearSplitWGSL(p: LinearSplitParams): string {
  const { dtype, activation, residual, MR } = p;
  const rows = Array.from({ length: MR }, (_, r) => r);
  const WG = SPLIT_COLS * SPLIT_LANES;
  return `${enables(dtype)}
${linearBindingsWGSL(dtype, residual)}
const LANES = ${SPLIT_LANES}u;
const COLS = ${SPLIT_COLS}u;

// red[row · WG + column · LANES + lane]: the lanes' partial sums.
var<workgroup> red: array<f32, ${MR * WG}>;

${LOADS_WGSL}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let lane = lid % LANES;
  let col = lid / LANES;
  let blocks = (u.N + COLS - 1u) / COLS;
  for (var blk = wid.x; blk < blocks; blk += nwg.x) {
    let n = blk * COLS + col;
${rows.map((r) => `    var acc${r} = 0.0;`).join('\n')}
    if (n < u.N) {
      for (var k = 4u * lane; k < u.K; k += 4u * LANES) {
        let wk = w4(n, k);
${rows.map((r) => `        acc${r} += dot(x4(${r}u, k), wk);`).join('\n')}
      }
    }
${rows.map((r) => `    red[${r * WG}u + lid] = acc${r};`).join('\n')}
    for (var s = LANES / 2u; s > 0u; s = s / 2u) {
      workgroupBarrier();
      if (lane < s) {
${rows.map((r) => `        red[${r * WG}u + lid] += red[${r * WG}u + lid + s];`).join('\n')}
      }
    }
    workgroupBarrier();
    if (lane == 0u && n < u.N) {
      for (var row = 0u; row < u.M; row++) {
        let v = red[row * ${WG}u + lid] + f32(bias[n]);
        ${storeYWGSL(dtype, activation, residual)}
      }
    }
    workgroupBarrier();
  }
}
`;
}

export interface LayerNormParams {
  dtype: StorageType;
  /** v = x + r (the residual) rather than x. */
  residual: boolean;
  WG: number;
}

/** The uniform block of a layer norm: M, C (u32), eps (f32), padded to 16 bytes. */
export function layerNormDims(M: number, C: number, eps: number): ArrayBuffer {
  const buf = new ArrayBuffer(16);
  new Uint32Array(buf).set([M, C]);
  new Float32Array(buf)[2] = eps;
  return buf;
}

export function layerNormWGSL(p: LayerNormParams): string {
  const { dtype, residual, WG } = p;
  const t = dtype;
  return `${enables(dtype)}
struct Dims {
  M: u32,
  C: u32,
  eps: f32,
  pad: u32,
}
@group(0) @binding(0) var<uniform> u: Dims;
@group(0) @binding(1) var<storage, read> x: array<${t}>;
@group(0) @binding(2) var<storage, read> weight: array<${t}>;
@group(0) @binding(3) var<storage, read> bias: array<${t}>;
@group(0) @binding(4) var<storage, read_write> y: array<${t}>;
${residual ? `@group(0) @binding(5) var<storage, read> r: array<${t}>;
` : ''}
const WG = ${WG}u;

var<workgroup> red: array<f32, ${WG}>;

${reduceWGSL('rowSum', (a, b) => `${a} + ${b}`)}

fn v(i: u32) -> f32 {
  return ${residual ? 'f32(x[i]) + f32(r[i])' : 'f32(x[i])'};
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let C = u.C;
  for (var row = wid.x; row < u.M; row += nwg.x) {
    let o = row * C;
    var sum = 0.0;
    for (var c = lid; c < C; c += WG) {
      sum += v(o + c);
    }
    let mean = rowSum(sum, lid) / f32(C);
    var sq = 0.0;
    for (var c = lid; c < C; c += WG) {
      let d = v(o + c) - mean;
      sq += d * d;
    }
    let inv = 1.0 / sqrt(rowSum(sq, lid) / f32(C) + u.eps);
    for (var c = lid; c < C; c += WG) {
      y[o + c] = ${t}((v(o + c) - mean) * inv * f32(weight[c]) + f32(bias[c]));
    }
  }
}
`;
}

export interface EmbeddingParams {
  dtype: StorageType;
  WG: number;
}

/** The uniform block of an embedding: M, C (u32), padded to 16 bytes. */
export function embeddingDims(M: number, C: number): ArrayBuffer {
  return new Uint32Array([M, C, 0, 0]).buffer;
}

export function embeddingWGSL(p: EmbeddingParams): string {
  const { dtype, WG } = p;
  return `${enables(dtype)}
struct Dims {
  M: u32,
  C: u32,
  pad0: u32,
  pad1: u32,
}
@group(0) @binding(0) var<uniform> u: Dims;
@group(0) @binding(1) var<storage, read> ids: array<u32>; // M tokens, then M positions
@group(0) @binding(2) var<storage, read> wte: array<${dtype}>;
@group(0) @binding(3) var<storage, read> wpe: array<${dtype}>;
@group(0) @binding(4) var<storage, read_write> y: array<${dtype}>;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  for (var i = gid.x; i < u.M * u.C; i += nwg.x * ${WG}u) {
    let m = i / u.C;
    let c = i % u.C;
    y[i] = ${dtype}(f32(wte[ids[m] * u.C + c]) + f32(wpe[ids[u.M + m] * u.C + c]));
  }
}
`;
}

export interface CopyParams {
  dtype: StorageType;
  WG: number;
}

/** The uniform block of a copy: count, src0, dst0 (u32, elements), padded to 16 bytes. */
export function copyDims(count: number, src0: number, dst0: number): ArrayBuffer {
  return new Uint32Array([count, src0, dst0, 0]).buffer;
}

/** The invocations a copy of `count` elements needs (before grid-striding): elements, or words of dst for f16. */
export function copyUnits(dtype: StorageType, count: number, dst0: number): number {
  return dtype === 'f32' ? count : ((dst0 + count + 1) >> 1) - (dst0 >> 1);
}

export function copyWGSL(p: CopyParams): string {
  const { dtype, WG } = p;
  const body =
    dtype === 'f32'
      ? `    dst[u.dst0 + j] = src[u.src0 + j];`
      : `    let w = (u.dst0 >> 1u) + j;
    var word = dst[w];
    for (var h = 0u; h < 2u; h++) {
      let e = 2u * w + h; // element of dst
      if (e >= u.dst0 && e < u.dst0 + u.count) {
        let i = u.src0 + e - u.dst0; // element of src
        let bits = (src[i >> 1u] >> (16u * (i & 1u))) & 0xffffu;
        word = (word & ~(0xffffu << (16u * h))) | (bits << (16u * h));
      }
    }
    dst[w] = word;`;
  return `struct Dims {
  count: u32,
  src0: u32,
  dst0: u32,
  pad: u32,
}
@group(0) @binding(0) var<uniform> u: Dims;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let units = ${dtype === 'f32' ? 'u.count' : '((u.dst0 + u.count + 1u) >> 1u) - (u.dst0 >> 1u)'};
  for (var j = gid.x; j < units; j += nwg.x * ${WG}u) {
${body}
  }
}
`;
}
