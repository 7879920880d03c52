/**
 * Where a forward call's host time goes on the GPU machine (`bash .gpu/enter.sh node
 * dist/bench/variants/probe-call.js`): B=32, H=16, N=512, D=128, f16, GPU-resident tensors (the product
 * grid's smallest case, whose bench time per call sat at a floor of about 3 ms at every N ≤ 1024).
 * Prints the wall time per call of 50 forwards awaited one after another, the GPU time of the same 50
 * (GpuTimer), and the host costs suspected: a 16 MiB output buffer made and destroyed, an error scope
 * pushed and popped with the queue idle, and one popped right after a submission of 10 forwards' work.
 */
import { forward, type GpuTensor } from '../../src/index.js';
import { defaultGpu } from '../../src/webgpu/device.js';
import { GpuTimer } from '../../src/webgpu/timer.js';
import { randomF16 } from './util.js';

const gpu = await defaultGpu();
const { device } = gpu;
console.log(`${new Date().toISOString()} ${gpu.description}`);
const shape = process.env.PROBE_SMALL ? [1, 64, 2, 32] : [32, 512, 16, 128];
const n = shape.reduce((a, b) => a * b, 1);
const input = (seed: number): GpuTensor => {
  const data = device.createBuffer({ size: 2 * n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  device.queue.writeBuffer(data, 0, randomF16(n, seed));
  return { data, dtype: 'f16', shape };
};
const [q, k, v] = [input(1), input(2), input(3)];
const call = async () => {
  const r = await forward(q, k, v, { backend: 'webgpu' });
  r.out.data.destroy();
  r.lse.data.destroy();
};
const R = 50;
const perCall = async (f: () => Promise<void>) => {
  await device.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  for (let i = 0; i < R; i++) await f();
  const host = (performance.now() - t0) / R;
  await device.queue.onSubmittedWorkDone();
  return { host, all: (performance.now() - t0) / R };
};
for (let i = 0; i < 20; i++) await call();
for (let rep = 0; rep < 3; rep++) {
  const w = await perCall(call);
  const timer = new GpuTimer(device);
  await timer.start();
  for (let i = 0; i < R; i++) await call();
  await timer.mark();
  const [gpuMs] = await timer.finish();
  console.log(`forward: host ${w.host.toFixed(3)} ms per call, until the queue is done ${w.all.toFixed(3)}; GpuTimer ${(gpuMs / R).toFixed(3)} ms per call`);
}
const buffers = await perCall(async () => device.createBuffer({ size: 2 * n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC }).destroy());
console.log(`16 MiB buffer made and destroyed: ${buffers.host.toFixed(3)} ms`);
const scope = await perCall(async () => {
  device.pushErrorScope('validation');
  await device.popErrorScope();
});
console.log(`error scope, queue idle: ${scope.host.toFixed(3)} ms`);
await device.queue.onSubmittedWorkDone();
const pending = [];
for (let i = 0; i < 10; i++) pending.push(forward(q, k, v, { backend: 'webgpu' }));
const t0 = performance.now();
device.pushErrorScope('validation');
await device.popErrorScope();
const popped = performance.now() - t0;
for (const r of await Promise.all(pending)) (r.out.data.destroy(), r.lse.data.destroy());
await device.queue.onSubmittedWorkDone();
console.log(`error scope behind 10 forwards: ${popped.toFixed(3)} ms; the queue done ${(performance.now() - t0).toFixed(3)} ms after the push`);
process.exit(0);
