/**
 * The public entry points. One path for data: arguments are checked (nothing runs on bad input), the
 * backend is chosen once, and the backend's forward or backward runs. Inputs are never modified.
 */
import { cpuBackward, cpuForward } from './cpu/index.js';
import { DTypeError, ValueError } from './errors.js';
import type { AttentionOptions } from './options.js';
import { checkBackward, checkForward, type Problem } from './problem.js';
import { referenceBackward, referenceForward } from './reference/index.js';
import type { AnyTensor, GpuTensor, Tensor } from './tensor.js';
import { preferWebgpu } from './webgpu/device.js';
import { webgpuBackward, webgpuForward } from './webgpu/index.js';
import { zeroBiasGrad } from './webgpu/bias-grad.js';
import { biasGradIsZero } from './modifiers.js';
import { webgpuStandardBackward, webgpuStandardForward } from './webgpu/standard.js';
import { CpuCacheStore } from './cpu/cache.js';
import { KVCache, cacheGeometry, type CachePrefill, type KVCacheConfig } from './kvcache.js';
import { memory as defaultMemory } from './memory.js';
import { BackendUnavailableError } from './errors.js';
import { WebgpuCacheStore, typedPrompt } from './webgpu/cache.js';
import { biasGradOutput, varlenBackward, varlenForward, type RunBackward, type RunForward } from './varlen.js';
import { defaultGpu, gpuOf } from './webgpu/device.js';

/** The backends that run computations ('auto' resolves to one of them). */
export type ResolvedBackend = 'cpu' | 'reference' | 'webgpu';

export interface ForwardResult<T extends AnyTensor = Tensor> {
  /** Like q: (B, Nq, H, D) or (B, H, Nq, D) per the layout, in q's dtype. */
  out: T;
  /** (B, H, Nq) log-sum-exp of each query row's scaled logits, natural log; f32 (f64 for f64 inputs). −∞ for a row that sees no key. */
  lse: T;
  backend: ResolvedBackend;
}

export interface BackwardResult<T extends AnyTensor = Tensor> {
  /** Gradients of sum(out ∘ dout), shaped and typed like q, k and v. */
  dq: T;
  dk: T;
  dv: T;
  /** With options.bias and options.biasGrad: the bias's gradient, the bias's shape, f32 (f64 for f64 inputs); a GpuTensor for GPUBuffer inputs. */
  dbias?: T;
  backend: ResolvedBackend;
}


async function resolveBackend(p: Problem): Promise<ResolvedBackend> {
  if (p.onGpu) {
    if (p.backend !== 'auto' && p.backend !== 'webgpu') {
      throw new ValueError('options.backend', "'webgpu' or 'auto' for GPUBuffer tensors", `'${p.backend}'`);
    }
    return 'webgpu';
  }
  switch (p.backend) {
    case 'auto':
      if (p.dtype === 'f64') return 'reference';
      return (await preferWebgpu(p.dtype)) ? 'webgpu' : 'cpu';
    case 'webgpu':
      return 'webgpu';
    case 'cpu':
      if (p.dtype === 'f64') throw new DTypeError('q.dtype', "'f32' or 'f16' on the cpu backend (f64 runs on 'reference')", "'f64'");
      return 'cpu';
    case 'reference':
      return 'reference';
  }
}

/**
 * Attention forward: out = softmax(scale · q kᵀ [causal mask]) v, and the log-sum-exp per row.
 * q: (B, Nq, H, D), k and v: (B, Nk, Hkv, D) with H % Hkv == 0 (axes per options.layout).
 * Typed-array tensors give typed-array results; GPUBuffer tensors (webgpu) give GPUBuffer results.
 * Packed sequences (options.cuSeqlensQ / cuSeqlensK) run one sub-problem per sequence (src/varlen.ts).
 */
export async function forward(q: Tensor, k: Tensor, v: Tensor, options?: AttentionOptions): Promise<ForwardResult<Tensor>>;
export async function forward(q: GpuTensor, k: GpuTensor, v: GpuTensor, options?: AttentionOptions): Promise<ForwardResult<GpuTensor>>;
export async function forward(q: AnyTensor, k: AnyTensor, v: AnyTensor, options?: AttentionOptions): Promise<ForwardResult<AnyTensor>> {
  const p = checkForward(q, k, v, options);
  const backend = await resolveBackend(p);
  const host = (t: AnyTensor) => t as Tensor;
  const run: RunForward = async (p, q, k, v) =>
    backend === 'webgpu'
      ? await (p.algorithm === 'standard' ? webgpuStandardForward : webgpuForward)(p, q, k, v)
      : backend === 'cpu'
        ? await cpuForward(p, host(q), host(k), host(v))
        : referenceForward(p, host(q), host(k), host(v));
  const r = p.cuSeqlens ? await varlenForward(p, q, k, v, run) : await run(p, q, k, v);
  return { ...r, backend };
}

/**
 * Attention backward with recomputation: from dout and the forward's out and lse (nothing else is saved),
 * the gradients dq, dk, dv. Options must be those of the forward call.
 */
export async function backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, options?: AttentionOptions): Promise<BackwardResult<Tensor>>;
export async function backward(
  dout: GpuTensor,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  out: GpuTensor,
  lse: GpuTensor,
  options?: AttentionOptions,
): Promise<BackwardResult<GpuTensor>>;
export async function backward(
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
  options?: AttentionOptions,
): Promise<BackwardResult<AnyTensor>> {
  const p = checkBackward(dout, q, k, v, out, lse, options);
  const backend = await resolveBackend(p);
  const h = (t: AnyTensor) => t as Tensor;
  const run: RunBackward = async (p, dout, q, k, v, out, lse) =>
    backend === 'webgpu'
      ? await (p.algorithm === 'standard' ? webgpuStandardBackward : webgpuBackward)(p, dout, q, k, v, out, lse)
      : backend === 'cpu'
        ? await cpuBackward(p, h(dout), h(q), h(k), h(v), h(out), h(lse))
        : referenceBackward(p, h(dout), h(q), h(k), h(v), h(out), h(lse));
  // A bias with one value along the keys has a zero gradient by the algebra (biasGradIsZero): the kernels
  // run without dbias and it comes back as zeros. The float64 oracle computes it as written.
  const zero = backend !== 'reference' && biasGradIsZero(p.mods);
  const kernels = zero ? { ...p, mods: { ...p.mods, bias: { ...p.mods.bias!, grad: false } } } : p;
  const r = p.cuSeqlens ? await varlenBackward(kernels, dout, q, k, v, out, lse, run) : await run(kernels, dout, q, k, v, out, lse);
  if (!zero) return { ...r, backend };
  return { ...r, dbias: p.onGpu ? await zeroBiasGrad(p) : biasGradOutput(p), backend };
}

/**
 * A KV cache for inference (src/kvcache.ts): K and V of every token so far, on the device (webgpu) or in
 * memory (cpu), contiguous or paged; cache.forward(q, k, v) appends and attends. 'auto' picks webgpu on a
 * real GPU (with shader-f16 for an f16 cache), else the cpu.
 */
export async function createKVCache(config: KVCacheConfig): Promise<KVCache> {
  const g = cacheGeometry(config);
  const memory = config.memory ?? defaultMemory;
  const backend = config.backend ?? 'auto';
  if (!['auto', 'cpu', 'webgpu'].includes(backend)) throw new ValueError('config.backend', "'auto', 'cpu' or 'webgpu'", `'${String(backend)}'`);
  const webgpu = backend === 'webgpu' || (backend === 'auto' && (config.device !== undefined || (await preferWebgpu(g.dtype))));
  if (!webgpu) return new KVCache(g, new CpuCacheStore(g, memory), memory, (q, k, v, o) => forward(q as Tensor, k as Tensor, v as Tensor, { ...o, backend: 'cpu' }));
  const gpu = config.device ? gpuOf(config.device) : await defaultGpu();
  if (g.dtype === 'f16' && !gpu.f16) throw new BackendUnavailableError('config.dtype', "'f32' (this adapter lacks shader-f16, which an f16 cache needs)", "'f16'");
  const prefill: CachePrefill = (q, k, v, o) => forward(q as Tensor, k as Tensor, v as Tensor, { ...o, backend: 'webgpu', device: gpu.device });
  return new KVCache(g, new WebgpuCacheStore(g, gpu, memory), memory, typedPrompt(gpu, memory, prefill));
}
