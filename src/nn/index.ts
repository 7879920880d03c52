/**
 * The nn layer's entry: ops for a backend (see ops.ts for what they compute and their shapes). The
 * webgpu ops run on the caller's device or the library's own; f16 there needs the adapter's shader-f16.
 */
import { DTypeError, ValueError, describe } from '../errors.js';
import { MemoryTracker, memory as defaultMemory } from '../memory.js';
import { defaultGpu, gpuOf } from '../webgpu/device.js';
import { CpuOps } from './cpu/ops.js';
import type { NnBackend, NnDType, Ops } from './ops.js';
import { WebgpuOps } from './webgpu/ops.js';

export type { Activation, AttentionConfig, LinearOptions, NnBackend, NnDType, Ops } from './ops.js';

export interface OpsConfig {
  backend: NnBackend;
  dtype: NnDType;
  /** Where every buffer the ops make is counted; default: the shared `memory` tracker. */
  memory?: MemoryTracker;
  /** webgpu: the caller's device; default: the library's own. */
  device?: GPUDevice;
  /**
   * Internal, for tests: a per-tensor limit in bytes below the backend's own (Ops.maxBufferBytes), which
   * the ops enforce as they would the device's, so that a model's slicing runs on small inputs.
   */
  maxBufferBytes?: number;
  /**
   * Internal, for tests: webgpu's matrix-vector kernel for linears of at most 8 rows (decode): 'column'
   * (linearRows: one invocation a column; the default on software adapters) or 'split' (linearSplit: 32
   * invocations a column; the default on GPUs).
   */
  linearRows?: 'column' | 'split';
}

/** Ops for `config.backend` in `config.dtype`; errors name the field of `config` at fault. */
export async function createOps(config: OpsConfig): Promise<Ops> {
  const { backend, dtype, device } = config;
  if (backend !== 'cpu' && backend !== 'webgpu') throw new ValueError('config.backend', "'cpu' or 'webgpu'", describe(backend));
  if (dtype !== 'f32' && dtype !== 'f16') throw new DTypeError('config.dtype', "'f32' or 'f16'", describe(dtype));
  if (config.memory !== undefined && !(config.memory instanceof MemoryTracker)) {
    throw new ValueError('config.memory', 'a MemoryTracker', describe(config.memory));
  }
  const { maxBufferBytes } = config;
  if (maxBufferBytes !== undefined && (!Number.isSafeInteger(maxBufferBytes) || maxBufferBytes < 1)) {
    throw new ValueError('config.maxBufferBytes', 'a positive integer', describe(maxBufferBytes));
  }
  const memory = config.memory ?? defaultMemory;
  if (backend === 'cpu') return new CpuOps(dtype, memory, maxBufferBytes);
  if (device !== undefined && (typeof device !== 'object' || device === null || typeof device.createBuffer !== 'function')) {
    throw new ValueError('config.device', 'a GPUDevice', describe(device));
  }
  const gpu = device ? gpuOf(device) : await defaultGpu();
  if (dtype === 'f16' && !gpu.f16) throw new DTypeError('config.dtype', "'f32' (this device lacks shader-f16, which f16 storage needs)", "'f16'");
  const { linearRows } = config;
  if (linearRows !== undefined && linearRows !== 'column' && linearRows !== 'split') throw new ValueError('config.linearRows', "'column', 'split' or undefined", describe(linearRows));
  return new WebgpuOps(gpu, dtype, memory, maxBufferBytes, linearRows ?? (gpu.software ? 'column' : 'split'));
}
