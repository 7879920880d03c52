// The cpu backend's worker pool keeps its memory bounded: a call's arrays are regions of one workspace,
// reused from call to call (workers keep every buffer they were sent until their garbage collector runs,
// which it seldom does), results are arrays of the caller's own, and an idle pool drops the workspace and
// ends its workers. Before the workspace, a thousand calls of 1.3 MB each took the process's resident
// memory up by about 0.4 GB.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { forward, MemoryTracker, type ForwardResult } from '../src/index.js';
import { cpuThreads, releaseIdle, workerExecArgv, workspaceBytes } from '../src/cpu/pool.js';
import { wasmSupport } from '../src/cpu/wasm/index.js';
import { inputs } from './util.js';

const NO_POOL = availableParallelism() < 2 ? 'one core: the cpu backend runs inline, without workers' : undefined;
const INDEX = fileURLToPath(new URL('../src/index.js', import.meta.url));

// B·H·N²·D = 2^23 multiply-adds: over the pool's inline threshold, so every call goes to the workers.
const c = { B: 1, H: 2, Hkv: 2, Nq: 256, Nk: 256, D: 64 };

test('resident memory stays bounded over hundreds of calls on the worker pool', { skip: NO_POOL, timeout: 120_000 }, async () => {
  const code = `
    const lib = await import(${JSON.stringify(INDEX)});
    const t = () => lib.tensor(new Float32Array(1 * 256 * 2 * 64).map(Math.random), [1, 256, 2, 64]);
    const [q, k, v] = [t(), t(), t()];
    for (let i = 0; i < 30; i++) await lib.forward(q, k, v, { backend: 'cpu' });
    const before = process.memoryUsage().rss;
    for (let i = 0; i < 400; i++) await lib.forward(q, k, v, { backend: 'cpu' });
    process.stdout.write(JSON.stringify({ before, after: process.memoryUsage().rss }));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', code], { timeout: 110_000 });
  const { before, after } = JSON.parse(stdout) as { before: number; after: number };
  const grown = (after - before) / 2 ** 20;
  assert.ok(grown < 64, `resident memory grew by ${grown.toFixed(0)} MiB over 400 calls of about 1.5 MB each`);
});

test('the workspace is reused from call to call, results are the caller\'s own, and an idle pool lets it go', { skip: NO_POOL }, async () => {
  const a = inputs(c, 'f32', 'BNHD', 1);
  const b = inputs(c, 'f32', 'BNHD', 7);
  const memory = new MemoryTracker();
  const first = await forward(a.q, a.k, a.v, { backend: 'cpu', memory });
  const kept = workspaceBytes();
  assert.ok(kept > 0, 'a workspace is kept after the call');
  const copy = first.out.data.slice();
  await forward(b.q, b.k, b.v, { backend: 'cpu', memory });
  assert.equal(workspaceBytes(), kept, 'the same workspace served the second call');
  assert.deepEqual(first.out.data, copy, "the second call did not touch the first one's result");
  assert.ok(!(first.out.data.buffer instanceof SharedArrayBuffer), 'a result is not a view of shared memory');
  assert.equal(memory.live, 0);

  assert.equal(await releaseIdle(), true);
  assert.equal(workspaceBytes(), 0, 'released');
  const again = await forward(a.q, a.k, a.v, { backend: 'cpu' });
  assert.deepEqual(again.out.data, first.out.data, 'the pool starts again, with the same result');
});

test('concurrent calls give what they give one at a time', { skip: NO_POOL }, async () => {
  const sets = [1, 2, 3].map((seed) => inputs(c, 'f32', 'BNHD', seed));
  const alone: ForwardResult[] = [];
  for (const s of sets) alone.push(await forward(s.q, s.k, s.v, { backend: 'cpu', causal: true }));
  const together = await Promise.all(sets.map((s) => forward(s.q, s.k, s.v, { backend: 'cpu', causal: true })));
  together.forEach((r, i) => assert.deepEqual(r.out.data, alone[i].out.data, `call ${i}`));
});

test('workers do not inherit the options of the entry point (node -e CODE, --input-type)', () => {
  assert.deepEqual(workerExecArgv(['--input-type=module', '-e', 'code', '--max-old-space-size=100']), ['--max-old-space-size=100']);
  assert.deepEqual(workerExecArgv(['--eval', 'x', '--input-type', 'module', '--enable-source-maps']), ['--enable-source-maps']);
  assert.deepEqual(workerExecArgv(['--print=1']), []);
});

test('a process started with V8 or process options (node --max-old-space-size, --expose-gc) still gets its workers', { skip: NO_POOL }, async () => {
  const script = `import(${JSON.stringify(new URL('../src/index.js', import.meta.url).href)}).then(async (l) => console.log(JSON.stringify(await l.cpuThreads())))`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--max-old-space-size=4096', '--expose-gc', '--stack-size=2000', '--enable-source-maps', '--input-type=module', '-e', script]);
  const t = JSON.parse(stdout);
  assert.equal(t.workers, 'worker_threads', t.reason);
  assert.equal(t.threads, Math.min(availableParallelism(), 16));
});

test('cpuThreads() reports the worker threads, one per core, and the WebAssembly they run', { skip: NO_POOL }, async () => {
  const t = await cpuThreads();
  assert.deepEqual(t, { threads: Math.min(availableParallelism(), 16), workers: 'worker_threads', wasm: wasmSupport() });
});
