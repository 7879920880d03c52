/** Test helpers: seeded inputs, the one error rule, snapshots that prove inputs were not modified. */
import assert from 'node:assert/strict';
import { encodeF16, tensor, type DType, type GpuTensor, type Layout, type Tensor } from '../src/index.js';
import { mulberry32 } from '../src/cli/random.js';
import { dimsOf, toF64 } from '../src/tensor.js';
import './dawn-poll.js'; // Dawn's busy wait becomes a 1 ms timer in every test process (see there)

/** Standard normal values (Box-Muller), seeded. */
export function randn(n: number, seed: number, scale = 1): Float64Array {
  const u = mulberry32(seed); // seeded, so every failure reproduces
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - u()));
    const t = 2 * Math.PI * u();
    out[i] = scale * r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = scale * r * Math.sin(t);
  }
  return out;
}

/** A tensor of the given dtype holding seeded normal values. */
export function randomTensor(dtype: DType, shape: number[], seed: number, scale = 1): Tensor {
  const values = randn(shape.reduce((a, b) => a * b, 1), seed, scale);
  const data = dtype === 'f64' ? values : dtype === 'f32' ? Float32Array.from(values) : encodeF16(values);
  return tensor(data, shape, dtype);
}

export interface Case {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  Nk: number;
  D: number;
}

export function shapes(c: Case, layout: Layout): { q: number[]; kv: number[]; lse: number[] } {
  const s = (N: number, H: number) => (layout === 'BNHD' ? [c.B, N, H, c.D] : [c.B, H, N, c.D]);
  return { q: s(c.Nq, c.H), kv: s(c.Nk, c.Hkv), lse: [c.B, c.H, c.Nq] };
}

/** Seeded q, k, v, dout for a case; the same values (and seeds) whatever the layout. */
export function inputs(c: Case, dtype: DType, layout: Layout, seed = 1) {
  const bnhd = shapes(c, 'BNHD');
  const make = (shape: number[], s: number) => relayout(randomTensor(dtype, shape, s), layout);
  return { q: make(bnhd.q, seed), k: make(bnhd.kv, seed + 1), v: make(bnhd.kv, seed + 2), dout: make(bnhd.q, seed + 3) };
}

/** A BNHD tensor in the given layout (the same values, moved). */
export function relayout(t: Tensor, layout: Layout): Tensor {
  if (layout === 'BNHD') return t;
  const { B, N, H, D } = dimsOf(t.shape, 'BNHD');
  const data = t.data.slice();
  for (let b = 0; b < B; b++)
    for (let n = 0; n < N; n++)
      for (let h = 0; h < H; h++)
        for (let d = 0; d < D; d++) data[((b * H + h) * N + n) * D + d] = t.data[((b * N + n) * H + h) * D + d];
  return { data, dtype: t.dtype, shape: [B, H, N, D] };
}

/** max |x − ref| over all elements, NaN if any element is NaN on one side only or differs in infinity. */
export function maxError(x: Tensor | Float64Array, ref: Float64Array): number {
  const a = x instanceof Float64Array ? x : toF64(x);
  assert.equal(a.length, ref.length, 'lengths differ');
  let e = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === ref[i]) continue; // also ±∞ equal to itself
    const d = Math.abs(a[i] - ref[i]);
    if (!(d <= e)) e = d; // NaN sticks
  }
  return e;
}

/**
 * The error rule of FlashAttention's tests, in one place: an implementation's error against the float64
 * oracle is at most `factor` times the error of standard attention in the same dtype, plus 1e-6.
 * factor: 2 for outputs, 3 for gradients.
 */
export function assertWithinRule(what: string, err: number, errStandard: number, factor: 2 | 3): void {
  assert.ok(Number.isFinite(errStandard), `${what}: standard attention's error ${errStandard} is not finite, so the rule would check nothing`);
  const bound = factor * errStandard + 1e-6;
  assert.ok(err <= bound, `${what}: error ${err.toExponential(3)} exceeds ${factor}× standard attention's ${errStandard.toExponential(3)} + 1e-6`);
}

/** A copy of every argument's data, to prove afterwards that a call did not modify it. */
export function snapshot(...tensors: Tensor[]): () => void {
  const copies = tensors.map((t) => t.data.slice());
  return () => tensors.forEach((t, i) => assert.deepEqual(t.data, copies[i], 'an input was modified'));
}

/**
 * What the test run says when the webgpu tests cannot run: why, and how to get an adapter on a machine
 * without a GPU (Mesa's CPU Vulkan driver, lavapipe).
 */
export function webgpuSkipMessage(reason: string): string {
  return (
    `webgpu tests skipped: no WebGPU adapter here (${reason}). ` +
    'To run them on Linux without a GPU: bash scripts/install-lavapipe.sh (Debian; installs Mesa\'s CPU Vulkan driver, lavapipe, through sudo), ' +
    'set XDG_RUNTIME_DIR if it is not set (export XDG_RUNTIME_DIR=/tmp), then npm test again'
  );
}

/** Rows [from, to) of batch row b of a BNHD tensor, as a (1, to − from, heads, D) tensor. */
export function rows(t: Tensor, b: number, from: number, to: number): Tensor {
  const [, N, heads, D] = t.shape;
  const w = heads * D;
  return { data: t.data.slice((b * N + from) * w, (b * N + to) * w) as Tensor['data'], dtype: t.dtype, shape: [1, to - from, heads, D] };
}

/** b's rows appended to a's along N (both (1, N, heads, D)); b itself when there is no a. */
export function concat(a: Tensor | undefined, b: Tensor): Tensor {
  if (!a) return b;
  const data = new (b.data.constructor as Float32ArrayConstructor)(a.data.length + b.data.length);
  data.set(a.data as Float32Array);
  data.set(b.data as Float32Array, a.data.length);
  return { data: data as unknown as Tensor['data'], dtype: b.dtype, shape: [1, a.shape[1] + b.shape[1], b.shape[2], b.shape[3]] };
}

/**
 * A GPUBuffer on `device` holding the tensor's data (zero-padded to whole 4-byte words), as a GpuTensor.
 * `usage`: STORAGE, COPY_SRC and COPY_DST by default; COPY_DST is always added (the data is written in).
 */
export function onDevice(device: GPUDevice, t: Tensor, usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST): GpuTensor {
  const bytes = Math.ceil(t.data.byteLength / 4) * 4;
  const buffer = device.createBuffer({ size: bytes, usage: usage | GPUBufferUsage.COPY_DST });
  const padded = new Uint8Array(bytes);
  padded.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  device.queue.writeBuffer(buffer, 0, padded);
  return { data: buffer, dtype: t.dtype as GpuTensor['dtype'], shape: t.shape };
}
