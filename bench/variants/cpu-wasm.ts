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
 * With --mods window,alibi,softcap,bias: the variants instead (issue 19: they run in the WebAssembly kernels,
 * with flash.ts's hooks in JavaScript between the module's functions), each with both kernels, beside the
 * plain (non-causal) WebAssembly kernel: window = window [256, 0] with causal (FLOPs of the keys each row
 * sees: min(i + 1, 257) of them), alibi = ALiBi slopes 2^−(h+1), softcap = soft-cap 30, bias = an f32
 * bias of shape (1, 1, N, N), without dbias (that would be B·H·N² f32 more).
 */
import { availableParallelism } from 'node:os';
import { backward, forward, type AttentionOptions, type Tensor } from '../../src/index.js';
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
const modNames = process.argv.includes('--mods') ? arg('mods', '').split(',') : [];

/** The options of variant `name` at sequence length N. */
function variant(name: string, N: number): AttentionOptions {
  switch (name) {
    case 'window':
      return { window: [256, 0], causal: true };
    case 'alibi':
      return { alibiSlopes: Float32Array.from({ length: H }, (_, h) => 2 ** -(h + 1)) };
    case 'softcap':
      return { softcap: 30 };
    case 'bias':
      return { bias: randomTensor('f32', [1, 1, N, N], 5) };
    default:
      throw new Error(`--mods: unknown variant ${name} (window, alibi, softcap, bias)`);
  }
}

/** The call timed: forward(), or with --backward backward() on saved out and lse. */
async function call(q: Tensor, k: Tensor, v: Tensor, causal: boolean, mods: AttentionOptions = {}): Promise<() => Promise<unknown>> {
  const options: AttentionOptions = { backend: 'cpu', causal, ...mods };
  if (!isBackward) return () => forward(q, k, v, options);
  const dout = randomTensor('f32', q.shape as number[], 4);
  const { out, lse } = await forward(q, k, v, options);
  return () => backward(dout, q, k, v, out, lse, options);
}

type Sample = Awaited<ReturnType<typeof timedCall>>;

/** One configuration: the calls of each kernel set alternate, `repeats` samples each after a warm-up; one line per set. */
async function measure(label: string, flops: number, run: () => Promise<unknown>, sets: { name: string; kernels: 'wasm' | 'js' }[]): Promise<void> {
  const runs: Sample[][] = sets.map(() => []);
  for (const { kernels } of sets) {
    setCpuKernels(kernels);
    await run(); // warm-up: workers, modules, JIT
  }
  for (let r = 0; r < repeats; r++) {
    for (let i = 0; i < sets.length; i++) {
      setCpuKernels(sets[i].kernels);
      runs[i].push(await timedCall(run));
    }
  }
  setCpuKernels('wasm');
  sets.forEach(({ name }, i) => {
    const s = runs[i].map((x) => x.ms).sort((a, b) => a - b);
    const best = s[0];
    const perCore = flops / Math.min(...runs[i].map((x) => x.ownMs)) / 1e6;
    const median = s[Math.floor(s.length / 2)];
    const others = runs[i].map((x) => (x.others === undefined ? '?' : `${Math.round(100 * x.others)}%`)).join(' ');
    process.stdout.write(
      `${label} ${name.padEnd(4)}  best ${(flops / best / 1e6).toFixed(2)} GFLOP/s (${best.toFixed(0)} ms)  median ${(flops / median / 1e6).toFixed(2)} GFLOP/s  others' CPU share: ${others}  per core of CPU time: ${perCore.toFixed(2)} GFLOP/s\n`,
    );
  });
}

const BOTH = [{ name: 'wasm', kernels: 'wasm' }, { name: 'js', kernels: 'js' }] as const;
const support = wasmSupport();
process.stdout.write(`${isBackward ? 'backward' : 'forward'}; WebAssembly: ${support}; ${availableParallelism()} cores; B=1 H=${H} D=${D} f32; Node ${process.version}\n`);
for (const N of Ns) {
  const shape = [1, N, H, D];
  const q = randomTensor('f32', shape, 1);
  const k = randomTensor('f32', shape, 2);
  const v = randomTensor('f32', shape, 3);
  const pass = isBackward ? 2.5 : 1;
  if (modNames.length === 0) {
    for (const causal of [false, true]) {
      await measure(`N=${N} causal=${causal}`, 4 * H * N * N * D * (causal ? 0.5 : 1) * pass, await call(q, k, v, causal), [...BOTH]);
    }
    continue;
  }
  await measure(`N=${N} plain  `, 4 * H * N * N * D * pass, await call(q, k, v, false), [{ name: 'wasm', kernels: 'wasm' }]);
  for (const name of modNames) {
    const mods = variant(name, N);
    // keys seen: min(i + 1, 257) per row under window [256, 0] with causal, every key otherwise
    const seen = name === 'window' ? Array.from({ length: N }, (_, i) => Math.min(i + 1, 257)).reduce((a, b) => a + b, 0) : N * N;
    await measure(`N=${N} ${name.padEnd(7)}`, 4 * H * seen * D * pass, await call(q, k, v, false, mods), [...BOTH]);
  }
}
