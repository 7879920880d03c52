/**
 * The tuning tables of the prefill kernel families: tiles per head dim measured on the GPU machines (the
 * sweeps are under bench/variants/ and bench/results/), and the fallbacks for devices with less workgroup
 * memory or fewer invocations. families.ts picks from them.
 */
import type { Gpu } from './device.js';
import type { BackwardKVMatrixParams, BackwardQMatrixParams } from './kernels/backward-matrix.js';
import type { BackwardTiledTiles } from './kernels/backward-tiled.js';
import type { ForwardMatrixParams } from './kernels/forward-matrix.js';
import type { ForwardTiledParams } from './kernels/forward-tiled.js';
import type { MatmulParams } from './kernels/standard.js';

/** Invocations a workgroup may have (a 1-D one). */
export function invocationLimit(gpu: Gpu): number {
  return Math.min(gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
}

/**
 * The warps a subgroup-matrix kernel's workgroup gets: `W`, halved while the block (W·perWarp rows or
 * keys) would be longer than the n it runs over, or W subgroups of SGS would exceed the invocation limit.
 */
export function warpsThatFit(W: number, perWarp: number, n: number, SGS: number, gpu: Gpu): number {
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
export const TILED_FALLBACK = [
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
export const BACKWARD_TILED_FALLBACK = [
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

/**
 * The entries of C each invocation of the standard baseline's matmul owns. On lavapipe 8×8: it runs a
 * workgroup's invocations in SIMD lanes and reads workgroup memory lane by lane, so each value loaded
 * should feed more products; at B=2, H=3, N=512, D=256 (f32, the webgpu standard forward and backward)
 * 4.4 CPU s with 2×4, 2.5 with 4×8, 1.8 with 8×8, the same bits each. Chromium's SwiftShader did not
 * finish test/browser.test.ts's page in 90 s with 8×8 (14 s with 2×4), so it keeps 2×4, as GPUs do.
 */
export function standardMatmulRegisters(gpu: Pick<Gpu, 'software' | 'description'>): Pick<MatmulParams, 'RM' | 'RN'> {
  return gpu.software && /llvmpipe|lavapipe/i.test(gpu.description) ? { RM: 8, RN: 8 } : { RM: 2, RN: 4 };
}
