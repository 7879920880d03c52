/** flashattn: exact attention that never materialises the Nq×Nk score matrix. */
// The declarations name WebGPU's types (GPUDevice, GPUBuffer): this brings them to a user's project
// (@webgpu/types is a dependency), so it compiles with no setup of its own.
/// <reference types="@webgpu/types" preserve="true" />
export { backward, createKVCache, forward, type BackwardResult, type ForwardResult, type ResolvedBackend } from './api.js';
export {
  BackendUnavailableError,
  CheckpointError,
  DeviceLostError,
  DTypeError,
  FlashAttnError,
  NotSupportedError,
  OutOfMemoryError,
  ShapeError,
  ValueError,
} from './errors.js';
export { cpuThreads, type CpuThreads } from './cpu/pool.js';
export { decodeF16, encodeF16, f16ToNumber, numberToF16, roundToF16 } from './f16.js';
export { attentionFlops } from './flops.js';
export { MemoryTracker, memory } from './memory.js';
export { KVCache, type CacheCallOptions, type KVCacheConfig } from './kvcache.js';
export { createEncoder, encoderWeights, type Encoder, type EncoderConfig, type LayerWeights } from './models/encoder.js';
export { createGPT2, gpt2Checkpoint, gpt2Config, type GPT2, type GPT2Checkpoint, type GPT2Config, type GPT2Options } from './models/gpt2.js';
export { readGPT2, type GPT2Folder } from './models/gpt2-folder.js';
export { argmax, generate, sampler, type GenerateOptions, type GenerateResult, type SamplingOptions } from './models/generate.js';
export { gpt2Tokenizer, tokenizerFromFiles, type Tokenizer, type TokenizerFiles } from './models/tokenizer.js';
export { encodeSafetensors, parseSafetensors, type Safetensors } from './models/safetensors.js';
export type { Algorithm, AttentionOptions, Backend, Precision } from './options.js';
export { tensor, type AnyTensor, type DType, type GpuTensor, type Layout, type Tensor, type TensorData } from './tensor.js';
export { webgpuDevice } from './webgpu/device.js';
