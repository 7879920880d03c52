/**
 * The IO story of the paper (Dao et al. 2022, Section 3.2): bytes each algorithm moves between main
 * memory (HBM on a GPU, DRAM on a CPU) and the compute units, for one sweep point.
 *
 * Standard attention moves Θ(N·d + N²) bytes: q, k, v and out once each (as the paper counts them), plus
 * every read and write of the N×N matrices our standard kernels do; the passes below are counted from
 * src/cpu/standard.ts and src/webgpu/standard.ts + kernels/standard.ts.
 * FlashAttention moves Θ(N²·d²/M) bytes: q and out once, but K_j and V_j are read again for every query
 * block of Br rows (Br ≈ M / d for on-chip memory M), and the backward streams Q_i, dO_i past every key
 * block likewise. The counts use the tiles the backend really uses (src/cpu/job.ts tileSizes and
 * scratchLength; src/webgpu/index.ts forwardChoice and backwardParams with the device's limits), and
 * skip the tiles a causal mask leaves out, as the kernels do.
 * Sizes are per head, times B·H; Nq = Nk = N. The counts ignore caches: they are what the algorithm
 * asks of main memory, not what a profiler would see.
 */
import { MemoryTracker, type Algorithm, type Precision } from '../index.js';
import { cpuShape, scratchLength } from '../cpu/job.js';
import type { Problem } from '../problem.js';
import type { Gpu } from '../webgpu/device.js';
import { backwardChoice, backwardTiles, forwardChoice, forwardTiles, standardMatmulRegisters, workgroupSize } from '../webgpu/index.js';
import { matmulTile } from '../webgpu/kernels/standard.js';
import type { Case, Io, Pass } from './results.js';

/** A tile set: Br query rows and Bc key rows, and the on-chip bytes it occupies. */
export interface Tiles {
  Br: number;
  Bc: number;
  onChipBytes: number;
}

/** What the IO counts need to know about a backend's kernels for one (D, dtype, causal). */
export interface KernelGeometry {
  backend: 'cpu' | 'webgpu';
  /** Bytes per element of q, k, v, out and the gradients as the kernels read them (cpu kernels read f32 copies). */
  elementBytes: number;
  flash: {
    forward: Tiles;
    /** dK/dV: the workgroup owns key block Bc and streams query blocks of Br rows. */
    backwardKV: Tiles;
    /** dQ: the workgroup owns query block Br and streams key blocks of Bc rows (webgpu); unused on cpu. */
    backwardQ: Tiles;
    /** cpu: key-block runs per key/value head, each with its own f64 dQ partial (0 on webgpu). */
    dqChunks: number;
  };
  standard: {
    /** Bytes per element of the N×N matrices. */
    scoreBytes: number;
    /** Reads plus writes of an N×N matrix, in whole matrices, in the forward and in the backward. */
    forwardPasses: number;
    backwardPasses: number;
  };
}

/** A Problem for a case (the fields the backends' tile choices read). */
export function problemOf(c: Case, algorithm: Algorithm, backend: 'cpu' | 'webgpu', precision: Precision = 'highest'): Problem {
  return {
    mods: c.causal ? { band: { left: -1, right: 0 } } : {},
    B: c.B,
    H: c.H,
    Hkv: c.H,
    Nq: c.N,
    Nk: c.N,
    D: c.D,
    dtype: c.dtype,
    layout: 'BNHD',
    causal: c.causal,
    scale: 1 / Math.sqrt(c.D),
    backend,
    algorithm,
    precision,
    memory: new MemoryTracker(),
    onGpu: false,
  };
}

/** The cpu backend's tiles (src/cpu/job.ts) for a case; `threads` sets how the backward splits key blocks. */
export function cpuGeometry(c: Case, threads: number): KernelGeometry {
  const shape = cpuShape(problemOf(c, 'flash', 'cpu'), threads, c.dtype === 'f16');
  const scratch = (kernel: 'flashForward' | 'flashBackward') => scratchLength(kernel, shape) * 8;
  const tiles = (kernel: 'flashForward' | 'flashBackward'): Tiles => ({ Br: shape.Br, Bc: shape.Bc, onChipBytes: scratch(kernel) });
  return {
    backend: 'cpu',
    elementBytes: 4,
    flash: { forward: tiles('flashForward'), backwardKV: tiles('flashBackward'), backwardQ: tiles('flashBackward'), dqChunks: shape.chunks },
    // forward: S written, read twice (row max, then exp), P written; the output is summed from registers.
    // backward: P written and read back, dP written, dS written and read back.
    standard: { scoreBytes: c.dtype === 'f16' ? 2 : 4, forwardPasses: 4, backwardPasses: 5 },
  };
}

/**
 * The webgpu backend's tiles (src/webgpu/index.ts) for a case on a device: the forward's as forwardChoice
 * picks its kernel (subgroup matrices, tiled or portable; on-chip memory is the workgroup memory, the
 * register tiles not counted); the backward's as backwardChoice picks its kernels (subgroup matrices, tiled
 * or portable).
 */
export function webgpuGeometry(c: Case, gpu: Gpu, precision: Precision = 'highest'): KernelGeometry {
  const p = problemOf(c, 'flash', 'webgpu', precision);
  const backward = backwardTiles(backwardChoice(p, gpu));
  // A matmul that reads an N×N operand reads it once per BN-wide column tile of its D-wide result.
  const reads = Math.ceil(c.D / matmulTile({ WG: workgroupSize(gpu), ...standardMatmulRegisters(gpu) }).BN);
  return {
    backend: 'webgpu',
    elementBytes: c.dtype === 'f16' ? 2 : 4,
    flash: {
      forward: forwardTiles(forwardChoice(p, gpu)),
      backwardKV: backward.kv,
      backwardQ: backward.q,
      dqChunks: 0,
    },
    standard: {
      // S, P, dP and dS are stored in the input dtype (src/webgpu/standard.ts).
      scoreBytes: c.dtype === 'f16' ? 2 : 4,
      // forward: QKᵀ writes S; softmax reads S three times (max, sum, P) and writes P; PV reads P `reads` times.
      // backward: QKᵀ writes S, dO Vᵀ writes dP; the dS kernel reads S and dP, writes P over S and dS;
      // dQ = dS K, dK = dSᵀ Q and dV = Pᵀ dO read dS, dS and P `reads` times each.
      forwardPasses: 5 + reads,
      backwardPasses: 6 + 3 * reads,
    },
  };
}

/**
 * Rows of the other operand that blocks of `own` rows stream, summed over the blocks: key rows for query
 * blocks (`ownQueries`) or query rows for key blocks. Causal (Nq = Nk): query row r sees keys 0..r, and
 * whole tiles are loaded, as the kernels do.
 */
export function streamedRows(N: number, own: number, other: number, causal: boolean, ownQueries: boolean): number {
  const blocks = Math.ceil(N / own);
  if (!causal) return blocks * N;
  let rows = 0;
  for (let i = 0; i < blocks; i++) {
    if (ownQueries) {
      const lastRow = Math.min(N, (i + 1) * own) - 1;
      rows += Math.min(N, (Math.floor(lastRow / other) + 1) * other);
    } else {
      rows += N - Math.floor((i * own) / other) * other; // query blocks from the one holding row i·own
    }
  }
  return rows;
}

/** Flash forward bytes per head: Q read and O written once, L written, K_j and V_j once per query block. */
export function flashForwardBytes(c: Case, g: KernelGeometry): number {
  const e = g.elementBytes;
  const { Br, Bc } = g.flash.forward;
  return e * c.D * 2 * c.N + 4 * c.N + 2 * e * c.D * streamedRows(c.N, Br, Bc, c.causal, true);
}

/**
 * Flash backward bytes per head.
 * webgpu: preprocess reads dO, O and writes D; dK/dV reads K, V once, streams Q_i, dO_i, L_i, D_i per key
 * block and writes dK, dV; dQ reads Q, dO, L, D once, streams K_j, V_j per query block and writes dQ.
 * cpu: each of `dqChunks` runs of key blocks reads O, dO for D; per key block K_j, V_j once and Q_i,
 * dO_i, L_i streamed, with the f64 dQ partial read and written per streamed row; the partials are summed
 * into dQ at the end.
 */
export function flashBackwardBytes(c: Case, g: KernelGeometry): number {
  const e = g.elementBytes;
  const { D, N, causal } = c;
  const kv = g.flash.backwardKV;
  if (g.backend === 'webgpu') {
    const q = g.flash.backwardQ;
    const preprocess = 2 * e * D * N + 4 * N;
    const dKdV = 4 * e * D * N + (2 * e * D + 8) * streamedRows(N, kv.Bc, kv.Br, causal, false);
    const dQ = 3 * e * D * N + 8 * N + 2 * e * D * streamedRows(N, q.Br, q.Bc, causal, true);
    return preprocess + dKdV + dQ;
  }
  const chunks = g.flash.dqChunks;
  const rows = streamedRows(N, kv.Bc, kv.Br, causal, false);
  const dPartial = 2 * 8 * D * rows + chunks * 8 * D * N + e * D * N; // per streamed row read + write; the sum; dQ
  return chunks * 2 * e * D * N + 4 * e * D * N + (2 * e * D + 4) * rows + dPartial;
}

/** Standard forward bytes per head: Q, K, V read and O, L written once; the N×N passes. */
export function standardForwardBytes(c: Case, g: KernelGeometry): number {
  const { scoreBytes, forwardPasses } = g.standard;
  return g.elementBytes * c.D * 4 * c.N + 4 * c.N + forwardPasses * c.N * c.N * scoreBytes;
}

/** Standard backward bytes per head: Q, K, V, O, dO and L read, dQ, dK, dV written once; the N×N passes. */
export function standardBackwardBytes(c: Case, g: KernelGeometry): number {
  const { scoreBytes, backwardPasses } = g.standard;
  return g.elementBytes * c.D * 8 * c.N + 4 * c.N + backwardPasses * c.N * c.N * scoreBytes;
}

const KiB = 1024;

/** The IO of one measurement (all B·H heads) and a line on how it was counted. */
export function ioOf(c: Case, algorithm: Algorithm, pass: Pass, g: KernelGeometry): Io {
  const heads = c.B * c.H;
  const both = pass === 'forward+backward';
  if (algorithm === 'flash') {
    const perHead = flashForwardBytes(c, g) + (both ? flashBackwardBytes(c, g) : 0);
    const f = g.flash.forward;
    const where = g.backend === 'webgpu' ? 'workgroup memory' : 'tile scratch per thread';
    return {
      bytes: heads * perHead,
      onChipBytes: f.onChipBytes,
      model: `K_j, V_j read once per query block of Br=${f.Br} rows (Bc=${f.Bc}); M = ${(f.onChipBytes / KiB).toFixed(1)} KiB ${where}`,
    };
  }
  const perHead = standardForwardBytes(c, g) + (both ? standardBackwardBytes(c, g) : 0);
  const s = g.standard;
  const passes = both ? `${s.forwardPasses} + ${s.backwardPasses}` : `${s.forwardPasses}`;
  return {
    bytes: heads * perHead,
    onChipBytes: null,
    model: `${passes} reads/writes of an N×N matrix (${s.scoreBytes === 2 ? 'f16' : 'f32'}) per head`,
  };
}
