/** Worker-thread entry: runs the tasks of each job it is sent, then reports done (or the error). */
import { parentPort } from 'node:worker_threads';
import type { Job, Region } from './job.js';
import { runTasks } from './run.js';

export interface WorkerRequest {
  job: Job;
  /** This worker's scratch (f64). */
  scratch: Region;
}

export type WorkerReply = { ok: true } | { ok: false; message: string };

parentPort!.on('message', ({ job, scratch: s }: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    const { counter: c } = job;
    runTasks(job, new Int32Array(c.buffer, c.byteOffset, 1), new Float64Array(s.buffer, s.byteOffset, s.byteLength / 8));
    reply = { ok: true };
  } catch (e) {
    reply = { ok: false, message: e instanceof Error ? `${e.message}\n${e.stack}` : String(e) };
  }
  parentPort!.postMessage(reply);
});
