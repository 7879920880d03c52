/**
 * The nn ops on the webgpu backend. Tensors are GpuTensors on one device; every op makes its output (and
 * its uniform block) through GpuBuffers, so each is counted in the MemoryTracker, and submits its own
 * work at once, so a dead input can be destroyed by the next line of the caller. Nothing is read back
 * until `output` asks for it.
 *
 * Each op runs inside 'out-of-memory' and 'validation' error scopes: a buffer larger than the device's
 * binding or buffer limit, or an allocation the device refuses, becomes an OutOfMemoryError; a GPUBuffer
 * of another device becomes a ValueError; either way what the op made is destroyed first.
 */
import { forward } from '../../api.js';
import { OutOfMemoryError, ValueError } from '../../errors.js';
import { encodeF16 } from '../../f16.js';
import type { MemoryTracker } from '../../memory.js';
import { BYTES_PER_ELEMENT, isGpuBuffer, type AnyTensor, type GpuTensor, type Tensor } from '../../tensor.js';
import { GpuBuffers } from '../../webgpu/buffers.js';
import type { Gpu } from '../../webgpu/device.js';
import { dispatch, pipeline } from '../../webgpu/pipelines.js';
import { checkAttention, checkLayerNorm, checkLinear, checkTensor, LAYER_NORM_EPS, sizeOf, type AttentionConfig, type NnDType, type Ops } from '../ops.js';
import { layerNormDims, layerNormWGSL, linearDims, linearTile, linearWGSL, type LinearParams } from './kernels.js';

/** What an op's body makes its buffers with: each is counted, and destroyed if the op fails. */
interface Make {
  storage(bytes: number, name: string): GPUBuffer;
  upload(data: ArrayBufferView, name: string): GPUBuffer;
  uniform(bytes: ArrayBuffer): GPUBuffer;
  /** Count a buffer another call handed over (the attention output). */
  adopt(buffer: GPUBuffer): GPUBuffer;
}

/**
 * The linear tile for y (M, N): 128×128 (8×8 per invocation) when that still gives 256 workgroups or more,
 * else 64×64 (4×4), so that small problems keep a GPU's cores busy.
 */
export function linearTileFor(M: number, N: number): Pick<LinearParams, 'RM' | 'CN' | 'BK'> {
  return Math.ceil(M / 128) * Math.ceil(N / 128) >= 256 ? { RM: 8, CN: 2, BK: 8 } : { RM: 4, CN: 1, BK: 16 };
}

export class WebgpuOps implements Ops {
  readonly backend = 'webgpu';
  private readonly buffers: GpuBuffers;
  /** The last op's completion (see `op`). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly gpu: Gpu,
    readonly dtype: NnDType,
    readonly memory: MemoryTracker,
  ) {
    this.buffers = new GpuBuffers(gpu.device, memory);
  }

  private get device(): GPUDevice {
    return this.gpu.device;
  }

  private gpuTensor(data: GPUBuffer, shape: readonly number[]): GpuTensor {
    return { data, dtype: this.dtype, shape: [...shape] };
  }

  private bytes(elements: number): number {
    return elements * BYTES_PER_ELEMENT[this.dtype];
  }

  /**
   * Run one op's body, which makes its buffers through `make` and returns its output. Buffers larger
   * than the device allows, or refused by it, give an OutOfMemoryError naming `argument` (the input
   * whose size asked for them); everything made but the output is destroyed when the op ends. Ops run
   * one at a time, in call order: error scopes are a stack per device, so two ops awaiting at once
   * would pop each other's.
   */
  private op(argument: string, what: string, body: (make: Make) => Promise<GPUBuffer>): Promise<GPUBuffer> {
    const run = this.queue.then(() => this.scoped(argument, what, body));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async scoped(argument: string, what: string, body: (make: Make) => Promise<GPUBuffer>): Promise<GPUBuffer> {
    const { device, buffers } = this;
    const made: GPUBuffer[] = [];
    const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
    const fits = (bytes: number, name: string) => {
      if (bytes > limit) {
        throw new OutOfMemoryError(argument, `at most ${limit} bytes per buffer on this device (maxStorageBufferBindingSize, maxBufferSize) for ${name}`, `${bytes} bytes`);
      }
    };
    const keep = (b: GPUBuffer) => (made.push(b), b);
    const make: Make = {
      storage: (bytes, name) => (fits(bytes, name), keep(buffers.create(bytes, name, argument))),
      upload: (data, name) => (fits(data.byteLength, name), keep(buffers.upload(data, name, argument))),
      uniform: (bytes) => keep(buffers.uniform(bytes, 'dims')),
      adopt: (b) => keep(buffers.adopt(b)),
    };
    device.pushErrorScope('out-of-memory');
    device.pushErrorScope('validation');
    let out: GPUBuffer | undefined;
    let failure: unknown;
    try {
      out = await body(make);
    } catch (e) {
      failure = e;
    }
    const invalid = await device.popErrorScope();
    const oom = await device.popErrorScope();
    const failed = failure !== undefined || invalid !== null || oom !== null;
    for (const b of made) if (failed || b !== out) buffers.destroy(b);
    if (oom) throw new OutOfMemoryError(argument, `device memory for ${what}`, oom.message);
    if (failure !== undefined) throw failure;
    if (invalid) throw new ValueError(`${argument}.data`, 'GPUBuffers of the device the ops run on', invalid.message);
    return out!;
  }

  async create(shape: readonly number[], fill: (values: Float32Array) => void, what: string, argument: string): Promise<AnyTensor> {
    const n = sizeOf(shape);
    const data = await this.op(argument, what, async (make) => {
      const buffer = make.storage(this.bytes(n), what);
      const values = new Float32Array(n);
      fill(values);
      const bits = this.dtype === 'f16' ? encodeF16(values, new Uint16Array(n + (n % 2))) : values; // writeBuffer takes whole 4-byte words
      this.device.queue.writeBuffer(buffer, 0, bits.buffer, 0, Math.ceil(this.bytes(n) / 4) * 4);
      return buffer;
    });
    return this.gpuTensor(data, shape);
  }

  async input(t: AnyTensor, name: string): Promise<AnyTensor> {
    if (isGpuBuffer(t.data)) return checkTensor('webgpu', this.dtype, name, t);
    checkTensor('cpu', this.dtype, name, t);
    const data = await this.op(name, name, async (make) => make.upload(t.data as ArrayBufferView, name));
    return this.gpuTensor(data, t.shape);
  }

  /** Encode one dispatch and submit it. */
  private submit(pipe: GPUComputePipeline, bindings: GPUBuffer[], groups: [number, number]): void {
    const enc = this.device.createCommandEncoder();
    dispatch(enc, this.device, pipe, bindings, groups);
    this.device.queue.submit([enc.finish()]);
  }

  /** Workgroups along one dispatch dimension: `n`, capped at the device's limit (the kernels grid-stride). */
  private groups(n: number): number {
    return Math.min(n, this.gpu.limits.maxComputeWorkgroupsPerDimension);
  }

  async linear(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, options: { relu?: boolean } = {}): Promise<AnyTensor> {
    const { M, N, K, shape } = checkLinear(this, x, weight, bias);
    const params: LinearParams = { dtype: this.dtype, relu: options.relu ?? false, ...linearTileFor(M, N) };
    const { BM, BN } = linearTile(params);
    const limit = this.gpu.limits.maxComputeWorkgroupStorageSize;
    const data = await this.op('x', `the linear output [${shape.join(', ')}]`, async (make) => {
      const pipe = await pipeline(this.device, 'linear', params, (p) => linearWGSL(p, limit));
      const y = make.storage(this.bytes(M * N), 'y');
      const dims = make.uniform(linearDims(M, N, K));
      this.submit(pipe, [dims, x.data as GPUBuffer, weight.data as GPUBuffer, bias.data as GPUBuffer, y], [this.groups(Math.ceil(N / BN)), this.groups(Math.ceil(M / BM))]);
      return y;
    });
    return this.gpuTensor(data, shape);
  }

  async layerNorm(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, residual?: AnyTensor): Promise<AnyTensor> {
    const { M, C, shape } = checkLayerNorm(this, x, weight, bias, residual);
    const WG = Math.min(128, this.gpu.limits.maxComputeInvocationsPerWorkgroup, this.gpu.limits.maxComputeWorkgroupSizeX);
    const params = { dtype: this.dtype, residual: residual !== undefined, WG };
    const data = await this.op('x', `the layer norm output [${shape.join(', ')}]`, async (make) => {
      const pipe = await pipeline(this.device, 'layerNorm', params, layerNormWGSL);
      const y = make.storage(this.bytes(M * C), 'y');
      const dims = make.uniform(layerNormDims(M, C, LAYER_NORM_EPS));
      const bindings = [dims, x.data, weight.data, bias.data, y, ...(residual ? [residual.data] : [])] as GPUBuffer[];
      this.submit(pipe, bindings, [this.groups(M), 1]);
      return y;
    });
    return this.gpuTensor(data, shape);
  }

  async attention(q: AnyTensor, k: AnyTensor, v: AnyTensor, config: AttentionConfig): Promise<AnyTensor> {
    const { B, N, C, H, D } = checkAttention(this, q, k, v, config);
    const heads = (t: AnyTensor) => this.gpuTensor(t.data as GPUBuffer, [B, N, H, D]);
    const options = { backend: 'webgpu', layout: 'BNHD', causal: config.causal, algorithm: config.algorithm, memory: this.memory, device: this.device } as const;
    const data = await this.op('q', `attention over [${B}, ${N}, ${H}, ${D}]`, async (make) => {
      const { out, lse } = await forward(heads(q), heads(k), heads(v), options);
      lse.data.destroy(); // handed over, so already uncounted
      return make.adopt(out.data);
    });
    return this.gpuTensor(data, [B, N, C]);
  }

  async output(t: AnyTensor, host: boolean): Promise<AnyTensor> {
    const buffer = t.data as GPUBuffer;
    if (host) {
      const bytes = await this.buffers.read(buffer, this.bytes(sizeOf(t.shape)), 't');
      this.free(t);
      return { data: this.dtype === 'f16' ? new Uint16Array(bytes) : new Float32Array(bytes), dtype: this.dtype, shape: [...t.shape] } as Tensor;
    }
    await this.device.queue.onSubmittedWorkDone();
    return this.gpuTensor(this.buffers.handOver(buffer), t.shape);
  }

  free(t: AnyTensor): void {
    this.buffers.destroy(t.data as GPUBuffer);
  }
}
