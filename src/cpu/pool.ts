/**
 * The worker pool: one worker thread per core (Node's worker_threads; in a cross-origin isolated browser
 * page, module Web Workers: web-workers.ts), created on first use and kept for later calls. Workers are
 * unref'd between jobs, so an idle pool never keeps a process alive. Where workers are unavailable (a page
 * that is not cross-origin isolated, a runtime without them, or a single core) jobs run inline, on the
 * calling thread; `cpuThreads` says which, and why.
 *
 * Memory. A worker keeps every SharedArrayBuffer it was sent until its own garbage collector runs, and
 * its few allocations seldom make it run (V8 does not count shared memory towards a collection): with
 * new buffers for every call, a process's resident memory climbed by 0.5 GB over a thousand calls of
 * 1.3 MB each. So a call takes its arrays from one workspace (`Arena`), kept and reused from call to
 * call and grown when a call needs more; the workers see no new buffer while the sizes repeat. After
 * IDLE_RELEASE_MS without a call the workspace is dropped and the workers are ended, which frees what
 * they held; the next call starts them again (about 0.3 s on 2 cores).
 */
import { counterBytes, type Job, type Region } from './job.js';
import { resetCounters, runTasks } from './run.js';
import { wasmSupport } from './wasm/index.js';
import type { WorkerReply, WorkerRequest } from './worker.js';

/** A buffer the workers can share; a plain ArrayBuffer where SharedArrayBuffer is unavailable. */
export function sharedBuffer(bytes: number): ArrayBufferLike {
  return typeof SharedArrayBuffer === 'function' ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
}

/** A region covering a whole buffer. */
export function whole(buffer: ArrayBufferLike): Region {
  return { buffer, byteOffset: 0, byteLength: buffer.byteLength };
}

/** What the pool uses of a worker: a subset of Node's worker_threads Worker, which web-workers.ts gives a Web Worker. */
export interface PoolWorker {
  on<T>(event: 'message' | 'error', listener: (value: T) => void): void;
  once<T>(event: 'message' | 'error', listener: (value: T) => void): void;
  off<T>(event: 'message' | 'error', listener: (value: T) => void): void;
  postMessage(message: WorkerRequest): void;
  ref(): void;
  unref(): void;
  terminate(): unknown;
}

/** The cpu backend's threads: how many, on what, and why only one where that is so. */
export interface CpuThreads {
  /** Threads a large call is split over (1: the calling thread alone). */
  threads: number;
  /** 'worker_threads' (Node), 'web-workers' (a cross-origin isolated page), or 'none'. */
  workers: 'worker_threads' | 'web-workers' | 'none';
  /** Why there are no workers, where there are none. */
  reason?: string;
  /** The WebAssembly SIMD the threads run the forward in ('none': its JavaScript kernel), as the workers found it. */
  wasm: 'relaxed' | 'simd' | 'none';
}

let threadsStatus: CpuThreads = { threads: 1, workers: 'none', reason: 'not started yet', wasm: 'none' };

class Pool {
  private queue: Promise<unknown> = Promise.resolve();
  /** The first error a worker raised outside a job (one that could not start, say). */
  private broken: Error | undefined;

  constructor(private readonly workers: PoolWorker[]) {
    for (const w of workers) w.on('error', (e: Error) => (this.broken ??= e));
  }

  get size(): number {
    return this.workers.length;
  }

  /** Run one job on every worker; jobs from concurrent calls wait their turn. */
  run(job: Job, meanwhile?: () => void): Promise<void> {
    const next = this.queue.then(() => this.runNow(job, meanwhile));
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** End the workers (they free everything they held). */
  end(): void {
    for (const w of this.workers) void w.terminate();
  }

  private runNow(job: Job, meanwhile?: () => void): Promise<void> {
    if (this.broken) return Promise.reject(new Error(`cpu worker: ${this.broken.message}`));
    resetCounters(job, this.workers.length);
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
        const request: WorkerRequest = { job, scratch: job.scratch[i], lane: i };
        w.postMessage(request);
      });
      // An error here waits for the workers: the job's memory is theirs until they are done.
      try {
        meanwhile?.();
      } catch (e) {
        failure ??= e instanceof Error ? e : new Error(String(e));
      }
    });
  }
}

let pool: Promise<Pool | undefined> | undefined;

/** The most workers a pool has (one per core up to this). */
const MAX_WORKERS = 16;

/** The pool, or undefined where jobs run inline; threadsStatus says which, and why. */
async function createPool(): Promise<Pool | undefined> {
  const none = (reason: string) => ((threadsStatus = { threads: 1, workers: 'none', reason, wasm: wasmSupport() }), undefined);
  if (!(typeof process === 'object' && process.versions?.node)) {
    const { webWorkers } = await import('./web-workers.js');
    const w = await webWorkers();
    if (!w.workers) return none(w.reason);
    threadsStatus = { threads: w.workers.length, workers: 'web-workers', wasm: w.wasm };
    return new Pool(w.workers);
  }
  if (typeof SharedArrayBuffer !== 'function') return none('SharedArrayBuffer is unavailable');
  try {
    const { Worker } = await import('node:worker_threads');
    const { availableParallelism } = await import('node:os');
    const n = Math.min(availableParallelism(), MAX_WORKERS);
    if (n < 2) return none('one core');
    const url = new URL('./worker.js', import.meta.url);
    let execArgv = workerExecArgv(process.execArgv);
    const start = () => {
      try {
        return new Worker(url, { execArgv });
      } catch (e) {
        // V8's and the process's options (node --max-old-space-size=…, --expose-gc, --title=…) are the
        // process's: a worker refuses them by name, and runs without them.
        const refused = invalidExecArgv(e);
        if (!refused) throw e;
        execArgv = execArgv.filter((a) => !refused.has(a));
        return new Worker(url, { execArgv });
      }
    };
    const workers = Array.from({ length: n }, () => {
      const w = start();
      w.unref();
      return w;
    });
    threadsStatus = { threads: n, workers: 'worker_threads', wasm: wasmSupport() }; // the workers' engine is this one
    return new Pool(workers);
  } catch (e) {
    return none(`no worker threads here (${e instanceof Error ? e.message : String(e)})`);
  }
}

/**
 * The cpu backend's threads (starting its workers if they are not running): in Node, worker threads, one
 * per core; in a browser, Web Workers where the page is cross-origin isolated, else 1 thread and the reason.
 */
export async function cpuThreads(): Promise<CpuThreads> {
  await (pool ??= createPool());
  return { ...threadsStatus };
}

/**
 * The process's Node options for a worker, less those about the process's own entry point (`-e CODE`,
 * `--print`, `--input-type`), which make a worker fail to start (a worker inherits them by default).
 */
export function workerExecArgv(execArgv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const a = execArgv[i];
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print' || a === '--input-type') i++;
    else if (!/^(--eval|--print|--input-type)=/.test(a)) out.push(a);
  }
  return out;
}

/**
 * The options a worker refused (Node's ERR_WORKER_INVALID_EXEC_ARGV names them after a colon, separated
 * by commas), or undefined for any other error.
 */
export function invalidExecArgv(e: unknown): Set<string> | undefined {
  if (!(e instanceof Error) || (e as { code?: unknown }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') return undefined;
  const colon = e.message.indexOf(':');
  return colon < 0 ? undefined : new Set(e.message.slice(colon + 1).split(',').map((a) => a.trim()).filter((a) => a));
}

/** Jobs smaller than this many multiply-adds run inline: a round trip to the workers costs more. */
const INLINE_WORK = 1 << 21;

/** Threads a job of `work` multiply-adds will be split over (1: inline on this thread). */
export async function threadsFor(work: number): Promise<number> {
  const p = await (pool ??= createPool());
  return p && work >= INLINE_WORK ? p.size : 1;
}

/**
 * Run a job on the pool when it has one scratch region per worker, else inline on this thread.
 * `meanwhile` runs on this thread once the workers have the job (inline: before it), for work of the
 * call's own that needs no result of the job; where it throws, the job's promise rejects when the job is done.
 */
export async function runJob(job: Job, meanwhile?: () => void): Promise<void> {
  const p = await (pool ??= createPool());
  if (p && job.scratch.length === p.size && p.size > 1) return p.run(job, meanwhile);
  meanwhile?.();
  const s = job.scratch[0];
  resetCounters(job, 1);
  runTasks(job, 0, 1, new Float64Array(s.buffer, s.byteOffset, s.byteLength / 8));
}

/** How long the pool may sit idle before its workspace is dropped and its workers are ended. */
export const IDLE_RELEASE_MS = 10_000;

/** Regions start at multiples of this many bytes (a cache line; f64 views need 8). */
const ALIGN = 64;
const aligned = (bytes: number) => Math.ceil(bytes / ALIGN) * ALIGN;

/** The workspace kept between calls, whether a call has it now, and the calls holding an arena. */
let workspace: ArrayBufferLike | undefined;
let workspaceTaken = false;
let open = 0;
let idle: ReturnType<typeof setTimeout> | undefined;

/**
 * Zero `bytes` of a buffer from `byteOffset` (a multiple of 8): eight bytes a store, then the rest one by
 * one. On shared memory a byte-wise fill ran 8× slower (0.29 against 0.037 ms a MiB on 2 cores).
 */
function zero(buffer: ArrayBufferLike, byteOffset: number, bytes: number): void {
  const words = Math.floor(bytes / 8);
  new Float64Array(buffer, byteOffset, words).fill(0);
  new Uint8Array(buffer, byteOffset + words * 8, bytes - words * 8).fill(0);
}

/**
 * One call's memory: regions of the workspace, zeroed as a new buffer is (unless the caller fills them
 * itself: zeroing the workspace's 8 MiB of inputs and outputs at N = 1024, H = 8, D = 64 took 0.6 ms
 * before each forward, the workers idle). A call that runs while another holds the workspace gets a
 * buffer of its own. `close` gives the workspace back.
 */
export class Arena {
  private at = 0;
  private closed = false;

  private constructor(
    private readonly buffer: ArrayBufferLike,
    private readonly kept: boolean,
  ) {}

  /**
   * An arena for regions of the given sizes (their sum, each aligned). Throws the engine's RangeError where
   * the machine cannot make the buffer.
   */
  static open(sizes: readonly number[]): Arena {
    const bytes = sizes.reduce((a, b) => a + aligned(b), counterBytes(MAX_WORKERS)); // and the job's task counters
    if (idle !== undefined) clearTimeout(idle);
    idle = undefined;
    let arena: Arena;
    if (workspaceTaken) {
      arena = new Arena(sharedBuffer(bytes), false);
    } else {
      // Grown by half again at least, so that slowly growing calls do not leave a trail of buffers behind.
      if (!workspace || workspace.byteLength < bytes) workspace = sharedBuffer(Math.max(bytes, Math.floor((workspace?.byteLength ?? 0) * 1.5)));
      arena = new Arena(workspace, true);
      workspaceTaken = true;
    }
    open++;
    return arena;
  }

  /**
   * The next region of `bytes`, zeroed unless `zeroed` is false: then it holds what an earlier call left
   * there, for a caller that fills it before anything reads it (or zeroes it later, see `zero`).
   */
  take(bytes: number, zeroed = true): Region {
    const region = { buffer: this.buffer, byteOffset: this.at, byteLength: bytes };
    this.at += aligned(bytes);
    if (this.at > this.buffer.byteLength) throw new RangeError(`arena: ${this.at} bytes taken of ${this.buffer.byteLength}`);
    if (zeroed) this.zero(region);
    return region;
  }

  /** Zero a region taken unzeroed (a new buffer is zero already). */
  zero(region: Region): void {
    if (this.kept) zero(this.buffer, region.byteOffset, region.byteLength);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.kept) workspaceTaken = false;
    if (--open === 0) {
      idle = setTimeout(releaseIdle, IDLE_RELEASE_MS);
      idle.unref?.();
    }
  }
}

/**
 * Drop the workspace and end the workers, if no call holds an arena (the idle timer's work; tests call
 * it). Returns whether it did.
 */
export async function releaseIdle(): Promise<boolean> {
  if (open > 0) return false;
  idle = undefined;
  workspace = undefined;
  const p = pool;
  pool = undefined;
  (await p)?.end();
  return true;
}

/** Bytes of the workspace kept now (0 after an idle release). */
export function workspaceBytes(): number {
  return workspace?.byteLength ?? 0;
}
