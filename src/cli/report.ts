/**
 * What `flashattn bench` prints and writes: the environment (machine, adapter, versions), the terminal
 * text (header, validations, tables), and the report folder: results.json, every chart as SVG and PNG,
 * and index.html.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { join } from 'node:path';
import Table from 'cli-table3';
import { ChartsUnavailableError, chartsFor, renderCharts, type RenderedChart } from './charts.js';
import { summary } from './findings.js';
import { reportHtml } from './html.js';
import type { Environment, Results } from './results.js';
import { attentionNotes, decodeGroups, decodeNotes, decodeSummaryTable, decodeTable, decodeValidationLines, encoderTable, sdpaTable, sweepTable, validationLines, type TableModel } from './tables.js';

/** The package version, read from package.json next to the build (dist/src/cli/ -> ../../../). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The installed `webgpu` package's version (Dawn's Node binding). */
export function webgpuVersion(): string {
  try {
    return (createRequire(import.meta.url)('webgpu/package.json') as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** The machine and versions; the caller adds the backend, adapter and timer. */
export function machine(now = new Date()): Pick<Environment, 'date' | 'flashattn' | 'node' | 'cpu' | 'cores' | 'platform' | 'arch'> {
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

export function formatHeader(r: Results): string {
  const e = r.environment;
  const rows: [string, string][] = [
    ['date', e.date],
    ['versions', `flashattn ${e.flashattn}, node ${e.node}${e.webgpu ? `, webgpu ${e.webgpu}` : ''}`],
    ['cpu', `${e.cpu} (${e.cores} cores), ${e.platform}/${e.arch}`],
    ['backend', e.backend],
    ...(e.adapter ? ([['adapter', `${e.adapter.description}${e.adapter.software ? ' (software)' : ''}`]] as [string, string][]) : []),
    [
      'timing',
      r.decode
        ? `${e.timer}; ${r.settings.repeats} timed sample${r.settings.repeats === 1 ? '' : 's'} of ${r.decode.settings.calls} back-to-back calls per row after a spin-up; median and min–max`
        : `${e.timer}; ${r.settings.repeats} timed sample${r.settings.repeats === 1 ? '' : 's'} per row after a warm-up; median and min–max`,
    ],
    ['suite', r.decode ? `decode (${r.decode.cases.length} cases × 3 variants, ${r.decode.dropped.length} left out)` : r.settings.suite],
  ];
  if (!r.decode) rows.push(['precision', `${r.settings.precision ?? 'highest'} (f32 products${r.settings.precision === 'high' ? ': split into f16 halves on tensor cores where the GPU has them' : ': in f32 or wider'})`]);
  else rows.push(['peak', r.decode.settings.peakGBps === null ? 'unknown (--peak-bandwidth)' : `${r.decode.settings.peakGBps} GB/s (${r.decode.settings.peakSource})`]);
  return ['flashattn bench', ...rows.map(([k, v]) => `  ${k.padEnd(10)}${v}`)].join('\n');
}

/** A table model as terminal text. */
export function formatTable(t: TableModel): string {
  const table = new Table({
    head: t.head,
    colAligns: t.head.map((_, i) => (t.numeric.includes(i) ? 'right' : 'left')),
    style: { head: [], border: [], compact: true },
  });
  for (const row of t.rows) table.push(row.map((c) => (typeof c === 'string' ? c : { content: c.text, colSpan: c.span, hAlign: 'left' as const })));
  return [t.title, table.toString(), ...t.notes].join('\n');
}

/** Everything the terminal shows after a run, from the validations to the last table. */
export function formatResults(r: Results): string {
  if (r.decode) {
    const d = r.decode;
    return [
      `validation against the float64 reference (backend 'reference', algorithm 'standard'):\n${decodeValidationLines(d).map((l) => `  ${l}`).join('\n')}`,
      formatTable(decodeSummaryTable(r)),
      ...decodeGroups(r).map((g) => formatTable(decodeTable(r, g))),
      decodeNotes(r).join('\n'),
    ].join('\n\n');
  }
  const parts = [
    `validation against the float64 reference (backend 'reference', algorithm 'standard'):\n${validationLines(r).map((l) => `  ${l}`).join('\n')}`,
    ...r.attention.sweeps.map((s) => formatTable(sweepTable(r, s))),
    attentionNotes(r).join('\n'),
  ];
  if (r.anchors?.sdpa) parts.push(formatTable(sdpaTable(r, r.anchors.sdpa)));
  if (r.encoder) parts.push(formatTable(encoderTable(r.encoder, r.anchors?.seed)));
  const found = summary(r);
  if (found.length) parts.push(`what was found:\n${found.map((l) => `  ${l}`).join('\n')}`);
  return parts.join('\n\n');
}

/**
 * Write the report folder: results.json, <chart>.svg and <chart>.png, index.html. Returns the files
 * written and, where the chart packages could not be loaded, why there are no charts.
 */
export async function writeReport(dir: string, r: Results): Promise<{ files: string[]; chartsNote?: string }> {
  mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  const write = (name: string, data: string | Uint8Array) => {
    writeFileSync(join(dir, name), data);
    files.push(join(dir, name));
  };
  write('results.json', JSON.stringify(r, null, 2) + '\n');
  let charts: RenderedChart[] = [];
  let chartsNote: string | undefined;
  try {
    charts = await renderCharts(chartsFor(r));
  } catch (e) {
    if (!(e instanceof ChartsUnavailableError)) throw e;
    chartsNote = e.message;
  }
  for (const c of charts) {
    write(`${c.id}.svg`, c.svg);
    write(`${c.id}.png`, c.png);
  }
  write('index.html', reportHtml(r, charts, chartsNote));
  return chartsNote === undefined ? { files } : { files, chartsNote };
}
