// Lab notebook: where the cpu forward's time goes. Runs forward() on the cpu backend `calls` times
// (B=1, H=8, D=64, f32, non-causal) and prints each call's time; run it under --cpu-prof, then this file
// with --summary on the profiles' folder: each thread's share of samples per function (the worker threads'
// wasm-function[1] is the forward module's qk, [2] softmax, [3] pv: forward-module.ts's order, after the
// imported exp).
// Run: node --cpu-prof --cpu-prof-dir=prof bench/variants/cpu-forward-profile.mjs [N] [calls]
//      node bench/variants/cpu-forward-profile.mjs --summary prof
// Measured 2026-12-05 (bench/results/2026-12-05-cpu-forward-bound.md): N = 4096, 10 calls, both workers
// qk 52 %, pv 29-30 %, softmax 14 %.
import { readdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

if (process.argv[2] === '--summary') {
  const dir = process.argv[3];
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))) {
    const p = JSON.parse(readFileSync(resolve(dir, f), 'utf8'));
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const self = new Map();
    let total = 0;
    p.samples.forEach((id, i) => {
      const { functionName, url, lineNumber } = byId.get(id).callFrame;
      const key = `${functionName || '(anonymous)'} ${url.split('/').pop()}:${lineNumber}`;
      self.set(key, (self.get(key) ?? 0) + p.timeDeltas[i]);
      total += p.timeDeltas[i];
    });
    console.log(`${f}: ${(total / 1e6).toFixed(2)} s`);
    for (const [key, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 8)) console.log(`  ${((100 * t) / total).toFixed(1).padStart(5)} %  ${key}`);
  }
} else {
  const lib = await import(pathToFileURL(resolve('dist/src/index.js')).href);
  const { randomTensor } = await import(pathToFileURL(resolve('dist/test/util.js')).href);
  const N = Number(process.argv[2] ?? 4096);
  const calls = Number(process.argv[3] ?? 10);
  const [H, D] = [8, 64];
  const [q, k, v] = [1, 2, 3].map((seed) => randomTensor('f32', [1, N, H, D], seed));
  const flop = 4 * H * N * N * D;
  for (let i = 0; i < calls; i++) {
    const t = performance.now();
    await lib.forward(q, k, v, { backend: 'cpu' });
    const ms = performance.now() - t;
    console.log(`call ${i + 1}: ${ms.toFixed(0)} ms, ${(flop / ms / 1e6).toFixed(1)} GFLOP/s`);
  }
  process.exit(0);
}
