/**
 * The nn layer: the ops a model is written against, the same on the cpu and webgpu backends. Tensors
 * are row-major in the ops' dtype (f32, or f16 storage with f32-or-better arithmetic); shapes:
 *   linear(x, weight, bias, { activation, residual })
 *                                              (..., K) -> (..., N)   act(x·Wᵀ + b) + residual, W (N, K) as torch.nn.Linear
 *   layerNorm(x, weight, bias, residual?)      (..., C) -> (..., C)   LN(x + residual)·weight + bias, eps 1e-5
 *   embedding(tokens, positions, wte, wpe, shape)  ids (...) -> (..., C)   wte[token] + wpe[position]
 *   attention(q, k, v, { heads, causal, ... }) (B, N, C) ×3 -> (B, N, C)
 *   slice(x, start, count)                     (B, ...) -> (count, ...)   rows start .. start+count−1 of x
 *   write(y, start, t)                         (count, ...) into rows start .. of y (B, ...), made by empty
 * The activation (ReLU, or GELU with the tanh approximation) and the residual add are fused into linear
 * and layer norm: apart, each would be one more pass over the activations and one more live buffer of
 * their size. A post-norm block adds its residual inside the layer norm, a pre-norm block (GPT-2) inside
 * the linear that ends each branch. attention is the library's own forward() over
 * H = heads heads of C/H in the layout BNHD, so (B, N, C) is (B, N, H, C/H) with no transpose.
 * Every buffer the ops make is counted in their MemoryTracker until it is freed (`free`) or handed to the
 * caller (`output`); tensors the caller passed in are never freed or modified. No tensor the ops make may
 * exceed `maxBufferBytes` (a larger one is an OutOfMemoryError naming the input it came from): slice and
 * write let a model run a batch whose whole activations would, in slices of sequences that fit.
 */
import { DTypeError, ShapeError, ValueError, describe } from '../errors.js';
import type { MemoryTracker } from '../memory.js';
import type { Algorithm } from '../options.js';
import { BYTES_PER_ELEMENT, dtypeOfArray, isGpuBuffer, type AnyTensor, type TensorData } from '../tensor.js';

export type NnBackend = 'cpu' | 'webgpu';
export type NnDType = 'f32' | 'f16';

/** torch.nn.LayerNorm's default. */
export const LAYER_NORM_EPS = 1e-5;

/** What linear applies to x·Wᵀ + b: ReLU, or GELU with the tanh approximation (GPT-2's); default none. */
export type Activation = 'relu' | 'gelu';

export interface LinearOptions {
  activation?: Activation;
  /** Added to the result after the activation, shaped as the result (a pre-norm block's skip connection). */
  residual?: AnyTensor;
}

export interface AttentionConfig {
  heads: number;
  causal: boolean;
  algorithm: Algorithm;
}

export interface Ops {
  readonly backend: NnBackend;
  readonly dtype: NnDType;
  readonly memory: MemoryTracker;
  /**
   * The most bytes one tensor the ops make may hold: on webgpu the device's maxStorageBufferBindingSize
   * and maxBufferSize (every op binds its tensors whole), on cpu CPU_MAX_BUFFER_BYTES; or OpsConfig's
   * lower maxBufferBytes. Attention's own buffers (forward()'s) are held to the backend's limits alone.
   */
  readonly maxBufferBytes: number;
  /**
   * Bytes per sequence of the largest buffer attention over (B, N, C) allocates whose size grows with B
   * (B times this): its output and log-sum-exp, on cpu also the f32 copies of q, k, v and out it computes
   * on, and the cpu standard algorithm's S and P of every head (one array each). The webgpu standard
   * algorithm's S and P are already split into buffers of whole heads under the binding limit.
   */
  attentionBytesPerSequence(N: number, C: number, config: AttentionConfig): number;
  /**
   * A new tensor of `shape` in the ops' dtype holding the f32 values `fill` writes (weights); the
   * storage is made before `fill` runs, so a size the device cannot hold fails before any work.
   * `argument` names what the size came from, for the OutOfMemoryError.
   */
  create(shape: readonly number[], fill: (values: Float32Array) => void, what: string, argument: string): Promise<AnyTensor>;
  /** A caller's tensor as the ops compute on it: the tensor itself where it can be, else a counted copy. */
  input(t: AnyTensor, name: string): Promise<AnyTensor>;
  /**
   * A new tensor of `shape` for `write` to fill, its contents unspecified until then. On webgpu it is only
   * copied into, never bound whole, so maxBufferSize alone limits it, not maxBufferBytes.
   */
  empty(shape: readonly number[], what: string, argument: string): Promise<AnyTensor>;
  /**
   * A counted copy of rows start .. start+count−1 of t's first dimension, t a caller's tensor (a typed
   * array or, on webgpu, a GpuTensor) or the ops' own.
   */
  slice(t: AnyTensor, start: number, count: number, name: string): Promise<AnyTensor>;
  /** Copy t (count, ...) into rows start .. start+count−1 of `into` (B, ...), a tensor from `empty`. */
  write(into: AnyTensor, start: number, t: AnyTensor): Promise<void>;
  linear(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, options?: LinearOptions): Promise<AnyTensor>;
  /**
   * Rows of two tables summed: y[m] = tokenTable[tokens[m]] + positionTable[positions[m]], tables (V, C)
   * and (P, C) in the ops' dtype, ids of `shape` (its elements as many as tokens and positions): (..., C).
   */
  embedding(tokens: ArrayLike<number>, positions: ArrayLike<number>, tokenTable: AnyTensor, positionTable: AnyTensor, shape: readonly number[]): Promise<AnyTensor>;
  layerNorm(x: AnyTensor, weight: AnyTensor, bias: AnyTensor, residual?: AnyTensor): Promise<AnyTensor>;
  attention(q: AnyTensor, k: AnyTensor, v: AnyTensor, config: AttentionConfig): Promise<AnyTensor>;
  /**
   * Hand a result to the caller, no longer counted: a typed-array tensor (read back on webgpu) when
   * `host`, else a GpuTensor. Resolves when the device's work is done.
   */
  output(t: AnyTensor, host: boolean): Promise<AnyTensor>;
  /** Release a tensor the ops made (a no-op for the caller's own). */
  free(t: AnyTensor): void;
  /**
   * Storage that batched runs of these ops keep between runs (see `batch`): its buffers, counted in the
   * ops' MemoryTracker, are freed by its dispose(). On cpu it holds nothing.
   */
  scratch(): OpsScratch;
  /**
   * Run `f`, a whole forward of ops, as one piece of device work where the backend can: on webgpu its
   * ops are recorded into one command encoder (`recording` gives it, for work of others such as a KV
   * cache's to go between them) and submitted once, when a result is read back (`output` with `host`)
   * or when f ends; their outputs and temporaries come from `scratch`'s buffers (a tensor freed goes back
   * there for a later op: none is created once a forward of the same sizes has run), their bind groups
   * and uniforms are kept there, and the device's errors are checked once, at the end (an
   * OutOfMemoryError naming `argument`, or a ValueError). No other call on these ops may run meanwhile.
   * On cpu: f().
   */
  batch<T>(scratch: OpsScratch, argument: string, f: () => Promise<T>): Promise<T>;
  /**
   * Inside `batch` on webgpu: the command encoder the ops record into, for work to go after the ops
   * called so far and before the next (it is submitted with them); else undefined.
   */
  recording(): GPUCommandEncoder | undefined;
}

/** See Ops.scratch. */
export interface OpsScratch {
  dispose(): void;
}

/** The elements of a shape. */
export function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkShape(name: string, t: AnyTensor, rank?: number): readonly number[] {
  const { shape } = t;
  if (!Array.isArray(shape) || shape.length < 1 || (rank !== undefined && shape.length !== rank)) {
    throw new ShapeError(`${name}.shape`, rank === undefined ? 'at least one dimension' : `${rank} dimensions`, describe(shape));
  }
  shape.forEach((s, i) => {
    if (!Number.isSafeInteger(s) || s < 1) throw new ShapeError(`${name}.shape[${i}]`, 'a positive integer', describe(s));
  });
  return shape;
}

/**
 * A tensor argument of the ops: an object with a shape, in the ops' dtype, whose data is what the
 * backend computes on (a typed array of that dtype on cpu, a STORAGE GPUBuffer large enough on webgpu).
 */
export function checkTensor(backend: NnBackend, dtype: NnDType, name: string, t: unknown, rank?: number): AnyTensor {
  if (typeof t !== 'object' || t === null) throw new ValueError(name, 'a tensor { data, dtype, shape }', describe(t));
  const x = t as AnyTensor;
  if (x.dtype !== dtype) throw new DTypeError(`${name}.dtype`, `'${dtype}' (the dtype of the ops)`, describe(x.dtype));
  const shape = checkShape(name, x, rank);
  const bytes = sizeOf(shape) * BYTES_PER_ELEMENT[dtype];
  if (backend === 'webgpu') {
    if (!isGpuBuffer(x.data)) throw new ValueError(`${name}.data`, 'a GPUBuffer (webgpu ops)', describe(x.data));
    // Storage bindings are whole 4-byte words: an f16 tensor of an odd number of elements needs 2 bytes of padding.
    const padded = Math.ceil(bytes / 4) * 4;
    if (x.data.size < padded) {
      throw new ShapeError(`${name}.data`, `a GPUBuffer of at least ${padded} bytes for shape [${shape.join(', ')}] in ${dtype} (padded to 4 bytes)`, `${x.data.size} bytes`);
    }
    if (!(x.data.usage & 0x80)) { // GPUBufferUsage.STORAGE
      throw new ValueError(`${name}.data`, 'a GPUBuffer with STORAGE usage', `usage ${x.data.usage}`);
    }
  } else {
    if (dtypeOfArray(x.data) !== dtype) {
      throw new DTypeError(`${name}.data`, dtype === 'f16' ? 'a Uint16Array (f16 bits)' : 'a Float32Array', describe(x.data));
    }
    const { length } = x.data as TensorData;
    if (length !== sizeOf(shape)) {
      throw new ShapeError(`${name}.data`, `${sizeOf(shape)} elements for shape [${shape.join(', ')}]`, `${length} elements`);
    }
  }
  return x;
}

/** Sizes of slice(t, start, count): the elements per row of t's first dimension, and the slice's shape. */
export function checkSlice(backend: NnBackend, dtype: NnDType, name: string, t: AnyTensor, start: number, count: number) {
  const T = checkTensor(backend, dtype, name, t);
  const B = T.shape[0];
  if (!Number.isSafeInteger(start) || start < 0 || start >= B) throw new ValueError('start', `an integer in [0, ${B}) (${name} has ${B} rows)`, describe(start));
  if (!Number.isSafeInteger(count) || count < 1 || start + count > B) {
    throw new ValueError('count', `an integer in [1, ${B - start}] (${name} has ${B} rows from ${start})`, describe(count));
  }
  return { row: sizeOf(T.shape) / B, shape: [count, ...T.shape.slice(1)] };
}

/** Sizes of write(into, start, t): the elements per row, and of t. */
export function checkWrite(ops: Pick<Ops, 'backend' | 'dtype'>, into: AnyTensor, start: number, t: AnyTensor) {
  const Y = checkTensor(ops.backend, ops.dtype, 'into', into);
  const T = checkTensor(ops.backend, ops.dtype, 't', t);
  if (T.shape.length !== Y.shape.length || T.shape.some((s, i) => i > 0 && s !== Y.shape[i])) {
    throw new ShapeError('t.shape', `[count, ${Y.shape.slice(1).join(', ')}] (rows of into)`, describe(T.shape));
  }
  const [B, count] = [Y.shape[0], T.shape[0]];
  if (!Number.isSafeInteger(start) || start < 0 || start + count > B) {
    throw new ValueError('start', `an integer in [0, ${B - count}] (${count} rows into ${B})`, describe(start));
  }
  const row = sizeOf(Y.shape) / B;
  return { row, elements: count * row };
}

/** Sizes of linear(x, weight, bias, options): M rows of K features in, N out. */
export function checkLinear(ops: Pick<Ops, 'backend' | 'dtype'>, x: AnyTensor, weight: AnyTensor, bias: AnyTensor, options: LinearOptions = {}) {
  const X = checkTensor(ops.backend, ops.dtype, 'x', x);
  const W = checkTensor(ops.backend, ops.dtype, 'weight', weight, 2);
  const K = X.shape[X.shape.length - 1];
  const [N, Kw] = W.shape;
  if (Kw !== K) throw new ShapeError('weight.shape', `[N, ${K}] (x has ${K} features)`, describe(W.shape));
  checkTensor(ops.backend, ops.dtype, 'bias', bias, 1);
  if (bias.shape[0] !== N) throw new ShapeError('bias.shape', `[${N}] (weight has ${N} rows)`, describe(bias.shape));
  if (typeof options !== 'object' || options === null) throw new ValueError('options', 'an options object', describe(options));
  const { activation, residual } = options;
  if (activation !== undefined && activation !== 'relu' && activation !== 'gelu') throw new ValueError('options.activation', "'relu', 'gelu' or undefined", describe(activation));
  const shape = [...X.shape.slice(0, -1), N];
  if (residual !== undefined) {
    const R = checkTensor(ops.backend, ops.dtype, 'options.residual', residual);
    if (R.shape.length !== shape.length || R.shape.some((s, i) => s !== shape[i])) {
      throw new ShapeError('options.residual.shape', `[${shape.join(', ')}] (the shape of the result)`, describe(R.shape));
    }
  }
  return { M: sizeOf(X.shape) / K, N, K, shape, activation: activation ?? ('none' as const), residual };
}

/** Sizes of embedding(tokens, positions, tokenTable, positionTable, shape): M rows of C, ids as Int32Arrays. */
export function checkEmbedding(
  ops: Pick<Ops, 'backend' | 'dtype'>,
  tokens: ArrayLike<number>,
  positions: ArrayLike<number>,
  tokenTable: AnyTensor,
  positionTable: AnyTensor,
  shape: readonly number[],
) {
  const T = checkTensor(ops.backend, ops.dtype, 'tokenTable', tokenTable, 2);
  const P = checkTensor(ops.backend, ops.dtype, 'positionTable', positionTable, 2);
  const [V, C] = T.shape;
  if (P.shape[1] !== C) throw new ShapeError('positionTable.shape', `[P, ${C}] (tokenTable has ${C} columns)`, describe(P.shape));
  if (!Array.isArray(shape) || shape.length < 1 || !shape.every((s) => Number.isSafeInteger(s) && s >= 1)) {
    throw new ShapeError('shape', 'positive integers', describe(shape));
  }
  const M = sizeOf(shape);
  const ids = (name: string, x: ArrayLike<number>, limit: number, table: string) => {
    if (typeof x !== 'object' || x === null || x.length !== M) throw new ShapeError(name, `${M} ids (the elements of shape [${shape.join(', ')}])`, describe(x));
    const out = Int32Array.from(x);
    out.forEach((id, i) => {
      if (id !== x[i] || id < 0 || id >= limit) throw new ValueError(`${name}[${i}]`, `an integer in [0, ${limit}) (rows of ${table})`, describe(x[i]));
    });
    return out;
  };
  return { M, C, tokens: ids('tokens', tokens, V, 'tokenTable'), positions: ids('positions', positions, P.shape[0], 'positionTable'), shape: [...shape, C] };
}

/** Sizes of layerNorm(x, weight, bias, residual): M rows of C. */
export function checkLayerNorm(ops: Pick<Ops, 'backend' | 'dtype'>, x: AnyTensor, weight: AnyTensor, bias: AnyTensor, residual?: AnyTensor) {
  const X = checkTensor(ops.backend, ops.dtype, 'x', x);
  const C = X.shape[X.shape.length - 1];
  for (const [name, t] of [['weight', weight], ['bias', bias]] as const) {
    checkTensor(ops.backend, ops.dtype, name, t, 1);
    if (t.shape[0] !== C) throw new ShapeError(`${name}.shape`, `[${C}] (x has ${C} features)`, describe(t.shape));
  }
  if (residual !== undefined) {
    const R = checkTensor(ops.backend, ops.dtype, 'residual', residual);
    if (R.shape.length !== X.shape.length || R.shape.some((s, i) => s !== X.shape[i])) {
      throw new ShapeError('residual.shape', `[${X.shape.join(', ')}] (the shape of x)`, describe(R.shape));
    }
  }
  return { M: sizeOf(X.shape) / C, C, shape: [...X.shape] };
}

/** Sizes of attention(q, k, v): (B, N, C) each, C = H·D. */
export function checkAttention(ops: Pick<Ops, 'backend' | 'dtype'>, q: AnyTensor, k: AnyTensor, v: AnyTensor, config: AttentionConfig) {
  const Q = checkTensor(ops.backend, ops.dtype, 'q', q, 3);
  for (const [name, t] of [['k', k], ['v', v]] as const) {
    checkTensor(ops.backend, ops.dtype, name, t, 3);
    if (t.shape.some((s, i) => s !== Q.shape[i])) throw new ShapeError(`${name}.shape`, `[${Q.shape.join(', ')}] (the shape of q)`, describe(t.shape));
  }
  const [B, N, C] = Q.shape;
  const H = config.heads;
  if (!Number.isSafeInteger(H) || H < 1 || C % H !== 0) {
    throw new ValueError('config.heads', `a positive integer that divides q's ${C} features`, describe(H));
  }
  return { B, N, C, H, D: C / H };
}
