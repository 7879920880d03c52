/**
 * PyTorch's figures, read from the JSON lines that bench/anchors/*.py print on a CUDA machine, so
 * that a report can put them beside ours.
 *   pytorch_sdpa.py:          {gpu, torch}, then per case {backend: math|efficient|flash|cudnn, dtype:
 *                             float32|float16, B, H, N, D, causal, fwd_ms, fwd_tflops, fwd_extra_mib,
 *                             fwdbwd_ms?, fwdbwd_tflops?} or {..., error}.
 *   pytorch_seed_notebook.py: per point {backend: math|flash, seq, ms, peak_mib} or {backend, seq, error}.
 *   pytorch_decode.py:        {gpu, torch}, then per decode case {backend (flash, cudnn), dtype?, B, H,
 *                             Hkv, Nk, D, gqa?, ms, min_ms?, max_ms?, GBps?} or {..., error};
 *   bench/peers/onnxruntime-decode.mjs: the same decode lines (with wall_ms) after a header {gpu, onnxruntime}.
 * One file may hold any of these kinds of line; each line is recognised by its fields. A line that is
 * not JSON, or not one of these shapes, is an AnchorError naming the file and the line.
 */
import { readFileSync } from 'node:fs';
import type { BenchDType, Case, DecodeCase } from './results.js';
import { kvBytes } from './suites.js';

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

/** A decode case measured by a peer (PyTorch's SDPA backends, onnxruntime-web). */
export interface DecodeRow extends DecodeCase {
  /** The column or row it shows as: 'torch flash', 'torch cudnn', 'onnxruntime <backend>'. */
  series: string;
  backend: string;
  /** Median (or best) ms per call, and the spread where the line gives it. */
  ms: number | null;
  minMs: number | null;
  maxMs: number | null;
  /** K and V bytes / ms (computed from ms, as ours; the line's own GBps only where it has no ms). */
  gbps: number | null;
  /** The host's wall ms per call, where the peer measured it (onnxruntime-decode.mjs does). */
  wallMs: number | null;
  /** How grouped-query heads were run: 'enable_gqa', 'repeat_interleave' (K and V expanded before timing), or absent (H = Hkv). */
  gqa?: string;
  error?: string;
  file: string;
}

export interface DecodeAnchor {
  /** One per file: where the figures came from. */
  sources: { file: string; gpu: string | null; runtime: string | null }[];
  rows: DecodeRow[];
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

/** The series a decode line shows as, from its file's header and its backend. */
function decodeSeries(backend: string, header: Header | undefined): string {
  if (header?.torch !== undefined) return `torch ${backend}`;
  if (header?.onnxruntime !== undefined) return `onnxruntime ${backend}`;
  return backend;
}

function decodeRow(o: Json, header: Header | undefined, file: string, fail: (detail: string) => AnchorError): DecodeRow {
  if (typeof o.backend !== 'string' || o.backend === '') throw fail(`backend must be a name, got ${JSON.stringify(o.backend)}`);
  const dtype = o.dtype === undefined ? 'f16' : DTYPES[String(o.dtype)];
  if (!dtype) throw fail(`dtype must be float32 or float16, got ${JSON.stringify(o.dtype)}`);
  const size = (k: string) => int(o, k, () => fail(`${k} must be a positive integer`));
  const c: DecodeCase = { B: size('B'), H: size('H'), Hkv: size('Hkv'), Nk: size('Nk'), D: size('D'), dtype };
  const ms = num(o, 'ms');
  const given = num(o, 'GBps');
  const row: DecodeRow = {
    ...c,
    series: decodeSeries(o.backend, header),
    backend: o.backend,
    ms,
    minMs: num(o, 'min_ms'),
    maxMs: num(o, 'max_ms'),
    gbps: ms !== null && ms > 0 ? kvBytes(c) / (ms * 1e6) : given,
    wallMs: num(o, 'wall_ms'),
    file,
  };
  if (typeof o.gqa === 'string') row.gqa = o.gqa;
  if (typeof o.error === 'string') row.error = o.error;
  else if (ms === null) throw fail('a decode case needs ms or error');
  return row;
}

interface Header {
  gpu: string;
  torch?: string;
  onnxruntime?: string;
}

/** Parse the text of one anchor file (`file` names it in errors and in the report). */
export function parseAnchors(text: string, file: string): { sdpa?: SdpaAnchor; seed?: SeedAnchor; decode?: DecodeAnchor } {
  let header: Header | undefined;
  const sdpa: SdpaRow[] = [];
  const seed: SeedRow[] = [];
  const decode: DecodeRow[] = [];
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
    if (typeof obj.gpu === 'string' && (typeof obj.torch === 'string' || typeof obj.onnxruntime === 'string')) {
      header = { gpu: obj.gpu };
      if (typeof obj.torch === 'string') header.torch = obj.torch;
      if (typeof obj.onnxruntime === 'string') header.onnxruntime = obj.onnxruntime;
    } else if ('seq' in obj) seed.push(seedRow(obj, fail));
    else if ('Nk' in obj) decode.push(decodeRow(obj, header, file, fail));
    else if ('N' in obj && 'D' in obj) sdpa.push(sdpaRow(obj, fail));
    else throw fail('neither a header {gpu, torch} or {gpu, onnxruntime}, an SDPA case {backend, dtype, B, H, N, D, ...}, a decode case {backend, B, H, Hkv, Nk, D, ...} nor a seed point {backend, seq, ...}');
  });
  const out: { sdpa?: SdpaAnchor; seed?: SeedAnchor; decode?: DecodeAnchor } = {};
  if (sdpa.length) {
    if (header?.torch === undefined) throw new AnchorError(file, 1, 'SDPA cases need the header line {gpu, torch} first');
    out.sdpa = { file, gpu: header.gpu, torch: header.torch, rows: sdpa };
  }
  if (seed.length) out.seed = { file, gpu: header?.gpu ?? null, torch: header?.torch ?? null, rows: seed };
  if (decode.length) {
    const runtime = header?.torch !== undefined ? `PyTorch ${header.torch}` : header?.onnxruntime !== undefined ? `onnxruntime-web ${header.onnxruntime}` : null;
    out.decode = { sources: [{ file, gpu: header?.gpu ?? null, runtime }], rows: decode };
  }
  if (!sdpa.length && !seed.length && !decode.length) throw new AnchorError(file, 1, 'no SDPA case, decode case or seed point in the file');
  return out;
}

/** Read and merge anchor files (a later file's rows of the same kind are added to the earlier ones'). */
export function readAnchors(files: readonly string[]): { sdpa?: SdpaAnchor; seed?: SeedAnchor; decode?: DecodeAnchor } {
  const merged: { sdpa?: SdpaAnchor; seed?: SeedAnchor; decode?: DecodeAnchor } = {};
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
    if (a.decode) merged.decode = merged.decode ? { sources: [...merged.decode.sources, ...a.decode.sources], rows: [...merged.decode.rows, ...a.decode.rows] } : a.decode;
  }
  return merged;
}

/** PyTorch's row for a case and backend, if the anchor has one. */
export function sdpaFor(anchor: SdpaAnchor, c: Case, backend: SdpaBackend): SdpaRow | undefined {
  return anchor.rows.find((r) => r.backend === backend && r.dtype === c.dtype && r.B === c.B && r.H === c.H && r.N === c.N && r.D === c.D && r.causal === c.causal);
}

/** The series of a decode anchor, in the order they first appear. */
export function decodeSeriesOf(anchor: DecodeAnchor): string[] {
  return [...new Set(anchor.rows.map((r) => r.series))];
}

/** A peer's row for a decode case and series, if the anchor has one (the last one read wins). */
export function decodeFor(anchor: DecodeAnchor, c: DecodeCase, series: string): DecodeRow | undefined {
  for (let i = anchor.rows.length - 1; i >= 0; i--) {
    const r = anchor.rows[i];
    if (r.series === series && r.dtype === c.dtype && r.B === c.B && r.H === c.H && r.Hkv === c.Hkv && r.Nk === c.Nk && r.D === c.D) return r;
  }
  return undefined;
}
