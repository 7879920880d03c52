/**
 * GPU time of submitted work, for benchmarks. A GpuTimer puts marks into the device's queue; `finish()`
 * gives the milliseconds between consecutive marks. With the adapter feature 'timestamp-query', a mark is
 * a one-workgroup compute pass of an empty kernel, submitted on its own, with an end-of-pass timestamp
 * write: the GPU writes that timestamp once the commands ahead of it in the queue have finished, so two
 * marks bracket exactly the GPU work submitted between them (plus any time the GPU sat idle waiting for
 * the host to submit it; callers amortise that by submitting several calls between two marks). Without
 * the feature a mark waits for `queue.onSubmittedWorkDone()` and reads the wall clock, which adds the
 * callback's latency to every interval. `method` says which one a timer uses.
 */

export type GpuTimerMethod = 'timestamp-query' | 'onSubmittedWorkDone';

/** Most marks between start() and finish() (the query set's size). */
export const MAX_MARKS = 16;

const EMPTY_KERNEL = '@compute @workgroup_size(1) fn main() {}';

export class GpuTimer {
  readonly method: GpuTimerMethod;
  private readonly device: GPUDevice;
  private readonly stamps?: { querySet: GPUQuerySet; resolve: GPUBuffer; read: GPUBuffer; pipeline: GPUComputePipeline };
  private wallMarks: number[] = [];
  private marks = 0;

  /** A timer on `device`: timestamp queries where the device was created with 'timestamp-query'. */
  constructor(device: GPUDevice) {
    this.device = device;
    this.method = device.features.has('timestamp-query') ? 'timestamp-query' : 'onSubmittedWorkDone';
    if (this.method === 'timestamp-query') {
      const bytes = 8 * MAX_MARKS;
      this.stamps = {
        querySet: device.createQuerySet({ type: 'timestamp', count: MAX_MARKS, label: 'GpuTimer marks' }),
        resolve: device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC, label: 'GpuTimer resolve' }),
        read: device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'GpuTimer read' }),
        pipeline: device.createComputePipeline({
          layout: 'auto',
          compute: { module: device.createShaderModule({ code: EMPTY_KERNEL, label: 'GpuTimer mark' }), entryPoint: 'main' },
          label: 'GpuTimer mark',
        }),
      };
    }
  }

  /** Wait until the queue is idle (earlier work is not timed), then put the first mark. */
  async start(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
    this.marks = 0;
    this.wallMarks = [];
    await this.mark();
  }

  /** Put a mark after everything submitted so far. */
  async mark(): Promise<void> {
    if (this.marks >= MAX_MARKS) throw new RangeError(`GpuTimer: at most ${MAX_MARKS} marks between start() and finish()`);
    const index = this.marks++;
    if (!this.stamps) {
      await this.device.queue.onSubmittedWorkDone();
      this.wallMarks.push(performance.now());
      return;
    }
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass({ timestampWrites: { querySet: this.stamps.querySet, endOfPassWriteIndex: index } });
    pass.setPipeline(this.stamps.pipeline);
    pass.dispatchWorkgroups(1);
    pass.end();
    this.device.queue.submit([enc.finish()]);
  }

  /** Milliseconds between consecutive marks since start() (one fewer than the marks). */
  async finish(): Promise<number[]> {
    const n = this.marks;
    if (!this.stamps) return this.wallMarks.slice(1).map((t, i) => t - this.wallMarks[i]);
    const { querySet, resolve, read } = this.stamps;
    const enc = this.device.createCommandEncoder();
    enc.resolveQuerySet(querySet, 0, n, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, 8 * n);
    this.device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ, 0, 8 * n);
    const ns = new BigUint64Array(read.getMappedRange(0, 8 * n).slice(0));
    read.unmap();
    return Array.from({ length: n - 1 }, (_, i) => Number(ns[i + 1] - ns[i]) / 1e6);
  }

  /** Free the timer's query set and buffers. */
  destroy(): void {
    this.stamps?.querySet.destroy();
    this.stamps?.resolve.destroy();
    this.stamps?.read.destroy();
  }
}
