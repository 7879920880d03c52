/**
 * Argument checking for forward() and backward(): every argument is checked before any work starts,
 * and the result is a Problem, the sizes and settings every backend computes from.
 */
import { DTypeError, NotSupportedError, ShapeError, ValueError, describe } from './errors.js';
import { MemoryTracker, memory as defaultMemory } from './memory.js';
import {
  ALGORITHMS,
  BACKENDS,
  KNOWN_OPTIONS,
  LAYOUTS,
  UNSUPPORTED_OPTIONS,
  type Algorithm,
  type AttentionOptions,
  type Backend,
} from './options.js';
import { dimsOf, dtypeOfArray, type DType, type Layout, type Tensor } from './tensor.js';

/** Sizes and settings of one attention call. Heads of k and v: Hkv, with H % Hkv == 0 (GQA / MQA). */
export interface Problem {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  Nk: number;
  D: number;
  dtype: DType;
  layout: Layout;
  causal: boolean;
  scale: number;
  backend: Backend;
  algorithm: Algorithm;
  memory: MemoryTracker;
}

/** A tensor argument whose structure (array, dtype, shape, length) has been checked. */
function checkTensor(name: string, t: unknown, rank: number): Tensor {
  if (typeof t !== 'object' || t === null) {
    throw new ValueError(name, 'a tensor { data, dtype, shape }', describe(t));
  }
  const { data, dtype, shape } = t as Partial<Tensor>;
  const arrayType = dtypeOfArray(data);
  if (arrayType === undefined) {
    throw new DTypeError(`${name}.data`, 'a Float32Array, Uint16Array (f16 bits) or Float64Array', describe(data));
  }
  if (dtype !== arrayType) {
    throw new DTypeError(`${name}.dtype`, `'${arrayType}' for a ${data!.constructor.name}`, describe(dtype));
  }
  if (!Array.isArray(shape) || shape.length !== rank) {
    throw new ShapeError(`${name}.shape`, `${rank} dimensions`, describe(shape));
  }
  shape.forEach((s, i) => {
    if (!Number.isSafeInteger(s) || s < 1) {
      throw new ShapeError(`${name}.shape[${i}]`, 'a positive integer', describe(s));
    }
  });
  const size = shape.reduce((a: number, b: number) => a * b, 1);
  if (data!.length !== size) {
    throw new ShapeError(`${name}.data`, `${size} elements for shape [${shape.join(', ')}]`, `${data!.length} elements`);
  }
  return t as Tensor;
}

function checkEnum<T extends string>(name: string, value: unknown, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!allowed.includes(value as T)) {
    throw new ValueError(name, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, describe(value));
  }
  return value as T;
}

function checkOptions(options: unknown, D: number) {
  if (options !== undefined && (typeof options !== 'object' || options === null || Array.isArray(options))) {
    throw new ValueError('options', 'an options object or undefined', describe(options));
  }
  const o = (options ?? {}) as AttentionOptions & Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!KNOWN_OPTIONS.has(key)) {
      throw new ValueError(`options.${key}`, `one of the known options (${[...KNOWN_OPTIONS].join(', ')})`, `an unknown option`);
    }
    if (key in UNSUPPORTED_OPTIONS && o[key] !== undefined) {
      throw new NotSupportedError(`options.${key}`, UNSUPPORTED_OPTIONS[key], 'undefined', describe(o[key]));
    }
  }
  if (o.causal !== undefined && typeof o.causal !== 'boolean') {
    throw new ValueError('options.causal', 'a boolean', describe(o.causal));
  }
  if (o.scale !== undefined && (typeof o.scale !== 'number' || !Number.isFinite(o.scale))) {
    throw new ValueError('options.scale', 'a finite number', describe(o.scale));
  }
  if (o.memory !== undefined && !(o.memory instanceof MemoryTracker)) {
    throw new ValueError('options.memory', 'a MemoryTracker', describe(o.memory));
  }
  return {
    causal: o.causal ?? false,
    scale: o.scale ?? 1 / Math.sqrt(D),
    layout: checkEnum('options.layout', o.layout, LAYOUTS, 'BNHD'),
    backend: checkEnum('options.backend', o.backend, BACKENDS, 'auto'),
    algorithm: checkEnum('options.algorithm', o.algorithm, ALGORITHMS, 'flash'),
    memory: o.memory ?? defaultMemory,
  };
}

function sameDType(name: string, t: Tensor, dtype: DType): void {
  if (t.dtype !== dtype) throw new DTypeError(`${name}.dtype`, `'${dtype}' (the dtype of q)`, `'${t.dtype}'`);
}

function sameShape(name: string, t: Tensor, shape: readonly number[], what: string): void {
  if (t.shape.some((s, i) => s !== shape[i])) {
    throw new ShapeError(`${name}.shape`, `[${shape.join(', ')}] (${what})`, `[${t.shape.join(', ')}]`);
  }
}

/** Check the arguments of forward(q, k, v, options). */
export function checkForward(q: unknown, k: unknown, v: unknown, options: unknown): Problem {
  const Q = checkTensor('q', q, 4);
  const K = checkTensor('k', k, 4);
  const V = checkTensor('v', v, 4);
  // The layout decides what the axes mean, so read it before comparing shapes.
  const layout = checkEnum(
    'options.layout',
    (options as AttentionOptions | undefined)?.layout,
    LAYOUTS,
    'BNHD',
  );
  const dq = dimsOf(Q.shape, layout);
  const dk = dimsOf(K.shape, layout);
  sameDType('k', K, Q.dtype);
  sameDType('v', V, Q.dtype);
  const axes = layout === 'BNHD' ? 'B, Nk, Hkv, D' : 'B, Hkv, Nk, D';
  if (dk.B !== dq.B) throw new ShapeError('k.shape', `batch ${dq.B} as q (axes ${axes})`, `[${K.shape.join(', ')}]`);
  if (dk.D !== dq.D) throw new ShapeError('k.shape', `head dim ${dq.D} as q (axes ${axes})`, `[${K.shape.join(', ')}]`);
  if (dq.H % dk.H !== 0) {
    throw new ShapeError('k.shape', `a head count that divides q's ${dq.H} heads (axes ${axes})`, `[${K.shape.join(', ')}]`);
  }
  sameShape('v', V, K.shape, 'the shape of k');
  return { B: dq.B, H: dq.H, Hkv: dk.H, Nq: dq.N, Nk: dk.N, D: dq.D, dtype: Q.dtype, ...checkOptions(options, dq.D) };
}

/** Check the arguments of backward(dout, q, k, v, out, lse, options). */
export function checkBackward(
  dout: unknown,
  q: unknown,
  k: unknown,
  v: unknown,
  out: unknown,
  lse: unknown,
  options: unknown,
): Problem {
  const p = checkForward(q, k, v, options);
  const Q = q as Tensor;
  const dO = checkTensor('dout', dout, 4);
  const O = checkTensor('out', out, 4);
  const L = checkTensor('lse', lse, 3);
  sameDType('dout', dO, p.dtype);
  sameDType('out', O, p.dtype);
  sameShape('dout', dO, Q.shape, 'the shape of q');
  sameShape('out', O, Q.shape, 'the shape of q');
  const lseDType: DType = p.dtype === 'f64' ? 'f64' : 'f32';
  if (L.dtype !== lseDType) throw new DTypeError('lse.dtype', `'${lseDType}' (as forward returns it)`, `'${L.dtype}'`);
  sameShape('lse', L, [p.B, p.H, p.Nq], '(B, H, Nq)');
  return p;
}
