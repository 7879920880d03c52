/**
 * The cpu backend: stages the inputs as f32 in buffers the worker threads share, runs the flash kernels
 * (or the standard baseline) over batch × head × block tasks, and returns outputs in the input dtype.
 * Flash forward calls with few queries (Nq ≤ DECODE_MAX_QUERIES) run the split-KV decode kernel
 * instead (decode.ts; cpuDecode, which the KV cache runs too), reading K and V in their own dtype.
 * Every buffer it makes is counted in the call's MemoryTracker; all are released when the call returns
 * (outputs become the caller's).
 */
import { OutOfMemoryError } from '../errors.js';
import { encodeF16, decodeF16 } from '../f16.js';
import type { MemoryTracker } from '../memory.js';
import { problemStrides, type Problem } from '../problem.js';
import type { Tensor } from '../tensor.js';
import { DECODE_MAX_QUERIES, decodeRows, decodeScratch, decodeSplits, decodeTasks, decodeTile, mergeDecode, type DecodeShape } from './decode.js';
import { backwardTasks, forwardTasks, reduceDq } from './flash.js';
import { cpuShape, scratchLength, type Job, type JobBuffer, type Kernel } from './job.js';
import { runJob, sharedBuffer, threadsFor } from './pool.js';

/** A buffer of `bytes` (shared, or a plain one), or an OutOfMemoryError naming what it was for. */
function allocate(bytes: number, what: string, shared: boolean): ArrayBufferLike {
  try {
    const buf = shared ? sharedBuffer(bytes) : new ArrayBuffer(bytes);
    void new Uint16Array(buf); // the view with the most elements the kernels make: over the limit is a RangeError too
    return buf;
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new OutOfMemoryError('q', `an allocation this machine can make for ${what}`, `${bytes} bytes (${e.message})`);
  }
}

/** The buffers of one call, counted while they live. */
class Buffers {
  private counted = 0;
  constructor(private readonly memory: MemoryTracker) {}

  /** A shared buffer of `bytes` (a plain one when not `shared`), or an OutOfMemoryError naming what it was for. */
  make(bytes: number, what: string, shared = true): ArrayBufferLike {
    const buf = allocate(bytes, what, shared);
    this.counted += this.memory.allocate(bytes);
    return buf;
  }

  /** Inputs as f32 in a shared buffer (a copy; f16 is widened). */
  stage(t: Tensor, name: string): ArrayBufferLike {
    const buf = this.make(t.data.length * 4, name);
    const view = new Float32Array(buf);
    if (t.dtype === 'f16') decodeF16(t.data as Uint16Array, view);
    else view.set(t.data);
    return buf;
  }

  releaseAll(): void {
    this.memory.release(this.counted);
    this.counted = 0;
  }
}

/** A kernel's output (f32) in the problem's dtype, as a tensor. */
function result(p: Problem, buf: ArrayBufferLike, shape: readonly number[]): Tensor {
  const values = new Float32Array(buf);
  if (p.dtype === 'f16') {
    // The f16 copy is made while the f32 one is still counted: that is the real peak.
    const bits = p.memory.allocate(values.length * 2);
    const data = encodeF16(values);
    p.memory.release(bits);
    return { data, dtype: 'f16', shape: [...shape] };
  }
  return { data: values, dtype: 'f32', shape: [...shape] };
}

/** Threads, shape and scratch for a kernel; `run` starts it with any further buffers. */
async function prepare(p: Problem, kernel: Kernel, bufs: Buffers, buffers: Record<string, ArrayBufferLike>, work: number) {
  const threads = await threadsFor(work);
  const shape = cpuShape(p, threads, p.dtype === 'f16');
  const scratch = Array.from({ length: threads }, (_, i) => bufs.make(scratchLength(kernel, shape) * 8, `thread ${i}'s scratch`));
  return { shape, run: (extra: Record<string, ArrayBufferLike>, tasks: number) => runJob({ kernel, shape, tasks, buffers: { ...buffers, ...extra }, scratch } satisfies Job) };
}

/**
 * Shared buffers a caller keeps between decode calls (the KV cache): the workers' scratch, the partials
 * and the copies of q, the block table and the lengths, grown as needed and counted while they live.
 * A fresh shared buffer costs a page fault per 4 KiB on first touch (about 11 µs a page on the 2-core
 * machine of bench/results/2026-12-05-cpu-decode.md, more than a decode step at Nk = 4096 spends on
 * those pages' worth of work), so a step that reuses them allocates nothing shared.
 */
export class DecodeWorkspace {
  private readonly buffers = new Map<string, ArrayBufferLike>();
  private counted = 0;
  constructor(private readonly memory: MemoryTracker) {}

  /** The shared buffer kept for `name`, of at least `bytes` (a multiple of 8). */
  get(name: string, bytes: number): ArrayBufferLike {
    const size = Math.max(8, Math.ceil(bytes / 8) * 8);
    let buf = this.buffers.get(name);
    if (!buf || buf.byteLength < size) {
      if (buf) {
        this.memory.release(buf.byteLength);
        this.counted -= buf.byteLength;
      }
      buf = allocate(size, name, true);
      this.counted += this.memory.allocate(size);
      this.buffers.set(name, buf);
    }
    return buf;
  }

  dispose(): void {
    this.memory.release(this.counted);
    this.counted = 0;
    this.buffers.clear();
  }
}

/**
 * One call of the decode kernel: q (any layout) against keys addressed through pages (DecodeShape's
 * `kvPage`, `kvRow`, `kvHead`, `pageSize`, `maxPages`), `table` (B × maxPages) and `lengths` (B).
 */
export interface DecodeCall {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  D: number;
  causal: boolean;
  scale: number;
  q: Tensor & { dtype: 'f32' | 'f16' };
  qStrides: { batch: number; row: number; head: number };
  k: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
  keys: Pick<DecodeShape, 'kvPage' | 'kvRow' | 'kvHead' | 'pageSize' | 'maxPages'>;
  table: Int32Array;
  lengths: Int32Array;
  memory: MemoryTracker;
  /** Buffers kept between calls (else each call allocates its own, counted in `memory` while it runs). */
  workspace?: DecodeWorkspace;
}

function onSharedMemory(a: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer === 'function' && a.buffer instanceof SharedArrayBuffer;
}

/**
 * Attention of a decode call (decode.ts): out in q's layout and dtype, lse (B, H, Nq) f32.
 * K and V are never copied: where they are not on shared memory (a caller's typed arrays) the kernel
 * runs on this thread, since a shared copy costs more than the other cores save (a fresh shared buffer
 * takes about 2.7 ms per MiB to fill here, the kernel about 0.5 ms per MiB to read; README of
 * bench/results/2026-12-05-cpu-decode.md); on shared memory (the KV cache's pools), on every worker.
 */
export async function cpuDecode(c: DecodeCall): Promise<{ out: Tensor; lse: Tensor }> {
  const bufs = new Buffers(c.memory);
  const ws = c.workspace;
  const { B, H, Hkv, Nq, D } = c;
  const f16 = c.q.dtype === 'f16';
  let longest = 0;
  let keys = 0;
  for (const len of c.lengths) {
    longest = Math.max(longest, len);
    keys += len;
  }
  try {
    const threads = onSharedMemory(c.k) && onSharedMemory(c.v) ? await threadsFor(keys * H * Nq * D) : 1;
    const Bc = decodeTile(D);
    const { R, rowChunks } = decodeRows((H / Hkv) * Nq);
    const { splits, chunk } = decodeSplits(B * Hkv * rowChunks, longest, Bc, threads);
    const s: DecodeShape = {
      B, H, Hkv, Nq, D, causal: c.causal, scale: c.scale,
      qBatch: c.qStrides.batch, qRow: c.qStrides.row, qHead: c.qStrides.head,
      ...c.keys, f16, Bc, R, rowChunks, splits, chunk,
    };
    // Inline, every array is read where it is and the rest is plain memory; on the workers, small arrays are copied.
    const local = threads === 1;
    const make = (name: string, bytes: number, what: string) => (ws ? ws.get(name, bytes) : bufs.make(bytes, what, !local));
    const share = (name: string, a: Float32Array | Uint16Array | Int32Array, what: string): JobBuffer => {
      if (local || onSharedMemory(a)) return { buffer: a.buffer, byteOffset: a.byteOffset, length: a.length };
      const buffer = make(name, a.byteLength, what);
      new (a.constructor as Uint16ArrayConstructor)(buffer, 0, a.length).set(a as Uint16Array);
      return { buffer, byteOffset: 0, length: a.length };
    };
    const t = f16 ? '.f16' : '';
    const rows = B * H * Nq;
    const opart = make('opart', rows * splits * D * 8, "the splits' partial O");
    const lpart = make('lpart', rows * splits * 8, "the splits' partial log-sum-exp");
    const buffers = {
      ['q' + t]: share('q', c.q.data as Float32Array | Uint16Array, 'q'),
      ['k' + t]: share('k', c.k, 'k'),
      ['v' + t]: share('v', c.v, 'v'),
      'table.i32': share('table', c.table, 'the block table'),
      'lengths.i32': share('lengths', c.lengths, 'the lengths'),
      'opart.f64': opart,
      'lpart.f64': lpart,
    };
    const scratch = Array.from({ length: threads }, (_, i) => make(`scratch ${i}`, decodeScratch(s) * 8, `thread ${i}'s scratch`));
    await runJob({ kernel: 'decode', shape: s, tasks: decodeTasks(s), buffers, scratch });
    // The results are the caller's: counted while the partials they come from are.
    const counted = c.memory.allocate(c.q.data.length * (f16 ? 2 : 4) + rows * 4);
    try {
      const out = f16 ? new Uint16Array(c.q.data.length) : new Float32Array(c.q.data.length);
      const lse = new Float32Array(rows);
      mergeDecode(s, new Float64Array(opart), new Float64Array(lpart), out, lse);
      return { out: { data: out, dtype: c.q.dtype, shape: [...c.q.shape] }, lse: { data: lse, dtype: 'f32', shape: [B, H, Nq] } };
    } finally {
      c.memory.release(counted);
    }
  } finally {
    bufs.releaseAll();
  }
}

/** Whether a forward call runs the decode kernel: flash with few queries. */
export function cpuDecodeFits(p: Problem): boolean {
  return p.algorithm === 'flash' && p.Nq <= DECODE_MAX_QUERIES;
}

/** forward() on the decode kernel: K and V read in place, one page per batch row. */
export function cpuDecodeForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
  const { q: sq, kv } = problemStrides(p);
  return cpuDecode({
    B: p.B, H: p.H, Hkv: p.Hkv, Nq: p.Nq, D: p.D, causal: p.causal, scale: p.scale,
    q: q as Tensor & { dtype: 'f32' | 'f16' },
    qStrides: sq,
    k: k.data as Float32Array | Uint16Array,
    v: v.data as Float32Array | Uint16Array,
    keys: { kvPage: kv.batch, kvRow: kv.row, kvHead: kv.head, pageSize: p.Nk, maxPages: 1 },
    table: Int32Array.from({ length: p.B }, (_, b) => b),
    lengths: new Int32Array(p.B).fill(p.Nk),
    memory: p.memory,
  });
}

/** forward() on the cpu: the decode kernel where it fits (cpuDecodeFits), else the tiled kernels or the standard baseline. */
export function cpuForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
  return cpuDecodeFits(p) ? cpuDecodeForward(p, q, k, v) : cpuTiledForward(p, q, k, v);
}

/** forward() on the tiled flash kernel (flash.ts) or, for algorithm 'standard', the baseline (standard.ts), inputs staged as f32. */
export async function cpuTiledForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
  const bufs = new Buffers(p.memory);
  try {
    const buffers = {
      q: bufs.stage(q, 'q'),
      k: bufs.stage(k, 'k'),
      v: bufs.stage(v, 'v'),
      out: bufs.make(q.data.length * 4, 'out'),
      lse: bufs.make(p.B * p.H * p.Nq * 4, 'lse'),
    };
    const work = p.B * p.H * p.Nq * p.Nk * p.D;
    if (p.algorithm === 'flash') {
      const { shape, run } = await prepare(p, 'flashForward', bufs, buffers, work);
      await run({}, forwardTasks(shape));
    } else {
      const { shape, run } = await prepare(p, 'standardForward', bufs, buffers, work);
      const scores = p.B * p.H * p.Nq * p.Nk * (shape.f16Scores ? 2 : 4);
      const t = shape.f16Scores ? '.f16' : '';
      await run({ ['S' + t]: bufs.make(scores, 'S (Nq×Nk per head)'), ['P' + t]: bufs.make(scores, 'P (Nq×Nk per head)') }, p.B * p.H);
    }
    return { out: result(p, buffers.out, q.shape), lse: { data: new Float32Array(buffers.lse), dtype: 'f32', shape: [p.B, p.H, p.Nq] } };
  } finally {
    bufs.releaseAll();
  }
}

export async function cpuBackward(
  p: Problem,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
): Promise<{ dq: Tensor; dk: Tensor; dv: Tensor }> {
  const bufs = new Buffers(p.memory);
  try {
    const lseBuf = bufs.make(lse.data.length * 4, 'lse');
    new Float32Array(lseBuf).set(lse.data);
    const buffers = {
      q: bufs.stage(q, 'q'),
      k: bufs.stage(k, 'k'),
      v: bufs.stage(v, 'v'),
      out: bufs.stage(out, 'out'),
      dout: bufs.stage(dout, 'dout'),
      lse: lseBuf,
      dq: bufs.make(q.data.length * 4, 'dq'),
      dk: bufs.make(k.data.length * 4, 'dk'),
      dv: bufs.make(v.data.length * 4, 'dv'),
    };
    const work = p.B * p.H * p.Nq * p.Nk * p.D;
    if (p.algorithm === 'flash') {
      const { shape, run } = await prepare(p, 'flashBackward', bufs, buffers, work);
      const dqPartial = bufs.make(shape.chunks * p.B * p.H * p.Nq * p.D * 8, 'the dQ partial sums');
      await run({ 'dqPartial.f64': dqPartial }, backwardTasks(shape));
      reduceDq(shape, new Float64Array(dqPartial), new Float32Array(buffers.dq));
    } else {
      const { shape, run } = await prepare(p, 'standardBackward', bufs, buffers, work);
      const scores = p.B * p.H * p.Nq * p.Nk * (shape.f16Scores ? 2 : 4);
      const t = shape.f16Scores ? '.f16' : '';
      const what = (m: string) => `${m} (Nq×Nk per head)`;
      await run(
        { ['P' + t]: bufs.make(scores, what('P')), ['dP' + t]: bufs.make(scores, what('dP')), ['dS' + t]: bufs.make(scores, what('dS')) },
        p.B * p.Hkv,
      );
    }
    return { dq: result(p, buffers.dq, q.shape), dk: result(p, buffers.dk, k.shape), dv: result(p, buffers.dv, v.shape) };
  } finally {
    bufs.releaseAll();
  }
}
