/** Worker-thread entry: runs the tasks of each job it is sent, then reports done (or the error). */
import { parentPort } from 'node:worker_threads';
import type { Job } from './job.js';
import { runTasks } from './run.js';

export interface WorkerRequest {
  job: Job;
  counter: SharedArrayBuffer;
  scratch: ArrayBufferLike;
}

export type WorkerReply = { ok: true } | { ok: false; message: string };

parentPort!.on('message', ({ job, counter, scratch }: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    runTasks(job, new Int32Array(counter), new Float64Array(scratch));
    reply = { ok: true };
  } catch (e) {
    reply = { ok: false, message: e instanceof Error ? `${e.message}\n${e.stack}` : String(e) };
  }
  parentPort!.postMessage(reply);
});
