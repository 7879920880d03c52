/**
 * The nn ops on the cpu backend. Tensors are typed arrays (Float32Array, or Uint16Array holding f16 bits)
 * over SharedArrayBuffers, so the worker pool reads and writes them in place. linear runs on the pool
 * (tasks of row blocks, see kernels.ts) when it is large enough to pay for the round trip, else inline;
 * layerNorm runs inline; attention is the library's cpu forward(). Every array made here, and each
 * thread's scratch while a linear runs, is counted in the MemoryTracker.
 */
import { forward } from '../../api.js';
import { OutOfMemoryError } from '../../errors.js';
import { encodeF16 } from '../../f16.js';
import type { MemoryTracker } from '../../memory.js';
import { runJob, sharedBuffer, threadsFor } from '../../cpu/pool.js';
import type { AnyTensor, Tensor } from '../../tensor.js';
import { checkAttention, checkLayerNorm, checkLinear, checkTensor, LAYER_NORM_EPS, sizeOf, type AttentionConfig, type NnDType, type Ops } from '../ops.js';
import { layerNormRows, linearRowBlock, linearScratch, linearTasks, type HostData, type LinearShape } from './kernels.js';

/** Whether the worker threads can use the array in place: it spans its whole buffer, which they share. */
function shareable(data: HostData): boolean {
  const whole = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
  return whole && (typeof SharedArrayBuffer !== 'function' || data.buffer instanceof SharedArrayBuffer);
}

export class CpuOps implements Ops {
  readonly backend = 'cpu';
  /** Arrays made here and still counted, with their bytes. */
  private readonly owned = new Map<HostData, number>();

  constructor(
    readonly dtype: NnDType,
    readonly memory: MemoryTracker,
  ) {}

  /** A shared buffer of `bytes`, counted, or an OutOfMemoryError naming `argument` and what it was for. */
  private buffer(bytes: number, what: string, argument: string): ArrayBufferLike {
    try {
      const buf = sharedBuffer(bytes);
      this.memory.allocate(bytes);
      return buf;
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new OutOfMemoryError(argument, `an allocation this machine can make for ${what}`, `${bytes} bytes (${e.message})`);
    }
  }

  /** A counted array of `elements` in the ops' dtype. */
  private array(elements: number, what: string, argument: string): HostData {
    const bytes = elements * (this.dtype === 'f16' ? 2 : 4);
    const buf = this.buffer(bytes, what, argument);
    const data = this.dtype === 'f16' ? new Uint16Array(buf) : new Float32Array(buf);
    this.owned.set(data, bytes);
    return data;
  }

  private tensor(data: HostData, shape: readonly number[]): Tensor {
    return { data, dtype: this.dtype, shape: [...shape] } as Tensor;
  }

  /** A counted copy of the caller's array, or the array itself when the workers can share it. */
  private shared(t: Tensor, name: string): Tensor {
    const data = t.data as HostData;
    if (shareable(data)) return t;
    const copy = this.array(data.length, `a shared copy of ${name}`, name);
    copy.set(data);
    return this.tensor(copy, t.shape);
  }

  async create(shape: readonly number[], fill: (values: Float32Array) => void, what: string, argument: string): Promise<AnyTensor> {
    const data = this.array(sizeOf(shape), what, argument);
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
    return this.shared(checkTensor('cpu', this.dtype, name, t) as Tensor, name);
  }

  async linear(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, options: { relu?: boolean } = {}): Promise<AnyTensor> {
    const { M, N, K, shape } = checkLinear(this, x, weight, bias);
    const y = this.array(M * N, `the linear output [${shape.join(', ')}]`, 'x');
    const threads = await threadsFor(M * N * K);
    const s: LinearShape = { M, N, K, MB: linearRowBlock(M, threads), relu: options.relu ?? false };
    const scratchBytes = linearScratch(s) * 8;
    const scratch: ArrayBufferLike[] = [];
    const inputs = [x, weight, bias] as Tensor[];
    const staged: Tensor[] = [];
    try {
      for (let i = 0; i < threads; i++) scratch.push(this.buffer(scratchBytes, `thread ${i}'s linear scratch`, 'x'));
      const names = ['x', 'weight', 'bias'];
      staged.push(...inputs.map((u, i) => this.shared(u, names[i])));
      const [X, W, b] = staged.map((u) => u.data.buffer);
      const f16 = this.dtype === 'f16' ? '.f16' : '';
      await runJob({ kernel: 'linear', shape: s, tasks: linearTasks(s), buffers: { ['x' + f16]: X, ['w' + f16]: W, ['b' + f16]: b, ['y' + f16]: y.buffer }, scratch });
    } catch (e) {
      this.free(this.tensor(y, shape));
      throw e;
    } finally {
      this.memory.release(scratch.length * scratchBytes);
      staged.forEach((u, i) => u !== inputs[i] && this.free(u));
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

  async attention(q: AnyTensor, k: AnyTensor, v: AnyTensor, config: AttentionConfig): Promise<AnyTensor> {
    const { B, N, C, H, D } = checkAttention(this, q, k, v, config);
    const heads = (t: AnyTensor) => ({ data: t.data, dtype: t.dtype, shape: [B, N, H, D] }) as Tensor;
    const options = { backend: 'cpu', layout: 'BNHD', causal: config.causal, algorithm: config.algorithm, memory: this.memory } as const;
    const { out } = await forward(heads(q), heads(k), heads(v), options);
    // The output is the caller's once forward returns: count it again as ours (an f16 one is a plain array, copied).
    const data = out.data as HostData;
    if (shareable(data)) {
      this.owned.set(data, this.memory.allocate(data.byteLength));
      return this.tensor(data, [B, N, C]);
    }
    return this.shared({ data, dtype: this.dtype, shape: [B, N, C] } as Tensor, 'the attention output');
  }

  async output(t: AnyTensor): Promise<AnyTensor> {
    this.free(t);
    return t;
  }

  free(t: AnyTensor): void {
    const bytes = this.owned.get(t.data as HostData);
    if (bytes === undefined) return;
    this.owned.delete(t.data as HostData);
    this.memory.release(bytes);
  }
}
