// The decode suite of `flashattn bench` (src/cli/decode-bench.ts): its grid, the bandwidth arithmetic,
// the hashed inputs (host and WGSL alike), the peers' JSON lines, and a tiny run through the tables,
// the chart data and the page. No time is asserted: only what the report says about it.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { f16ToNumber, numberToF16 } from '../src/index.js';
import { AnchorError, decodeFor, decodeSeriesOf, parseAnchors, readAnchors } from '../src/cli/anchors.js';
import { chartsFor, decodeData } from '../src/cli/charts.js';
import { WallClock, clockFor } from '../src/cli/clock.js';
import {
  H200_PEAK_GBPS,
  bandwidthGBps,
  checkedSlices,
  defaultPeakGBps,
  emptyDecodeMeasurement,
  finishDecodeMeasurement,
  runDecode,
  variantLabel,
} from '../src/cli/decode-bench.js';
import { fillHashedF16, hashedF16, hashedValue } from '../src/cli/decode-inputs.js';
import { mix32 as lowbias32 } from '../src/modifiers.js';
import { reportHtml } from '../src/cli/html.js';
import { silentProgress } from '../src/cli/progress.js';
import { formatResults } from '../src/cli/report.js';
import type { DecodeCase, Results } from '../src/cli/results.js';
import { DECODE_MAX_KV_BYTES, decodeGrid, kvBytes } from '../src/cli/suites.js';
import { decodeGroups, decodeSummaryTable, decodeTable, fmtPeak } from '../src/cli/tables.js';
import { defaultGpu } from '../src/webgpu/device.js';
import { BACKENDS } from './spec.js';

const f16 = (c: Omit<DecodeCase, 'dtype'>): DecodeCase => ({ ...c, dtype: 'f16' });
const REQUIRED = [f16({ B: 8, H: 32, Hkv: 8, D: 128, Nk: 32768 }), f16({ B: 32, H: 32, Hkv: 32, D: 128, Nk: 4096 }), f16({ B: 1, H: 32, Hkv: 8, D: 128, Nk: 131072 })];
const key = (c: DecodeCase) => `${c.B}/${c.H}/${c.Hkv}/${c.D}/${c.Nk}`;
/** H200's binding limit (maxStorageBufferBindingSize). */
const BINDING = { bytes: 2 ** 31 - 4, source: 'maxStorageBufferBindingSize' };

test('decode grid on a GPU: Nk 1k..128k × B 1, 8, 32 × GQA 4:1 and 1:1 × D 64, 128, less K + V > 16 GiB', () => {
  const { cases, dropped } = decodeGrid({ scale: 'gpu' });
  assert.equal(cases.length + dropped.length, 5 * 3 * 2 * 2, 'every combination is run or said to be left out');
  for (const c of REQUIRED) assert.ok(cases.some((x) => key(x) === key(c)), `required case ${key(c)}`);
  assert.ok(cases.every((c) => c.dtype === 'f16' && kvBytes(c) <= DECODE_MAX_KV_BYTES));
  assert.ok(dropped.every((c) => kvBytes(c) > DECODE_MAX_KV_BYTES && /over the suite's 16 GiB/.test(c.reason)));
  assert.deepEqual(dropped.map(key).sort(), ['32/32/32/128/131072', '32/32/32/64/131072'], 'K and V of 64 and 32 GiB');
  assert.deepEqual(new Set(cases.map((c) => `${c.H}/${c.Hkv}`)), new Set(['32/8', '32/32']));
  const order = cases.map((c) => [c.D, c.Hkv, c.B, c.Nk]);
  assert.deepEqual(order, [...order].sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2] || a[3] - b[3]), 'D, heads, B, Nk ascending');
});

test("decode grid under a 2 GiB binding: K past it is left out, with the reason; the required cases stay", () => {
  const { cases, dropped } = decodeGrid({ scale: 'gpu', maxTensor: BINDING });
  for (const c of REQUIRED) assert.ok(cases.some((x) => key(x) === key(c)), `required case ${key(c)}`);
  assert.ok(cases.every((c) => kvBytes(c) / 2 <= BINDING.bytes));
  const byBinding = dropped.filter((c) => /maxStorageBufferBindingSize/.test(c.reason));
  assert.ok(byBinding.every((c) => kvBytes(c) / 2 > BINDING.bytes));
  assert.equal(cases.length, 47);
  assert.equal(byBinding.length, 11);
  assert.match(byBinding.find((c) => key(c) === '32/32/8/128/32768')!.reason, /K is 2 GiB, over this device's maxStorageBufferBindingSize \(2147483644 bytes\)/);
});

test('decode grid on the cpu is small; --n, --batch and --dim narrow it', () => {
  const { cases, dropped } = decodeGrid({ scale: 'small' });
  assert.deepEqual(cases.map(key), [1024, 2048, 4096, 8192].map((Nk) => `1/8/2/64/${Nk}`));
  assert.equal(dropped.length, 0);
  const narrow = decodeGrid({ scale: 'gpu', nks: [4096], batches: [32], dims: [128] });
  assert.deepEqual(narrow.cases.map(key), ['32/32/8/128/4096', '32/32/32/128/4096']);
});

test('bandwidth: K and V bytes over the time, GB/s; % of a peak; the H200 default peak', () => {
  const c = REQUIRED[0];
  assert.equal(kvBytes(c), 2 * 8 * 32768 * 8 * 128 * 2);
  assert.equal(kvBytes(c), 2 ** 30);
  assert.equal(bandwidthGBps(2 ** 30, 0.5), 2 ** 30 / 0.5e6);
  assert.ok(Math.abs(bandwidthGBps(4.8e9, 1) - 4800) < 1e-9, '4.8 GB in 1 ms is 4800 GB/s');
  assert.equal(fmtPeak(2400, 4800), '50 %');
  assert.equal(fmtPeak(240, 4800), '5.0 %');
  assert.equal(fmtPeak(2400, null), '', 'no peak: an empty cell');
  assert.equal(defaultPeakGBps('nvidia / hopper / NVIDIA H200'), H200_PEAK_GBPS);
  assert.equal(defaultPeakGBps('nvidia / hopper / NVIDIA H100 80GB HBM3'), null);
  assert.equal(defaultPeakGBps(undefined), null);
  const m = emptyDecodeMeasurement(c, 'paged', 16, 100);
  assert.equal(m.kvBytes, 2 ** 30);
  assert.equal(m.pageSize, 16);
  assert.equal(emptyDecodeMeasurement(c, 'cache', 16, 100).pageSize, null, 'page size only on the paged variant');
  finishDecodeMeasurement(m, [0.3, 0.25, 0.4], [0.6, 0.5, 0.55]);
  assert.deepEqual([m.medianMs, m.minMs, m.maxMs, m.wallMedianMs], [0.3, 0.25, 0.4, 0.55]);
  assert.ok(Math.abs(m.wallRatio! - 0.55 / 0.3) < 1e-12);
  assert.equal(m.gbps, 2 ** 30 / 0.3e6);
  assert.equal(variantLabel('paged', 16), 'paged (16 tokens/page)');
  assert.deepEqual(checkedSlices({ B: 8, Hkv: 8 }), [[0, 0], [7, 7]]);
  assert.deepEqual(checkedSlices({ B: 1, Hkv: 1 }), [[0, 0]]);
});

test('hashed inputs: multiples of 1/1024 in [−1, 1), exact in f16, the same for any index order', () => {
  assert.equal(lowbias32(0), 0, 'lowbias32 fixes 0');
  assert.equal(lowbias32(1), lowbias32(1));
  const values = Array.from({ length: 4096 }, (_, i) => hashedValue(7, i));
  assert.ok(values.every((x) => x >= -1 && x < 1 && Number.isInteger(x * 1024) && f16ToNumber(numberToF16(x)) === x));
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  assert.ok(Math.abs(mean) < 0.05, 'about uniform around 0');
  assert.notDeepEqual(hashedF16(1, 64), hashedF16(2, 64), 'the seed changes the tensor');
  const strided = hashedF16(7, 16, (j) => 3 * j + 5);
  assert.deepEqual([...strided], Array.from({ length: 16 }, (_, j) => numberToF16(hashedValue(7, 3 * j + 5))));
});

const TORCH = [
  '{"gpu": "NVIDIA H200", "torch": "2.11.0+cu128"}',
  '{"backend": "flash", "dtype": "float16", "B": 8, "H": 32, "Hkv": 8, "Nk": 32768, "D": 128, "gqa": "enable_gqa", "ms": 0.3, "min_ms": 0.29, "max_ms": 0.31, "GBps": 3579.1}',
  '{"backend": "cudnn", "dtype": "float16", "B": 8, "H": 32, "Hkv": 8, "Nk": 32768, "D": 128, "gqa": "repeat_interleave", "ms": 0.25, "min_ms": 0.24, "max_ms": 0.26, "GBps": 4294.97}',
  '{"backend": "cudnn", "dtype": "float16", "B": 32, "H": 32, "Hkv": 32, "Nk": 131072, "D": 64, "error": "CUDA out of memory. Tried to allocate 16.00 GiB"}',
].join('\n');
const ORT = ['{"gpu": "nvidia / hopper / NVIDIA H200", "onnxruntime": "1.30.0"}', '{"backend": "gqa", "dtype": "float16", "B": 8, "H": 32, "Hkv": 8, "Nk": 32768, "D": 128, "ms": 1.0, "wall_ms": 1.2}'].join('\n');

test("decode anchor lines: PyTorch's and onnxruntime's series, GB/s from ms, error lines kept", () => {
  const { decode, sdpa, seed } = parseAnchors(TORCH, 'torch.jsonl');
  assert.equal(sdpa, undefined);
  assert.equal(seed, undefined);
  assert.ok(decode);
  assert.deepEqual(decode.sources, [{ file: 'torch.jsonl', gpu: 'NVIDIA H200', runtime: 'PyTorch 2.11.0+cu128' }]);
  assert.deepEqual(decodeSeriesOf(decode), ['torch flash', 'torch cudnn']);
  const c = REQUIRED[0];
  const flash = decodeFor(decode, c, 'torch flash')!;
  assert.equal(flash.gbps, 2 ** 30 / 0.3e6, "GB/s from ms and the case's bytes, as ours");
  assert.deepEqual([flash.ms, flash.minMs, flash.maxMs, flash.gqa], [0.3, 0.29, 0.31, 'enable_gqa']);
  assert.equal(decodeFor(decode, c, 'torch cudnn')!.gqa, 'repeat_interleave');
  const oom = decodeFor(decode, f16({ B: 32, H: 32, Hkv: 32, Nk: 131072, D: 64 }), 'torch cudnn')!;
  assert.match(oom.error!, /out of memory/);
  assert.equal(oom.gbps, null);
  assert.equal(decodeFor(decode, { ...c, Hkv: 32 }, 'torch flash'), undefined, 'Hkv is part of the key');

  const dir = mkdtempSync(join(tmpdir(), 'decode-anchors-'));
  writeFileSync(join(dir, 'torch.jsonl'), TORCH);
  writeFileSync(join(dir, 'ort.jsonl'), ORT);
  const merged = readAnchors([join(dir, 'torch.jsonl'), join(dir, 'ort.jsonl')]).decode!;
  assert.deepEqual(decodeSeriesOf(merged), ['torch flash', 'torch cudnn', 'onnxruntime gqa']);
  assert.equal(merged.sources[1].runtime, 'onnxruntime-web 1.30.0');
  assert.equal(decodeFor(merged, c, 'onnxruntime gqa')!.gbps, 2 ** 30 / 1e6);
  assert.equal(decodeFor(merged, c, 'onnxruntime gqa')!.wallMs, 1.2);
  assert.equal(flash.wallMs, null);
});

test('a bad decode line is an AnchorError that names the line', () => {
  const bad = (text: string, line: number, pattern: RegExp) =>
    assert.throws(() => parseAnchors(text, 'd.jsonl'), (e: unknown) => e instanceof AnchorError && e.line === line && pattern.test(e.message));
  bad('{"gpu": "g", "torch": "t"}\n{"backend": "flash", "B": 1, "H": 1, "Nk": 1, "D": 1, "ms": 1}', 2, /Hkv must be a positive integer/);
  bad('{"gpu": "g", "torch": "t"}\n{"backend": "flash", "B": 1, "H": 1, "Hkv": 1, "Nk": 1, "D": 1}', 2, /ms or error/);
  bad('{"gpu": "g", "torch": "t"}\n{"backend": "", "B": 1, "H": 1, "Hkv": 1, "Nk": 1, "D": 1, "ms": 1}', 2, /backend/);
});

const TINY = [f16({ B: 2, H: 4, Hkv: 2, Nk: 40, D: 8 }), f16({ B: 1, H: 4, Hkv: 4, Nk: 64, D: 8 })];

/** A tiny decode run on `backend`, with PyTorch's lines for its cases (and a case left out) beside it. */
async function tinyRun(backend: 'cpu' | 'webgpu', cases: DecodeCase[]): Promise<Results> {
  const gpu = backend === 'webgpu' ? await defaultGpu() : undefined;
  const recorded: unknown[] = [];
  const run = await runDecode(cases, {
    backend,
    gpu,
    repeats: 2,
    calls: 2,
    seed: 1,
    pageSize: 16,
    clock: gpu ? clockFor(gpu.device) : new WallClock(),
    progress: silentProgress,
    record: (m) => recorded.push(structuredClone(m)),
  });
  assert.deepEqual(recorded, run.measurements, 'each measurement recorded once, final, in order');
  const anchors = parseAnchors(
    [
      '{"gpu": "GPU", "torch": "2.11"}',
      '{"backend": "flash", "B": 2, "H": 4, "Hkv": 2, "Nk": 40, "D": 8, "ms": 0.01, "gqa": "enable_gqa"}',
      '{"backend": "flash", "B": 1, "H": 4, "Hkv": 4, "Nk": 64, "D": 8, "error": "No available kernel."}',
      '{"backend": "flash", "B": 64, "H": 4, "Hkv": 4, "Nk": 64, "D": 8, "ms": 0.02}',
    ].join('\n'),
    'decode.jsonl',
  );
  return {
    tool: 'flashattn bench',
    schema: 1,
    environment: { date: '2026-01-01T00:00:00.000Z', flashattn: '0.1.0', node: 'v20', cpu: 'test cpu', cores: 2, platform: 'linux', arch: 'x64', backend, timer: gpu ? clockFor(gpu.device).method : 'wall-clock' },
    settings: { suite: 'decode', repeats: 2, seed: 1, standard: false },
    attention: { sweeps: [], validations: [], measurements: [] },
    decode: {
      settings: { pageSize: 16, calls: 2, peakGBps: 100, peakSource: '--peak-bandwidth', inputs: 'hashed' },
      cases,
      dropped: [{ ...f16({ B: 64, H: 4, Hkv: 4, Nk: 64, D: 8 }), reason: 'K is too big' }],
      ...run,
    },
    anchors,
  };
}

function checkTinyRun(r: Results): void {
  const d = r.decode!;
  assert.equal(d.validations.length, 6, '2 cases × 3 variants');
  assert.ok(d.validations.every((v) => v.ok), JSON.stringify(d.validations.filter((v) => !v.ok)));
  assert.deepEqual(d.validations[0].slices, [[0, 0], [1, 1]]);
  assert.equal(d.measurements.length, 6);
  for (const m of d.measurements) {
    assert.equal(m.status, 'ok', m.message);
    assert.equal(m.timesMs.length, 2);
    assert.equal(m.wallMs.length, 2);
    assert.ok(m.gbps! > 0 && m.wallRatio! > 0 && m.minMs! <= m.medianMs! && m.medianMs! <= m.maxMs!);
  }
  // The tables: ours and PyTorch's rows per case; the left-out case shows because PyTorch has it.
  const groups = decodeGroups(r);
  assert.deepEqual(groups.map((g) => g.title), ['Decode, f16, Nq = 1: D=8, H=4, Hkv=2 (GQA 2:1)', 'Decode, f16, Nq = 1: D=8, H=4, Hkv=4 (1:1)']);
  const first = decodeTable(r, groups[0]);
  assert.deepEqual(first.rows.map((row) => row[3]), ['forward', 'cache', 'paged (16 tokens/page)', 'torch flash']);
  assert.equal(first.rows[3][6], (kvBytes(r.decode!.cases[0]) / 1e4).toPrecision(3), "PyTorch's GB/s: bytes / 0.01 ms");
  const second = decodeTable(r, groups[1]);
  assert.deepEqual(second.rows.find((row) => row[3] === 'torch flash')![4], { text: 'error: No available kernel.', span: 6 });
  assert.deepEqual(second.rows.find((row) => row[0] === '64')!.slice(3), ['ours', { text: 'not run (left out of the grid: see below)', span: 6 }]);
  const summary = decodeSummaryTable(r);
  assert.deepEqual(summary.head.slice(5), ['forward', 'cache', 'paged (16 tokens/page)', 'torch flash']);
  assert.deepEqual(summary.rows.map((row) => row.slice(2, 4)), [['2', '40'], ['1', '64'], ['64', '64']]);
  assert.deepEqual(summary.rows[2].slice(5), ['not run', 'not run', 'not run', '26.2']);
  assert.match(summary.title, /peak 100 GB\/s/);
  // The chart: our three variants and PyTorch's series per case.
  const data = decodeData(r);
  assert.deepEqual([...new Set(data.map((x) => x.series))], ['forward', 'cache', 'paged (16 tokens/page)', 'torch flash']);
  assert.ok(data.filter((x) => x.series !== 'torch flash').every((x) => x.value !== null && x.value > 0));
  assert.deepEqual(chartsFor(r).map((c) => c.id), ['decode-bandwidth']);
  const text = formatResults(r);
  assert.match(text, /ok {5}decode paged \(B=2 H=4 Hkv=2 D=8 Nk=40; row\/kv head 0\/0, 1\/1\)/);
  assert.match(text, /left out of the grid \(1\): B=64 H=4 Hkv=4 D=8 Nk=64 \(K is too big\)/);
  assert.match(text, /torch flash: enable_gqa/);
  const html = reportHtml(r, []);
  assert.match(html, /<h2>Decode<\/h2>/);
  assert.match(html, /paged \(16 tokens\/page\)/);
}

test('a tiny decode run on the cpu: validated, timed, in the tables, the chart data and the page', async () => {
  checkTinyRun(await tinyRun('cpu', TINY));
});

test('a tiny decode run on webgpu (GPUBuffers, caches filled on the device, GPU timestamps)', { skip: BACKENDS.includes('webgpu') ? false : 'no WebGPU adapter here' }, async () => {
  // One case: each variant compiles its pipelines, seconds apiece on a software adapter.
  const r = await tinyRun('webgpu', TINY.slice(0, 1));
  const d = r.decode!;
  assert.ok(d.validations.length === 3 && d.validations.every((v) => v.ok), JSON.stringify(d.validations));
  assert.ok(d.measurements.every((m) => m.status === 'ok' && m.gbps! > 0 && m.wallRatio! > 0), JSON.stringify(d.measurements));
  const row = decodeTable(r, decodeGroups(r)[0]).rows[0];
  assert.notEqual(row[8], '—', 'the wall columns are filled on a GPU');
});

test('the WGSL fill writes the bits the host computes', { skip: BACKENDS.includes('webgpu') ? false : 'no WebGPU adapter here' }, async () => {
  const { device } = await defaultGpu();
  const elements = 1001; // odd: the last word's upper half is padding
  const buffer = device.createBuffer({ size: 2004, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  fillHashedF16(device, buffer, 42, elements);
  const staging = device.createBuffer({ size: 2004, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, 0, staging, 0, 2004);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const got = new Uint16Array(staging.getMappedRange().slice(0)).subarray(0, elements);
  staging.unmap();
  assert.deepEqual([...got], [...hashedF16(42, elements)]);
  buffer.destroy();
  staging.destroy();
});
