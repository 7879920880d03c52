/**
 * The report's charts: Vega-Lite specifications built from Results (pure, so their data can be tested),
 * rendered headless to SVG by vega (no canvas: text widths are estimated) and to PNG by resvg with
 * DejaVu Sans. The chart libraries are optional dependencies that only the bench command loads, through
 * dynamic imports: the library itself never needs them, and a report without them still has its tables
 * and results.json.
 *
 * Charts: over N (per N sweep, forward and forward+backward side by side) the median time with its
 * min–max, the peak memory, the bytes moved to and from HBM (main memory on a CPU) by the IO analysis
 * and TFLOP/s (GFLOP/s on a CPU; with PyTorch's SDPA figures where an anchor has them); bars with their
 * min–max for the D / causal / dtype sweeps; and the encoder's time and its memory above the weights
 * (what grows with N) per N as bars, flash beside standard. "OOM" marks an algorithm that ran out of
 * memory at that point. Captions state only what findings.ts computes from the data. Sizes are chosen
 * so that a chart fills the report's 1200 px page at its natural size: 11 px ticks stay 11 px. The decode suite has one chart: GB/s over Nk,
 * a panel per (D, heads) and batch, ours (three variants) beside the peers' (anchors), with the peak
 * bandwidth where it is known.
 */
import { createRequire } from 'node:module';
import { SDPA_BACKENDS, decodeFor, decodeSeriesOf, sdpaFor } from './anchors.js';
import { measurementOf } from './bench.js';
import { DECODE_VARIANTS, variantLabel } from './decode-bench.js';
import { activationBytes, encoderFinding, growthSentence, ioFinding, nSweepFindings, slowMemory, throughputUnit, variantFindings } from './findings.js';
import { decodeKey, type Measurement, type Pass, type Results, type Sweep } from './results.js';
import { axisValue, decodeGroups, encoderNs, headsText } from './tables.js';

/** A Vega-Lite specification (kept as plain data: the vega-lite types are not needed to build one). */
export type VegaLiteSpec = Record<string, unknown>;

export interface Chart {
  /** File name without extension. */
  id: string;
  title: string;
  /** A sentence or two for index.html: what the chart shows and how to read it. */
  caption: string;
  spec: VegaLiteSpec;
}

export interface RenderedChart extends Chart {
  svg: string;
  png: Uint8Array;
}

/** Thrown when the optional chart packages cannot be loaded. */
export class ChartsUnavailableError extends Error {
  override readonly name = 'ChartsUnavailableError';
}

const MiB = 1024 * 1024;
const PASSES: readonly Pass[] = ['forward', 'forward+backward'];
const SERIES = ['flash', 'standard', ...SDPA_BACKENDS.map((b) => `torch ${b}`)];
const COLORS = ['#1f77b4', '#ff7f0e', '#7f7f7f', '#2ca02c', '#9467bd', '#d62728'];
const FONT = 'DejaVu Sans, Helvetica, Arial, sans-serif';

/** One point of a chart: a series' value at x (null where the series has none: out of memory, say). */
export interface Datum {
  panel: string;
  pass?: Pass;
  x: number | string;
  series: string;
  value: number | null;
  /** The series ran out of memory here: the chart writes "OOM". */
  oom: boolean;
  low?: number;
  high?: number;
}

type Metric = 'time' | 'memory' | 'io' | 'tflops';

/** Panel titles of the sweeps at one N (their base case is in the tables). */
const VARIANT_PANEL: Record<'D' | 'causal' | 'dtype', string> = { D: 'head dimension D', causal: 'causal mask', dtype: 'storage dtype' };

function metricOf(m: Measurement, metric: Metric, perTflop: number): number | null {
  if (m.status !== 'ok') return null;
  switch (metric) {
    case 'time':
      return m.medianMs;
    case 'memory':
      return m.peakBytes === null ? null : m.peakBytes / MiB;
    case 'io':
      return m.io ? m.io.bytes / MiB : null;
    case 'tflops':
      return m.tflops === null ? null : m.tflops * perTflop;
  }
}

/** The data of a metric over the N sweeps: per sweep (panel), pass, N and algorithm (and PyTorch for TFLOP/s). */
export function sweepData(r: Results, sweeps: readonly Sweep[], metric: Metric): Datum[] {
  const out: Datum[] = [];
  const sdpa = r.anchors?.sdpa;
  const { perTflop } = throughputUnit(r);
  for (const s of sweeps) {
    for (const c of s.cases) {
      for (const pass of PASSES) {
        for (const algorithm of ['flash', 'standard'] as const) {
          const m = measurementOf(r.attention.measurements, c, algorithm, pass);
          if (!m) continue;
          const d: Datum = { panel: s.axis === 'N' ? s.title : VARIANT_PANEL[s.axis], pass, x: s.axis === 'N' ? c.N : axisValue(c, s.axis), series: algorithm, value: metricOf(m, metric, perTflop), oom: m.status === 'out-of-memory' };
          if (metric === 'time' && m.status === 'ok') Object.assign(d, { low: m.minMs, high: m.maxMs });
          out.push(d);
        }
        if (metric === 'tflops' && sdpa) {
          for (const b of SDPA_BACKENDS) {
            const t = sdpaFor(sdpa, c, b);
            if (!t) continue;
            const tflops = t.error ? null : pass === 'forward' ? t.fwdTflops : t.fwdbwdTflops;
            if (tflops === null && !t.error) continue;
            const value = tflops === null ? null : tflops * perTflop;
            out.push({ panel: s.title, pass, x: c.N, series: `torch ${b}`, value, oom: Boolean(t.error && /out of memory/i.test(t.error)) });
          }
        }
      }
    }
  }
  return out;
}

function colorScale(data: readonly Datum[]) {
  const used = SERIES.filter((s) => data.some((d) => d.series === s));
  return { field: 'series', type: 'nominal', title: null, scale: { domain: used, range: used.map((s) => COLORS[SERIES.indexOf(s)]) }, legend: { orient: 'top' } };
}

const CONFIG = { font: FONT, view: { stroke: '#ccc' }, axis: { labelFontSize: 11, titleFontSize: 12 }, header: { labelFontSize: 12, titleFontSize: 12 }, legend: { labelFontSize: 12 }, title: { fontSize: 15 } };

/** A line chart over N, one panel per (sweep, pass). */
function lineSpec(title: string, data: Datum[], yTitle: string, log: boolean): VegaLiteSpec {
  const ns = [...new Set(data.map((d) => d.x as number))].sort((a, b) => a - b);
  const x = { field: 'x', type: 'quantitative', title: 'N (sequence length)', scale: { type: 'log', base: 2, domain: [ns[0] / 1.2, ns[ns.length - 1] * 1.2], nice: false }, axis: { values: ns, format: 'd', labelAngle: 0 } };
  // The axis fits the data (and its min–max): a log scale left to itself runs to the next power of ten.
  const y = { field: 'value', type: 'quantitative', title: yTitle, scale: log ? { type: 'log', nice: false, padding: 12 } : { zero: true, nice: true } };
  const color = colorScale(data);
  const layers: object[] = [
    { mark: { type: 'line', point: { size: 50 }, strokeWidth: 2 }, transform: [{ filter: 'isValid(datum.value)' }], encoding: { x, y, color } },
    { mark: { type: 'text', fontWeight: 'bold', fontSize: 11, dy: 0 }, transform: [{ filter: 'datum.oom' }], encoding: { x, y: { value: 10 }, text: { value: 'OOM' }, color } },
  ];
  if (data.some((d) => d.low !== undefined)) {
    layers.splice(1, 0, { mark: { type: 'rule', strokeWidth: 2 }, transform: [{ filter: 'isValid(datum.low)' }], encoding: { x, y: { field: 'low', type: 'quantitative' }, y2: { field: 'high' }, color } });
  }
  const panels = [...new Set(data.map((d) => d.panel))]; // in sweep order (a facet's `sort: null` is not kept)
  const rows = panels.length;
  return {
    title,
    config: CONFIG,
    background: 'white',
    padding: 10,
    data: { values: data },
    facet: {
      row: { field: 'panel', type: 'nominal', title: null, sort: panels, header: rows > 1 ? { labelAngle: 0, labelAlign: 'left', labelOrient: 'top', labelAnchor: 'start', labelFontWeight: 'bold' } : { labels: false } },
      column: { field: 'pass', type: 'nominal', title: null, sort: PASSES, header: { labelFontWeight: 'bold' } },
    },
    // Two panels side by side fill the page (1200 px) at their natural size, so 11 px ticks stay 11 px.
    spec: { width: 470, height: 240, layer: layers },
    resolve: { scale: { y: 'independent' } },
  };
}

/** Grouped bars: one group per x, one bar per series, a rule from the fastest to the slowest sample where there are samples, "OOM" where a series ran out of memory. */
function barLayers(data: readonly Datum[], xTitle: string, yTitle: string): object[] {
  const x = { field: 'x', type: 'ordinal', title: xTitle, sort: null, axis: { labelAngle: 0 } };
  const color = colorScale(data);
  const xOffset = { field: 'series', type: 'nominal', scale: { domain: color.scale.domain } };
  const spread = data.some((d) => d.low !== undefined)
    ? [{ mark: { type: 'rule', strokeWidth: 1.5, color: '#222' }, transform: [{ filter: 'isValid(datum.low)' }], encoding: { x, xOffset, y: { field: 'low', type: 'quantitative' }, y2: { field: 'high' } } }]
    : [];
  return [
    { mark: 'bar', encoding: { x, xOffset, y: { field: 'value', type: 'quantitative', title: yTitle }, color } },
    ...spread,
    // Written upward inside the bar's own slot, so that neighbouring series' marks do not run together.
    { mark: { type: 'text', angle: 270, align: 'left', baseline: 'middle', dx: 3, fontWeight: 'bold', fontSize: 10 }, transform: [{ filter: 'datum.oom' }], encoding: { x, xOffset, y: { datum: 0 }, text: { value: 'OOM' }, color } },
  ];
}

function variantsSpec(data: Datum[]): VegaLiteSpec {
  return {
    title: 'Time per call across D, causal and dtype',
    config: CONFIG,
    background: 'white',
    padding: 10,
    data: { values: data },
    facet: {
      column: { field: 'panel', type: 'nominal', title: null, sort: Object.values(VARIANT_PANEL), header: { labelFontWeight: 'bold' } },
      row: { field: 'pass', type: 'nominal', title: null, sort: PASSES, header: { labelFontWeight: 'bold' } },
    },
    // A step width (per bar: a D panel of 3 groups × 2 series is 6 steps; every column takes the widest panel's width): with a fixed width, independent x scales and xOffset, vega-lite draws the bars one pixel wide.
    spec: { width: { step: 40 }, height: 220, layer: barLayers(data, '', 'median ms (bar: min–max)') },
    resolve: { scale: { x: 'independent', y: 'independent' } },
  };
}

/**
 * The encoder's time, or its memory: where the weights are known, the peak above them (the activations and
 * attention, which grow with N; the weights do not), else the whole peak.
 */
function encoderData(r: Results, metric: 'time' | 'memory'): Datum[] {
  const e = r.encoder!;
  const out: Datum[] = [];
  // PyTorch's peaks include its weights: beside ours above the weights they would not compare.
  const aboveWeights = metric === 'memory' && e.points.some((p) => activationBytes(p) !== null);
  for (const N of encoderNs(e, r.anchors?.seed)) {
    for (const attention of ['flash', 'standard'] as const) {
      const p = e.points.find((q) => q.attention === attention && q.N === N);
      if (!p || p.status === 'not-run') continue;
      const bytes = activationBytes(p) ?? p.peakBytes;
      const value = p.status !== 'ok' ? null : metric === 'time' ? p.medianMs : bytes === null ? null : bytes / MiB;
      const d: Datum = { panel: 'encoder', x: String(N), series: attention, value, oom: p.status === 'out-of-memory' };
      if (metric === 'time' && p.status === 'ok' && p.minMs !== null && p.maxMs !== null) Object.assign(d, { low: p.minMs, high: p.maxMs });
      out.push(d);
    }
    for (const [backend, series] of [['flash', 'torch flash'], ['math', 'torch math']] as const) {
      const t = r.anchors?.seed?.rows.find((q) => q.backend === backend && q.seq === N);
      if (!t || aboveWeights) continue;
      out.push({ panel: 'encoder', x: String(N), series, value: t.error ? null : metric === 'time' ? t.ms : t.peakMib, oom: Boolean(t.error && /out of memory/i.test(t.error)) });
    }
  }
  return out;
}

function encoderSpec(title: string, data: Datum[], yTitle: string): VegaLiteSpec {
  return { title, config: CONFIG, background: 'white', padding: 10, width: 1000, height: 300, data: { values: data }, layer: barLayers(data, 'N (sequence length)', yTitle) };
}

/** One point of the decode chart: a series' GB/s at Nk, in the panel of its (D, heads) group and batch. */
export interface DecodeDatum {
  group: string;
  batch: string;
  x: number;
  series: string;
  value: number | null;
  oom: boolean;
}

const DECODE_COLORS = ['#1f77b4', '#17becf', '#9467bd', '#2ca02c', '#d62728', '#ff7f0e', '#8c564b', '#e377c2'];

/** The decode chart's data: ours per variant, then each peer's series, for every case of the tables. */
export function decodeData(r: Results): DecodeDatum[] {
  const d = r.decode!;
  const anchor = r.anchors?.decode;
  const out: DecodeDatum[] = [];
  for (const g of decodeGroups(r)) {
    const group = `D=${g.cases[0].D}, H=${g.cases[0].H}, Hkv=${g.cases[0].Hkv} (${headsText(g.cases[0])})`;
    for (const c of g.cases) {
      const at = { group, batch: `B=${c.B}`, x: c.Nk };
      for (const variant of DECODE_VARIANTS) {
        const m = d.measurements.find((x) => x.variant === variant && decodeKey(x) === decodeKey(c));
        if (!m) continue;
        out.push({ ...at, series: variantLabel(variant, m.pageSize), value: m.status === 'ok' ? m.gbps : null, oom: m.status === 'out-of-memory' });
      }
      for (const s of anchor ? decodeSeriesOf(anchor) : []) {
        const row = decodeFor(anchor!, c, s);
        if (row) out.push({ ...at, series: s, value: row.error ? null : row.gbps, oom: Boolean(row.error && /out of memory/i.test(row.error)) });
      }
    }
  }
  return out;
}

function decodeSpec(r: Results, data: DecodeDatum[]): VegaLiteSpec {
  const peak = r.decode!.settings.peakGBps;
  const nks = [...new Set(data.map((d) => d.x))].sort((a, b) => a - b);
  const series = [...new Set(data.map((d) => d.series))];
  const x = { field: 'x', type: 'quantitative', title: 'Nk (keys per sequence)', scale: { type: 'log', base: 2, domain: [nks[0] / 1.3, nks[nks.length - 1] * 1.3], nice: false }, axis: { values: nks, labelExpr: "datum.value >= 1024 ? format(datum.value / 1024, 'd') + 'k' : format(datum.value, 'd')", labelAngle: 0 } };
  const y = { field: 'value', type: 'quantitative', title: 'GB/s', scale: { zero: true, ...(peak !== null ? { domainMax: peak * 1.05 } : {}) } };
  const color = { field: 'series', type: 'nominal', title: null, scale: { domain: series, range: series.map((_, i) => DECODE_COLORS[i % DECODE_COLORS.length]) }, legend: { orient: 'top', labelLimit: 400, columns: 3 } };
  const layers: object[] = [{ mark: { type: 'line', point: { size: 40 }, strokeWidth: 2 }, transform: [{ filter: 'isValid(datum.value)' }], encoding: { x, y, color } }];
  if (peak !== null) layers.push({ mark: { type: 'rule', strokeDash: [4, 3], color: '#888' }, encoding: { y: { datum: peak } } });
  const groups = [...new Set(data.map((d) => d.group))];
  const batches = [...new Set(data.map((d) => d.batch))].sort((a, b) => Number(a.slice(2)) - Number(b.slice(2)));
  return {
    title: `Decode: K and V read per second${peak !== null ? ` (dashed: peak ${peak} GB/s)` : ''}`,
    config: CONFIG,
    background: 'white',
    padding: 10,
    data: { values: data },
    facet: {
      row: { field: 'group', type: 'nominal', title: null, sort: groups, header: { labelAngle: 0, labelAlign: 'left', labelOrient: 'top', labelAnchor: 'start', labelFontWeight: 'bold' } },
      column: { field: 'batch', type: 'nominal', title: null, sort: batches, header: { labelFontWeight: 'bold' } },
    },
    spec: { width: 240, height: 170, layer: layers },
  };
}

/** Every chart the results call for, in the order index.html shows them. */
export function chartsFor(r: Results): Chart[] {
  const charts: Chart[] = [];
  if (r.decode) {
    const data = decodeData(r);
    if (data.some((d) => d.value !== null)) {
      charts.push({
        id: 'decode-bandwidth',
        title: 'Decode: bandwidth over Nk',
        caption: `GB/s of K and V read (2·B·Nk·Hkv·D·2 bytes / median time per call), one panel per head dim, head grouping and batch${r.anchors?.decode ? ", ours beside the peers' figures" : ''}. A decode call reads all of K and V once, so the peak memory bandwidth is its ceiling.`,
        spec: decodeSpec(r, data),
      });
    }
    return charts;
  }
  const nSweeps = r.attention.sweeps.filter((s) => s.axis === 'N');
  if (nSweeps.length) {
    const where = slowMemory(r);
    const unit = throughputUnit(r);
    const found = nSweepFindings(r);
    const grew = (what: string, value: (m: Measurement) => number | null) =>
      nSweeps.map((s) => growthSentence(r, s, 'forward', what, value)).filter((x): x is string => x !== undefined);
    const io = ioFinding(r);
    charts.push(
      {
        id: 'attention-time',
        title: 'Attention: time per call over N',
        caption: ['Median time per call, with a bar from the fastest to the slowest sample; log scales.', ...found, ...grew('time', (m) => m.medianMs)].join(' '),
        spec: lineSpec('Attention time per call (median, min–max)', sweepData(r, nSweeps, 'time'), 'ms', true),
      },
      {
        id: 'attention-memory',
        title: 'Attention: peak memory over N',
        caption: [
          'Most bytes the library held at once during one call (MemoryTracker). Standard holds N×N matrices (S, P; P, dP, dS in the backward), flash holds tiles.',
          ...grew('peak memory', (m) => m.peakBytes),
        ].join(' '),
        spec: lineSpec('Attention peak memory (MemoryTracker)', sweepData(r, nSweeps, 'memory'), 'peak MiB', true),
      },
      {
        id: 'attention-io',
        title: `Attention: ${where} traffic over N (the paper's IO analysis)`,
        caption: [`Bytes each algorithm moves to and from ${where} by the paper's IO analysis: standard Θ(N·d + N²) (every pass over the N×N matrices counted), flash Θ(N²·d²/M) with M the on-chip memory its tiles use.`, ...(io ? [io] : [])].join(' '),
        spec: lineSpec(`${where === 'HBM' ? 'HBM' : 'Main-memory'} traffic by the IO analysis`, sweepData(r, nSweeps, 'io'), 'MiB moved', true),
      },
      {
        id: 'attention-tflops',
        title: `Attention: ${unit.name} over N`,
        caption: `Throughput by FlashAttention's FLOP count (forward 4·B·H·N²·D, halved when causal; forward+backward 3.5×), in ${unit.name}${r.anchors?.sdpa ? `, beside PyTorch's scaled_dot_product_attention backends on ${r.anchors.sdpa.gpu}` : ''}.`,
        spec: lineSpec(`Attention ${unit.name}`, sweepData(r, nSweeps, 'tflops'), unit.name, false),
      },
    );
  }
  const variants = r.attention.sweeps.filter((s) => s.axis !== 'N');
  if (variants.length) {
    charts.push({
      id: 'attention-variants',
      title: 'Attention: head dimension, causal mask and dtype',
      caption: [`Median time per call at N=${variants[0].cases[0].N} while one setting changes (the base case is in the tables below), with a rule from the fastest to the slowest sample.`, ...variantFindings(r)].join(' '),
      spec: variantsSpec(sweepData(r, variants, 'time')),
    });
  }
  if (r.encoder && r.encoder.points.length) {
    const e = r.encoder;
    const aboveWeights = e.points.some((p) => activationBytes(p) !== null);
    const finding = encoderFinding(e);
    const weights = [...new Set(e.points.filter((p) => activationBytes(p) !== null).map((p) => p.weightsBytes!))].sort((x, y) => x - y);
    const weightsText = weights.length === 1 ? `${(weights[0] / MiB).toFixed(1)} MiB, the same at every N` : `${(weights[0] / MiB).toFixed(1)}–${(weights[weights.length - 1] / MiB).toFixed(1)} MiB`;
    charts.push(
      {
        id: 'encoder-time',
        title: 'Encoder: time per forward over N',
        caption: ['Median time per forward of the encoder (a rule from the fastest to the slowest), as the first bar chart of the PyTorch notebook this experiment comes from, measured so that each forward ends when its work is done.', ...(finding ? [finding] : [])].join(' '),
        spec: encoderSpec('Encoder forward time (median, min–max)', encoderData(r, 'time'), 'ms'),
      },
      {
        id: 'encoder-memory',
        title: aboveWeights ? 'Encoder: memory above the weights over N' : 'Encoder: peak memory over N',
        caption: aboveWeights
          ? `Peak memory during one forward less the weights (${weightsText}): the activations and attention's matrices, the part that grows with N.${r.anchors?.seed ? " PyTorch's peaks include its weights and are in the table only." : ''}${e.points.some((p) => p.status === 'out-of-memory') ? ' "OOM": out of memory there.' : ''}`
          : `Peak memory during one forward, weights included.${e.points.some((p) => p.status === 'out-of-memory') ? ' "OOM": out of memory there.' : ''}`,
        spec: encoderSpec(aboveWeights ? 'Encoder memory above the weights during a forward' : 'Encoder peak memory during a forward', encoderData(r, 'memory'), aboveWeights ? 'MiB above the weights' : 'peak MiB'),
      },
    );
  }
  return charts;
}

interface Logger {
  level(level?: number): Logger | number;
  error(...args: unknown[]): Logger;
  warn(...args: unknown[]): Logger;
  info(...args: unknown[]): Logger;
  debug(...args: unknown[]): Logger;
}
interface VegaLiteModule {
  compile(spec: object, options: { logger: Logger }): { spec: object };
}
interface VegaModule {
  parse(spec: object): object;
  View: new (runtime: object, options: { renderer: 'none'; logLevel: number }) => { toSVG(): Promise<string>; finalize(): void };
}

/**
 * vega-lite warns on the console about layered facets that filter their data (harmless here); the
 * report's output stays clean.
 */
const quiet: Logger = { level: () => quiet, error: () => quiet, warn: () => quiet, info: () => quiet, debug: () => quiet };
interface ResvgModule {
  Resvg: new (svg: string, options: object) => { render(): { asPng(): Uint8Array } };
}

/** Import an optional package by a name kept out of the type checker's reach (the build must not need it). */
async function optional<T>(name: string): Promise<T> {
  try {
    return (await import(name)) as T;
  } catch (e) {
    throw new ChartsUnavailableError(`the chart package '${name}' cannot be loaded (${e instanceof Error ? e.message : String(e)}); it is an optional dependency: npm install ${name}`);
  }
}

/**
 * DejaVu Sans from the optional package dejavu-fonts-ttf, for the PNGs: resvg draws text only with fonts
 * it is given or finds on the system, and a machine without fonts (a bare GPU server) would get charts
 * without a single label. Empty where the package is missing (the system's fonts are still used).
 */
function bundledFonts(): string[] {
  const require = createRequire(import.meta.url);
  try {
    return ['DejaVuSans.ttf', 'DejaVuSans-Bold.ttf'].map((f) => require.resolve(`dejavu-fonts-ttf/ttf/${f}`));
  } catch {
    return [];
  }
}

/** Render charts to SVG (vega, headless) and PNG (resvg, twice the SVG's size). */
export async function renderCharts(charts: readonly Chart[]): Promise<RenderedChart[]> {
  const vl = await optional<VegaLiteModule>('vega-lite');
  const vega = await optional<VegaModule>('vega');
  const { Resvg } = await optional<ResvgModule>('@resvg/resvg-js');
  const font = { fontFiles: bundledFonts(), loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' };
  const out: RenderedChart[] = [];
  for (const chart of charts) {
    const view = new vega.View(vega.parse(vl.compile(chart.spec, { logger: quiet }).spec), { renderer: 'none', logLevel: 0 });
    const svg = await view.toSVG();
    view.finalize();
    const png = new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, background: 'white', font }).render().asPng();
    out.push({ ...chart, svg, png });
  }
  return out;
}
