// The report's data path (src/cli): measurements from a tiny cpu run into Results, the tables, the
// charts (SVG and PNG), index.html and results.json; out-of-memory rows; PyTorch's figures beside ours;
// the encoder driver with a stand-in model. No time is asserted: only what the report says about it.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { MemoryTracker, OutOfMemoryError, tensor, type Tensor } from '../src/index.js';
import { parseAnchors } from '../src/cli/anchors.js';
import { measurementOf, runAttention } from '../src/cli/bench.js';
import { chartsFor, renderCharts, sweepData } from '../src/cli/charts.js';
import { WallClock } from '../src/cli/clock.js';
import { runEncoder, type EncoderFactory } from '../src/cli/encoder-bench.js';
import { reportHtml } from '../src/cli/html.js';
import { cpuGeometry } from '../src/cli/io.js';
import { silentProgress } from '../src/cli/progress.js';
import { formatResults, writeReport } from '../src/cli/report.js';
import type { Case, Results, Sweep } from '../src/cli/results.js';
import { defaultSweeps, encoderSettings } from '../src/cli/suites.js';
import { encoderTable, sdpaTable, sweepTable } from '../src/cli/tables.js';

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const small = (N: number): Case => ({ B: 1, H: 1, N, D: 8, causal: false, dtype: 'f32' });
const sweep: Sweep = { id: 'n', axis: 'N', title: 'N sweep (tiny)', cases: [small(32), small(64)] };

let results: Results;
/** What runAttention recorded as each measurement was final, as JSON (what measurements.jsonl gets). */
const recorded: string[] = [];

before(async () => {
  const attention = await runAttention([sweep], {
    backend: 'cpu',
    repeats: 2,
    seed: 1,
    standard: true,
    clock: new WallClock(),
    geometry: (c) => cpuGeometry(c, 2),
    progress: silentProgress,
    record: (m) => recorded.push(JSON.stringify(m)),
  });
  results = {
    tool: 'flashattn bench',
    schema: 1,
    environment: { date: '2026-01-01T00:00:00.000Z', flashattn: '0.1.0', node: 'v20', cpu: 'test cpu', cores: 2, platform: 'linux', arch: 'x64', backend: 'cpu', timer: 'wall-clock' },
    settings: { suite: 'default', repeats: 2, seed: 1, standard: true },
    attention,
  };
});

/** A copy of the results where standard ran out of memory at N=64. */
function withOutOfMemory(): Results {
  const r = structuredClone(results);
  for (const m of r.attention.measurements) {
    if (m.algorithm === 'standard' && m.N === 64) Object.assign(m, { status: 'out-of-memory', timesMs: [], medianMs: null, minMs: null, maxMs: null, tflops: null, peakBytes: null, message: 'OutOfMemoryError: q: ...' });
  }
  return r;
}

test('results: every (case, algorithm, pass) validated and measured, and the JSON keeps it all', () => {
  const a = results.attention;
  assert.equal(a.validations.length, 8, '2 algorithms × forward/backward × 2 validation sizes');
  assert.ok(a.validations.every((v) => v.ok), 'all kernels pass validation');
  assert.equal(a.measurements.length, 8, '2 cases × 2 algorithms × 2 passes');
  for (const m of a.measurements) {
    assert.equal(m.status, 'ok');
    assert.equal(m.timesMs.length, 2);
    assert.ok(m.minMs! <= m.medianMs! && m.medianMs! <= m.maxMs!);
    assert.ok(m.tflops! > 0 && m.flops > 0 && m.peakBytes! > 0 && m.io!.bytes > 0);
  }
  const fwd = measurementOf(a.measurements, small(64), 'flash', 'forward')!;
  const both = measurementOf(a.measurements, small(64), 'flash', 'forward+backward')!;
  assert.equal(both.flops, 3.5 * fwd.flops, 'forward+backward counts 3.5× the forward FLOPs');
  assert.ok(both.io!.bytes > fwd.io!.bytes);
  assert.deepEqual(JSON.parse(JSON.stringify(results)), results, 'results.json round-trips');
  assert.deepEqual(
    recorded.map((line) => JSON.parse(line)),
    a.measurements.map((m) => JSON.parse(JSON.stringify(m))),
    'each measurement was recorded once, final, in order',
  );
});

test('out of memory: the table, the terminal text, the chart data and the page say so', () => {
  const r = withOutOfMemory();
  const rows = sweepTable(r, sweep).rows.filter((row) => row[0] === '64' && row[3] === 'standard');
  assert.equal(rows.length, 2);
  for (const row of rows) assert.deepEqual(row[4], { text: 'out of memory', span: 5 });
  assert.match(formatResults(r), /64 .*standard +│ out of memory/);
  const oom = sweepData(r, [sweep], 'time').filter((d) => d.oom);
  assert.deepEqual(oom.map((d) => [d.x, d.series, d.value]), [[64, 'standard', null], [64, 'standard', null]]);
  assert.match(reportHtml(r, []), /<td colspan="5" class="status">out of memory<\/td>/);
});

test('PyTorch beside ours: one row per shape and pass, OOM and missing figures marked', () => {
  const { sdpa } = parseAnchors(
    [
      '{"gpu": "GPU", "torch": "2.11"}',
      '{"backend": "flash", "dtype": "float32", "B": 1, "H": 1, "N": 64, "D": 8, "causal": false, "fwd_ms": 0.01, "fwd_tflops": 12.5, "fwdbwd_ms": 0.03, "fwdbwd_tflops": 10.0}',
      '{"backend": "math", "dtype": "float32", "B": 1, "H": 1, "N": 64, "D": 8, "causal": false, "error": "CUDA out of memory."}',
    ].join('\n'),
    'sdpa.jsonl',
  );
  const t = sdpaTable(withOutOfMemory(), sdpa!);
  assert.equal(t.rows.length, 2, 'only N=64 has PyTorch figures: forward and forward+backward');
  const [fwd, both] = t.rows;
  assert.deepEqual(fwd.slice(0, 6), ['f32', '8', '64', '1×1', 'off', 'forward']);
  assert.equal(fwd[7], 'OOM', 'our standard ran out of memory');
  assert.deepEqual(fwd.slice(8), ['OOM', '—', '12.5', '—'], 'torch math, efficient, flash, cudnn');
  assert.equal(both[10], '10.0');
});

test('charts: SVG from vega, PNG from resvg (PNG signature), OOM marked', async () => {
  const r = withOutOfMemory();
  const charts = await renderCharts(chartsFor(r));
  assert.deepEqual(charts.map((c) => c.id), ['attention-time', 'attention-memory', 'attention-io', 'attention-tflops']);
  for (const c of charts) {
    assert.match(c.svg, /^<svg[^>]*>/);
    assert.deepEqual([...c.png.subarray(0, 8)], PNG_SIGNATURE, `${c.id}.png`);
    assert.ok(c.png.length > 1000);
  }
  assert.match(charts[0].svg, />OOM</, 'the time chart marks where standard ran out of memory');
});

test('the report folder: results.json, each chart as SVG and PNG, and a self-contained index.html', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'report-'));
  const { files, chartsNote } = await writeReport(dir, withOutOfMemory());
  assert.equal(chartsNote, undefined);
  const names = readdirSync(dir).sort();
  assert.deepEqual(names, [...new Set(files.map((f) => f.slice(dir.length + 1)))].sort());
  assert.ok(names.includes('results.json') && names.includes('index.html') && names.includes('attention-io.png') && names.includes('attention-io.svg'));
  assert.deepEqual(JSON.parse(readFileSync(join(dir, 'results.json'), 'utf8')), withOutOfMemory());
  const html = readFileSync(join(dir, 'index.html'), 'utf8');
  assert.doesNotMatch(html, /https?:\/\//, 'no URL at all');
  assert.doesNotMatch(html, /<script|<link|<img|<iframe|\ssrc=|\shref=|@import|url\(/i, 'nothing loaded from elsewhere');
  assert.equal((html.match(/<svg/g) ?? []).length, 4, 'every chart inlined');
  assert.match(html, /Validation/);
  assert.match(html, /The IO story/);
});

test('encoder driver: standard stops where it runs out of memory, flash goes on to the cap', async () => {
  const created: string[] = [];
  // A stand-in model: allocates B·N² per forward in its tracker; standard runs out of memory above N=256.
  const factory: EncoderFactory = async (config) => {
    created.push(config.attention);
    const memory = config.memory ?? new MemoryTracker();
    return {
      async forward(x) {
        const [B, N, d] = x.shape;
        if (config.attention === 'standard' && N > 256) throw new OutOfMemoryError('x', 'a smaller N', String(N));
        const bytes = memory.allocate(config.attention === 'standard' ? B * N * N * 4 : B * N * 64);
        memory.release(bytes);
        return tensor(new Float32Array(B * N * d), [B, N, d]) as Tensor;
      },
      dispose() {},
    };
  };
  const settings = encoderSettings('small', 'f32', 3, 1, 1024);
  assert.deepEqual(settings.ns, [64, 128, 256, 512, 1024]);
  assert.equal(settings.repeats, 2, 'at most 2 timed forwards on a cpu');
  const points: unknown[] = [];
  const e = await runEncoder(settings, factory, { backend: 'cpu', seed: 1, clock: new WallClock(), progress: silentProgress, record: (q) => points.push(structuredClone(q)) });
  assert.deepEqual(points, e.points, 'each point was recorded once, final, in order');
  assert.deepEqual(created.sort(), ['flash', 'standard'], 'one model per variant, reused over N');
  const status = (a: string) => e.points.filter((p) => p.attention === a).map((p) => p.status);
  assert.deepEqual(status('standard'), ['ok', 'ok', 'ok', 'out-of-memory', 'not-run']);
  assert.deepEqual(status('flash'), ['ok', 'ok', 'ok', 'ok', 'ok']);
  const p = e.points.find((q) => q.attention === 'standard' && q.N === 256)!;
  assert.equal(p.peakBytes, 256 * 256 * 4);
  assert.equal(p.timesMs.length, 2);
  const r = { ...structuredClone(results), encoder: e };
  const charts = chartsFor(r).map((c) => c.id);
  assert.ok(charts.includes('encoder-time') && charts.includes('encoder-memory'));
  assert.match(formatResults(r), /512 .*│ +OOM/);
  // PyTorch's seed-notebook lines beside it: its flash path's refusal and its math path's OOM say so.
  const { seed } = parseAnchors(
    [
      '{"backend": "math", "seq": 128, "ms": 3.1, "peak_mib": 700}',
      '{"backend": "math", "seq": 512, "error": "CUDA out of memory. Tried to allocate 32.00 GiB"}',
      '{"backend": "flash", "seq": 128, "error": "No available kernel. Aborting execution."}',
    ].join('\n'),
    'seed.jsonl',
  );
  const table = encoderTable(e, seed);
  const torch = (N: number) => table.rows.find((row) => row[0] === String(N))!.slice(5);
  assert.deepEqual(torch(128).map((c, i) => (i % 2 === 0 ? c : 'value')), ['refused', 'value', 'refused', 'value']);
  assert.deepEqual(torch(512), ['—', 'OOM', '—', 'OOM']);
  assert.ok(table.notes.some((n) => /refused: PyTorch had no kernel/.test(n)));
});

test('suites: the cpu default is small; a GPU gets B·N = 16384 and H·D = 2048', () => {
  const cpu = defaultSweeps({ scale: 'small', axes: ['N', 'D', 'causal', 'dtype'], f16: true });
  assert.deepEqual(cpu.map((s) => s.id), ['n', 'd', 'causal', 'dtype']);
  assert.deepEqual(cpu[0].cases.map((c) => c.N), [256, 512, 1024]);
  const gpu = defaultSweeps({ scale: 'gpu', axes: ['N', 'D'], f16: false });
  assert.ok(gpu[0].cases.every((c) => c.B * c.N === 16384 && c.H * c.D === 2048 && c.dtype === 'f32'));
  assert.ok(gpu[1].cases.every((c) => c.H * c.D === 2048 && c.N === 4096));
});
