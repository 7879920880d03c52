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
 * Inside `batch` (a model's decode step) none of that happens op by op: the ops are recorded into one
 * command encoder and submitted together, their buffers come from a WebgpuScratch and go back to it when
 * freed, bind groups and uniform blocks are kept there, and the error scopes are pushed once around the
 * whole batch and popped at its end; reading a result back is the one wait on the device.
 *
 * slice and write move rows with the copy kernel (kernels.ts), which binds only the ranges it copies: so
 * the caller's x and a tensor from `empty` may exceed the binding limit (up to maxBufferSize), as long as
 * each slice is under it.
 */
import { forward } from '../../api.js';
import { OutOfMemoryError, ValueError, describe } from '../../errors.js';
import { encodeF16 } from '../../f16.js';
import type { MemoryTracker } from '../../memory.js';
import { BYTES_PER_ELEMENT, isGpuBuffer, type AnyTensor, type GpuTensor, type Tensor, type TensorData } from '../../tensor.js';
import { freeDestroyed, GpuBuffers } from '../../webgpu/buffers.js';
import type { Gpu } from '../../webgpu/device.js';
import { pipeline } from '../../webgpu/pipelines.js';
import { checkAttention, checkEmbedding, checkLayerNorm, checkLinear, checkSlice, checkTensor, checkWrite, LAYER_NORM_EPS, sizeOf, type AttentionConfig, type LinearOptions, type NnDType, type Ops, type OpsScratch } from '../ops.js';
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
  linearSplitWGSL,
  SPLIT_COLS,
  SPLIT_LANES,
  type LinearSplitParams,
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
 * What batched runs of the webgpu ops keep between runs (Ops.scratch): storage buffers by size, free or
 * in use; upload buffers (written by queue.writeBuffer, so never reused within the batch that wrote
 * them); uniform blocks by their bytes; bind groups by pipeline and buffers; the read-back buffer. All
 * counted in the ops' tracker until dispose().
 */
export class WebgpuScratch implements OpsScratch {
  readonly buffers: GpuBuffers;
  private readonly free = new Map<number, GPUBuffer[]>();
  /** Upload buffers by size, free; and those written in the batch under way. */
  private readonly uploadsFree = new Map<number, GPUBuffer[]>();
  private uploadsUsed: GPUBuffer[] = [];
  private readonly uniforms = new Map<string, GPUBuffer>();
  private readonly groups = new Map<string, GPUBindGroup>();
  private readonly ids = new WeakMap<object, number>();
  private nextId = 1;
  private staging?: GPUBuffer;
  private disposed = false;

  constructor(
    readonly device: GPUDevice,
    memory: MemoryTracker,
    /** The buffers this scratch's storage pool holds (WebgpuOps.free gives them back here). */
    private readonly owners: WeakMap<GPUBuffer, WebgpuScratch>,
  ) {
    this.buffers = new GpuBuffers(device, memory);
  }

  /** A storage buffer of `bytes` (rounded up to 4): a free one of that size, else a new one. */
  take(bytes: number, what: string, argument: string, bound: boolean): GPUBuffer {
    this.alive();
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const hit = this.free.get(size)?.pop();
    if (hit) return hit;
    const buffer = this.buffers.create(size, what, argument, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST, bound);
    this.owners.set(buffer, this);
    return buffer;
  }

  /** A buffer of take's back in the pool: work recorded before still reads it, work recorded after may reuse it. */
  give(buffer: GPUBuffer): void {
    if (this.disposed) return;
    let list = this.free.get(buffer.size);
    if (!list) this.free.set(buffer.size, (list = []));
    if (!list.includes(buffer)) list.push(buffer);
  }

  /** Hand a buffer of take's to the caller: no longer the scratch's, nor counted. */
  handOver(buffer: GPUBuffer): GPUBuffer {
    this.owners.delete(buffer);
    return this.buffers.handOver(buffer);
  }

  /** A storage buffer holding `data`, not reused before the batch ends. */
  upload(data: ArrayBufferView, what: string, argument: string): GPUBuffer {
    this.alive();
    const size = Math.max(4, Math.ceil(data.byteLength / 4) * 4);
    const buffer = this.uploadsFree.get(size)?.pop() ?? this.buffers.create(size, what, argument);
    this.uploadsUsed.push(buffer);
    const bytes = new Uint8Array(size);
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    this.device.queue.writeBuffer(buffer, 0, bytes);
    return buffer;
  }

  /** A uniform buffer holding `bytes`: one per distinct content, written once. */
  uniform(bytes: ArrayBuffer): GPUBuffer {
    this.alive();
    const key = Array.from(new Uint32Array(bytes)).join(',');
    let buffer = this.uniforms.get(key);
    if (!buffer) this.uniforms.set(key, (buffer = this.buffers.uniform(bytes, 'dims')));
    return buffer;
  }

  /** The bind group of `pipe` (group 0) with these bindings: made once per pipeline and set of buffers. */
  bindGroup(pipe: GPUComputePipeline, bindings: (GPUBuffer | GPUBufferBinding)[]): GPUBindGroup {
    const entry = (b: GPUBuffer | GPUBufferBinding) => ('buffer' in b ? b : { buffer: b });
    const key = [this.id(pipe), ...bindings.map((b) => {
      const e = entry(b);
      return `${this.id(e.buffer)}@${e.offset ?? 0}+${e.size ?? ''}`;
    })].join(',');
    let group = this.groups.get(key);
    if (!group) {
      if (this.groups.size >= 4096) this.groups.clear(); // a caller that brings new buffers every batch
      group = this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: bindings.map((b, binding) => ({ binding, resource: entry(b) })) });
      this.groups.set(key, group);
    }
    return group;
  }

  /** The read-back buffer (MAP_READ), at least `bytes`. */
  readback(bytes: number): GPUBuffer {
    this.alive();
    if (!this.staging || this.staging.size < bytes) {
      if (this.staging) this.buffers.destroy(this.staging);
      this.staging = this.buffers.create(bytes, 'readback', 't', GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    }
    return this.staging;
  }

  /** The batch's uploads are free again (its work is submitted: later writes come after it). */
  endBatch(): void {
    for (const b of this.uploadsUsed) {
      let list = this.uploadsFree.get(b.size);
      if (!list) this.uploadsFree.set(b.size, (list = []));
      list.push(b);
    }
    this.uploadsUsed = [];
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.buffers.destroyAll();
    this.free.clear();
    this.uploadsFree.clear();
    this.uploadsUsed = [];
    this.uniforms.clear();
    this.groups.clear();
    this.staging = undefined;
  }

  private alive(): void {
    if (this.disposed) throw new ValueError('scratch', 'a scratch not yet disposed', 'a disposed one');
  }

  private id(o: object): number {
    let id = this.ids.get(o);
    if (id === undefined) this.ids.set(o, (id = this.nextId++));
    return id;
  }
}

/** A batch under way (WebgpuOps.batch): the encoder of what is recorded and not yet submitted, if any. */
interface Recording {
  scratch: WebgpuScratch;
  enc?: GPUCommandEncoder;
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
  /** The batch under way, if any (see `batch`). */
  private rec?: Recording;
  /** Which scratch each pooled buffer belongs to (free gives it back there). */
  private readonly pooled = new WeakMap<GPUBuffer, WebgpuScratch>();

  /** `maxBufferBytes` (tests): a lower limit for the tensors made here (see OpsConfig). */
  constructor(
    readonly gpu: Gpu,
    readonly dtype: NnDType,
    readonly memory: MemoryTracker,
    maxBufferBytes?: number,
    /** The kernel of linears of at most LINEAR_ROWS_MAX rows (see OpsConfig.linearRows). */
    private readonly rowsKernel: 'column' | 'split' = gpu.software ? 'column' : 'split',
  ) {
    this.buffers = new GpuBuffers(gpu.device, memory);
    const { maxStorageBufferBindingSize, maxBufferSize } = gpu.device.limits;
    const device = Math.min(maxStorageBufferBindingSize, maxBufferSize);
    this.maxBufferBytes = Math.min(device, maxBufferBytes ?? Infinity);
    this.limitSource = this.maxBufferBytes < device ? "the ops' maxBufferBytes" : 'maxStorageBufferBindingSize, maxBufferSize';
  }

  /** Invocations per workgroup of the layer norm and copy kernels. */
  private get WG(): number {
    return (this.wg ??= Math.min(128, this.gpu.limits.maxComputeInvocationsPerWorkgroup, this.gpu.limits.maxComputeWorkgroupSizeX));
  }
  /** WG and the dispatch limit, read once (each read of a device limit is a call into Dawn). */
  private wg?: number;
  private maxGroups?: number;

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
    const rec = this.rec;
    if (rec) {
      // Batched: buffers from the scratch, errors left to the batch's scopes. A temporary goes back to the
      // pool when the op ends (work recorded later may reuse it, after this op's in the queue).
      const batched: Make = {
        storage: (bytes, name, bound = true) => (fits(bytes, name, bound), keep(rec.scratch.take(bytes, name, argument, bound))),
        upload: (data, name) => (fits(data.byteLength, name), rec.scratch.upload(data, name, argument)),
        uniform: (bytes) => rec.scratch.uniform(bytes),
        adopt: (b) => keep(buffers.adopt(b)),
      };
      let out: T;
      try {
        out = await body(batched);
      } catch (e) {
        for (const b of made) this.release(b);
        throw e;
      }
      for (const b of made) if (b !== out) this.release(b);
      return out;
    }
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

  /** A buffer the ops made, no longer needed: back to its scratch's pool, or destroyed. */
  private release(b: GPUBuffer): void {
    const scratch = this.pooled.get(b);
    if (scratch) scratch.give(b);
    else this.buffers.destroy(b);
  }

  scratch(): WebgpuScratch {
    return new WebgpuScratch(this.device, this.memory, this.pooled);
  }

  async batch<T>(scratch: OpsScratch, argument: string, f: () => Promise<T>): Promise<T> {
    if (!(scratch instanceof WebgpuScratch) || scratch.device !== this.device) throw new ValueError('scratch', 'a scratch of these ops (ops.scratch())', describe(scratch));
    if (this.rec) return f(); // inside a batch already: part of it
    const { device } = this;
    device.pushErrorScope('out-of-memory');
    device.pushErrorScope('validation');
    const rec: Recording = { scratch };
    this.rec = rec;
    let out: T | undefined;
    let failure: unknown;
    try {
      out = await f();
    } catch (e) {
      failure = e;
    }
    this.flush();
    this.rec = undefined;
    scratch.endBatch();
    const invalid = await device.popErrorScope();
    const oom = await device.popErrorScope();
    if (oom) {
      await freeDestroyed(device);
      throw new OutOfMemoryError(argument, 'device memory for a batch of ops', oom.message);
    }
    if (failure !== undefined) throw failure;
    if (invalid) throw new ValueError(`${argument}`, 'GPUBuffers of the device the ops run on', invalid.message);
    return out as T;
  }

  recording(): GPUCommandEncoder | undefined {
    const rec = this.rec;
    if (rec) rec.enc ??= this.device.createCommandEncoder();
    return rec?.enc;
  }

  /** The encoder to record into: the batch's, or a new one (then `finish` submits it). */
  private encoder(): GPUCommandEncoder {
    return this.recording() ?? this.device.createCommandEncoder();
  }

  /** Submit what `encoder` gave, unless it is the batch's (submitted once, at the batch's end or read-back). */
  private finish(enc: GPUCommandEncoder): void {
    if (this.rec?.enc !== enc) this.device.queue.submit([enc.finish()]);
  }

  /** Submit the batch's work so far (before work that submits on its own: forward()), recording on in a new encoder. */
  private flush(): void {
    const rec = this.rec;
    if (!rec?.enc) return;
    this.device.queue.submit([rec.enc.finish()]);
    rec.enc = undefined;
  }

  /** Encode one dispatch of `pipe` with the buffers bound in order: a bind group kept by the batch's scratch, or made. */
  private dispatch(enc: GPUCommandEncoder, pipe: GPUComputePipeline, bindings: (GPUBuffer | GPUBufferBinding)[], groups: [number, number]): void {
    const bind = this.rec
      ? this.rec.scratch.bindGroup(pipe, bindings)
      : this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: bindings.map((b, binding) => ({ binding, resource: 'buffer' in b ? b : { buffer: b } })) });
    const pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(groups[0], groups[1], 1);
    pass.end();
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
    const enc = this.encoder();
    for (let i = 0; i < count; i += piece) {
      const n = Math.min(piece, count - i);
      const [from, to] = [range(src, src0 + i, n), range(dst, dst0 + i, n)];
      const dims = make.uniform(copyDims(n, from.at, to.at));
      this.dispatch(enc, pipe, [dims, from.binding, to.binding], [this.groups(Math.ceil(copyUnits(this.dtype, n, to.at) / this.WG)), 1]);
    }
    this.finish(enc);
  }

  attentionBytesPerSequence(N: number, C: number, config: AttentionConfig): number {
    // The output (N, C) in the dtype and the log-sum-exp (H, N) in f32; q, k and v are bound in place.
    return Math.max(N * C * this.bytes(1), config.heads * N * 4);
  }

  /** Encode one dispatch and submit it (in a batch: record it). */
  private submit(pipe: GPUComputePipeline, bindings: GPUBuffer[], groups: [number, number]): void {
    const enc = this.encoder();
    this.dispatch(enc, pipe, bindings, groups);
    this.finish(enc);
  }

  /** Workgroups along one dispatch dimension: `n`, capped at the device's limit (the kernels grid-stride). */
  private groups(n: number): number {
    return Math.min(n, (this.maxGroups ??= this.gpu.limits.maxComputeWorkgroupsPerDimension));
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
    const MR = 2 ** Math.ceil(Math.log2(M));
    const split = this.rowsKernel === 'split' && this.gpu.limits.maxComputeInvocationsPerWorkgroup >= SPLIT_COLS * SPLIT_LANES && this.gpu.limits.maxComputeWorkgroupSizeX >= SPLIT_COLS * SPLIT_LANES;
    const params: LinearRowsParams = { dtype: this.dtype, activation, residual: residual !== undefined, MR, WG: this.WG };
    const data = await this.op('x', `the linear output [${shape.join(', ')}]`, async (make) => {
      const pipe = split
        ? await pipeline(this.device, 'linearSplit', { dtype: this.dtype, activation, residual: residual !== undefined, MR } satisfies LinearSplitParams, linearSplitWGSL)
        : await pipeline(this.device, 'linearRows', params, linearRowsWGSL);
      const y = make.storage(this.bytes(M * N), 'y');
      const bindings = [make.uniform(linearDims(M, N, K)), x.data, weight.data, bias.data, y, ...(residual ? [residual.data] : [])] as GPUBuffer[];
      this.submit(pipe, bindings, [this.groups(Math.ceil(N / (split ? SPLIT_COLS : this.WG))), 1]);
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
      this.flush(); // forward() submits its own work: what this batch recorded before must run first
      const { out, lse } = await forward(heads(q), heads(k), heads(v), options);
      lse.data.destroy(); // handed over, so already uncounted
      return make.adopt(out.data);
    });
    return this.gpuTensor(data, [B, N, C]);
  }

  async output(t: AnyTensor, host: boolean): Promise<AnyTensor> {
    const buffer = t.data as GPUBuffer;
    const rec = this.rec;
    if (rec && host) {
      // The batch's one wait: its work and the copy into the kept read-back buffer submitted, then mapped.
      const bytes = this.bytes(sizeOf(t.shape));
      const size = Math.ceil(bytes / 4) * 4;
      const staging = rec.scratch.readback(size);
      this.encoder().copyBufferToBuffer(buffer, 0, staging, 0, size);
      this.flush();
      await staging.mapAsync(GPUMapMode.READ, 0, size);
      const data = staging.getMappedRange(0, size).slice(0, bytes);
      staging.unmap();
      this.free(t);
      return { data: this.dtype === 'f16' ? new Uint16Array(data) : new Float32Array(data), dtype: this.dtype, shape: [...t.shape] } as Tensor;
    }
    if (rec) {
      this.flush();
      await this.device.queue.onSubmittedWorkDone();
      const scratch = this.pooled.get(buffer);
      return this.gpuTensor(scratch ? scratch.handOver(buffer) : this.buffers.handOver(buffer), t.shape);
    }
    if (host) {
      const bytes = await this.buffers.read(buffer, this.bytes(sizeOf(t.shape)), 't');
      this.free(t);
      return { data: this.dtype === 'f16' ? new Uint16Array(bytes) : new Float32Array(bytes), dtype: this.dtype, shape: [...t.shape] } as Tensor;
    }
    await this.device.queue.onSubmittedWorkDone();
    return this.gpuTensor(this.buffers.handOver(buffer), t.shape);
  }

  free(t: AnyTensor): void {
    this.release(t.data as GPUBuffer);
  }
}
