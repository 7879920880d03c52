// Lab notebook: the first calls of a process on the cpu backend's WebAssembly forward, each on its own, with
// a pause before it (as the side-by-side bench, bench/peers/cpu-peers.mjs, times one call after others have
// run): GFLOP/s of call 1 (the workers start, the modules compile), call 2, and so on. V8 compiles WebAssembly
// first with its baseline compiler (Liftoff) and moves hot functions to the optimizing one (TurboFan) in the
// background as they run; V8_FLAGS (e.g. '--no-liftoff': every function optimized before its first call) is
// passed to v8.setFlagsFromString before the library loads, for measurement only (the library sets no flags).
//   node bench/variants/cpu-first-calls.mjs [N, 1024] [calls, 10] [pause ms, 200]
//   V8_FLAGS=--no-liftoff node bench/variants/cpu-first-calls.mjs
// B=1 H=8 D=64 f32 BNHD; GFLOP/s = 4·N²·D·H / wall time. Used for bench/results/2026-12-05-cpu-first-calls.md.
import v8 from 'node:v8';

if (process.env.V8_FLAGS) v8.setFlagsFromString(process.env.V8_FLAGS);
const [Ns = '1024', callsS = '10', pauseS = '200'] = process.argv.slice(2);
const [N, calls, pause] = [Number(Ns), Number(callsS), Number(pauseS)];
const lib = await import('../../dist/src/index.js');
const { randomTensor } = await import('../../dist/test/util.js');
const shape = [1, N, 8, 64];
const [q, k, v] = [1, 2, 3].map((seed) => randomTensor('f32', shape, seed));
const flops = 4 * N * N * 8 * 64;
const rates = [];
for (let i = 0; i < calls; i++) {
  await new Promise((r) => setTimeout(r, pause));
  const t0 = performance.now();
  await lib.forward(q, k, v, { backend: 'cpu' });
  rates.push(flops / (performance.now() - t0) / 1e6);
}
console.log(`N=${N} ${process.env.V8_FLAGS ?? '(default flags)'}: ${rates.map((r) => r.toFixed(1)).join(' ')} GFLOP/s, calls 1..${calls}`);
process.exit(0);
