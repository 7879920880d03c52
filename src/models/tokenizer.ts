/**
 * GPT-2's byte-level BPE tokenizer. Text is split into words by GPT-2's pattern (contractions, letters,
 * numbers, other symbols, each with at most one leading space; runs of whitespace), each word's UTF-8
 * bytes are spelled in GPT-2's byte alphabet (every byte a printable character: bytes_to_unicode), and
 * pairs of adjacent symbols are merged, the highest-priority pair first and every occurrence of it left
 * to right, until no pair of the vocabulary is left. Decoding concatenates the tokens' bytes.
 *
 * A pair's priority comes from one of two sources, which give the same tokens for GPT-2's vocabulary:
 *   merges (Hugging Face's tokenizer.json or merges.txt): the pair's line in the merge list;
 *   ranks (tiktoken's form, as the gpt-tokenizer package ships GPT-2's r50k_base): the id of the token
 *   the pair makes.
 * Special tokens (<|endoftext|>) are cut out of the text before the split and map to their ids.
 */
import { CheckpointError, ValueError, describe } from '../errors.js';

export interface Tokenizer {
  /** Token ids of `text` (special tokens such as <|endoftext|> written in it become their ids). */
  encode(text: string): number[];
  /** The bytes of the tokens, concatenated (a token may hold part of a UTF-8 character). */
  decodeBytes(ids: readonly number[]): Uint8Array;
  /** The text of the tokens (incomplete UTF-8 at the end as U+FFFD). */
  decode(ids: readonly number[]): string;
  /** Tokens in the vocabulary (the largest id + 1). */
  readonly vocabSize: number;
  /** The id of <|endoftext|>, where the vocabulary has it. */
  readonly eosTokenId?: number;
  /** Where the vocabulary came from ('tokenizer.json', 'vocab.json + merges.txt', 'gpt-tokenizer r50k_base'). */
  readonly source: string;
}

const PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const EOS = '<|endoftext|>';

/** GPT-2's bytes_to_unicode: byte b as a printable character (printable Latin-1 as itself, others from U+0100 on). */
function byteAlphabet(): { toChar: string[]; toByte: Map<string, number> } {
  const toChar: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    toChar[b] = String.fromCharCode(printable ? b : next++);
  }
  return { toChar, toByte: new Map(toChar.map((c, b) => [c, b])) };
}

const ALPHABET = byteAlphabet();

/** A token in GPT-2's byte alphabet from its bytes. */
export function bytesToSymbols(bytes: ArrayLike<number>): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += ALPHABET.toChar[bytes[i]];
  return s;
}

interface BpeSource {
  /** Token (in the byte alphabet) → id. */
  vocab: Map<string, number>;
  /** Priority of merging a and b (lower first), or undefined where they do not merge. */
  priority: (a: string, b: string) => number | undefined;
  /** Special tokens written as text → id. */
  special: Map<string, number>;
  source: string;
}

class ByteLevelBpe implements Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenId?: number;
  readonly source: string;
  private readonly vocab: Map<string, number>;
  private readonly priority: BpeSource['priority'];
  private readonly special: Map<string, number>;
  private readonly specialPattern?: RegExp;
  /** id → bytes */
  private readonly bytes: Uint8Array[] = [];
  private readonly cache = new Map<string, number[]>();

  constructor(s: BpeSource) {
    this.vocab = s.vocab;
    this.priority = s.priority;
    this.special = s.special;
    this.source = s.source;
    const encoder = new TextEncoder();
    for (const [token, id] of s.vocab) {
      const bytes = [...token].map((c) => ALPHABET.toByte.get(c));
      // A token outside the byte alphabet (an added token kept in the vocab) decodes as its UTF-8 text.
      this.bytes[id] = bytes.every((b) => b !== undefined) ? Uint8Array.from(bytes as number[]) : encoder.encode(token);
    }
    for (const [text, id] of s.special) this.bytes[id] = encoder.encode(text);
    this.vocabSize = this.bytes.length;
    this.eosTokenId = s.special.get(EOS) ?? s.vocab.get(EOS);
    if (s.special.size > 0) {
      const escaped = [...s.special.keys()].sort((a, b) => b.length - a.length).map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
      this.specialPattern = new RegExp(`(${escaped.join('|')})`);
    }
  }

  encode(text: string): number[] {
    if (typeof text !== 'string') throw new ValueError('text', 'a string', describe(text));
    const ids: number[] = [];
    const pieces = this.specialPattern ? text.split(this.specialPattern) : [text];
    pieces.forEach((piece, i) => {
      if (this.specialPattern && i % 2 === 1) ids.push(this.special.get(piece)!);
      else for (const word of piece.match(PATTERN) ?? []) ids.push(...this.word(word));
    });
    return ids;
  }

  /** The ids of one word of the split. */
  private word(word: string): number[] {
    const hit = this.cache.get(word);
    if (hit) return hit;
    let parts = [...bytesToSymbols(new TextEncoder().encode(word))];
    while (parts.length > 1) {
      let best: number | undefined;
      let at = -1;
      for (let i = 0; i + 1 < parts.length; i++) {
        const p = this.priority(parts[i], parts[i + 1]);
        if (p !== undefined && (best === undefined || p < best)) [best, at] = [p, i];
      }
      if (best === undefined) break;
      const [a, b] = [parts[at], parts[at + 1]];
      const merged: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (i + 1 < parts.length && parts[i] === a && parts[i + 1] === b) {
          merged.push(a + b);
          i++;
        } else {
          merged.push(parts[i]);
        }
      }
      parts = merged;
    }
    const ids = parts.map((p) => {
      const id = this.vocab.get(p);
      if (id === undefined) throw new ValueError('text', `text whose bytes the vocabulary (${this.source}) covers`, `a symbol ${JSON.stringify(p)} it lacks`);
      return id;
    });
    if (this.cache.size < 65536) this.cache.set(word, ids);
    return ids;
  }

  decodeBytes(ids: readonly number[]): Uint8Array {
    const parts = ids.map((id, i) => {
      const b = this.bytes[id];
      if (b === undefined) throw new ValueError(`ids[${i}]`, `a token id of the vocabulary (below ${this.vocabSize})`, describe(id));
      return b;
    });
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  decode(ids: readonly number[]): string {
    return new TextDecoder().decode(this.decodeBytes(ids));
  }
}

/** The files of a Hugging Face GPT-2 tokenizer: tokenizer.json, or vocab.json and merges.txt (their text). */
export interface TokenizerFiles {
  tokenizerJson?: string;
  vocabJson?: string;
  mergesTxt?: string;
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(file, 'JSON', `text that does not parse (${e instanceof Error ? e.message : String(e)})`);
  }
}

function vocabMap(json: unknown, file: string): Map<string, number> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new CheckpointError(file, 'an object of token → id', describe(json));
  const vocab = new Map<string, number>();
  for (const [token, id] of Object.entries(json)) {
    if (!Number.isSafeInteger(id) || (id as number) < 0) throw new CheckpointError(`${file}: ${JSON.stringify(token)}`, 'a non-negative integer id', describe(id));
    vocab.set(token, id as number);
  }
  return vocab;
}

/** Merge priorities from a list of pairs: "a b" strings (merges.txt, older tokenizer.json) or [a, b] arrays. */
function mergePriority(merges: unknown[], file: string): BpeSource['priority'] {
  const rank = new Map<string, number>();
  merges.forEach((m, i) => {
    const pair = typeof m === 'string' ? m.split(' ') : m;
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') {
      throw new CheckpointError(`${file}: merge ${i}`, 'a pair of tokens ("a b" or ["a", "b"])', describe(m));
    }
    const key = `${pair[0]} ${pair[1]}`;
    if (!rank.has(key)) rank.set(key, i);
  });
  return (a, b) => rank.get(`${a} ${b}`);
}

/** A byte-level BPE tokenizer from a Hugging Face folder's files; tokenizer.json is used where given. */
export function tokenizerFromFiles(files: TokenizerFiles): Tokenizer {
  if (files.tokenizerJson !== undefined) {
    const file = 'tokenizer.json';
    const json = parseJson(files.tokenizerJson, file) as { model?: { type?: string; vocab?: unknown; merges?: unknown }; added_tokens?: { content?: unknown; id?: unknown; special?: unknown }[] };
    const model = json?.model;
    if (typeof model !== 'object' || model === null || (model.type !== undefined && model.type !== 'BPE')) {
      throw new CheckpointError(`${file}: model`, 'a BPE model { type: "BPE", vocab, merges }', describe(model?.type ?? model));
    }
    if (!Array.isArray(model.merges)) throw new CheckpointError(`${file}: model.merges`, 'a list of merges', describe(model.merges));
    const special = new Map<string, number>();
    for (const t of Array.isArray(json.added_tokens) ? json.added_tokens : []) {
      if (typeof t.content === 'string' && Number.isSafeInteger(t.id)) special.set(t.content, t.id as number);
    }
    return new ByteLevelBpe({ vocab: vocabMap(model.vocab, `${file}: model.vocab`), priority: mergePriority(model.merges, `${file}: model.merges`), special, source: file });
  }
  if (files.vocabJson === undefined || files.mergesTxt === undefined) {
    const missing = files.vocabJson === undefined ? 'vocab.json' : 'merges.txt';
    throw new CheckpointError(missing, 'tokenizer.json, or vocab.json with merges.txt', 'no such file');
  }
  const vocab = vocabMap(parseJson(files.vocabJson, 'vocab.json'), 'vocab.json');
  const lines = files.mergesTxt.split(/\r?\n/).filter((l) => l.length > 0 && !l.startsWith('#version'));
  const special = new Map<string, number>();
  if (vocab.has(EOS)) special.set(EOS, vocab.get(EOS)!);
  return new ByteLevelBpe({ vocab, priority: mergePriority(lines, 'merges.txt'), special, source: 'vocab.json + merges.txt' });
}

/** GPT-2's own tokenizer, from the ranks the gpt-tokenizer package ships (r50k_base, GPT-2's vocabulary). */
export async function gpt2Tokenizer(): Promise<Tokenizer> {
  let ranks: (string | number[])[];
  try {
    ranks = (await import('gpt-tokenizer/bpeRanks/r50k_base')).default as (string | number[])[];
  } catch (e) {
    throw new CheckpointError('tokenizer', "GPT-2's vocabulary: tokenizer.json or vocab.json + merges.txt in the model folder, or the gpt-tokenizer package", `neither (${e instanceof Error ? e.message : String(e)})`);
  }
  const encoder = new TextEncoder();
  const vocab = new Map<string, number>();
  ranks.forEach((t, id) => vocab.set(bytesToSymbols(typeof t === 'string' ? encoder.encode(t) : t), id));
  return new ByteLevelBpe({ vocab, priority: (a, b) => vocab.get(a + b), special: new Map([[EOS, ranks.length]]), source: 'gpt-tokenizer r50k_base' });
}
