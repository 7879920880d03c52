/**
 * A cpu job: what the main thread sends to each worker (or runs inline). Sizes travel as plain numbers,
 * arrays as regions of (Shared)ArrayBuffers (the pool's workspace, see pool.ts, or an array read where
 * it lives, as the KV cache's pools); `views` turns them back into typed arrays on either side. Besides
 * the attention kernels, the pool runs the decode kernel (decode.ts) and the matrix product of the nn
 * layer (linear.ts).
 */
import type { LinearShape } from './linear.js';
import type { DecodeShape } from './decode.js';
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
  /** The flash forward runs flash.ts's JavaScript kernel, not the WebAssembly one (setCpuKernels('js')). */
  js?: boolean;
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
  /** Named arrays: f32 unless the name ends in '.f64', '.f16' or '.i32' (see views). */
  buffers: Record<string, Region>;
  /** One scratch region (f64) per worker; the inline path uses the first. */
  scratch: Region[];
  /** 4 bytes of shared memory: the next task to hand out (run.ts). */
  counter: Region;
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
  };
}

/** Typed views of a job's buffers, by name without the type: 'dqPartial.f64' is the Float64Array dqPartial. */
export function views(job: Job): Record<string, Float32Array | Float64Array | Uint16Array | Int32Array> {
  const out: Record<string, Float32Array | Float64Array | Uint16Array | Int32Array> = {};
  for (const [name, { buffer, byteOffset, byteLength }] of Object.entries(job.buffers)) {
    const [key, type] = name.split('.');
    out[key] =
      type === 'f64'
        ? new Float64Array(buffer, byteOffset, byteLength / 8)
        : type === 'f16'
          ? new Uint16Array(buffer, byteOffset, byteLength / 2)
          : type === 'i32'
            ? new Int32Array(buffer, byteOffset, byteLength / 4)
            : new Float32Array(buffer, byteOffset, byteLength / 4);
  }
  return out;
}

/** f64 elements of scratch each worker needs for a kernel. */
export function scratchLength(kernel: Kernel, s: CpuShape): number {
  const { Br, Bc, D, H, Hkv, Nq } = s;
  switch (kernel) {
    case 'flashForward':
      return 2 * Br * D + 2 * Bc * D + Br * Bc + 3 * Br; // Q_i, O_i, K_j, V_j, S, m, l, keys seen per row
    case 'flashBackward':
      // dK_j, dV_j, K_j, V_j, Q_i, dO_i, P, dS, keys seen per row, D for each head of the group
      return 4 * Bc * D + 2 * Br * D + 2 * Br * Bc + Br + (H / Hkv) * Nq;
    case 'standardForward':
      return 5 * D + 5 * s.Nk; // four query rows, one output row, four rows of scores, the keys with P ≠ 0
    case 'standardBackward':
      // D = rowsum(dO ∘ O), dK and dV of the key/value head, four rows of Q, dO, dQ, P and dS
      return Nq + 2 * s.Nk * D + 12 * D + 8 * s.Nk;
  }
}
