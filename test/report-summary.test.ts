// The report's words from given data: the summary's sentences, captions that change with the
// measurements (never a fixed claim), the units of a CPU run (GFLOP/s, no "HBM"), the encoder's memory
// above its weights, axes that fit the data, and the progress bar's total planned from the start.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryTracker, tensor, type Tensor } from '../src/index.js';
import { attentionUnits, runAttention } from '../src/cli/bench.js';
import { chartsFor, sweepData } from '../src/cli/charts.js';
import { WallClock } from '../src/cli/clock.js';
import { encoderUnits, runEncoder, type EncoderFactory } from '../src/cli/encoder-bench.js';
import { summary } from '../src/cli/findings.js';
import { reportHtml } from '../src/cli/html.js';
import { fitLabel, labelWidth, type Progress } from '../src/cli/progress.js';
import { formatResults } from '../src/cli/report.js';
import type { Case, EncoderPoint, Measurement, Pass, Results, Sweep } from '../src/cli/results.js';
import { encoderSettings } from '../src/cli/suites.js';
import { attentionNotes, sweepTable } from '../src/cli/tables.js';

const MiB = 1024 * 1024;
const base: Case = { B: 1, H: 2, N: 256, D: 64, causal: false, dtype: 'f32' };

/** A measured row: median ms, peak MiB, bytes moved (MiB), TFLOP/s. */
function m(c: Case, algorithm: 'flash' | 'standard', pass: Pass, ms: number, peakMiB: number, ioMiB = 1, tflops = 0.004): Measurement {
  return { ...c, algorithm, pass, status: 'ok', flops: 1e9, timesMs: [ms * 0.9, ms, ms * 1.2], medianMs: ms, minMs: ms * 0.9, maxMs: ms * 1.2, tflops, peakBytes: peakMiB * MiB, io: { bytes: ioMiB * MiB, onChipBytes: null, model: 'test' }, inner: 1 };
}

/** Results over an N sweep (256, 1024) and a causal sweep at N=256, with the times and memory given. */
function resultsWith(o: { backend?: 'cpu' | 'webgpu'; causalStandardMs?: number; flashIoMiB?: number } = {}): Results {
  const n: Sweep = { id: 'n', axis: 'N', title: 'N sweep', cases: [base, { ...base, N: 1024 }] };
  const causal: Sweep = { id: 'causal', axis: 'causal', title: 'causal off and on', cases: [base, { ...base, causal: true }] };
  const measurements: Measurement[] = [];
  for (const pass of ['forward', 'forward+backward'] as const) {
    const k = pass === 'forward' ? 1 : 3;
    measurements.push(
      m(base, 'flash', pass, 10 * k, 1, 2),
      m(base, 'standard', pass, 16 * k, 2, 5),
      m({ ...base, N: 1024 }, 'flash', pass, 100 * k, 4, o.flashIoMiB ?? 20),
      m({ ...base, N: 1024 }, 'standard', pass, 240 * k, 16, 80),
      m({ ...base, causal: true }, 'flash', pass, 5 * k, 1, 1),
      m({ ...base, causal: true }, 'standard', pass, (o.causalStandardMs ?? 8) * k, 2, 5),
    );
  }
  return {
    tool: 'flashattn bench',
    schema: 1,
    environment: { date: '2026-01-01T00:00:00.000Z', flashattn: '0.1.0', node: 'v20', cpu: 'test cpu', cores: 2, platform: 'linux', arch: 'x64', backend: o.backend ?? 'cpu', timer: 'wall-clock' },
    settings: { suite: 'default', repeats: 3, seed: 1, standard: true },
    attention: { sweeps: [n, causal], validations: [], measurements },
  };
}

const caption = (r: Results, id: string) => chartsFor(r).find((c) => c.id === id)!.caption;

test('summary: flash beside standard at the largest N, how time and memory grew, what the causal mask did', () => {
  const lines = summary(resultsWith());
  assert.ok(lines.includes('At N=1024 (forward), flash is 2.4× faster than standard (100 vs 240 ms) and holds 4.0× less memory (4.0 vs 16.0 MiB).'), lines.join('\n'));
  assert.ok(lines.includes("From N=256 to 1024 (4.0× longer), standard's time grew 15× and flash's 10× (forward)."), lines.join('\n'));
  assert.ok(lines.includes("From N=256 to 1024 (4.0× longer), standard's peak memory grew 8.0× and flash's 4.0× (forward)."), lines.join('\n'));
  assert.ok(lines.includes('A causal mask made flash 2.0× faster, standard 2.0× faster (forward, N=256).'), lines.join('\n'));
  // The page and the terminal both carry it.
  assert.match(reportHtml(resultsWith(), []), /<h2>What was found<\/h2>\n<ul class="summary"><li>At N=1024 \(forward\), flash is 2\.4× faster/);
  assert.match(formatResults(resultsWith()), /what was found:\n {2}At N=1024/);
});

test('summary: where flash is slower or holds more, it says so', () => {
  const r = resultsWith();
  for (const x of r.attention.measurements) if (x.N === 1024 && x.algorithm === 'flash') Object.assign(x, { medianMs: 300 * (x.pass === 'forward' ? 1 : 3), peakBytes: 20 * MiB });
  const lines = summary(r);
  assert.ok(lines.includes('At N=1024 (forward), flash is 1.3× slower than standard (300 vs 240 ms) and holds 1.3× more memory (20.0 vs 16.0 MiB).'), lines.join('\n'));
});

test('captions follow the data: the causal mask, and the bytes moved', () => {
  const halves = caption(resultsWith(), 'attention-variants');
  assert.match(halves, /A causal mask made flash 2\.0× faster, standard 2\.0× faster/);
  const slower = caption(resultsWith({ causalStandardMs: 19 }), 'attention-variants');
  assert.match(slower, /A causal mask made flash 2\.0× faster, standard 1\.2× slower/);
  assert.doesNotMatch(slower, /halves the work/);
  assert.match(caption(resultsWith(), 'attention-io'), /flash moves 4\.0× fewer bytes than standard \(20\.0 vs 80\.0 MiB\)/);
  const more = caption(resultsWith({ flashIoMiB: 120 }), 'attention-io');
  assert.match(more, /flash moves 1\.5× more bytes than standard/);
  assert.doesNotMatch(more, /fewer|less traffic/);
  assert.match(caption(resultsWith(), 'attention-time'), /flash is 2\.4× faster than standard/);
});

test('a CPU run: GFLOP/s (the TFLOP/s figure × 1000) and no HBM; a GPU run: TFLOP/s and HBM', () => {
  const cpu = resultsWith();
  const t = sweepTable(cpu, cpu.attention.sweeps[0]);
  assert.deepEqual(t.head.slice(6, 8), ['moved MiB', 'GFLOP/s']);
  assert.equal(t.rows[0][7], '4.00', '0.004 TFLOP/s is 4.00 GFLOP/s');
  assert.deepEqual([...new Set(sweepData(cpu, [cpu.attention.sweeps[0]], 'tflops').map((d) => d.value))], [4]);
  const tflops = chartsFor(cpu).find((c) => c.id === 'attention-tflops')!;
  assert.equal(tflops.title, 'Attention: GFLOP/s over N');
  const cpuText = [JSON.stringify(chartsFor(cpu)), reportHtml(cpu, []), formatResults(cpu), attentionNotes(cpu).join(' ')].join('\n');
  assert.doesNotMatch(cpuText, /HBM|TFLOP\/s/);
  const gpu = resultsWith({ backend: 'webgpu' });
  assert.deepEqual(sweepTable(gpu, gpu.attention.sweeps[0]).head.slice(6, 8), ['HBM MiB', 'TFLOP/s']);
  assert.match(caption(gpu, 'attention-io'), /HBM/);
});

test('charts: log axes fit the data, time bars carry the min–max, panels fill the page', () => {
  const charts = chartsFor(resultsWith());
  const time = charts.find((c) => c.id === 'attention-time')!.spec as { spec: { width: number; layer: { encoding: { y: { scale?: object } } }[] } };
  assert.deepEqual(time.spec.layer[0].encoding.y.scale, { type: 'log', nice: false, padding: 12 }, 'no run to the next power of ten');
  assert.ok(time.spec.width >= 450, 'two panels fill a 1200 px page');
  const variants = JSON.stringify(charts.find((c) => c.id === 'attention-variants')!.spec);
  assert.match(variants, /"y2":\{"field":"high"\}/, 'the bars have their min–max');
  const data = sweepData(resultsWith(), [resultsWith().attention.sweeps[1]], 'time');
  assert.ok(data.every((d) => d.low! < d.value! && d.value! < d.high!));
});

test("the encoder's memory chart shows the peak above the weights, and its caption says what it found", () => {
  const point = (attention: 'flash' | 'standard', N: number, peakMiB: number): EncoderPoint => ({ attention, N, status: 'ok', timesMs: [10], medianMs: attention === 'flash' ? 10 : 20, minMs: 9, maxMs: 11, peakBytes: peakMiB * MiB, weightsBytes: 80 * MiB });
  const r: Results = {
    ...resultsWith(),
    encoder: { settings: encoderSettings('small', 'f32', 3, 1, 128), points: [point('flash', 64, 81), point('standard', 64, 82), point('flash', 128, 82), point('standard', 128, 88)] },
  };
  const chart = chartsFor(r).find((c) => c.id === 'encoder-memory')!;
  const values = (chart.spec as { data: { values: { x: string; series: string; value: number }[] } }).data.values;
  assert.deepEqual(values.map((d) => [d.x, d.series, d.value]), [['64', 'flash', 1], ['64', 'standard', 2], ['128', 'flash', 2], ['128', 'standard', 8]]);
  assert.match(chart.caption, /less the weights \(80\.0 MiB, the same at every N\)/);
  assert.ok(summary(r).includes('In the encoder at N=128, flash attention is 2.0× faster than standard per forward (10.0 vs 20.0 ms) and its activations (peak memory above the 80.0 MiB of weights) take 4.0× less memory (2.0 vs 8.0 MiB).'), summary(r).join('\n'));
});

test('progress: the total is planned once, before the first step, and the steps done reach it exactly', async () => {
  const events: string[] = [];
  let planned = 0;
  let done = 0;
  const progress: Progress = {
    plan: (u) => {
      events.push(`plan ${u}`);
      planned += u;
    },
    step: () => events.push('step'),
    note: () => {},
    done: (u) => {
      done += u;
      assert.ok(done <= planned, `${done} done of ${planned} planned`);
    },
    stop: () => {},
  };
  const small = (N: number): Case => ({ B: 1, H: 1, N, D: 8, causal: false, dtype: 'f32' });
  const sweeps: Sweep[] = [{ id: 'n', axis: 'N', title: 'tiny', cases: [small(32), small(64)] }];
  const encoder = encoderSettings('small', 'f32', 2, 1, 128);
  // What program.ts does: plan everything, then run attention, then the encoder.
  progress.plan(attentionUnits(sweeps, true) + encoderUnits(encoder));
  await runAttention(sweeps, { backend: 'cpu', repeats: 1, seed: 1, standard: true, clock: new WallClock(), progress });
  const factory: EncoderFactory = async (config) => {
    const memory = config.memory ?? new MemoryTracker();
    return {
      async forward(x) {
        const [B, N, d] = x.shape;
        memory.release(memory.allocate(B * N * 4));
        return tensor(new Float32Array(B * N * d), [B, N, d]) as Tensor;
      },
      dispose() {},
    };
  };
  await runEncoder(encoder, factory, { backend: 'cpu', seed: 1, clock: new WallClock(), progress });
  assert.deepEqual(events.filter((e) => e.startsWith('plan')), [`plan ${2 * 2 + 2 * 2}`], 'one plan, nothing added when the encoder starts');
  assert.equal(events[0], 'plan 8');
  assert.equal(done, planned);
});

test('progress labels keep N and D: steps name them first, a cut keeps the start', () => {
  const label = 'standard N=1024 D=128 f16 causal B=1 H=2';
  assert.equal(fitLabel(label, 80), label);
  const cut = fitLabel(label, 30);
  assert.equal(cut.length, 30);
  assert.match(cut, /^standard N=1024 D=128 /);
  assert.ok(labelWidth(80) >= 40 && labelWidth(20) === 40, 'a narrow terminal still shows 40 columns of label');
});
