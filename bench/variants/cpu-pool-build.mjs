// Lab notebook: one build's cpu forward (or backward) through the public API, on the worker pool, calls
// back to back (or with a pause between them), in wall time and this process's CPU time (all threads). For a
// before/after comparison run two builds in turn, A/B/A/B, each in a process of its own:
//   for r in 1 2; do for d in /tmp/old/dist dist; do node bench/variants/cpu-pool-build.mjs $d 1024; done; done
//   (an old build: git archive <commit> src test bench tsconfig.json package.json | tar -x -C /tmp/old, then
//   npx tsc -p /tmp/old; the script loads <dist>/src/index.js and <dist>/test/util.js)
// Arguments: <dist> <N> [causal 0|1] [samples, 15] [pause ms, 0] [backward 0|1]; B=1 H=8 D=64 f32 BNHD.
// A first call (workers started, modules compiled) is not counted. GFLOP/s = 4·N²·D·H (10· for the
// backward) / the median time, halved when causal; GFLOP per CPU-second = the same / the median CPU time.
// EACH=1: also each call's GFLOP/s in wall time, the first call included (a process's first calls: V8 runs
// WebAssembly on its baseline compiler, Liftoff, until it has optimized the hot functions in the background).
// V8_FLAGS (e.g. '--no-liftoff'): passed to v8.setFlagsFromString before the library loads, for measurement
// only (the library sets no flags); whether a flag set at run time reaches the workers' WebAssembly is not
// known: `node --no-liftoff bench/variants/cpu-pool-build.mjs …` sets it for the whole process (the workers
// run with it since 7240c0b).
// Used for bench/results/2026-12-05-cpu1024.md and 2026-12-05-cpu-first-calls.md (round 2).
import v8 from 'node:v8';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

if (process.env.V8_FLAGS) v8.setFlagsFromString(process.env.V8_FLAGS);

const [dist, Ns = '1024', causalS = '0', samplesS = '15', pauseS = '0', bwdS = '0'] = process.argv.slice(2);
const N = Number(Ns);
const causal = causalS === '1';
const samples = Number(samplesS);
const pause = Number(pauseS);
const isBackward = bwdS === '1';
const load = (f) => import(pathToFileURL(resolve(dist, f)).href);
const lib = await load('src/index.js');
const { randomTensor } = await load('test/util.js');
const H = 8;
const D = 64;
const shape = [1, N, H, D];
const [q, k, v, dout] = [1, 2, 3, 4].map((seed) => randomTensor('f32', shape, seed));
const options = { backend: 'cpu', causal };
const f = isBackward ? await lib.forward(q, k, v, options) : undefined;
const call = isBackward ? () => lib.backward(dout, q, k, v, f.out, f.lse, options) : () => lib.forward(q, k, v, options);
let t0 = performance.now();
await call();
const first = performance.now() - t0;
const ms = [];
const cpu = [];
for (let s = 0; s < samples; s++) {
  if (pause > 0) await new Promise((ok) => setTimeout(ok, pause));
  const c0 = process.cpuUsage();
  t0 = performance.now();
  await call();
  ms.push(performance.now() - t0);
  const c = process.cpuUsage(c0);
  cpu.push((c.user + c.system) / 1000);
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const flops = (isBackward ? 10 : 4) * N * N * D * H * (causal ? 0.5 : 1);
const m = median(ms);
const c = median(cpu);
console.log(
  `${dist} N=${N}${causal ? ' causal' : ''}${isBackward ? ' backward' : ''}: median ${m.toFixed(1)} ms (${Math.min(...ms).toFixed(1)}–${Math.max(...ms).toFixed(1)}), ` +
    `${(flops / m / 1e6).toFixed(1)} GFLOP/s; CPU ${c.toFixed(1)} ms a call, ${(c / m).toFixed(2)} CPU/wall, ${(flops / c / 1e6).toFixed(1)} GFLOP per CPU-second`,
);
if (process.env.EACH === '1') {
  const flags = process.env.V8_FLAGS ?? '(default flags)';
  console.log(`  ${flags}, calls 1..${samples + 1}: ${[first, ...ms].map((t) => (flops / t / 1e6).toFixed(1)).join(' ')} GFLOP/s`);
}
process.exit(0);
