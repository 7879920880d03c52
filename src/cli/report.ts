/**
 * What `flashattn bench` prints and writes: the header (machine and versions), the validation lines,
 * the results table, and the JSON document of --json.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import Table from 'cli-table3';
import { VALIDATION_B, VALIDATION_H, VALIDATION_MAX_N, formatErrors, type BenchConfig, type BenchResult, type Measurement } from './bench.js';

export interface Environment {
  date: string;
  flashattn: string;
  node: string;
  cpu: string;
  cores: number;
  platform: string;
  arch: string;
}

/** The package version, read from package.json next to the build (dist/src/cli/ -> ../../../). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

export function environment(now = new Date()): Environment {
  const cpus = os.cpus();
  return {
    date: now.toISOString(),
    flashattn: packageVersion(),
    node: process.version,
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cores: typeof os.availableParallelism === 'function' ? os.availableParallelism() : cpus.length,
    platform: process.platform,
    arch: process.arch,
  };
}

export function formatHeader(env: Environment, c: BenchConfig): string {
  const rows: [string, string][] = [
    ['date', env.date],
    ['flashattn', env.flashattn],
    ['node', env.node],
    ['cpu', `${env.cpu} (${env.cores} cores)`],
    ['platform', `${env.platform}/${env.arch}`],
    ['backend', c.backend],
    [
      'problem',
      `B=${c.batch} H=${c.heads} D=${c.dim} N=${c.ns.join(',')} dtype=${c.dtype} causal=${c.causal ? 'yes' : 'no'} layout=BNHD seed=${c.seed}`,
    ],
    ['timing', `1 warm-up + ${c.repeats} timed call${c.repeats === 1 ? '' : 's'} per row; median and min–max`],
  ];
  return ['flashattn bench', ...rows.map(([k, v]) => `  ${k.padEnd(10)}${v}`)].join('\n');
}

export function formatValidations(r: BenchResult): string {
  const lines = r.validations.map(
    (v) => `  ${v.ok ? 'ok    ' : 'FAILED'} ${v.algorithm} ${v.pass} (N=${v.N}): ${formatErrors(v)}`,
  );
  return [
    `validation against the float64 reference (backend 'reference', algorithm 'standard'; B=${VALIDATION_B} H=${VALIDATION_H} N=min(N, ${VALIDATION_MAX_N}), same D, dtype, causal):`,
    ...lines,
  ].join('\n');
}

const MiB = 1024 * 1024;

function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3);
}

function fmtRatio(x: number): string {
  return x >= 0.1 ? `${x.toFixed(2)}×` : `${x.toPrecision(2)}×`;
}

function statusText(m: Measurement): string {
  switch (m.status) {
    case 'failed-validation':
      return 'FAILED validation (not timed)';
    case 'out-of-memory':
      return 'out of memory';
    case 'skipped':
      return `skipped: ${m.message ?? ''}`;
    case 'error':
      return `error: ${m.message ?? ''}`;
    default:
      return '';
  }
}

/** The results table: one row per (N, pass, algorithm). */
export function formatTable(r: BenchResult): string {
  const table = new Table({
    head: ['N', 'pass', 'algorithm', 'median ms', 'spread ms', 'GFLOP/s', 'peak MiB', 'peak flash/std'],
    colAligns: ['right', 'left', 'left', 'right', 'right', 'right', 'right', 'right'],
    style: { head: [], border: [] },
  });
  for (const m of r.measurements) {
    const first = [m.N, m.pass, m.algorithm];
    if (m.status !== 'ok') {
      table.push([...first, { content: statusText(m), colSpan: 5, hAlign: 'left' }]);
      continue;
    }
    table.push([
      ...first,
      fmtMs(m.medianMs!),
      `${fmtMs(m.minMs!)}–${fmtMs(m.maxMs!)}`,
      m.gflops!.toFixed(2),
      m.peakBytes === null ? 'n/a' : (m.peakBytes / MiB).toFixed(2),
      m.peakRatio === null ? '' : fmtRatio(m.peakRatio),
    ]);
  }
  return table.toString();
}

export function formatNotes(r: BenchResult): string {
  const notes = [
    'GFLOP/s: attentionFlops() / median time (forward 4·B·H·N²·D, halved when causal; backward 2.5× forward).',
    'peak MiB: most bytes the library held at once during one call (MemoryTracker): staging copies, scratch, outputs, and for standard the N×N matrices.',
  ];
  if (r.config.backend === 'reference') notes.push("n/a: the reference backend does not count its allocations in the MemoryTracker.");
  if (r.measurements.some((m) => m.outLseFrom && m.outLseFrom !== m.algorithm)) {
    notes.push("A backward row whose own forward did not run was fed the other algorithm's out and lse (see --json).");
  }
  return notes.join('\n');
}

/** The document --json writes: environment, settings, validations and every measurement with raw times. */
export function jsonReport(env: Environment, r: BenchResult): object {
  return { tool: 'flashattn bench', environment: env, config: r.config, validations: r.validations, measurements: r.measurements };
}
