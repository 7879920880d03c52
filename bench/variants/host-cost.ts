/**
 * Lab notebook: what one decode call costs the host, on any adapter. Tiny problems (Nq = 1, f16, D = 64,
 * few keys) so that the GPU's work is small beside the host's: for each way of calling, the host's wall
 * time per call over CALLS back-to-back calls (the loop awaits each call, as a decode loop does), the
 * time until the queue is idle, and the process's CPU time per call (on a software adapter such as
 * lavapipe that includes the GPU's work, which runs on the CPU).
 * Ways: forward() on GPUBuffer tensors with new outputs (destroyed once queued), forward() with the
 * caller's out and lse (options.out / options.lse), and a KV cache call with the caller's out and lse.
 * Run: node dist/bench/variants/host-cost.js [--keys 32] [--calls 300] [--rounds 3]
 */
import { createKVCache, forward, type GpuTensor } from '../../src/index.js';
import { defaultGpu } from '../../src/webgpu/device.js';
import { randomF16 } from './util.js';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};
const Nk = arg('--keys', 32);
const CALLS = arg('--calls', 300);
const ROUNDS = arg('--rounds', 3);
const [B, H, Hkv, D] = [1, 4, 1, 64];

const gpu = await defaultGpu();
const device = gpu.device;
const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const tensorOf = (shape: number[], seed: number, dtype: 'f16' | 'f32' = 'f16'): GpuTensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  const bytes = Math.ceil((n * (dtype === 'f16' ? 2 : 4)) / 4) * 4;
  const data = device.createBuffer({ size: bytes, usage });
  if (dtype === 'f16') device.queue.writeBuffer(data, 0, randomF16(bytes / 2, seed));
  return { data, dtype, shape };
};
const q = tensorOf([B, 1, H, D], 1);
const k = tensorOf([B, Nk, Hkv, D], 2);
const v = tensorOf([B, Nk, Hkv, D], 3);
const out = tensorOf([B, 1, H, D], 4);
const lse = tensorOf([B, H, 1], 5, 'f32');
const cache = await createKVCache({ batch: B, kvHeads: Hkv, headDim: D, maxLength: Nk, dtype: 'f16', backend: 'webgpu' });
await cache.append(k, v);

const ways: [string, () => Promise<unknown>][] = [
  [
    'forward(), new outputs',
    async () => {
      const r = await forward(q, k, v);
      (r.out as GpuTensor).data.destroy();
      (r.lse as GpuTensor).data.destroy();
    },
  ],
  ['forward(), options.out / options.lse', () => forward(q, k, v, { out, lse })],
  ['KV cache call, options.out / options.lse', () => cache.forward(q, undefined, undefined, { out, lse })],
];

console.log(`# ${gpu.description}; ${new Date().toISOString()}; node ${process.version}`);
console.log(`# B=${B} H=${H} Hkv=${Hkv} D=${D} Nq=1 Nk=${Nk} f16; ${CALLS} calls a round, ${ROUNDS} rounds, the ways in turn; medians over rounds`);
const results = new Map<string, { host: number[]; idle: number[]; cpu: number[] }>(ways.map(([w]) => [w, { host: [], idle: [], cpu: [] }]));
for (const [, run] of ways) for (let i = 0; i < 20; i++) await run(); // pipelines, kept buffers
for (let round = 0; round < ROUNDS; round++) {
  for (const [way, run] of ways) {
    await device.queue.onSubmittedWorkDone();
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < CALLS; i++) await run();
    const t1 = performance.now();
    await device.queue.onSubmittedWorkDone();
    const t2 = performance.now();
    const cpu = process.cpuUsage(cpu0);
    const r = results.get(way)!;
    r.host.push(((t1 - t0) * 1000) / CALLS);
    r.idle.push(((t2 - t0) * 1000) / CALLS);
    r.cpu.push((cpu.user + cpu.system) / CALLS);
  }
}
const median = (x: number[]) => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)];
for (const [way, r] of results) {
  console.log(
    `${way.padEnd(42)} host ${median(r.host).toFixed(0).padStart(5)} µs/call  until idle ${median(r.idle).toFixed(0).padStart(5)} µs/call  process CPU ${median(r.cpu).toFixed(0).padStart(5)} µs/call`,
  );
}
cache.dispose();
process.exit(0);
