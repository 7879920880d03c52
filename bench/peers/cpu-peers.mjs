/**
 * flashattn's cpu backend beside the JavaScript peers on this machine's CPU, in one run: onnxruntime-node
 * (native) and onnxruntime-web's WebAssembly backend, each running com.microsoft MultiHeadAttention as a
 * one-node model (onnx-mha.mjs), f32, B=1 H=8 D=64 by default, N = 1024 and 4096, causal off and on.
 *
 * Each case (peer × N × causal) lives in a child process of its own, so that each one's peak resident
 * memory is its own: the child makes the inputs (seeded normal values, flashattn's test/util.js) and its
 * session, notes its resident memory, then runs one call and checks the output against a float64
 * reference on a few query rows of every head (max|err| / max|ref| ≤ 1e-4; a case that fails is not
 * timed), then --warmup more calls (2 by default; each peer's runtime optimizes its WebAssembly during
 * its first calls; their times are kept in the results). The parent then asks the children for samples
 * in turn, one call each per round, so a machine shared with other work disturbs every case alike, each after the machine has gone quiet (settle: the
 * previous case's thread pools may still spin); each sample gives the share of the machine's CPU time
 * that other processes took meanwhile (/proc/stat, less the child's own) and the child's CPU time per
 * wall-clock time (≈ the threads it kept busy). At the end each child gives its peak resident set
 * (getrusage maxRSS) less its resident set before the first call: the memory growth of the calls.
 *
 * GFLOP/s = 4·B·H·N²·D per forward / median time (and / the fastest sample's), halved when causal.
 * GFLOP per CPU-second = the same FLOPs / the process's CPU time (median over the samples): what a core
 * does while the case has it, which other work on the machine disturbs far less than the wall-clock rate
 * (times the cores it would keep busy alone, it estimates the rate on a quiet machine; spinning threads
 * count against it). onnxruntime-web at N = 4096 stops
 * with "Integer overflow" (its MultiHeadAttention on the cpu materialises the B·H·N×N scores; 8·4096² f32
 * are 512 MiB): the script records the error and goes on.
 *
 * Run from the project root (Node ≥ 20; the peers are bench/peers' own dependencies, not the library's):
 *   npm run build && npm ci --prefix bench/peers --ignore-scripts
 *   node bench/peers/cpu-peers.mjs [--n 1024,4096] [--warmup 2] [--samples 5] [--heads 8] [--dim 64] [--out report/cpu-peers]
 * It prints the device, date and versions and a table, and writes OUT.json and OUT.md.
 * `--ignore-scripts`: onnxruntime-node's install script fetches CUDA libraries; its cpu binaries ship in the package.
 */
import { execFileSync, fork } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** Busy and total jiffies of the whole machine (Linux's /proc/stat), or undefined elsewhere. */
function machineTicks() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - f[3] - (f[4] ?? 0), total };
  } catch {
    return undefined;
  }
}

/**
 * Wait until the machine is quiet before a sample: windows of 50 ms until one in which all processes took
 * under 10 % of the CPU, at most 1 s (returns the milliseconds waited). The peers' thread pools keep
 * spinning for a while after a call (onnxruntime's did: 10–20 ms of CPU inside the next case's 55 ms
 * sample), which would count against whichever case samples next.
 */
async function settle() {
  const t0 = performance.now();
  while (performance.now() - t0 < 1000) {
    const a = machineTicks();
    if (!a) return 0;
    await sleep(50);
    const b = machineTicks();
    if (b.total > a.total && (b.busy - a.busy) / (b.total - a.total) < 0.1) break;
  }
  return performance.now() - t0;
}

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const peerModules = resolve(here, 'node_modules');
const PEERS = ['flashattn', 'onnxruntime-node', 'onnxruntime-web'];
const TOLERANCE = 1e-4;

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// ---------------------------------------------------------------------------------------------------
// The child: one case.

/** out (N, H·D) of query rows `rows` in float64: softmax(scale·QKᵀ)V per head, causal from row i's key i. */
function referenceRows(q, k, v, { N, H, D, causal, scale }, rows) {
  const out = new Map();
  const s = new Float64Array(N);
  for (const i of rows) {
    const o = new Float64Array(H * D);
    for (let h = 0; h < H; h++) {
      const keys = causal ? i + 1 : N;
      let m = -Infinity;
      for (let j = 0; j < keys; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[(i * H + h) * D + d] * k[(j * H + h) * D + d];
        s[j] = dot * scale;
        if (s[j] > m) m = s[j];
      }
      let l = 0;
      for (let j = 0; j < keys; j++) l += s[j] = Math.exp(s[j] - m);
      for (let j = 0; j < keys; j++) for (let d = 0; d < D; d++) o[h * D + d] += (s[j] / l) * v[(j * H + h) * D + d];
    }
    out.set(i, o);
  }
  return out;
}

/** A function that runs one forward of the case on its peer (the output as (N, H·D) f32), and what it is. */
async function peerCall(peer, c, q, k, v) {
  const { N, H, D, causal, scale } = c;
  if (peer === 'flashattn') {
    const lib = await import(pathToFileURL(resolve(root, 'dist/src/index.js')).href);
    const { wasmSupport } = await import(pathToFileURL(resolve(root, 'dist/src/cpu/wasm/index.js')).href);
    const { threadsFor } = await import(pathToFileURL(resolve(root, 'dist/src/cpu/pool.js')).href);
    const shape = [1, N, H, D];
    const [tq, tk, tv] = [q, k, v].map((x) => lib.tensor(x, shape, 'f32'));
    const threads = await threadsFor(N * N * H * D);
    // The pool ends its workers after 10 s without a call (pool.ts, IDLE_RELEASE_MS), and a round of the
    // other cases can take longer on a busy machine: a tiny call (run inline) every 4 s keeps them, so no
    // sample pays for starting them again.
    const tiny = lib.tensor(new Float32Array(8 * D), [1, 8, 1, D], 'f32');
    setInterval(() => void lib.forward(tiny, tiny, tiny, { backend: 'cpu' }), 4000).unref();
    return {
      detail: `cpu backend, flash, WebAssembly ${wasmSupport()}, ${threads} thread${threads > 1 ? 's' : ''}`,
      call: async () => (await lib.forward(tq, tk, tv, { backend: 'cpu', causal, scale })).out.data,
    };
  }
  const { mhaModel } = await import('./onnx-mha.mjs');
  const model = mhaModel({ H, D, scale, causal });
  let ort;
  let options;
  let detail;
  if (peer === 'onnxruntime-node') {
    ort = await import(pathToFileURL(resolve(peerModules, 'onnxruntime-node/dist/index.js')).href);
    options = {}; // the default intra-op thread pool (one thread per physical core)
    detail = 'MultiHeadAttention (com.microsoft), cpu execution provider, default threads';
  } else {
    ort = await import(pathToFileURL(resolve(peerModules, 'onnxruntime-web/dist/ort.node.min.mjs')).href);
    ort.env.wasm.numThreads = availableParallelism();
    options = { executionProviders: ['wasm'] };
    detail = `MultiHeadAttention (com.microsoft), wasm backend, numThreads ${ort.env.wasm.numThreads}`;
  }
  const session = await ort.InferenceSession.create(model, options);
  const dims = [1, N, H * D];
  const feeds = { query: new ort.Tensor('float32', q, dims), key: new ort.Tensor('float32', k, dims), value: new ort.Tensor('float32', v, dims) };
  return { detail, call: async () => (await session.run(feeds)).output.data };
}

async function child(c) {
  const send = (m) => new Promise((ok) => process.send(m, ok));
  try {
    const { randomTensor } = await import(pathToFileURL(resolve(root, 'dist/test/util.js')).href);
    const { timedCall } = await import(pathToFileURL(resolve(root, 'dist/bench/load.js')).href);
    const shape = [1, c.N, c.H, c.D];
    const [q, k, v] = [1, 2, 3].map((seed) => randomTensor('f32', shape, seed).data);
    const { detail, call } = await peerCall(c.peer, c, q, k, v);
    const rssBefore = process.memoryUsage().rss;
    // The first call: validation (and the warm-up).
    const rows = [0, 1, 2, Math.floor(c.N / 3), Math.floor(c.N / 2), c.N - 2, c.N - 1];
    const t0 = performance.now();
    const out = await call();
    const firstMs = performance.now() - t0;
    const ref = referenceRows(q, k, v, c, rows);
    let err = 0;
    let top = 0;
    for (const [i, o] of ref) {
      for (let x = 0; x < o.length; x++) {
        err = Math.max(err, Math.abs(out[i * o.length + x] - o[x]));
        top = Math.max(top, Math.abs(o[x]));
      }
    }
    const error = err / top; // NaN where the output was NaN
    if (!(error <= TOLERANCE)) throw new Error(`validation failed: max|err|/max|ref| = ${error} on rows ${rows.join(', ')} (tolerance ${TOLERANCE})`);
    // Warm-up calls, not sampled (every peer alike): a runtime's WebAssembly optimizing tier takes over during the first calls.
    const warmupMs = [];
    for (let i = 0; i < c.warmup; i++) {
      const t = performance.now();
      await call();
      warmupMs.push(performance.now() - t);
    }
    await send({ ready: true, detail, error, firstMs, warmupMs, rssBefore });
    process.on('message', async (m) => {
      if (m === 'sample') {
        const { ms, ownMs, others } = await timedCall(call);
        await send({ ms, cpuPerWall: ownMs / ms, others: others ?? null });
      } else if (m === 'finish') {
        const peak = process.resourceUsage().maxRSS * 1024;
        await send({ peakRss: peak, growth: peak - rssBefore });
        process.exit(0);
      }
    });
  } catch (e) {
    await send({ ready: false, error: (e instanceof Error ? e.message : String(e)).split('\n').filter((s) => s.trim())[0] ?? String(e) });
    process.exit(0);
  }
}

// ---------------------------------------------------------------------------------------------------
// The parent: the cases, in turn.

function version(pkgJson) {
  try {
    return JSON.parse(readFileSync(pkgJson, 'utf8')).version;
  } catch {
    return 'not installed';
  }
}

function environment() {
  const git = (...a) => {
    try {
      return execFileSync('git', a, { cwd: root, encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  };
  let model = cpus()[0]?.model ?? 'unknown';
  try {
    const flags = readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1].split(/\s+/) ?? [];
    const simd = ['avx2', 'avx512f', 'fma'].filter((f) => flags.includes(f));
    model += ` (${simd.join(', ') || 'no avx2'})`;
  } catch {
    // not Linux
  }
  return {
    date: new Date().toISOString(),
    cpu: model,
    cores: availableParallelism(),
    memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
    loadavg: loadavg().map((x) => +x.toFixed(2)),
    node: process.version,
    flashattn: `${version(resolve(root, 'package.json'))} (${git('rev-parse', '--short', 'HEAD')}${git('status', '--porcelain', '--untracked-files=no') ? ', modified' : ''})`,
    'onnxruntime-node': version(resolve(peerModules, 'onnxruntime-node/package.json')),
    'onnxruntime-web': version(resolve(peerModules, 'onnxruntime-web/package.json')),
  };
}

/** A child for case c, and a function that sends it a message and waits for its answer. */
function spawn(c) {
  const p = fork(fileURLToPath(import.meta.url), ['--child', JSON.stringify(c)], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const answers = [];
  const waiting = [];
  p.on('message', (m) => (waiting.length ? waiting.shift()(m) : answers.push(m)));
  p.on('exit', (code) => {
    while (waiting.length) waiting.shift()({ ready: false, error: `child exited with status ${code}` });
  });
  const next = () => new Promise((ok) => (answers.length ? ok(answers.shift()) : waiting.push(ok)));
  return { next, ask: (m) => (p.send(m), next()), kill: () => p.kill() };
}

/** An error's last clause (onnxruntime's put the source file and function first; the JSON keeps it whole). */
const brief = (message) => message.split(/\)\s+/).pop();
const pct = (x) => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '');
const fmt = (x, digits = 1) => (x === undefined || x === null ? '' : x.toFixed(digits));

function table(results) {
  const lines = [
    '| peer | N | causal | median ms | min–max ms | GFLOP/s, median (best) | GFLOP per CPU-second | CPU time / wall | others\' CPU share, median (max) | peak memory growth (RSS) |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    const head = `| ${r.peer} | ${r.N} | ${r.causal ? 'yes' : 'no'} |`;
    if (r.failed) lines.push(`${head} fails: ${brief(r.failed).replace(/\|/g, '\\|')} | | | | | | | |`);
    else
      lines.push(
        `${head} ${fmt(r.ms)} | ${fmt(r.minMs)}–${fmt(r.maxMs)} | ${fmt(r.gflops)} (${fmt(r.bestGflops)}) | ${fmt(r.gflopsPerCpuSecond)} | ${fmt(r.cpuPerWall, 2)} | ${pct(median(r.others))} (${pct(Math.max(...r.others))}) | ${fmt(r.growth / 1e6, 0)} MB |`,
      );
  }
  return lines.join('\n');
}

async function parent() {
  const Ns = arg('n', '1024,4096').split(',').map(Number);
  const H = Number(arg('heads', '8'));
  const D = Number(arg('dim', '64'));
  const samples = Number(arg('samples', '5'));
  const warmup = Number(arg('warmup', '2'));
  const out = resolve(arg('out', resolve(root, 'report/cpu-peers')));
  const env = environment();
  const command = `node bench/peers/cpu-peers.mjs ${args.join(' ')}`.trim();
  process.stdout.write(
    `${env.date}  ${env.cpu}, ${env.cores} cores, ${env.memoryGiB} GiB; load average ${env.loadavg.join(' ')}\n` +
      `Node ${env.node}; flashattn ${env.flashattn}; onnxruntime-node ${env['onnxruntime-node']}; onnxruntime-web ${env['onnxruntime-web']}\n` +
      `forward, B=1 H=${H} D=${D} f32, N = ${Ns.join(', ')}, causal off and on; ${warmup} warm-up calls and ${samples} samples each, cases in turn\n`,
  );

  const cases = [];
  for (const N of Ns) for (const causal of [false, true]) for (const peer of PEERS) cases.push({ peer, N, H, D, causal, scale: 1 / Math.sqrt(D), warmup });
  // Start and validate the cases one at a time (a start is the busiest moment), then sample them in turn.
  const live = [];
  const results = [];
  for (const c of cases) {
    const child = spawn(c);
    const r = { ...c, flops: 4 * c.N * c.N * c.D * c.H * (c.causal ? 0.5 : 1) };
    results.push(r);
    const m = await child.next();
    const label = `${c.peer} N=${c.N}${c.causal ? ' causal' : ''}`;
    if (!m.ready) {
      r.failed = m.error;
      process.stderr.write(`${label}: ${m.error}\n`);
      child.kill();
      continue;
    }
    Object.assign(r, { detail: m.detail, validation: m.error, firstMs: m.firstMs, warmupMs: m.warmupMs, times: [], cpuPerWallSamples: [], others: [] });
    process.stderr.write(`${label}: ${m.detail}; max|err|/max|ref| ${m.error.toExponential(1)}; first call ${m.firstMs.toFixed(0)} ms; warm-up ${m.warmupMs.map((x) => x.toFixed(0)).join(', ')} ms\n`);
    live.push({ r, child });
  }
  for (let s = 0; s < samples; s++) {
    for (const { r, child } of live) {
      r.settleMs = (r.settleMs ?? 0) + (await settle());
      const m = await child.ask('sample');
      r.times.push(m.ms);
      r.cpuPerWallSamples.push(m.cpuPerWall);
      if (m.others !== null) r.others.push(m.others);
    }
    process.stderr.write(`samples: ${s + 1} of ${samples}\n`);
  }
  for (const { r, child } of live) {
    const m = await child.ask('finish');
    r.peakRss = m.peakRss;
    r.growth = m.growth;
    r.ms = median(r.times);
    r.minMs = Math.min(...r.times);
    r.maxMs = Math.max(...r.times);
    r.gflops = r.flops / r.ms / 1e6;
    r.bestGflops = r.flops / r.minMs / 1e6; // on a shared machine, the least disturbed sample
    r.cpuPerWall = median(r.cpuPerWallSamples);
    r.gflopsPerCpuSecond = median(r.times.map((ms, i) => r.flops / (ms * r.cpuPerWallSamples[i]) / 1e6));
  }
  env.loadavgAfter = loadavg().map((x) => +x.toFixed(2));
  const md = [
    `# flashattn's cpu backend beside onnxruntime on the CPU (${env.date.slice(0, 10)})`,
    '',
    `${env.cpu}, ${env.cores} cores, ${env.memoryGiB} GiB; Node ${env.node}; flashattn ${env.flashattn}; onnxruntime-node ${env['onnxruntime-node']}; onnxruntime-web ${env['onnxruntime-web']}.`,
    `Load average ${env.loadavg.join(' ')} before, ${env.loadavgAfter.join(' ')} after. \`${command}\`, ${env.date}.`,
    `Forward, B=1 H=${H} D=${D} f32 (BNHD); per case a validating first call and ${warmup} warm-up calls (not sampled), then ${samples} samples, the cases in turn; GFLOP/s = 4·N²·D·H / median time (best: / the fastest sample's), halved when causal;`,
    'GFLOP per CPU-second: the same FLOPs / the process\'s CPU time (median over the samples), far less disturbed by other work than GFLOP/s.',
    'Peak memory growth: the child process\'s peak resident set less its resident set before the first call (inputs and session made).',
    '',
    table(results),
    '',
    ...results.filter((r) => r.detail).map((r) => `- ${r.peer} N=${r.N}${r.causal ? ' causal' : ''}: ${r.detail}; max|err|/max|ref| ${r.validation.toExponential(1)}; first call ${r.firstMs.toFixed(0)} ms, warm-up calls ${r.warmupMs.map((x) => x.toFixed(0)).join(', ')} ms; waited ${((r.settleMs ?? 0) / samples).toFixed(0)} ms a sample for a quiet machine`),
    '',
  ].join('\n');
  process.stdout.write(`\n${table(results)}\n`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(`${out}.json`, `${JSON.stringify({ environment: env, command, settings: { Ns, H, D, warmup, samples, tolerance: TOLERANCE }, results }, null, 1)}\n`);
  writeFileSync(`${out}.md`, md);
  process.stdout.write(`\nwrote ${out}.json and ${out}.md\n`);
}

const childArg = args.indexOf('--child');
if (childArg >= 0) await child(JSON.parse(args[childArg + 1]));
else await parent();
