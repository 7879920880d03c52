/**
 * PyTorch's figures, read from the JSON lines that bench/anchors/*.py print on a CUDA machine, so
 * that a report can put them beside ours.
 *   pytorch_sdpa.py:          {gpu, torch}, then per case {backend: math|efficient|flash|cudnn, dtype:
 *                             float32|float16, B, H, N, D, causal, fwd_ms, fwd_tflops, fwd_extra_mib,
 *                             fwdbwd_ms?, fwdbwd_tflops?} or {..., error}.
 *   pytorch_seed_notebook.py: per point {backend: math|flash, seq, ms, peak_mib} or {backend, seq, error}.
 * One file may hold either kind of line (or both); each line is recognised by its fields. A line that is
 * not JSON, or not one of these shapes, is an AnchorError naming the file and the line.
 */
import { readFileSync } from 'node:fs';
import type { BenchDType, Case } from './results.js';

export const SDPA_BACKENDS = ['math', 'efficient', 'flash', 'cudnn'] as const;
export type SdpaBackend = (typeof SDPA_BACKENDS)[number];

export interface SdpaRow extends Case {
  backend: SdpaBackend;
  fwdMs: number | null;
  fwdTflops: number | null;
  fwdbwdMs: number | null;
  fwdbwdTflops: number | null;
  /** Memory beyond the inputs during one forward, MiB. */
  fwdExtraMib: number | null;
  error?: string;
}

export interface SdpaAnchor {
  file: string;
  gpu: string;
  torch: string;
  rows: SdpaRow[];
}

export interface SeedRow {
  backend: 'math' | 'flash';
  seq: number;
  ms: number | null;
  peakMib: number | null;
  error?: string;
}

export interface SeedAnchor {
  file: string;
  gpu: string | null;
  torch: string | null;
  rows: SeedRow[];
}

/** A line of an anchor file that cannot be read. */
export class AnchorError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    detail: string,
  ) {
    super(`${file}:${line}: ${detail}`);
    this.name = 'AnchorError';
  }
}

type Json = Record<string, unknown>;

const DTYPES: Record<string, BenchDType> = { float32: 'f32', float16: 'f16' };

function num(o: Json, key: string): number | null {
  const v = o[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function int(o: Json, key: string, where: () => AnchorError): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw where();
  return v;
}

function sdpaRow(o: Json, fail: (detail: string) => AnchorError): SdpaRow {
  const backend = o.backend;
  if (!SDPA_BACKENDS.includes(backend as SdpaBackend)) throw fail(`backend must be one of ${SDPA_BACKENDS.join(', ')}, got ${JSON.stringify(backend)}`);
  const dtype = DTYPES[String(o.dtype)];
  if (!dtype) throw fail(`dtype must be float32 or float16, got ${JSON.stringify(o.dtype)}`);
  if (typeof o.causal !== 'boolean') throw fail('causal must be true or false');
  const size = (k: string) => int(o, k, () => fail(`${k} must be a positive integer`));
  const row: SdpaRow = {
    backend: backend as SdpaBackend,
    dtype,
    B: size('B'),
    H: size('H'),
    N: size('N'),
    D: size('D'),
    causal: o.causal,
    fwdMs: num(o, 'fwd_ms'),
    fwdTflops: num(o, 'fwd_tflops'),
    fwdbwdMs: num(o, 'fwdbwd_ms'),
    fwdbwdTflops: num(o, 'fwdbwd_tflops'),
    fwdExtraMib: num(o, 'fwd_extra_mib'),
  };
  if (typeof o.error === 'string') row.error = o.error;
  else if (row.fwdTflops === null) throw fail('a case needs fwd_tflops or error');
  return row;
}

function seedRow(o: Json, fail: (detail: string) => AnchorError): SeedRow {
  if (o.backend !== 'math' && o.backend !== 'flash') throw fail(`backend must be math or flash, got ${JSON.stringify(o.backend)}`);
  const row: SeedRow = { backend: o.backend, seq: int(o, 'seq', () => fail('seq must be a positive integer')), ms: num(o, 'ms'), peakMib: num(o, 'peak_mib') };
  if (typeof o.error === 'string') row.error = o.error;
  else if (row.ms === null) throw fail('a point needs ms or error');
  return row;
}

/** Parse the text of one anchor file (`file` names it in errors and in the report). */
export function parseAnchors(text: string, file: string): { sdpa?: SdpaAnchor; seed?: SeedAnchor } {
  let header: { gpu: string; torch: string } | undefined;
  const sdpa: SdpaRow[] = [];
  const seed: SeedRow[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    const fail = (detail: string) => new AnchorError(file, i + 1, detail);
    if (line === '') return;
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch {
      throw fail('not a JSON line');
    }
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw fail('not a JSON object');
    const obj = o as Json;
    if (typeof obj.gpu === 'string' && typeof obj.torch === 'string') header = { gpu: obj.gpu, torch: obj.torch };
    else if ('seq' in obj) seed.push(seedRow(obj, fail));
    else if ('N' in obj && 'D' in obj) sdpa.push(sdpaRow(obj, fail));
    else throw fail('neither a header {gpu, torch}, an SDPA case {backend, dtype, B, H, N, D, ...} nor a seed point {backend, seq, ...}');
  });
  const out: { sdpa?: SdpaAnchor; seed?: SeedAnchor } = {};
  if (sdpa.length) {
    if (!header) throw new AnchorError(file, 1, 'SDPA cases need the header line {gpu, torch} first');
    out.sdpa = { file, ...header, rows: sdpa };
  }
  if (seed.length) out.seed = { file, gpu: header?.gpu ?? null, torch: header?.torch ?? null, rows: seed };
  if (!sdpa.length && !seed.length) throw new AnchorError(file, 1, 'no SDPA case and no seed point in the file');
  return out;
}

/** Read and merge anchor files (a later file's rows of the same kind are added to the earlier ones'). */
export function readAnchors(files: readonly string[]): { sdpa?: SdpaAnchor; seed?: SeedAnchor } {
  const merged: { sdpa?: SdpaAnchor; seed?: SeedAnchor } = {};
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new AnchorError(file, 0, `cannot read the file (${e instanceof Error ? e.message : String(e)})`);
    }
    const a = parseAnchors(text, file);
    if (a.sdpa) merged.sdpa = merged.sdpa ? { ...merged.sdpa, rows: [...merged.sdpa.rows, ...a.sdpa.rows] } : a.sdpa;
    if (a.seed) merged.seed = merged.seed ? { ...merged.seed, rows: [...merged.seed.rows, ...a.seed.rows] } : a.seed;
  }
  return merged;
}

/** PyTorch's row for a case and backend, if the anchor has one. */
export function sdpaFor(anchor: SdpaAnchor, c: Case, backend: SdpaBackend): SdpaRow | undefined {
  return anchor.rows.find((r) => r.backend === backend && r.dtype === c.dtype && r.B === c.B && r.H === c.H && r.N === c.N && r.D === c.D && r.causal === c.causal);
}
