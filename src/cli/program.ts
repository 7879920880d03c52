/** The `flashattn` command: its subcommands, options and help text. */
import { writeFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { BENCH_BACKENDS, BENCH_DTYPES, bestBackend, TOLERANCE, VALIDATION_MAX_N, runBench, type BenchBackend, type BenchConfig, type BenchDType } from './bench.js';
import { defaultGpu } from '../webgpu/device.js';
import { info } from './info.js';
import { parseIntList, parsePositiveInt, parseSeed } from './parse.js';
import { environment, formatHeader, formatNotes, formatTable, formatValidations, jsonReport, packageVersion } from './report.js';

interface BenchOptions {
  backend: BenchBackend | 'auto';
  n: number[];
  batch: number;
  heads: number;
  dim: number;
  causal?: boolean;
  dtype: BenchDType;
  repeats: number;
  seed: number;
  json?: string;
  standard: boolean;
}

const BENCH_HELP_AFTER = `
What it does:
  For each N (Nq = Nk = N), inputs q, k, v and dout of shape (B, N, H, D), layout BNHD, are drawn
  from a seeded normal distribution. Then, in turn: flash forward, standard forward, flash backward,
  standard backward. 'standard' is the baseline that materialises the N×N matrices S and P (and in
  the backward P, dP, dS); 'flash' never does. The backward is fed the out and lse of the same
  algorithm's forward.

  Before a configuration is timed it is validated: the same backend, algorithm, dtype, causal flag and
  D run on a small problem (B=1, H=2, N=min(N, ${VALIDATION_MAX_N})) and are compared with the float64 reference
  (backend 'reference', algorithm 'standard'). It passes when max|error| / max|reference| is at most
  ${TOLERANCE.f32} (f32) or ${TOLERANCE.f16} (f16) for out and lse (forward) or dq, dk, dv (backward). A configuration
  that fails is shown as FAILED and not timed.

  Each timed row: 1 warm-up call, then --repeats calls. On webgpu the tensors stay on the device
  (GPUBuffers in and out) and each call is timed until the queue has finished its work.
  Columns: median ms, spread (min–max ms),
  GFLOP/s (attentionFlops() / median: forward 4·B·H·N²·D, halved when causal; backward 2.5×), peak MiB
  (the MemoryTracker's peak: every byte the library allocated during the call, counting staging
  copies, scratch, outputs and the N×N matrices) and, on flash rows, flash peak / standard peak.
  A call that runs out of memory (usually standard at large N) is shown as "out of memory" and the
  benchmark goes on. Progress goes to stderr; the header, validation lines and table to stdout.

Exit status: 0 when every configuration passed validation and ran (out of memory counts as ran);
  1 when one failed validation or raised another error; 2 on bad options.

Examples:
  $ flashattn bench
  $ flashattn bench --n 512,2048 --causal --dtype f16 --repeats 5
  $ flashattn bench --n 1024 --no-standard --json bench.json
`;

export function createProgram(): Command {
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
    .addHelpText('after', "\nRun 'flashattn bench --help' for what the benchmark measures and its options.");

  program
    .command('info')
    .description('Print what this machine offers: the cpu threads, and the WebGPU adapter with its features, subgroup sizes, subgroup-matrix configs and limits.')
    .action(async () => {
      process.stdout.write((await info()) + '\n');
    });

  program
    .command('bench')
    .description(
      'Benchmark attention forward and backward on the best backend present (or --backend): the flash algorithm against the standard ' +
        'baseline, validated against a float64 reference first, printed as a table.',
    )
    .addOption(
      new Option('--backend <name>', "backend that runs the kernels: 'auto' is webgpu on a GPU adapter (not a software one such as lavapipe), else cpu; 'reference' is the slow float64 one")
        .choices(['auto', ...BENCH_BACKENDS])
        .default('auto'),
    )
    .addOption(
      new Option('--n <list>', 'comma-separated sequence lengths N (queries = keys = N)')
        .argParser(parseIntList)
        .default([256, 1024, 4096], '256,1024,4096'),
    )
    .addOption(new Option('--batch <B>', 'batch size B').argParser(parsePositiveInt).default(1))
    .addOption(new Option('--heads <H>', 'number of heads H (for q and for k, v)').argParser(parsePositiveInt).default(8))
    .addOption(new Option('--dim <D>', 'head dimension D').argParser(parsePositiveInt).default(64))
    .addOption(new Option('--causal', 'use a causal mask (query i sees keys j ≤ i); the FLOP count used for GFLOP/s is halved'))
    .addOption(
      new Option('--dtype <type>', 'storage type of q, k, v, dout and the outputs (f16: 16-bit storage, arithmetic in f32 or wider)')
        .choices(BENCH_DTYPES)
        .default('f32'),
    )
    .addOption(
      new Option('--repeats <r>', 'timed calls per row, after 1 warm-up; the median and min–max are reported')
        .argParser(parsePositiveInt)
        .default(3),
    )
    .addOption(new Option('--seed <s>', 'seed of the random inputs (0 to 2^32-1)').argParser(parseSeed).default(1))
    .addOption(new Option('--json <file>', 'also write every measurement (raw times, errors, environment) as JSON to <file>'))
    .addOption(new Option('--no-standard', 'skip the standard baseline (only the flash algorithm runs)'))
    .addHelpText('after', BENCH_HELP_AFTER)
    .action(async (o: BenchOptions) => {
      const config: BenchConfig = {
        backend: o.backend === 'auto' ? await bestBackend(o.dtype) : o.backend,
        ns: o.n,
        batch: o.batch,
        heads: o.heads,
        dim: o.dim,
        causal: o.causal ?? false,
        dtype: o.dtype,
        repeats: o.repeats,
        standard: o.standard,
        seed: o.seed,
      };
      const env = environment();
      const adapter = config.backend === 'webgpu' ? `  adapter   ${(await defaultGpu()).description}\n` : '';
      process.stdout.write(formatHeader(env, config) + '\n' + adapter + '\n');
      const result = await runBench(config, { progress: (line) => process.stderr.write(line + '\n') });
      process.stdout.write(`${formatValidations(result)}\n\n${formatTable(result)}\n${formatNotes(result)}\n`);
      if (o.json) {
        writeFileSync(o.json, JSON.stringify(jsonReport(env, result), null, 2) + '\n');
        process.stderr.write(`wrote ${o.json}\n`);
      }
      if (result.measurements.some((m) => m.status === 'failed-validation' || m.status === 'error')) process.exitCode = 1;
    });

  return program;
}
