/**
 * The cpu backend: stages the inputs as f32 in buffers the worker threads share, runs the flash kernels
 * (or the standard baseline) over batch × head × block tasks, and returns outputs in the input dtype.
 * Every buffer it makes is counted in the call's MemoryTracker; all are released when the call returns
 * (outputs become the caller's).
 */
import { OutOfMemoryError } from '../errors.js';
import { encodeF16, decodeF16 } from '../f16.js';
import type { MemoryTracker } from '../memory.js';
import type { Problem } from '../problem.js';
import type { Tensor } from '../tensor.js';
import { backwardTasks, forwardTasks, reduceDq } from './flash.js';
import { cpuShape, scratchLength, type Job, type Kernel } from './job.js';
import { runJob, sharedBuffer, threadsFor } from './pool.js';

/** The buffers of one call, counted while they live. */
class Buffers {
  private counted = 0;
  constructor(private readonly memory: MemoryTracker) {}

  /** A shared buffer of `bytes`, or an OutOfMemoryError naming what it was for. */
  make(bytes: number, what: string): ArrayBufferLike {
    let buf: ArrayBufferLike;
    try {
      buf = sharedBuffer(bytes);
      void new Uint16Array(buf); // the view with the most elements the kernels make: over the limit is a RangeError too
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new OutOfMemoryError('q', `an allocation this machine can make for ${what}`, `${bytes} bytes (${e.message})`);
    }
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

export async function cpuForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
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
