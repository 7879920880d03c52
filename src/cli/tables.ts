/**
 * The tables of a report as plain data (a head and rows of text cells), built from Results alone. The
 * terminal (report.ts, through cli-table3) and index.html (html.ts) render the same models, so both
 * always say the same thing. A row that could not be timed (out of memory, failed validation, error)
 * is one cell spanning the measured columns that says so.
 */
import type { Algorithm } from '../index.js';
import { SDPA_BACKENDS, decodeFor, decodeSeriesOf, sdpaFor, type DecodeRow, type SdpaAnchor, type SdpaRow, type SeedAnchor, type SeedRow } from './anchors.js';
import { formatErrors, measurementOf } from './bench.js';
import { DECODE_VARIANTS, variantLabel } from './decode-bench.js';
import { slowMemory, throughputUnit } from './findings.js';
import {
  caseKey,
  decodeKey,
  type Case,
  type DecodeCase,
  type DecodeMeasurement,
  type DecodeResult,
  type DroppedDecodeCase,
  type EncoderPoint,
  type EncoderResult,
  type Measurement,
  type Pass,
  type Results,
  type Sweep,
  type SweepAxis,
} from './results.js';
import { kvBytes } from './suites.js';

/** A cell: text, or text spanning several columns. */
export type Cell = string | { text: string; span: number };

export interface TableModel {
  title: string;
  head: string[];
  rows: Cell[][];
  /** Columns (by index) that hold numbers: right-aligned. */
  numeric: number[];
  notes: string[];
}

const MiB = 1024 * 1024;
const PASSES: readonly Pass[] = ['forward', 'forward+backward'];

export function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3);
}

/** TFLOP/s with three significant digits (a cpu does a few thousandths). */
export function fmtTflops(x: number): string {
  return x >= 100 ? x.toFixed(0) : x.toPrecision(3);
}

export function fmtMiB(bytes: number): string {
  const m = bytes / MiB;
  return m >= 100 ? m.toFixed(0) : m >= 10 ? m.toFixed(1) : m.toFixed(2);
}

/** What a row that was not timed says. */
export function statusText(m: Pick<Measurement, 'status' | 'message'>): string {
  switch (m.status) {
    case 'out-of-memory':
      return m.message?.startsWith('not tried') ? `out of memory (${m.message})` : 'out of memory';
    case 'failed-validation':
      return 'FAILED validation (not timed)';
    case 'error':
      return `error: ${m.message ?? ''}`;
    default:
      return '';
  }
}

export function axisValue(c: Case, axis: SweepAxis): string {
  switch (axis) {
    case 'N':
      return String(c.N);
    case 'D':
      return String(c.D);
    case 'causal':
      return c.causal ? 'on' : 'off';
    case 'dtype':
      return c.dtype;
  }
}

const AXIS_HEAD: Record<SweepAxis, string> = { N: 'N', D: 'D', causal: 'causal', dtype: 'dtype' };

/** One sweep: per case, the forward then forward+backward rows of flash and standard. */
export function sweepTable(r: Results, sweep: Sweep): TableModel {
  const unit = throughputUnit(r);
  const head = [AXIS_HEAD[sweep.axis], 'B×H', 'pass', 'algorithm', 'median ms', 'min–max ms', slowMemory(r) === 'HBM' ? 'HBM MiB' : 'moved MiB', unit.name, 'peak MiB'];
  const rows: Cell[][] = [];
  const algorithms: Algorithm[] = r.settings.standard ? ['flash', 'standard'] : ['flash'];
  for (const c of sweep.cases) {
    for (const pass of PASSES) {
      for (const algorithm of algorithms) {
        const m = measurementOf(r.attention.measurements, c, algorithm, pass);
        const first = [axisValue(c, sweep.axis), `${c.B}×${c.H}`, pass, algorithm];
        if (!m) continue;
        if (m.status !== 'ok' || m.medianMs === null) {
          rows.push([...first, { text: statusText(m), span: 5 }]);
          continue;
        }
        rows.push([
          ...first,
          fmtMs(m.medianMs),
          `${fmtMs(m.minMs!)}–${fmtMs(m.maxMs!)}`,
          m.io ? fmtMiB(m.io.bytes) : 'n/a',
          fmtTflops(m.tflops! * unit.perTflop),
          m.peakBytes === null ? 'n/a' : fmtMiB(m.peakBytes),
        ]);
      }
    }
  }
  const axisNumeric = sweep.axis === 'N' || sweep.axis === 'D' ? [0] : [];
  return { title: sweep.title, head, rows, numeric: [...axisNumeric, 4, 5, 6, 7, 8], notes: [] };
}

/** The notes under the attention tables: what each column means. */
export function attentionNotes(r: Results): string[] {
  const unit = throughputUnit(r).name;
  const where = slowMemory(r);
  const notes = [
    'median ms and min–max: time per call over the timed samples (forward+backward: the forward, then the backward fed its out and lse).',
    `${unit}: FLOPs / median time, forward 4·B·H·N²·D (halved when causal), forward+backward 3.5× that.`,
    `${where === 'HBM' ? 'HBM MiB' : 'moved MiB'}: bytes the algorithm moves to and from ${where} by the paper's IO analysis (standard: Θ(N·d + N²); flash: Θ(N²·d²/M)).`,
    'peak MiB: most bytes the library held at once during one call (MemoryTracker): staging copies, scratch, outputs, and for standard the N×N matrices; not the inputs.',
  ];
  if (r.environment.backend === 'reference') notes.push('n/a: the reference backend counts no memory and has no tiles.');
  return notes;
}

/** The validation lines: one per (algorithm, kernel, D, dtype, causal). */
export function validationLines(r: Results): string[] {
  return r.attention.validations.map(
    (v) => `${v.ok ? 'ok    ' : 'FAILED'} ${v.algorithm} ${v.kernel} (B=${v.B} H=${v.H} N=${v.N} D=${v.D} ${v.dtype}${v.causal ? ' causal' : ''}): ${formatErrors(v)}`,
  );
}

function sdpaCell(row: SdpaRow | undefined, pass: Pass): string {
  if (!row) return '—';
  if (row.error) return /out of memory/i.test(row.error) ? 'OOM' : 'error';
  const x = pass === 'forward' ? row.fwdTflops : row.fwdbwdTflops;
  return x === null ? '—' : fmtTflops(x);
}

function oursCell(m: Measurement | undefined): string {
  if (!m) return '—';
  if (m.status === 'out-of-memory') return 'OOM';
  if (m.status !== 'ok' || m.tflops === null) return m.status === 'failed-validation' ? 'FAILED' : 'error';
  return fmtTflops(m.tflops);
}

/** Ours beside PyTorch's SDPA backends, TFLOP/s, for every measured case the anchor also has. */
export function sdpaTable(r: Results, anchor: SdpaAnchor): TableModel {
  const head = ['dtype', 'D', 'N', 'B×H', 'causal', 'pass', 'ours flash', 'ours standard', ...SDPA_BACKENDS.map((b) => `torch ${b}`)];
  const rows: Cell[][] = [];
  const seen = new Set<string>();
  const cases = r.attention.sweeps.flatMap((s) => s.cases).filter((c) => !seen.has(caseKey(c)) && seen.add(caseKey(c)));
  cases.sort((a, b) => a.dtype.localeCompare(b.dtype) || a.D - b.D || Number(a.causal) - Number(b.causal) || a.N - b.N);
  for (const c of cases) {
    const torch = SDPA_BACKENDS.map((b) => sdpaFor(anchor, c, b));
    if (torch.every((t) => t === undefined)) continue;
    for (const pass of PASSES) {
      const ours = (['flash', 'standard'] as const).map((a) => oursCell(measurementOf(r.attention.measurements, c, a, pass)));
      rows.push([c.dtype, String(c.D), String(c.N), `${c.B}×${c.H}`, c.causal ? 'on' : 'off', pass, ...ours, ...torch.map((t) => sdpaCell(t, pass))]);
    }
  }
  return {
    title: `TFLOP/s beside PyTorch ${anchor.torch} scaled_dot_product_attention on ${anchor.gpu}`,
    head,
    rows,
    numeric: [6, 7, 8, 9, 10, 11],
    notes: [
      `PyTorch's figures from ${anchor.file} (bench/anchors/pytorch_sdpa.py); ours from this run on ${r.environment.adapter?.description ?? r.environment.backend}.`,
      'OOM: out of memory; —: not measured (PyTorch skips math above N=8192 and the backward above 8192); error: the backend refused the case.',
    ],
  };
}

function encoderCell(p: EncoderPoint | undefined, value: number | null, fmt: (x: number) => string): string {
  if (!p || p.status === 'not-run') return '—';
  if (p.status === 'out-of-memory') return 'OOM';
  if (p.status !== 'ok') return 'error';
  return value === null ? 'n/a' : fmt(value);
}

function seedCell(row: SeedRow | undefined, value: number | null, fmt: (x: number) => string): string {
  if (!row) return '—';
  if (row.error) return /out of memory/i.test(row.error) ? 'OOM' : /no available kernel/i.test(row.error) ? 'refused' : 'error';
  return value === null ? 'n/a' : fmt(value);
}

/** The encoder's sequence lengths and PyTorch's, in order (PyTorch's anchor may go further than this run). */
export function encoderNs(e: EncoderResult, seed?: SeedAnchor): number[] {
  return [...new Set([...e.settings.ns, ...(seed?.rows.map((r) => r.seq) ?? [])])].sort((a, b) => a - b);
}

/** The encoder experiment: time and peak memory per N, flash beside standard (and PyTorch's, with a seed anchor). */
export function encoderTable(e: EncoderResult, seed?: SeedAnchor): TableModel {
  const s = e.settings;
  const head = ['N', 'flash ms', 'standard ms', 'flash peak MiB', 'standard peak MiB'];
  if (seed) head.push('torch flash ms', 'torch math ms', 'torch flash MiB', 'torch math MiB');
  const rows: Cell[][] = [];
  for (const N of encoderNs(e, seed)) {
    const f = e.points.find((p) => p.attention === 'flash' && p.N === N);
    const st = e.points.find((p) => p.attention === 'standard' && p.N === N);
    const row: Cell[] = [
      String(N),
      encoderCell(f, f?.medianMs ?? null, fmtMs),
      encoderCell(st, st?.medianMs ?? null, fmtMs),
      encoderCell(f, f?.peakBytes ?? null, fmtMiB),
      encoderCell(st, st?.peakBytes ?? null, fmtMiB),
    ];
    if (seed) {
      const [tf, tm] = (['flash', 'math'] as const).map((b) => seed.rows.find((x) => x.backend === b && x.seq === N));
      const mib = (x: number) => x.toFixed(0);
      row.push(seedCell(tf, tf?.ms ?? null, fmtMs), seedCell(tm, tm?.ms ?? null, fmtMs), seedCell(tf, tf?.peakMib ?? null, mib), seedCell(tm, tm?.peakMib ?? null, mib));
    }
    rows.push(row);
  }
  const notes = [
    `ms: median of the timed forwards (each synchronised: it ends when the work is done); peak MiB: the MemoryTracker's peak during one forward, weights included.`,
    'OOM: out of memory (the standard variant stops there, flash goes on); —: not run.',
  ];
  if (seed) {
    notes.push(`PyTorch's figures from ${seed.file} (bench/anchors/pytorch_seed_notebook.py${seed.gpu ? `, ${seed.gpu}` : ''}): batch 32, fp16, peak = torch.cuda.max_memory_allocated.`);
    notes.push("refused: PyTorch had no kernel for the case (its flash path takes no explicit mask, and the notebook passes one); error: it failed otherwise (results.json has its message).");
  }
  return {
    title: `Encoder: ${s.layers} layers, d_model ${s.dModel}, ${s.heads} heads, ffn ${s.ffn}, batch ${s.batch}, ${s.dtype}, ${s.causal ? 'causal' : 'not causal'}`,
    head,
    rows,
    numeric: head.map((_, i) => i),
    notes,
  };
}

// ---------------------------------------------------------------------------------------------------
// The decode suite

/** Microseconds from ms, three significant digits: a decode call takes from a few µs to a few ms. */
export function fmtUs(ms: number): string {
  const us = ms * 1000;
  return us >= 100 ? us.toFixed(0) : us.toPrecision(3);
}

/** GB/s with three significant digits (a cpu reads a few). */
export function fmtGBps(x: number): string {
  return x >= 100 ? x.toFixed(0) : x.toPrecision(3);
}

/** A fraction of the peak as a percentage ("" where the peak is unknown). */
export function fmtPeak(gbps: number | null, peak: number | null): string {
  if (gbps === null || peak === null) return '';
  const p = (100 * gbps) / peak;
  return `${p >= 10 ? p.toFixed(0) : p.toFixed(1)} %`;
}

function decodeCaseText(c: DecodeCase): string {
  return `B=${c.B} H=${c.H} Hkv=${c.Hkv} D=${c.D} Nk=${c.Nk}`;
}

/** "GQA 4:1" or "1:1" (H = Hkv). */
export function headsText(c: Pick<DecodeCase, 'H' | 'Hkv'>): string {
  return c.H === c.Hkv ? '1:1' : `GQA ${c.H / c.Hkv}:1`;
}

/** The decode validation lines: one per case and variant. */
export function decodeValidationLines(d: DecodeResult): string[] {
  return d.validations.map((v) => {
    const where = `row/kv head ${v.slices.map(([b, g]) => `${b}/${g}`).join(', ')}`;
    const what = v.message ?? `max|err|/max|ref|: ${Object.entries(v.errors).map(([k, e]) => `${k} ${e.toExponential(1)}`).join(', ')} (tolerance ${v.tolerance.toExponential(0)})`;
    return `${v.ok ? 'ok    ' : 'FAILED'} decode ${v.variant} (${decodeCaseText(v)}; ${where}): ${what}`;
  });
}

function decodeMeasurementOf(d: DecodeResult, c: DecodeCase, variant: string): DecodeMeasurement | undefined {
  const key = decodeKey(c);
  return d.measurements.find((m) => m.variant === variant && decodeKey(m) === key);
}

/** The cases of the tables: those run, and those left out that a peer measured (so its figures show). */
function tableCases(r: Results): (DecodeCase & { reason?: string })[] {
  const d = r.decode!;
  const anchor = r.anchors?.decode;
  const series = anchor ? decodeSeriesOf(anchor) : [];
  const dropped = d.dropped.filter((c: DroppedDecodeCase) => anchor && series.some((s) => decodeFor(anchor, c, s)));
  return [...d.cases, ...dropped].sort((a, b) => a.D - b.D || a.Hkv - b.Hkv || a.H - b.H || a.B - b.B || a.Nk - b.Nk);
}

/** The groups of the decode tables: one per (D, H, Hkv), in the order the cases run. */
export function decodeGroups(r: Results): { title: string; cases: (DecodeCase & { reason?: string })[] }[] {
  const groups = new Map<string, { title: string; cases: (DecodeCase & { reason?: string })[] }>();
  for (const c of tableCases(r)) {
    const key = `${c.D}/${c.H}/${c.Hkv}`;
    if (!groups.has(key)) groups.set(key, { title: `Decode, ${c.dtype}, Nq = 1: D=${c.D}, H=${c.H}, Hkv=${c.Hkv} (${headsText(c)})`, cases: [] });
    groups.get(key)!.cases.push(c);
  }
  return [...groups.values()];
}

function peerCells(row: DecodeRow, peak: number | null): Cell[] {
  if (row.error) return [{ text: /out of memory/i.test(row.error) ? 'out of memory' : `error: ${row.error}`, span: 6 }];
  const spread = row.minMs !== null && row.maxMs !== null ? `${fmtUs(row.minMs)}–${fmtUs(row.maxMs)}` : '—';
  const wall = row.wallMs !== null && row.ms !== null ? [fmtUs(row.wallMs), (row.wallMs / row.ms).toFixed(2)] : ['—', '—'];
  return [row.ms === null ? '—' : fmtUs(row.ms), spread, row.gbps === null ? '—' : fmtGBps(row.gbps), fmtPeak(row.gbps, peak), ...wall];
}

/** One (D, H, Hkv) group: per case our three variants, then each peer's row, ms and GB/s. */
export function decodeTable(r: Results, group: { title: string; cases: (DecodeCase & { reason?: string })[] }): TableModel {
  const d = r.decode!;
  const peak = d.settings.peakGBps;
  const anchor = r.anchors?.decode;
  const series = anchor ? decodeSeriesOf(anchor) : [];
  const wallClock = r.environment.timer === 'wall-clock';
  const head = ['B', 'Nk', 'K+V MiB', 'variant', 'median µs', 'min–max µs', 'GB/s', '% of peak', 'wall µs', 'wall/GPU'];
  const rows: Cell[][] = [];
  for (const c of group.cases) {
    const first = [String(c.B), String(c.Nk), fmtMiB(kvBytes(c))];
    if (c.reason !== undefined) {
      rows.push([...first, 'ours', { text: 'not run (left out of the grid: see below)', span: 6 }]);
    } else {
      for (const variant of DECODE_VARIANTS) {
        const m = decodeMeasurementOf(d, c, variant);
        if (!m) continue;
        const name = variantLabel(variant, m.pageSize);
        if (m.status !== 'ok' || m.medianMs === null) {
          rows.push([...first, name, { text: statusText(m), span: 6 }]);
          continue;
        }
        // On the cpu the clock is the wall clock: the wall columns would repeat it.
        const wall = wallClock ? ['—', '—'] : [fmtUs(m.wallMedianMs!), m.wallRatio!.toFixed(2)];
        rows.push([...first, name, fmtUs(m.medianMs), `${fmtUs(m.minMs!)}–${fmtUs(m.maxMs!)}`, fmtGBps(m.gbps!), fmtPeak(m.gbps, peak), ...wall]);
      }
    }
    for (const s of series) {
      const row = decodeFor(anchor!, c, s);
      if (row) rows.push([...first, s, ...peerCells(row, peak)]);
    }
  }
  return { title: group.title, head, rows, numeric: [0, 1, 2, 4, 5, 6, 7, 8, 9], notes: [] };
}

/** GB/s per case: ours (three variants) beside each peer's. */
export function decodeSummaryTable(r: Results): TableModel {
  const d = r.decode!;
  const anchor = r.anchors?.decode;
  const series = anchor ? decodeSeriesOf(anchor) : [];
  const head = ['D', 'heads', 'B', 'Nk', 'K+V MiB', ...DECODE_VARIANTS.map((v) => variantLabel(v, d.settings.pageSize)), ...series];
  const rows: Cell[][] = [];
  for (const c of tableCases(r)) {
    const first = [String(c.D), `${c.H}/${c.Hkv}`, String(c.B), String(c.Nk), fmtMiB(kvBytes(c))];
    const ours = DECODE_VARIANTS.map((v) => {
      if (c.reason !== undefined) return 'not run';
      const m = decodeMeasurementOf(d, c, v);
      if (!m) return '—';
      if (m.status === 'out-of-memory') return 'OOM';
      if (m.status !== 'ok' || m.gbps === null) return m.status === 'failed-validation' ? 'FAILED' : 'error';
      return fmtGBps(m.gbps);
    });
    const peers = series.map((s) => {
      const row = decodeFor(anchor!, c, s);
      if (!row) return '—';
      if (row.error) return /out of memory/i.test(row.error) ? 'OOM' : 'error';
      return row.gbps === null ? '—' : fmtGBps(row.gbps);
    });
    rows.push([...first, ...ours, ...peers]);
  }
  const peak = d.settings.peakGBps;
  return {
    title: `Decode: GB/s of K and V read per second${peak !== null ? ` (peak ${peak} GB/s)` : ''}`,
    head,
    rows,
    numeric: head.map((_, i) => i).filter((i) => i !== 1),
    notes: ['heads: H/Hkv. not run: left out of the grid (see below); OOM: out of memory; FAILED: failed validation (not timed).'],
  };
}

/** The notes under the decode tables: what each column means, where the peers' figures come from, what was left out. */
export function decodeNotes(r: Results): string[] {
  const d = r.decode!;
  const s = d.settings;
  const clock = r.environment.timer === 'timestamp-query' ? 'GPU timestamps' : r.environment.timer === 'onSubmittedWorkDone' ? 'the wall clock until the queue is idle' : 'the wall clock';
  const notes = [
    `variants: forward = forward() on the tensors${r.environment.backend === 'webgpu' ? ' (GPUBuffers, into the same out and lse every call: options.out, options.lse)' : ''}; cache = a contiguous KV cache filled once with append(), timed on cache.forward(q)${r.environment.backend === 'webgpu' ? ' into out and lse the caller supplies' : ''}; paged = the same with a paged cache of ${s.pageSize} tokens a page (one append fills each slot's pages in order).`,
    `median µs and min–max: time per call over ${r.settings.repeats} samples, each ${s.calls} back-to-back calls between two marks (${clock}) / ${s.calls}.`,
    `GB/s: K and V bytes (2·B·Nk·Hkv·D·2) / median time, 10^9 bytes a second; % of peak: of ${s.peakGBps === null ? 'an unknown peak (--peak-bandwidth sets it)' : `${s.peakGBps} GB/s (${s.peakSource})`}.`,
    r.environment.timer === 'wall-clock'
      ? 'wall µs, wall/GPU: — on the cpu, whose times are the wall clock already.'
      : `wall µs: the host's wall time per call over the same calls (before the first call to after the queue is idle) / ${s.calls}; wall/GPU: its ratio to the median (near 1: the host keeps the GPU fed).`,
    `inputs: ${s.inputs}.`,
  ];
  for (const src of r.anchors?.decode?.sources ?? []) {
    notes.push(`${src.runtime ?? 'a peer'}${src.gpu ? ` on ${src.gpu}` : ''}: ${src.file}.`);
  }
  const gqa = [...new Set((r.anchors?.decode?.rows ?? []).filter((x) => x.gqa).map((x) => `${x.series}: ${x.gqa}`))];
  if (gqa.length) notes.push(`peers' grouped-query heads: ${gqa.join('; ')} (repeat_interleave: K and V expanded to H heads before timing; GB/s still counts Hkv heads).`);
  if (d.dropped.length) {
    notes.push(`left out of the grid (${d.dropped.length}): ${d.dropped.map((c) => `${decodeCaseText(c)} (${c.reason})`).join('; ')}.`);
  }
  return notes;
}
