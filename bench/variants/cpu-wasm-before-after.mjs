// Lab notebook: the cpu backend's plain and causal WebAssembly forward and backward in two builds, to show
// that a change elsewhere (issue 19: the variants in the WebAssembly kernels) left them as fast as they were.
// One thread, the task functions called directly (no pool), each build's best of 5 in CPU time, the builds
// alternating, so a machine shared with other work disturbs both alike.
// Run: node bench/variants/cpu-wasm-before-after.mjs <dist of the old build> <dist of the new> [N]
//   (an old build: git archive <commit> src tsconfig.json package.json test | tar -x -C /tmp/old, then tsc there)
// Measured 2026-12-04 about 21:10 UTC, main c7b316a (old) against branch wasmvar (new), N = 1024, B=1 H=8 D=64
// f32, two runs: forward 113 / 112 and 115 / 112 ms, backward 267 / 267 and 260 / 268 ms; causal forward
// 63 / 65 and 66 / 65 ms, backward 152 / 150 and 152 / 153 ms: the same within 3 %, both ways (others'
// load about 70 % of the 2-core machine).
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
const builds = [process.argv[2], process.argv[3]];
const load = (d, f) => import(pathToFileURL(resolve(d, f)).href);
const mods = await Promise.all(builds.map(async (d) => ({
  problem: await load(d, 'src/problem.js'), job: await load(d, 'src/cpu/job.js'), wasm: await load(d, 'src/cpu/wasm/index.js'), flash: await load(d, 'src/cpu/flash.js'),
})));
const { randomTensor } = await load(builds[1], 'test/util.js');
const N = Number(process.argv[4] ?? 1024), H = 8, D = 64;
const q = randomTensor('f32', [1, N, H, D], 1), k = randomTensor('f32', [1, N, H, D], 2), v = randomTensor('f32', [1, N, H, D], 3), dout = randomTensor('f32', [1, N, H, D], 4);
const cpu = () => { const c = process.cpuUsage(); return (c.user + c.system) / 1000; };
for (const causal of [false, true]) {
  const best = builds.map(() => ({ f: Infinity, b: Infinity }));
  for (let rep = 0; rep < 5; rep++) {
    mods.forEach((m, i) => {
      const s = m.job.cpuShape(m.problem.checkForward(q, k, v, { causal }), 1);
      const a = { q: q.data, k: k.data, v: v.data, out: new Float32Array(q.data.length), lse: new Float32Array(H * N), dout: dout.data, dqPartial: new Float64Array(q.data.length), dk: new Float32Array(k.data.length), dv: new Float32Array(v.data.length) };
      const f = m.wasm.wasmForward(s, a), b = m.wasm.wasmBackward(s, a);
      let t0 = cpu();
      for (let t = 0; t < m.flash.forwardTasks(s); t++) f(t);
      best[i].f = Math.min(best[i].f, cpu() - t0);
      t0 = cpu();
      for (let t = 0; t < m.flash.backwardTasks(s); t++) b(t);
      best[i].b = Math.min(best[i].b, cpu() - t0);
    });
  }
  const fl = 4 * H * N * N * D * (causal ? 0.5 : 1);
  best.forEach((x, i) => console.log(`N=${N} causal=${causal} ${i ? 'new' : 'old'} forward ${x.f.toFixed(0)} ms CPU (${(fl / x.f / 1e6).toFixed(1)} GFLOP/s)  backward ${x.b.toFixed(0)} ms CPU (${(2.5 * fl / x.b / 1e6).toFixed(1)} GFLOP/s)`));
}
