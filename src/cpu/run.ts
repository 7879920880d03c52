/**
 * Running a job's tasks: the same loop in a worker thread and inline on the calling thread. Tasks are
 * handed out through shared counters (Atomics), so threads that finish early take the next task: one
 * counter for all, or with job.lanes one per thread, each thread running a run of consecutive tasks of
 * its own before it helps the others.
 */
import { decodeTask, type DecodeArrays } from './decode.js';
import { backwardTask, forwardTask, type BackwardArrays, type ForwardArrays } from './flash.js';
import { LANE_BYTES, views, type Job } from './job.js';
import { wasmBackward, wasmDecode, wasmForward } from './wasm/index.js';
import { linearTask, type LinearArrays } from './linear.js';
import { wasmLinearKernel } from './wasm/linear.js';
import { standardBackwardTask, standardForwardTask, type StandardBackwardArrays, type StandardForwardArrays } from './standard.js';

/** The task function of a job: task t of its kernel, run with the given arrays and scratch. */
function taskOf(job: Job, scratch: Float64Array): (t: number) => void {
  const a = views(job);
  if (job.kernel === 'linear') {
    const s = job.shape;
    const kernel = wasmLinearKernel(s); // the WebAssembly micro-kernel where it runs: the same bits as JavaScript's
    return (t) => linearTask(s, a as unknown as LinearArrays, t, scratch, kernel);
  }
  if (job.kernel === 'decode') {
    const s = job.shape;
    const wasm = !s.js && wasmDecode(s, a as unknown as DecodeArrays);
    return wasm || ((t) => decodeTask(s, a as unknown as DecodeArrays, t, scratch));
  }
  const s = job.shape;
  // The WebAssembly kernels where they run (every variant too), unless setCpuKernels('js') chose flash.ts's.
  const wasm =
    !s.js &&
    (job.kernel === 'flashForward'
      ? wasmForward(s, a as unknown as ForwardArrays)
      : job.kernel === 'flashBackward' && wasmBackward(s, a as unknown as BackwardArrays));
  if (wasm) return wasm;
  return {
    flashForward: (t: number) => forwardTask(s, a as unknown as ForwardArrays, t, scratch),
    flashBackward: (t: number) => backwardTask(s, a as unknown as BackwardArrays, t, scratch),
    standardForward: (t: number) => standardForwardTask(s, a as unknown as StandardForwardArrays, t, scratch),
    standardBackward: (t: number) => standardBackwardTask(s, a as unknown as StandardBackwardArrays, t, scratch),
  }[job.kernel];
}

/** The counters of a job's lanes: lane i's at element i · LANE_BYTES / 4 of the counter region. */
export function laneCounters(job: Job, lanes: number): Int32Array {
  const c = job.counter;
  return new Int32Array(c.buffer, c.byteOffset, ((lanes - 1) * LANE_BYTES) / 4 + 1);
}

/** The first task of lane i of n (the lanes split the tasks into runs of consecutive tasks, as even as can be). */
export function laneStart(tasks: number, i: number, n: number): number {
  return Math.floor((i * tasks) / n);
}

/** Set the counters of a job about to run on `lanes` threads: each lane's at its first task (one lane without job.lanes). */
export function resetCounters(job: Job, lanes: number): void {
  const n = job.lanes ? lanes : 1;
  const c = laneCounters(job, n);
  for (let i = 0; i < n; i++) Atomics.store(c, (i * LANE_BYTES) / 4, laneStart(job.tasks, i, n));
}

/**
 * Run tasks with the given scratch until none is left: without job.lanes, tasks taken in order from one
 * counter; with them, thread `lane` of `lanes` takes the tasks of its own lane in order, then those of the
 * lane with the most left (from its front, so the lane's last tasks, the smallest of a causal head, are
 * still the last), until every lane is empty. The counters are set by resetCounters.
 */
export function runTasks(job: Job, lane: number, lanes: number, scratch: Float64Array): void {
  const task = taskOf(job, scratch);
  const n = job.lanes ? lanes : 1;
  const c = laneCounters(job, n);
  const stride = LANE_BYTES / 4;
  let i = n > 1 ? lane : 0;
  while (i >= 0) {
    const end = laneStart(job.tasks, i + 1, n);
    for (let t = Atomics.add(c, i * stride, 1); t < end; t = Atomics.add(c, i * stride, 1)) task(t);
    i = -1;
    let most = 0;
    for (let j = 0; j < n; j++) {
      const left = laneStart(job.tasks, j + 1, n) - Atomics.load(c, j * stride);
      if (left > most) [i, most] = [j, left];
    }
  }
}
