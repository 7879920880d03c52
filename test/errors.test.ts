// Bad input: every argument, each way it can be wrong, gives a typed error that names the argument, what
// was expected and what came; nothing runs and no input is modified.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DTypeError,
  FlashAttnError,
  MemoryTracker,
  OutOfMemoryError,
  ShapeError,
  ValueError,
  backward,
  forward,
  tensor,
  type Tensor,
} from '../src/index.js';
import { inputs, snapshot } from './util.js';

type ErrorClass = new (...args: never[]) => FlashAttnError;

const c = { B: 2, H: 4, Hkv: 2, Nq: 5, Nk: 6, D: 3 };
const good = inputs(c, 'f32', 'BNHD');
const f16 = inputs(c, 'f16', 'BNHD');
const { out, lse } = await forward(good.q, good.k, good.v);

const with_ = (t: Tensor, patch: Partial<Record<keyof Tensor, unknown>>) => ({ ...t, ...patch }) as unknown as Tensor;

async function rejects(call: () => Promise<unknown>, kind: ErrorClass, argument: string, ...mentions: string[]) {
  const untouched = snapshot(good.q, good.k, good.v, good.dout, out, lse);
  await assert.rejects(call, (e: unknown) => {
    assert.ok(e instanceof kind, `expected ${kind.name}, got ${String(e)}`);
    assert.equal(e.argument, argument);
    assert.ok(e.message.startsWith(`${argument}: `), `message names the argument: ${e.message}`);
    for (const m of [e.expected, e.received, ...mentions]) assert.ok(e.message.includes(m), `"${e.message}" mentions "${m}"`);
    return true;
  });
  untouched();
}

describe('forward: bad tensors', () => {
  const { q, k, v } = good;
  const cases: [string, () => Promise<unknown>, ErrorClass, string, ...string[]][] = [
    ['q is null', () => forward(null as unknown as Tensor, k, v), ValueError, 'q', 'null'],
    ['q is a number', () => forward(3 as unknown as Tensor, k, v), ValueError, 'q', '3'],
    ['q is a bare Float32Array', () => forward(q.data as unknown as Tensor, k, v), ValueError, 'q', 'tensor(data, shape, dtype)', 'Float32Array'],
    ['q.data is a plain array', () => forward(with_(q, { data: [1, 2] }), k, v), DTypeError, 'q.data'],
    ['k.data is an Int32Array', () => forward(q, with_(k, { data: new Int32Array(k.data.length) }), v), DTypeError, 'k.data', 'Int32Array'],
    ['q.dtype does not match its array', () => forward(with_(q, { dtype: 'f16' }), k, v), DTypeError, 'q.dtype', '"f16"'],
    ['q.shape has 3 axes', () => forward(with_(q, { shape: [2, 5, 12] }), k, v), ShapeError, 'q.shape'],
    ['q.shape is missing', () => forward(with_(q, { shape: undefined }), k, v), ShapeError, 'q.shape'],
    ['D = 0', () => forward(with_(q, { shape: [2, 5, 4, 0], data: new Float32Array(0) }), k, v), ShapeError, 'q.shape[3]', '0'],
    ['a fractional size', () => forward(q, with_(k, { shape: [2, 6.5, 2, 3] }), v), ShapeError, 'k.shape[1]', '6.5'],
    ['a negative size', () => forward(q, k, with_(v, { shape: [2, -6, 2, 3] })), ShapeError, 'v.shape[1]', '-6'],
    ['q.data too short', () => forward(with_(q, { data: q.data.subarray(1) }), k, v), ShapeError, 'q.data', '119'],
    ['v.data too long', () => forward(q, k, with_(v, { data: new Float32Array(v.data.length + 1) })), ShapeError, 'v.data', '73'],
    ['k has another batch', () => forward(q, tensor(new Float32Array(36), [1, 6, 2, 3]), v), ShapeError, 'k.shape', 'batch 2'],
    ['k has another head dim', () => forward(q, tensor(new Float32Array(96), [2, 6, 2, 4]), v), ShapeError, 'k.shape', 'head dim 3'],
    ['k heads do not divide q heads', () => forward(q, tensor(new Float32Array(108), [2, 6, 3, 3]), v), ShapeError, 'k.shape', '4 heads'],
    ['v differs from k', () => forward(q, k, tensor(new Float32Array(30), [1, 5, 2, 3])), ShapeError, 'v.shape', '[2, 6, 2, 3]'],
    ['k is f16 while q is f32', () => forward(q, f16.k, v), DTypeError, 'k.dtype', "'f32'", "'f16'"],
    ['v is f16 while q is f32', () => forward(q, k, f16.v), DTypeError, 'v.dtype'],
    ['f64 on the cpu backend', () => forward(...(Object.values(inputs(c, 'f64', 'BNHD')).slice(0, 3) as [Tensor, Tensor, Tensor]), { backend: 'cpu' }), DTypeError, 'q.dtype', "'f64'"],
  ];
  for (const [name, call, kind, argument, ...mentions] of cases) test(name, () => rejects(call, kind, argument, ...mentions));
});

describe('forward: bad options', () => {
  const { q, k, v } = good;
  const opt = (o: unknown) => () => forward(q, k, v, o as never);
  const cases: [string, () => Promise<unknown>, ErrorClass, string, ...string[]][] = [
    ['options is a number', opt(5), ValueError, 'options'],
    ['options is an array', opt([]), ValueError, 'options'],
    ['scale is NaN', opt({ scale: NaN }), ValueError, 'options.scale', 'NaN'],
    ['scale is Infinity', opt({ scale: Infinity }), ValueError, 'options.scale', 'Infinity'],
    ['scale is a string', opt({ scale: '0.5' }), ValueError, 'options.scale', '"0.5"'],
    ['causal is a string', opt({ causal: 'yes' }), ValueError, 'options.causal'],
    ['an unknown layout', opt({ layout: 'NHD' }), ValueError, 'options.layout', "'BNHD'", "'BHND'"],
    ['an unknown backend', opt({ backend: 'gpu' }), ValueError, 'options.backend', '"gpu"'],
    ['an unknown algorithm', opt({ algorithm: 'fast' }), ValueError, 'options.algorithm'],
    ['a misspelt option', opt({ casual: true }), ValueError, 'options.casual', 'unknown'],
    ['memory is not a tracker', opt({ memory: {} }), ValueError, 'options.memory'],
  ];
  for (const [name, call, kind, argument, ...mentions] of cases) test(name, () => rejects(call, kind, argument, ...mentions));

  const bias = (shape: number[], data: ArrayLike<number> = new Float32Array(shape.reduce((a, b) => a * b, 1))) => ({ data, dtype: 'f32', shape });
  const mask = (shape: number[], data: unknown = new Uint8Array(shape.reduce((a, b) => a * b, 1))) => ({ data, shape });
  const variants: [string, () => Promise<unknown>, ErrorClass, string, ...string[]][] = [
    ['window of one number', opt({ window: [4] }), ValueError, 'options.window'],
    ['window below -1', opt({ window: [-2, 0] }), ValueError, 'options.window', '-2'],
    ['window not integers', opt({ window: [1.5, 0] }), ValueError, 'options.window'],
    ['alibiSlopes a Float64Array', opt({ alibiSlopes: new Float64Array(4) }), DTypeError, 'options.alibiSlopes'],
    ['alibiSlopes of the wrong length', opt({ alibiSlopes: new Float32Array(3) }), ShapeError, 'options.alibiSlopes', '4 (H) or 8 (B·H)'],
    ['alibiSlopes not finite', opt({ alibiSlopes: new Float32Array([1, NaN, 1, 1]) }), ValueError, 'options.alibiSlopes'],
    ['softcap negative', opt({ softcap: -1 }), ValueError, 'options.softcap'],
    ['softcap NaN', opt({ softcap: NaN }), ValueError, 'options.softcap'],
    ['bias of a shape that does not broadcast', opt({ bias: bias([2, 4, 5, 2]) }), ShapeError, 'options.bias.shape', '[2, 4, 5, 6]'],
    ['bias of rank 3', opt({ bias: bias([4, 5, 6]) }), ShapeError, 'options.bias.shape'],
    ['bias data too short', opt({ bias: bias([1, 1, 5, 6], new Float32Array(29)) }), ShapeError, 'options.bias.data'],
    ['bias f64 with f32 inputs', opt({ bias: { data: new Float64Array(6), dtype: 'f64', shape: [1, 1, 1, 6] } }), DTypeError, 'options.bias.dtype'],
    ['biasGrad without a bias', opt({ biasGrad: true }), ValueError, 'options.biasGrad'],
    ['mask of numbers', opt({ mask: mask([1, 1, 5, 6], new Array(30).fill(1)) }), DTypeError, 'options.mask.data', 'Uint8Array'],
    ['mask of a wrong shape', opt({ mask: mask([1, 1, 6, 5]) }), ShapeError, 'options.mask.shape'],
    ['mask a bare Uint8Array', opt({ mask: new Uint8Array(30) }), ShapeError, 'options.mask.shape'],
    ['blockMask without blockSize', opt({ blockMask: mask([1, 1, 1, 1]) }), ValueError, 'options.blockMask.blockSize'],
    ['blockMask of the wrong block count', opt({ blockMask: { ...mask([1, 1, 2, 2]), blockSize: [2, 2] } }), ShapeError, 'options.blockMask.shape', '[2, 4, 3, 3]'],
    ['dropout p = 1', opt({ dropout: { p: 1, seed: 0 } }), ValueError, 'options.dropout.p'],
    ['dropout seed negative', opt({ dropout: { p: 0.1, seed: -1 } }), ValueError, 'options.dropout.seed'],
    ['dropout seed past 2^32', opt({ dropout: { p: 0.1, seed: 2 ** 32 } }), ValueError, 'options.dropout.seed'],
  ];
  for (const [name, call, kind, argument, ...mentions] of variants) test(name, () => rejects(call, kind, argument, ...mentions));
});

describe('packed sequences: variants of the wrong shape', () => {
  // Two sequences of 3 and 5 queries (and 2 and 6 keys) in q (1, 8, 4, 3), k and v (1, 8, 2, 3): bias and
  // masks broadcast over (S, H, max nq, max nk) = (2, 4, 5, 6), the block mask over its blocks.
  const q = tensor(new Float32Array(8 * 4 * 3), [1, 8, 4, 3]);
  const kv = tensor(new Float32Array(8 * 2 * 3), [1, 8, 2, 3]);
  const packed = { cuSeqlensQ: new Int32Array([0, 3, 8]), cuSeqlensK: new Int32Array([0, 2, 8]) };
  const opt = (o: unknown) => () => forward(q, kv, kv, { ...packed, ...(o as object) });
  const bias = (shape: number[]) => ({ data: new Float32Array(shape.reduce((a, b) => a * b, 1)), dtype: 'f32', shape });
  const mask = (shape: number[]) => ({ data: new Uint8Array(shape.reduce((a, b) => a * b, 1)), shape });
  const cases: [string, () => Promise<unknown>, ErrorClass, string, ...string[]][] = [
    ['bias over the packed rows (totalQ, totalK)', opt({ bias: bias([1, 4, 8, 8]) }), ShapeError, 'options.bias.shape', '[2, 4, 5, 6]', 'max nq'],
    ['bias of another sequence count', opt({ bias: bias([3, 4, 5, 6]) }), ShapeError, 'options.bias.shape', '(S or 1'],
    ['mask over the packed rows', opt({ mask: mask([1, 1, 8, 8]) }), ShapeError, 'options.mask.shape', '[2, 4, 5, 6]'],
    ['blockMask of the packed block count', opt({ blockMask: { ...mask([1, 1, 4, 4]), blockSize: [2, 2] } }), ShapeError, 'options.blockMask.shape', '[2, 4, 3, 3]'],
    ['alibiSlopes neither H nor S·H', opt({ alibiSlopes: new Float32Array(6) }), ShapeError, 'options.alibiSlopes', '4 (H) or 8 (S·H)'],
  ];
  for (const [name, call, kind, argument, ...mentions] of cases) test(name, () => rejects(call, kind, argument, ...mentions));
});

describe('backward: bad tensors', () => {
  const { q, k, v, dout } = good;
  const cases: [string, () => Promise<unknown>, ErrorClass, string, ...string[]][] = [
    ['dout has another shape', () => backward(tensor(new Float32Array(60), [2, 5, 2, 3]), q, k, v, out, lse), ShapeError, 'dout.shape'],
    ['out is f16 while q is f32', () => backward(dout, q, k, v, f16.q, lse), DTypeError, 'out.dtype'],
    ['out is missing', () => backward(dout, q, k, v, undefined as unknown as Tensor, lse), ValueError, 'out'],
    ['lse has the wrong rank', () => backward(dout, q, k, v, out, tensor(lse.data, [2, 20])), ShapeError, 'lse.shape'],
    ['lse has the wrong shape', () => backward(dout, q, k, v, out, tensor(lse.data, [4, 2, 5])), ShapeError, 'lse.shape', '[2, 4, 5]'],
    ['lse is f16', () => backward(dout, q, k, v, out, tensor(new Uint16Array(40), [2, 4, 5], 'f16')), DTypeError, 'lse.dtype', "'f32'"],
    ['lse.data too short', () => backward(dout, q, k, v, out, with_(lse, { data: new Float32Array(39) })), ShapeError, 'lse.data'],
    ['k is wrong in backward too', () => backward(dout, q, tensor(new Float32Array(36), [1, 6, 2, 3]), v, out, lse), ShapeError, 'k.shape'],
    ['scale is NaN in backward too', () => backward(dout, q, k, v, out, lse, { scale: NaN }), ValueError, 'options.scale'],
  ];
  for (const [name, call, kind, argument, ...mentions] of cases) test(name, () => rejects(call, kind, argument, ...mentions));
});

describe('more memory than the machine allows', () => {
  test('the cpu standard algorithm at Nq = Nk = 2^20 cannot hold S: OutOfMemoryError, nothing left allocated', async () => {
    const n = 2 ** 20;
    const x = tensor(new Float32Array(n), [1, n, 1, 1]);
    const memory = new MemoryTracker();
    await assert.rejects(forward(x, x, x, { backend: 'cpu', algorithm: 'standard', memory }), (e: unknown) => {
      assert.ok(e instanceof OutOfMemoryError, String(e));
      assert.match(e.message, /S \(Nq×Nk per head\)/);
      return true;
    });
    assert.equal(memory.live, 0, 'every buffer of the failed call was released');
  });
});

describe('tensor()', () => {
  test('checks its arguments', () => {
    assert.throws(() => tensor(new Float32Array(5), [2, 3]), ShapeError);
    assert.throws(() => tensor(new Float32Array(6), [2, 3], 'f16' as 'f32'), DTypeError);
    assert.throws(() => tensor([1, 2] as unknown as Float32Array, [2]), DTypeError);
    assert.equal(tensor(new Uint16Array(6), [2, 3]).dtype, 'f16');
  });
});
