// A GPT-2 checkpoint folder of seeded random weights, written by the library alone (no Python, no network):
// config.json and model.safetensors in Hugging Face's layout, for timing the model where transformers is
// not at hand (gpt2-speed.ts --model DIR --backend cpu). The tokenizer files are left out: readGPT2 then
// uses GPT-2's own vocabulary from the gpt-tokenizer package.
//
//   node dist/bench/models/random-gpt2.js DIR [--layers 12] [--embed 768] [--heads 12] [--vocab 50257]
//        [--positions 1024] [--dtype F32|F16]
//
// The defaults are GPT-2 small's sizes (124M parameters). Weights are uniform on ±0.02 (layer norms' weights
// about 1), from a linear congruential generator seeded with 1: the same folder every time.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeSafetensors, gpt2Config } from '../../src/index.js';
import { gpt2Parameters } from '../../src/models/gpt2.js';

const dir = process.argv[2];
if (!dir || dir.startsWith('--')) throw new Error('usage: node dist/bench/models/random-gpt2.js DIR [--layers N] [--embed N] [--heads N] [--vocab N] [--positions N] [--dtype F32|F16]');
const option = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const config = {
  model_type: 'gpt2',
  vocab_size: Number(option('vocab', '50257')),
  n_positions: Number(option('positions', '1024')),
  n_embd: Number(option('embed', '768')),
  n_head: Number(option('heads', '12')),
  n_layer: Number(option('layers', '12')),
  layer_norm_epsilon: 1e-5,
  activation_function: 'gelu_new',
};
const dtype = option('dtype', 'F32') as 'F32' | 'F16';
let seed = 1;
const tensors: Record<string, { shape: number[]; values: Float32Array }> = {};
for (const [name, shape] of gpt2Parameters(gpt2Config(config))) {
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  const one = name.includes('ln_') && name.endsWith('weight') ? 1 : 0;
  for (let i = 0; i < values.length; i++) values[i] = ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 0.04 + one;
  tensors[name] = { shape, values };
}
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors, dtype));
process.stderr.write(`${dir}: GPT-2 of ${config.n_layer} layers, n_embd ${config.n_embd}, ${config.n_head} heads, vocabulary ${config.vocab_size}, ${dtype}\n`);
