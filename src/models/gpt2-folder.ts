/**
 * A Hugging Face GPT-2 folder in Node: config.json, model.safetensors and the tokenizer's files
 * (tokenizer.json, or vocab.json with merges.txt; GPT-2's own from the gpt-tokenizer package where the
 * folder has neither). node:fs is imported when called, so that the library still loads in a browser,
 * which gives the files' contents to gpt2Checkpoint and tokenizerFromFiles itself.
 */
import { CheckpointError, ValueError, describe } from '../errors.js';
import { gpt2Checkpoint, type GPT2Checkpoint } from './gpt2.js';
import { gpt2Tokenizer, tokenizerFromFiles, type Tokenizer } from './tokenizer.js';

export interface GPT2Folder {
  checkpoint: GPT2Checkpoint;
  tokenizer: Tokenizer;
}

/** Read and check a GPT-2 folder; a missing or malformed file is a CheckpointError naming it. */
export async function readGPT2(dir: string): Promise<GPT2Folder> {
  if (typeof dir !== 'string' || dir === '') throw new ValueError('dir', 'a folder path', describe(dir));
  const { readFile, stat } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const info = await stat(dir).catch(() => undefined);
  if (!info?.isDirectory()) throw new CheckpointError(dir, 'a folder with config.json and model.safetensors', info ? 'a file' : 'no such folder');
  const read = async (name: string, required: boolean): Promise<Buffer | undefined> => {
    try {
      return await readFile(join(dir, name));
    } catch (e) {
      if (!required && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new CheckpointError(join(dir, name), `a readable file (a GPT-2 folder has config.json and model.safetensors)`, (e as Error).message);
    }
  };
  const config = (await read('config.json', true))!.toString('utf8');
  const bytes = (await read('model.safetensors', true))!;
  const checkpoint = gpt2Checkpoint({ config, safetensors: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) });
  const text = async (name: string) => (await read(name, false))?.toString('utf8');
  const [tokenizerJson, vocabJson, mergesTxt] = [await text('tokenizer.json'), await text('vocab.json'), await text('merges.txt')];
  const tokenizer = tokenizerJson !== undefined || (vocabJson !== undefined && mergesTxt !== undefined) ? tokenizerFromFiles({ tokenizerJson, vocabJson, mergesTxt }) : await gpt2Tokenizer();
  if (tokenizer.vocabSize > checkpoint.config.vocabSize) {
    throw new CheckpointError(join(dir, tokenizer.source), `a vocabulary of at most config.json's vocab_size (${checkpoint.config.vocabSize}) tokens`, `${tokenizer.vocabSize} tokens`);
  }
  return { checkpoint, tokenizer };
}
