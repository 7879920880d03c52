// Reading PyTorch's figures (src/cli/anchors.ts): the lines pytorch_sdpa.py and pytorch_seed_notebook.py
// print, error lines included, and a clear error for a line that is neither.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { AnchorError, parseAnchors, readAnchors, sdpaFor } from '../src/cli/anchors.js';

const SDPA = [
  '{"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu128"}',
  '{"backend": "math", "dtype": "float32", "B": 4, "H": 32, "N": 4096, "D": 64, "causal": false, "fwd_ms": 32.5, "fwd_tflops": 16.9, "fwd_extra_mib": 8192.0, "fwdbwd_ms": 120.1, "fwdbwd_tflops": 16.0}',
  '{"backend": "flash", "dtype": "float16", "B": 4, "H": 32, "N": 4096, "D": 64, "causal": false, "fwd_ms": 1.78, "fwd_tflops": 308.0, "fwd_extra_mib": 32.0, "fwdbwd_ms": 7.1, "fwdbwd_tflops": 270.2}',
  '{"backend": "flash", "dtype": "float32", "B": 1, "H": 16, "N": 16384, "D": 128, "causal": true, "error": "No available kernel. Aborting execution."}',
  '{"backend": "math", "dtype": "float16", "B": 1, "H": 16, "N": 16384, "D": 128, "causal": false, "error": "CUDA out of memory. Tried to allocate 16.00 GiB"}',
].join('\n');

const SEED = [
  '{"backend": "math", "seq": 128, "ms": 3.1, "peak_mib": 700}',
  '{"backend": "math", "seq": 8192, "error": "CUDA out of memory. Tried to allocate 32.00 GiB"}',
  '{"backend": "flash", "seq": 8192, "ms": 95.2, "peak_mib": 2100}',
].join('\n');

test('SDPA lines: the header, each case with its dtype mapped, error lines kept with their message', () => {
  const { sdpa, seed } = parseAnchors(SDPA + '\n', 'sdpa.jsonl');
  assert.equal(seed, undefined);
  assert.ok(sdpa);
  assert.equal(sdpa.gpu, 'NVIDIA H100 80GB HBM3');
  assert.equal(sdpa.torch, '2.11.0+cu128');
  assert.equal(sdpa.rows.length, 4);
  const flash = sdpaFor(sdpa, { B: 4, H: 32, N: 4096, D: 64, causal: false, dtype: 'f16' }, 'flash');
  assert.equal(flash?.fwdTflops, 308);
  assert.equal(flash?.fwdbwdTflops, 270.2);
  const oom = sdpaFor(sdpa, { B: 1, H: 16, N: 16384, D: 128, causal: false, dtype: 'f16' }, 'math');
  assert.match(oom?.error ?? '', /out of memory/);
  assert.equal(oom?.fwdTflops, null);
  assert.equal(sdpaFor(sdpa, { B: 4, H: 32, N: 4096, D: 64, causal: true, dtype: 'f16' }, 'flash'), undefined, 'the causal flag is part of the key');
});

test('seed-notebook lines: ms and peak MiB per backend and seq, out-of-memory points kept', () => {
  const { seed, sdpa } = parseAnchors(SEED, 'seed.jsonl');
  assert.equal(sdpa, undefined);
  assert.equal(seed?.rows.length, 3);
  assert.deepEqual(seed?.rows[0], { backend: 'math', seq: 128, ms: 3.1, peakMib: 700 });
  assert.match(seed?.rows[1].error ?? '', /out of memory/);
});

test('a bad line is an AnchorError that names the file and the line', () => {
  const bad = (text: string, line: number, pattern: RegExp) =>
    assert.throws(() => parseAnchors(text, 'x.jsonl'), (e: unknown) => e instanceof AnchorError && e.line === line && e.file === 'x.jsonl' && pattern.test(e.message));
  bad(`${SDPA}\nnot json`, 6, /not a JSON line/);
  bad('{"gpu": "g", "torch": "t"}\n{"backend": "fast", "dtype": "float16", "B": 1, "H": 1, "N": 1, "D": 1, "causal": false, "fwd_tflops": 1}', 2, /backend/);
  bad('{"gpu": "g", "torch": "t"}\n{"backend": "math", "dtype": "bfloat16", "B": 1, "H": 1, "N": 1, "D": 1, "causal": false, "fwd_tflops": 1}', 2, /dtype/);
  bad('{"gpu": "g", "torch": "t"}\n{"backend": "math", "dtype": "float16", "B": 1, "H": 1, "N": 1, "D": 1, "causal": false}', 2, /fwd_tflops or error/);
  bad('{"backend": "math", "dtype": "float16", "B": 1, "H": 1, "N": 1, "D": 1, "causal": false, "fwd_tflops": 1}', 1, /header/);
  bad('{"hello": 1}', 1, /neither/);
  bad('', 1, /no SDPA case/);
});

test('readAnchors merges files of both kinds; a missing file is an AnchorError', () => {
  const dir = mkdtempSync(join(tmpdir(), 'anchors-'));
  writeFileSync(join(dir, 'a.jsonl'), SDPA);
  writeFileSync(join(dir, 'b.jsonl'), SEED);
  const a = readAnchors([join(dir, 'a.jsonl'), join(dir, 'b.jsonl')]);
  assert.equal(a.sdpa?.rows.length, 4);
  assert.equal(a.seed?.rows.length, 3);
  assert.throws(() => readAnchors([join(dir, 'missing.jsonl')]), AnchorError);
});
