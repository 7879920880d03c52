/**
 * Lab notebook: the cpu backend's flash forward in WebAssembly SIMD (src/cpu/wasm) against flash.ts's
 * JavaScript kernel, through forward() (the worker pool, every core), in GFLOP/s (4·B·H·Nq·Nk·D a
 * forward, half of it causal); with --backward, the backward through backward() instead (2.5 times the
 * forward's FLOPs, out and lse from one forward beforehand). The two kernels' samples alternate in one
 * process (setCpuKernels), so a machine shared with other work disturbs both alike; each sample also
 * gives the share of the machine's CPU time that other processes took meanwhile (/proc/stat against this
 * process's own, on Linux), and the best sample's FLOPs per second of CPU time this process got (per
 * core: what one core did while it ran).
 * Run: node dist/bench/variants/cpu-wasm.js [--n 1024,4096] [--heads 8] [--dim 64] [--repeats 3] [--backward]
 *   (node --experimental-wasm-relaxed-simd ... on Node 20 for the relaxed-SIMD module)
 */
import { availableParallelism } from 'node:os';
import { backward, forward, type Tensor } from '../../src/index.js';
import { setCpuKernels, wasmSupport } from '../../src/cpu/wasm/index.js';
import { randomTensor } from '../../test/util.js';
import { timedCall } from '../load.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const Ns = arg('n', '1024,4096').split(',').map(Number);
const H = Number(arg('heads', '8'));
const D = Number(arg('dim', '64'));
const repeats = Number(arg('repeats', '3'));
const isBackward = process.argv.includes('--backward');

/** The call timed: forward(), or with --backward backward() on saved out and lse. */
async function call(q: Tensor, k: Tensor, v: Tensor, causal: boolean): Promise<() => Promise<unknown>> {
  const options = { backend: 'cpu' as const, causal };
  if (!isBackward) return () => forward(q, k, v, options);
  const dout = randomTensor('f32', q.shape as number[], 4);
  const { out, lse } = await forward(q, k, v, options);
  return () => backward(dout, q, k, v, out, lse, options);
}

type Sample = Awaited<ReturnType<typeof timedCall>>;

const support = wasmSupport();
process.stdout.write(`${isBackward ? 'backward' : 'forward'}; WebAssembly: ${support}; ${availableParallelism()} cores; B=1 H=${H} D=${D} f32; Node ${process.version}\n`);
for (const N of Ns) {
  const shape = [1, N, H, D];
  const q = randomTensor('f32', shape, 1);
  const k = randomTensor('f32', shape, 2);
  const v = randomTensor('f32', shape, 3);
  for (const causal of [false, true]) {
    const flops = 4 * H * N * N * D * (causal ? 0.5 : 1) * (isBackward ? 2.5 : 1);
    const run = await call(q, k, v, causal);
    const runs: Record<'wasm' | 'js', Sample[]> = { wasm: [], js: [] };
    for (const kernels of ['wasm', 'js'] as const) {
      setCpuKernels(kernels);
      await run(); // warm-up: workers, modules, JIT
    }
    for (let r = 0; r < repeats; r++) {
      for (const kernels of ['wasm', 'js'] as const) {
        setCpuKernels(kernels);
        runs[kernels].push(await timedCall(run));
      }
    }
    setCpuKernels('wasm');
    for (const kernels of ['wasm', 'js'] as const) {
      const s = runs[kernels].map((x) => x.ms).sort((a, b) => a - b);
      const best = s[0];
      const perCore = flops / Math.min(...runs[kernels].map((x) => x.ownMs)) / 1e6;
      const median = s[Math.floor(s.length / 2)];
      const others = runs[kernels].map((x) => (x.others === undefined ? '?' : `${Math.round(100 * x.others)}%`)).join(' ');
      process.stdout.write(
        `N=${N} causal=${causal} ${kernels.padEnd(4)}  best ${(flops / best / 1e6).toFixed(2)} GFLOP/s (${best.toFixed(0)} ms)  median ${(flops / median / 1e6).toFixed(2)} GFLOP/s  others' CPU share: ${others}  per core of CPU time: ${perCore.toFixed(2)} GFLOP/s\n`,
      );
    }
  }
}
