/**
 * IEEE 754 binary16 as 16-bit storage (Uint16Array): conversion to and from f32/f64 numbers.
 * Arithmetic never happens in f16; values are widened on load and rounded (to nearest, ties to even)
 * on store, as a GPU's f16 storage would do.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Every f16 bit pattern widened to f32: a 256 KiB table makes decoding one load. */
const DECODE = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) table[h] = sign * frac * 2 ** -24;
    else if (exp === 31) table[h] = frac ? NaN : sign * Infinity;
    else table[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return table;
})();

/** f16 bits -> number. */
export function f16ToNumber(h: number): number {
  return DECODE[h & 0xffff];
}

/** f32 bit pattern -> f16 bits, round to nearest even; overflow gives ±Inf, NaN stays NaN. */
function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf or NaN
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: ±0
    mant |= 0x800000; // implicit bit
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && h & 1)) h++;
    return sign | h; // rounding up into the smallest normal is what the bit layout gives
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // a carry into the exponent (up to Inf) is correct
  return sign | h;
}

function roundHalfEven(q: number): number {
  const f = Math.floor(q);
  const d = q - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f + (f & 1);
}

/**
 * number -> f16 bits, round to nearest even. Values that are f32 take the bit path; other f64 values are
 * rounded once, directly (going through f32 first would round twice and can miss a tie).
 */
export function numberToF16(x: number): number {
  f32[0] = x;
  if (f32[0] === x || x !== x) return f32BitsToF16(u32[0]);
  const sign = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00; // 65520 is the midpoint between 65504 and 2^16: ties to even -> Inf
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24); // subnormal (1024 carries into the smallest normal)
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  let n = roundHalfEven(a * 2 ** (10 - e)); // exact scaling: n in [1024, 2048]
  if (n === 2048) {
    e++;
    n = 1024;
  }
  return sign | ((e + 15) << 10) | (n - 1024);
}

/** Round a number to the nearest f16 value (as a number). */
export function roundToF16(x: number): number {
  return DECODE[numberToF16(x)];
}

/** Widen a whole f16 array to f32 into `out` (allocated if absent). */
export function decodeF16(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  for (let i = 0; i < src.length; i++) out[i] = DECODE[src[i]];
  return out;
}

/** Round a whole f32/f64 array to f16 bits into `out` (allocated if absent). */
export function encodeF16(src: ArrayLike<number>, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) out[i] = numberToF16(src[i]);
  return out;
}
