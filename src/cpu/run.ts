/**
 * Running a job's tasks: the same loop in a worker thread and inline on the calling thread. Tasks are
 * handed out through a shared counter (Atomics), so threads that finish early take the next task.
 */
import { decodeTask, type DecodeArrays } from './decode.js';
import { backwardTask, forwardTask, type BackwardArrays, type ForwardArrays } from './flash.js';
import { views, type Job } from './job.js';
import { wasmBackward, wasmDecode, wasmForward } from './wasm/index.js';
import { linearTask, type LinearArrays } from './linear.js';
import { standardBackwardTask, standardForwardTask, type StandardBackwardArrays, type StandardForwardArrays } from './standard.js';

/** The task function of a job: task t of its kernel, run with the given arrays and scratch. */
function taskOf(job: Job, scratch: Float64Array): (t: number) => void {
  const a = views(job);
  if (job.kernel === 'linear') {
    const s = job.shape;
    return (t) => linearTask(s, a as unknown as LinearArrays, t, scratch);
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

/** Run tasks taken from `counter` until none is left, with the given scratch. */
export function runTasks(job: Job, counter: Int32Array, scratch: Float64Array): void {
  const task = taskOf(job, scratch);
  for (let t = Atomics.add(counter, 0, 1); t < job.tasks; t = Atomics.add(counter, 0, 1)) task(t);
}
