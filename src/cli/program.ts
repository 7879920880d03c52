/** The `flashattn` command: its subcommands, options and help text; `bench` from options to report. */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { Command, Option } from 'commander';
import { defaultGpu, preferWebgpu, type Gpu } from '../webgpu/device.js';
import { AnchorError, readAnchors } from './anchors.js';
import { SPIN_UP_MS, TARGET_SAMPLE_MS, TOLERANCE, VALIDATION_MAX_N, attentionUnits, runAttention } from './bench.js';
import { WallClock, clockFor } from './clock.js';
import { encoderUnits, runEncoder, type EncoderFactory } from './encoder-bench.js';
import { createEncoder } from '../models/encoder.js';
import { addDemoCommand } from './demo.js';
import { addGenerateCommand } from './generate.js';
import { info } from './info.js';
import { cpuGeometry, webgpuGeometry } from './io.js';
import { DECODE_CALLS, DECODE_REPEATS, DECODE_VARIANTS, H200_PEAK_GBPS, defaultPeakGBps, runDecode } from './decode-bench.js';
import { HASHED_INPUTS } from './decode-inputs.js';
import { parseAxes, parseIntList, parsePositiveInt, parsePositiveNumber, parseSeed } from './parse.js';
import { progressOn } from './progress.js';
import { formatHeader, formatResults, machine, packageVersion, webgpuVersion, writeReport } from './report.js';
import type { BenchBackend, BenchDType, Case, Results, Suite, SweepAxis } from './results.js';
import type { Precision } from '../index.js';
import {
  DECODE_GRIDS,
  DECODE_MAX_KV_BYTES,
  DECODE_PAGE_SIZE,
  DEFAULT_NS,
  ENCODER_DEFAULTS,
  PRODUCT_NS,
  SWEEP_AXES,
  decodeGrid,
  defaultSweeps,
  encoderSettings,
  fmtBytes,
  productSweeps,
  type Scale,
} from './suites.js';

interface BenchOptions {
  backend: BenchBackend | 'auto';
  suite: Suite;
  out: string;
  json?: string;
  n?: number[];
  batch?: number;
  heads?: number;
  dim?: number;
  causal?: boolean;
  dtype?: BenchDType;
  sweeps?: SweepAxis[];
  repeats: number;
  seed: number;
  standard: boolean;
  precision: Precision;
  encoder: boolean;
  encoderBatch?: number;
  encoderMaxN?: number;
  anchor: string[];
  peakBandwidth?: number;
  calls?: number;
  pageSize: number;
}

/** Options that shape the default suite only (the product suite's grid is fixed). */
const DEFAULT_SUITE_ONLY = ['batch', 'heads', 'dim', 'causal', 'sweeps', 'encoderBatch', 'encoderMaxN'] as const;
/** Options the decode suite has no use for (it has no standard baseline, encoder, mask or f32). */
const NOT_DECODE = ['heads', 'causal', 'sweeps', 'encoderBatch', 'encoderMaxN', 'standard', 'encoder', 'precision'] as const;
/** Options of the decode suite alone. */
const DECODE_ONLY = ['peakBandwidth', 'calls', 'pageSize'] as const;
const g = DECODE_GRIDS;

const BENCH_HELP_AFTER = `
What it does:
  Attention: for every case of the suite (q, k, v, dout of shape (B, N, H, D), layout BNHD, seeded
  normal values) the flash algorithm and the standard baseline (which materialises the N×N matrices S
  and P, and P, dP, dS in the backward) are each validated, then timed. Validation runs the same
  backend, algorithm, dtype, causal flag and D on B=1, H=2, N=min(N, ${VALIDATION_MAX_N}) against the float64
  reference; it passes when max|error| / max|reference| ≤ ${TOLERANCE.f32} (f32) or ${TOLERANCE.f16} (f16) for out and lse (forward)
  and dq, dk, dv (backward); what fails is not timed. Timing: a warm-up call, then --repeats samples of
  the forward, then the backward fed its out and lse; rows 'forward' and 'forward+backward'. On webgpu
  the tensors stay on the device, forwards first run back to back for ${SPIN_UP_MS} ms (an idle GPU clocks down)
  and their time per call sets how often a sample repeats each call so that it lasts ~${TARGET_SAMPLE_MS} ms; the GPU is timed
  with timestamp queries where the adapter has 'timestamp-query' (else the wall clock until the queue
  is idle); on the cpu, the wall clock. Each row: median ms and min–max, TFLOP/s (forward
  4·B·H·N²·D, halved when causal; forward+backward 3.5×), the MemoryTracker's peak, and the bytes moved
  to and from main memory by the paper's IO analysis with the backend's real tile sizes. A call that
  runs out of memory is shown as such and the run goes on (standard stops at that size, flash goes on).

Suites:
  default  an N sweep at a base case, then D ∈ {32, 64, 128}, causal off/on and f32/f16 at one N
           (--sweeps picks). cpu and software adapters: B=1, H=2, D=64, f32, N = ${DEFAULT_NS.small.join(', ')},
           the other sweeps at the smallest N (about a minute on 2 cores). GPU: B·N = 16384, H·D = 2048,
           D=64, f16 where the adapter has shader-f16, N = ${DEFAULT_NS.gpu.join(', ')}, the other
           sweeps at the middle N. Then the encoder experiment (docs/encoder-experiment.md: 6 layers,
           d_model 512, 32 heads, ffn 2048, causal) at doubling N with flash and with standard attention:
           on the cpu batch ${ENCODER_DEFAULTS.small.batch}, N = ${ENCODER_DEFAULTS.small.firstN}..${ENCODER_DEFAULTS.small.maxN}, ${ENCODER_DEFAULTS.small.repeats} timed forwards; on a GPU batch ${ENCODER_DEFAULTS.gpu.batch},
           N = ${ENCODER_DEFAULTS.gpu.firstN}..${ENCODER_DEFAULTS.gpu.maxN}, --repeats timed forwards. Standard stops where it runs out of
           memory; flash goes on to --encoder-max-n.
  product  the grid of FlashAttention's own benchmark (B·N = 16384 tokens, H·D = 2048): D ∈ {64, 128},
           N = ${PRODUCT_NS.join(', ')} (--n narrows it), B = 16384/N, H = 2048/D, causal off and on,
           f16 (where supported) and f32 (--dtype: one of them). Meant for a GPU.
  decode   inference's decode step: one query per sequence (Nq = 1) against K and V of Nk tokens, f16,
           not causal; q (B, 1, H, D) and k, v (B, Nk, Hkv, D), BNHD. GPU: Nk = ${g.gpu.Nk.join(', ')},
           B = ${g.gpu.B.join(', ')}, (H, Hkv) = ${g.gpu.heads.map(([h, kv]) => `(${h}, ${kv})`).join(' and ')} (GQA 4:1 and 1:1), D = ${g.gpu.D.join(', ')}, less the cases
           whose K and V pass ${fmtBytes(DECODE_MAX_KV_BYTES)} and those whose K passes the device's
           maxStorageBufferBindingSize (listed under the tables). cpu and software adapters: B = ${g.small.B.join(', ')},
           (H, Hkv) = (${g.small.heads[0].join(', ')}), D = ${g.small.D.join(', ')}, Nk = ${g.small.Nk.join(', ')}. --n, --batch and --dim narrow it (Nk,
           one B, one D). Each case runs three ways: ${DECODE_VARIANTS.join(', ')}. forward: forward() on the tensors
           (GPUBuffers on webgpu, into the same out and lse every call); cache and paged: a contiguous KV cache
           and a paged one (--page-size tokens a page, default ${DECODE_PAGE_SIZE}), filled once with append(), timed on
           cache.forward(q) into out and lse supplied by the caller. Each is validated on the first batch
           row's first key/value head and the last row's last (with their query heads) against the float64
           reference over the same values (tolerance as above), then timed: ${SPIN_UP_MS} ms of calls back to
           back, then --repeats samples (default ${DECODE_REPEATS} here) of --calls back-to-back calls (default ${DECODE_CALLS.gpu}
           on a GPU, ${DECODE_CALLS.cpu} on the cpu) between two GPU timestamps. Each row: median ms per call and
           min–max over the samples; GB/s = K and V bytes (2·B·Nk·Hkv·D·2) / median time, and % of
           --peak-bandwidth (default ${H200_PEAK_GBPS} GB/s on an adapter named H200, else none); the host's wall ms
           per call (before the first call to after the queue is idle, / calls) and wall/GPU. K and V are
           a hash of each element's index, made on the device (no upload).

Report (--out, default report/): results.json (every measurement with its raw sample times, the
  validations, the environment), each chart as .svg and .png, and index.html, one self-contained page;
  measurements.jsonl gets each measurement as it is final, so a run that is stopped keeps them.
  The charts need the optional packages vega, vega-lite and @resvg/resvg-js; without them the report
  has its tables and says why there are no charts.

PyTorch beside ours (--anchor FILE, repeatable): the JSON lines printed by bench/anchors/pytorch_sdpa.py
  (SDPA math/efficient/flash/cudnn per shape: one table of TFLOP/s beside ours),
  bench/anchors/pytorch_seed_notebook.py (the encoder's ms and peak MiB beside ours),
  bench/anchors/pytorch_decode.py or bench/peers/onnxruntime-decode.mjs (decode: their ms and GB/s as
  rows of the decode tables and series of the bandwidth chart); scripts of the flashattn
  repository, the PyTorch ones run on a CUDA GPU.

Progress goes to stderr (a bar on a terminal, lines otherwise); the header and tables to stdout.

Exit status: 0 when everything passed validation and ran (out of memory counts as ran);
  1 when a kernel failed validation or a call raised another error; 2 on bad options or inputs,
  or a report folder (--out) that cannot be written.

Examples:
  $ flashattn bench
  $ flashattn bench --backend cpu --n 512,2048 --causal --dtype f16 --sweeps N --no-encoder
  $ flashattn bench --suite product --anchor sdpa.jsonl --out report-h100
  $ flashattn bench --anchor seed.jsonl --encoder-max-n 16384
  $ flashattn bench --suite decode --anchor decode.jsonl --out report-decode
  $ flashattn bench --suite decode --backend webgpu --n 1024,4096 --calls 20    # a software adapter: a small grid
`;

/** The webgpu adapter, or a message that says why there is none. */
async function gpuOrReason(): Promise<Gpu | string> {
  try {
    return await defaultGpu();
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

async function bench(o: BenchOptions, cmd: Command, encoderFactory: EncoderFactory): Promise<void> {
  const fail = (message: string): never => cmd.error(`error: ${message}`, { exitCode: 2 });
  const flag = (k: string) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  const given = (keys: readonly string[]) => keys.filter((k) => cmd.getOptionValueSource(k) === 'cli');
  if (o.suite === 'product') {
    const wrong = given(DEFAULT_SUITE_ONLY);
    if (wrong.length) fail(`${flag(wrong[0])} does not apply to --suite product (its grid is fixed)`);
  }
  if (o.suite === 'decode') {
    const wrong = given(NOT_DECODE);
    if (wrong.length) fail(`${flag(wrong[0])} does not apply to --suite decode`);
    if (o.dtype === 'f32') fail('--dtype f32: the decode suite is f16');
    if (o.backend === 'reference') fail("--backend reference: the decode suite runs on 'cpu' or 'webgpu'");
    if (cmd.getOptionValueSource('repeats') !== 'cli') o.repeats = DECODE_REPEATS;
  } else {
    const wrong = given(DECODE_ONLY);
    if (wrong.length) fail(`${flag(wrong[0])} applies to --suite decode only`);
  }
  let anchors: Results['anchors'];
  try {
    anchors = o.anchor.length ? readAnchors(o.anchor) : undefined;
  } catch (e) {
    if (e instanceof AnchorError) fail(`--anchor ${e.message}`);
    throw e;
  }
  // The report folder first, so that a folder that cannot be written fails before any work. Each
  // measurement goes to measurements.jsonl as it is final: kept if the run is stopped before the report.
  const log = join(o.out, 'measurements.jsonl');
  try {
    mkdirSync(o.out, { recursive: true });
    writeFileSync(log, '');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
    const why: Record<string, string> = { ENOTDIR: ': part of the path is a file', EEXIST: ': a file is there', EACCES: ': not writable', EPERM: ': not writable', EROFS: ': a read-only file system' };
    fail(`--out ${o.out}: cannot write the report there (${code}${why[code] ?? ''})`);
  }
  const backend: BenchBackend = o.backend === 'auto' ? ((await preferWebgpu('f32')) ? 'webgpu' : 'cpu') : o.backend;
  let gpu: Gpu | undefined;
  if (backend === 'webgpu') {
    const g = await gpuOrReason();
    if (typeof g === 'string') return fail(`--backend webgpu: ${g}`);
    gpu = g;
  }
  const scale: Scale = gpu && !gpu.software ? 'gpu' : 'small';
  const f16 = !gpu || gpu.f16;
  if ((o.dtype === 'f16' || o.suite === 'decode') && !f16) fail(`${o.suite === 'decode' ? '--suite decode' : '--dtype f16'}: this adapter lacks 'shader-f16'`);
  if (o.suite === 'decode') return benchDecode(o, backend as 'cpu' | 'webgpu', gpu, scale, anchors);
  const sweeps =
    o.suite === 'product'
      ? productSweeps(o.n ?? PRODUCT_NS, f16, o.dtype)
      : defaultSweeps({ scale, ns: o.n, batch: o.batch, heads: o.heads, dim: o.dim, causal: o.causal, dtype: o.dtype, axes: o.sweeps ?? SWEEP_AXES, f16 });

  const clock = gpu ? clockFor(gpu.device) : new WallClock();
  const results: Results = {
    tool: 'flashattn bench',
    schema: 1,
    environment: {
      ...machine(),
      ...(gpu ? { webgpu: webgpuVersion() } : {}),
      backend,
      ...(gpu ? { adapter: { description: gpu.description, features: [...gpu.device.features].sort(), software: gpu.software } } : {}),
      timer: clock.method,
    },
    settings: { suite: o.suite, repeats: o.repeats, seed: o.seed, standard: o.standard, precision: o.precision },
    attention: { sweeps, validations: [], measurements: [] },
  };
  if (anchors) results.anchors = anchors;
  process.stdout.write(formatHeader(results) + '\n\n');

  const progress = progressOn(process.stderr);
  const record = (kind: 'attention' | 'encoder') => (m: object) => appendFileSync(log, JSON.stringify({ kind, ...m }) + '\n');
  // The whole run is planned before its first step: a total that grew when the encoder started would
  // take a bar that had reached 100 % back to 70 %.
  const encoder =
    o.suite === 'default' && o.encoder && backend !== 'reference'
      ? encoderSettings(scale, o.dtype ?? (scale === 'gpu' && f16 ? 'f16' : 'f32'), o.repeats, o.encoderBatch, o.encoderMaxN)
      : undefined;
  try {
    progress.plan(attentionUnits(sweeps, o.standard) + (encoder ? encoderUnits(encoder) : 0));
    const threads = availableParallelism();
    const geometry = backend === 'cpu' ? (c: Case) => cpuGeometry(c, threads) : gpu ? (c: Case) => webgpuGeometry(c, gpu, o.precision) : undefined;
    const context = { backend, repeats: o.repeats, seed: o.seed, standard: o.standard, precision: o.precision, clock, device: gpu?.device, geometry, progress };
    results.attention = await runAttention(sweeps, { ...context, record: record('attention') });
    if (encoder && backend !== 'reference') results.encoder = await runEncoder(encoder, encoderFactory, { backend, seed: o.seed, clock, device: gpu?.device, progress, record: record('encoder') });
  } finally {
    progress.stop();
  }

  process.stdout.write(formatResults(results) + '\n\n');
  const { files, chartsNote } = await writeReport(o.out, results);
  if (o.json) {
    writeFileSync(o.json, JSON.stringify(results, null, 2) + '\n');
    files.push(o.json);
  }
  if (chartsNote) process.stderr.write(`no charts: ${chartsNote}\n`);
  files.push(log);
  process.stdout.write(`report: ${o.out}/index.html (${files.length} files)\n`);
  const failed = results.attention.measurements.some((m) => m.status === 'failed-validation' || m.status === 'error') || results.encoder?.points.some((p) => p.status === 'error');
  if (failed) process.exitCode = 1;
}

/** The decode suite: its grid, the runs, the tables and the report. */
async function benchDecode(o: BenchOptions, backend: 'cpu' | 'webgpu', gpu: Gpu | undefined, scale: Scale, anchors: Results['anchors']): Promise<void> {
  const maxTensor = gpu ? { bytes: Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize), source: 'maxStorageBufferBindingSize' } : undefined;
  const { cases, dropped } = decodeGrid({ scale, nks: o.n, batches: o.batch === undefined ? undefined : [o.batch], dims: o.dim === undefined ? undefined : [o.dim], ...(maxTensor ? { maxTensor } : {}) });
  const calls = o.calls ?? (backend === 'cpu' ? DECODE_CALLS.cpu : DECODE_CALLS.gpu);
  const peakGBps = o.peakBandwidth ?? defaultPeakGBps(gpu?.description);
  const peakSource = o.peakBandwidth !== undefined ? '--peak-bandwidth' : peakGBps !== null ? "'H200' in the adapter's name" : null;
  const clock = gpu ? clockFor(gpu.device) : new WallClock();
  const results: Results = {
    tool: 'flashattn bench',
    schema: 1,
    environment: {
      ...machine(),
      ...(gpu ? { webgpu: webgpuVersion() } : {}),
      backend,
      ...(gpu ? { adapter: { description: gpu.description, features: [...gpu.device.features].sort(), software: gpu.software } } : {}),
      timer: clock.method,
    },
    settings: { suite: 'decode', repeats: o.repeats, seed: o.seed, standard: false },
    attention: { sweeps: [], validations: [], measurements: [] },
    decode: { settings: { pageSize: o.pageSize, calls, peakGBps, peakSource, inputs: HASHED_INPUTS }, cases, dropped, validations: [], measurements: [] },
  };
  if (anchors) results.anchors = anchors;
  process.stdout.write(formatHeader(results) + '\n\n');
  const progress = progressOn(process.stderr);
  mkdirSync(o.out, { recursive: true });
  const log = join(o.out, 'measurements.jsonl');
  writeFileSync(log, '');
  try {
    progress.plan(cases.length * DECODE_VARIANTS.length);
    const run = await runDecode(cases, {
      backend,
      gpu,
      repeats: o.repeats,
      calls,
      seed: o.seed,
      pageSize: o.pageSize,
      clock,
      progress,
      record: (m) => appendFileSync(log, JSON.stringify({ kind: 'decode', ...m }) + '\n'),
    });
    Object.assign(results.decode!, run);
  } finally {
    progress.stop();
  }
  process.stdout.write(formatResults(results) + '\n\n');
  const { files, chartsNote } = await writeReport(o.out, results);
  if (o.json) {
    writeFileSync(o.json, JSON.stringify(results, null, 2) + '\n');
    files.push(o.json);
  }
  if (chartsNote) process.stderr.write(`no charts: ${chartsNote}\n`);
  files.push(log);
  process.stdout.write(`report: ${o.out}/index.html (${files.length} files)\n`);
  if (results.decode!.measurements.some((m) => m.status === 'failed-validation' || m.status === 'error')) process.exitCode = 1;
}

/** The command; the encoder experiment builds its models with `encoderFactory` (tests pass their own). */
export function createProgram(encoderFactory: EncoderFactory = createEncoder): Command {
  const program = new Command();
  program
    .name('flashattn')
    .description('FlashAttention for TypeScript: exact, memory-efficient attention (forward and backward).')
    .version(packageVersion(), '-V, --version', 'print the flashattn version and exit')
    .helpOption('-h, --help', 'show this help')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpCommand(false)
    // Usage errors exit with 2 (commander's own default is 1), so they differ from a failed benchmark.
    .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
    .addHelpText('after', "\nRun 'flashattn bench --help' for what the benchmark measures and its options, 'flashattn generate --help' for text from a GPT-2 folder.");

  program
    .command('info')
    .description('Print what this machine offers: the cpu threads, and the WebGPU adapter with its features, subgroup sizes, subgroup-matrix configs and limits.')
    .action(async () => {
      process.stdout.write((await info()) + '\n');
    });

  program
    .command('bench')
    .description(
      'Benchmark attention on the best backend present (or --backend): flash against the standard baseline over N, D, causal and dtype, ' +
        'forward and forward+backward, each kernel validated against a float64 reference first; then the encoder experiment (docs/encoder-experiment.md). ' +
        'Prints tables and writes a report folder (results.json, SVG and PNG charts, index.html).',
    )
    .addOption(
      new Option('--backend <name>', "backend that runs the kernels: 'auto' is webgpu on a GPU adapter (not a software one such as lavapipe), else cpu; 'reference' is the slow float64 one")
        .choices(['auto', 'cpu', 'reference', 'webgpu'])
        .default('auto'),
    )
    .addOption(
      new Option('--suite <name>', "what to measure: 'default' (sweeps sized for the backend, then the encoder), 'product' (FlashAttention's benchmark grid) or 'decode' (one query against a long KV cache; see below)")
        .choices(['default', 'product', 'decode'])
        .default('default'),
    )
    .addOption(new Option('--out <dir>', 'report folder (created if missing; files in it are replaced)').default('report'))
    .addOption(new Option('--json <file>', 'also write results.json to <file>'))
    .addOption(new Option('--n <list>', `comma-separated sequence lengths N of the N sweep (default: ${DEFAULT_NS.small.join(',')} on the cpu, ${DEFAULT_NS.gpu.join(',')} on a GPU)`).argParser(parseIntList))
    .addOption(new Option('--batch <B>', 'batch size B (default: 1 on the cpu, 16384/N on a GPU)').argParser(parsePositiveInt))
    .addOption(new Option('--heads <H>', 'heads H (default: 2 on the cpu, 2048/D on a GPU)').argParser(parsePositiveInt))
    .addOption(new Option('--dim <D>', 'head dimension D of the base case (default 64)').argParser(parsePositiveInt))
    .addOption(new Option('--causal', 'causal mask in the base case (query i sees keys j ≤ i; FLOPs halved)'))
    .addOption(new Option('--dtype <type>', 'storage type of the base case (default: f32 on the cpu, f16 on a GPU with shader-f16); arithmetic is f32 or wider').choices(['f32', 'f16']))
    .addOption(new Option('--sweeps <list>', `which sweeps of the default suite to run, from ${SWEEP_AXES.join(',')} (default: all)`).argParser(parseAxes))
    .addOption(
      new Option('--precision <p>', "f32 products: 'highest' (in f32 or wider) or 'high' (split into f16 halves on tensor cores where the GPU has them; see the README)")
        .choices(['highest', 'high'])
        .default('highest'),
    )
    .addOption(new Option('--repeats <r>', `timed samples per row, after a warm-up; the median and min–max are reported (decode: default ${DECODE_REPEATS})`).argParser(parsePositiveInt).default(3))
    .addOption(new Option('--seed <s>', 'seed of the random inputs (0 to 2^32-1)').argParser(parseSeed).default(1))
    .addOption(new Option('--no-standard', 'skip the standard baseline in the attention sweeps (flash only)'))
    .addOption(new Option('--no-encoder', 'skip the encoder experiment'))
    .addOption(new Option('--encoder-batch <B>', `the encoder's batch (default: ${ENCODER_DEFAULTS.small.batch} on the cpu, ${ENCODER_DEFAULTS.gpu.batch} on a GPU)`).argParser(parsePositiveInt))
    .addOption(new Option('--encoder-max-n <N>', `the encoder's largest N (default: ${ENCODER_DEFAULTS.small.maxN} on the cpu, ${ENCODER_DEFAULTS.gpu.maxN} on a GPU)`).argParser(parsePositiveInt))
    .addOption(
      new Option('--anchor <file>', "peers' figures to show beside ours: JSON lines of bench/anchors/pytorch_sdpa.py, pytorch_seed_notebook.py, bench/anchors/pytorch_decode.py or bench/peers/onnxruntime-decode.mjs (repeatable)")
        .argParser((v: string, prev: string[]) => [...prev, v])
        .default([]),
    )
    .addOption(new Option('--peak-bandwidth <GBps>', `decode: the device's peak memory bandwidth in GB/s, for the % of peak column (default ${H200_PEAK_GBPS} on an adapter named H200, else none)`).argParser(parsePositiveNumber))
    .addOption(new Option('--calls <n>', `decode: back-to-back calls per timed sample (default ${DECODE_CALLS.gpu} on a GPU, ${DECODE_CALLS.cpu} on the cpu)`).argParser(parsePositiveInt))
    .addOption(new Option('--page-size <tokens>', 'decode: tokens per page of the paged KV cache').argParser(parsePositiveInt).default(DECODE_PAGE_SIZE))
    .addHelpText('after', BENCH_HELP_AFTER)
    .action(async (o: BenchOptions, cmd: Command) => bench(o, cmd, encoderFactory));

  addGenerateCommand(program);
  addDemoCommand(program);
  return program;
}
