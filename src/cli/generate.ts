/**
 * `flashattn generate`: text from a Hugging Face GPT-2 folder. The prompt's tokens are prefilled, new
 * tokens are chosen (greedy by default; --temperature, --top-k, --top-p, --seed to sample) and written to
 * stdout as they come (one prompt; several prompts run as one batch and are printed when done), then the
 * figures go to stderr: prefill and decode tokens/s and the peak memory the model counted (weights, KV
 * caches, activations). Bad input (no such folder, a file that does not match, an empty prompt, a prompt
 * longer than the model's positions) is a one-line message and exit code 2.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { FlashAttnError } from '../errors.js';
import { MemoryTracker } from '../memory.js';
import { generate } from '../models/generate.js';
import { createGPT2 } from '../models/gpt2.js';
import { readGPT2 } from '../models/gpt2-folder.js';
import { defaultGpu, preferWebgpu } from '../webgpu/device.js';
import { parsePositiveInt, parseSeed } from './parse.js';

interface GenerateOptions {
  model: string;
  prompt: string[];
  maxNewTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  seed: number;
  backend: 'auto' | 'cpu' | 'webgpu';
  dtype?: 'f32' | 'f16';
  attention: 'flash' | 'standard';
  eos: boolean;
}

function parseNonNegative(value: string): number {
  const x = Number(value);
  if (value.trim() === '' || !Number.isFinite(x) || x < 0) throw new InvalidArgumentError('It must be a number ≥ 0.');
  return x;
}

function parseProbability(value: string): number {
  const x = Number(value);
  if (value.trim() === '' || !(x > 0 && x <= 1)) throw new InvalidArgumentError('It must be a number in (0, 1].');
  return x;
}

const HELP_AFTER = `
The folder is Hugging Face's GPT-2 layout: config.json, model.safetensors (F32, F16 or BF16), and
tokenizer.json or vocab.json + merges.txt (without them, GPT-2's own vocabulary from the gpt-tokenizer
package). Weights, KV caches and activations are stored in --dtype; arithmetic is f32 or wider.

Output: the generated text on stdout (streamed for one prompt); on stderr the prompt and new token
counts, prefill tokens/s (prompt tokens over the time to the first token's logits), decode tokens/s
(new tokens after the first over the decode steps' time) and the peak memory the model counted.

Exit status: 0 when the text was generated; 2 on bad options or a bad model folder or prompt; 1 on
another error.

Examples:
  $ flashattn generate --model ./gpt2 --prompt "The meaning of life is"
  $ flashattn generate --model ./gpt2 --prompt "Once upon a time" --temperature 0.8 --top-p 0.9 --seed 3
  $ flashattn generate --model ./gpt2 --prompt "Hello" --prompt "A longer prompt, for a batch of two"
`;

async function run(o: GenerateOptions, cmd: Command): Promise<void> {
  const fail = (message: string): never => cmd.error(`error: ${message}`, { exitCode: 2 });
  if (o.prompt.length === 0) fail('--prompt is required (the text to continue)');
  o.prompt.forEach((p, i) => p.trim() === '' && fail(`--prompt${o.prompt.length > 1 ? ` ${i + 1}` : ''} is empty`));
  let folder;
  try {
    folder = await readGPT2(o.model);
  } catch (e) {
    if (e instanceof FlashAttnError) return fail(`--model: ${e.message}`);
    throw e;
  }
  const { checkpoint, tokenizer } = folder;
  const prompts = o.prompt.map((p) => tokenizer.encode(p));
  const limit = checkpoint.config.positions;
  prompts.forEach((p, i) => p.length >= limit && fail(`--prompt${o.prompt.length > 1 ? ` ${i + 1}` : ''}: ${p.length} tokens, the model takes fewer than ${limit} (n_positions), with room for new ones`));

  let backend: 'cpu' | 'webgpu';
  let dtype = o.dtype;
  if (o.backend === 'auto') {
    backend = (await preferWebgpu(dtype ?? 'f16')) ? 'webgpu' : 'cpu';
  } else {
    backend = o.backend;
  }
  if (backend === 'webgpu') {
    let f16 = false;
    try {
      f16 = (await defaultGpu()).f16;
    } catch (e) {
      return fail(`--backend webgpu: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (dtype === 'f16' && !f16) fail("--dtype f16: this adapter lacks 'shader-f16'");
    dtype ??= f16 ? 'f16' : 'f32';
  }
  dtype ??= 'f32';
  const memory = new MemoryTracker();
  const maxLength = Math.min(limit, Math.max(...prompts.map((p) => p.length)) + o.maxNewTokens);
  let model;
  try {
    model = await createGPT2(checkpoint, { backend, dtype, attention: o.attention, batch: prompts.length, maxLength, memory });
  } catch (e) {
    if (e instanceof FlashAttnError) return fail(e.message);
    throw e;
  }
  try {
    const stream = prompts.length === 1;
    const decoder = new TextDecoder();
    if (stream) process.stdout.write(o.prompt[0]);
    const result = await generate(model, prompts, {
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      seed: o.seed,
      eosTokenId: o.eos ? tokenizer.eosTokenId ?? checkpoint.config.eosTokenId : null,
      onToken: stream ? (token) => process.stdout.write(decoder.decode(tokenizer.decodeBytes([token]), { stream: true })) : undefined,
    });
    if (stream) process.stdout.write(decoder.decode() + '\n');
    else result.tokens.forEach((t, i) => process.stdout.write(`--- ${i + 1}\n${o.prompt[i]}${tokenizer.decode(t)}\n`));
    const { prefill, decode } = result;
    const rate = (n: number, s: number) => (s > 0 ? (n / s).toFixed(1) : '—');
    const lines = [
      `model: ${o.model} (${checkpoint.config.layers} layers, n_embd ${checkpoint.config.embed}, ${checkpoint.dtype} file) on ${backend} in ${dtype}, ${o.attention} attention; tokenizer: ${tokenizer.source}`,
      `prefill: ${prefill.tokens} tokens in ${(prefill.seconds * 1000).toFixed(1)} ms, ${rate(prefill.tokens, prefill.seconds)} tokens/s`,
      `decode: ${decode.tokens} tokens in ${decode.steps} steps, ${(decode.seconds * 1000).toFixed(1)} ms, ${rate(decode.tokens, decode.seconds)} tokens/s`,
      `peak memory: ${(memory.peak / 2 ** 20).toFixed(1)} MiB (weights, KV caches and activations)`,
    ];
    process.stderr.write(lines.join('\n') + '\n');
  } finally {
    model.dispose();
  }
}

/** Add `generate` to the program. */
export function addGenerateCommand(program: Command): void {
  program
    .command('generate')
    .description('Generate text with a GPT-2 checkpoint folder (Hugging Face layout): streams the text, then prints prefill and decode tokens/s and the peak memory.')
    .requiredOption('--model <dir>', 'the model folder: config.json, model.safetensors, tokenizer files')
    .addOption(new Option('--prompt <text>', 'the text to continue (repeatable: a batch of prompts)').argParser((v: string, prev: string[]) => [...prev, v]).default([], 'none'))
    .addOption(new Option('--max-new-tokens <n>', 'most new tokens per prompt').argParser(parsePositiveInt).default(50))
    .addOption(new Option('--temperature <t>', '0: greedy (the most likely token); above 0: sample from softmax(logits / t)').argParser(parseNonNegative).default(0))
    .addOption(new Option('--top-k <k>', 'sample among the k most likely tokens').argParser(parsePositiveInt))
    .addOption(new Option('--top-p <p>', 'sample among the fewest most likely tokens whose probability reaches p').argParser(parseProbability))
    .addOption(new Option('--seed <s>', 'seed of the sampling (0 to 2^32-1)').argParser(parseSeed).default(0))
    .addOption(new Option('--backend <name>', "'auto': webgpu on a GPU adapter (not a software one), else cpu").choices(['auto', 'cpu', 'webgpu']).default('auto'))
    .addOption(new Option('--dtype <type>', 'storage of weights, caches and activations (default: f16 on webgpu with shader-f16, else f32)').choices(['f32', 'f16']))
    .addOption(new Option('--attention <a>', "the prompt's attention: 'flash' or 'standard' (materialises the N×N scores)").choices(['flash', 'standard']).default('flash'))
    .addOption(new Option('--no-eos', 'do not stop at the end-of-text token'))
    .addHelpText('after', HELP_AFTER)
    .action(async (o: GenerateOptions, cmd: Command) => run(o, cmd));
}
