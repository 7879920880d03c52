/**
 * Running a job's tasks: the same loop in a worker thread and inline on the calling thread. Tasks are
 * handed out through a shared counter (Atomics), so threads that finish early take the next task.
 */
import { backwardTask, forwardTask, type BackwardArrays, type ForwardArrays } from './flash.js';
import { views, type Job } from './job.js';
import { standardBackwardTask, standardForwardTask, type StandardBackwardArrays, type StandardForwardArrays } from './standard.js';

/** Run tasks taken from `counter` until none is left, with the given scratch. */
export function runTasks(job: Job, counter: Int32Array, scratch: Float64Array): void {
  const a = views(job);
  const s = job.shape;
  const task = {
    flashForward: (t: number) => forwardTask(s, a as unknown as ForwardArrays, t, scratch),
    flashBackward: (t: number) => backwardTask(s, a as unknown as BackwardArrays, t, scratch),
    standardForward: (t: number) => standardForwardTask(s, a as unknown as StandardForwardArrays, t, scratch),
    standardBackward: (t: number) => standardBackwardTask(s, a as unknown as StandardBackwardArrays, t, scratch),
  }[job.kernel];
  for (let t = Atomics.add(counter, 0, 1); t < job.tasks; t = Atomics.add(counter, 0, 1)) task(t);
}
