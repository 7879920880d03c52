/**
 * The benchmark's clocks: marks around the work of a timed sample, and the milliseconds between them.
 * On the cpu the work is done when a call returns, so the wall clock is exact; on webgpu a GpuTimer
 * (src/webgpu/timer.ts) measures what the GPU did, with timestamp queries where the adapter has them.
 */
import { GpuTimer } from '../webgpu/timer.js';
import type { TimerMethod } from './results.js';

export interface Clock {
  readonly method: TimerMethod;
  /** Begin a sample: the first mark. */
  start(): Promise<void>;
  /** A mark after the work done (or submitted, on a GPU) so far. */
  mark(): Promise<void>;
  /** Milliseconds between consecutive marks since start(). */
  finish(): Promise<number[]>;
}

/** performance.now() at each mark. */
export class WallClock implements Clock {
  readonly method = 'wall-clock';
  private marks: number[] = [];

  async start(): Promise<void> {
    this.marks = [performance.now()];
  }

  async mark(): Promise<void> {
    this.marks.push(performance.now());
  }

  async finish(): Promise<number[]> {
    return this.marks.slice(1).map((t, i) => t - this.marks[i]);
  }
}

/** The clock for a backend: a GpuTimer on the benchmark's device for webgpu, else the wall clock. */
export function clockFor(device: GPUDevice | undefined): Clock {
  return device ? new GpuTimer(device) : new WallClock();
}
