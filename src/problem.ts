/**
 * Argument checking for forward() and backward(): every argument is checked before any work starts,
 * and the result is a Problem, the sizes and settings every backend computes from.
 */
import { DTypeError, ShapeError, ValueError, describe } from './errors.js';
import { bandOf, broadcastIndex, type Broadcast, type Modifiers } from './modifiers.js';
import { MemoryTracker, memory as defaultMemory } from './memory.js';
import {
  ALGORITHMS,
  BACKENDS,
  KNOWN_OPTIONS,
  LAYOUTS,
  PRECISIONS,
  type Algorithm,
  type AttentionOptions,
  type Backend,
  type Precision,
} from './options.js';
import { BYTES_PER_ELEMENT, dimsOf, strides, type Strides, dtypeOfArray, isGpuBuffer, type AnyTensor, type DType, type GpuTensor, type Layout, type Tensor, type TensorData } from './tensor.js';

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
  precision: Precision;
  memory: MemoryTracker;
  /** The tensors' data are GPUBuffers (webgpu, zero-copy). */
  onGpu: boolean;
  /** The caller's device, if it brought one. */
  device?: GPUDevice;
  /** forward(): the caller's buffers for out and lse (options.out / options.lse, checked), GPUBuffer tensors only. */
  outputs?: { out?: GPUBuffer; lse?: GPUBuffer };
  /** Packed sequences (options.cuSeqlensQ / cuSeqlensK, checked, copied): B = 1, Nq = totalQ, Nk = totalK. */
  cuSeqlens?: { q: Int32Array; k: Int32Array };
  /** The variants (window, ALiBi, soft-cap, bias, mask, block mask, dropout; causal as a band too). */
  mods: Modifiers;
}

/** A tensor argument whose structure (array, dtype, shape, length) has been checked. */
export function checkTensor(name: string, t: unknown, rank: number): AnyTensor {
  if (typeof t !== 'object' || t === null) {
    throw new ValueError(name, 'a tensor { data, dtype, shape }', describe(t));
  }
  if (ArrayBuffer.isView(t)) {
    // A bare array where a tensor wraps it: the mistake a first call makes most.
    throw new ValueError(name, `a tensor { data, dtype, shape } (tensor(data, shape, dtype) wraps a ${t.constructor.name})`, `a bare ${t.constructor.name}`);
  }
  if (isGpuBuffer(t)) throw new ValueError(name, "a tensor { data: the GPUBuffer, dtype: 'f32' or 'f16', shape }", 'a bare GPUBuffer');
  const { data, dtype, shape } = t as Partial<Tensor>;
  const onGpu = isGpuBuffer(data);
  const arrayType = onGpu ? undefined : dtypeOfArray(data);
  if (onGpu) {
    if (dtype !== 'f32' && dtype !== 'f16') throw new DTypeError(`${name}.dtype`, "'f32' or 'f16' for a GPUBuffer", describe(dtype));
  } else if (arrayType === undefined) {
    throw new DTypeError(`${name}.data`, 'a Float32Array, Uint16Array (f16 bits), Float64Array or GPUBuffer', describe(data));
  } else if (dtype !== arrayType) {
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
  if (onGpu) {
    const bytes = size * BYTES_PER_ELEMENT[dtype!];
    if (data.size < bytes) {
      throw new ShapeError(`${name}.data`, `a GPUBuffer of at least ${bytes} bytes for shape [${shape.join(', ')}] in ${dtype}`, `${data.size} bytes`);
    }
    if (!(data.usage & 0x80)) { // GPUBufferUsage.STORAGE
      throw new ValueError(`${name}.data`, 'a GPUBuffer with STORAGE usage', `usage ${data.usage}`);
    }
  } else if ((data as TensorData).length !== size) {
    throw new ShapeError(`${name}.data`, `${size} elements for shape [${shape.join(', ')}]`, `${(data as TensorData).length} elements`);
  }
  return t as AnyTensor;
}

/** All tensors of a call live on the same side: typed arrays, or GPUBuffers. */
function sameKind(name: string, t: AnyTensor, onGpu: boolean): void {
  if (isGpuBuffer(t.data) !== onGpu) {
    throw new ValueError(`${name}.data`, onGpu ? 'a GPUBuffer, as q.data is' : 'a typed array, as q.data is', onGpu ? 'a typed array' : 'a GPUBuffer');
  }
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
  if (o.device !== undefined && (typeof o.device !== 'object' || o.device === null || typeof o.device.createBuffer !== 'function')) {
    throw new ValueError('options.device', 'a GPUDevice', describe(o.device));
  }
  return {
    causal: o.causal ?? false,
    scale: o.scale ?? 1 / Math.sqrt(D),
    layout: checkEnum('options.layout', o.layout, LAYOUTS, 'BNHD'),
    backend: checkEnum('options.backend', o.backend, BACKENDS, 'auto'),
    algorithm: checkEnum('options.algorithm', o.algorithm, ALGORITHMS, 'flash'),
    precision: checkEnum('options.precision', o.precision, PRECISIONS, 'highest'),
    memory: o.memory ?? defaultMemory,
    device: o.device,
  };
}

function sameDType(name: string, t: AnyTensor, dtype: DType): void {
  if (t.dtype !== dtype) throw new DTypeError(`${name}.dtype`, `'${dtype}' (the dtype of q)`, `'${t.dtype}'`);
}

function sameShape(name: string, t: AnyTensor, shape: readonly number[], what: string): void {
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
  const onGpu = isGpuBuffer(Q.data);
  sameKind('k', K, onGpu);
  sameKind('v', V, onGpu);
  sameDType('k', K, Q.dtype);
  sameDType('v', V, Q.dtype);
  const axes = layout === 'BNHD' ? 'B, Nk, Hkv, D' : 'B, Hkv, Nk, D';
  if (dk.B !== dq.B) throw new ShapeError('k.shape', `batch ${dq.B} as q (axes ${axes})`, `[${K.shape.join(', ')}]`);
  if (dk.D !== dq.D) throw new ShapeError('k.shape', `head dim ${dq.D} as q (axes ${axes})`, `[${K.shape.join(', ')}]`);
  if (dq.H % dk.H !== 0) {
    throw new ShapeError('k.shape', `a head count that divides q's ${dq.H} heads (axes ${axes})`, `[${K.shape.join(', ')}]`);
  }
  sameShape('v', V, K.shape, 'the shape of k');
  const settings = checkOptions(options, dq.D);
  const cuSeqlens = checkCuSeqlens(options as AttentionOptions | undefined, Q, K, layout);
  // Packed sequences take their variants as a padded batch would: sequence s as batch row s of
  // maxNq queries and maxNk keys (src/varlen.ts cuts out each sequence's part).
  const dims = cuSeqlens ? { B: cuSeqlens.q.length - 1, H: dq.H, Nq: longest(cuSeqlens.q), Nk: longest(cuSeqlens.k) } : { B: dq.B, H: dq.H, Nq: dq.N, Nk: dk.N };
  const mods = checkModifiers((options ?? {}) as AttentionOptions, dims, settings.causal, onGpu, Q.dtype, cuSeqlens !== undefined);
  const outputs = checkOutputs(options as AttentionOptions | undefined, Q, [K, V, ...(mods.bias ? [mods.bias] : [])], { B: dq.B, H: dq.H, Nq: dq.N }, cuSeqlens !== undefined);
  return { B: dq.B, H: dq.H, Hkv: dk.H, Nq: dq.N, Nk: dk.N, D: dq.D, dtype: Q.dtype, onGpu, ...settings, mods, ...(cuSeqlens && { cuSeqlens }), ...(outputs && { outputs }) };
}

/** GPUBufferUsage.STORAGE and COPY_DST (numbers here: the checks run where WebGPU's globals may not be defined). */
const STORAGE_USAGE = 0x80;
const COPY_DST_USAGE = 0x08;

/**
 * A caller's buffer for a result (forward()'s options.out / options.lse, a KV cache call's): a GpuTensor
 * of the result's dtype and shape, on a STORAGE buffer large enough, that is none of the call's inputs
 * (WebGPU does not bind one buffer for reading and writing in one dispatch).
 */
function checkOutput(name: string, t: unknown, dtype: 'f32' | 'f16', shape: readonly number[], inputs: readonly { data: unknown }[], copied: boolean): GpuTensor {
  const x = t as Partial<GpuTensor> | null;
  if (typeof x !== 'object' || x === null || !isGpuBuffer(x.data)) throw new ValueError(name, 'a GpuTensor { data: GPUBuffer, dtype, shape }', describe(t));
  if (x.dtype !== dtype) throw new DTypeError(`${name}.dtype`, `'${dtype}'`, describe(x.dtype));
  if (!Array.isArray(x.shape) || x.shape.length !== shape.length || x.shape.some((n, i) => n !== shape[i])) {
    throw new ShapeError(`${name}.shape`, `[${shape.join(', ')}]`, describe(x.shape));
  }
  const bytes = shape.reduce((a, b) => a * b, 1) * BYTES_PER_ELEMENT[dtype];
  if (x.data.size < bytes) throw new ShapeError(`${name}.data`, `a GPUBuffer of at least ${bytes} bytes`, `${x.data.size} bytes`);
  if ((x.data.usage & STORAGE_USAGE) === 0) throw new ValueError(`${name}.data`, 'a GPUBuffer made with GPUBufferUsage.STORAGE', `usage ${x.data.usage}`);
  if (copied && (x.data.usage & COPY_DST_USAGE) === 0) {
    throw new ValueError(`${name}.data`, 'a GPUBuffer made with GPUBufferUsage.COPY_DST too (packed sequences copy their results there)', `usage ${x.data.usage}`);
  }
  if (inputs.some((i) => i.data === x.data)) throw new ValueError(`${name}.data`, 'a buffer that is not one of the inputs (results are not written over them)', 'an input\'s buffer');
  return x as GpuTensor;
}

/**
 * options.out and options.lse of forward() or a KV cache call, checked against q's shape (lse: (B, H, Nq));
 * undefined where neither is given. `packed`: packed sequences, which copy their results in (COPY_DST).
 */
export function checkOutputs(o: Pick<AttentionOptions, 'out' | 'lse'> | undefined, Q: AnyTensor, inputs: readonly { data: unknown }[], d: { B: number; H: number; Nq: number }, packed: boolean): Problem['outputs'] {
  if (o?.out === undefined && o?.lse === undefined) return undefined;
  if (!isGpuBuffer(Q.data)) {
    const [name, given] = o.out !== undefined ? ['options.out', o.out] : ['options.lse', o.lse];
    throw new ValueError(name, 'undefined for typed-array q (results come back as typed arrays)', describe(given));
  }
  const dtype = Q.dtype as 'f32' | 'f16';
  const out = o.out === undefined ? undefined : checkOutput('options.out', o.out, dtype, Q.shape, [Q, ...inputs], packed);
  const lse = o.lse === undefined ? undefined : checkOutput('options.lse', o.lse, 'f32', [d.B, d.H, d.Nq], [Q, ...inputs, ...(out ? [out] : [])], packed);
  return { ...(out && { out: out.data }), ...(lse && { lse: lse.data }) };
}

/** The longest sequence of packed offsets. */
function longest(offsets: Int32Array): number {
  let n = 0;
  for (let s = 1; s < offsets.length; s++) n = Math.max(n, offsets[s] - offsets[s - 1]);
  return n;
}

/**
 * A shape broadcastable to `full` (each axis its size or 1; a size-0 axis, a packed call's longest
 * sequence without queries or keys, takes 1), as element strides of a dense tensor. `axes` names them.
 */
function broadcast(name: string, shape: unknown, full: readonly [number, number, number, number], axes: string): Broadcast {
  if (!Array.isArray(shape) || shape.length !== 4 || !shape.every((s) => Number.isSafeInteger(s))) {
    throw new ShapeError(name, `4 dimensions ${axes} = (${full.join(', ')})`, describe(shape));
  }
  shape.forEach((s: number, i) => {
    if (s < 1 || (s !== 1 && s !== full[i])) throw new ShapeError(name, `a shape broadcastable to [${full.join(', ')}] ${axes}`, `[${shape.join(', ')}]`);
  });
  return broadcastIndex(shape as unknown as Broadcast['shape']);
}

function checkMaskData(name: string, x: unknown, index: Broadcast): Uint8Array {
  const data = (x as { data?: unknown }).data;
  if (!(data instanceof Uint8Array)) throw new DTypeError(`${name}.data`, 'a Uint8Array (1 = keep)', describe(data));
  const size = index.shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) throw new ShapeError(`${name}.data`, `${size} elements for shape [${index.shape.join(', ')}]`, `${data.length} elements`);
  return data;
}

/**
 * The variant options, checked: window, alibiSlopes, softcap, bias (+ biasGrad), mask, blockMask, dropout
 * (also the KV cache's window, alibiSlopes and softcap, src/kvcache.ts).
 */
export function checkModifiers(
  o: AttentionOptions,
  dims: { B: number; H: number; Nq: number; Nk: number },
  causal: boolean,
  onGpu: boolean,
  dtype: DType,
  packed: boolean,
): Modifiers {
  const { B, H, Nq, Nk } = dims;
  const full = [B, H, Nq, Nk] as const;
  // Packed sequences: (sequence, head, row within the sequence, key within the sequence).
  const [b, nq, nk] = packed ? ['S', 'max nq', 'max nk'] : ['B', 'Nq', 'Nk'];
  const axes = `(${b} or 1, H or 1, ${nq} or 1, ${nk} or 1)`;
  const m: Modifiers = {};
  let window: [number, number] | undefined;
  if (o.window !== undefined) {
    const w = o.window as unknown;
    if (!Array.isArray(w) || w.length !== 2 || !w.every((x) => Number.isSafeInteger(x) && x >= -1)) {
      throw new ValueError('options.window', '[left, right], integers ≥ 0 or -1 (unbounded)', describe(w));
    }
    window = [w[0], w[1]];
  }
  const band = bandOf(causal, window);
  if (band) m.band = band;
  if (o.alibiSlopes !== undefined) {
    const a = o.alibiSlopes as unknown;
    if (!(a instanceof Float32Array)) throw new DTypeError('options.alibiSlopes', 'a Float32Array', describe(a));
    if (a.length !== H && a.length !== B * H) throw new ShapeError('options.alibiSlopes', `${H} (H) or ${B * H} (${b}·H) slopes`, `${a.length}`);
    if (!a.every(Number.isFinite)) throw new ValueError('options.alibiSlopes', 'finite slopes', 'a non-finite slope');
    const slopes = new Float32Array(B * H);
    for (let b = 0; b < B; b++) slopes.set(a.length === H ? a : a.subarray(b * H, (b + 1) * H), b * H);
    m.alibi = { slopes, H };
  }
  if (o.softcap !== undefined) {
    if (typeof o.softcap !== 'number' || !Number.isFinite(o.softcap) || o.softcap < 0) {
      throw new ValueError('options.softcap', 'a finite number ≥ 0 (0: off)', describe(o.softcap));
    }
    if (o.softcap > 0) m.softcap = o.softcap;
  }
  if (o.biasGrad !== undefined && typeof o.biasGrad !== 'boolean') throw new ValueError('options.biasGrad', 'a boolean', describe(o.biasGrad));
  if (o.biasGrad && o.bias === undefined) throw new ValueError('options.biasGrad', 'false or undefined without options.bias', 'true');
  if (o.bias !== undefined) {
    const t = o.bias as unknown;
    if (typeof t !== 'object' || t === null) throw new ValueError('options.bias', 'a tensor { data, dtype, shape }', describe(t));
    const index = broadcast('options.bias.shape', (t as AnyTensor).shape, full, axes);
    const bias = checkTensor('options.bias', t, 4);
    sameKind('options.bias', bias, onGpu);
    const allowed = dtype === 'f64' ? ['f64'] : ['f32', 'f16'];
    if (!allowed.includes(bias.dtype)) throw new DTypeError('options.bias.dtype', allowed.map((d) => `'${d}'`).join(' or '), `'${bias.dtype}'`);
    m.bias = { data: bias.data, dtype: bias.dtype as 'f32' | 'f16' | 'f64', index, grad: o.biasGrad === true };
  }
  if (o.mask !== undefined) {
    const t = o.mask as unknown;
    if (typeof t !== 'object' || t === null) throw new ValueError('options.mask', 'a mask { data: Uint8Array, shape }', describe(t));
    const index = broadcast('options.mask.shape', (t as { shape?: unknown }).shape, full, axes);
    m.mask = { data: checkMaskData('options.mask', t, index), index };
  }
  if (o.blockMask !== undefined) {
    const t = o.blockMask as unknown;
    if (typeof t !== 'object' || t === null) throw new ValueError('options.blockMask', 'a block mask { data: Uint8Array, shape, blockSize }', describe(t));
    const size = (t as { blockSize?: unknown }).blockSize;
    if (!Array.isArray(size) || size.length !== 2 || !size.every((x) => Number.isSafeInteger(x) && x >= 1)) {
      throw new ValueError('options.blockMask.blockSize', '[rows, cols], positive integers', describe(size));
    }
    const [rows, cols] = size as [number, number];
    const blocks = `(${b} or 1, H or 1, ⌈${nq}/rows⌉ or 1, ⌈${nk}/cols⌉ or 1)`;
    const index = broadcast('options.blockMask.shape', (t as { shape?: unknown }).shape, [B, H, Math.ceil(Nq / rows), Math.ceil(Nk / cols)], blocks);
    m.blockMask = { data: checkMaskData('options.blockMask', t, index), rows, cols, index };
  }
  if (o.dropout !== undefined) {
    const d = o.dropout as unknown as { p?: unknown; seed?: unknown };
    if (typeof d !== 'object' || d === null) throw new ValueError('options.dropout', '{ p, seed }', describe(d));
    if (typeof d.p !== 'number' || !(d.p >= 0 && d.p < 1)) throw new ValueError('options.dropout.p', 'a probability in [0, 1)', describe(d.p));
    if (!Number.isSafeInteger(d.seed) || (d.seed as number) < 0 || (d.seed as number) >= 2 ** 32) {
      throw new ValueError('options.dropout.seed', 'an integer in [0, 2^32)', describe(d.seed));
    }
    if (d.p > 0) m.dropout = { p: d.p, seed: d.seed as number, threshold: Math.round(d.p * 2 ** 24), scale: 1 / (1 - d.p) };
  }
  return m;
}

/**
 * options.cuSeqlensQ / cuSeqlensK (both or neither): Int32Arrays of the same length S + 1 ≥ 2, from 0,
 * non-decreasing, to the packed lengths totalQ of q and totalK of k, whose batch is 1. Copies, so that
 * the caller may reuse its arrays while the call runs.
 */
function checkCuSeqlens(o: AttentionOptions | undefined, Q: AnyTensor, K: AnyTensor, layout: Layout): { q: Int32Array; k: Int32Array } | undefined {
  const given = { Q: o?.cuSeqlensQ, K: o?.cuSeqlensK };
  if (given.Q === undefined && given.K === undefined) return undefined;
  if (given.Q === undefined || given.K === undefined) {
    const [missing, other] = given.Q === undefined ? ['Q', 'K'] : ['K', 'Q'];
    throw new ValueError(`options.cuSeqlens${missing}`, `an Int32Array, as options.cuSeqlens${other} is given (both or neither)`, 'undefined');
  }
  const offsets = (which: 'Q' | 'K', t: AnyTensor, axes: string): Int32Array => {
    const name = `options.cuSeqlens${which}`;
    const x: unknown = given[which];
    if (!(x instanceof Int32Array)) {
      if (ArrayBuffer.isView(x) || Array.isArray(x)) throw new DTypeError(name, 'an Int32Array', describe(x));
      throw new ValueError(name, 'an Int32Array of sequence offsets', describe(x));
    }
    if (x.length < 2) throw new ShapeError(name, 'at least 2 entries (S + 1 offsets of S ≥ 1 sequences)', `${x.length}`);
    if (x[0] !== 0) throw new ValueError(name, 'first entry 0', `${name}[0] = ${x[0]}`);
    for (let s = 1; s < x.length; s++) {
      if (x[s] < x[s - 1]) throw new ValueError(name, 'non-decreasing entries', `${name}[${s}] = ${x[s]} after ${x[s - 1]}`);
    }
    const total = dimsOf(t.shape, layout).N;
    const last = x[x.length - 1];
    if (last !== total) throw new ValueError(name, `last entry ${total}, the packed length of ${which.toLowerCase()} (axes ${axes})`, `${name}[${x.length - 1}] = ${last}`);
    return Int32Array.from(x);
  };
  const axes = (n: string, h: string) => (layout === 'BNHD' ? `1, ${n}, ${h}, D` : `1, ${h}, ${n}, D`);
  if (Q.shape[0] !== 1) throw new ShapeError('q.shape', `batch 1 for packed sequences (axes ${axes('totalQ', 'H')})`, `[${Q.shape.join(', ')}]`);
  const q = offsets('Q', Q, axes('totalQ', 'H'));
  const k = offsets('K', K, axes('totalK', 'Hkv'));
  if (k.length !== q.length) throw new ShapeError('options.cuSeqlensK', `${q.length} entries, as options.cuSeqlensQ (one sequence each)`, `${k.length}`);
  return { q, k };
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
  const { outputs: _ignored, ...p } = checkForward(q, k, v, options); // options.out / lse are forward()'s
  const Q = q as AnyTensor;
  const dO = checkTensor('dout', dout, 4);
  const O = checkTensor('out', out, 4);
  const L = checkTensor('lse', lse, 3);
  sameKind('dout', dO, p.onGpu);
  sameKind('out', O, p.onGpu);
  sameKind('lse', L, p.onGpu);
  sameDType('dout', dO, p.dtype);
  sameDType('out', O, p.dtype);
  sameShape('dout', dO, Q.shape, 'the shape of q');
  sameShape('out', O, Q.shape, 'the shape of q');
  const lseDType: DType = p.dtype === 'f64' ? 'f64' : 'f32';
  if (L.dtype !== lseDType) throw new DTypeError('lse.dtype', `'${lseDType}' (as forward returns it)`, `'${L.dtype}'`);
  sameShape('lse', L, [p.B, p.H, p.Nq], '(B, H, Nq)');
  return p;
}

/** Strides of q / out / dout (H heads, Nq rows) and of k / v (Hkv heads, Nk rows) in the problem's layout. */
export function problemStrides(p: Problem): { q: Strides; kv: Strides } {
  return {
    q: strides({ B: p.B, N: p.Nq, H: p.H, D: p.D }, p.layout),
    kv: strides({ B: p.B, N: p.Nk, H: p.Hkv, D: p.D }, p.layout),
  };
}
