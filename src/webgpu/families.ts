/**
 * The prefill kernel families (schedules) of the webgpu backend as a registry: each family says whether it
 * runs a problem on a device (its compile-time params, from the tuning tables of tuning.ts), its tiles, its
 * WGSL, and whether its WGSL calls the variants' hooks. A problem runs on the first family, in order of
 * preference, that runs it. A new schedule is a new kernel file and an entry here.
 */
import type { Problem } from '../problem.js';
import { workgroupSize } from './call.js';
import type { Gpu } from './device.js';
import {
  backwardKVAccumulator,
  backwardKVWGSL,
  backwardKVWorkgroupBytes,
  backwardQAccumulator,
  backwardQWGSL,
  backwardQWorkgroupBytes,
  type BackwardParams,
  type PreprocessParams,
} from './kernels/backward.js';
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
import { chooseTiles, type StorageType } from './kernels/common.js';
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
import { modsOf, modsParam } from './modifiers.js';
import { pipeline } from './pipelines.js';
import {
  BACKWARD_KV_MATRIX_TILES,
  BACKWARD_Q_MATRIX_TILES,
  BACKWARD_TILED_FALLBACK,
  BACKWARD_TILED_MAX_ACCUMULATOR,
  BACKWARD_TILED_MAX_INVOCATIONS,
  BACKWARD_TILED_TILES,
  FORWARD_MATRIX_SPLIT_TILES,
  FORWARD_MATRIX_TILES,
  TILED_MAX_ACCUMULATOR,
  invocationLimit,
  tiledCandidates,
  warpsThatFit,
} from './tuning.js';

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
  // Nor with an additive bias or ALiBi: the halves' 22-bit operands put about 1e-6 into the logits, and
  // the sharper softmax these give averages it less (H200, test/modifiers-matrix.test.ts: a (B, H, Nq, Nk)
  // bias of N(0, 4) gave out an error of 2.9e-6, 4× the f32 standard's 7.3e-7 and past the rule's 2.5e-6;
  // unit-normal inputs with a window, mask, block mask, soft-cap or dropout stay within it, at 4–5× the
  // standard's error under the rule's 1e-6).
  if (p.dtype === 'f32' && (p.precision !== 'high' || p.D > 128 || p.causal || p.mods.bias || p.mods.alibi)) return undefined;
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

/** The tiles of a family's kernel: query rows per workgroup (the dispatch is (⌈Nq/Br⌉, B·H)), the key block, workgroup memory. */
export interface KernelTiles {
  Br: number;
  Bc: number;
  onChipBytes: number;
}

/**
 * A forward kernel family (a schedule): whether it runs a problem on a device (its compile-time params,
 * or undefined), the tiles of those params, and their WGSL. `modifiers`: its WGSL calls the variants'
 * hooks (kernels/modifiers.ts), so calls with variants beyond causal may run on it.
 */
interface ForwardFamily<P extends object> {
  modifiers: boolean;
  params(p: Problem, gpu: Gpu): P | undefined;
  tiles(params: P): KernelTiles;
  wgsl(params: P, workgroupLimit: number): string;
}

/** The forward families, by kernel name (the pipeline cache's kernel name too). */
export const FORWARD_FAMILIES = {
  forwardMatrix: {
    modifiers: true,
    params: forwardMatrixParams,
    tiles: (x: ForwardMatrixParams) => ({ Br: forwardMatrixRows(x), Bc: x.Bc, onChipBytes: forwardMatrixWorkgroupBytes(x) }),
    wgsl: forwardMatrixWGSL,
  } satisfies ForwardFamily<ForwardMatrixParams>,
  forwardTiled: {
    modifiers: true,
    params: forwardTiledParams,
    tiles: (x: ForwardTiledParams) => ({ Br: x.Br, Bc: x.Bc, onChipBytes: forwardTiledWorkgroupBytes(x) }),
    wgsl: forwardTiledWGSL,
  } satisfies ForwardFamily<ForwardTiledParams>,
  forward: {
    modifiers: true,
    params: forwardParams,
    tiles: (x: ForwardParams) => ({ Br: x.Br, Bc: x.Bc, onChipBytes: forwardWorkgroupBytes(x) }),
    wgsl: forwardWGSL,
  } satisfies ForwardFamily<ForwardParams>,
};
type ForwardKernel = keyof typeof FORWARD_FAMILIES;

/** Subgroup matrices where they apply (f16, and f32 split into f16 halves), else the tiled kernel, else the portable one, which runs everything. */
const FORWARD_ORDER: readonly ForwardKernel[] = ['forwardMatrix', 'forwardTiled', 'forward'];

/** The forward kernel a problem runs and its compile-time configuration. */
export type ForwardChoice = { [K in ForwardKernel]: { kernel: K; params: Parameters<(typeof FORWARD_FAMILIES)[K]['wgsl']>[0] } }[ForwardKernel];

/** The first family in FORWARD_ORDER that runs the problem (with its variants, if any). */
export function forwardChoice(p: Problem, gpu: Gpu): ForwardChoice {
  const mods = modsOf(p) !== '';
  for (const kernel of FORWARD_ORDER) {
    const family: ForwardFamily<object> = FORWARD_FAMILIES[kernel] as never;
    if (mods && !family.modifiers) continue;
    const params = family.params(p, gpu);
    if (params) return { kernel, params } as ForwardChoice;
  }
  return { kernel: 'forward', params: forwardParams(p, gpu) };
}

/** Query rows per workgroup (the dispatch is (⌈Nq/Br⌉, B·H)) and workgroup memory of a choice. */
export function forwardTiles(choice: ForwardChoice): KernelTiles {
  const family: ForwardFamily<object> = FORWARD_FAMILIES[choice.kernel] as never;
  return family.tiles(choice.params);
}

/** The forward pipeline of a choice and its query rows per workgroup. */
export async function forwardKernel(gpu: Gpu, choice: ForwardChoice): Promise<{ pipe: GPUComputePipeline; Br: number }> {
  const family: ForwardFamily<object> = FORWARD_FAMILIES[choice.kernel] as never;
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  return { pipe: await pipeline(gpu.device, choice.kernel, choice.params, (x) => family.wgsl(x, limit)), Br: family.tiles(choice.params).Br };
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

/**
 * A backward kernel family: its dK/dV and dQ kernels (the preprocess is always the portable one), with
 * their params where it runs a problem, their blocks (kv: Bc the keys a workgroup owns, Br the query rows
 * it steps by; q: Br the query rows a workgroup owns, Bc the keys it steps by), their WGSL and the names of
 * their pipelines. `modifiers` as for the forward families.
 */
interface BackwardFamily<KV extends object, Q extends object> {
  modifiers: boolean;
  names: { kv: string; q: string };
  params(p: Problem, gpu: Gpu): { kv: KV; q: Q } | undefined;
  tiles(kv: KV, q: Q): Record<'kv' | 'q', KernelTiles>;
  wgsl: { kv(params: KV, workgroupLimit: number): string; q(params: Q, workgroupLimit: number): string };
}

/** The backward families, by kernel name. */
export const BACKWARD_FAMILIES = {
  matrix: {
    modifiers: true,
    names: { kv: 'backwardKVMatrix', q: 'backwardQMatrix' },
    params: backwardMatrixParams,
    tiles: (kv: BackwardKVMatrixParams, q: BackwardQMatrixParams) => ({
      kv: { Br: FRAGMENT * kv.QF, Bc: backwardKVMatrixKeys(kv), onChipBytes: backwardKVMatrixWorkgroupBytes(kv) },
      q: { Br: backwardQMatrixRows(q), Bc: q.Bc, onChipBytes: backwardQMatrixWorkgroupBytes(q) },
    }),
    wgsl: { kv: backwardKVMatrixWGSL, q: backwardQMatrixWGSL },
  } satisfies BackwardFamily<BackwardKVMatrixParams, BackwardQMatrixParams>,
  tiled: {
    modifiers: true,
    names: { kv: 'backwardKVTiled', q: 'backwardQTiled' },
    params: backwardTiledParams,
    tiles: (kv: BackwardTiledParams, q: BackwardTiledParams) => ({
      kv: { Br: kv.Br, Bc: kv.Bc, onChipBytes: backwardTiledWorkgroupBytes(kv, true) },
      q: { Br: q.Br, Bc: q.Bc, onChipBytes: backwardTiledWorkgroupBytes(q, false) },
    }),
    wgsl: { kv: backwardKVTiledWGSL, q: backwardQTiledWGSL },
  } satisfies BackwardFamily<BackwardTiledParams, BackwardTiledParams>,
  portable: {
    modifiers: true,
    names: { kv: 'backwardKV', q: 'backwardQ' },
    params: (p: Problem, gpu: Gpu) => {
      const { kv, q } = backwardParams(p, gpu);
      return { kv, q };
    },
    tiles: (kv: BackwardParams, q: BackwardParams) => ({
      kv: { Br: kv.Br, Bc: kv.Bc, onChipBytes: backwardKVWorkgroupBytes(kv) },
      q: { Br: q.Br, Bc: q.Bc, onChipBytes: backwardQWorkgroupBytes(q) },
    }),
    wgsl: { kv: backwardKVWGSL, q: backwardQWGSL },
  } satisfies BackwardFamily<BackwardParams, BackwardParams>,
};
type BackwardKernel = keyof typeof BACKWARD_FAMILIES;

/** Subgroup matrices where they apply (f16), else the tiled kernels (GPUs), else the portable ones, which run everything. */
const BACKWARD_ORDER: readonly BackwardKernel[] = ['matrix', 'tiled', 'portable'];

/** The backward kernels a problem runs and their configurations. */
export type BackwardChoice = {
  [K in BackwardKernel]: { kernel: K; kv: Parameters<(typeof BACKWARD_FAMILIES)[K]['wgsl']['kv']>[0]; q: Parameters<(typeof BACKWARD_FAMILIES)[K]['wgsl']['q']>[0] };
}[BackwardKernel];

/** The first family in BACKWARD_ORDER that runs the problem (with its variants, if any). */
export function backwardChoice(p: Problem, gpu: Gpu): BackwardChoice {
  const mods = modsOf(p) !== '';
  for (const kernel of BACKWARD_ORDER) {
    const family: BackwardFamily<object, object> = BACKWARD_FAMILIES[kernel] as never;
    if (mods && !family.modifiers) continue;
    const params = family.params(p, gpu);
    if (params) return { kernel, kv: params.kv, q: params.q } as BackwardChoice;
  }
  const { kv, q } = backwardParams(p, gpu);
  return { kernel: 'portable', kv, q };
}

/** A backward choice's blocks and workgroup memory, dK/dV and dQ apart. */
export function backwardTiles(choice: BackwardChoice): Record<'kv' | 'q', KernelTiles> {
  const family: BackwardFamily<object, object> = BACKWARD_FAMILIES[choice.kernel] as never;
  return family.tiles(choice.kv, choice.q);
}

/** The dK/dV and dQ pipelines of a choice, with the keys and query rows each workgroup owns. */
export async function backwardKernels(gpu: Gpu, choice: BackwardChoice): Promise<{ kv: GPUComputePipeline; q: GPUComputePipeline; keys: number; rows: number }> {
  const family: BackwardFamily<object, object> = BACKWARD_FAMILIES[choice.kernel] as never;
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const tiles = family.tiles(choice.kv, choice.q);
  return {
    kv: await pipeline(gpu.device, family.names.kv, choice.kv, (x) => family.wgsl.kv(x, limit)),
    q: await pipeline(gpu.device, family.names.q, choice.q, (x) => family.wgsl.q(x, limit)),
    keys: tiles.kv.Bc,
    rows: tiles.q.Br,
  };
}

