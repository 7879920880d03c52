// The tiny GPT-2 of the GPT-2 tests (test/gpt2.test.ts, test/demo.test.ts): its config, seeded weights in
// Hugging Face's layout, as a safetensors file and as a model folder.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeSafetensors, roundToF16 } from '../src/index.js';
import { gpt2Parameters } from '../src/models/gpt2.js';
import { randn } from './util.js';

export const CONFIG = { vocab_size: 97, n_positions: 40, n_embd: 32, n_head: 4, n_layer: 2, n_inner: null, model_type: 'gpt2', activation_function: 'gelu_new', layer_norm_epsilon: 1e-5, eos_token_id: 96 };
export const C = CONFIG.n_embd;
export const V = CONFIG.vocab_size;

export type Weights = Map<string, { shape: number[]; values: Float32Array }>;

/**
 * Seeded weights in Hugging Face's layout, each value exact in f16 (so the f32 and f16 models hold the
 * same weights, and the float64 reference sees them too), large enough that the logits are well apart.
 */
function makeWeights(): Weights {
  const w: Weights = new Map();
  let seed = 100;
  for (const [name, shape] of gpt2Parameters({ vocabSize: V, positions: CONFIG.n_positions, embed: C, heads: CONFIG.n_head, layers: CONFIG.n_layer, inner: 4 * C, eosTokenId: 96 })) {
    const n = shape.reduce((a, b) => a * b, 1);
    const scale = name.endsWith('.bias') ? 0.1 : name.includes('ln_') ? 0.1 : name.startsWith('w') ? 0.5 : 1 / Math.sqrt(shape[0]);
    const shift = name.includes('ln_') && name.endsWith('.weight') ? 1 : 0;
    const values = Float32Array.from(randn(n, seed++, scale), (x) => roundToF16(x + shift));
    w.set(name, { shape, values });
  }
  return w;
}

export const WEIGHTS = makeWeights();

export function checkpointBytes(dtype: 'F32' | 'F16' | 'BF16', prefix = ''): Uint8Array {
  return encodeSafetensors(Object.fromEntries([...WEIGHTS].map(([k, v]) => [prefix + k, v])), dtype);
}

/**
 * A model folder: the tiny checkpoint, and a byte-level vocabulary of its 97 tokens: the 94 printable
 * ASCII characters, space (Ġ), newline (Ċ) and <|endoftext|>, with no merges.
 */
export function writeFolder(dir: string, config: object = CONFIG): void {
  const symbols = [...Array.from({ length: 94 }, (_, i) => String.fromCharCode(0x21 + i)), 'Ġ', 'Ċ', '<|endoftext|>'];
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  writeFileSync(join(dir, 'model.safetensors'), checkpointBytes('F16', 'transformer.'));
  writeFileSync(join(dir, 'vocab.json'), JSON.stringify(Object.fromEntries(symbols.map((s, i) => [s, i]))));
  writeFileSync(join(dir, 'merges.txt'), '#version: 0.2\n');
}
