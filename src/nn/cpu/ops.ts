/**
 * The nn ops on the cpu backend. Tensors are typed arrays (Float32Array, or Uint16Array holding f16 bits).
 * linear runs on the worker pool (tasks of row and column blocks, see kernels.ts) when it is large enough
 * to pay for the round trip, its x, W, b, residual and y staged in the pool's workspace (cpu/pool.ts: the
 * workers only ever see that one buffer, so they hold no memory between calls), else inline on the arrays
 * themselves; layerNorm and embedding run inline; attention is the library's cpu forward(). Every array
 * made here, and the staged copies and each thread's scratch while a linear runs, is counted in the
 * MemoryTracker. slice and write copy rows with TypedArray.set.
 */
import { forward } from '../../api.js';
import { OutOfMemoryError } from '../../errors.js';
import { encodeF16 } from '../../f16.js';
import type { MemoryTracker } from '../../memory.js';
import type { Region } from '../../cpu/job.js';
import { Arena, runJob, sharedBuffer, threadsFor } from '../../cpu/pool.js';
import { BYTES_PER_ELEMENT, type AnyTensor, type Tensor } from '../../tensor.js';
import { checkAttention, checkEmbedding, checkLayerNorm, checkLinear, checkSlice, checkTensor, checkWrite, LAYER_NORM_EPS, sizeOf, type AttentionConfig, type LinearOptions, type NnDType, type Ops, type OpsScratch } from '../ops.js';
import { embeddingRows, layerNormRows, linearColumnBlock, linearRowBlock, linearScratch, linearTasks, type HostData, type LinearShape } from './kernels.js';

/** The bytes of an array, as a job's region. */
function regionOf(data: ArrayBufferView): Region {
  return { buffer: data.buffer, byteOffset: data.byteOffset, byteLength: data.byteLength };
}

/** A view of a region of the same type as `like`. */
function viewOf(r: Region, like: HostData): HostData {
  return like instanceof Uint16Array ? new Uint16Array(r.buffer, r.byteOffset, r.byteLength / 2) : new Float32Array(r.buffer, r.byteOffset, r.byteLength / 4);
}

/**
 * The most bytes of one array: 2^32 f16 elements, the longest typed array Node 20's V8 makes (newer
 * engines make longer ones); the cpu attention checks its buffers against the same Uint16Array view.
 */
export const CPU_MAX_BUFFER_BYTES = 2 ** 33;

export class CpuOps implements Ops {
  readonly backend = 'cpu';
  readonly maxBufferBytes: number;
  /** Arrays made here and still counted, with their bytes. */
  private readonly owned = new Map<HostData, number>();
  /** Arrays of create (weights) on shared memory: linear passes them to the workers without a copy. */
  private readonly resident = new WeakSet<HostData>();
  /** The scratch of linears run inline, kept from call to call (grown as needed; counted by each call). */
  private scratchKept?: Float64Array;

  private inlineScratch(length: number): Float64Array {
    if (!this.scratchKept || this.scratchKept.length < length) this.scratchKept = new Float64Array(length);
    return this.scratchKept.subarray(0, length);
  }

  /** `maxBufferBytes` (tests): a lower limit for the tensors made here (see OpsConfig). */
  constructor(
    readonly dtype: NnDType,
    readonly memory: MemoryTracker,
    maxBufferBytes?: number,
  ) {
    this.maxBufferBytes = Math.min(CPU_MAX_BUFFER_BYTES, maxBufferBytes ?? Infinity);
  }

  /**
   * A buffer of `bytes` (at most `limit`), counted, or an OutOfMemoryError naming `argument` and what it
   * was for.
   */
  private buffer(bytes: number, what: string, argument: string, limit = CPU_MAX_BUFFER_BYTES, shared = false): ArrayBufferLike {
    if (bytes > limit) {
      const source = limit < CPU_MAX_BUFFER_BYTES ? "the ops' maxBufferBytes" : 'the longest typed array, 2^32 f16 elements';
      throw new OutOfMemoryError(argument, `at most ${limit} bytes per array (${source}) for ${what}`, `${bytes} bytes`);
    }
    try {
      const buf = shared ? sharedBuffer(bytes) : new ArrayBuffer(bytes);
      void new Uint16Array(buf); // the view with the most elements made here: over the engine's limit is a RangeError too
      this.memory.allocate(bytes);
      return buf;
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new OutOfMemoryError(argument, `an allocation this machine can make for ${what}`, `${bytes} bytes (${e.message})`);
    }
  }

  /**
   * A counted array of `elements` in the ops' dtype: a tensor, so at most maxBufferBytes. `resident`: on
   * memory the worker threads share (where there is any), for a tensor that lives as long as the model (a
   * weight, from create): linear hands it to the workers as it is, where it copies other arrays into the
   * call's arena (a worker keeps every new shared buffer it is sent until its collector runs, pool.ts: a
   * weight is the same buffer call after call).
   */
  private array(elements: number, what: string, argument: string, resident = false): HostData {
    const bytes = elements * BYTES_PER_ELEMENT[this.dtype];
    const buf = this.buffer(bytes, what, argument, this.maxBufferBytes, resident);
    const data = this.dtype === 'f16' ? new Uint16Array(buf) : new Float32Array(buf);
    this.owned.set(data, bytes);
    if (resident && typeof SharedArrayBuffer === 'function' && buf instanceof SharedArrayBuffer) this.resident.add(data);
    return data;
  }

  private tensor(data: HostData, shape: readonly number[]): Tensor {
    return { data, dtype: this.dtype, shape: [...shape] } as Tensor;
  }

  async create(shape: readonly number[], fill: (values: Float32Array) => void, what: string, argument: string): Promise<AnyTensor> {
    const data = this.array(sizeOf(shape), what, argument, true);
    if (data instanceof Float32Array) {
      fill(data);
    } else {
      const values = new Float32Array(data.length);
      fill(values);
      encodeF16(values, data);
    }
    return this.tensor(data, shape);
  }

  async input(t: AnyTensor, name: string): Promise<AnyTensor> {
    return checkTensor('cpu', this.dtype, name, t);
  }

  async empty(shape: readonly number[], what: string, argument: string): Promise<AnyTensor> {
    return this.tensor(this.array(sizeOf(shape), what, argument), shape);
  }

  async slice(t: AnyTensor, start: number, count: number, name: string): Promise<AnyTensor> {
    const { row, shape } = checkSlice('cpu', this.dtype, name, t, start, count);
    const data = this.array(count * row, `rows ${start}..${start + count - 1} of ${name}`, name);
    data.set((t.data as HostData).subarray(start * row, (start + count) * row));
    return this.tensor(data, shape);
  }

  async write(into: AnyTensor, start: number, t: AnyTensor): Promise<void> {
    const { row } = checkWrite(this, into, start, t);
    (into.data as HostData).set(t.data as HostData, start * row);
  }

  attentionBytesPerSequence(N: number, C: number, config: AttentionConfig): number {
    // cpu/index.ts computes on f32 copies of q, k, v and out (the log-sum-exp, H·N f32, is smaller);
    // the standard algorithm holds S and P of every head, in the inputs' dtype.
    const staged = N * C * 4;
    return config.algorithm === 'standard' ? Math.max(staged, config.heads * N * N * BYTES_PER_ELEMENT[this.dtype]) : staged;
  }

  async linear(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, options: LinearOptions = {}): Promise<AnyTensor> {
    const { M, N, K, shape, activation, residual } = checkLinear(this, x, weight, bias, options);
    const y = this.array(M * N, `the linear output [${shape.join(', ')}]`, 'x');
    const threads = await threadsFor(M * N * K);
    const MB = linearRowBlock(M, threads);
    const s: LinearShape = { M, N, K, MB, NB: linearColumnBlock(M, N, MB, threads), activation, residual: residual !== undefined };
    const scratchBytes = linearScratch(s) * 8;
    const f16 = this.dtype === 'f16' ? '.f16' : '';
    const arrays = [x, weight, bias, ...(residual ? [residual] : [])].map((t) => t.data as HostData);
    const names = ['x', 'w', 'b', 'r'].map((n) => n + f16);
    if (threads === 1) {
      // Inline: the kernel reads and writes the arrays themselves.
      const scratch = this.memory.allocate(scratchBytes);
      try {
        const buffers = Object.fromEntries([...arrays.map((a, i) => [names[i], regionOf(a)]), ['y' + f16, regionOf(y)]]);
        await runJob({ kernel: 'linear', shape: s, tasks: linearTasks(s), buffers, scratch: [regionOf(this.inlineScratch(scratchBytes / 8))], counter: regionOf(new Int32Array(1)) });
      } catch (e) {
        this.free(this.tensor(y, shape));
        throw e;
      } finally {
        this.memory.release(scratch);
      }
      return this.tensor(y, shape);
    }
    // The weights (create's arrays, on shared memory) go to the workers as they are; the rest is copied.
    const copied = arrays.map((a) => !this.resident.has(a));
    const sizes = [...arrays.filter((_, i) => copied[i]).map((a) => a.byteLength), y.byteLength, ...Array<number>(threads).fill(scratchBytes)];
    const total = sizes.reduce((a, c) => a + c, 0);
    let arena: Arena;
    try {
      arena = Arena.open(sizes);
    } catch (e) {
      this.free(this.tensor(y, shape));
      if (!(e instanceof RangeError)) throw e;
      throw new OutOfMemoryError('x', "an allocation this machine can make for the linear's staged x, W, b, y and scratch", `${total} bytes (${e.message})`);
    }
    const counted = this.memory.allocate(total);
    try {
      const buffers: Record<string, Region> = {};
      arrays.forEach((a, i) => {
        if (!copied[i]) {
          buffers[names[i]] = regionOf(a);
          return;
        }
        buffers[names[i]] = arena.take(a.byteLength);
        viewOf(buffers[names[i]], a).set(a);
      });
      const Y = (buffers['y' + f16] = arena.take(y.byteLength));
      const scratch = Array.from({ length: threads }, () => arena.take(scratchBytes));
      await runJob({ kernel: 'linear', shape: s, tasks: linearTasks(s), buffers, scratch, counter: arena.take(4) });
      y.set(viewOf(Y, y));
    } catch (e) {
      this.free(this.tensor(y, shape));
      throw e;
    } finally {
      this.memory.release(counted);
      arena.close();
    }
    return this.tensor(y, shape);
  }

  async layerNorm(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, residual?: AnyTensor): Promise<AnyTensor> {
    const { M, C, shape } = checkLayerNorm(this, x, weight, bias, residual);
    const y = this.array(M * C, `the layer norm output [${shape.join(', ')}]`, 'x');
    const data = (t: AnyTensor) => t.data as HostData;
    layerNormRows(data(x), residual && data(residual), data(weight), data(bias), y, M, C, LAYER_NORM_EPS);
    return this.tensor(y, shape);
  }

  async embedding(tokens: ArrayLike<number>, positions: ArrayLike<number>, tokenTable: AnyTensor, positionTable: AnyTensor, shape: readonly number[]): Promise<AnyTensor> {
    const e = checkEmbedding(this, tokens, positions, tokenTable, positionTable, shape);
    const y = this.array(e.M * e.C, `the embedding output [${e.shape.join(', ')}]`, 'tokens');
    embeddingRows(e.tokens, e.positions, tokenTable.data as HostData, positionTable.data as HostData, y, e.C);
    return this.tensor(y, e.shape);
  }

  async attention(q: AnyTensor, k: AnyTensor, v: AnyTensor, config: AttentionConfig): Promise<AnyTensor> {
    const { B, N, C, H, D } = checkAttention(this, q, k, v, config);
    const heads = (t: AnyTensor) => ({ data: t.data, dtype: t.dtype, shape: [B, N, H, D] }) as Tensor;
    const options = { backend: 'cpu', layout: 'BNHD', causal: config.causal, algorithm: config.algorithm, memory: this.memory } as const;
    const { out } = await forward(heads(q), heads(k), heads(v), options);
    // The output is the caller's once forward returns (an array of its own): count it again as ours.
    const data = out.data as HostData;
    this.owned.set(data, this.memory.allocate(data.byteLength));
    return this.tensor(data, [B, N, C]);
  }

  async output(t: AnyTensor): Promise<AnyTensor> {
    this.free(t);
    return t;
  }

  scratch(): OpsScratch {
    return { dispose() {} };
  }

  batch<T>(_scratch: OpsScratch, _argument: string, f: () => Promise<T>): Promise<T> {
    return f();
  }

  recording(): undefined {
    return undefined;
  }

  free(t: AnyTensor): void {
    const bytes = this.owned.get(t.data as HostData);
    if (bytes === undefined) return;
    this.owned.delete(t.data as HostData);
    this.memory.release(bytes);
  }
}
