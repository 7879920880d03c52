/** What the variant scripts share: seeded f16 and f32 inputs and the max-abs error against a reference. */
import { attentionFlops, backward, forward, type GpuTensor, type Tensor } from '../../src/index.js';
import { checkForward } from '../../src/problem.js';
import { DAWN_TOGGLES, defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { sizesOf } from '../../src/webgpu/index.js';
import { sizesBytes } from '../../src/webgpu/kernels/common.js';
import { dispatch } from '../../src/webgpu/pipelines.js';
import { GpuTimer } from '../../src/webgpu/timer.js';
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

/**
 * The forward's correctness rule on out and lse (error ≤ 2× the standard attention's + 1e-6): undefined
 * where it holds, else the errors beside the standard's.
 */
export function forwardRuleBroken(e: { out: number; lse: number }, std: { out: number; lse: number }): string | undefined {
  if (e.out <= 2 * std.out + 1e-6 && e.lse <= 2 * std.lse + 1e-6) return undefined;
  return `out ${e.out.toExponential(2)} (std ${std.out.toExponential(2)}) lse ${e.lse.toExponential(2)} (std ${std.lse.toExponential(2)})`;
}

/** The float64 reference and the webgpu standard's errors, by case key: drawn once for all variants. */
const forwardYardsticks = new Map<string, { ref: { out: Tensor; lse: Tensor }; std: { out: number; lse: number } }>();

/**
 * A forward's errors (out, lse) against the float64 reference, beside the webgpu standard attention's in
 * the same dtype (the correctness rule's yardstick), both computed once per `key` (the case).
 */
export async function forwardErrors(
  key: string,
  x: { q: Tensor; k: Tensor; v: Tensor },
  causal: boolean,
  got: { out: Tensor; lse: Tensor },
): Promise<{ e: { out: number; lse: number }; std: { out: number; lse: number } }> {
  let y = forwardYardsticks.get(key);
  if (!y) {
    const ref = await forward(x.q, x.k, x.v, { backend: 'reference', causal });
    const st = await forward(x.q, x.k, x.v, { backend: 'webgpu', causal, algorithm: 'standard' });
    forwardYardsticks.set(key, (y = { ref, std: { out: maxErr(st.out, ref.out), lse: maxErr(st.lse, ref.lse) } }));
  }
  return { e: { out: maxErr(got.out, y.ref.out), lse: maxErr(got.lse, y.ref.lse) }, std: y.std };
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

/**
 * The library's device, with the Dawn toggles of DAWN_EXTRA=toggle,toggle added for this run (e.g.
 * disable_robustness, to see what the bounds checks cost; the library never sets it); prints the toggles.
 */
export async function gpuWithExtraToggles(): Promise<Gpu> {
  if (process.env.DAWN_EXTRA) DAWN_TOGGLES[0] += `,${process.env.DAWN_EXTRA}`;
  const gpu = await defaultGpu();
  console.log(`toggles: ${DAWN_TOGGLES.join(' ')}`);
  return gpu;
}

/** A compute pipeline of `code` (entry point main); a WGSL error throws with the compiler's messages. */
export async function compilePipeline(device: GPUDevice, code: string): Promise<GPUComputePipeline> {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code });
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const error = await device.popErrorScope();
  if (error) throw new Error(`${error.message}\n${(await module.getCompilationInfo()).messages.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('\n')}`);
  return pipe;
}

/**
 * Run a one-off compute kernel once (the probes): `inputs` uploaded as storage bindings 0, 1, … in order,
 * then storage buffers of `outputs` bytes bound after them; `groups` workgroups dispatched (x); the
 * outputs read back. A WGSL error throws with the compiler's messages.
 */
export async function runOnce(device: GPUDevice, code: string, inputs: ArrayBufferView[], outputs: number[], groups: number): Promise<ArrayBuffer[]> {
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const pipe = await compilePipeline(device, code);
  const ins = inputs.map((data) => {
    const buffer = device.createBuffer({ size: data.byteLength, usage });
    device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, data.byteLength);
    return buffer;
  });
  const outs = outputs.map((size) => device.createBuffer({ size, usage }));
  const reads = outputs.map((size) => device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }));
  const bind = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [...ins, ...outs].map((buffer, binding) => ({ binding, resource: { buffer } })) });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(groups);
  pass.end();
  outs.forEach((b, i) => enc.copyBufferToBuffer(b, 0, reads[i], 0, outputs[i]));
  device.queue.submit([enc.finish()]);
  const got = await Promise.all(
    reads.map(async (r) => {
      await r.mapAsync(GPUMapMode.READ);
      const bytes = r.getMappedRange().slice(0);
      r.unmap();
      return bytes;
    }),
  );
  for (const b of [...ins, ...outs, ...reads]) b.destroy();
  return got;
}

export interface Shape {
  B: number;
  H: number;
  N: number;
  D: number;
  causal: boolean;
}

/** Device buffers for a shape, filled once (random f16 values; drawing them in JS is the slow part). */
export function forwardBuffers(gpu: Gpu, { B, H, N, D }: Omit<Shape, 'causal'>): GPUBuffer[] {
  const { device } = gpu;
  const bytes = B * N * H * D * 2;
  const data = randomF16(B * N * H * D, 1);
  const make = (usage: number, fill: boolean) => {
    const buf = device.createBuffer({ size: bytes, usage });
    if (fill) device.queue.writeBuffer(buf, 0, data);
    return buf;
  };
  const input = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const lse = device.createBuffer({ size: B * H * N * 4, usage: GPUBufferUsage.STORAGE });
  return [make(input, true), make(input, true), make(input, true), make(GPUBufferUsage.STORAGE, false), lse];
}

/** The checked problem of a shape over its buffers. */
function problem({ B, H, N, D, causal }: Shape, bufs: GPUBuffer[]) {
  const gt = (data: GPUBuffer) => ({ data, dtype: 'f16' as const, shape: [B, N, H, D] });
  return checkForward(gt(bufs[0]), gt(bufs[1]), gt(bufs[2]), { causal });
}

/** ms per dispatch of `pipe` (Br query rows per workgroup) over the shape. */
export async function timeForward(gpu: Gpu, shape: Shape, bufs: GPUBuffer[], pipe: GPUComputePipeline, Br: number): Promise<number> {
  const { device } = gpu;
  const { B, H, N } = shape;
  const [Q, K, V, out, lse] = bufs;
  const p = problem(shape, bufs);
  const sizes = device.createBuffer({ size: 48, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(sizes, 0, sizesBytes(sizesOf(p)));
  const run = async (R: number) => {
    const enc = device.createCommandEncoder();
    for (let r = 0; r < R; r++) dispatch(enc, device, pipe, [sizes, Q, K, V, out, lse], [Math.ceil(N / Br), B * H]);
    const t0 = performance.now();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / R;
  };
  const once = await run(1); // warm-up, and the time that sets R (about 0.2 s per timed run)
  const R = Math.max(1, Math.min(50, Math.round(200 / once)));
  // Spin-up: a GPU left idle (validation runs on the host) clocks down; 300 ms of dispatches first, so
  // that the variant timed first after a validation is not the one timed slow.
  for (const t0 = performance.now(); performance.now() - t0 < 300; ) await run(R);
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, await run(R));
  sizes.destroy();
  return best;
}

/**
 * Forward and forward + backward through the API with GPU-resident tensors, B·N = 16384, H·D = 2048,
 * N = 4096, D = 64 and 128, causal off and on, in `dtype`: after 300 ms of calls back to back (an idle GPU
 * clocks down), R forwards between two GpuTimer marks and R backwards (of the last forward) between the
 * next two; best of 3; TFLOP/s by PRODUCT.md's FLOP rule (3.5× the forward's for forward + backward). One
 * line per case.
 */
export async function timeForwardBackward(gpu: Gpu, dtype: 'f16' | 'f32'): Promise<void> {
  const { device } = gpu;
  const timer = new GpuTimer(device);
  for (const D of [64, 128]) {
    for (const causal of [false, true]) {
      const N = 4096;
      const [B, H] = [16384 / N, 2048 / D];
      const make = (seed: number): GpuTensor => {
        const values = dtype === 'f16' ? randomF16(B * N * H * D, seed) : randomF32(B * N * H * D, seed);
        const data = device.createBuffer({ size: values.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
        device.queue.writeBuffer(data, 0, values);
        return { data, dtype, shape: [B, N, H, D] };
      };
      const [q, k, v, dout] = [make(1), make(2), make(3), make(4)];
      const release = (...xs: GpuTensor[]) => xs.forEach((x) => x.data.destroy());
      const R = 10;
      for (const until = performance.now() + 300; performance.now() < until; ) {
        const f = await forward(q, k, v, { causal });
        const g = await backward(dout, q, k, v, f.out, f.lse, { causal });
        release(f.out, f.lse, g.dq, g.dk, g.dv);
        await device.queue.onSubmittedWorkDone();
      }
      let best = [Infinity, Infinity];
      for (let i = 0; i < 3; i++) {
        await timer.start();
        let f = await forward(q, k, v, { causal });
        for (let r = 1; r < R; r++) {
          release(f.out, f.lse);
          f = await forward(q, k, v, { causal });
        }
        await timer.mark();
        for (let r = 0; r < R; r++) {
          const g = await backward(dout, q, k, v, f.out, f.lse, { causal });
          release(g.dq, g.dk, g.dv);
        }
        await timer.mark();
        const [a, b] = await timer.finish();
        release(f.out, f.lse);
        best = [Math.min(best[0], a / R), Math.min(best[1], (a + b) / R)];
      }
      const flops = attentionFlops({ B, H, Nq: N, Nk: N, D, causal });
      console.log(
        `D=${D} N=${N} B=${B} H=${H} causal=${causal}: fwd ${best[0].toFixed(2)} ms ${(flops / best[0] / 1e9).toFixed(1)} TFLOP/s, fwd+bwd ${best[1].toFixed(2)} ms ${((3.5 * flops) / best[1] / 1e9).toFixed(1)} TFLOP/s, bwd ${(best[1] - best[0]).toFixed(2)} ms`,
      );
      for (const x of [q, k, v, dout]) x.data.destroy();
    }
  }
}

/** n f16 values: 2^20 seeded normal ones, repeated (drawing hundreds of millions in JavaScript takes minutes). */
export function tiled(n: number, seed: number): Uint16Array {
  const block = randomF16(Math.min(n, 1 << 20) + 7, seed); // a period prime to the row length
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i += block.length) out.set(block.subarray(0, Math.min(block.length, n - i)), i);
  return out;
}

/** An f16 GPU tensor of `data` (the buffer rounded up to 4 bytes; storage, copy source and destination). */
export function gpuTensor(gpu: Gpu, data: Uint16Array, shape: number[]): GpuTensor {
  const buffer = gpu.device.createBuffer({ size: Math.ceil(data.byteLength / 4) * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  gpu.device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, Math.ceil(data.byteLength / 4) * 4);
  return { data: buffer, dtype: 'f16', shape };
}

/** The first `elements` values of a GPU tensor (f16, or f32 with `f32`), read back as float64. */
export async function readF16(gpu: Gpu, t: GpuTensor, elements: number, f32 = false): Promise<Float64Array> {
  const bytes = Math.ceil((elements * (f32 ? 4 : 2)) / 4) * 4;
  const staging = gpu.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = gpu.device.createCommandEncoder();
  enc.copyBufferToBuffer(t.data, 0, staging, 0, bytes);
  gpu.device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const raw = staging.getMappedRange().slice(0);
  staging.destroy();
  return toF64({ data: f32 ? new Float32Array(raw).subarray(0, elements) : new Uint16Array(raw).subarray(0, elements), dtype: f32 ? 'f32' : 'f16', shape: [elements] } as Tensor);
}
