/**
 * The webgpu backend: typed arrays are uploaded (or GPUBuffers used as they are), the kernels run on
 * the device, and results are read back (or handed over as GPUBuffers when the inputs were GPUBuffers).
 * Every buffer it makes goes through GpuBuffers, which counts it in the call's MemoryTracker.
 */
import { DTypeError, OutOfMemoryError, ValueError } from '../errors.js';
import { problemStrides, type Problem } from '../problem.js';
import { isGpuBuffer, type AnyTensor, type DType } from '../tensor.js';
import { freeDestroyed, GpuBuffers } from './buffers.js';
import { defaultGpu, gpuOf, type Gpu } from './device.js';
import { chooseTiles, sizesBytes, type Sizes, type StorageType } from './kernels/common.js';
import {
  backwardKVAccumulator,
  backwardKVWGSL,
  backwardKVWorkgroupBytes,
  backwardQAccumulator,
  backwardQWGSL,
  backwardQWorkgroupBytes,
  preprocessWGSL,
  type BackwardParams,
  type PreprocessParams,
} from './kernels/backward.js';
import { forwardAccumulator, forwardWGSL, forwardWorkgroupBytes, type ForwardParams } from './kernels/forward.js';
import {
  forwardMatrixFits,
  forwardMatrixProblem,
  forwardMatrixRows,
  forwardMatrixWGSL,
  forwardMatrixWorkgroupBytes,
  type ForwardMatrixParams,
} from './kernels/forward-matrix.js';
import { forwardTiledAccumulator, forwardTiledProblem, forwardTiledShape, forwardTiledWGSL, forwardTiledWorkgroupBytes, type ForwardTiledParams } from './kernels/forward-tiled.js';
import { FRAGMENT } from './kernels/matrix.js';
import {
  backwardKVMatrixKeys,
  backwardKVMatrixWGSL,
  backwardKVMatrixWorkgroupBytes,
  backwardMatrixProblem,
  backwardQMatrixRows,
  backwardQMatrixWGSL,
  backwardQMatrixWorkgroupBytes,
  type BackwardKVMatrixParams,
  type BackwardQMatrixParams,
} from './kernels/backward-matrix.js';
import {
  backwardKVTiledWGSL,
  backwardQTiledWGSL,
  backwardTiledAccumulator,
  backwardTiledProblem,
  backwardTiledShape,
  backwardTiledWorkgroupBytes,
  type BackwardTiledParams,
  type BackwardTiledTiles,
} from './kernels/backward-tiled.js';
import { absmaxWGSL, splitCountBytes, splitGroups, splitWGSL } from './kernels/split.js';
import { dispatch, pipeline } from './pipelines.js';
import { decodeFits, decodePipelines, decodeScratch, decodeShape, decodeSizes, encodeDecode, splitPlan, type DecodeChoice } from './decode.js';
import { decodeSizesBytes } from './kernels/decode.js';
import { deviceLostError, lossOf } from './device.js';
import { modBindGroup, modBuffers, modsOf, modsParam } from './modifiers.js';
import { reduceBiasGrad } from './bias-grad.js';

/** The device a call runs on, checked against what the inputs need. */
export async function gpuFor(p: Problem): Promise<Gpu> {
  const gpu = p.device ? gpuOf(p.device) : await defaultGpu();
  if (p.dtype === 'f64') throw new DTypeError('q.dtype', "'f32' or 'f16' on the webgpu backend (f64 runs on 'reference')", "'f64'");
  if (p.dtype === 'f16' && !gpu.f16) {
    throw new DTypeError('q.dtype', "'f32' (this adapter lacks shader-f16, which f16 storage needs)", "'f16'");
  }
  return gpu;
}

/** Threads per workgroup: 128 where the device allows it. */
export function workgroupSize(gpu: Gpu): number {
  return Math.min(128, gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
}

/** Run-time sizes of a problem, for the kernels' uniform block. */
export function sizesOf(p: Problem): Sizes {
  const { q: sq, kv: sk } = problemStrides(p);
  return {
    B: p.B,
    H: p.H,
    Hkv: p.Hkv,
    Nq: p.Nq,
    Nk: p.Nk,
    qBatch: sq.batch,
    qRow: sq.row,
    qHead: sq.head,
    kvBatch: sk.batch,
    kvRow: sk.row,
    kvHead: sk.head,
    scale: p.scale,
  };
}

/** The forward kernel's compile-time configuration for a problem on a device. */
export function forwardParams(p: Problem, gpu: Gpu): ForwardParams {
  const WG = workgroupSize(gpu);
  const { rows: Br, cols: Bc } = chooseTiles(
    (Br, Bc) => forwardWorkgroupBytes({ D: p.D, Br, Bc }),
    (Br) => forwardAccumulator({ D: p.D, Br, WG }),
    gpu.limits.maxComputeWorkgroupStorageSize,
    64,
  );
  return { D: p.D, Br, Bc, WG, dtype: p.dtype as StorageType, causal: p.causal, ...modsParam(p) };
}

/**
 * The subgroup-matrix forward's configuration, or undefined where it cannot run and the tiled or portable
 * kernel takes over: no f16 subgroup matrices or fixed subgroup size, D not a multiple of 16, or fewer
 * than a block of queries or keys. f32 inputs run split into f16 halves (kernels/split.ts). Tiles per D
 * and dtype, tuned on an H100 (bench/variants/forward-matrix.ts).
 */
export function forwardMatrixParams(p: Problem, gpu: Gpu): ForwardMatrixParams | undefined {
  if (!gpu.matrixF16 || (p.dtype !== 'f16' && p.dtype !== 'f32') || gpu.subgroupSize === undefined) return undefined;
  // f32: only at precision 'high' (split into f16 halves; see options.ts), up to D = 128 (above it, O_i,
  // its corrections and Q_i's halves exceed the registers), and not causal: on an H100 the split kernel's causal forward took as long as its full one
  // (D = 128, N = 4096: 21.3 ms, 12.9 TFLOP/s, against the tiled kernel's 15.1 ms, 18.2), while its full
  // forward beat the tiled one (25.5 against 20.1 TFLOP/s; bench/variants/forward-split.ts).
  if (p.dtype === 'f32' && (p.precision !== 'high' || p.D > 128 || p.causal)) return undefined;
  const table = p.dtype === 'f32' ? FORWARD_MATRIX_SPLIT_TILES : FORWARD_MATRIX_TILES;
  const tiles = table[p.D] ?? table.other;
  const W = warpsThatFit(tiles.W, forwardMatrixRows({ ...tiles, W: 1 }), p.Nq, gpu.subgroupSize, gpu);
  const params: ForwardMatrixParams = { D: p.D, ...tiles, W, SGS: gpu.subgroupSize, causal: p.causal, ...modsParam(p), ...(p.dtype === 'f32' ? { dtype: 'f32' as const } : {}) };
  const fits =
    !forwardMatrixProblem(params) &&
    forwardMatrixWorkgroupBytes(params) <= gpu.limits.maxComputeWorkgroupStorageSize &&
    forwardMatrixFits(params, p.Nq, p.Nk);
  return fits ? params : undefined;
}

/** Invocations a workgroup may have (a 1-D one). */
function invocationLimit(gpu: Gpu): number {
  return Math.min(gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
}

/**
 * The warps a subgroup-matrix kernel's workgroup gets: `W`, halved while the block (W·perWarp rows or
 * keys) would be longer than the n it runs over, or W subgroups of SGS would exceed the invocation limit.
 */
function warpsThatFit(W: number, perWarp: number, n: number, SGS: number, gpu: Gpu): number {
  while (W > 1 && (W * perWarp > n || W * SGS > invocationLimit(gpu))) W /= 2;
  return W;
}

/** The subgroup-matrix forward's tiles by D: the best of the sweep on an H100 (bench/results/2026-11-22-h100-forward-matrix-sweep.md). */
export const FORWARD_MATRIX_TILES: Record<number | 'other', Pick<ForwardMatrixParams, 'Bc' | 'RF' | 'W' | 'PAD'>> = {
  64: { Bc: 16, RF: 1, W: 8, PAD: 8 },
  128: { Bc: 32, RF: 1, W: 8, PAD: 8 },
  other: { Bc: 16, RF: 1, W: 8, PAD: 8 },
};

/**
 * The same for f32 inputs split into f16 halves: every tile is there twice (hi and lo), and S's
 * corrections need a tile of their own, so at D = 128 only Bc = 16 fits 48 KiB with 8 warps (41.5 KiB);
 * O_i's corrections in accumulators of their own (OC) took the error on the correctness grid's inputs
 * within the rule (without: 2.29e-6 against the standard's 1.79e-7 at D = 128, Nq = 1023, Nk = 1024;
 * with: 9.83e-7). H100, N = 4096: W = 8 25.5 TFLOP/s at D = 128 (W = 4: 24.1), 29.0–31.2 at D = 64.
 */
export const FORWARD_MATRIX_SPLIT_TILES: Record<number | 'other', Pick<ForwardMatrixParams, 'Bc' | 'RF' | 'W' | 'PAD' | 'OC'>> = {
  64: { Bc: 16, RF: 1, W: 8, PAD: 8, OC: true },
  128: { Bc: 16, RF: 1, W: 8, PAD: 8, OC: true },
  other: { Bc: 16, RF: 1, W: 8, PAD: 8, OC: true },
};

/** The tile sizes of the tiled forward (the rest of its params follow from the problem and the device). */
export type TiledTiles = Pick<ForwardTiledParams, 'Br' | 'Bc' | 'TM' | 'TN' | 'split' | 'blockSum'>;

/** Most floats of O_i (and P̃V_j) one invocation of the tiled forward keeps in registers: up to D = 512. */
export const TILED_MAX_ACCUMULATOR = 128;

const tiles = (Br: number, Bc: number, TM: number, TN: number, split = false, blockSum = true): TiledTiles => ({ Br, Bc, TM, TN, split, blockSum });

/** Smaller and smaller tiles, for devices with less workgroup memory or fewer invocations, and large D. */
const TILED_FALLBACK = [
  tiles(64, 32, 4, 4),
  tiles(32, 32, 4, 4),
  tiles(32, 16, 2, 2),
  tiles(16, 16, 2, 2),
  tiles(16, 8, 2, 2),
  tiles(8, 8, 2, 2),
  tiles(8, 8, 1, 1),
  tiles(4, 8, 1, 1),
  tiles(4, 4, 1, 1),
];

/**
 * The tiled forward's candidate tiles for head dim D, best first (the first that fits the device runs).
 * GPU, from the H100 sweep (bench/variants/forward-tiled.ts; bench/results/2026-11-22-h100-session4.md):
 * 4×2 micro-tiles (8 multiply-adds per vec4 of K_j read from workgroup memory, 128 or more invocations):
 * Br = Bc = 32 up to D = 64 (22.8 TFLOP/s at N = 4096; 4×4 micro-tiles in Br = 64, Bc = 32: 20.7),
 * Br = 64, Bc = 16 up to D = 128 (48896 B; 20.5 TFLOP/s; Br = Bc = 32 in 4×2: 18.9, in 4×4: 11.4),
 * 2×2 in Br = Bc = 16 above.
 * Software adapters (lavapipe): 2×2 micro-tiles in Br = 32, Bc = 16: lavapipe's LLVM compiles them in
 * about 2 s (the portable kernel: 1.3 s; 4×4: 5–8 s), and a test run compiles more than it computes; they
 * run about twice as fast as the portable kernel there (4×4: about four times).
 */
export function tiledCandidates(D: number, software: boolean): TiledTiles[] {
  const preferred = software ? tiles(32, 16, 2, 2) : D <= 64 ? tiles(32, 32, 4, 2) : D <= 128 ? tiles(64, 16, 4, 2) : tiles(16, 16, 2, 2);
  return [preferred, ...TILED_FALLBACK];
}

/**
 * The tiled forward's configuration (f32, and f16 where subgroup matrices are missing), or undefined
 * where no candidate fits the device (the portable kernel runs then): the first of tiledCandidates
 * whose workgroup memory, invocations and O_i registers fit.
 */
export function forwardTiledParams(p: Problem, gpu: Gpu): ForwardTiledParams | undefined {
  const bytes = gpu.limits.maxComputeWorkgroupStorageSize;
  const software = Boolean(gpu.software);
  const base = { D: p.D, unroll: !software, dtype: p.dtype as StorageType, causal: p.causal, ...modsParam(p) };
  return tiledCandidates(p.D, software)
    .map((tiles): ForwardTiledParams => ({ ...base, ...tiles }))
    .find((c) => {
      const { WG } = forwardTiledShape(c);
      return (
        !forwardTiledProblem(c) &&
        WG <= invocationLimit(gpu) &&
        forwardTiledWorkgroupBytes(c) <= bytes &&
        forwardTiledAccumulator(c) <= TILED_MAX_ACCUMULATOR
      );
    });
}

/** The forward kernel a problem runs and its compile-time configuration. */
export type ForwardChoice =
  | { kernel: 'forwardMatrix'; params: ForwardMatrixParams }
  | { kernel: 'forwardTiled'; params: ForwardTiledParams }
  | { kernel: 'forward'; params: ForwardParams };

/**
 * The kernel families whose WGSL calls the modifiers' hooks (kernels/modifiers.ts): a call with variants
 * beyond causal runs on the fastest of these that fits.
 */
export const MODIFIER_FAMILIES = { forward: true, forwardTiled: false, forwardMatrix: false, backwardPortable: true, backwardTiled: false, backwardMatrix: false };

/** Subgroup matrices where they apply (f16, and f32 split into f16 halves), else the tiled kernel, else the portable one. */
export function forwardChoice(p: Problem, gpu: Gpu): ForwardChoice {
  const mods = modsOf(p) !== '';
  const matrix = forwardMatrixParams(p, gpu);
  if (matrix && (!mods || MODIFIER_FAMILIES.forwardMatrix)) return { kernel: 'forwardMatrix', params: matrix };
  const tiled = forwardTiledParams(p, gpu);
  if (tiled && (!mods || MODIFIER_FAMILIES.forwardTiled)) return { kernel: 'forwardTiled', params: tiled };
  return { kernel: 'forward', params: forwardParams(p, gpu) };
}

/** Query rows per workgroup (the dispatch is (⌈Nq/Br⌉, B·H)) and workgroup memory of a choice. */
export function forwardTiles(choice: ForwardChoice): { Br: number; Bc: number; onChipBytes: number } {
  switch (choice.kernel) {
    case 'forwardMatrix':
      return { Br: forwardMatrixRows(choice.params), Bc: choice.params.Bc, onChipBytes: forwardMatrixWorkgroupBytes(choice.params) };
    case 'forwardTiled':
      return { Br: choice.params.Br, Bc: choice.params.Bc, onChipBytes: forwardTiledWorkgroupBytes(choice.params) };
    case 'forward':
      return { Br: choice.params.Br, Bc: choice.params.Bc, onChipBytes: forwardWorkgroupBytes(choice.params) };
  }
}

/** The forward pipeline of a choice and its query rows per workgroup. */
export async function forwardKernel(gpu: Gpu, choice: ForwardChoice): Promise<{ pipe: GPUComputePipeline; Br: number }> {
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const { Br } = forwardTiles(choice);
  switch (choice.kernel) {
    case 'forwardMatrix':
      return { pipe: await pipeline(gpu.device, choice.kernel, choice.params, (x) => forwardMatrixWGSL(x, limit)), Br };
    case 'forwardTiled':
      return { pipe: await pipeline(gpu.device, choice.kernel, choice.params, (x) => forwardTiledWGSL(x, limit)), Br };
    case 'forward':
      return { pipe: await pipeline(gpu.device, choice.kernel, choice.params, (x) => forwardWGSL(x, limit)), Br };
  }
}

/** Bytes of one element of each dtype. */
export const ELEMENT_BYTES: Record<DType, number> = { f32: 4, f16: 2, f64: 8 };

/**
 * One call's device buffers: inputs (uploaded or the caller's), temporaries and outputs. The buffers are
 * made inside an 'out-of-memory' error scope, which submit closes: a device that cannot hold them gives an
 * OutOfMemoryError, not an invalid buffer that fails later as something else.
 */
export class Call {
  readonly buffers: GpuBuffers;
  private memoryScope: boolean;
  constructor(
    readonly p: Problem,
    readonly gpu: Gpu,
  ) {
    this.buffers = new GpuBuffers(gpu.device, p.memory);
    gpu.device.pushErrorScope('out-of-memory');
    this.memoryScope = true;
  }

  /** The tensor's data on the device: the caller's GPUBuffer, or an upload of its typed array. */
  input(t: AnyTensor, name: string): GPUBuffer {
    if (isGpuBuffer(t.data)) return t.data;
    return this.buffers.upload(t.data, name);
  }

  /** An output buffer of `elements` in the problem's dtype (lse: f32), sized by the input `argument`. */
  output(elements: number, name: string, argument: 'q' | 'k', dtype: DType = this.p.dtype): GPUBuffer {
    return this.buffers.create(elements * ELEMENT_BYTES[dtype], name, argument);
  }

  /**
   * Submit the encoded work, then close both error scopes (validation, then out-of-memory) with one wait:
   * the work is on the GPU before the host waits for the scopes, so calls back to back keep the GPU busy
   * (a wait before submitting left it idle for a round trip per call). A buffer that could not be made
   * makes the submission invalid too; the out-of-memory error is the one reported. Device errors
   * (another device's buffer, say) become typed errors.
   */
  async submit(encode: (enc: GPUCommandEncoder) => Promise<void>): Promise<void> {
    const { device } = this.gpu;
    device.pushErrorScope('validation');
    try {
      const enc = device.createCommandEncoder();
      await encode(enc);
      device.queue.submit([enc.finish()]);
    } catch (e) {
      void device.popErrorScope().catch(() => undefined); // dispose() closes the out-of-memory scope
      throw e;
    }
    const validation = device.popErrorScope();
    this.memoryScope = false;
    const [error, oom] = await Promise.all([validation, device.popErrorScope()]);
    await this.throwIfLost(0); // a lost device reports no errors, and runs nothing
    if (oom) {
      await this.releaseMemory();
      const { B, H, Nq, Nk, D, dtype } = this.p;
      throw new OutOfMemoryError('q', `device memory for the buffers of attention over B=${B}, H=${H}, Nq=${Nq}, Nk=${Nk}, D=${D}, ${dtype}`, oom.message);
    }
    if (error) {
      throw new ValueError(this.p.onGpu ? 'q.data' : 'options.device', 'buffers and a device that belong together', error.message);
    }
  }

  /** An output as the caller gets it: a GpuTensor handed over, or a typed array read back. */
  async result(buffer: GPUBuffer, shape: readonly number[], argument: 'q' | 'k', dtype: 'f32' | 'f16' = this.p.dtype as 'f32' | 'f16'): Promise<AnyTensor> {
    if (this.p.onGpu) return { data: this.buffers.handOver(buffer), dtype, shape: [...shape] };
    const elements = shape.reduce((a, b) => a * b, 1);
    let bytes: ArrayBuffer;
    try {
      bytes = await this.buffers.read(buffer, elements * ELEMENT_BYTES[dtype], argument);
    } catch (e) {
      await this.throwIfLost(); // a readback on a lost device fails with an AbortError that says nothing
      throw e;
    }
    const data = dtype === 'f16' ? new Uint16Array(bytes) : new Float32Array(bytes);
    return { data, dtype, shape: [...shape] };
  }

  /** Destroy the call's buffers, and let the device free their memory before the call returns. */
  private async releaseMemory(): Promise<void> {
    this.buffers.destroyAll();
    await freeDestroyed(this.gpu.device);
  }

  /**
   * A DeviceLostError where the device is lost (waiting up to `ms` for its `lost` promise to settle);
   * the library's own device is then replaced on the next call (device.ts).
   */
  private async throwIfLost(ms?: number): Promise<void> {
    const info = await lossOf(this.gpu.device, ms);
    if (info) throw deviceLostError(info, this.p.device ? 'options.device' : this.p.onGpu ? 'q.data' : 'options.backend', Boolean(this.p.device || this.p.onGpu));
  }

  dispose(): void {
    if (this.memoryScope) {
      // The call failed before submitting: close its scope (what it caught no longer matters).
      this.memoryScope = false;
      void this.gpu.device.popErrorScope().catch(() => undefined);
    }
    this.buffers.destroyAll();
  }
}

/**
 * `choose` picks the kernel (benchmarks and tests force one); by default the split-KV decode schedule
 * where it applies (few queries: decodeFits), else forwardChoice.
 */
export async function webgpuForward(
  p: Problem,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  choose?: (p: Problem, gpu: Gpu) => ForwardChoice,
): Promise<{ out: AnyTensor; lse: AnyTensor }> {
  const gpu = await gpuFor(p);
  const decode = choose ? undefined : decodeFits(p, gpu);
  if (decode) return webgpuDecodeForward(p, gpu, decode, q, k, v);
  const call = new Call(p, gpu);
  try {
    const choice = (choose ?? forwardChoice)(p, gpu);
    const { pipe, Br } = await forwardKernel(gpu, choice);
    const sizes = call.buffers.uniform(sizesBytes(sizesOf(p)), 'sizes');
    const mods = choice.params.mods;
    const group1 = mods ? modBindGroup(gpu.device, pipe, modBuffers(p, mods, call.buffers, { Br, Bc: forwardTiles(choice).Bc })) : undefined;
    const [Q, K, V] = [call.input(q, 'q'), call.input(k, 'k'), call.input(v, 'v')];
    const out = call.output(p.B * p.Nq * p.H * p.D, 'out', 'q');
    const lse = call.output(p.B * p.H * p.Nq, 'lse', 'q', 'f32');
    const [nq, nkv] = [p.B * p.Nq * p.H * p.D, p.B * p.Nk * p.Hkv * p.D];
    const split = choice.kernel === 'forwardMatrix' && choice.params.dtype === 'f32' ? await splitInputs(call, [Q, K, V], [nq, nkv, nkv]) : undefined;
    await call.submit(async (enc) => {
      if (!split) return dispatch(enc, gpu.device, pipe, [sizes, Q, K, V, out, lse], [Math.ceil(p.Nq / Br), p.B * p.H], group1);
      split.encode(enc);
      dispatch(enc, gpu.device, pipe, [sizes, ...split.halves, out, lse, split.maxima, Q, K], [Math.ceil(p.Nq / Br), p.B * p.H], group1);
    });
    return { out: await call.result(out, q.shape, 'q'), lse: await call.result(lse, [p.B, p.H, p.Nq], 'q', 'f32') };
  } finally {
    call.dispose();
  }
}

/**
 * forward() on the split-KV decode schedule (webgpu/decode.ts): the decode kernel of `choice`, and the
 * merge where the keys are split.
 */
export async function webgpuDecodeForward(p: Problem, gpu: Gpu, choice: DecodeChoice, q: AnyTensor, k: AnyTensor, v: AnyTensor): Promise<{ out: AnyTensor; lse: AnyTensor }> {
  const call = new Call(p, gpu);
  const scratch = decodeScratch(gpu.device);
  let counted = 0;
  try {
    const { q: sq, kv: sk } = problemStrides(p);
    const { R, block } = decodeShape(choice);
    const rowChunks = Math.ceil(((p.H / p.Hkv) * p.Nq) / R);
    const plan = splitPlan(p.B, p.Hkv, rowChunks, p.Nk, block);
    const keys = { kvPage: sk.batch, kvRow: sk.row, kvHead: sk.head, pageSize: p.Nk, maxPages: 1 };
    const sizes = decodeSizes({ B: p.B, H: p.H, Hkv: p.Hkv, Nq: p.Nq, Nk: p.Nk, q: sq, keys, scale: p.scale }, R, plan);
    const pipes = await decodePipelines(gpu, choice, plan.splits > 1);
    const uniform = call.buffers.uniform(decodeSizesBytes(sizes), 'sizes');
    const [Q, K, V] = [call.input(q, 'q'), call.input(k, 'k'), call.input(v, 'v')];
    const out = call.output(p.B * p.Nq * p.H * p.D, 'out', 'q');
    const lse = call.output(p.B * p.H * p.Nq, 'lse', 'q', 'f32');
    await call.submit(async (enc) => {
      encodeDecode(enc, scratch, pipes, p.D, sizes, uniform, { q: Q, k: K, v: V, out, lse }, p.onGpu);
      if (pipes.merge) counted = p.memory.allocate(scratch.bytes); // the partials, the device's scratch
    });
    return { out: await call.result(out, q.shape, 'q'), lse: await call.result(lse, [p.B, p.H, p.Nq], 'q', 'f32') };
  } finally {
    p.memory.release(counted);
    call.dispose();
  }
}

/** Per device, the split halves of the largest f32 q, k and v so far (their bytes: as q, k and v). */
const SPLIT_SCRATCH = new WeakMap<GPUDevice, Map<string, GPUBuffer>>();

/**
 * f32 tensors (q, k, v on the device, of `elements` each, a multiple of 4) split into f16 halves for the
 * subgroup-matrix kernels (kernels/split.ts): `halves` (hi then lo, the same bytes as each input; the
 * device's scratch, reused by later calls: one call's submission writes and reads them before the next
 * call's, as the queue runs submissions in order), `maxima` (each input's largest magnitude, f32 bits),
 * and `encode`, which records both passes of each.
 */
export async function splitInputs(
  call: Call,
  inputs: GPUBuffer[],
  elements: number[],
): Promise<{ halves: GPUBuffer[]; maxima: GPUBuffer; encode: (enc: GPUCommandEncoder) => void }> {
  const { device } = call.gpu;
  const absmax = await pipeline(device, 'absmax', {}, absmaxWGSL);
  const split = await pipeline(device, 'split', {}, splitWGSL);
  const maxima = call.buffers.create(4 * inputs.length, 'maxima', 'q'); // zeros
  const names = ['q', 'k', 'v'] as const;
  // The halves are the device's scratch, kept between calls: making buffers of this size took longer
  // than the kernel itself on an H100 (about 11 ms a call at B·N = 16384, H·D = 2048, 3 × 128 MiB).
  let kept = SPLIT_SCRATCH.get(device);
  if (!kept) SPLIT_SCRATCH.set(device, (kept = new Map()));
  const halves = elements.map((n, i) => call.buffers.borrow(kept, names[i], 4 * n, `${names[i]} halves`, names[i] === 'q' ? 'q' : 'k'));
  const counts = elements.map((n, i) => call.buffers.uniform(splitCountBytes(n / 4, i), `${names[i]} count`));
  return {
    halves,
    maxima,
    encode: (enc) =>
      inputs.forEach((x, i) => {
        const groups = splitGroups(elements[i] / 4);
        dispatch(enc, device, absmax, [counts[i], x, maxima], [groups, 1]);
        dispatch(enc, device, split, [counts[i], x, maxima, halves[i]], [groups, 1]);
      }),
  };
}

/** The backward kernels' compile-time configurations for a problem on a device (dK/dV and dQ tiles apart). */
export function backwardParams(p: Problem, gpu: Gpu): { pre: PreprocessParams; kv: BackwardParams; q: BackwardParams } {
  const WG = workgroupSize(gpu);
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const dtype = p.dtype as StorageType;
  // dK/dV: the owned key block Bc is chooseTiles' `rows`, the streamed query block Br its `cols`.
  const kv = chooseTiles(
    (Bc, Br) => backwardKVWorkgroupBytes({ D: p.D, Br, Bc }),
    (Bc) => backwardKVAccumulator({ D: p.D, Bc, WG }),
    limit,
    64,
  );
  const q = chooseTiles(
    (Br, Bc) => backwardQWorkgroupBytes({ D: p.D, Br, Bc }),
    (Br) => backwardQAccumulator({ D: p.D, Br, WG }),
    limit,
    64,
  );
  return {
    pre: { D: p.D, WG, dtype },
    kv: { D: p.D, Br: kv.cols, Bc: kv.rows, WG, dtype, causal: p.causal, ...modsParam(p, 'backward') },
    q: { D: p.D, Br: q.rows, Bc: q.cols, WG, dtype, causal: p.causal, ...modsParam(p) },
  };
}

/** The subgroup-matrix dQ kernel's tiles by D (as the forward's; see bench/variants/backward-matrix.ts). */
export const BACKWARD_Q_MATRIX_TILES: Record<number | 'other', Pick<BackwardQMatrixParams, 'Bc' | 'RF' | 'W' | 'PAD'>> = {
  64: { Bc: 16, RF: 1, W: 8, PAD: 8 },
  128: { Bc: 16, RF: 1, W: 8, PAD: 8 },
  other: { Bc: 16, RF: 1, W: 8, PAD: 8 },
};

/** The subgroup-matrix dK/dV kernel's tiles by D: 8 warps validated on the H100 (bench/variants/backward-matrix.ts), not yet compared with other tiles there. */
export const BACKWARD_KV_MATRIX_TILES: Record<number | 'other', Pick<BackwardKVMatrixParams, 'QF' | 'W' | 'PAD'>> = {
  64: { QF: 1, W: 8, PAD: 8 },
  128: { QF: 1, W: 8, PAD: 8 },
  other: { QF: 1, W: 8, PAD: 8 },
};

/**
 * The subgroup-matrix backward's configurations (dK/dV and dQ), or undefined where the portable kernels
 * run: as for the forward, and also where D is not a multiple of 16 or Nq, Nk hold less than a block.
 */
export function backwardMatrixParams(p: Problem, gpu: Gpu): { kv: BackwardKVMatrixParams; q: BackwardQMatrixParams } | undefined {
  if (!gpu.matrixF16 || p.dtype !== 'f16' || gpu.subgroupSize === undefined) return undefined;
  const SGS = gpu.subgroupSize;
  const kvTiles = BACKWARD_KV_MATRIX_TILES[p.D] ?? BACKWARD_KV_MATRIX_TILES.other;
  const WK = warpsThatFit(kvTiles.W, backwardKVMatrixKeys({ W: 1 }), p.Nk, SGS, gpu);
  const kv: BackwardKVMatrixParams = { D: p.D, ...kvTiles, W: WK, SGS, causal: p.causal, ...modsParam(p, 'backward') };
  const tiles = BACKWARD_Q_MATRIX_TILES[p.D] ?? BACKWARD_Q_MATRIX_TILES.other;
  const W = warpsThatFit(tiles.W, backwardQMatrixRows({ ...tiles, W: 1 }), p.Nq, SGS, gpu);
  const q: BackwardQMatrixParams = { D: p.D, ...tiles, W, SGS, causal: p.causal, ...modsParam(p) };
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const ok =
    !backwardMatrixProblem({ D: p.D, SGS, rows: FRAGMENT * q.RF, Bc: q.Bc }) &&
    backwardKVMatrixWorkgroupBytes(kv) <= limit &&
    backwardQMatrixWorkgroupBytes(q) <= limit &&
    p.Nq >= Math.max(FRAGMENT * kv.QF, backwardQMatrixRows(q)) &&
    p.Nk >= Math.max(backwardKVMatrixKeys(kv), q.Bc);
  return ok ? { kv, q } : undefined;
}

/** Most floats of accumulators (and their partial sums) one invocation of a tiled backward kernel holds. */
export const BACKWARD_TILED_MAX_ACCUMULATOR = 128;

/** Most invocations per workgroup of the tiled backward kernels. */
export const BACKWARD_TILED_MAX_INVOCATIONS = 256;

const btiles = (Br: number, Bc: number, TM: number, TN: number): BackwardTiledTiles => ({ Br, Bc, TM, TN });

/**
 * The tiled backward kernels' preferred tiles by D (dK/dV and dQ apart; D ≤ 64 takes D = 64's, 64 < D ≤ 128
 * D = 128's), within 48 KiB of workgroup memory, 128 invocations and 128 floats of accumulators per
 * invocation, chosen by the workgroup-bytes and register formulas of backward-tiled.ts (not swept):
 * D = 64: dK/dV Br = Bc = 32, 4×2 micro-tiles (43520 B, 64 floats); dQ Br = Bc = 32, 2×4 (39296 B, 32
 * floats). D = 128: dK/dV Br = 8, Bc = 32, 1×2 (44416 B, 128 floats); dQ Br = Bc = 16, 1×2 (35008 B, 32
 * floats). On an H100 (bench/variants/backward-tiled.ts, N = 4096, f32): the backward takes 104 ms at
 * D = 64 and 164 ms at D = 128, forward + backward 14.7 and 9.7 TFLOP/s (the portable kernels: about 1.8).
 */
export const BACKWARD_TILED_TILES: Record<number | 'other', { kv: BackwardTiledTiles; q: BackwardTiledTiles }> = {
  64: { kv: btiles(32, 32, 4, 2), q: btiles(32, 32, 2, 4) },
  128: { kv: btiles(8, 32, 1, 2), q: btiles(16, 16, 1, 2) },
  other: { kv: btiles(16, 16, 2, 2), q: btiles(16, 16, 2, 2) },
};

/** Smaller and smaller tiles, for devices with less workgroup memory or fewer invocations, and large D. */
const BACKWARD_TILED_FALLBACK = [
  btiles(32, 32, 4, 2),
  btiles(16, 32, 2, 2),
  btiles(8, 32, 1, 2),
  btiles(16, 16, 2, 2),
  btiles(16, 16, 1, 2),
  btiles(8, 16, 1, 2),
  btiles(8, 8, 1, 1),
  btiles(4, 8, 1, 1),
  btiles(4, 4, 1, 1),
];

/** Whether tiled backward params fit a device: workgroup memory, invocations, accumulator registers. */
export function backwardTiledFits(t: BackwardTiledParams, kv: boolean, gpu: Gpu): boolean {
  return (
    !backwardTiledProblem(t) &&
    backwardTiledShape(t, kv).WG <= Math.min(invocationLimit(gpu), BACKWARD_TILED_MAX_INVOCATIONS) &&
    backwardTiledWorkgroupBytes(t, kv) <= gpu.limits.maxComputeWorkgroupStorageSize &&
    backwardTiledAccumulator(t, kv) <= BACKWARD_TILED_MAX_ACCUMULATOR
  );
}

/**
 * The tiled backward's configurations (f32, and f16 where subgroup matrices are missing), or undefined on
 * software adapters (lavapipe: the portable kernels compile faster) and where no candidate fits the device:
 * for each kernel, the first of its preferred tiles and the fallbacks that fits.
 */
export function backwardTiledParams(p: Problem, gpu: Gpu): { kv: BackwardTiledParams; q: BackwardTiledParams } | undefined {
  if (gpu.software) return undefined;
  const base = { D: p.D, unroll: true, dtype: p.dtype as StorageType, causal: p.causal };
  const mods = { kv: modsParam(p, 'backward'), q: modsParam(p) };
  const preferred = BACKWARD_TILED_TILES[p.D <= 64 ? 64 : p.D <= 128 ? 128 : 'other'];
  const pick = (first: BackwardTiledTiles, kv: boolean) =>
    [first, ...BACKWARD_TILED_FALLBACK].map((t): BackwardTiledParams => ({ ...base, ...t, ...(kv ? mods.kv : mods.q) })).find((t) => backwardTiledFits(t, kv, gpu));
  const kv = pick(preferred.kv, true);
  const q = pick(preferred.q, false);
  return kv && q ? { kv, q } : undefined;
}

/** The backward kernels a problem runs (the preprocess is always the portable one) and their configurations. */
export type BackwardChoice =
  | { kernel: 'matrix'; kv: BackwardKVMatrixParams; q: BackwardQMatrixParams }
  | { kernel: 'tiled'; kv: BackwardTiledParams; q: BackwardTiledParams }
  | { kernel: 'portable'; kv: BackwardParams; q: BackwardParams };

/** Subgroup matrices where they apply (f16), else the tiled kernels (GPUs), else the portable ones. */
export function backwardChoice(p: Problem, gpu: Gpu): BackwardChoice {
  const mods = modsOf(p) !== '';
  const matrix = backwardMatrixParams(p, gpu);
  if (matrix && (!mods || MODIFIER_FAMILIES.backwardMatrix)) return { kernel: 'matrix', ...matrix };
  const tiled = backwardTiledParams(p, gpu);
  if (tiled && (!mods || MODIFIER_FAMILIES.backwardTiled)) return { kernel: 'tiled', ...tiled };
  const { kv, q } = backwardParams(p, gpu);
  return { kernel: 'portable', kv, q };
}

/**
 * A backward choice's blocks: the dK/dV kernel's (Bc: the keys a workgroup owns; Br: the query rows it
 * steps by) and the dQ kernel's (Br: the query rows a workgroup owns; Bc: the keys it steps by), with
 * their workgroup memory.
 */
export function backwardTiles(choice: BackwardChoice): Record<'kv' | 'q', { Br: number; Bc: number; onChipBytes: number }> {
  switch (choice.kernel) {
    case 'matrix':
      return {
        kv: { Br: FRAGMENT * choice.kv.QF, Bc: backwardKVMatrixKeys(choice.kv), onChipBytes: backwardKVMatrixWorkgroupBytes(choice.kv) },
        q: { Br: backwardQMatrixRows(choice.q), Bc: choice.q.Bc, onChipBytes: backwardQMatrixWorkgroupBytes(choice.q) },
      };
    case 'tiled':
      return {
        kv: { Br: choice.kv.Br, Bc: choice.kv.Bc, onChipBytes: backwardTiledWorkgroupBytes(choice.kv, true) },
        q: { Br: choice.q.Br, Bc: choice.q.Bc, onChipBytes: backwardTiledWorkgroupBytes(choice.q, false) },
      };
    case 'portable':
      return {
        kv: { Br: choice.kv.Br, Bc: choice.kv.Bc, onChipBytes: backwardKVWorkgroupBytes(choice.kv) },
        q: { Br: choice.q.Br, Bc: choice.q.Bc, onChipBytes: backwardQWorkgroupBytes(choice.q) },
      };
  }
}

/** The dK/dV and dQ pipelines of a choice, with the keys and query rows each workgroup owns. */
async function backwardKernels(gpu: Gpu, choice: BackwardChoice): Promise<{ kv: GPUComputePipeline; q: GPUComputePipeline; keys: number; rows: number }> {
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const tiles = backwardTiles(choice);
  const blocks = { keys: tiles.kv.Bc, rows: tiles.q.Br };
  switch (choice.kernel) {
    case 'matrix':
      return {
        kv: await pipeline(gpu.device, 'backwardKVMatrix', choice.kv, (x) => backwardKVMatrixWGSL(x, limit)),
        q: await pipeline(gpu.device, 'backwardQMatrix', choice.q, (x) => backwardQMatrixWGSL(x, limit)),
        ...blocks,
      };
    case 'tiled':
      return {
        kv: await pipeline(gpu.device, 'backwardKVTiled', choice.kv, (x) => backwardKVTiledWGSL(x, limit)),
        q: await pipeline(gpu.device, 'backwardQTiled', choice.q, (x) => backwardQTiledWGSL(x, limit)),
        ...blocks,
      };
    case 'portable':
      return {
        kv: await pipeline(gpu.device, 'backwardKV', choice.kv, (x) => backwardKVWGSL(x, limit)),
        q: await pipeline(gpu.device, 'backwardQ', choice.q, (x) => backwardQWGSL(x, limit)),
        ...blocks,
      };
  }
}

/** `choose` picks the dK/dV and dQ kernels (benchmarks and tests force one); by default backwardChoice. */
export async function webgpuBackward(
  p: Problem,
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
  choose: (p: Problem, gpu: Gpu) => BackwardChoice = backwardChoice,
): Promise<{ dq: AnyTensor; dk: AnyTensor; dv: AnyTensor; dbias?: AnyTensor }> {
  const gpu = await gpuFor(p);
  const call = new Call(p, gpu);
  try {
    const preParams = backwardParams(p, gpu).pre;
    const pre = await pipeline(gpu.device, 'backwardPreprocess', preParams, preprocessWGSL);
    const choice = choose(p, gpu);
    const { kv, q: dqPipe, keys: keysPerGroup, rows: rowsPerGroup } = await backwardKernels(gpu, choice);
    // The variants' bind groups (each kernel its own tile table), and dS for dbias (zeroed at creation: the
    // entries of skipped tiles and dropped elements stay 0).
    const tiles = backwardTiles(choice);
    const biasGrad = p.mods.bias?.grad ? call.output(p.B * p.H * p.Nq * p.Nk, 'dS for dbias', 'q', 'f32') : undefined;
    const kvMods = choice.kv.mods;
    const qMods = choice.q.mods;
    const kvGroup = kvMods ? modBindGroup(gpu.device, kv, modBuffers(p, kvMods, call.buffers, tiles.kv, biasGrad)) : undefined;
    const qGroup = qMods ? modBindGroup(gpu.device, dqPipe, modBuffers(p, qMods, call.buffers, tiles.q)) : undefined;
    const sizes = call.buffers.uniform(sizesBytes(sizesOf(p)), 'sizes');
    const [dO, Q, K, V, O, L] = [call.input(dout, 'dout'), call.input(q, 'q'), call.input(k, 'k'), call.input(v, 'v'), call.input(out, 'out'), call.input(lse, 'lse')];
    const Dvec = call.output(p.B * p.H * p.Nq, 'Dvec', 'q', 'f32');
    const dq = call.output(p.B * p.Nq * p.H * p.D, 'dq', 'q');
    const dk = call.output(p.B * p.Nk * p.Hkv * p.D, 'dk', 'k');
    const dv = call.output(p.B * p.Nk * p.Hkv * p.D, 'dv', 'k');
    let dbias: GPUBuffer | undefined;
    await call.submit(async (enc) => {
      dispatch(enc, gpu.device, pre, [sizes, dO, O, Dvec], [Math.ceil(p.Nq / preParams.WG), p.B * p.H]);
      dispatch(enc, gpu.device, kv, [sizes, Q, K, V, dO, L, Dvec, dk, dv], [Math.ceil(p.Nk / keysPerGroup), p.B * p.Hkv], kvGroup);
      dispatch(enc, gpu.device, dqPipe, [sizes, Q, K, V, dO, L, Dvec, dq], [Math.ceil(p.Nq / rowsPerGroup), p.B * p.H], qGroup);
      if (biasGrad) dbias = await reduceBiasGrad(call, enc, biasGrad);
    });
    const grads = { dq: await call.result(dq, q.shape, 'q'), dk: await call.result(dk, k.shape, 'k'), dv: await call.result(dv, v.shape, 'k') };
    return dbias ? { ...grads, dbias: await call.result(dbias, p.mods.bias!.index.shape, 'q', 'f32') } : grads;
  } finally {
    call.dispose();
  }
}
