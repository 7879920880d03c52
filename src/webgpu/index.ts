/**
 * The webgpu backend: typed arrays are uploaded (or GPUBuffers used as they are), the kernels run on
 * the device, and results are read back (or handed over as GPUBuffers when the inputs were GPUBuffers).
 * Which kernel family runs a problem is families.ts's choice (its tiles from tuning.ts); a call's buffers
 * and error scopes are call.ts's Call. Every buffer it makes goes through GpuBuffers, which counts it in
 * the call's MemoryTracker.
 */
import { keysSeen } from '../modifiers.js';
import { problemStrides, type Problem } from '../problem.js';
import type { AnyTensor } from '../tensor.js';
import { Call, gpuFor, sizesOf } from './call.js';
import type { Gpu } from './device.js';
import { backwardChoice, backwardKernels, backwardParams, backwardTiles, forwardChoice, forwardKernel, forwardTiles, type BackwardChoice, type ForwardChoice } from './families.js';
import { sizesBytes } from './kernels/common.js';
import { preprocessWGSL } from './kernels/backward.js';
import { absmaxWGSL, splitCountBytes, splitGroups, splitWGSL } from './kernels/split.js';
import { dispatch, pipeline } from './pipelines.js';
import { decodeFits, decodePipelines, decodePlan, decodeScratch, decodeSizes, encodeDecode, type DecodeChoice } from './decode.js';
import { decodeSizesBytes } from './kernels/decode.js';
import { modBindGroup, modBuffers } from './modifiers.js';
import { reduceBiasGrad } from './bias-grad.js';

export { Call, ELEMENT_BYTES, gpuFor, sizesOf, workgroupSize } from './call.js';
export * from './families.js';
export * from './tuning.js';

/**
 * `choose` picks the kernel (benchmarks and tests force one); by default the split-KV decode schedule
 * where it applies (few queries: decodeFits), else forwardChoice.
 */
export async function webgpuForward(
  p: Problem,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  choose?: (p: Problem, gpu: Gpu) => ForwardChoice,
): Promise<{ out: AnyTensor; lse: AnyTensor }> {
  const gpu = await gpuFor(p);
  const decode = choose ? undefined : decodeFits(p, gpu);
  if (decode) return webgpuDecodeForward(p, gpu, decode, q, k, v);
  const call = new Call(p, gpu);
  try {
    const choice = (choose ?? forwardChoice)(p, gpu);
    const { pipe, Br } = await forwardKernel(gpu, choice);
    const sizes = call.buffers.uniform(sizesBytes(sizesOf(p)), 'sizes');
    const mods = choice.params.mods;
    const group1 = mods ? modBindGroup(gpu.device, pipe, modBuffers(p, mods, call.buffers, { Br, Bc: forwardTiles(choice).Bc })) : undefined;
    const [Q, K, V] = [call.input(q, 'q'), call.input(k, 'k'), call.input(v, 'v')];
    const out = call.forwardOutput('out', p.B * p.Nq * p.H * p.D);
    const lse = call.forwardOutput('lse', p.B * p.H * p.Nq);
    const [nq, nkv] = [p.B * p.Nq * p.H * p.D, p.B * p.Nk * p.Hkv * p.D];
    const split = choice.kernel === 'forwardMatrix' && choice.params.dtype === 'f32' ? await splitInputs(call, [Q, K, V], [nq, nkv, nkv]) : undefined;
    await call.submit(async (enc) => {
      if (!split) return dispatch(enc, gpu.device, pipe, [sizes, Q, K, V, out, lse], [Math.ceil(p.Nq / Br), p.B * p.H], group1);
      split.encode(enc);
      dispatch(enc, gpu.device, pipe, [sizes, ...split.halves, out, lse, split.maxima, Q, K], [Math.ceil(p.Nq / Br), p.B * p.H], group1);
    });
    return { out: await call.result(out, q.shape, 'q'), lse: await call.result(lse, [p.B, p.H, p.Nq], 'q', 'f32') };
  } finally {
    call.dispose();
  }
}

/**
 * forward() on the split-KV decode schedule (webgpu/decode.ts): the decode kernel of `choice`, and the
 * merge where the keys are split.
 */
export async function webgpuDecodeForward(p: Problem, gpu: Gpu, choice: DecodeChoice, q: AnyTensor, k: AnyTensor, v: AnyTensor): Promise<{ out: AnyTensor; lse: AnyTensor }> {
  const call = new Call(p, gpu);
  const scratch = decodeScratch(gpu.device);
  let counted = 0;
  try {
    const { q: sq, kv: sk } = problemStrides(p);
    const plan = decodePlan(choice, p.B, p.Hkv, (p.H / p.Hkv) * p.Nq, keysSeen(p.mods, p.Nq, p.Nk));
    const { R } = plan;
    const keys = { kvPage: sk.batch, kvRow: sk.row, kvHead: sk.head, pageSize: p.Nk, maxPages: 1 };
    const sizes = decodeSizes({ B: p.B, H: p.H, Hkv: p.Hkv, Nq: p.Nq, Nk: p.Nk, q: sq, keys, scale: p.scale }, R, plan);
    const pipes = await decodePipelines(gpu, choice, plan.splits > 1);
    const uniform = call.buffers.keptUniform(decodeSizesBytes(sizes), 'decode sizes');
    const mods = choice.params.mods ? { group: modBuffers(p, choice.params.mods, call.buffers), keep: false } : undefined;
    const [Q, K, V] = [call.input(q, 'q'), call.input(k, 'k'), call.input(v, 'v')];
    const out = call.forwardOutput('out', p.B * p.Nq * p.H * p.D);
    const lse = call.forwardOutput('lse', p.B * p.H * p.Nq);
    await call.submit(async (enc) => {
      encodeDecode(enc, scratch, pipes, p.D, sizes, uniform, { q: Q, k: K, v: V, out, lse }, p.onGpu, mods);
      if (pipes.merge) counted = p.memory.allocate(scratch.bytes); // the partials, the device's scratch
    });
    return { out: await call.result(out, q.shape, 'q'), lse: await call.result(lse, [p.B, p.H, p.Nq], 'q', 'f32') };
  } finally {
    p.memory.release(counted);
    call.dispose();
  }
}

/** Per device, the split halves of the largest f32 q, k and v so far (their bytes: as q, k and v). */
const SPLIT_SCRATCH = new WeakMap<GPUDevice, Map<string, GPUBuffer>>();

/**
 * f32 tensors (q, k, v on the device, of `elements` each, a multiple of 4) split into f16 halves for the
 * subgroup-matrix kernels (kernels/split.ts): `halves` (hi then lo, the same bytes as each input; the
 * device's scratch, reused by later calls: one call's submission writes and reads them before the next
 * call's, as the queue runs submissions in order), `maxima` (each input's largest magnitude, f32 bits),
 * and `encode`, which records both passes of each.
 */
export async function splitInputs(
  call: Call,
  inputs: GPUBuffer[],
  elements: number[],
): Promise<{ halves: GPUBuffer[]; maxima: GPUBuffer; encode: (enc: GPUCommandEncoder) => void }> {
  const { device } = call.gpu;
  const absmax = await pipeline(device, 'absmax', {}, absmaxWGSL);
  const split = await pipeline(device, 'split', {}, splitWGSL);
  const maxima = call.buffers.create(4 * inputs.length, 'maxima', 'q'); // zeros
  const names = ['q', 'k', 'v'] as const;
  // The halves are the device's scratch, kept between calls: making buffers of this size took longer
  // than the kernel itself on an H100 (about 11 ms a call at B·N = 16384, H·D = 2048, 3 × 128 MiB).
  let kept = SPLIT_SCRATCH.get(device);
  if (!kept) SPLIT_SCRATCH.set(device, (kept = new Map()));
  const halves = elements.map((n, i) => call.buffers.borrow(kept, names[i], 4 * n, `${names[i]} halves`, names[i] === 'q' ? 'q' : 'k'));
  const counts = elements.map((n, i) => call.buffers.uniform(splitCountBytes(n / 4, i), `${names[i]} count`));
  return {
    halves,
    maxima,
    encode: (enc) =>
      inputs.forEach((x, i) => {
        const groups = splitGroups(elements[i] / 4);
        dispatch(enc, device, absmax, [counts[i], x, maxima], [groups, 1]);
        dispatch(enc, device, split, [counts[i], x, maxima, halves[i]], [groups, 1]);
      }),
  };
}

/** `choose` picks the dK/dV and dQ kernels (benchmarks and tests force one); by default backwardChoice. */
export async function webgpuBackward(
  p: Problem,
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
  choose: (p: Problem, gpu: Gpu) => BackwardChoice = backwardChoice,
): Promise<{ dq: AnyTensor; dk: AnyTensor; dv: AnyTensor; dbias?: AnyTensor }> {
  const gpu = await gpuFor(p);
  const call = new Call(p, gpu);
  try {
    const preParams = backwardParams(p, gpu).pre;
    const pre = await pipeline(gpu.device, 'backwardPreprocess', preParams, preprocessWGSL);
    const choice = choose(p, gpu);
    const { kv, q: dqPipe, keys: keysPerGroup, rows: rowsPerGroup } = await backwardKernels(gpu, choice);
    // The variants' bind groups (each kernel its own tile table), and dS for dbias (zeroed at creation: the
    // entries of skipped tiles and dropped elements stay 0).
    const tiles = backwardTiles(choice);
    const biasGrad = p.mods.bias?.grad ? call.output(p.B * p.H * p.Nq * p.Nk, 'dS for dbias', 'q', 'f32') : undefined;
    const kvMods = choice.kv.mods;
    const qMods = choice.q.mods;
    const kvGroup = kvMods ? modBindGroup(gpu.device, kv, modBuffers(p, kvMods, call.buffers, tiles.kv, biasGrad)) : undefined;
    const qGroup = qMods ? modBindGroup(gpu.device, dqPipe, modBuffers(p, qMods, call.buffers, tiles.q)) : undefined;
    const sizes = call.buffers.uniform(sizesBytes(sizesOf(p)), 'sizes');
    const [dO, Q, K, V, O, L] = [call.input(dout, 'dout'), call.input(q, 'q'), call.input(k, 'k'), call.input(v, 'v'), call.input(out, 'out'), call.input(lse, 'lse')];
    const Dvec = call.output(p.B * p.H * p.Nq, 'Dvec', 'q', 'f32');
    const dq = call.output(p.B * p.Nq * p.H * p.D, 'dq', 'q');
    const dk = call.output(p.B * p.Nk * p.Hkv * p.D, 'dk', 'k');
    const dv = call.output(p.B * p.Nk * p.Hkv * p.D, 'dv', 'k');
    let dbias: GPUBuffer | undefined;
    await call.submit(async (enc) => {
      dispatch(enc, gpu.device, pre, [sizes, dO, O, Dvec], [Math.ceil(p.Nq / preParams.WG), p.B * p.H]);
      dispatch(enc, gpu.device, kv, [sizes, Q, K, V, dO, L, Dvec, dk, dv], [Math.ceil(p.Nk / keysPerGroup), p.B * p.Hkv], kvGroup);
      dispatch(enc, gpu.device, dqPipe, [sizes, Q, K, V, dO, L, Dvec, dq], [Math.ceil(p.Nq / rowsPerGroup), p.B * p.H], qGroup);
      if (biasGrad) dbias = await reduceBiasGrad(call, enc, biasGrad);
    });
    const grads = { dq: await call.result(dq, q.shape, 'q'), dk: await call.result(dk, k.shape, 'k'), dv: await call.result(dv, v.shape, 'k') };
    return dbias ? { ...grads, dbias: await call.result(dbias, p.mods.bias!.index.shape, 'q', 'f32') } : grads;
  } finally {
    call.dispose();
  }
}
