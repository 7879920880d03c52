/**
 * The webgpu standard-attention baseline, for comparisons: like PyTorch's math path it materialises the
 * Nq×Nk matrices in device buffers, in the input dtype (f16 for f16 inputs, as the cpu baseline, PyTorch's
 * math path and FlashAttention's upcast=False reference store them; f32 arithmetic), built from the
 * kernels of kernels/standard.ts:
 *   forward:  S = scale·QKᵀ (matmul), P = softmax(S) over the visible entries and lse (softmax),
 *             O = PV (matmul). Holds S and P.
 *   backward: S = scale·QKᵀ and dP = dO Vᵀ (matmul); P = exp(S − lse) over S and dS = P ∘ (dP − rowsum(dO ∘ O))
 *             (dS); dQ = scale·dS K, dV = Pᵀ dO, dK = scale·dSᵀ Q (matmul). Holds P, dP and dS.
 * dK and dV of a kv head contract over all query heads of its group in one dispatch (GQA), so every
 * output entry is written by one invocation: deterministic, no atomics.
 * The variants enter the softmax and dS kernels (bind group 1 of webgpu/modifiers.ts, no tile table:
 * nothing is skipped); dbias is dS, written in f32 by the dS kernel and summed to the bias's shape
 * (bias-grad.ts).
 *
 * Chunking: one N×N matrix of `heads` heads is one storage binding of heads·Nq·Nk·e bytes (e = 4 for f32,
 * 2 for f16), which must fit in the device's maxStorageBufferBindingSize (and maxBufferSize). The heads
 * are processed in chunks of as many as fit (see `standardChunks`), each chunk with its own N×N buffers,
 * all held until the call ends: like PyTorch's math path, the baseline holds the matrices of every head
 * at once (B·H·Nq·Nk elements each), so its memory grows as N² and runs out where that path's does,
 * which is what the benchmarks compare against.
 */
import { OutOfMemoryError } from '../errors.js';
import type { Problem } from '../problem.js';
import type { AnyTensor } from '../tensor.js';
import type { Gpu } from './device.js';
import { Call, ELEMENT_BYTES, gpuFor, sizesOf, workgroupSize } from './index.js';
import { sizesBytes, type StorageType } from './kernels/common.js';
import {
  castWGSL,
  dsWGSL,
  matmulTile,
  matmulWGSL,
  softmaxWGSL,
  stepBytes,
  type MatmulParams,
  type Operand,
  type Step,
} from './kernels/standard.js';
import { dispatch, pipeline } from './pipelines.js';
import { modBindGroup, modBuffers, modsParam } from './modifiers.js';
import { reduceBiasGrad } from './bias-grad.js';
import { standardMatmulRegisters } from './tuning.js';

/**
 * A chunk of heads: query heads g0 .. g0+c−1 of each of the global kv heads kv0 .. kv0+nkv−1
 * (global kv head = b·Hkv + hk). Its N×N matrices hold nkv·c heads: head z is query head g0 + z % c of
 * kv head kv0 + ⌊z/c⌋, so the c heads of one kv head are contiguous.
 */
export interface Chunk {
  kv0: number;
  nkv: number;
  g0: number;
  c: number;
}

/** Bytes one storage binding may hold on this device. */
export function bindingLimit(gpu: Gpu): number {
  return Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
}

/**
 * The chunk rule. fit = ⌊maxBinding / (Nq·Nk·e)⌋ heads, e the bytes of an element of the input dtype
 * (at most maxHeads, the dispatch limit). If a whole GQA group of G = H/Hkv heads fits, each chunk is
 * ⌊fit/G⌋ whole groups (the last one fewer); otherwise each kv head's group is split into slices of `fit`
 * query heads, and dK, dV accumulate over the slices. Throws OutOfMemoryError when not even one head's
 * Nq×Nk matrix fits.
 */
export function standardChunks(
  p: Pick<Problem, 'B' | 'H' | 'Hkv' | 'Nq' | 'Nk' | 'dtype'>,
  maxBinding: number,
  maxHeads = 65535,
): Chunk[] {
  const perHead = p.Nq * p.Nk * ELEMENT_BYTES[p.dtype];
  const fit = Math.min(Math.floor(maxBinding / perHead), maxHeads);
  if (fit < 1) {
    throw new OutOfMemoryError(
      'q',
      `at most ${maxBinding} bytes per storage binding on this device (maxStorageBufferBindingSize) for one head's ${p.Nq}×${p.Nk} ${p.dtype} matrix of the standard algorithm`,
      `${perHead} bytes`,
    );
  }
  const G = p.H / p.Hkv;
  const kvHeads = p.B * p.Hkv;
  const chunks: Chunk[] = [];
  if (fit >= G) {
    const nkv = Math.floor(fit / G);
    for (let kv0 = 0; kv0 < kvHeads; kv0 += nkv) chunks.push({ kv0, nkv: Math.min(nkv, kvHeads - kv0), g0: 0, c: G });
  } else {
    for (let kv0 = 0; kv0 < kvHeads; kv0++) {
      for (let g0 = 0; g0 < G; g0 += fit) chunks.push({ kv0, nkv: 1, g0, c: Math.min(fit, G - g0) });
    }
  }
  return chunks;
}

/** Everything a call's dispatches share. */
class Runner {
  readonly WG: number;
  readonly dt: StorageType;
  readonly sizes: GPUBuffer;
  constructor(
    readonly call: Call,
    readonly gpu: Gpu,
  ) {
    this.WG = workgroupSize(gpu);
    this.dt = call.p.dtype as StorageType;
    this.sizes = call.buffers.uniform(sizesBytes(sizesOf(call.p)), 'sizes');
  }

  get p(): Problem {
    return this.call.p;
  }

  /** The operand addressing of a tensor laid out like q (per query head) or like k, v (per kv head). */
  qLike(): Operand {
    const s = sizesOf(this.p);
    return { batch: s.qBatch, qHead: s.qHead, kHead: 0, local: 0, ld: s.qRow };
  }
  kvLike(): Operand {
    const s = sizesOf(this.p);
    return { batch: s.kvBatch, qHead: 0, kHead: s.kvHead, local: 0, ld: s.kvRow };
  }
  /** A chunk's N×N matrix, head z at z·Nq·Nk. */
  dense(): Operand {
    const { Nq, Nk } = this.p;
    return { batch: 0, qHead: 0, kHead: 0, local: Nq * Nk, ld: Nk };
  }

  step(s: Step): GPUBuffer {
    return this.call.buffers.uniform(stepBytes(s), 'step');
  }

  async matmul(params: Omit<MatmulParams, 'WG' | 'BK' | 'RM' | 'RN'>): Promise<GPUComputePipeline> {
    const full: MatmulParams = { WG: this.WG, BK: 16, ...standardMatmulRegisters(this.gpu), ...params };
    return pipeline(this.gpu.device, 'standardMatmul', full, (x) => matmulWGSL(x, this.gpu.limits.maxComputeWorkgroupStorageSize));
  }

  /** Encode C = alpha·op(A)·op(B) over `heads` dispatch heads. */
  runMatmul(enc: GPUCommandEncoder, pipe: GPUComputePipeline, s: Step, heads: number, a: GPUBuffer, b: GPUBuffer, c: GPUBuffer): void {
    const { BM, BN } = matmulTile({ WG: this.WG, ...standardMatmulRegisters(this.gpu) });
    const max = this.gpu.limits.maxComputeWorkgroupsPerDimension;
    const groups: [number, number, number] = [Math.min(Math.ceil(s.N / BN), max), Math.min(Math.ceil(s.M / BM), max), heads];
    dispatch(enc, this.gpu.device, pipe, [this.sizes, this.step(s), a, b, c], groups);
  }

  /** Groups of a row kernel: rows (grid-strided past the limit) by heads. */
  rowGroups(heads: number): [number, number] {
    return [Math.min(this.p.Nq, this.gpu.limits.maxComputeWorkgroupsPerDimension), heads];
  }
}

function maxHeads(gpu: Gpu): number {
  return gpu.limits.maxComputeWorkgroupsPerDimension;
}

/**
 * Standard attention forward on the device; as webgpuForward. `maxBinding` (tests only) overrides the
 * device's binding limit in the chunk rule.
 */
export async function webgpuStandardForward(
  p: Problem,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  maxBinding?: number,
): Promise<{ out: AnyTensor; lse: AnyTensor }> {
  const gpu = await gpuFor(p);
  const call = new Call(p, gpu);
  try {
    const chunks = standardChunks(p, maxBinding ?? bindingLimit(gpu), maxHeads(gpu));
    const run = new Runner(call, gpu);
    const { Nq, Nk, D, scale } = p;
    const dt = run.dt;
    const [qk, pv, softmax] = await Promise.all([
      run.matmul({ tA: dt, tB: dt, tC: dt, transA: false, transB: true, accumulate: false }),
      run.matmul({ tA: dt, tB: dt, tC: dt, transA: false, transB: false, accumulate: false }),
      pipeline(gpu.device, 'standardSoftmax', { WG: run.WG, causal: p.causal, dtype: dt, ...modsParam(p) }, softmaxWGSL),
    ]);
    const mods = modsParam(p).mods;
    const group1 = mods ? modBindGroup(gpu.device, softmax, modBuffers(p, mods, call.buffers)) : undefined;
    const [Q, K, V] = [call.input(q, 'q'), call.input(k, 'k'), call.input(v, 'v')];
    const out = call.forwardOutput('out', p.B * Nq * p.H * D);
    const lse = call.forwardOutput('lse', p.B * p.H * Nq);
    const matrices = chunks.map((ch) => {
      const nn = ch.nkv * ch.c * Nq * Nk * ELEMENT_BYTES[dt];
      return { S: call.buffers.create(nn, 'S', 'q'), P: call.buffers.create(nn, 'P', 'q') };
    });
    await call.submit(async (enc) => {
      for (const [n, { kv0, nkv, g0, c }] of chunks.entries()) {
        const { S, P } = matrices[n];
        const heads = nkv * c;
        const at = { kv0, cz: c, g0 };
        // S = scale·Q Kᵀ
        run.runMatmul(enc, qk, { M: Nq, N: Nk, K: D, alpha: scale, ...at, a: run.qLike(), b: run.kvLike(), c: run.dense() }, heads, Q, K, S);
        // P = softmax(S) over the visible entries, and lse
        dispatch(enc, gpu.device, softmax, [run.sizes, run.step({ M: Nq, N: Nk, K: D, alpha: 1, ...at }), S, P, lse], run.rowGroups(heads), group1);
        // O = P V
        run.runMatmul(enc, pv, { M: Nq, N: D, K: Nk, alpha: 1, ...at, a: run.dense(), b: run.kvLike(), c: run.qLike() }, heads, P, V, out);
      }
    });
    return { out: await call.result(out, q.shape, 'q'), lse: await call.result(lse, [p.B, p.H, Nq], 'q', 'f32') };
  } finally {
    call.dispose();
  }
}

/**
 * Standard attention backward on the device; as webgpuBackward. `maxBinding` (tests only) overrides the
 * device's binding limit in the chunk rule.
 */
export async function webgpuStandardBackward(
  p: Problem,
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
  maxBinding?: number,
): Promise<{ dq: AnyTensor; dk: AnyTensor; dv: AnyTensor; dbias?: AnyTensor }> {
  const gpu = await gpuFor(p);
  const call = new Call(p, gpu);
  try {
    const chunks = standardChunks(p, maxBinding ?? bindingLimit(gpu), maxHeads(gpu));
    const run = new Runner(call, gpu);
    const { Nq, Nk, D, scale } = p;
    const G = p.H / p.Hkv;
    const dt = run.dt;
    // A GQA group split over chunks: dK, dV accumulate over its slices, in f32 scratch when the output is f16.
    const split = chunks.some((ch) => ch.c < G);
    const tKV: StorageType = split ? 'f32' : dt;
    const [qk, dsK, pT, ds] = await Promise.all([
      run.matmul({ tA: dt, tB: dt, tC: dt, transA: false, transB: true, accumulate: false }),
      run.matmul({ tA: dt, tB: dt, tC: dt, transA: false, transB: false, accumulate: false }),
      run.matmul({ tA: dt, tB: dt, tC: tKV, transA: true, transB: false, accumulate: false }),
      pipeline(gpu.device, 'standardDs', { WG: run.WG, causal: p.causal, dtype: dt, ...modsParam(p, 'backward') }, dsWGSL),
    ]);
    // dS for dbias, (B, H, Nq, Nk) f32, written by the dS kernel.
    const biasGrad = p.mods.bias?.grad ? call.output(p.B * p.H * Nq * Nk, 'dS for dbias', 'q', 'f32') : undefined;
    const mods = modsParam(p, 'backward').mods;
    const group1 = mods ? modBindGroup(gpu.device, ds, modBuffers(p, mods, call.buffers, undefined, biasGrad)) : undefined;
    const pTacc = split ? await run.matmul({ tA: dt, tB: dt, tC: tKV, transA: true, transB: false, accumulate: true }) : pT;
    const [dO, Q, K, V, O, L] = [
      call.input(dout, 'dout'),
      call.input(q, 'q'),
      call.input(k, 'k'),
      call.input(v, 'v'),
      call.input(out, 'out'),
      call.input(lse, 'lse'),
    ];
    const kvElements = p.B * Nk * p.Hkv * D;
    const dq = call.output(p.B * Nq * p.H * D, 'dq', 'q');
    const dk = call.output(kvElements, 'dk', 'k');
    const dv = call.output(kvElements, 'dv', 'k');
    const scratch = split && dt === 'f16';
    const dk32 = scratch ? call.output(kvElements, 'dk (f32 accumulator)', 'k', 'f32') : dk;
    const dv32 = scratch ? call.output(kvElements, 'dv (f32 accumulator)', 'k', 'f32') : dv;
    const matrices = chunks.map((ch) => {
      const nn = ch.nkv * ch.c * Nq * Nk * ELEMENT_BYTES[dt];
      return { SP: call.buffers.create(nn, 'P', 'q'), dP: call.buffers.create(nn, 'dP', 'q'), dS: call.buffers.create(nn, 'dS', 'q') };
    });
    let dbias: GPUBuffer | undefined;
    await call.submit(async (enc) => {
      for (const [n, { kv0, nkv, g0, c }] of chunks.entries()) {
        const { SP, dP, dS } = matrices[n];
        const heads = nkv * c;
        const at = { kv0, cz: c, g0 };
        // S = scale·Q Kᵀ, dP = dO Vᵀ
        run.runMatmul(enc, qk, { M: Nq, N: Nk, K: D, alpha: scale, ...at, a: run.qLike(), b: run.kvLike(), c: run.dense() }, heads, Q, K, SP);
        run.runMatmul(enc, qk, { M: Nq, N: Nk, K: D, alpha: 1, ...at, a: run.qLike(), b: run.kvLike(), c: run.dense() }, heads, dO, V, dP);
        // P = exp(S − lse) over S (P ∘ Z with dropout), dS = P ∘ (dP − rowsum(dO ∘ O)) (dP ∘ Z; times the soft-cap's derivative)
        dispatch(enc, gpu.device, ds, [run.sizes, run.step({ M: Nq, N: Nk, K: D, alpha: 1, ...at }), SP, dP, dS, L, dO, O], run.rowGroups(heads), group1);
        // dQ = scale·dS K
        run.runMatmul(enc, dsK, { M: Nq, N: D, K: Nk, alpha: scale, ...at, a: run.dense(), b: run.kvLike(), c: run.qLike() }, heads, dS, K, dq);
        // dV = Pᵀ dO, dK = scale·dSᵀ Q: one dispatch head per kv head, contracting over its c query heads'
        // rows t = g·Nq + i (the N×N matrices of a kv head's slice are contiguous; q-like rows split by Nq).
        const kvAt = { kv0, cz: 1, g0 };
        const groupRows: Operand = { ...run.qLike(), split: Nq, splitStride: sizesOf(p).qHead };
        const groupDense: Operand = { ...run.dense(), local: c * Nq * Nk };
        const mm = g0 > 0 ? pTacc : pT;
        const M = Nk;
        const Kc = c * Nq;
        run.runMatmul(enc, mm, { M, N: D, K: Kc, alpha: 1, ...kvAt, a: groupDense, b: groupRows, c: run.kvLike() }, nkv, SP, dO, dv32);
        run.runMatmul(enc, mm, { M, N: D, K: Kc, alpha: scale, ...kvAt, a: groupDense, b: groupRows, c: run.kvLike() }, nkv, dS, Q, dk32);
      }
      if (scratch) {
        const cast = await pipeline(gpu.device, 'standardCast', { WG: run.WG }, castWGSL);
        const groups: [number, number] = [Math.min(Math.ceil(kvElements / run.WG), gpu.limits.maxComputeWorkgroupsPerDimension), 1];
        const n = run.step({ M: kvElements, N: 0, K: 0, alpha: 1, kv0: 0, cz: 1, g0: 0 });
        dispatch(enc, gpu.device, cast, [n, dk32, dk], groups);
        dispatch(enc, gpu.device, cast, [n, dv32, dv], groups);
      }
      if (biasGrad) dbias = await reduceBiasGrad(call, enc, biasGrad);
    });
    const grads = {
      dq: await call.result(dq, q.shape, 'q'),
      dk: await call.result(dk, k.shape, 'k'),
      dv: await call.result(dv, v.shape, 'k'),
    };
    return dbias ? { ...grads, dbias: await call.result(dbias, p.mods.bias!.index.shape, 'q', 'f32') } : grads;
  } finally {
    call.dispose();
  }
}
