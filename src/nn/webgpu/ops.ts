/**
 * The nn ops on the webgpu backend. Tensors are GpuTensors on one device; every op makes its output (and
 * its uniform block) through GpuBuffers, so each is counted in the MemoryTracker, and submits its own
 * work at once, so a dead input can be destroyed by the next line of the caller. Nothing is read back
 * until `output` asks for it.
 *
 * Each op runs inside 'out-of-memory' and 'validation' error scopes: a buffer larger than the device's
 * binding or buffer limit, or an allocation the device refuses, becomes an OutOfMemoryError; a GPUBuffer
 * of another device becomes a ValueError; either way what the op made is destroyed first.
 *
 * slice and write move rows with the copy kernel (kernels.ts), which binds only the ranges it copies: so
 * the caller's x and a tensor from `empty` may exceed the binding limit (up to maxBufferSize), as long as
 * each slice is under it.
 */
import { forward } from '../../api.js';
import { OutOfMemoryError, ValueError } from '../../errors.js';
import { encodeF16 } from '../../f16.js';
import type { MemoryTracker } from '../../memory.js';
import { BYTES_PER_ELEMENT, isGpuBuffer, type AnyTensor, type GpuTensor, type Tensor, type TensorData } from '../../tensor.js';
import { freeDestroyed, GpuBuffers } from '../../webgpu/buffers.js';
import type { Gpu } from '../../webgpu/device.js';
import { dispatch, pipeline } from '../../webgpu/pipelines.js';
import { checkAttention, checkEmbedding, checkLayerNorm, checkLinear, checkSlice, checkTensor, checkWrite, LAYER_NORM_EPS, sizeOf, type AttentionConfig, type LinearOptions, type NnDType, type Ops } from '../ops.js';
import {
  copyDims,
  copyUnits,
  copyWGSL,
  embeddingDims,
  embeddingWGSL,
  layerNormDims,
  layerNormWGSL,
  linearDims,
  LINEAR_ROWS_MAX,
  linearRowsWGSL,
  linearTile,
  linearWGSL,
  type CopyParams,
  type LinearParams,
  type LinearRowsParams,
} from './kernels.js';

/** What an op's body makes its buffers with: each is counted, and destroyed if the op fails. */
interface Make {
  /** A storage buffer; `bound` false: only copied into (held to maxBufferSize, not maxBufferBytes). */
  storage(bytes: number, name: string, bound?: boolean): GPUBuffer;
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
  readonly maxBufferBytes: number;
  /** Where maxBufferBytes comes from, for the OutOfMemoryError. */
  private readonly limitSource: string;
  private readonly buffers: GpuBuffers;
  /** The last op's completion (see `op`). */
  private queue: Promise<unknown> = Promise.resolve();

  /** `maxBufferBytes` (tests): a lower limit for the tensors made here (see OpsConfig). */
  constructor(
    readonly gpu: Gpu,
    readonly dtype: NnDType,
    readonly memory: MemoryTracker,
    maxBufferBytes?: number,
  ) {
    this.buffers = new GpuBuffers(gpu.device, memory);
    const { maxStorageBufferBindingSize, maxBufferSize } = gpu.device.limits;
    const device = Math.min(maxStorageBufferBindingSize, maxBufferSize);
    this.maxBufferBytes = Math.min(device, maxBufferBytes ?? Infinity);
    this.limitSource = this.maxBufferBytes < device ? "the ops' maxBufferBytes" : 'maxStorageBufferBindingSize, maxBufferSize';
  }

  /** Invocations per workgroup of the layer norm and copy kernels. */
  private get WG(): number {
    return Math.min(128, this.gpu.limits.maxComputeInvocationsPerWorkgroup, this.gpu.limits.maxComputeWorkgroupSizeX);
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
  private op<T extends GPUBuffer | undefined>(argument: string, what: string, body: (make: Make) => Promise<T>): Promise<T> {
    const run = this.queue.then(() => this.scoped(argument, what, body));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async scoped<T extends GPUBuffer | undefined>(argument: string, what: string, body: (make: Make) => Promise<T>): Promise<T> {
    const { device, buffers } = this;
    const made: GPUBuffer[] = [];
    const fits = (bytes: number, name: string, bound = true) => {
      const [limit, source] = bound ? [this.maxBufferBytes, this.limitSource] : [device.limits.maxBufferSize, 'maxBufferSize'];
      if (bytes > limit) {
        throw new OutOfMemoryError(argument, `at most ${limit} bytes per buffer on this device (${source}) for ${name}`, `${bytes} bytes`);
      }
    };
    const keep = (b: GPUBuffer) => (made.push(b), b);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const make: Make = {
      storage: (bytes, name, bound = true) => (fits(bytes, name, bound), keep(buffers.create(bytes, name, argument, usage, bound))),
      upload: (data, name) => (fits(data.byteLength, name), keep(buffers.upload(data, name, argument))),
      uniform: (bytes) => keep(buffers.uniform(bytes, 'dims')),
      adopt: (b) => keep(buffers.adopt(b)),
    };
    device.pushErrorScope('out-of-memory');
    device.pushErrorScope('validation');
    let out: T | undefined;
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
    if (oom) {
      await freeDestroyed(device); // before the next op makes its buffers (see freeDestroyed)
      throw new OutOfMemoryError(argument, `device memory for ${what}`, oom.message);
    }
    if (failure !== undefined) throw failure;
    if (invalid) throw new ValueError(`${argument}.data`, 'GPUBuffers of the device the ops run on', invalid.message);
    return out as T;
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

  async empty(shape: readonly number[], what: string, argument: string): Promise<AnyTensor> {
    const data = await this.op(argument, what, async (make) => make.storage(this.bytes(sizeOf(shape)), what, false));
    return this.gpuTensor(data, shape);
  }

  async slice(t: AnyTensor, start: number, count: number, name: string): Promise<AnyTensor> {
    const host = !isGpuBuffer(t.data);
    const { row, shape } = checkSlice(host ? 'cpu' : 'webgpu', this.dtype, name, t, start, count);
    const what = `rows ${start}..${start + count - 1} of ${name}`;
    const data = await this.op(name, what, async (make) => {
      if (host) return make.upload((t.data as TensorData).subarray(start * row, (start + count) * row), what);
      const y = make.storage(this.bytes(count * row), what);
      await this.copy(make, t.data as GPUBuffer, start * row, y, 0, count * row);
      return y;
    });
    return this.gpuTensor(data, shape);
  }

  async write(into: AnyTensor, start: number, t: AnyTensor): Promise<void> {
    const { row, elements } = checkWrite(this, into, start, t);
    await this.op('t', `rows ${start}..${start + t.shape[0] - 1} of into`, async (make) => {
      await this.copy(make, t.data as GPUBuffer, 0, into.data as GPUBuffer, start * row, elements);
      return undefined;
    });
  }

  /**
   * Encode and submit dst[dst0 ..] = src[src0 ..], `count` elements, as copy dispatches that bind ranges of
   * the two buffers: from the storage offset alignment below the first element to the word holding the
   * last. One dispatch, unless that slack would take a range past maxBufferBytes.
   */
  private async copy(make: Make, src: GPUBuffer, src0: number, dst: GPUBuffer, dst0: number, count: number): Promise<void> {
    const e = BYTES_PER_ELEMENT[this.dtype];
    const align = this.gpu.limits.minStorageBufferOffsetAlignment;
    const params: CopyParams = { dtype: this.dtype, WG: this.WG };
    const pipe = await pipeline(this.device, 'copy', params, copyWGSL);
    // A range holds its piece, at most align − e bytes before it and 2 after it (the rest of its last word).
    const piece = Math.max(1, Math.floor((this.maxBufferBytes - align - 4) / e));
    const range = (buffer: GPUBuffer, first: number, n: number) => {
      const offset = Math.floor((first * e) / align) * align;
      const end = Math.ceil(((first + n) * e) / 4) * 4;
      return { binding: { buffer, offset, size: end - offset }, at: (first * e - offset) / e };
    };
    const enc = this.device.createCommandEncoder();
    for (let i = 0; i < count; i += piece) {
      const n = Math.min(piece, count - i);
      const [from, to] = [range(src, src0 + i, n), range(dst, dst0 + i, n)];
      const dims = make.uniform(copyDims(n, from.at, to.at));
      dispatch(enc, this.device, pipe, [dims, from.binding, to.binding], [this.groups(Math.ceil(copyUnits(this.dtype, n, to.at) / this.WG)), 1]);
    }
    this.device.queue.submit([enc.finish()]);
  }

  attentionBytesPerSequence(N: number, C: number, config: AttentionConfig): number {
    // The output (N, C) in the dtype and the log-sum-exp (H, N) in f32; q, k and v are bound in place.
    return Math.max(N * C * this.bytes(1), config.heads * N * 4);
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

  async linear(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, options: LinearOptions = {}): Promise<AnyTensor> {
    const { M, N, K, shape, activation, residual } = checkLinear(this, x, weight, bias, options);
    if (M <= LINEAR_ROWS_MAX) return this.linearRows(x, weight, bias, { M, N, K, shape, activation, residual });
    const params: LinearParams = { dtype: this.dtype, activation, residual: residual !== undefined, ...linearTileFor(M, N) };
    const { BM, BN } = linearTile(params);
    const limit = this.gpu.limits.maxComputeWorkgroupStorageSize;
    const data = await this.op('x', `the linear output [${shape.join(', ')}]`, async (make) => {
      const pipe = await pipeline(this.device, 'linear', params, (p) => linearWGSL(p, limit));
      const y = make.storage(this.bytes(M * N), 'y');
      const dims = make.uniform(linearDims(M, N, K));
      const bindings = [dims, x.data, weight.data, bias.data, y, ...(residual ? [residual.data] : [])] as GPUBuffer[];
      this.submit(pipe, bindings, [this.groups(Math.ceil(N / BN)), this.groups(Math.ceil(M / BM))]);
      return y;
    });
    return this.gpuTensor(data, shape);
  }

  /** linear for M ≤ LINEAR_ROWS_MAX rows: matrix-vector products (see kernels.ts). */
  private async linearRows(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, s: ReturnType<typeof checkLinear>): Promise<AnyTensor> {
    const { M, N, K, shape, activation, residual } = s;
    const params: LinearRowsParams = { dtype: this.dtype, activation, residual: residual !== undefined, MR: 2 ** Math.ceil(Math.log2(M)), WG: this.WG };
    const data = await this.op('x', `the linear output [${shape.join(', ')}]`, async (make) => {
      const pipe = await pipeline(this.device, 'linearRows', params, linearRowsWGSL);
      const y = make.storage(this.bytes(M * N), 'y');
      const bindings = [make.uniform(linearDims(M, N, K)), x.data, weight.data, bias.data, y, ...(residual ? [residual.data] : [])] as GPUBuffer[];
      this.submit(pipe, bindings, [this.groups(Math.ceil(N / this.WG)), 1]);
      return y;
    });
    return this.gpuTensor(data, shape);
  }

  async embedding(tokens: ArrayLike<number>, positions: ArrayLike<number>, tokenTable: AnyTensor, positionTable: AnyTensor, shape: readonly number[]): Promise<AnyTensor> {
    const e = checkEmbedding(this, tokens, positions, tokenTable, positionTable, shape);
    const params = { dtype: this.dtype, WG: this.WG };
    const data = await this.op('tokens', `the embedding output [${e.shape.join(', ')}]`, async (make) => {
      const pipe = await pipeline(this.device, 'embedding', params, embeddingWGSL);
      const ids = new Uint32Array(2 * e.M);
      ids.set(e.tokens);
      ids.set(e.positions, e.M);
      const y = make.storage(this.bytes(e.M * e.C), 'y');
      const bindings = [make.uniform(embeddingDims(e.M, e.C)), make.upload(ids, 'token ids'), tokenTable.data as GPUBuffer, positionTable.data as GPUBuffer, y];
      this.submit(pipe, bindings, [this.groups(Math.ceil((e.M * e.C) / this.WG)), 1]);
      return y;
    });
    return this.gpuTensor(data, e.shape);
  }

  async layerNorm(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, residual?: AnyTensor): Promise<AnyTensor> {
    const { M, C, shape } = checkLayerNorm(this, x, weight, bias, residual);
    const params = { dtype: this.dtype, residual: residual !== undefined, WG: this.WG };
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
