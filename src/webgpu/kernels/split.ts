/**
 * f32 inputs for the subgroup-matrix kernels, whose operands are f16: each tensor x is scaled by a power of
 * two 2^e (its largest magnitude into [2^14, 2^15), so that no value overflows f16 and few fall below its
 * normal range) and split into two f16 halves, x·2^e = hi + lo with hi = f16(x·2^e), lo = f16(x·2^e − hi):
 * 22 significant bits of the 24 of an f32. hi is rounded on the f32 bits (SPLIT_HIGH_WGSL), not by
 * converting to f16 and back: lavapipe's compiler folds that round trip away (lo came out 0). A product
 * a·b is then hi_a·hi_b + hi_a·lo_b + lo_a·hi_b on the tensor cores, with f32 accumulation (the dropped lo_a·lo_b is 2^-22 of it): three f16 products for one
 * f32 one (the f16→f32 split of Markidis et al. 2018 and Ootomo & Yokota 2022). The power of two is undone
 * exactly (ldexp) where the kernels use the scores and write the output.
 *
 * Two passes per tensor, both bandwidth-bound: `absmaxWGSL` folds |x| of the finite elements into
 * maxima[slot] (f32 bits as u32: for non-negative floats the order of the bits is the order of the values,
 * so atomicMax on them is a float max; a NaN or ±∞ leaves the others' scaling as it is), then `splitWGSL`
 * writes hi at [0, n) and lo at [n, 2n) of an array<f16> of 2n elements (the same bytes as the f32
 * input); a NaN's hi is written as an f16 NaN by its bits (an f32 → f16 conversion of a NaN is not one on
 * every GPU: on an H100 it was not), so that its row's scores are NaN. SPLIT_EXPONENT_WGSL turns a maximum
 * into the exponent e; the attention kernel reads the same maxima to undo it.
 */

/** Invocations per workgroup of the two passes. */
export const SPLIT_WORKGROUP = 256;

/** Workgroups a pass over n4 vec4s dispatches (each invocation strides over the rest). */
export function splitGroups(n4: number): number {
  return Math.max(1, Math.min(4096, Math.ceil(n4 / SPLIT_WORKGROUP)));
}

/**
 * WGSL: the exponent e of the power of two a tensor whose largest magnitude has the f32 bits `bits` is
 * scaled by: 14 − its binary exponent (the maximum lands in [2^14, 2^15)), within ±112 so that 2^e and
 * 2^−e stay normal f32 (0 for bits that are no finite number, which absmax never gives).
 */
export const SPLIT_EXPONENT_WGSL = `fn splitExponent(bits: u32) -> i32 {
  if (bits >= 0x7f800000u) {
    return 0;
  }
  return 14 - max(i32(bits >> 23u) - 127, -112);
}`;

/**
 * WGSL: x rounded to f16's 11 significant bits, in f32 (so x − high(x) is exact and f16(high(x)) too);
 * 0 below f16's normal range, where the rest goes to lo whole. Rounding on the bits (half up in
 * magnitude, carrying into the exponent) keeps NaN a NaN and ±∞ as they are.
 */
export const SPLIT_HIGH_WGSL = `fn f16High(x: f32) -> f32 {
  let rounded = bitcast<f32>((bitcast<u32>(x) + 0x1000u) & 0xffffe000u);
  return select(rounded, 0.0, abs(x) < 6.103515625e-5);
}`;

/** The uniform block of both passes: the tensor's length in vec4s and its slot in the maxima. */
export function splitCountBytes(n4: number, slot: number): ArrayBuffer {
  return new Uint32Array([n4, slot, 0, 0]).buffer;
}

const COUNT_WGSL = `struct Count {
  n4: u32,
  slot: u32,
}
@group(0) @binding(0) var<uniform> c: Count;`;

/** Pass 1: maxima[slot] = max(maxima[slot], |x| over x finite) as f32 bits (the maxima start at 0). */
export function absmaxWGSL(): string {
  return `${COUNT_WGSL}
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> maxima: array<atomic<u32>>;
var<workgroup> most: atomic<u32>;

@compute @workgroup_size(${SPLIT_WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) groups: vec3u, @builtin(local_invocation_index) lid: u32) {
  var m = 0u;
  for (var e = gid.x; e < c.n4; e += groups.x * ${SPLIT_WORKGROUP}u) {
    let bits = bitcast<vec4<u32>>(x[e]) & vec4<u32>(0x7fffffffu); // |x| as bits
    let a = select(bits, vec4<u32>(0u), bits >= vec4<u32>(0x7f800000u)); // NaN and ±∞ left out
    m = max(m, max(max(a.x, a.y), max(a.z, a.w)));
  }
  atomicMax(&most, m);
  workgroupBarrier();
  if (lid == 0u) {
    atomicMax(&maxima[c.slot], atomicLoad(&most));
  }
}
`;
}

/** Pass 2: y[e] = hi, y[n4 + e] = lo of x[e]·2^e, e from maxima[slot]. */
export function splitWGSL(): string {
  return `enable f16;
${COUNT_WGSL}
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> maxima: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f16>>;
${SPLIT_EXPONENT_WGSL}
${SPLIT_HIGH_WGSL}

@compute @workgroup_size(${SPLIT_WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let s = splitExponent(maxima[c.slot]);
  for (var e = gid.x; e < c.n4; e += groups.x * ${SPLIT_WORKGROUP}u) {
    let xs = ldexp(x[e], vec4<i32>(s));
    let hi = vec4<f32>(f16High(xs.x), f16High(xs.y), f16High(xs.z), f16High(xs.w));
    let nan = (bitcast<vec4<u32>>(xs) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    let nan16 = bitcast<vec2<f16>>(select(0x7e007e00u, 0u, c.n4 == 0u)).x; // at run time: a constant NaN is an error
    y[e] = select(vec4<f16>(hi), vec4<f16>(nan16), nan);
    y[c.n4 + e] = select(vec4<f16>(xs - hi), vec4<f16>(nan16), nan);
  }
}
`;
}
