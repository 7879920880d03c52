// Lab notebook (issue 19): the variants in the cpu backend's WebAssembly kernels against flash.ts's JavaScript
// kernels and the plain WebAssembly kernel, task functions called directly on one thread (no pool: no
// staging of inputs, no worker round trips), each kernel's best of `repeats` in CPU time, kernels alternating.
// GFLOP/s count the keys each row sees (window [256, 0] + causal: min(i + 1, 257) of them; causal: half;
// otherwise all): 4·H·keys·D forward, 2.5 times that backward. bench/variants/cpu-wasm.ts --mods measures
// the same through forward() and backward() on the worker pool.
// Run: node bench/variants/cpu-wasm-variants.mjs [N] [H] [repeats]   (after npm run build; B=1 D=64 f32)
import { checkForward } from '../../dist/src/problem.js';
import { cpuShape, scratchLength } from '../../dist/src/cpu/job.js';
import { wasmBackward, wasmForward } from '../../dist/src/cpu/wasm/index.js';
import { backwardTask, backwardTasks, forwardTask, forwardTasks } from '../../dist/src/cpu/flash.js';
import { biasValues } from '../../dist/src/reference/standard.js';
import { randomTensor } from '../../dist/test/util.js';

const N = Number(process.argv[2] ?? 1024);
const H = Number(process.argv[3] ?? 8);
const repeats = Number(process.argv[4] ?? 3);
const D = 64;
const shape = [1, N, H, D];
const [q, k, v, dout] = [1, 2, 3, 4].map((seed) => randomTensor('f32', shape, seed));
const cpu = () => {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1000;
};
const VARIANTS = {
  plain: {},
  causal: { causal: true },
  'window 256 + causal': { window: [256, 0], causal: true },
  alibi: { alibiSlopes: Float32Array.from({ length: H }, (_, h) => 2 ** -(h + 1)) },
  softcap: { softcap: 30 },
  'bias (1, 1, N, N)': { bias: randomTensor('f32', [1, 1, N, N], 5) },
};
process.stdout.write(`one thread, task functions, CPU time; B=1 H=${H} N=${N} D=${D} f32; Node ${process.version}\n`);
for (const [name, mods] of Object.entries(VARIANTS)) {
  const p = checkForward(q, k, v, mods);
  const s = cpuShape(p, 1);
  const keys = mods.window ? Array.from({ length: N }, (_, i) => Math.min(i + 1, 257)).reduce((x, y) => x + y, 0) : (N * N) / (mods.causal ? 2 : 1);
  const flops = 4 * H * keys * D;
  const scratch = new Float64Array(Math.max(scratchLength('flashForward', s), scratchLength('flashBackward', s)));
  const arrays = () => ({
    q: q.data, k: k.data, v: v.data, dout: dout.data, out: new Float32Array(q.data.length), lse: new Float32Array(H * N),
    dqPartial: new Float64Array(q.data.length), dk: new Float32Array(k.data.length), dv: new Float32Array(v.data.length),
    bias: biasValues(p.mods),
  });
  const kernels = name === 'plain' || name === 'causal' ? ['wasm'] : ['wasm', 'js'];
  const best = Object.fromEntries(kernels.map((x) => [x, { f: Infinity, b: Infinity }]));
  for (let r = 0; r < repeats; r++) {
    for (const kernel of kernels) {
      const a = arrays();
      const f = kernel === 'wasm' ? wasmForward(s, a) : (t) => forwardTask(s, a, t, scratch);
      const b = kernel === 'wasm' ? wasmBackward(s, a) : (t) => backwardTask(s, a, t, scratch);
      let t0 = cpu();
      for (let t = 0; t < forwardTasks(s); t++) f(t);
      best[kernel].f = Math.min(best[kernel].f, cpu() - t0);
      t0 = cpu();
      for (let t = 0; t < backwardTasks(s); t++) b(t);
      best[kernel].b = Math.min(best[kernel].b, cpu() - t0);
    }
  }
  for (const kernel of kernels) {
    const { f, b } = best[kernel];
    process.stdout.write(
      `${name.padEnd(20)} ${kernel.padEnd(4)} forward ${(flops / f / 1e6).toFixed(1).padStart(5)} GFLOP/s (${f.toFixed(0)} ms)  backward ${((2.5 * flops) / b / 1e6).toFixed(1).padStart(5)} GFLOP/s (${b.toFixed(0)} ms)\n`,
    );
  }
}
