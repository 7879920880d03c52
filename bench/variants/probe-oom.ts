/**
 * What a user sees on the GPU machine, and whether the library stays usable after an out-of-memory
 * (`bash .gpu/enter.sh node dist/bench/variants/probe-oom.js`): the GPU devices there, a child process's
 * console output for a forward() with the default backend, then the encoder of the bench (6 layers,
 * d_model 512, 32 heads, f16, batch 32) with standard attention at N = 8192 (out of device memory on an
 * H200), and after it a flash encoder made before the failure, one made after it, and a plain forward().
 * Measured on an H200, 2026-12-04 (bench/results/2026-12-04-h200-oom-recovery.md): no console output;
 * before buffers.ts's freeDestroyed, the flash encoder made before failed with the device lost ("unexpected
 * error type OutOfMemory when allowed errors are Validation"), with it every call after the failure ran.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createEncoder, encodeF16, forward, MemoryTracker, tensor, type EncoderConfig } from '../../src/index.js';
import { mayHaveGpu, vulkanLoaderMissing } from '../../src/webgpu/device.js';

const say = (...a: unknown[]) => console.log(new Date().toISOString().slice(11, 19), ...a);
say('/dev:', readdirSync('/dev').filter((f) => /nvidia|dri|dxg/.test(f)).join(' '));
say('mayHaveGpu', await mayHaveGpu(), 'loader missing:', await vulkanLoaderMissing());
const index = fileURLToPath(new URL('../../src/index.js', import.meta.url));
const quiet = `const lib = await import(${JSON.stringify(index)});
const t = () => lib.tensor(new Float32Array(1 * 128 * 2 * 32).map(Math.random), [1, 128, 2, 32]);
const r = await lib.forward(t(), t(), t());
if (r.backend !== 'webgpu') process.stdout.write('backend ' + r.backend);`;
const q = spawnSync(process.execPath, ['--input-type=module', '-e', quiet], { encoding: 'utf8' });
say('child, default backend: status', q.status, 'stdout', JSON.stringify(q.stdout), 'stderr', JSON.stringify(q.stderr));

const memory = new MemoryTracker();
const config: EncoderConfig = { layers: 6, dModel: 512, heads: 32, ffn: 2048, causal: true, attention: 'flash', backend: 'webgpu', dtype: 'f16', seed: 1, memory };
const x = (N: number) => tensor(encodeF16(new Float32Array(32 * N * 512).map(() => Math.random() - 0.5)), [32, N, 512]);
async function time<T>(label: string, f: () => Promise<T>): Promise<T | undefined> {
  const t0 = performance.now();
  try {
    const r = await f();
    say(label, 'ok', (performance.now() - t0).toFixed(0), 'ms');
    return r;
  } catch (e) {
    say(label, 'FAILED', e instanceof Error ? `${e.name}: ${e.message.slice(0, 400)}` : e);
    return undefined;
  }
}
const standard = await createEncoder({ ...config, attention: 'standard' });
const before = await createEncoder(config);
const x8 = x(8192);
await time('standard N=8192', () => standard.forward(x8));
await time('flash (made before) N=8192', () => before.forward(x8));
const after = await time('new flash encoder', () => createEncoder(config));
if (after) await time('flash (made after) N=8192', () => after.forward(x8));
const t = () => tensor(encodeF16(new Float32Array(4 * 4096 * 16 * 128).map(Math.random)), [4, 4096, 16, 128]);
await time('forward() B=4 N=4096 H=16 D=128 f16 flash', () => forward(t(), t(), t(), { backend: 'webgpu' }));
process.exit(0);
