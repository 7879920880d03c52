// GPT-2 end to end. A tiny GPT-2 with seeded random weights, written as a Hugging Face checkpoint
// (safetensors, Conv1D weights (in, out)), loaded on cpu and webgpu in f32 and f16 and checked against a
// float64 GPT-2 written here: the logits of every prompt position, of decode steps through the KV caches,
// of a batch of prompts of different lengths decoded together, and greedy generation token for token.
// Then the checkpoint's typed errors, sampling, the tokenizer against gpt-tokenizer, and transformers' own
// GPT-2 on the fixture it made (test/fixtures/gpt2-tiny/, by bench/models/make_gpt2_fixture.py).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import * as r50k from 'gpt-tokenizer/encoding/r50k_base';
import {
  CheckpointError,
  MemoryTracker,
  NotSupportedError,
  ValueError,
  argmax,
  createGPT2,
  encodeSafetensors,
  generate,
  gpt2Checkpoint,
  gpt2Tokenizer,
  parseSafetensors,
  readGPT2,
  roundToF16,
  sampler,
  tokenizerFromFiles,
  type GPT2,
  type GPT2Config,
} from '../src/index.js';
import { tensorValues } from '../src/models/safetensors.js';
import { bytesToSymbols } from '../src/models/tokenizer.js';
import { webgpuStatus } from '../src/webgpu/device.js';
import { C, CONFIG, V, WEIGHTS, checkpointBytes, writeFolder } from './gpt2-model.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { randn } from './util.js';

reportWebgpuSkip();
const status = await webgpuStatus();

// ---------------------------------------------------------------- the float64 reference

/** GPT-2 over a whole sequence in float64: logits (n, V) of every position. */
function referenceLogits(tokens: readonly number[]): Float64Array {
  const n = tokens.length;
  const H = CONFIG.n_head;
  const D = C / H;
  const I = 4 * C;
  const get = (name: string) => WEIGHTS.get(name)!.values;
  const layerNorm = (x: Float64Array, name: string) => {
    const [g, b] = [get(name + '.weight'), get(name + '.bias')];
    const y = new Float64Array(x.length);
    for (let i = 0; i < n; i++) {
      const row = x.subarray(i * C, (i + 1) * C);
      const mean = row.reduce((a, v) => a + v, 0) / C;
      const variance = row.reduce((a, v) => a + (v - mean) ** 2, 0) / C;
      for (let c = 0; c < C; c++) y[i * C + c] = ((row[c] - mean) / Math.sqrt(variance + 1e-5)) * g[c] + b[c];
    }
    return y;
  };
  // Conv1D: y = x·W + b, W (in, out).
  const conv1d = (x: Float64Array, name: string, inF: number, outF: number) => {
    const [W, b] = [get(name + '.weight'), get(name + '.bias')];
    const y = new Float64Array(n * outF);
    for (let i = 0; i < n; i++)
      for (let o = 0; o < outF; o++) {
        let s = b[o];
        for (let k = 0; k < inF; k++) s += x[i * inF + k] * W[k * outF + o];
        y[i * outF + o] = s;
      }
    return y;
  };
  const [wte, wpe] = [get('wte.weight'), get('wpe.weight')];
  let x = new Float64Array(n * C);
  for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) x[i * C + c] = wte[tokens[i] * C + c] + wpe[i * C + c];
  for (let l = 0; l < CONFIG.n_layer; l++) {
    const h = `h.${l}.`;
    const qkv = conv1d(layerNorm(x, h + 'ln_1'), h + 'attn.c_attn', C, 3 * C);
    const a = new Float64Array(n * C);
    for (let head = 0; head < H; head++)
      for (let i = 0; i < n; i++) {
        const s = new Float64Array(i + 1);
        for (let j = 0; j <= i; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qkv[i * 3 * C + head * D + d] * qkv[j * 3 * C + C + head * D + d];
          s[j] = dot / Math.sqrt(D);
        }
        const m = Math.max(...s);
        const p = s.map((v) => Math.exp(v - m));
        const z = p.reduce((acc, v) => acc + v, 0);
        for (let d = 0; d < D; d++) {
          let o = 0;
          for (let j = 0; j <= i; j++) o += p[j] * qkv[j * 3 * C + 2 * C + head * D + d];
          a[i * C + head * D + d] = o / z;
        }
      }
    const proj = conv1d(a, h + 'attn.c_proj', C, C);
    x = x.map((v, e) => v + proj[e]);
    const f = conv1d(layerNorm(x, h + 'ln_2'), h + 'mlp.c_fc', C, I).map((v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3))));
    const g = conv1d(f, h + 'mlp.c_proj', I, C);
    x = x.map((v, e) => v + g[e]);
  }
  const hF = layerNorm(x, 'ln_f');
  const logits = new Float64Array(n * V);
  for (let i = 0; i < n; i++)
    for (let t = 0; t < V; t++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += hF[i * C + c] * wte[t * C + c];
      logits[i * V + t] = s;
    }
  return logits;
}

/** The reference's greedy continuation, and each step's margin between the best and second-best logit. */
function referenceGreedy(prompt: readonly number[], steps: number): { tokens: number[]; margins: number[] } {
  const seq = [...prompt];
  const margins: number[] = [];
  for (let s = 0; s < steps; s++) {
    const last = referenceLogits(seq).subarray((seq.length - 1) * V);
    const best = argmax(last);
    margins.push(last[best] - Math.max(...last.filter((_, i) => i !== best)));
    seq.push(best);
  }
  return { tokens: seq.slice(prompt.length), margins };
}

// ---------------------------------------------------------------- checks

/**
 * The error bound of a dtype, relative to the range of the reference's logits. f32: 1e-4, as the issue asks
 * (measured: 2.4e-7 on the float64 checks, 3.8e-7 on the transformers fixture). f16: the models hold every activation in
 * f16 storage (f32 arithmetic), each store a rounding of relative error at most u = 2^-11 (4.9e-4); the
 * weights are exact in f16 (both models here hold f16 values), so the error comes from the activations a
 * logit's path stores: the embedding sum; per layer LN1, q/k/v, the attention output, the residual after
 * c_proj, LN2, the GELU output, the residual after the MLP (7); LN_f; the logit itself: 17 for these
 * 2-layer models. Seventeen independent roundings of size u add to about √17·u = 4.1u, so the bound is
 * 4u = 2^-9 (2.0e-3) of the range (aligned worst case, 17u, would be 8.3e-3; measured: 7.9e-4 on the
 * float64 checks, 6.9e-4 = 1.4u on the transformers fixture, cpu and lavapipe alike).
 */
const TOLERANCE = { f32: 1e-4, f16: 2 ** -9 } as const;

/** The range of some logits (the scale of the tolerance). */
function range(x: ArrayLike<number>): number {
  let [lo, hi] = [Infinity, -Infinity];
  for (let i = 0; i < x.length; i++) [lo, hi] = [Math.min(lo, x[i]), Math.max(hi, x[i])];
  return hi - lo;
}

function assertLogits(what: string, got: Float32Array, ref: Float64Array, dtype: 'f32' | 'f16'): number {
  assert.equal(got.length, ref.length, `${what}: lengths`);
  let [err, at] = [0, 0];
  for (let i = 0; i < ref.length; i++) {
    const e = Math.abs(got[i] - ref[i]);
    if (!(e <= err)) [err, at] = [e, i];
  }
  const tol = TOLERANCE[dtype] * range(ref);
  assert.ok(err <= tol, `${what}: max |logit − reference| ${err.toExponential(2)} at ${at} (${got[at]} against ${ref[at]}) over ${tol.toExponential(2)} (${TOLERANCE[dtype]} of the range ${range(ref).toFixed(3)})`);
  return tol;
}

/**
 * Greedy tokens equal to the reference's, step by step while the reference's margin between its best
 * and second-best logit exceeds twice the logit tolerance (below that a rounding may pick either).
 */
function assertGreedy(what: string, got: number[], ref: { tokens: number[]; margins: number[] }, tol: number): void {
  for (let s = 0; s < ref.tokens.length; s++) {
    if (ref.margins[s] <= 2 * tol) return;
    assert.equal(got[s], ref.tokens[s], `${what}: token ${s} is ${got[s]}, the reference's ${ref.tokens[s]} (margin ${ref.margins[s].toFixed(4)}); tokens ${JSON.stringify(got)} against ${JSON.stringify(ref.tokens)}`);
  }
}

const PROMPTS = [
  [5, 17, 42, 8, 91, 33, 0, 64, 12, 77, 3],
  [60, 2, 2, 45, 19],
  [88, 7],
];

const TARGETS = BACKENDS.flatMap((backend) => (['f32', 'f16'] as const).filter((dtype) => backend === 'cpu' || dtype === 'f32' || (status.ok && status.gpu.f16)).map((dtype) => ({ backend, dtype })));

for (const { backend, dtype } of TARGETS) {
  describe(`GPT-2: ${backend} ${dtype}`, () => {
    // f32 models load an F32 file with the `transformer.` prefix, f16 ones an F16 file without it.
    const checkpoint = gpt2Checkpoint({ config: JSON.stringify(CONFIG), safetensors: dtype === 'f32' ? checkpointBytes('F32', 'transformer.') : checkpointBytes('F16') });
    const memory = new MemoryTracker();
    const model = createGPT2(checkpoint, { backend, dtype, batch: 3, memory });

    test('prefill: the logits of every prompt position, flash and standard attention', async () => {
      const ref = referenceLogits(PROMPTS[0]);
      const m = await model;
      m.release(0);
      assertLogits('flash prefill', await m.prefill(0, PROMPTS[0], { all: true }), ref, dtype);
      m.release(0);
      const standard = await createGPT2(checkpoint, { backend, dtype, attention: 'standard', memory });
      try {
        assertLogits('standard prefill', await standard.prefill(0, PROMPTS[0], { all: true }), ref, dtype);
        assert.deepEqual(standard.lengths, [PROMPTS[0].length]);
      } finally {
        standard.dispose();
      }
    });

    test('decode through the KV caches: a batch of prompts of different lengths, decoded together', async () => {
      const m = await model;
      [0, 1, 2].forEach((s) => m.release(s));
      const seqs = PROMPTS.map((p) => [...p]);
      for (let b = 0; b < 3; b++) {
        const last = await m.prefill(b, PROMPTS[b]);
        assertLogits(`prefill of prompt ${b}`, last, referenceLogits(PROMPTS[b]).subarray((PROMPTS[b].length - 1) * V), dtype);
      }
      assert.deepEqual(m.lengths, PROMPTS.map((p) => p.length));
      // Four steps of all three, then two of slots 2 and 0 only (in that order), with fixed tokens.
      const steps: [number[], number[]][] = [[[0, 1, 2], [4, 50, 9]], [[0, 1, 2], [96, 1, 30]], [[0, 1, 2], [13, 13, 13]], [[0, 1, 2], [70, 22, 5]], [[2, 0], [8, 80]], [[2, 0], [41, 6]]];
      for (const [slots, tokens] of steps) {
        const logits = await m.decode(slots, tokens);
        slots.forEach((s, i) => {
          seqs[s].push(tokens[i]);
          const ref = referenceLogits(seqs[s]).subarray((seqs[s].length - 1) * V);
          assertLogits(`decode of slot ${s} at length ${seqs[s].length}`, logits.subarray(i * V, (i + 1) * V), ref, dtype);
        });
      }
      assert.deepEqual(m.lengths, seqs.map((s) => s.length));
      // A slot that holds tokens takes several more through the cache (causal among them).
      const more = [3, 14, 15];
      const logits = await m.prefill(1, more, { all: true });
      const ref = referenceLogits([...seqs[1], ...more]).subarray(seqs[1].length * V);
      assertLogits('prefill continuing slot 1', logits, ref, dtype);
    });

    test('greedy generation gives the reference tokens, batch of three', async () => {
      const m = await model;
      const streamed: [number, number][] = [];
      const r = await generate(m, PROMPTS, { maxNewTokens: 10, eosTokenId: null, onToken: (t, s) => streamed.push([s, t]) });
      PROMPTS.forEach((p, b) => assertGreedy(`prompt ${b}`, r.tokens[b], referenceGreedy(p, 10), TOLERANCE[dtype] * range(referenceLogits(p))));
      assert.equal(streamed.length, 30);
      PROMPTS.forEach((_, b) => assert.deepEqual(streamed.filter(([s]) => s === b).map(([, t]) => t), r.tokens[b]));
      assert.equal(r.prefill.tokens, 18);
      assert.equal(r.decode.tokens, 27);
      assert.equal(r.decode.steps, 9);
      assert.ok(memory.peak > 0);
    });

    test('errors: tokens out of the vocabulary, a full slot, a bad slot', async () => {
      const m = await model;
      m.release(0);
      await assert.rejects(m.prefill(0, [1, V]), (e: unknown) => e instanceof ValueError && e.argument === 'tokens[1]');
      await assert.rejects(m.prefill(0, []), (e: unknown) => e instanceof ValueError && e.argument === 'tokens');
      await assert.rejects(m.prefill(0, Array(41).fill(1)), (e: unknown) => e instanceof ValueError && e.argument === 'tokens');
      await assert.rejects(m.decode([0, 0], [1, 2]), (e: unknown) => e instanceof ValueError && e.argument === 'slots');
      await assert.rejects(m.decode([3], [1]), (e: unknown) => e instanceof ValueError && e.argument === 'slots[0]');
      assert.deepEqual(m.lengths[0], 0);
    });

    test('dispose frees every buffer', async () => {
      const m = await model;
      m.dispose();
      assert.equal(memory.live, 0);
      await assert.rejects(m.prefill(0, [1]), ValueError);
    });
  });
}

describe('GPT-2 checkpoints', () => {
  test('safetensors: F32, F16 and BF16 round trips', () => {
    const values = Float32Array.from([0, 1.5, -2.25, 1e-3, 65504, 3.14159]);
    const bytes = encodeSafetensors({ a: { shape: [2, 3], values } }, 'F32');
    assert.deepEqual(tensorValues(parseSafetensors(bytes).tensors.get('a')!), values);
    const f16 = tensorValues(parseSafetensors(encodeSafetensors({ a: { shape: [6], values } }, 'F16')).tensors.get('a')!);
    assert.deepEqual(f16, values.map(roundToF16));
    const bf16 = tensorValues(parseSafetensors(encodeSafetensors({ a: { shape: [6], values } }, 'BF16')).tensors.get('a')!);
    bf16.forEach((x, i) => assert.ok(Math.abs(x - values[i]) <= Math.abs(values[i]) * 2 ** -8, `bf16 ${x} for ${values[i]}`));
    assert.equal(bf16[1], 1.5);
  });

  test('an F16 file gives an f32 model the F32 file\'s logits (the weights are exact in f16); BF16 nearby ones', async () => {
    // The weights are exact in f16; BF16 rounds them, so only F16 must match the F32 file exactly.
    const f32 = await createGPT2(gpt2Checkpoint({ config: CONFIG, safetensors: checkpointBytes('F32') }), { backend: 'cpu', dtype: 'f32' });
    const f16 = await createGPT2(gpt2Checkpoint({ config: CONFIG, safetensors: checkpointBytes('F16') }), { backend: 'cpu', dtype: 'f32' });
    const bf16 = await createGPT2(gpt2Checkpoint({ config: CONFIG, safetensors: checkpointBytes('BF16') }), { backend: 'cpu', dtype: 'f32' });
    try {
      const a = await f32.prefill(0, PROMPTS[1]);
      assert.deepEqual(await f16.prefill(0, PROMPTS[1]), a);
      const b = await bf16.prefill(0, PROMPTS[1]);
      assert.ok(b.every((x, i) => Math.abs(x - a[i]) < 0.2), 'bf16 weights give nearby logits');
    } finally {
      [f32, f16, bf16].forEach((m) => m.dispose());
    }
  });

  test('a file that does not match: a typed error naming the tensor and what was expected', () => {
    const without = new Map(WEIGHTS);
    without.delete('h.1.mlp.c_fc.bias');
    const missing = encodeSafetensors(Object.fromEntries(without));
    assert.throws(() => gpt2Checkpoint({ config: CONFIG, safetensors: missing }), (e: unknown) => e instanceof CheckpointError && e.argument === 'model.safetensors: h.1.mlp.c_fc.bias' && /\[128\]/.test(e.expected));
    const transposed = new Map(WEIGHTS);
    transposed.set('h.0.attn.c_attn.weight', { shape: [3 * C, C], values: WEIGHTS.get('h.0.attn.c_attn.weight')!.values });
    assert.throws(
      () => gpt2Checkpoint({ config: CONFIG, safetensors: encodeSafetensors(Object.fromEntries(transposed)) }),
      (e: unknown) => e instanceof CheckpointError && e.argument === 'model.safetensors: h.0.attn.c_attn.weight' && /\[32, 96\].*\(in, out\)/.test(e.expected) && e.received === '[96, 32]',
    );
    assert.throws(() => gpt2Checkpoint({ config: CONFIG, safetensors: new Uint8Array(12) }), (e: unknown) => e instanceof CheckpointError && e.argument === 'model.safetensors');
    const garbage = new Uint8Array(40);
    new DataView(garbage.buffer).setBigUint64(0, 8n, true);
    assert.throws(() => gpt2Checkpoint({ config: CONFIG, safetensors: garbage }), (e: unknown) => e instanceof CheckpointError && e.argument === 'model.safetensors: header');
    const bytes = checkpointBytes('F32');
    assert.throws(() => gpt2Checkpoint({ config: { ...CONFIG, n_embd: undefined }, safetensors: bytes }), (e: unknown) => e instanceof CheckpointError && e.argument === 'config.json: n_embd');
    assert.throws(() => gpt2Checkpoint({ config: { ...CONFIG, n_embd: 64 }, safetensors: bytes }), (e: unknown) => e instanceof CheckpointError && e.argument === 'model.safetensors: wte.weight');
    assert.throws(() => gpt2Checkpoint({ config: '{ not json', safetensors: bytes }), (e: unknown) => e instanceof CheckpointError && e.argument === 'config.json');
    assert.throws(() => gpt2Checkpoint({ config: { ...CONFIG, model_type: 'llama' }, safetensors: bytes }), (e: unknown) => e instanceof CheckpointError && e.argument === 'config.json: model_type');
    assert.throws(() => gpt2Checkpoint({ config: { ...CONFIG, activation_function: 'relu' }, safetensors: bytes }), (e: unknown) => e instanceof NotSupportedError && e.argument === 'config.json: activation_function');
  });

  test('readGPT2: a missing folder or file is a CheckpointError naming it', async () => {
    await assert.rejects(readGPT2('/nonexistent/gpt2'), (e: unknown) => e instanceof CheckpointError && e.argument === '/nonexistent/gpt2');
    await assert.rejects(readGPT2('test'), (e: unknown) => e instanceof CheckpointError && e.argument.endsWith('config.json'));
  });
});

describe('GPT-2 sampling', () => {
  test('greedy is the argmax; top-k 1 and a tiny top-p are greedy at any temperature', () => {
    const logits = Float32Array.from([0.1, 2, -1, 1.9, 2]);
    assert.equal(sampler()(logits), 1);
    const k1 = sampler({ temperature: 5, topK: 1, seed: 3 });
    const p0 = sampler({ temperature: 5, topP: 1e-6, seed: 3 });
    for (let i = 0; i < 20; i++) {
      assert.equal(k1(logits), 1);
      assert.equal(p0(logits), 1);
    }
  });

  test('temperature sampling follows the softmax, and a seed repeats a draw', () => {
    const logits = Float32Array.from([0, Math.log(2), -Infinity]);
    const draw = sampler({ temperature: 1, seed: 7 });
    const counts = [0, 0, 0];
    for (let i = 0; i < 6000; i++) counts[draw(logits)]++;
    assert.equal(counts[2], 0);
    assert.ok(Math.abs(counts[1] / 6000 - 2 / 3) < 0.03, `p(1) = ${counts[1] / 6000}, expected 2/3`);
    const a = sampler({ temperature: 0.8, topK: 50, topP: 0.9, seed: 11 });
    const b = sampler({ temperature: 0.8, topK: 50, topP: 0.9, seed: 11 });
    const wide = Float32Array.from(randn(200, 5));
    for (let i = 0; i < 50; i++) assert.equal(a(wide), b(wide));
    // top-p 0.9 never draws a token outside the smallest set of most likely tokens holding 90 %.
    const order = Array.from(wide.keys()).sort((x, y) => wide[y] - wide[x]);
    const p = order.map((i) => Math.exp(wide[i] - wide[order[0]]));
    const total = p.reduce((s, x) => s + x, 0);
    let [cum, keep] = [0, 0];
    while (cum < 0.9 * total) cum += p[keep++];
    const allowed = new Set(order.slice(0, keep));
    const nucleus = sampler({ temperature: 1, topP: 0.9, seed: 2 });
    for (let i = 0; i < 300; i++) assert.ok(allowed.has(nucleus(wide)));
  });

  test('bad sampling options are ValueErrors naming the option', () => {
    assert.throws(() => sampler({ temperature: -1 }), (e: unknown) => e instanceof ValueError && e.argument === 'options.temperature');
    assert.throws(() => sampler({ topP: 0 }), (e: unknown) => e instanceof ValueError && e.argument === 'options.topP');
    assert.throws(() => sampler({ topK: 1.5 }), (e: unknown) => e instanceof ValueError && e.argument === 'options.topK');
  });

  test('generation stops at the end-of-text token and at maxNewTokens', async () => {
    const model = await createGPT2(gpt2Checkpoint({ config: CONFIG, safetensors: checkpointBytes('F32') }), { backend: 'cpu', dtype: 'f32', batch: 2 });
    try {
      const free = await generate(model, [PROMPTS[2]], { maxNewTokens: 5, eosTokenId: null });
      assert.equal(free.tokens[0].length, 5);
      const stop = free.tokens[0][2];
      const r = await generate(model, [PROMPTS[2], PROMPTS[1]], { maxNewTokens: 5, eosTokenId: stop });
      assert.deepEqual(r.tokens[0], free.tokens[0].slice(0, free.tokens[0].indexOf(stop) + 1));
      await assert.rejects(generate(model, [[]], { maxNewTokens: 5 }), (e: unknown) => e instanceof ValueError && e.argument === 'prompts[0]');
      await assert.rejects(generate(model, [[1], [2], [3]], { maxNewTokens: 5 }), (e: unknown) => e instanceof ValueError && e.argument === 'prompts');
    } finally {
      model.dispose();
    }
  });
});

describe('GPT-2 tokenizer', () => {
  const texts = ['Hello world, this is GPT-2.', '  spaces   and\n\nnewlines\t tabs  ', "Ünïcödé ☃ 日本語 🎉 it's we've I'm they'll I'd", '<|endoftext|>The end', '1234567 3.14159 $100,000'];

  test("gpt2Tokenizer gives gpt-tokenizer's r50k_base ids, and decodes back to the text", async () => {
    const tok = await gpt2Tokenizer();
    assert.equal(tok.vocabSize, 50257);
    assert.equal(tok.eosTokenId, 50256);
    assert.deepEqual(tok.encode('Hello world'), [15496, 995]);
    for (const text of texts) {
      assert.deepEqual(tok.encode(text), r50k.encode(text, { allowedSpecial: 'all' }), text);
      assert.equal(tok.decode(tok.encode(text)), text);
    }
  });

  test('tokenizer.json and vocab.json + merges.txt: merges applied by their rank', () => {
    // Bytes of "ab" in GPT-2's alphabet are themselves; Ġ is the space byte.
    const symbols = ['a', 'b', 'c', 'Ġ', 'ab', 'abc', 'Ġa', '<|endoftext|>'];
    const vocab = Object.fromEntries(symbols.map((s, i) => [s, i]));
    const merges = ['a b', 'ab c', 'Ġ a'];
    const fromJson = tokenizerFromFiles({ tokenizerJson: JSON.stringify({ model: { type: 'BPE', vocab, merges: merges.map((m) => m.split(' ')) }, added_tokens: [{ id: 7, content: '<|endoftext|>', special: true }] }) });
    const fromTxt = tokenizerFromFiles({ vocabJson: JSON.stringify(vocab), mergesTxt: '#version: 0.2\n' + merges.join('\n') + '\n' });
    for (const tok of [fromJson, fromTxt]) {
      assert.deepEqual(tok.encode('abc ab a<|endoftext|>c'), [5, 3, 4, 6, 7, 2]);
      assert.equal(tok.decode([5, 3, 4, 6, 7]), 'abc ab a<|endoftext|>');
      assert.equal(tok.eosTokenId, 7);
    }
    assert.equal(bytesToSymbols([32, 10]), 'ĠĊ');
    assert.throws(() => fromTxt.encode('xyz'), ValueError);
    assert.throws(() => tokenizerFromFiles({ vocabJson: '{}' }), (e: unknown) => e instanceof CheckpointError && e.argument === 'merges.txt');
  });
});

// ---------------------------------------------------------------- the command

function flashattn(...args: string[]) {
  const r = spawnSync(process.execPath, ['dist/src/cli/main.js', ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('flashattn generate', () => {
  const dir = mkdtempSync(join(tmpdir(), 'flashattn-gpt2-'));
  writeFolder(dir);

  test('streams the prompt and its continuation, then the figures', async () => {
    const r = flashattn('generate', '--model', dir, '--prompt', 'hello world', '--max-new-tokens', '6', '--backend', 'cpu', '--no-eos');
    assert.equal(r.code, 0, r.stderr);
    // The same tokens as generate() in the library, spelled in the folder's vocabulary.
    const { checkpoint, tokenizer } = await readGPT2(dir);
    const model = await createGPT2(checkpoint, { backend: 'cpu', dtype: 'f32' });
    const { tokens } = await generate(model, [tokenizer.encode('hello world')], { maxNewTokens: 6, eosTokenId: null });
    model.dispose();
    assert.equal(r.stdout, `hello world${tokenizer.decode(tokens[0])}\n`);
    assert.match(r.stderr, /prefill: 11 tokens in [\d.]+ ms, [\d.]+ tokens\/s/);
    assert.match(r.stderr, /decode: 5 tokens in 5 steps/);
    assert.match(r.stderr, /peak memory: [\d.]+ MiB/);
    assert.match(r.stderr, /tokenizer: vocab.json \+ merges.txt/);
  });

  test('bad input: a clear message and exit code 2', () => {
    const cases: [string[], RegExp][] = [
      [['--model', join(dir, 'missing'), '--prompt', 'hi'], /--model: .*missing: expected a folder with config.json and model.safetensors, got no such folder/],
      [['--model', dir, '--prompt', '  '], /--prompt is empty/],
      [['--model', dir], /--prompt is required/],
      [['--model', dir, '--prompt', 'hi', '--top-p', '2'], /--top-p/],
      [['--model', dir, '--prompt', 'x'.repeat(40)], /40 tokens, the model takes fewer than 40/],
    ];
    const bad = mkdtempSync(join(tmpdir(), 'flashattn-gpt2-bad-'));
    writeFolder(bad, { ...CONFIG, n_layer: 3 });
    cases.push([['--model', bad, '--prompt', 'hi'], /--model: model.safetensors: transformer.h.2.ln_1.weight: expected a tensor \[32\]/]);
    for (const [args, message] of cases) {
      const r = flashattn('generate', '--backend', 'cpu', ...args);
      assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}, ${r.stderr}`);
      assert.match(r.stderr, message, args.join(' '));
    }
    rmSync(bad, { recursive: true });
  });

  after(() => rmSync(dir, { recursive: true }));
});

// ---------------------------------------------------------------- the fixture made by transformers

/**
 * test/fixtures/gpt2-tiny: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128,
 * vocab_size=50257)) with seeded random weights, saved by transformers' save_pretrained (F16 safetensors,
 * `transformer.` names, Conv1D weights (in, out)), no tokenizer files (readGPT2 takes GPT-2's vocabulary
 * from gpt-tokenizer); logits.safetensors and expected.json hold transformers' outputs (f32, CPU) for three
 * prompts. Re-make it on a machine with torch and transformers (offline):
 *   python3 bench/models/make_gpt2_fixture.py test/fixtures/gpt2-tiny
 * FLASHATTN_GPT2_FIXTURE: another folder of the same files instead (a fixture just made, before committing it).
 */
const FIXTURE = process.env.FLASHATTN_GPT2_FIXTURE ?? 'test/fixtures/gpt2-tiny';

interface Expected {
  torch: string;
  transformers: string;
  prompts: number[][];
  /** The prompts' text, whose GPT-2 tokens `prompts` are. */
  texts: string[];
  /** Greedy continuation of each prompt, and the margin between the best two logits at each step. */
  greedy: { tokens: number[]; margins: number[] }[];
  /** Which prompt's every position is in full_logits. */
  full_prompt: number;
}

describe(`GPT-2 against transformers (${FIXTURE})`, () => {
  const expected = JSON.parse(readFileSync(`${FIXTURE}/expected.json`, 'utf8')) as Expected;
  const outputs = parseSafetensors(new Uint8Array(readFileSync(`${FIXTURE}/logits.safetensors`)), 'logits.safetensors');
  const last = Float64Array.from(tensorValues(outputs.tensors.get('last_logits')!));
  const full = Float64Array.from(tensorValues(outputs.tensors.get('full_logits')!));
  const folder = readGPT2(FIXTURE);

  test('readGPT2 reads the folder transformers wrote: config, F16 weights, and GPT-2\'s tokenizer for the prompts', async () => {
    const { checkpoint, tokenizer } = await folder;
    assert.deepEqual(checkpoint.config, { vocabSize: 50257, positions: 128, embed: 64, heads: 4, layers: 2, inner: 256, eosTokenId: 50256 });
    assert.equal(checkpoint.dtype, 'F16');
    assert.equal(tokenizer.source, 'gpt-tokenizer r50k_base');
    expected.texts.forEach((text, i) => {
      assert.deepEqual(tokenizer.encode(text), expected.prompts[i], text);
      assert.equal(tokenizer.decode(expected.prompts[i]), text);
    });
    assert.equal(last.length, expected.prompts.length * 50257);
    assert.equal(full.length, expected.prompts[expected.full_prompt].length * 50257);
  });

  for (const { backend, dtype } of TARGETS) {
    test(`${backend} ${dtype}: logits and greedy continuations as transformers' ${expected.transformers} (torch ${expected.torch})`, async () => {
      const { checkpoint } = await folder;
      const c: GPT2Config = checkpoint.config;
      const model: GPT2 = await createGPT2(checkpoint, { backend, dtype, batch: expected.prompts.length });
      try {
        const V = c.vocabSize;
        const p = expected.full_prompt;
        assertLogits('every position of the full prompt', await model.prefill(0, expected.prompts[p], { all: true }), full, dtype);
        model.release(0);
        for (let b = 0; b < expected.prompts.length; b++) {
          assertLogits(`last position of prompt ${b}`, await model.prefill(b, expected.prompts[b]), last.subarray(b * V, (b + 1) * V), dtype);
        }
        const tol = TOLERANCE[dtype] * range(last);
        // Generation, the prompts decoded together: the same tokens while transformers' margins allow.
        const steps = expected.greedy[0].tokens.length;
        const r = await generate(model, expected.prompts, { maxNewTokens: steps, eosTokenId: null });
        expected.greedy.forEach((g, b) => assertGreedy(`greedy continuation of prompt ${b}`, r.tokens[b], g, tol));
        // Every step on transformers' own sequence (prompt and continuation in, logits of every position
        // out): our best token is transformers' wherever its margin over the second exceeds twice the bound.
        let checked = 0;
        for (let b = 0; b < expected.prompts.length; b++) {
          const { tokens, margins } = expected.greedy[b];
          const n = expected.prompts[b].length;
          model.release(b);
          const logits = await model.prefill(b, [...expected.prompts[b], ...tokens.slice(0, -1)], { all: true });
          tokens.forEach((token, s) => {
            if (margins[s] <= 2 * tol) return;
            checked++;
            const ours = argmax(logits.subarray((n - 1 + s) * V, (n + s) * V));
            assert.equal(ours, token, `prompt ${b}, step ${s}: our best token ${ours}, transformers' ${token} (margin ${margins[s].toFixed(4)}, twice the bound ${(2 * tol).toFixed(4)})`);
          });
        }
        // Not a vacuous check: on the committed fixture f32 checks all 60 steps, f16 the 50 whose margins
        // exceed twice its bound (0.054).
        const total = expected.greedy.reduce((n, g) => n + g.tokens.length, 0);
        assert.ok(checked >= 0.8 * total, `${checked} of ${total} steps checked`);
      } finally {
        model.dispose();
      }
    });
  }
});
