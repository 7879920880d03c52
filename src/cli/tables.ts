/**
 * The tables of a report as plain data (a head and rows of text cells), built from Results alone. The
 * terminal (report.ts, through cli-table3) and index.html (html.ts) render the same models, so both
 * always say the same thing. A row that could not be timed (out of memory, failed validation, error)
 * is one cell spanning the measured columns that says so.
 */
import type { Algorithm } from '../index.js';
import { SDPA_BACKENDS, sdpaFor, type SdpaAnchor, type SdpaRow, type SeedAnchor, type SeedRow } from './anchors.js';
import { formatErrors, measurementOf } from './bench.js';
import { caseKey, type Case, type EncoderPoint, type EncoderResult, type Measurement, type Pass, type Results, type Sweep, type SweepAxis } from './results.js';

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
  const head = [AXIS_HEAD[sweep.axis], 'B×H', 'pass', 'algorithm', 'median ms', 'min–max ms', 'HBM MiB', 'TFLOP/s', 'peak MiB'];
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
          fmtTflops(m.tflops!),
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
  const notes = [
    'median ms and min–max: time per call over the timed samples (forward+backward: the forward, then the backward fed its out and lse).',
    'TFLOP/s: FLOPs / median time, forward 4·B·H·N²·D (halved when causal), forward+backward 3.5× that.',
    "HBM MiB: bytes the algorithm moves to and from main memory by the paper's IO analysis (standard: Θ(N·d + N²); flash: Θ(N²·d²/M)).",
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
