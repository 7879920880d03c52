/**
 * Seeded pseudo-random inputs for the benchmark: mulberry32 (src/random.ts) and Box-Muller
 * for standard-normal values, so every run of `flashattn bench` times the same numbers.
 */
import { encodeF16 } from '../f16.js';
import { mulberry32 } from '../random.js';
import { tensor, type Tensor } from '../tensor.js';

/** Fill `out` with standard-normal values (Box-Muller on two uniforms per pair). */
export function fillNormal(out: Float32Array, uniform: () => number): Float32Array {
  for (let i = 0; i < out.length; i += 2) {
    const u1 = 1 - uniform(); // (0, 1]: log never sees 0
    const u2 = uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < out.length) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** A tensor of the given shape with standard-normal values, stored as f32 or f16. */
export function randomTensor(shape: readonly number[], dtype: 'f32' | 'f16', uniform: () => number): Tensor {
  const values = fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), uniform);
  return dtype === 'f16' ? tensor(encodeF16(values), shape, 'f16') : tensor(values, shape, 'f32');
}

export { mulberry32 };
