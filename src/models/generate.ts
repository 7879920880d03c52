/**
 * Text generation with a GPT2: prompts (token ids) into slots 0 .. P−1 of the model's KV caches, each
 * prefilled on its own (prompts of different lengths), then one token of every unfinished sequence per
 * decode step, all together, each at its own length. A sequence stops at the end-of-text token, after
 * maxNewTokens, or when its slot is full (the model's maxLength).
 *
 * Choosing the next token, as Hugging Face's generate() in this order: greedy (temperature 0, the
 * default: the most likely token, the lowest id among equals), or logits / temperature, then top-k (the k
 * most likely tokens), then top-p (the fewest most likely tokens whose probability reaches p), then one
 * draw from the softmax of what is left with a seeded generator (mulberry32), in sequence order each step.
 */
import { ValueError, describe } from '../errors.js';
import { mulberry32 } from '../random.js';
import type { GPT2 } from './gpt2.js';

export interface SamplingOptions {
  /** 0 (default): greedy. Above 0: sample from softmax(logits / temperature). */
  temperature?: number;
  /** Sample among the k most likely tokens only (default: all). */
  topK?: number;
  /** Sample among the fewest most likely tokens whose probability reaches p, in (0, 1] (default 1: all). */
  topP?: number;
  /** Seed of the sampling generator (default 0). */
  seed?: number;
}

export interface GenerateOptions extends SamplingOptions {
  /** Most new tokens per sequence. */
  maxNewTokens: number;
  /** A sequence ends after this token (default the model's eos_token_id); null: only at the length. */
  eosTokenId?: number | null;
  /** Each new token as it is chosen: `sequence` is the prompt's index. */
  onToken?: (token: number, sequence: number) => void;
}

export interface GenerateResult {
  /** The new tokens of each prompt (the end-of-text token included where it came). */
  tokens: number[][];
  /** Prompt tokens and the seconds of their prefill (to the first tokens' logits on the host). */
  prefill: { tokens: number; seconds: number };
  /** Tokens made by decode steps, the steps, and their seconds. */
  decode: { tokens: number; steps: number; seconds: number };
}

function checkSampling(o: SamplingOptions): Required<SamplingOptions> {
  const temperature = o.temperature ?? 0;
  if (typeof temperature !== 'number' || !(temperature >= 0) || !Number.isFinite(temperature)) throw new ValueError('options.temperature', 'a finite number ≥ 0 (0: greedy)', describe(o.temperature));
  const topK = o.topK ?? 0;
  if (!Number.isSafeInteger(topK) || topK < 0) throw new ValueError('options.topK', 'a positive integer', describe(o.topK));
  const topP = o.topP ?? 1;
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new ValueError('options.topP', 'a number in (0, 1]', describe(o.topP));
  const seed = o.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new ValueError('options.seed', 'an integer', describe(o.seed));
  return { temperature, topK, topP, seed };
}

/** A function from a row of logits to the next token, per the sampling options (checked here). */
export function sampler(options: SamplingOptions = {}): (logits: Float32Array) => number {
  const { temperature, topK, topP, seed } = checkSampling(options);
  const uniform = mulberry32(seed);
  return (logits) => {
    if (temperature === 0) return argmax(logits);
    // Candidates, most likely first (ties: lower id first).
    let ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
    if (topK > 0) ids = ids.slice(0, topK);
    const top = logits[ids[0]] / temperature;
    const p = ids.map((i) => Math.exp(logits[i] / temperature - top));
    let total = p.reduce((a, b) => a + b, 0);
    let keep = ids.length;
    if (topP < 1) {
      let sum = 0;
      for (keep = 0; keep < ids.length && sum < topP * total; keep++) sum += p[keep];
      total = sum;
    }
    let u = uniform() * total;
    for (let i = 0; i < keep; i++) {
      u -= p[i];
      if (u < 0) return ids[i];
    }
    return ids[keep - 1];
  };
}

/** The index of the largest value (the first of equals; NaN never wins). */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best] || Number.isNaN(v[best])) best = i;
  return best;
}

/** Generate from each prompt (token ids) with `model`, which needs a slot per prompt (options.batch). */
export async function generate(model: GPT2, prompts: readonly (readonly number[])[], options: GenerateOptions): Promise<GenerateResult> {
  if (!Array.isArray(prompts) || prompts.length < 1) throw new ValueError('prompts', 'a non-empty array of prompts (arrays of token ids)', describe(prompts));
  if (prompts.length > model.batch) throw new ValueError('prompts', `at most ${model.batch} prompts (the model's batch)`, `${prompts.length}`);
  prompts.forEach((p, i) => {
    if (!Array.isArray(p) || p.length < 1) throw new ValueError(`prompts[${i}]`, 'a non-empty array of token ids', describe(p));
    if (p.length >= model.maxLength) throw new ValueError(`prompts[${i}]`, `fewer than ${model.maxLength} tokens (the model's maxLength), leaving room for one new token`, `${p.length} tokens`);
  });
  if (typeof options !== 'object' || options === null) throw new ValueError('options', 'a GenerateOptions object', describe(options));
  const { maxNewTokens, onToken } = options;
  if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1) throw new ValueError('options.maxNewTokens', 'a positive integer', describe(maxNewTokens));
  const eos = options.eosTokenId === undefined ? model.config.eosTokenId : options.eosTokenId;
  if (eos !== null && (!Number.isSafeInteger(eos) || eos < 0)) throw new ValueError('options.eosTokenId', 'a token id or null', describe(eos));
  if (onToken !== undefined && typeof onToken !== 'function') throw new ValueError('options.onToken', 'a function', describe(onToken));
  const next = sampler(options);
  const V = model.config.vocabSize;

  const tokens: number[][] = prompts.map(() => []);
  const done = prompts.map(() => false);
  const take = (b: number, token: number) => {
    tokens[b].push(token);
    onToken?.(token, b);
    done[b] = token === eos || tokens[b].length >= maxNewTokens || prompts[b].length + tokens[b].length >= model.maxLength;
  };
  prompts.forEach((_, b) => model.release(b));

  let t0 = performance.now();
  const firsts: number[] = [];
  for (let b = 0; b < prompts.length; b++) firsts.push(next(await model.prefill(b, prompts[b])));
  const prefillSeconds = (performance.now() - t0) / 1000;
  firsts.forEach((token, b) => take(b, token));

  t0 = performance.now();
  let steps = 0;
  let made = 0;
  for (;;) {
    // Each unfinished sequence's last token goes in; its slot holds every token before it.
    const slots = prompts.map((_, b) => b).filter((b) => !done[b]);
    if (slots.length === 0) break;
    const logits = await model.decode(slots, slots.map((b) => tokens[b][tokens[b].length - 1]));
    steps++;
    slots.forEach((b, i) => take(b, next(logits.subarray(i * V, (i + 1) * V))));
    made += slots.length;
  }
  return {
    tokens,
    prefill: { tokens: prompts.reduce((n, p) => n + p.length, 0), seconds: prefillSeconds },
    decode: { tokens: made, steps, seconds: (performance.now() - t0) / 1000 },
  };
}
