/**
 * The cpu backend's threads in a browser: module Web Workers running worker.ts, in a page that is
 * cross-origin isolated (`crossOriginIsolated`: served with `Cross-Origin-Opener-Policy: same-origin` and
 * `Cross-Origin-Embedder-Policy: require-corp`), where SharedArrayBuffer exists and the workers can share
 * the job's memory. Elsewhere `webWorkers` gives the reason, and the pool runs jobs on the page's thread.
 * Each Web Worker is wrapped to look like the part of Node's worker_threads Worker that pool.ts uses.
 */
import type { PoolWorker } from './pool.js';
import type { WorkerReady, WorkerReply, WorkerRequest } from './worker.js';

/** What this module uses of a browser's Worker (the DOM's types are not in this build's lib). */
interface WebWorker {
  addEventListener(type: 'message' | 'error', listener: (event: WebEvent) => void): void;
  removeEventListener(type: 'message' | 'error', listener: (event: WebEvent) => void): void;
  postMessage(message: WorkerRequest): void;
  terminate(): void;
}
interface WebEvent {
  data?: unknown;
  message?: string;
}
type WorkerConstructor = new (url: URL, options: { type: 'module' }) => WebWorker;

/** How long workers may take to load their module before the pool gives up on them. */
const START_MS = 30_000;

/** A Web Worker as a PoolWorker: 'message' listeners get the data; 'error' ones an Error. */
class WebThread implements PoolWorker {
  private readonly wrapped = new Map<unknown, (event: WebEvent) => void>();

  constructor(private readonly worker: WebWorker) {}

  on<T>(event: 'message' | 'error', listener: (value: T) => void): void {
    this.listen(event, listener, false);
  }

  once<T>(event: 'message' | 'error', listener: (value: T) => void): void {
    this.listen(event, listener, true);
  }

  off<T>(event: 'message' | 'error', listener: (value: T) => void): void {
    const wrap = this.wrapped.get(listener);
    if (!wrap) return;
    this.worker.removeEventListener(event, wrap);
    this.wrapped.delete(listener);
  }

  private listen<T>(event: 'message' | 'error', listener: (value: T) => void, once: boolean): void {
    const wrap = (e: WebEvent) => {
      if (once) this.off(event, listener);
      listener((event === 'message' ? e.data : new Error(e.message || 'a Web Worker failed')) as T);
    };
    this.wrapped.set(listener, wrap);
    this.worker.addEventListener(event, wrap);
  }

  postMessage(message: WorkerRequest): void {
    this.worker.postMessage(message);
  }

  // A Web Worker never keeps a page alive: nothing to ref or unref.
  ref(): void {}
  unref(): void {}

  terminate(): void {
    this.worker.terminate();
  }
}

/** Threads a page can have: `n` started Web Workers, or none and why. */
export async function webWorkers(): Promise<{ workers: PoolWorker[]; wasm: WorkerReady['wasm'] } | { workers: undefined; reason: string }> {
  const g = globalThis as unknown as { Worker?: WorkerConstructor; crossOriginIsolated?: boolean; navigator?: { hardwareConcurrency?: number } };
  if (typeof g.Worker !== 'function') return { workers: undefined, reason: 'this runtime has no Web Workers' };
  if (g.crossOriginIsolated !== true || typeof SharedArrayBuffer !== 'function') {
    return {
      workers: undefined,
      reason:
        'the page is not cross-origin isolated (crossOriginIsolated is not true, so workers cannot share memory): ' +
        'serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp',
    };
  }
  const n = Math.min(g.navigator?.hardwareConcurrency ?? 1, 16);
  if (n < 2) return { workers: undefined, reason: `navigator.hardwareConcurrency is ${n}: one thread` };
  const Worker = g.Worker;
  const started: WebWorker[] = [];
  try {
    // The literal `new Worker(new URL('./worker.js', import.meta.url), { type: 'module' })` is what bundlers
    // (Vite, webpack, esbuild's plugins) recognise and emit the worker's module for.
    for (let i = 0; i < n; i++) started.push(new Worker(new URL('./worker.js', import.meta.url), { type: 'module' }));
    const ready = await Promise.all(started.map((w) => readyOf(w)));
    return { workers: started.map((w) => new WebThread(w)), wasm: ready[0].wasm };
  } catch (e) {
    for (const w of started) w.terminate();
    return { workers: undefined, reason: `Web Workers did not start: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/** The worker's ready message, or an error if it fails to load or says nothing within START_MS. */
function readyOf(w: WebWorker): Promise<WorkerReady> {
  return new Promise<WorkerReady>((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      w.removeEventListener('message', onMessage);
      w.removeEventListener('error', onError);
    };
    const onMessage = (e: WebEvent) => {
      done();
      const m = e.data as WorkerReady | WorkerReply;
      if ('ready' in m) resolve(m);
      else reject(new Error('a worker answered before it was ready'));
    };
    const onError = (e: WebEvent) => {
      done();
      reject(new Error(e.message || 'its module did not load (is worker.js served beside pool.js?)'));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no answer in ${START_MS / 1000} s`));
    }, START_MS);
    w.addEventListener('message', onMessage);
    w.addEventListener('error', onError);
  });
}
