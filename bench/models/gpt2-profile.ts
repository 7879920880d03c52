// Where a GPT-2 decode step's host time goes: the library's device wrapped in counters (submissions,
// command encoders, buffers, bind groups, pipelines, writeBuffer, error scopes, and the awaits on the
// device: mapAsync, onSubmittedWorkDone, popErrorScope, with the wall time each await took), over decode
// steps after a warm-up; the time spent inside those calls, and in awaits on their promises. A GPT-2 of random weights in the shape asked (no checkpoint needed).
//
//   node dist/bench/models/gpt2-profile.js [--layers 12] [--embed 64] [--heads 4] [--vocab 1000]
//        [--positions 256] [--dtype f32] [--batch 1] [--prompt 32] [--steps 20] [--model DIR]
//
// With --model DIR the checkpoint is read from DIR (readGPT2) instead. One JSON object per line on stdout:
// per decode step, each counter's mean, and the step's wall time.
import { createGPT2, gpt2Checkpoint, gpt2Config, readGPT2, webgpuDevice, type GPT2Checkpoint } from '../../src/index.js';
import { gpt2Parameters } from '../../src/models/gpt2.js';

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const num = (name: string, fallback: number) => Number(option(name, String(fallback)));

const counts = new Map<string, number>();
const waits = new Map<string, number>();
/** Time inside the calls themselves (before a promise they return resolves). */
const spent = new Map<string, number>();
const count = (k: string, by = 1) => counts.set(k, (counts.get(k) ?? 0) + by);

/** Wrap method `name` of `obj` (an instance) so that each call is counted; promises' wait time summed. */
function wrap(obj: object, name: string, label = name): void {
  const o = obj as Record<string, unknown>;
  const f = o[name] as (...a: unknown[]) => unknown;
  o[name] = function (this: unknown, ...args: unknown[]) {
    count(label);
    const t0 = performance.now();
    const r = f.apply(this, args);
    spent.set(label, (spent.get(label) ?? 0) + performance.now() - t0);
    if (r instanceof Promise) return r.finally(() => waits.set(label, (waits.get(label) ?? 0) + performance.now() - t0));
    return r;
  };
}

const device = await webgpuDevice();
for (const m of ['createBuffer', 'createBindGroup', 'createComputePipeline', 'createComputePipelineAsync', 'createShaderModule', 'createCommandEncoder', 'pushErrorScope', 'popErrorScope']) wrap(device, m);
for (const m of ['submit', 'writeBuffer', 'onSubmittedWorkDone']) wrap(device.queue, m, `queue.${m}`);
// mapAsync lives on GPUBuffer's prototype.
const probe = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ });
wrap(Object.getPrototypeOf(probe), 'mapAsync');
probe.destroy();

let checkpoint: GPT2Checkpoint;
const dir = option('model', '');
if (dir) {
  checkpoint = (await readGPT2(dir)).checkpoint;
} else {
  const config = { vocab_size: num('vocab', 1000), n_positions: num('positions', 256), n_embd: num('embed', 64), n_head: num('heads', 4), n_layer: num('layers', 12), model_type: 'gpt2' };
  const c = gpt2Config(config);
  let seed = 1;
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of gpt2Parameters(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) v[i] = (((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5) * 0.2 + (name.includes('ln_') && name.endsWith('weight') ? 1 : 0);
    values.set(name, v);
  }
  checkpoint = { config: c, dtype: 'F32', values: (name) => values.get(name)! };
  void gpt2Checkpoint; // (a real file goes through gpt2Checkpoint in readGPT2)
}
const dtype = option('dtype', 'f32') as 'f32' | 'f16';
const batch = num('batch', 1);
const PROMPT = num('prompt', 32);
const STEPS = num('steps', 20);
const model = await createGPT2(checkpoint, { backend: 'webgpu', dtype, batch, device });
const slots = Array.from({ length: batch }, (_, b) => b);
for (const b of slots) await model.prefill(b, Array.from({ length: PROMPT }, (_, i) => (7 * i + b) % checkpoint.config.vocabSize));
for (let i = 0; i < 3; i++) await model.decode(slots, slots.map((b) => b + i));
counts.clear();
waits.clear();
spent.clear();
const t0 = performance.now();
for (let i = 0; i < STEPS; i++) await model.decode(slots, slots.map((b) => (b + 3 * i) % checkpoint.config.vocabSize));
const ms = (performance.now() - t0) / STEPS;
const per = Object.fromEntries([...counts].sort().map(([k, v]) => [k, Math.round((v / STEPS) * 100) / 100]));
const inside = Object.fromEntries([...spent].sort().map(([k, v]) => [k, Math.round((v / STEPS) * 1000) / 1000]));
const waited = Object.fromEntries([...waits].sort().map(([k, v]) => [k, Math.round((v / STEPS) * 1000) / 1000]));
const cfg = checkpoint.config;
process.stdout.write(JSON.stringify({ kind: 'decode-profile', adapter: device.adapterInfo?.description ?? '', config: { layers: cfg.layers, embed: cfg.embed, heads: cfg.heads, vocab: cfg.vocabSize }, dtype, batch, prompt: PROMPT, steps: STEPS, ms_per_step: Math.round(ms * 1000) / 1000, calls_per_step: per, call_ms_per_step: inside, await_ms_per_step: waited }) + '\n');
model.dispose();
