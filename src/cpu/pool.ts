/**
 * The worker pool: one worker thread per core (Node's worker_threads), created on first use and kept
 * for later calls. Workers are unref'd between jobs, so an idle pool never keeps a process alive.
 * Where worker threads are unavailable (a browser without them, or a single core) jobs run inline.
 */
import type { Worker as NodeWorker } from 'node:worker_threads';
import type { Job } from './job.js';
import { runTasks } from './run.js';
import type { WorkerReply, WorkerRequest } from './worker.js';

/** A buffer the workers can share; a plain ArrayBuffer where SharedArrayBuffer is unavailable. */
export function sharedBuffer(bytes: number): ArrayBufferLike {
  return typeof SharedArrayBuffer === 'function' ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
}

class Pool {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly workers: NodeWorker[]) {}

  get size(): number {
    return this.workers.length;
  }

  /** Run one job on every worker; jobs from concurrent calls wait their turn. */
  run(job: Job): Promise<void> {
    const next = this.queue.then(() => this.runNow(job));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private runNow(job: Job): Promise<void> {
    const counter = new SharedArrayBuffer(4);
    return new Promise<void>((resolve, reject) => {
      let pending = this.workers.length;
      let failure: Error | undefined;
      const cleanups: (() => void)[] = [];
      const finish = (error?: Error) => {
        failure ??= error;
        if (--pending > 0) return;
        for (const c of cleanups) c();
        if (failure) reject(failure);
        else resolve();
      };
      this.workers.forEach((w, i) => {
        const onMessage = (reply: WorkerReply) => finish(reply.ok ? undefined : new Error(`cpu worker: ${reply.message}`));
        const onError = (e: Error) => finish(e);
        w.once('message', onMessage);
        w.once('error', onError);
        cleanups.push(() => {
          w.off('message', onMessage);
          w.off('error', onError);
          w.unref();
        });
        w.ref();
        const request: WorkerRequest = { job, counter, scratch: job.scratch[i] };
        w.postMessage(request);
      });
    });
  }
}

let pool: Promise<Pool | undefined> | undefined;

async function createPool(): Promise<Pool | undefined> {
  if (typeof SharedArrayBuffer !== 'function') return undefined;
  try {
    const { Worker } = await import('node:worker_threads');
    const { availableParallelism } = await import('node:os');
    const n = Math.min(availableParallelism(), 16);
    if (n < 2) return undefined;
    const url = new URL('./worker.js', import.meta.url);
    const workers = Array.from({ length: n }, () => {
      const w = new Worker(url);
      w.unref();
      return w;
    });
    return new Pool(workers);
  } catch {
    return undefined; // no worker threads here: run inline
  }
}

/** Jobs smaller than this many multiply-adds run inline: a round trip to the workers costs more. */
const INLINE_WORK = 1 << 21;

/** Threads a job of `work` multiply-adds will be split over (1: inline on this thread). */
export async function threadsFor(work: number): Promise<number> {
  const p = await (pool ??= createPool());
  return p && work >= INLINE_WORK ? p.size : 1;
}

/** Run a job on the pool when it has one scratch buffer per worker, else inline on this thread. */
export async function runJob(job: Job): Promise<void> {
  const p = await (pool ??= createPool());
  if (p && job.scratch.length === p.size && p.size > 1) return p.run(job);
  runTasks(job, new Int32Array(1), new Float64Array(job.scratch[0]));
}
