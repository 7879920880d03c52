// GPT-2 small's speed with flashattn, through the library's API as a user calls it (readGPT2, createGPT2,
// generate, forward), beside transformers' figures from bench/models/gpt2_speed_hf.py on the same checkpoint.
//
//   node dist/bench/models/gpt2-speed.js --model DIR [--backend webgpu] [--dtype f16] [--batches 1,16]
//        [--prompt 512] [--new 256] [--prefill 1024] [--repeats 2] [--samples 10]
//
// Each line of stdout is one JSON object; progress goes to stderr.
//   decode   prompts of --prompt tokens (the ids of gpt2_speed_hf.py's prompt_ids), greedy, exactly --new
//            new tokens (no stop at end-of-text). generate() prefills each prompt into its slot, then
//            decodes all slots together; its decode figure counts the tokens made by decode steps
//            (batch · (new − 1): the first comes from the prefill) over their time, the logits read back
//            and the argmax taken on the host each step. A warm-up generate of 8 tokens first; the median
//            of --repeats runs (of two, the faster).
//   prefill  one sequence of --prefill tokens into an empty slot (prefill(0, ids): every layer, the
//            causal attention of the prompt by forward(), k and v into the caches, the last position's
//            logits read back), with flash attention and with the standard algorithm; wall time, median
//            of --samples after 3 warm-ups.
//   attention the model's attention calls alone: forward() of (1, N, H, D) q, k, v on the GPU (BNHD,
//            causal, the model's dtype), one call per layer back to back as in a prefill, then the queue
//            drained; median of --samples after 3 warm-ups. Its share of the prefill is (layers · one call) /
//            the prefill's time; prefill(standard) − prefill(flash) checks it.
//   check    where DIR/reference.json exists (gpt2_speed_hf.py make): our greedy tokens of prompt 0 at batch
//            1 against transformers', and our last-position logits of prompt 0 against its
//            reference.safetensors (max abs difference relative to their range).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createGPT2, encodeF16, forward, generate, parseSafetensors, readGPT2, webgpuDevice, type GPT2 } from '../../src/index.js';
import { tensorValues } from '../../src/models/safetensors.js';

function option(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (fallback === undefined) throw new Error(`--${name} is required`);
  return fallback;
}

const dir = option('model');
const backend = option('backend', 'webgpu') as 'webgpu' | 'cpu';
const dtype = option('dtype', 'f16') as 'f16' | 'f32';
const batches = option('batches', '1,16').split(',').map(Number);
const PROMPT = Number(option('prompt', '512'));
const NEW = Number(option('new', '256'));
const PREFILL = Number(option('prefill', '1024'));
const REPEATS = Number(option('repeats', '2'));
/** Timed prefills and attention samples, after 3 warm-ups each. */
const SAMPLES = Number(option('samples', '10'));
const EOS = 50256;

const emit = (row: object) => process.stdout.write(JSON.stringify(row) + '\n');
const log = (s: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${s}\n`);
const median = (x: number[]) => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)];
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

/** The same ids as gpt2_speed_hf.py's prompt_ids. */
function promptIds(batch: number, n: number): number[][] {
  return Array.from({ length: batch }, (_, b) => Array.from({ length: n }, (_, i) => (1 + 7919 * b + 104729 * i) % EOS));
}

function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

let t = performance.now();
const { checkpoint } = await readGPT2(dir);
const c = checkpoint.config;
emit({ kind: 'environment', node: process.version, backend, dtype, config: c, file_dtype: checkpoint.dtype, read_s: round((performance.now() - t) / 1000) });
const maxBatch = Math.max(...batches);
t = performance.now();
const model = await createGPT2(checkpoint, { backend, dtype, batch: maxBatch, maxLength: Math.min(c.positions, Math.max(PROMPT + NEW, PREFILL)) });
emit({ kind: 'load', what: `createGPT2 ${backend} ${dtype} batch ${maxBatch}`, s: round((performance.now() - t) / 1000), weights_and_caches_mib: round(model.memory.live / 2 ** 20, 1) });
if (backend === 'webgpu') {
  const device = await webgpuDevice();
  emit({ kind: 'adapter', info: { vendor: device.adapterInfo?.vendor, architecture: device.adapterInfo?.architecture, description: device.adapterInfo?.description } });
}

// ---------------------------------------------------------------- the check against transformers

if (existsSync(join(dir, 'reference.json'))) {
  const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { greedy: number[]; prompt_tokens: number };
  const ids = promptIds(1, ref.prompt_tokens)[0];
  model.release(0);
  const logits = await model.prefill(0, ids);
  const st = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'reference.safetensors'))), 'reference.safetensors');
  const theirs = tensorValues(st.tensors.get('last_logits')!);
  let [err, lo, hi] = [0, Infinity, -Infinity];
  theirs.forEach((x, i) => {
    err = Math.max(err, Math.abs(x - logits[i]));
    [lo, hi] = [Math.min(lo, x), Math.max(hi, x)];
  });
  const r = await generate(model, [ids], { maxNewTokens: ref.greedy.length, eosTokenId: null });
  let same = 0;
  while (same < ref.greedy.length && r.tokens[0][same] === ref.greedy[same]) same++;
  emit({ kind: 'check', prompt_tokens: ref.prompt_tokens, logits_max_abs_diff: round(err, 5), logits_range: round(hi - lo, 4), relative: (err / (hi - lo)).toExponential(2), argmax_ours: argmax(logits), argmax_theirs: argmax(theirs), greedy_ours: r.tokens[0], greedy_theirs: ref.greedy, same_prefix: same });
  log(`check: logits differ by ${err.toExponential(2)} (range ${(hi - lo).toFixed(3)}); greedy agrees for ${same} of ${ref.greedy.length} tokens`);
}

// ---------------------------------------------------------------- decode

for (const batch of batches) {
  const prompts = promptIds(batch, PROMPT);
  log(`decode batch ${batch}: warm-up`);
  await generate(model, prompts, { maxNewTokens: 8, eosTokenId: null });
  const runs = [];
  for (let r = 0; r < REPEATS; r++) {
    const res = await generate(model, prompts, { maxNewTokens: NEW, eosTokenId: null });
    if (res.tokens.some((x) => x.length !== NEW)) throw new Error(`generate made ${res.tokens.map((x) => x.length)} tokens, not ${NEW} each`);
    runs.push(res);
    log(`decode batch ${batch}: ${(res.decode.tokens / res.decode.seconds).toFixed(1)} tokens/s`);
  }
  const tps = runs.map((r) => r.decode.tokens / r.decode.seconds);
  const best = runs[tps.indexOf(median(tps))];
  emit({
    kind: 'decode', impl: `flashattn ${backend} ${dtype}`, batch, prompt: PROMPT, new: NEW,
    decode_tokens: best.decode.tokens, decode_steps: best.decode.steps, decode_s: round(best.decode.seconds, 5), tokens_per_s: round(median(tps), 1), runs_tokens_per_s: tps.map((x) => round(x, 1)),
    ms_per_step: round((1000 * best.decode.seconds) / best.decode.steps, 3), prefill_tokens: best.prefill.tokens, prefill_s: round(best.prefill.seconds, 4),
  });
}

// ---------------------------------------------------------------- prefill and the attention's share

const H = c.heads;
const D = c.embed / H;
const ids = promptIds(1, PREFILL)[0];
async function timePrefill(m: GPT2): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < 3 + SAMPLES; i++) {
    m.release(0);
    const t0 = performance.now();
    await m.prefill(0, ids);
    if (i >= 3) times.push(performance.now() - t0);
  }
  m.release(0);
  return times;
}

const prefill: Record<string, number> = {};
for (const algorithm of ['flash', 'standard'] as const) {
  log(`prefill ${PREFILL}: ${algorithm}`);
  const m = algorithm === 'flash' ? model : await createGPT2(checkpoint, { backend, dtype, attention: 'standard', batch: 1, maxLength: PREFILL });
  try {
    const times = await timePrefill(m);
    prefill[algorithm] = median(times);
    emit({ kind: 'prefill', impl: `flashattn ${backend} ${dtype}, ${algorithm} attention`, tokens: PREFILL, ms: round(median(times)), ms_min: round(Math.min(...times)), ms_max: round(Math.max(...times)) });
  } finally {
    if (m !== model) m.dispose();
  }
}

if (backend === 'webgpu') {
  const device = await webgpuDevice();
  const n = PREFILL * H * D;
  const bytes = n * (dtype === 'f16' ? 2 : 4);
  const values = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7071) * 0.5);
  const data = dtype === 'f16' ? encodeF16(values, new Uint16Array(n)) : values;
  const buffer = () => {
    const b = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
    device.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, bytes);
    return { data: b, dtype, shape: [1, PREFILL, H, D] };
  };
  const [q, k, v] = [buffer(), buffer(), buffer()];
  for (const algorithm of ['flash', 'standard'] as const) {
    const layer = async () => {
      const r = await forward(q, k, v, { backend: 'webgpu', layout: 'BNHD', causal: true, algorithm, device });
      (r.out.data as GPUBuffer).destroy();
      (r.lse.data as GPUBuffer).destroy();
    };
    const times: number[] = [];
    for (let i = 0; i < 3 + SAMPLES; i++) {
      const t0 = performance.now();
      for (let l = 0; l < c.layers; l++) await layer();
      await device.queue.onSubmittedWorkDone();
      if (i >= 3) times.push(performance.now() - t0);
    }
    const all = median(times);
    emit({
      kind: 'attention', algorithm, shape: [1, PREFILL, H, D], causal: true, dtype, calls: c.layers, ms_all_layers: round(all), ms_per_call: round(all / c.layers, 4),
      share_of_prefill: round(all / prefill[algorithm], 4), prefill_ms: round(prefill[algorithm]),
    });
  }
  emit({ kind: 'attention-difference', prefill_standard_minus_flash_ms: round(prefill.standard - prefill.flash) });
  [q, k, v].forEach((t) => t.data.destroy());
}
model.dispose();
log('done');
