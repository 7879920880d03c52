/**
 * Rounding probe for the GPU machine: is f32 division exact where the quotient is representable, and does
 * the f32 → f16 conversion round to nearest? (The forward's final O_i / l of a one-hot row depends on both.)
 * Prints, over n random pairs a = v·l (v, l f16 values, so a is exact in f32): how often a / l ≠ v in f32,
 * how often f16(a / l) ≠ v, how often f16(quotient(a, l)) ≠ v, and how often f16(v·(1 − 2⁻²³)) ≠ v.
 */
import { defaultGpu } from '../../src/webgpu/device.js';
import { decodeF16, encodeF16 } from '../../src/f16.js';
import { randomF16, runOnce } from './util.js';

const n = 1 << 20;
const v = decodeF16(randomF16(n, 1));
const l = decodeF16(randomF16(n, 2)).map((x) => Math.fround(Math.abs(x) * 64 + 1));
// l as f16 values in [1, 65): round through f16 bits.
const l16 = decodeF16(encodeF16(l));
const a = new Float32Array(n);
for (let i = 0; i < n; i++) a[i] = v[i] * l16[i];
const { device } = await defaultGpu();
const code = `enable f16;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>; // 4 per element: bits of a/b, f16(a/b), f16(quotient), f16(w·(1 − 2⁻²³))
fn quotient(x: f32, y: f32) -> f32 { let q = x / y; return q + fma(-q, y, x) / y; }
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = g.x + g.y * 65535u * 64u;
  if (i >= arrayLength(&a)) { return; }
  let q = a[i] / b[i];
  out[4u * i] = bitcast<u32>(q);
  out[4u * i + 1u] = pack2x16float(vec2f(f32(f16(q)), 0.0));
  out[4u * i + 2u] = pack2x16float(vec2f(f32(f16(quotient(a[i], b[i]))), 0.0));
  out[4u * i + 3u] = pack2x16float(vec2f(f32(f16(w[i] * (1.0 - 1.0 / 8388608.0))), 0.0));
}`;
const [bytes] = await runOnce(device, code, [a, l16, Float32Array.from(v)], [16 * n], n / 64);
const got = new Uint32Array(bytes);
const f32 = new Float32Array(got.buffer);
const half = (bits: number) => decodeF16(Uint16Array.of(bits & 0xffff))[0];
const counts = { divisionInexact: 0, f16OfDivisionOff: 0, f16OfQuotientOff: 0, conversionNotNearest: 0 };
for (let i = 0; i < n; i++) {
  if (f32[4 * i] !== v[i]) counts.divisionInexact++;
  if (half(got[4 * i + 1]) !== v[i]) counts.f16OfDivisionOff++;
  if (half(got[4 * i + 2]) !== v[i]) counts.f16OfQuotientOff++;
  if (v[i] !== 0 && half(got[4 * i + 3]) !== v[i]) counts.conversionNotNearest++;
}
console.log(JSON.stringify({ n, ...counts }));
