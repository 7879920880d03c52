// Plain and causal prefill timings through the public API on GPUBuffers, for a before/after comparison of
// two builds on the GPU machine: node bench/variants/before-after.mjs <dist folder> (a build of another
// commit: git worktree add /tmp/old <commit> && (cd /tmp/old && npx tsc -p .), its dist copied into an
// ignored folder and carried along). Run the builds alternately: the first runs after the machine starts
// are slower. B=1 H=16 N=4096, D 64 and 128, f16 and f32, causal or not; GPU timestamps, median of 7 × 3.
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
const dist = process.argv[2];
const load = (file) => import(pathToFileURL(resolve(dist, file)).href);
const { forward, backward, encodeF16 } = await load('src/index.js');
const { defaultGpu } = await load('src/webgpu/device.js');
const { GpuTimer } = await load('src/webgpu/timer.js');
const gpu = await defaultGpu();
function rand(n, seed) { let s = seed >>> 0; const out = new Float32Array(n); for (let i = 0; i < n; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; out[i] = s / 2 ** 32 - 0.5; } return out; }
function upload(dtype, n, seed, shape) {
  const base = rand(Math.min(n, 1 << 20), seed);
  const f = new Float32Array(n); for (let i = 0; i < n; i += base.length) f.set(base.subarray(0, Math.min(base.length, n - i)), i);
  const data = dtype === 'f16' ? encodeF16(f) : f;
  const buffer = gpu.device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  gpu.device.queue.writeBuffer(buffer, 0, data);
  return { data: buffer, dtype, shape };
}
async function time(run, R = 3) {
  await run(); await gpu.device.queue.onSubmittedWorkDone();
  const timer = new GpuTimer(gpu.device); const ms = [];
  for (let rep = 0; rep < 7; rep++) { await timer.start(); for (let i = 0; i < R; i++) await run(); await timer.mark(); await gpu.device.queue.onSubmittedWorkDone(); ms.push((await timer.finish())[0] / R); }
  timer.destroy(); ms.sort((a, b) => a - b); return ms[3];
}
const [B, H, N] = [1, 16, 4096];
for (const D of [64, 128]) for (const dtype of ['f16', 'f32']) for (const causal of [false, true]) {
  const shape = [B, N, H, D]; const n = B * N * H * D;
  const [q, k, v, dout] = [1, 2, 3, 4].map((s) => upload(dtype, n, s, shape));
  const o = { causal };
  const fwd = await time(async () => { const r = await forward(q, k, v, o); r.out.data.destroy(); r.lse.data.destroy(); });
  const r = await forward(q, k, v, o);
  const bwd = await time(async () => { const g = await backward(dout, q, k, v, r.out, r.lse, o); g.dq.data.destroy(); g.dk.data.destroy(); g.dv.data.destroy(); });
  console.log(`${dist.padEnd(14)} D=${D} ${dtype} causal=${String(causal).padEnd(5)} forward ${fwd.toFixed(3)} ms  backward ${bwd.toFixed(3)} ms`);
  for (const t of [q, k, v, dout, r.out, r.lse]) t.data.destroy();
}
