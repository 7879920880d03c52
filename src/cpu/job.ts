/**
 * A cpu job: what the main thread sends to each worker (or runs inline). Sizes travel as plain numbers,
 * arrays as regions of (Shared)ArrayBuffers (the pool's workspace, see pool.ts, or an array read where
 * it lives, as the KV cache's pools); `views` turns them back into typed arrays on either side. Besides
 * the attention kernels, the pool runs the decode kernel (decode.ts) and the matrix product of the nn
 * layer (linear.ts).
 */
import type { LinearShape } from './linear.js';
import type { DecodeShape } from './decode.js';
import { hasModifiers, type Broadcast, type Modifiers } from '../modifiers.js';
import { problemStrides, type Problem } from '../problem.js';
import { cpuKernels } from './wasm/index.js';

export type Kernel = 'flashForward' | 'flashBackward' | 'standardForward' | 'standardBackward';

/** Everything a kernel needs to know about the sizes, with the layout resolved into strides. */
export interface CpuShape {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  Nk: number;
  D: number;
  causal: boolean;
  scale: number;
  /** q / out / dout: element (b, n, h, d) at b*qBatch + n*qRow + h*qHead + d; likewise for k / v. */
  qBatch: number;
  qRow: number;
  qHead: number;
  kvBatch: number;
  kvRow: number;
  kvHead: number;
  /** Query rows and key rows per tile. */
  Br: number;
  Bc: number;
  /** Key blocks of one (b, hkv) split over this many backward tasks (each with its own dQ partial). */
  chunks: number;
  /** The standard algorithm stores S and P in f16 (as 16-bit storage) when the inputs are f16. */
  f16Scores: boolean;
  /** The flash forward and backward run flash.ts's JavaScript kernels, not the WebAssembly ones (setCpuKernels('js')). */
  js?: boolean;
  /** The variants, only where the call has any beyond causal: without them the kernels run their plain loops. */
  mods?: CpuMods;
}

/**
 * The variants of a call as a job carries them (src/modifiers.ts): the Modifiers less the data of the bias
 * and the mask, which reach the workers in shared memory as the job's buffers 'bias.f64' (the values as
 * f64, read once) and 'mask.u8'; the block mask and the ALiBi slopes are small and travel with the shape.
 */
export interface CpuMods extends Omit<Modifiers, 'bias' | 'mask'> {
  bias?: { index: Broadcast; grad: boolean };
  mask?: { index: Broadcast };
}

function cpuMods(m: Modifiers): CpuMods {
  const { bias, mask, ...rest } = m;
  return { ...rest, ...(bias && { bias: { index: bias.index, grad: bias.grad } }), ...(mask && { mask: { index: mask.index } }) };
}

/** A task's Modifiers: the shape's, with the bias values and the mask of the job's buffers put back. */
export function modifiersOf(m: CpuMods, bias: Float64Array | undefined, mask: Uint8Array | undefined): Modifiers {
  const { bias: b, mask: k, ...rest } = m;
  return {
    ...rest,
    ...(b && bias && { bias: { ...b, data: bias, dtype: 'f64' as const } }),
    ...(k && mask && { mask: { ...k, data: mask } }),
  };
}

/** Bytes of a (Shared)ArrayBuffer from byteOffset on: one array of a job. */
export interface Region {
  buffer: ArrayBufferLike;
  byteOffset: number;
  byteLength: number;
}

interface JobOf<K extends string, S> {
  kernel: K;
  shape: S;
  tasks: number;
  /** Named arrays: f32 unless the name ends in '.f64', '.f16', '.i32' or '.u8' (see views). */
  buffers: Record<string, Region>;
  /** One scratch region (f64) per worker; the inline path uses the first. */
  scratch: Region[];
  /**
   * Shared memory for the task counters (run.ts): 4 bytes, the next task to hand out; with `lanes`,
   * LANE_BYTES per worker (counterBytes), one counter each.
   */
  counter: Region;
  /**
   * Hand the tasks out in lanes, one run of consecutive tasks per worker, each worker taking from its own
   * lane first and then from the lane with the most left (run.ts): for kernels whose consecutive tasks share
   * data a thread keeps (the forward's K and V of a head).
   */
  lanes?: boolean;
}

/** Bytes from one lane's counter to the next: a cache line each, so that the workers' counters share none. */
export const LANE_BYTES = 64;

/** Bytes of a job's counter region for `threads` lanes (LANE_BYTES each). */
export function counterBytes(threads: number): number {
  return LANE_BYTES * Math.max(1, threads);
}

export type Job = JobOf<Kernel, CpuShape> | JobOf<'decode', DecodeShape> | JobOf<'linear', LinearShape>;

/**
 * Tile sizes for head dim D: a Br×D query tile, a Bc×D key tile and the Br×Bc score tile (f64) stay
 * within a core's L2 cache (about 100 KiB in all at the sizes below).
 */
export function tileSizes(D: number): { Br: number; Bc: number } {
  const t = Math.max(16, Math.min(128, 2 ** Math.floor(Math.log2(8192 / D))));
  return { Br: t, Bc: t };
}

export function cpuShape(p: Problem, threads: number, f16Scores = false): CpuShape {
  const { q: sq, kv: sk } = problemStrides(p);
  const { Br, Bc } = tileSizes(p.D);
  // Enough backward tasks to keep every thread busy, never more chunks than key blocks.
  const chunks = Math.max(1, Math.min(Math.ceil(p.Nk / Bc), Math.ceil((2 * threads) / (p.B * p.Hkv))));
  return {
    B: p.B,
    H: p.H,
    Hkv: p.Hkv,
    Nq: p.Nq,
    Nk: p.Nk,
    D: p.D,
    causal: p.causal,
    scale: p.scale,
    qBatch: sq.batch,
    qRow: sq.row,
    qHead: sq.head,
    kvBatch: sk.batch,
    kvRow: sk.row,
    kvHead: sk.head,
    Br,
    Bc,
    chunks: threads > 1 ? chunks : 1,
    f16Scores,
    ...(cpuKernels() === 'js' && { js: true }),
    ...(hasModifiers(p.mods, p.causal) && { mods: cpuMods(p.mods) }),
  };
}

/** Typed views of a job's buffers, by name without the type: 'dqPartial.f64' is the Float64Array dqPartial. */
export function views(job: Job): Record<string, Float32Array | Float64Array | Uint16Array | Int32Array | Uint8Array> {
  const out: Record<string, Float32Array | Float64Array | Uint16Array | Int32Array | Uint8Array> = {};
  for (const [name, { buffer, byteOffset, byteLength }] of Object.entries(job.buffers)) {
    const [key, type] = name.split('.');
    out[key] =
      type === 'f64'
        ? new Float64Array(buffer, byteOffset, byteLength / 8)
        : type === 'f16'
          ? new Uint16Array(buffer, byteOffset, byteLength / 2)
          : type === 'i32'
            ? new Int32Array(buffer, byteOffset, byteLength / 4)
            : type === 'u8'
              ? new Uint8Array(buffer, byteOffset, byteLength)
              : new Float32Array(buffer, byteOffset, byteLength / 4);
  }
  return out;
}

/** f64 elements of scratch each worker needs for a kernel. */
export function scratchLength(kernel: Kernel, s: CpuShape): number {
  const { Br, Bc, D, H, Hkv, Nq } = s;
  switch (kernel) {
    case 'flashForward':
      // Q_i, O_i, K_j, V_j, S, m, l, keys seen per row; with the variants, a row's dropout multipliers
      return 2 * Br * D + 2 * Bc * D + Br * Bc + 3 * Br + (s.mods ? Bc : 0);
    case 'flashBackward':
      // dK_j, dV_j, K_j, V_j, Q_i, dO_i, P, dS, keys seen per row, D for each head of the group; with the
      // variants, a row's modified logits, soft-cap derivatives and dropout multipliers
      return 4 * Bc * D + 2 * Br * D + 2 * Br * Bc + Br + (H / Hkv) * Nq + (s.mods ? 3 * Bc : 0);
    case 'standardForward':
      // four query rows and their output rows, four rows of scores and of the keys with P ≠ 0; with the
      // variants, a row's modified logits and dropout multipliers
      return 8 * D + 8 * s.Nk + (s.mods ? 2 * s.Nk : 0);
    case 'standardBackward':
      // D = rowsum(dO ∘ O), dK and dV of the key/value head, four rows of Q, dO, dQ, P and dS; with the
      // variants, a row's modified logits, soft-cap derivatives and dropout multipliers
      return Nq + 2 * s.Nk * D + 12 * D + 8 * s.Nk + (s.mods ? 3 * s.Nk : 0);
  }
}
