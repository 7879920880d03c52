/**
 * Worker entry: runs the tasks of each job it is sent, then reports done (or the error). The same module
 * is a Node worker thread (pool.ts) and a browser's module Web Worker (web-workers.ts); a Web Worker first
 * says it is ready, with the WebAssembly SIMD its runtime has (the forward's kernels, src/cpu/wasm).
 */
import type { Job, Region } from './job.js';
import { runTasks } from './run.js';
import { wasmSupport } from './wasm/index.js';

export interface WorkerRequest {
  job: Job;
  /** This worker's scratch (f64). */
  scratch: Region;
  /** This worker's lane, of job.scratch.length (run.ts). */
  lane: number;
}

export type WorkerReply = { ok: true } | { ok: false; message: string };

/** A Web Worker's first message, once its module has loaded. */
export interface WorkerReady {
  ready: true;
  wasm: ReturnType<typeof wasmSupport>;
}

function run({ job, scratch: s, lane }: WorkerRequest): WorkerReply {
  try {
    runTasks(job, lane, job.scratch.length, new Float64Array(s.buffer, s.byteOffset, s.byteLength / 8));
    return { ok: true };
  } catch (e) {
    return { ok: false, message: e instanceof Error ? `${e.message}\n${e.stack}` : String(e) };
  }
}

/** What this module uses of a Web Worker's global scope (the DOM's types are not in this build's lib). */
interface WorkerScope {
  onmessage: ((event: { data: WorkerRequest }) => void) | null;
  postMessage(message: WorkerReply | WorkerReady): void;
}

if (typeof process === 'object' && process.versions?.node) {
  const { parentPort } = await import('node:worker_threads');
  parentPort!.on('message', (request: WorkerRequest) => parentPort!.postMessage(run(request)));
} else {
  // No await before the handler is set: a Web Worker may be sent a job as soon as it has said it is ready.
  const scope = globalThis as unknown as WorkerScope;
  scope.onmessage = ({ data }) => scope.postMessage(run(data));
  scope.postMessage({ ready: true, wasm: wasmSupport() });
}
