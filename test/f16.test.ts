// f16 as 16-bit storage: exact decoding, round-to-nearest-even encoding, from f32 and from f64 values.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeF16, encodeF16, f16ToNumber, numberToF16, roundToF16 } from '../src/index.js';

test('every f16 value survives decode then encode', () => {
  for (let h = 0; h < 65536; h++) {
    const x = f16ToNumber(h);
    if (Number.isNaN(x)) assert.ok(Number.isNaN(f16ToNumber(numberToF16(x))));
    else assert.equal(numberToF16(x), h, `bits ${h.toString(16)}`);
  }
});

test('known values and rounding to nearest even', () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65519.99, 0x7bff],
    [65520, 0x7c00], // the tie above the largest finite value rounds to infinity
    [1e9, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // a tie between 0 and 2^-24 goes to even: 0
    [3 * 2 ** -26, 0x0001],
    [1.5 * 2 ** -24, 0x0002], // a tie between 1 and 2 ulps goes to even: 2
    [2 ** -14 - 2 ** -25, 0x0400], // the largest subnormal rounds up into the smallest normal
    [1 + 2 ** -11, 0x3c00], // the tie between 1 and 1 + 2^-10 goes to even
    [1 + 3 * 2 ** -11, 0x3c02],
    [1 + 2 ** -11 + 2 ** -40, 0x3c01], // an f64 just above the tie: rounding through f32 first would give 0x3c00
    [-0, 0x8000],
  ];
  for (const [x, bits] of cases) assert.equal(numberToF16(x), bits, `${x}`);
  assert.ok(Number.isNaN(roundToF16(NaN)));
  assert.equal(roundToF16(0.1), 0.0999755859375);
});

test('whole arrays', () => {
  const x = new Float32Array([0.5, -3.25, 7e-5, 1e5]);
  assert.deepEqual(Array.from(decodeF16(encodeF16(x))), [0.5, -3.25, roundToF16(7e-5), Infinity]);
});
