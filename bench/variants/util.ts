/** What the variant scripts share: seeded f16 and f32 inputs and the max-abs error against a reference. */
import type { Tensor } from '../../src/index.js';
import { encodeF16 } from '../../src/f16.js';
import { toF64 } from '../../src/tensor.js';
import { mulberry32 } from '../../src/cli/random.js';

/** n standard-normal values, seeded. */
export function randomNormal(n: number, seed: number): Float64Array {
  const u = mulberry32(seed);
  const x = new Float64Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
  return x;
}

/** n standard-normal values as f16 bits, seeded. */
export function randomF16(n: number, seed: number): Uint16Array {
  return encodeF16(randomNormal(n, seed));
}

/** n standard-normal values as f32, seeded. */
export function randomF32(n: number, seed: number): Float32Array {
  return Float32Array.from(randomNormal(n, seed));
}

/** max |a − ref| over the elements (equal values, infinities included, count as 0; NaN if any differ by NaN). */
export function maxErr(a: Tensor, ref: Tensor): number {
  const x = toF64(a);
  const y = toF64(ref);
  let e = 0;
  for (let i = 0; i < x.length; i++) {
    if (x[i] === y[i]) continue;
    const d = Math.abs(x[i] - y[i]);
    if (Number.isNaN(d)) return NaN;
    if (d > e) e = d;
  }
  return e;
}
