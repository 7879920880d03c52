/**
 * The split-KV decode family on the host (kernels/decode.ts): when it runs, how the keys are split over
 * workgroups, and the encoding of its dispatches with what a decode step needs kept between calls (the
 * partials of the splits, uniform buffers, bind groups), so that a warmed-up call creates nothing.
 */
import { modsOf } from './modifiers.js';
import type { Problem } from '../problem.js';
import { problemStrides } from '../problem.js';
import type { Gpu } from './device.js';
import { DECODE_MOD_FLAGS, decodeWGSL, decodeWorkgroupBytes, mergeWGSL, type DecodeParams, type DecodeSizes } from './kernels/decode.js';
import { decodeSubgroupWGSL, decodeSubgroupWorkgroupBytes, type DecodeSubgroupParams } from './kernels/decode-subgroup.js';
import { DECODE_MATRIX_ROWS, decodeMatrixWGSL, decodeMatrixWorkgroupBytes, type DecodeMatrixParams } from './kernels/decode-matrix.js';
import type { StorageType } from './kernels/common.js';
import { modFlags } from './kernels/modifiers.js';
import { pipeline } from './pipelines.js';

/** Most queries per sequence the decode schedule takes (single-token decode up to speculative decoding). */
export const DECODE_MAX_QUERIES = 16;

/** Most query rows (of the G·Nq that share a key/value head) one workgroup owns. */
const DECODE_MAX_ROWS = 16;

/**
 * Keys per block of the portable kernel, best first: on an H200 (bench/variants/decode.ts, D = 128,
 * B = 8, Hkv = 8, Nk = 32768) Bc = 16 read 785 GB/s, Bc = 32 513 GB/s (more workgroups fit an SM).
 */
const DECODE_BLOCKS = [16, 8, 4, 2, 1];

/**
 * Invocations a dispatch of the portable and subgroup-matrix kernels aims for (1024 workgroups of 128):
 * enough to keep every SM of a large GPU (132 on an H200) busy with several workgroups each, so that
 * loads of one overlap the arithmetic of another.
 */
const DECODE_TARGET_INVOCATIONS = 131072;

/**
 * Invocations a dispatch of the reduce-scattered subgroup kernel aims for where its splits come out long
 * (LONG_SPLIT keys or more): 256 workgroups of 256, about two a multiprocessor of a large GPU. On an H200
 * (bench/results/2026-12-05-h200-decode-keys.md; T = 32 lanes a key, U = 8 keys a group at a time),
 * B = 8, Hkv = 8, Nk = 32768 (GQA 4:1) read 3.53 TB/s with 256 workgroups of 256 against 2.68 with 128,
 * 3.48 with 512 and 3.39 with 1024; B = 1, Nk = 131072 3.00 against 2.44, 2.63, 2.19. (With U = 16 keys,
 * which holds twice the K/V rows a lane, 128 workgroups had been best: 3.16 and 2.75.) Shorter problems
 * keep the usual target: with 128 workgroups, B = 8, Nk = 4096 read at 0.84 TB/s, where the plan before
 * the reduce-scattered kernel read 1.26.
 */
const LONG_SPLIT_INVOCATIONS = 65536;

/** Keys a split must have for LONG_SPLIT_INVOCATIONS' plan to be taken. */
const LONG_SPLIT = 4096;

/**
 * Fewest keys a split of the subgroup kernel gets: 4 blocks of its 16 groups of 8 keys, as tuned before
 * the reduce-scattered kernel's groups took 16 keys at a time (a minimum of 4 of those blocks left B = 1,
 * Nk = 4096 with 32 workgroups, at half the speed).
 */
const SUBGROUP_MIN_KEYS = 512;

/** Fewest key blocks a split gets: fewer would spend more on the partials and the merge than they save. */
const DECODE_MIN_BLOCKS_PER_SPLIT = 4;

/** Most splits of one sequence (bounds the partials' memory). */
const DECODE_MAX_SPLITS = 256;

export interface DecodeShape {
  D: number;
  dtype: StorageType;
  /** Query heads per key/value head (H / Hkv). */
  G: number;
  Nq: number;
  causal: boolean;
  cache: boolean;
  paged: boolean;
  /** Element strides of K and V rows, heads and pages are multiples of 4. */
  aligned: boolean;
  /** ... and of 8 (f16 rows load 16 bytes at a time). */
  aligned8?: boolean;
  /** The variants' flags (modsOf; DECODE_MOD_FLAGS only), when the call has some. */
  mods?: string;
  /** Keys a page of a paged cache. */
  pageSize?: number;
}

function invocations(gpu: Gpu, most = 128): number {
  return Math.min(most, gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
}

/** A decode kernel and its configuration (without `split`, which each call sets). */
export type DecodeChoice =
  | { kernel: 'decodeMatrix'; params: Omit<DecodeMatrixParams, 'split'> }
  | { kernel: 'decodeSubgroup'; params: Omit<DecodeSubgroupParams, 'split'> }
  | { kernel: 'decode'; params: Omit<DecodeParams, 'split'> };

/**
 * Query rows per workgroup, threads per workgroup, the keys a split's length is a multiple of, and the
 * workgroups a dispatch aims for (splitPlan's target: the kernel's target invocations over WG).
 */
export function decodeShape(c: DecodeChoice): { R: number; WG: number; block: number; target: number } {
  if (c.kernel === 'decodeMatrix') {
    // Each warp of a workgroup takes a split of its own: the target counts warps.
    return { R: DECODE_MATRIX_ROWS, WG: c.params.W * c.params.SGS, block: DECODE_MATRIX_ROWS, target: DECODE_TARGET_INVOCATIONS / c.params.SGS };
  }
  const shape = c.kernel === 'decode' ? { R: c.params.R, WG: c.params.WG, block: c.params.Bc } : { R: c.params.R, WG: c.params.T * c.params.NG, block: c.params.NG * c.params.U };
  return { ...shape, target: Math.max(1, Math.round(DECODE_TARGET_INVOCATIONS / shape.WG)) };
}

/**
 * The split plan of a call: decodeShape's, or for the reduce-scattered subgroup kernel the plan of
 * LONG_SPLIT_INVOCATIONS where its splits are LONG_SPLIT keys or longer.
 */
export function decodePlan(c: DecodeChoice, B: number, Hkv: number, rows: number, Nk: number): { R: number; rowChunks: number; splits: number; chunk: number } {
  const { R, WG, block, target } = decodeShape(c);
  const rowChunks = Math.ceil(rows / R);
  if (c.kernel === 'decodeSubgroup' && c.params.scatter) {
    const long = splitPlan(B, Hkv, rowChunks, Nk, block, Math.max(1, Math.round(LONG_SPLIT_INVOCATIONS / WG)));
    if (long.chunk >= LONG_SPLIT) return { R, rowChunks, ...long };
  }
  // The subgroup kernel's splits: at least SUBGROUP_MIN_KEYS keys, whatever keys a group takes at a time.
  const minBlocks = c.kernel === 'decodeSubgroup' ? Math.ceil(SUBGROUP_MIN_KEYS / block) : DECODE_MIN_BLOCKS_PER_SPLIT;
  return { R, rowChunks, ...splitPlan(B, Hkv, rowChunks, Nk, block, target, minBlocks) };
}

/** Most floats of q, O and the loaded K/V rows one invocation of the subgroup kernel holds. */
const SUBGROUP_REGISTERS = 320;

/**
 * The subgroup kernel's configuration, where the device has subgroups of one fixed size and K/V rows
 * load as vec4s. From the H200 sweeps (bench/variants/decode.ts; bench/results/2026-12-04-h200-decode.md,
 * 2026-12-04-h200-decode-scatter.md and 2026-12-05-h200-decode-keys.md), f16, D = 128, B = 8, H = 32,
 * Hkv = 8, Nk = 32768:
 * - a group of 4 or more query rows per key/value head (GQA 4:1): the scores reduce-scattered, R = 4 rows
 *   (K and V read once a group), U = 8 keys a group at a time over the most lanes a key (T = 32 where D / 4
 *   is a multiple of 32, else 16: a lane holds the fewest K/V elements), 256 invocations: 3.53 TB/s with
 *   T = 32 (2.99 at B = 1, Nk = 131072), against 3.16 for T = U = 16 (2.75), 2.90 for T = 32, U = 16 and
 *   2.97 for T = 32, U = 4; 3.07 for the all-reduced R = 2, T = 8, U = 8 (which reads K and V twice, the
 *   second time from L2), and 1.1 for the all-reduced R = 4 (4 rows of redundant softmax). At D = 64
 *   (B = 8, Nk = 4096) T = 16, U = 8 read 1.44 TB/s against 1.25 for U = 16;
 * - fewer rows (MHA: R = 1): the scores all-reduced, T = 8, U = 8, R ≤ 2 (4.27 TB/s at B = 32, Nk =
 *   4096, where the scatter with T = U = 16 read 3.0: its lanes load different keys, and one row does not
 *   pay for that);
 * - f16 rows 16 bytes a load where they are aligned to 8 halves and a lane's vec4s pair up: +10 %
 *   (2.99 against 2.73 TB/s, T = U = 8).
 * T otherwise: the fewest of 8, 16, 32 lanes (fewer where D / 4 has no such divisor) whose registers
 * (q and O: 2·R·VPT vec4s, K and V: 2·U·VPT) stay within 320 floats; where none does, the most lanes
 * (the fewest registers). On lavapipe with 128-bit vectors (subgroups of 4) f16 D = 96 took T = 1 before,
 * VPT = 24: its unrolled kernel took lavapipe minutes to compile, against seconds with T = 4.
 */
function subgroupChoice(s: DecodeShape, gpu: Gpu, scatterOnly = false): DecodeChoice | undefined {
  const SGS = gpu.subgroupSize;
  if (!gpu.subgroups || SGS === undefined || !s.aligned || s.D % 4 !== 0) return undefined;
  const D4 = s.D / 4;
  const regs = (T: number, R: number, U: number) => 4 * (2 * R + 2 * U) * (D4 / T);
  const divides = (T: number) => T <= SGS && D4 % T === 0;
  const wide = (T: number) => s.dtype === 'f16' && s.aligned8 === true && (D4 / T) % 2 === 0;
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  // A group's U keys in one page: one block-table lookup for them (splits start at multiples of U but for a window's).
  const pageRun = (U: number) => s.paged && s.pageSize !== undefined && s.pageSize % U === 0 && !modFlags(s.mods).window;
  const fit = (T: number, R: number, U: number, scatter: boolean, WG: number): DecodeChoice | undefined => {
    for (let NG = WG / T; NG >= 1; NG /= 2) {
      const params = { D: s.D, dtype: s.dtype, T, NG, R, U, causal: s.causal, cache: s.cache, paged: s.paged, ...(s.mods && { mods: s.mods }), ...(scatter && { scatter }), ...(wide(T) && { wide: true }), ...(pageRun(U) && { pageRun: true }) };
      if (Number.isInteger(NG) && decodeSubgroupWorkgroupBytes(params) <= limit) return { kernel: 'decodeSubgroup', params };
    }
    return undefined;
  };
  // scatterOnly (DecodeKernels 'scatter'): the reduce-scattered kernel for any rows, over as many lanes as divide D / 4.
  const scatterT = (scatterOnly ? [32, 16, 8, 4, 2, 1] : [32, 16]).find(divides);
  const scatterU = Math.min(8, scatterT ?? 8);
  if ((scatterOnly || s.G * s.Nq >= 4) && scatterT !== undefined && regs(scatterT, 4, scatterU) <= SUBGROUP_REGISTERS) {
    const scatter = fit(scatterT, 4, scatterU, true, invocations(gpu, 256));
    if (scatter) return scatter;
  }
  const R = Math.min(2, 2 ** Math.ceil(Math.log2(s.G * s.Nq)));
  const U = 8;
  const lanes = [8, 16, 32].filter(divides);
  const candidates = lanes.length > 0 ? lanes : [4, 2, 1].filter(divides);
  const T = candidates.find((T) => regs(T, R, U) <= SUBGROUP_REGISTERS) ?? Math.max(...candidates);
  return fit(T, R, U, false, invocations(gpu));
}

/**
 * The subgroup-matrix kernel's configuration, where the adapter has f16→f32 16×16×16 subgroup matrices:
 * f16, D a multiple of 16, vec4 K/V rows, and more than one query row per key/value head (G·Nq ≥ 2:
 * with one row, 15 of a fragment's 16 rows are padding).
 */
function matrixChoice(s: DecodeShape, gpu: Gpu): DecodeChoice | undefined {
  const SGS = gpu.subgroupSize;
  if (!gpu.matrixF16 || SGS === undefined || SGS % 16 !== 0 || s.dtype !== 'f16' || s.D % 16 !== 0 || !s.aligned || s.G * s.Nq < 2) return undefined;
  // Warps per workgroup: the most of 4, 2, 1 whose tiles fit (a warp alone per workgroup ran at a quarter
  // of the speed on an H200: as if one workgroup of this kernel ran per SM at a time).
  const W = [4, 2, 1].find((W) => W * SGS <= invocations(gpu) && decodeMatrixWorkgroupBytes({ D: s.D, W }) <= gpu.limits.maxComputeWorkgroupStorageSize);
  if (W === undefined) return undefined;
  return { kernel: 'decodeMatrix', params: { D: s.D, dtype: 'f16', SGS, W, causal: s.causal, cache: s.cache, paged: s.paged, ...(s.mods && { mods: s.mods }) } };
}

/**
 * Which decode kernels a call may run: 'auto' the subgroup kernel on GPUs and the portable one on
 * software adapters (in Chromium's SwiftShader the subgroup kernel's pages stopped answering; lavapipe
 * runs it, and the tests force it there: 'subgroup'); 'subgroup' and 'matrix' that kernel where it
 * applies (else the portable one; the subgroup-matrix kernel is correct but slower than the subgroup
 * one on an H200, so only tests and measurements ask for it), 'scatter' the subgroup kernel with its
 * scores reduce-scattered whatever the rows, over as many lanes as the subgroup has and D / 4 allows (so
 * that lavapipe's subgroups of 4 run it: tests), 'portable' the portable kernel only.
 */
export type DecodeKernels = 'auto' | 'matrix' | 'subgroup' | 'scatter' | 'portable';

/**
 * The decode kernel for a shape on a device: the subgroup-matrix kernel (kernels/decode-matrix.ts) where
 * `kernels` is 'matrix' and it applies, the subgroup kernel (kernels/decode-subgroup.ts) where it applies
 * and `kernels` allows it, else the portable one (kernels/decode.ts), or undefined where no block of the
 * portable kernel fits the device.
 */
export function decodeChoice(s: DecodeShape, gpu: Gpu, kernels: DecodeKernels = 'auto'): DecodeChoice | undefined {
  const matrix = kernels === 'matrix' ? matrixChoice(s, gpu) : undefined;
  if (matrix) return matrix;
  const sub = kernels === 'subgroup' || kernels === 'scatter' || (kernels === 'auto' && !gpu.software) ? subgroupChoice(s, gpu, kernels === 'scatter') : undefined;
  if (sub) return sub;
  const WG = invocations(gpu);
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const vec = s.aligned && s.D % 4 === 0;
  // Rows: the group's G·Nq up to 16 (a power of two), fewer where a large D leaves no room for them.
  for (let R = Math.min(DECODE_MAX_ROWS, WG, 2 ** Math.ceil(Math.log2(s.G * s.Nq))); R >= 1; R /= 2) {
    const Bc = DECODE_BLOCKS.find((Bc) => decodeWorkgroupBytes({ D: s.D, Bc, R }) <= limit);
    if (Bc !== undefined) {
      const params = { D: s.D, dtype: s.dtype, Bc, R, WG, vec, causal: s.causal, cache: s.cache, paged: s.paged, unroll: !gpu.software, ...(s.mods && { mods: s.mods }) };
      return { kernel: 'decode', params };
    }
  }
  return undefined;
}

/**
 * The decode kernels' flags of a call's variants: '' without any, undefined where the call has one the
 * decode kernels leave to the prefill kernels (bias, mask, block mask, dropout: what a decode step of
 * Mistral- or Gemma-style models needs is the window, the soft-cap and ALiBi).
 */
export function decodeMods(p: Problem): string | undefined {
  const mods = modsOf(p);
  return [...mods].every((f) => DECODE_MOD_FLAGS.includes(f)) ? mods : undefined;
}

/** Whether forward() runs a problem on the decode schedule: few queries, flash, variants it runs, and a kernel that fits. */
export function decodeFits(p: Problem, gpu: Gpu, kernels: DecodeKernels = 'auto'): DecodeChoice | undefined {
  if (p.algorithm !== 'flash' || p.Nq > DECODE_MAX_QUERIES || p.B > gpu.limits.maxComputeWorkgroupsPerDimension) return undefined;
  const mods = decodeMods(p);
  if (mods === undefined) return undefined;
  const s = problemStrides(p);
  const strides = [s.kv.batch, s.kv.row, s.kv.head];
  const aligned = strides.every((x) => x % 4 === 0);
  const aligned8 = strides.every((x) => x % 8 === 0);
  const shape = { D: p.D, dtype: p.dtype as StorageType, G: p.H / p.Hkv, Nq: p.Nq, causal: p.causal, cache: false, paged: false, aligned, aligned8, ...(mods && { mods }) };
  return decodeChoice(shape, gpu, kernels);
}

/**
 * How the keys of a call are split: `splits` splits of `chunk` keys (a multiple of Bc) per sequence, so
 * that B·Hkv·rowChunks·splits approaches the target, each split at least a few blocks long.
 */
export function splitPlan(B: number, Hkv: number, rowChunks: number, Nk: number, Bc: number, target: number, minBlocks = DECODE_MIN_BLOCKS_PER_SPLIT): { splits: number; chunk: number } {
  const blocks = Math.max(1, Math.ceil(Nk / Bc));
  const wanted = Math.max(1, Math.min(DECODE_MAX_SPLITS, Math.floor(target / (B * Hkv * rowChunks))));
  const perSplit = Math.max(minBlocks, Math.ceil(blocks / wanted));
  const splits = Math.ceil(blocks / perSplit);
  return { splits, chunk: perSplit * Bc };
}

/** Where a decode call's keys live: the uniform fields of the K/V addressing. */
export interface KeyLayout {
  kvPage: number;
  kvRow: number;
  kvHead: number;
  pageSize: number;
  maxPages: number;
}

/** The run-time sizes of one decode call. */
export interface DecodeCall {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  /** Keys of every batch row (plain forward), or the longest of them (a cache: each row's own is in `seqs`). */
  Nk: number;
  q: { batch: number; row: number; head: number };
  keys: KeyLayout;
  scale: number;
}

/** The uniform block of a call under a split plan. */
export function decodeSizes(c: DecodeCall, R: number, plan: { splits: number; chunk: number }): DecodeSizes {
  return {
    B: c.B,
    H: c.H,
    Hkv: c.Hkv,
    Nq: c.Nq,
    Nk: c.Nk,
    qBatch: c.q.batch,
    qRow: c.q.row,
    qHead: c.q.head,
    ...c.keys,
    rowChunks: Math.ceil(((c.H / c.Hkv) * c.Nq) / R),
    splits: plan.splits,
    chunk: plan.chunk,
    scale: c.scale,
  };
}

/** Buffers of one decode call: inputs, outputs, and (cache) the rows' slots and lengths and the block table. */
export interface DecodeBuffers {
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  out: GPUBuffer;
  lse: GPUBuffer;
  seqs?: GPUBuffer;
  table?: GPUBuffer;
}

/**
 * What decode calls on one device keep between calls: the splits' partials (grown as needed, never
 * shrunk), and bind groups by the buffers they bind. The queue runs submissions in order, so one call's
 * merge has read the partials before the next call's decode writes them.
 */
export class DecodeScratch {
  private opart?: GPUBuffer;
  private lpart?: GPUBuffer;
  private readonly groups = new Map<string, GPUBindGroup>();
  private readonly ids = new WeakMap<object, number>();
  private nextId = 1;
  /** Bytes of the partials, for the caller's memory accounting. */
  bytes = 0;

  constructor(private readonly device: GPUDevice) {}

  /** Partials for `rows` query rows of `splits` splits of head dim D (f32). */
  partials(rows: number, splits: number, D: number): { opart: GPUBuffer; lpart: GPUBuffer } {
    const obytes = rows * splits * Math.ceil(D / 4) * 16;
    const lbytes = rows * splits * 4;
    if (!this.opart || this.opart.size < obytes || !this.lpart || this.lpart.size < lbytes) {
      // A smaller one it replaces is left to the garbage collector, not destroyed: work queued before may still read it.
      const usage = GPUBufferUsage.STORAGE;
      this.opart = this.device.createBuffer({ size: Math.max(16, obytes, this.opart?.size ?? 0), usage, label: 'decode partial O' });
      this.lpart = this.device.createBuffer({ size: Math.max(16, lbytes, this.lpart?.size ?? 0), usage, label: 'decode partial L' });
      this.bytes = this.opart.size + this.lpart.size;
    }
    return { opart: this.opart, lpart: this.lpart };
  }

  private id(o: object): number {
    let id = this.ids.get(o);
    if (id === undefined) this.ids.set(o, (id = this.nextId++));
    return id;
  }

  /**
   * The bind group of `pipe` with `buffers` at bindings 0, 1, …: kept (made once per set of buffers) when
   * `keep`, as for GPUBuffer tensors that come back call after call; made anew for one-off uploads.
   */
  bindGroup(pipe: GPUComputePipeline, buffers: GPUBuffer[], keep = true): GPUBindGroup {
    return this.group(pipe, 0, new Map(buffers.map((buffer, binding) => [binding, buffer])), keep);
  }

  /** Bind group `index` of `pipe` with the buffers of `bindings` (binding → buffer), kept as bindGroup's. */
  group(pipe: GPUComputePipeline, index: number, bindings: Map<number, GPUBuffer>, keep = true): GPUBindGroup {
    const make = () =>
      this.device.createBindGroup({ layout: pipe.getBindGroupLayout(index), entries: [...bindings].map(([binding, buffer]) => ({ binding, resource: { buffer } })) });
    if (!keep) return make();
    const key = [index, this.id(pipe), ...[...bindings].map(([binding, buffer]) => `${binding}:${this.id(buffer)}`)].join(',');
    let group = this.groups.get(key);
    if (!group) {
      if (this.groups.size >= 256) this.groups.clear(); // callers that bring new buffers every call
      group = make();
      this.groups.set(key, group);
    }
    return group;
  }
}

const SCRATCH = new WeakMap<GPUDevice, DecodeScratch>();

export function decodeScratch(device: GPUDevice): DecodeScratch {
  let s = SCRATCH.get(device);
  if (!s) SCRATCH.set(device, (s = new DecodeScratch(device)));
  return s;
}

/** The pipelines of a decode call: the kernel (split or not) and, split, the merge. */
export interface DecodePipelines {
  decode: GPUComputePipeline;
  /** The merge kernel, where the keys are split. */
  merge?: GPUComputePipeline;
  /** Splits one workgroup of the decode kernel takes (the subgroup-matrix kernel: one per warp). */
  splitsPerGroup: number;
}

export async function decodePipelines(gpu: Gpu, choice: DecodeChoice, split: boolean): Promise<DecodePipelines> {
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const decode =
    choice.kernel === 'decode'
      ? await pipeline(gpu.device, 'decode', { ...choice.params, split }, (x) => decodeWGSL(x, limit))
      : choice.kernel === 'decodeMatrix'
        ? await pipeline(gpu.device, 'decodeMatrix', { ...choice.params, split }, (x) => decodeMatrixWGSL(x, limit))
        : await pipeline(gpu.device, 'decodeSubgroup', { ...choice.params, split }, (x) => decodeSubgroupWGSL(x, limit));
  const splitsPerGroup = choice.kernel === 'decodeMatrix' ? choice.params.W : 1;
  if (!split) return { decode, splitsPerGroup };
  const mp = { D: choice.params.D, dtype: choice.params.dtype, WG: 64 };
  return { decode, merge: await pipeline(gpu.device, 'decodeMerge', mp, mergeWGSL), splitsPerGroup };
}

/** Dispatch sizes for `n` invocations of WG in a flat 1-D index folded over x ≤ 65535 and y. */
export function flatGroups(n: number, WG: number): [number, number] {
  const groups = Math.max(1, Math.ceil(n / WG));
  return [Math.min(groups, 65535), Math.ceil(groups / 65535)];
}

/**
 * Encode a decode call (one compute pass: the decode kernel, then the merge where there are splits).
 * `uniform` holds decodeSizes(call) already (written by the caller with queue.writeBuffer). `mods`: bind
 * group 1 of a kernel compiled with the variants (webgpu/modifiers.ts's modBuffers), kept (DecodeScratch)
 * when `keep`: buffers that serve call after call, as a KV cache's.
 */
export function encodeDecode(
  enc: GPUCommandEncoder,
  scratch: DecodeScratch,
  pipes: DecodePipelines,
  D: number,
  sizes: DecodeSizes,
  uniform: GPUBuffer,
  bufs: DecodeBuffers,
  keep: boolean,
  mods?: { group: Map<number, GPUBuffer>; keep: boolean },
): void {
  const extra = [bufs.seqs, bufs.table].filter((b): b is GPUBuffer => b !== undefined);
  const pass = enc.beginComputePass();
  const grid: [number, number, number] = [Math.ceil(sizes.splits / pipes.splitsPerGroup), sizes.Hkv * sizes.rowChunks, sizes.B];
  if (!pipes.merge) {
    pass.setPipeline(pipes.decode);
    pass.setBindGroup(0, scratch.bindGroup(pipes.decode, [uniform, bufs.q, bufs.k, bufs.v, bufs.out, bufs.lse, ...extra], keep));
    if (mods) pass.setBindGroup(1, scratch.group(pipes.decode, 1, mods.group, mods.keep));
    pass.dispatchWorkgroups(...grid);
  } else {
    const rows = sizes.B * sizes.H * sizes.Nq;
    const { opart, lpart } = scratch.partials(rows, sizes.splits, D);
    pass.setPipeline(pipes.decode);
    pass.setBindGroup(0, scratch.bindGroup(pipes.decode, [uniform, bufs.q, bufs.k, bufs.v, opart, lpart, ...extra], keep));
    if (mods) pass.setBindGroup(1, scratch.group(pipes.decode, 1, mods.group, mods.keep));
    pass.dispatchWorkgroups(...grid);
    pass.setPipeline(pipes.merge);
    pass.setBindGroup(0, scratch.bindGroup(pipes.merge, [uniform, opart, lpart, bufs.out, bufs.lse], keep));
    pass.dispatchWorkgroups(...flatGroups(rows * Math.ceil(D / 4), 64));
  }
  pass.end();
}
