/** flashattn: exact attention that never materialises the Nq×Nk score matrix. */
// The declarations name WebGPU's types (GPUDevice, GPUBuffer): this brings them to a user's project
// (@webgpu/types is a dependency), so it compiles with no setup of its own.
/// <reference types="@webgpu/types" preserve="true" />
export { backward, createKVCache, forward, type BackwardResult, type ForwardResult, type ResolvedBackend } from './api.js';
export {
  BackendUnavailableError,
  DeviceLostError,
  DTypeError,
  FlashAttnError,
  NotSupportedError,
  OutOfMemoryError,
  ShapeError,
  ValueError,
} from './errors.js';
export { decodeF16, encodeF16, f16ToNumber, numberToF16, roundToF16 } from './f16.js';
export { attentionFlops } from './flops.js';
export { MemoryTracker, memory } from './memory.js';
export { KVCache, type CacheCallOptions, type KVCacheConfig } from './kvcache.js';
export { createEncoder, encoderWeights, type Encoder, type EncoderConfig, type LayerWeights } from './models/encoder.js';
export type { Algorithm, AttentionOptions, Backend, Precision } from './options.js';
export { tensor, type AnyTensor, type DType, type GpuTensor, type Layout, type Tensor, type TensorData } from './tensor.js';
export { webgpuDevice } from './webgpu/device.js';
