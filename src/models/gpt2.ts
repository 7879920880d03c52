/**
 * GPT-2 (Radford et al. 2019) for inference, as Hugging Face's GPT2LMHeadModel, built from the nn ops with
 * one KV cache per layer (createKVCache). Shapes, for n new tokens of each of B sequences, C = n_embd,
 * H = n_head heads of D = C/H, I = n_inner (4C), V = vocab_size:
 *   x = wte[token] + wpe[position]                            (B, n, C)   positions continue each sequence
 *   per layer (pre-LayerNorm):
 *     h = LN1(x); q, k, v = h·Wqᵀ + bq, h·Wkᵀ + bk, h·Wvᵀ + bv   (B, n, C) each = (B, n, H, D)
 *     a = causal attention of q over the sequence's cached k, v and the new ones      (B, n, C)
 *     x = x + a·Woᵀ + bo                                      (the add fused into the linear)
 *     x = x + gelu(LN2(x)·W1ᵀ + b1)·W2ᵀ + b2                  (B, n, I) inside; GELU's tanh approximation
 *   logits = LN_f(x)·wteᵀ                                     (rows, V)   the LM head tied to wte
 * Only the rows whose logits are asked for go through LN_f and the head: the last of each sequence (or,
 * for checks, every row of a prefill).
 *
 * The KV caches have `batch` slots, one per sequence. prefill(slot, tokens) runs one sequence: when its
 * slot is empty the prompt's attention is forward() with the causal mask (flash or standard, the
 * `attention` option) and its k and v are appended to the cache; a slot that already holds tokens appends
 * and attends through the cache (causal, bottom-right aligned). decode(slots, tokens) runs one token of
 * each named slot together, through the caches (the split-KV decode schedule on webgpu), each at its own
 * length; on webgpu a decode step is one batch of the ops (Ops.batch: the layers' ops and cache calls in one
 * submission, buffers and bind groups kept in the model's scratch, one wait: the logits). GPT-2's c_attn (one Conv1D to 3C) is held as its three C×C blocks, so that q, k and v are dense
 * tensors the attention and the cache read in place.
 *
 * Checkpoints are Hugging Face's: config.json and model.safetensors with the names of GPT2Model
 * (`h.0.attn.c_attn.weight`, ..., with or without the `transformer.` prefix), Conv1D weights stored
 * (in, out) and transposed here to the ops' (out, in); F32, F16 or BF16 (or F64) tensors, converted to
 * the model's dtype. `gpt2Checkpoint` checks every tensor's presence and shape before any is used.
 */
import { createKVCache } from '../api.js';
import { CheckpointError, NotSupportedError, ValueError, describe } from '../errors.js';
import { decodeF16 } from '../f16.js';
import type { KVCache } from '../kvcache.js';
import { MemoryTracker, memory as defaultMemory } from '../memory.js';
import { createOps } from '../nn/index.js';
import { Live } from '../nn/live.js';
import { LAYER_NORM_EPS, type Ops, type OpsScratch } from '../nn/ops.js';
import { isGpuBuffer, type AnyTensor, type Tensor } from '../tensor.js';
import { GpuBuffers } from '../webgpu/buffers.js';
import { webgpuDevice } from '../webgpu/device.js';
import { parseSafetensors, tensorValues, type Safetensors, type SafetensorsEntry } from './safetensors.js';

/** The sizes of a GPT-2, from Hugging Face's config.json. */
export interface GPT2Config {
  /** vocab_size: 50257 for GPT-2's tokenizer. */
  vocabSize: number;
  /** n_positions: the longest sequence (rows of wpe). */
  positions: number;
  /** n_embd: C. */
  embed: number;
  /** n_head: H. */
  heads: number;
  /** n_layer */
  layers: number;
  /** n_inner: the MLP's hidden width, 4·C when null. */
  inner: number;
  /** eos_token_id: <|endoftext|>, 50256 for GPT-2's tokenizer. */
  eosTokenId: number;
}

/** A GPT-2 checkpoint, checked: its config and its tensors, named without the `transformer.` prefix. */
export interface GPT2Checkpoint {
  config: GPT2Config;
  /** f32 values of a parameter, in Hugging Face's layout ('h.0.attn.c_attn.weight': (C, 3C), Conv1D (in, out)). */
  values(name: string): Float32Array;
  /** The file's element type (the first tensor's): 'F32', 'F16', 'BF16'. */
  dtype: string;
}

function field(json: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const x = json[key] ?? fallback;
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 1) throw new CheckpointError(`${file}: ${key}`, 'a positive integer', describe(json[key]));
  return x;
}

/** A GPT2Config from config.json's text or parsed object; fields GPT-2 does not have are refused. */
export function gpt2Config(json: unknown, file = 'config.json'): GPT2Config {
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      throw new CheckpointError(file, 'JSON', `text that does not parse (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new CheckpointError(file, 'a JSON object (a GPT-2 config)', describe(json));
  const j = json as Record<string, unknown>;
  if (j.model_type !== undefined && j.model_type !== 'gpt2') throw new CheckpointError(`${file}: model_type`, '"gpt2"', describe(j.model_type));
  const embed = field(j, 'n_embd', file);
  const heads = field(j, 'n_head', file);
  if (embed % heads !== 0) throw new CheckpointError(`${file}: n_head`, `a divisor of n_embd (${embed})`, describe(heads));
  const activation = j.activation_function ?? 'gelu_new';
  if (activation !== 'gelu_new' && activation !== 'gelu_pytorch_tanh') {
    throw new NotSupportedError(`${file}: activation_function`, `activation ${describe(activation)}`, '"gelu_new" (GELU, tanh approximation)', describe(activation));
  }
  const eps = j.layer_norm_epsilon ?? LAYER_NORM_EPS;
  if (eps !== LAYER_NORM_EPS) throw new NotSupportedError(`${file}: layer_norm_epsilon`, 'a layer norm epsilon other than 1e-5', '1e-5', describe(eps));
  for (const [key, value] of [['scale_attn_by_inverse_layer_idx', false], ['add_cross_attention', false], ['scale_attn_weights', true], ['tie_word_embeddings', true]] as const) {
    if (j[key] !== undefined && j[key] !== value) throw new NotSupportedError(`${file}: ${key}`, `${key} ${describe(j[key])}`, String(value), describe(j[key]));
  }
  const inner = j.n_inner === null || j.n_inner === undefined ? 4 * embed : field(j, 'n_inner', file);
  const eos = j.eos_token_id ?? 50256;
  if (typeof eos !== 'number' || !Number.isSafeInteger(eos) || eos < 0) throw new CheckpointError(`${file}: eos_token_id`, 'a token id', describe(eos));
  return { vocabSize: field(j, 'vocab_size', file), positions: field(j, 'n_positions', file, j.n_ctx as number), embed, heads, layers: field(j, 'n_layer', file), inner, eosTokenId: eos };
}

/** Every parameter of a GPT2Model with its shape in Hugging Face's layout (Conv1D weights (in, out)). */
export function gpt2Parameters(c: GPT2Config): Map<string, number[]> {
  const [C, I] = [c.embed, c.inner];
  const p = new Map<string, number[]>([
    ['wte.weight', [c.vocabSize, C]],
    ['wpe.weight', [c.positions, C]],
  ]);
  for (let l = 0; l < c.layers; l++) {
    const h = `h.${l}.`;
    p.set(h + 'ln_1.weight', [C]).set(h + 'ln_1.bias', [C]);
    p.set(h + 'attn.c_attn.weight', [C, 3 * C]).set(h + 'attn.c_attn.bias', [3 * C]);
    p.set(h + 'attn.c_proj.weight', [C, C]).set(h + 'attn.c_proj.bias', [C]);
    p.set(h + 'ln_2.weight', [C]).set(h + 'ln_2.bias', [C]);
    p.set(h + 'mlp.c_fc.weight', [C, I]).set(h + 'mlp.c_fc.bias', [I]);
    p.set(h + 'mlp.c_proj.weight', [I, C]).set(h + 'mlp.c_proj.bias', [C]);
  }
  p.set('ln_f.weight', [C]).set('ln_f.bias', [C]);
  return p;
}

/**
 * A checked checkpoint from config.json (text or object) and model.safetensors (bytes, or parsed): every
 * parameter present (with or without the `transformer.` prefix) with GPT-2's shape for the config, else a
 * CheckpointError naming the tensor. Other tensors (lm_head.weight, tied; old attn.bias masks) are ignored.
 */
export function gpt2Checkpoint(files: { config: unknown; safetensors: Uint8Array | Safetensors }): GPT2Checkpoint {
  const config = gpt2Config(files.config);
  const st = files.safetensors instanceof Uint8Array ? parseSafetensors(files.safetensors) : files.safetensors;
  const prefix = st.tensors.has('wte.weight') ? '' : st.tensors.has('transformer.wte.weight') ? 'transformer.' : undefined;
  if (prefix === undefined) throw new CheckpointError('model.safetensors: wte.weight', "GPT-2's token embedding (wte.weight or transformer.wte.weight)", 'neither');
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, shape] of gpt2Parameters(config)) {
    const t = st.tensors.get(prefix + name);
    const what = `${prefix}${name}`;
    if (!t) throw new CheckpointError(`model.safetensors: ${what}`, `a tensor [${shape.join(', ')}] (config.json's sizes)`, 'no such tensor');
    if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i])) {
      throw new CheckpointError(`model.safetensors: ${what}`, `shape [${shape.join(', ')}] (config.json's sizes${name.includes('.c_') ? '; Conv1D weights are (in, out)' : ''})`, `[${t.shape.join(', ')}]`);
    }
    entries.set(name, t);
  }
  return {
    config,
    dtype: entries.get('wte.weight')!.dtype,
    values(name: string) {
      const t = entries.get(name);
      if (!t) throw new ValueError('name', "a GPT-2 parameter's name ('h.0.attn.c_attn.weight')", describe(name));
      return tensorValues(t);
    },
  };
}

export interface GPT2Options {
  backend: 'cpu' | 'webgpu';
  /** Storage of weights, activations and the KV caches; f16 computes in f32 (or wider). */
  dtype: 'f32' | 'f16';
  /** The attention of a prompt into an empty slot: 'flash' (default) or 'standard' (for comparisons). */
  attention?: 'flash' | 'standard';
  /** Sequences the KV caches hold at once (default 1). */
  batch?: number;
  /** Most tokens a sequence may hold, prompt and generated (default and at most config.positions). */
  maxLength?: number;
  /** webgpu: the caller's device (default the library's own). */
  device?: GPUDevice;
  /** Counts the weights, the caches and every intermediate (default the shared `memory`). */
  memory?: MemoryTracker;
}

export interface GPT2 {
  readonly config: GPT2Config;
  readonly backend: 'cpu' | 'webgpu';
  readonly dtype: 'f32' | 'f16';
  readonly batch: number;
  readonly maxLength: number;
  readonly memory: MemoryTracker;
  /** Tokens each slot holds. */
  readonly lengths: number[];
  /**
   * Append `tokens` to a slot's sequence; the logits (f32) of its last position (V), or with `all` of
   * every new position ((n, V), row-major).
   */
  prefill(slot: number, tokens: readonly number[], options?: { all?: boolean }): Promise<Float32Array>;
  /** One new token for each of `slots` (distinct), run together; their logits, (slots.length, V). */
  decode(slots: readonly number[], tokens: readonly number[]): Promise<Float32Array>;
  /** Forget a slot's tokens. */
  release(slot: number): void;
  /** Free the weights and caches; the model cannot be used afterwards. */
  dispose(): void;
}

interface Linear {
  weight: AnyTensor;
  bias: AnyTensor;
}
interface Norm {
  weight: AnyTensor;
  bias: AnyTensor;
}
interface Block {
  ln1: Norm;
  q: Linear;
  k: Linear;
  v: Linear;
  proj: Linear;
  ln2: Norm;
  fc: Linear;
  fcProj: Linear;
}

/**
 * A fill of columns col0 .. col0 + cols − 1 of a row-major (inRows, inCols) array (a Conv1D weight,
 * (in, out)), transposed: out (cols, inRows), out[j][i] = values[i][col0 + j] (a linear's (out, in)).
 */
function transposed(values: Float32Array, inRows: number, inCols: number, col0: number, cols: number): (out: Float32Array) => void {
  return (out) => {
    for (let i = 0; i < inRows; i++) for (let j = 0; j < cols; j++) out[j * inRows + i] = values[i * inCols + col0 + j];
  };
}

/** A GPT-2 from a checked checkpoint, its weights in options.dtype on options.backend. */
export async function createGPT2(checkpoint: GPT2Checkpoint, options: GPT2Options): Promise<GPT2> {
  if (typeof checkpoint !== 'object' || checkpoint === null || typeof checkpoint.values !== 'function') {
    throw new ValueError('checkpoint', 'a GPT2Checkpoint (from gpt2Checkpoint or readGPT2)', describe(checkpoint));
  }
  if (typeof options !== 'object' || options === null) throw new ValueError('options', 'a GPT2Options object', describe(options));
  const c = checkpoint.config;
  const attention = options.attention ?? 'flash';
  if (attention !== 'flash' && attention !== 'standard') throw new ValueError('options.attention', "'flash' or 'standard'", describe(attention));
  const batch = options.batch ?? 1;
  if (!Number.isSafeInteger(batch) || batch < 1) throw new ValueError('options.batch', 'a positive integer', describe(batch));
  const maxLength = options.maxLength ?? c.positions;
  if (!Number.isSafeInteger(maxLength) || maxLength < 1 || maxLength > c.positions) {
    throw new ValueError('options.maxLength', `an integer in [1, ${c.positions}] (config n_positions)`, describe(options.maxLength));
  }
  const memory = options.memory ?? defaultMemory;
  if (!(memory instanceof MemoryTracker)) throw new ValueError('options.memory', 'a MemoryTracker', describe(options.memory));
  const device = options.backend === 'webgpu' ? (options.device ?? (await webgpuDevice())) : undefined;
  const ops = await createOps({ backend: options.backend, dtype: options.dtype, memory, device });
  const [C, I, H] = [c.embed, c.inner, c.heads];
  const made: AnyTensor[] = [];
  const caches: KVCache[] = [];
  const param = async (shape: number[], fill: (out: Float32Array) => void, what: string) => {
    const t = await ops.create(shape, fill, what, 'checkpoint');
    made.push(t);
    return t;
  };
  const copy = (name: string) => (out: Float32Array) => out.set(checkpoint.values(name));
  const vector = (name: string, n: number, from = 0) => param([n], (out) => out.set(checkpoint.values(name).subarray(from, from + n)), name);
  const norm = async (name: string): Promise<Norm> => ({ weight: await vector(`${name}.weight`, C), bias: await vector(`${name}.bias`, C) });
  /** A Conv1D (in, out) as a linear (out, in), or its columns col0 .. col0 + cols − 1. */
  const conv1d = async (name: string, inF: number, outF: number, col0 = 0, cols = outF): Promise<Linear> => {
    const values = checkpoint.values(`${name}.weight`);
    return { weight: await param([cols, inF], transposed(values, inF, outF, col0, cols), `${name}.weight`), bias: await vector(`${name}.bias`, cols, col0) };
  };
  let wte: AnyTensor, wpe: AnyTensor, lnF: Norm, headBias: AnyTensor;
  const blocks: Block[] = [];
  try {
    wte = await param([c.vocabSize, C], copy('wte.weight'), 'wte.weight');
    wpe = await param([c.positions, C], copy('wpe.weight'), 'wpe.weight');
    for (let l = 0; l < c.layers; l++) {
      const h = `h.${l}.`;
      blocks.push({
        ln1: await norm(h + 'ln_1'),
        q: await conv1d(h + 'attn.c_attn', C, 3 * C, 0, C),
        k: await conv1d(h + 'attn.c_attn', C, 3 * C, C, C),
        v: await conv1d(h + 'attn.c_attn', C, 3 * C, 2 * C, C),
        proj: await conv1d(h + 'attn.c_proj', C, C),
        ln2: await norm(h + 'ln_2'),
        fc: await conv1d(h + 'mlp.c_fc', C, I),
        fcProj: await conv1d(h + 'mlp.c_proj', I, C),
      });
    }
    lnF = await norm('ln_f');
    headBias = await param([c.vocabSize], (out) => out.fill(0), 'the LM head bias (zero: GPT-2 has none)');
    for (let l = 0; l < c.layers; l++) {
      caches.push(await createKVCache({ batch, kvHeads: H, headDim: C / H, maxLength, dtype: options.dtype, backend: options.backend, device, memory }));
    }
  } catch (e) {
    made.forEach((t) => ops.free(t));
    caches.forEach((k) => k.dispose());
    throw e;
  }
  // A decode step's log-sum-exp (the caches write it; the model reads only their output).
  const own = device ? new GpuBuffers(device, memory) : undefined;
  const lse = own?.create(batch * H * 4, 'the attention log-sum-exp of a decode step', 'options.batch');
  return new Gpt2Model(c, ops, { wte, wpe, blocks, lnF, headBias }, caches, attention, batch, maxLength, own && lse ? { own, lse } : undefined);
}

class Gpt2Model implements GPT2 {
  private disposed = false;
  /** Calls run one at a time: each starts from the lengths the last one left. */
  private queue: Promise<unknown> = Promise.resolve();
  /** What decode steps keep between steps: their activations' buffers, bind groups and uniforms (Ops.batch). */
  private readonly scratch: OpsScratch;

  constructor(
    readonly config: GPT2Config,
    private readonly ops: Ops,
    private readonly w: { wte: AnyTensor; wpe: AnyTensor; blocks: Block[]; lnF: Norm; headBias: AnyTensor },
    private readonly caches: KVCache[],
    private readonly attention: 'flash' | 'standard',
    readonly batch: number,
    readonly maxLength: number,
    /** webgpu: the buffer decode steps' attention writes its log-sum-exp to, and its allocator. */
    private readonly kept?: { own: GpuBuffers; lse: GPUBuffer },
  ) {
    this.scratch = ops.scratch();
  }

  get backend() {
    return this.ops.backend;
  }
  get dtype() {
    return this.ops.dtype;
  }
  get memory() {
    return this.ops.memory;
  }
  get lengths(): number[] {
    return this.caches[0].lengths;
  }

  prefill(slot: number, tokens: readonly number[], options: { all?: boolean } = {}): Promise<Float32Array> {
    return this.enqueue(() => {
      this.slot('slot', slot);
      if (!Array.isArray(tokens) || tokens.length < 1) throw new ValueError('tokens', 'a non-empty array of token ids', describe(tokens));
      return this.run([slot], tokens, options.all === true);
    });
  }

  decode(slots: readonly number[], tokens: readonly number[]): Promise<Float32Array> {
    return this.enqueue(() => {
      if (!Array.isArray(slots) || slots.length < 1) throw new ValueError('slots', 'a non-empty array of slot indices', describe(slots));
      slots.forEach((s, i) => this.slot(`slots[${i}]`, s));
      if (new Set(slots).size !== slots.length) throw new ValueError('slots', 'distinct slots', describe(slots));
      if (!Array.isArray(tokens) || tokens.length !== slots.length) throw new ValueError('tokens', `${slots.length} token ids (one per slot)`, describe(tokens));
      return this.run(slots, tokens, false);
    });
  }

  release(slot: number): void {
    this.alive();
    this.slot('slot', slot);
    this.caches.forEach((k) => k.release(slot));
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const { wte, wpe, blocks, lnF, headBias } = this.w;
    const all = [wte, wpe, headBias, lnF.weight, lnF.bias];
    for (const b of blocks) all.push(...[b.ln1, b.q, b.k, b.v, b.proj, b.ln2, b.fc, b.fcProj].flatMap((p) => [p.weight, p.bias]));
    all.forEach((t) => this.ops.free(t));
    this.caches.forEach((k) => k.dispose());
    this.scratch.dispose();
    this.kept?.own.destroyAll();
  }

  private enqueue<T>(f: () => Promise<T>): Promise<T> {
    const next = this.queue.then(() => (this.alive(), f()));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private alive(): void {
    if (this.disposed) throw new ValueError('model', 'a model not yet disposed', 'a disposed one');
  }

  private slot(name: string, s: unknown): void {
    if (typeof s !== 'number' || !Number.isSafeInteger(s) || s < 0 || s >= this.batch) throw new ValueError(name, `a slot in 0..${this.batch - 1} (options.batch)`, describe(s));
  }

  /**
   * n tokens for each of B slots (decode: n = 1; prefill: B = 1): through every layer, then the logits of
   * each slot's last row, or of every row.
   */
  private async run(slots: readonly number[], tokens: readonly number[], all: boolean): Promise<Float32Array> {
    const { ops } = this;
    const B = slots.length;
    const n = tokens.length / B;
    const lengths = this.lengths;
    const starts = slots.map((s) => lengths[s]);
    starts.forEach((start, b) => {
      if (start + n > this.maxLength) {
        throw new ValueError('tokens', `at most ${this.maxLength - start} new tokens for slot ${slots[b]} (it holds ${start} of maxLength ${this.maxLength})`, `${n}`);
      }
    });
    const positions = slots.flatMap((_, b) => Array.from({ length: n }, (_, i) => starts[b] + i));
    const fresh = B === 1 && starts[0] === 0;
    // A decode step (one token a slot) runs as one batch of ops: one submission, one wait (the logits).
    return n === 1 && !fresh ? ops.batch(this.scratch, 'tokens', () => this.layers(slots, tokens, positions, n, all, fresh)) : this.layers(slots, tokens, positions, n, all, fresh);
  }

  /** The body of run: embedding, the layers, the logits read back. */
  private async layers(slots: readonly number[], tokens: readonly number[], positions: number[], n: number, all: boolean, fresh: boolean): Promise<Float32Array> {
    const { ops, w, config: c } = this;
    const B = slots.length;
    const C = c.embed;
    const live = new Live(ops);
    try {
      let x = live.add(await ops.embedding(tokens, positions, w.wte, w.wpe, [B, n]));
      for (let l = 0; l < c.layers; l++) {
        const blk = w.blocks[l];
        const h = live.add(await ops.layerNorm(x, blk.ln1.weight, blk.ln1.bias));
        const [q, k, v] = [live.add(await ops.linear(h, blk.q.weight, blk.q.bias)), live.add(await ops.linear(h, blk.k.weight, blk.k.bias)), live.add(await ops.linear(h, blk.v.weight, blk.v.bias))];
        live.free(h);
        const a = live.add(fresh ? await this.prompt(l, slots[0], q, k, v) : await this.cached(l, slots, q, k, v));
        live.free(q, k, v);
        const x2 = live.add(await ops.linear(a, blk.proj.weight, blk.proj.bias, { residual: x }));
        live.free(a, x);
        const h2 = live.add(await ops.layerNorm(x2, blk.ln2.weight, blk.ln2.bias));
        const f = live.add(await ops.linear(h2, blk.fc.weight, blk.fc.bias, { activation: 'gelu' }));
        live.free(h2);
        x = live.add(await ops.linear(f, blk.fcProj.weight, blk.fcProj.bias, { residual: x2 }));
        live.free(f, x2);
      }
      // The rows whose logits are wanted: all, or each sequence's last (every row when n = 1).
      let rows = x;
      if (!all && n > 1) {
        rows = live.add(await ops.slice(reshape(x, [n, C]), n - 1, 1, 'x'));
        live.free(x);
      }
      const hF = live.add(await ops.layerNorm(rows, w.lnF.weight, w.lnF.bias));
      live.free(rows);
      const logits = live.add(await ops.linear(hF, w.wte, w.headBias));
      live.free(hF);
      const out = (await ops.output(logits, true)) as Tensor;
      live.release(logits);
      return out.dtype === 'f16' ? decodeF16(out.data as Uint16Array) : (out.data as Float32Array);
    } finally {
      live.freeAll();
    }
  }

  /** A whole prompt into an empty slot: causal forward() over it, its k and v appended to the cache. */
  private async prompt(layer: number, slot: number, q: AnyTensor, k: AnyTensor, v: AnyTensor): Promise<AnyTensor> {
    const a = await this.ops.attention(q, k, v, { heads: this.config.heads, causal: true, algorithm: this.attention });
    try {
      await this.caches[layer].append(this.heads(k), this.heads(v), { sequences: [slot] });
    } catch (e) {
      this.ops.free(a);
      throw e;
    }
    return a;
  }

  /** New tokens of each slot through the cache: appended, then causal attention over the slot's tokens. */
  private async cached(layer: number, slots: readonly number[], q: AnyTensor, k: AnyTensor, v: AnyTensor): Promise<AnyTensor> {
    const { ops } = this;
    const cache = this.caches[layer];
    const options = { sequences: [...slots], causal: true };
    if (ops.backend === 'cpu') {
      const { out } = await cache.forward(this.heads(q), this.heads(k), this.heads(v), options);
      return ops.input(reshape(out, q.shape), 'the attention output'); // counted (a shared copy)
    }
    const out = await ops.empty(q.shape, `the attention output [${q.shape.join(', ')}]`, 'tokens');
    try {
      const into = { data: out.data as GPUBuffer, dtype: this.dtype, shape: this.heads(out).shape };
      const [B, n, H] = into.shape;
      const encoder = ops.recording();
      if (encoder && this.kept) {
        // In a batch: recorded into its encoder, the log-sum-exp into the model's own buffer.
        const lse = { data: this.kept.lse, dtype: 'f32' as const, shape: [B, H, n] };
        await cache.forward(this.heads(q), this.heads(k), this.heads(v), { ...options, out: into, lse, encoder });
        return out;
      }
      const { lse } = await cache.forward(this.heads(q), this.heads(k), this.heads(v), { ...options, out: into });
      if (isGpuBuffer(lse.data)) lse.data.destroy(); // handed over, so not counted
    } catch (e) {
      ops.free(out);
      throw e;
    }
    return out;
  }

  /** (B, n, C) as (B, n, H, D): the same data. */
  private heads(t: AnyTensor) {
    const [B, n, C] = t.shape;
    const H = this.config.heads;
    return { data: t.data, dtype: t.dtype, shape: [B, n, H, C / H] } as Tensor;
  }
}

/** The same data under another shape of as many elements (the ops free tensors by their data). */
function reshape(t: AnyTensor, shape: readonly number[]): AnyTensor {
  return { data: t.data, dtype: t.dtype, shape: [...shape] } as AnyTensor;
}
