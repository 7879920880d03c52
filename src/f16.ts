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

/**
 * number -> f16 bits, round to nearest even. Values that are f32 take the bit path directly. Other f64
 * values are first rounded to f32 *to odd* (toward zero, then the last bit set), which the bit path then
 * rounds to nearest even exactly: rounding to odd at p bits and then to nearest at q ≤ p − 2 bits equals
 * rounding to nearest at q bits once (Boldo and Melquiond, "When double rounding is odd", 2005; f32 has
 * 24 bits, f16 11, and f32's range holds f16's with room to spare). Rounding to nearest in f32 first
 * would round twice and could miss a tie.
 */
export function numberToF16(x: number): number {
  f32[0] = x;
  const y = f32[0];
  if (y === x || x !== x) return f32BitsToF16(u32[0]);
  if (Math.abs(y) > Math.abs(x)) u32[0]--; // rounded away from zero: step back to the f32 below |x|
  return f32BitsToF16(u32[0] | 1);
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
