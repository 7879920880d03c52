/**
 * What a run found, in sentences computed from its Results alone: the report's summary and the parts of
 * the chart captions that make a claim (faster, less memory, fewer bytes moved, what a causal mask or a
 * larger D did). A claim is made only where the measurements show it; where they show the opposite, the
 * sentence says the opposite. Nothing here is fixed text about what should have happened.
 */
import type { Algorithm } from '../index.js';
import { measurementOf } from './bench.js';
import type { Case, EncoderPoint, EncoderResult, Measurement, Pass, Results, Sweep } from './results.js';

const MiB = 1024 * 1024;

/** Throughput in the unit that suits the backend: TFLOP/s on a GPU, GFLOP/s on a CPU (a few thousandths of a TFLOP/s). */
export function throughputUnit(r: Pick<Results, 'environment'>): { name: 'TFLOP/s' | 'GFLOP/s'; perTflop: number } {
  return r.environment.backend === 'webgpu' ? { name: 'TFLOP/s', perTflop: 1 } : { name: 'GFLOP/s', perTflop: 1000 };
}

/** What the IO analysis's slow memory is called on this backend: HBM on a GPU, main memory on a CPU. */
export function slowMemory(r: Pick<Results, 'environment'>): 'HBM' | 'main memory' {
  return r.environment.backend === 'webgpu' ? 'HBM' : 'main memory';
}

/** A ratio as text: "2.4×" (two significant digits below 10, whole numbers above). */
export function fmtRatio(x: number): string {
  return x >= 10 ? `${x.toFixed(0)}×` : `${x.toFixed(1)}×`;
}

/** Within 5 %, two figures are "about the same". */
const SAME = 1.05;

/**
 * a against b where smaller is better (time, memory, bytes): "2.4× faster" / "1.3× slower" / "about as fast",
 * with the words given.
 */
export function compare(a: number, b: number, words: { better: string; worse: string; same: string }): string {
  if (a <= 0 || b <= 0) return words.same;
  const r = b / a;
  if (r >= SAME) return `${fmtRatio(r)} ${words.better}`;
  if (1 / r >= SAME) return `${fmtRatio(1 / r)} ${words.worse}`;
  return words.same;
}

const FASTER = { better: 'faster', worse: 'slower', same: 'about as fast' };
const LESS_MEMORY = { better: 'less memory', worse: 'more memory', same: 'about as much memory' };
const FEWER_BYTES = { better: 'fewer bytes', worse: 'more bytes', same: 'about as many bytes' };

function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toPrecision(2);
}

function fmtMiB(bytes: number): string {
  const m = bytes / MiB;
  return m >= 100 ? m.toFixed(0) : m >= 10 ? m.toFixed(1) : m.toPrecision(2);
}

function ok(m: Measurement | undefined): m is Measurement & { medianMs: number } {
  return m !== undefined && m.status === 'ok' && m.medianMs !== null;
}

/** Flash and standard's measurements of one case and pass, where both ran. */
function pair(r: Results, c: Case, pass: Pass): { flash: Measurement & { medianMs: number }; standard: Measurement & { medianMs: number } } | undefined {
  const flash = measurementOf(r.attention.measurements, c, 'flash', pass);
  const standard = measurementOf(r.attention.measurements, c, 'standard', pass);
  return ok(flash) && ok(standard) ? { flash, standard } : undefined;
}

/** The N sweeps' largest N where both algorithms ran the pass. */
function largestPair(r: Results, s: Sweep, pass: Pass): { c: Case; flash: Measurement & { medianMs: number }; standard: Measurement & { medianMs: number } } | undefined {
  const cases = [...s.cases].sort((a, b) => b.N - a.N);
  for (const c of cases) {
    const p = pair(r, c, pass);
    if (p) return { c, ...p };
  }
  return undefined;
}

/** "at N=1024, flash is 2.2× faster than standard (143 vs 317 ms) and holds 5.7× less memory (3.3 vs 19 MiB)". */
function flashBesideStandard(r: Results, s: Sweep, pass: Pass): string | undefined {
  const p = largestPair(r, s, pass);
  if (!p) return undefined;
  const { flash: f, standard: st } = p;
  let text = `at N=${p.c.N} (${pass}), flash is ${compare(f.medianMs, st.medianMs, FASTER)} than standard (${fmtMs(f.medianMs)} vs ${fmtMs(st.medianMs)} ms)`;
  if (f.peakBytes && st.peakBytes) {
    text += ` and holds ${compare(f.peakBytes, st.peakBytes, LESS_MEMORY)} (${fmtMiB(f.peakBytes)} vs ${fmtMiB(st.peakBytes)} MiB)`;
  }
  return text;
}

/** How a metric grew over an N sweep for one algorithm: from the smallest to the largest N where it ran. */
function growth(r: Results, s: Sweep, algorithm: Algorithm, pass: Pass, value: (m: Measurement) => number | null): { from: number; to: number; factor: number } | undefined {
  const points = [...s.cases]
    .sort((a, b) => a.N - b.N)
    .map((c) => ({ N: c.N, m: measurementOf(r.attention.measurements, c, algorithm, pass) }))
    .filter((p): p is { N: number; m: Measurement } => ok(p.m) && (value(p.m) ?? 0) > 0);
  if (points.length < 2) return undefined;
  const first = points[0];
  const last = points[points.length - 1];
  return { from: first.N, to: last.N, factor: value(last.m)! / value(first.m)! };
}

/** "from N=256 to 1024 (4× longer), standard's peak memory grew 11× and flash's 2.4×". */
export function growthSentence(r: Results, s: Sweep, pass: Pass, what: string, value: (m: Measurement) => number | null): string | undefined {
  const st = r.settings.standard ? growth(r, s, 'standard', pass, value) : undefined;
  const f = growth(r, s, 'flash', pass, value);
  if (!f) return undefined;
  const span = (g: { from: number; to: number }) => `N=${g.from} to ${g.to} (${fmtRatio(g.to / g.from)} longer)`;
  if (st && st.from === f.from && st.to === f.to) {
    return `From ${span(f)}, standard's ${what} grew ${fmtRatio(st.factor)} and flash's ${fmtRatio(f.factor)} (${pass}).`;
  }
  return `From ${span(f)}, flash's ${what} grew ${fmtRatio(f.factor)} (${pass})${st ? `; standard's grew ${fmtRatio(st.factor)} from ${span(st)}` : ''}.`;
}

/** The first N at which standard ran out of memory in a sweep, and the largest N flash ran. */
function outOfMemory(r: Results, s: Sweep): string | undefined {
  const byN = [...s.cases].sort((a, b) => a.N - b.N);
  const oom = byN.find((c) => measurementOf(r.attention.measurements, c, 'standard', 'forward')?.status === 'out-of-memory');
  if (!oom) return undefined;
  const flashMax = byN.filter((c) => ok(measurementOf(r.attention.measurements, c, 'flash', 'forward'))).pop();
  return `Standard ran out of memory from N=${oom.N}${flashMax && flashMax.N >= oom.N ? `; flash ran on to N=${flashMax.N}` : ''}.`;
}

/** What one setting of a variant sweep (off → on, f32 → f16, the smallest D → the largest) did to each algorithm's time. */
function variantEffect(r: Results, s: Sweep, pass: Pass): string | undefined {
  if (s.cases.length < 2) return undefined;
  const from = s.cases[0];
  const to = s.cases[s.cases.length - 1];
  const algorithms: Algorithm[] = r.settings.standard ? ['flash', 'standard'] : ['flash'];
  const effects: string[] = [];
  for (const a of algorithms) {
    const x = measurementOf(r.attention.measurements, from, a, pass);
    const y = measurementOf(r.attention.measurements, to, a, pass);
    if (!ok(x) || !ok(y)) continue;
    effects.push(`${a} ${compare(y.medianMs, x.medianMs, FASTER)}`);
  }
  if (!effects.length) return undefined;
  const joined = effects.join(', ');
  switch (s.axis) {
    case 'causal':
      return `A causal mask made ${joined} (${pass}, N=${from.N}).`;
    case 'dtype':
      return `${to.dtype} storage instead of ${from.dtype} made ${joined} (${pass}, N=${from.N}).`;
    case 'D':
      return `D=${to.D} instead of D=${from.D} made ${joined} (${pass}, N=${from.N}).`;
    default:
      return undefined;
  }
}

/** The variant sweeps' effects (causal, dtype, D) on the forward: the variants chart's caption. */
export function variantFindings(r: Results): string[] {
  return r.attention.sweeps
    .filter((s) => s.axis !== 'N')
    .map((s) => variantEffect(r, s, 'forward'))
    .filter((x): x is string => x !== undefined);
}

/** Flash's bytes moved by the IO analysis against standard's, at the largest N of the first N sweep. */
export function ioFinding(r: Results): string | undefined {
  const s = r.attention.sweeps.find((x) => x.axis === 'N');
  if (!s || !r.settings.standard) return undefined;
  const both = [...s.cases].sort((a, b) => b.N - a.N).map((c) => ({
    c,
    f: measurementOf(r.attention.measurements, c, 'flash', 'forward')?.io?.bytes,
    st: measurementOf(r.attention.measurements, c, 'standard', 'forward')?.io?.bytes,
  }));
  const p = both.find((x) => x.f && x.st);
  if (!p) return undefined;
  return `At N=${p.c.N} (forward) flash moves ${compare(p.f!, p.st!, FEWER_BYTES)} than standard (${fmtMiB(p.f!)} vs ${fmtMiB(p.st!)} MiB).`;
}

/** Flash against standard in time and memory at the largest N of each N sweep and pass: the time and memory charts' captions. */
export function nSweepFindings(r: Results): string[] {
  const out: string[] = [];
  for (const s of r.attention.sweeps.filter((x) => x.axis === 'N')) {
    const prefix = r.attention.sweeps.filter((x) => x.axis === 'N').length > 1 ? `${s.title}: ` : '';
    for (const pass of ['forward', 'forward+backward'] as const) {
      const t = flashBesideStandard(r, s, pass);
      if (t) out.push(`${prefix}${t[0].toUpperCase()}${t.slice(1)}.`);
    }
    const oom = outOfMemory(r, s);
    if (oom) out.push(prefix + oom);
  }
  return out;
}

/** Peak memory above the weights: what one forward's activations and attention held. */
export function activationBytes(p: EncoderPoint): number | null {
  if (p.status !== 'ok' || p.peakBytes === null || p.weightsBytes === undefined || p.weightsBytes === null) return null;
  return Math.max(0, p.peakBytes - p.weightsBytes);
}

/** The encoder at its largest N where both variants ran: time, and memory above the weights. */
export function encoderFinding(e: EncoderResult): string | undefined {
  const ok = (p: EncoderPoint | undefined): p is EncoderPoint & { medianMs: number } => p !== undefined && p.status === 'ok' && p.medianMs !== null;
  const ns = [...e.settings.ns].sort((a, b) => b - a);
  for (const N of ns) {
    const f = e.points.find((p) => p.attention === 'flash' && p.N === N);
    const st = e.points.find((p) => p.attention === 'standard' && p.N === N);
    if (!ok(f) || !ok(st)) continue;
    let text = `In the encoder at N=${N}, flash attention is ${compare(f.medianMs, st.medianMs, FASTER)} than standard per forward (${fmtMs(f.medianMs)} vs ${fmtMs(st.medianMs)} ms)`;
    const fa = activationBytes(f);
    const sa = activationBytes(st);
    if (fa !== null && sa !== null && fa > 0 && sa > 0) text += ` and its activations (peak memory above the ${fmtMiB(f.weightsBytes!)} MiB of weights) take ${compare(fa, sa, LESS_MEMORY)} (${fmtMiB(fa)} vs ${fmtMiB(sa)} MiB)`;
    const oom = e.points.find((p) => p.attention === 'standard' && p.status === 'out-of-memory');
    return `${text}.${oom ? ` Standard ran out of memory at N=${oom.N}.` : ''}`;
  }
  const oom = e.points.find((p) => p.attention === 'standard' && p.status === 'out-of-memory');
  return oom ? `In the encoder, standard attention ran out of memory at N=${oom.N}.` : undefined;
}

/** The report's summary: validation, flash beside standard over N, how time and memory grew, the variants, the encoder. */
export function summary(r: Results): string[] {
  const out: string[] = [];
  const failed = r.attention.validations.filter((v) => !v.ok).length;
  const n = r.attention.validations.length;
  if (n) out.push(failed ? `${failed} of ${n} kernel validations FAILED (those kernels were not timed).` : `All ${n} kernel validations against the float64 reference passed.`);
  if (r.settings.standard) out.push(...nSweepFindings(r));
  const first = r.attention.sweeps.find((s) => s.axis === 'N');
  if (first) {
    const peak = (m: Measurement) => m.peakBytes;
    const time = (m: Measurement) => m.medianMs;
    const g = [growthSentence(r, first, 'forward', 'time', time), growthSentence(r, first, 'forward', 'peak memory', peak)];
    out.push(...g.filter((x): x is string => x !== undefined));
  }
  out.push(...variantFindings(r));
  if (r.encoder) {
    const e = encoderFinding(r.encoder);
    if (e) out.push(e);
  }
  return out;
}
