/**
 * Tensors: a typed array, its dtype and its 4-d shape. The meaning of the four axes is the call's layout:
 *   'BNHD' (batch, sequence, heads, head dim), as flash_attn_func;
 *   'BHND' (batch, heads, sequence, head dim), as PyTorch's scaled_dot_product_attention.
 * In both, the head dimension D is contiguous, so every kernel reads a row of one head as D consecutive
 * elements and only the row and head strides differ (see `strides`).
 */
import { DTypeError, ShapeError, describe } from './errors.js';
import { decodeF16, encodeF16 } from './f16.js';

/** f16 is 16-bit storage in a Uint16Array (arithmetic is never done in f16); f64 is for the reference. */
export type DType = 'f32' | 'f16' | 'f64';
export type Layout = 'BNHD' | 'BHND';

export interface DataOf {
  f32: Float32Array;
  f16: Uint16Array;
  f64: Float64Array;
}
export type TensorData = DataOf[DType];

export interface Tensor<T extends DType = DType> {
  readonly data: DataOf[T];
  readonly dtype: T;
  /** 4-d for q, k, v, out and their gradients (axes per the layout); 3-d (B, H, Nq) for lse. */
  readonly shape: readonly number[];
}

/**
 * A tensor whose data is a GPUBuffer on the caller's device (zero-copy, webgpu backend): the buffer holds
 * the elements densely from offset 0, in f32 or f16; outputs of such a call are GpuTensors too.
 */
export interface GpuTensor {
  readonly data: GPUBuffer;
  readonly dtype: 'f32' | 'f16';
  readonly shape: readonly number[];
}

export type AnyTensor = Tensor | GpuTensor;

export function isGpuBuffer(x: unknown): x is GPUBuffer {
  // `'size' in x`, not a read of it: size is a getter that calls into the WebGPU implementation (Dawn in Node).
  return typeof x === 'object' && x !== null && typeof (x as GPUBuffer).mapAsync === 'function' && 'size' in x;
}

export const BYTES_PER_ELEMENT: Record<DType, number> = { f32: 4, f16: 2, f64: 8 };

/**
 * Wrap a typed array as a tensor. The dtype follows the array (Float32Array: f32, Float64Array: f64,
 * Uint16Array: f16 bits); pass `dtype` to say so explicitly. The data is not copied; the shape is.
 */
export function tensor<T extends DType>(data: DataOf[T], shape: readonly number[], dtype?: T): Tensor<T> {
  const inferred = dtypeOfArray(data);
  if (inferred === undefined) {
    throw new DTypeError('data', 'a Float32Array, Float64Array or Uint16Array (f16 bits)', describe(data));
  }
  if (dtype !== undefined && dtype !== inferred) {
    throw new DTypeError('dtype', `'${inferred}' for a ${data.constructor.name}`, describe(dtype));
  }
  if (!Array.isArray(shape) || !shape.every((s) => Number.isInteger(s) && s >= 0)) {
    throw new ShapeError('shape', 'an array of non-negative integers', describe(shape));
  }
  const size = shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) {
    throw new ShapeError('data', `${size} elements for shape [${shape.join(', ')}]`, `${data.length}`);
  }
  return { data, dtype: inferred as T, shape: [...shape] };
}

export function dtypeOfArray(data: unknown): DType | undefined {
  if (data instanceof Float32Array) return 'f32';
  if (data instanceof Float64Array) return 'f64';
  if (data instanceof Uint16Array) return 'f16';
  return undefined;
}

/** The values of any tensor as f64 (always a copy). */
export function toF64(t: Tensor): Float64Array {
  if (t.dtype === 'f16') return Float64Array.from(decodeF16(t.data as Uint16Array));
  return Float64Array.from(t.data as Float32Array | Float64Array);
}

/** Store f32/f64 values in the given dtype. */
export function fromValues<T extends DType>(values: Float32Array | Float64Array, dtype: T): DataOf[T] {
  if (dtype === 'f16') return encodeF16(values) as DataOf[T];
  if (dtype === 'f32') return (values instanceof Float32Array ? values : Float32Array.from(values)) as DataOf[T];
  return (values instanceof Float64Array ? values : Float64Array.from(values)) as DataOf[T];
}

/** The sizes named by the layout. */
export interface Dims {
  B: number;
  N: number;
  H: number;
  D: number;
}

export function dimsOf(shape: readonly number[], layout: Layout): Dims {
  return layout === 'BNHD'
    ? { B: shape[0], N: shape[1], H: shape[2], D: shape[3] }
    : { B: shape[0], H: shape[1], N: shape[2], D: shape[3] };
}

/**
 * Element strides of a (B, N, H, D) tensor in the given layout: element (b, n, h, d) is at
 * b*batch + n*row + h*head + d.
 */
export interface Strides {
  batch: number;
  row: number;
  head: number;
}

export function strides(d: Dims, layout: Layout): Strides {
  return layout === 'BNHD'
    ? { batch: d.N * d.H * d.D, row: d.H * d.D, head: d.D }
    : { batch: d.H * d.N * d.D, row: d.D, head: d.N * d.D };
}
