/**
 * index.html of a report: one self-contained page (inline CSS, the charts' SVG inlined, no scripts, no
 * external resources) that shows the environment, the validations, every table and chart, with a short
 * explanation of each. It is built from Results, the table models and the rendered charts alone.
 */
import type { RenderedChart } from './charts.js';
import { slowMemory, summary } from './findings.js';
import type { Results } from './results.js';
import { attentionNotes, decodeGroups, decodeNotes, decodeSummaryTable, decodeTable, decodeValidationLines, encoderTable, sdpaTable, sweepTable, validationLines, type TableModel } from './tables.js';

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** An SVG ready to inline in HTML: without the XML namespace attributes (HTML parsers supply them). */
export function inlineSvg(svg: string): string {
  return svg.replace(/\s+xmlns(:xlink)?="[^"]*"/g, '');
}

function table(t: TableModel): string {
  const head = t.head.map((h, i) => `<th${t.numeric.includes(i) ? ' class="num"' : ''}>${escapeHtml(h)}</th>`).join('');
  const rows = t.rows
    .map((row) => {
      let col = 0;
      const cells = row.map((cell) => {
        if (typeof cell === 'string') return `<td${t.numeric.includes(col++) ? ' class="num"' : ''}>${escapeHtml(cell)}</td>`;
        col += cell.span;
        return `<td colspan="${cell.span}" class="status">${escapeHtml(cell.text)}</td>`;
      });
      return `<tr>${cells.join('')}</tr>`;
    })
    .join('\n');
  const notes = t.notes.length ? `<ul class="notes">${t.notes.map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul>` : '';
  return `<h3>${escapeHtml(t.title)}</h3>\n<table><thead><tr>${head}</tr></thead><tbody>\n${rows}\n</tbody></table>${notes}`;
}

function figure(c: RenderedChart): string {
  return `<figure id="${c.id}"><figcaption><b>${escapeHtml(c.title)}.</b> ${escapeHtml(c.caption)} <span class="files">(${c.id}.svg, ${c.id}.png)</span></figcaption>${inlineSvg(c.svg)}</figure>`;
}

const STYLE = `body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:0.2em}h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:2em}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}th,td{border:1px solid #ddd;padding:0.2em 0.6em;text-align:left}
th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.status{color:#a33;font-style:italic}
dl{display:grid;grid-template-columns:max-content auto;gap:0.1em 1em}dt{font-weight:bold}dd{margin:0}
figure{margin:1.5em 0}figcaption{margin-bottom:0.5em}figure svg{width:100%;height:auto}.summary{background:#f6f8fa;border-left:4px solid #1f77b4;padding:0.5em 1em}.files{color:#888;font-size:0.85em}
.notes{font-size:0.85em;color:#555}.fail{color:#a33;font-weight:bold}.ok{color:#282}pre{background:#f6f6f6;padding:0.5em;overflow:auto}`;

/** The whole page. `chartsNote` says why there are no charts, when there are none. */
export function reportHtml(r: Results, charts: readonly RenderedChart[], chartsNote?: string): string {
  const env = r.environment;
  const byId = new Map(charts.map((c) => [c.id, c]));
  const fig = (id: string) => (byId.has(id) ? figure(byId.get(id)!) : '');
  const envRows: [string, string][] = [
    ['date', env.date],
    ['backend', env.backend],
    ...(env.adapter ? ([['adapter', `${env.adapter.description}${env.adapter.software ? ' (software)' : ''}`]] as [string, string][]) : []),
    ['timing', env.timer === 'timestamp-query' ? 'GPU timestamp queries' : env.timer === 'onSubmittedWorkDone' ? 'wall clock until the GPU queue is idle (no timestamp-query)' : 'wall clock'],
    ['versions', `flashattn ${env.flashattn}, Node ${env.node}${env.webgpu ? `, webgpu (Dawn) ${env.webgpu}` : ''}`],
    ['cpu', `${env.cpu} (${env.cores} cores), ${env.platform}/${env.arch}`],
    ['suite', `${r.settings.suite}; ${r.settings.repeats} timed samples per row after a warm-up; seed ${r.settings.seed}`],
  ];
  if (r.decode) envRows.push(['peak bandwidth', r.decode.settings.peakGBps === null ? 'unknown' : `${r.decode.settings.peakGBps} GB/s (${r.decode.settings.peakSource})`]);
  // The body's first part is its introduction, shown above the environment.
  const [intro, ...body] = r.decode ? decodeParts(r, fig, chartsNote) : attentionParts(r, fig, chartsNote);
  const parts: string[] = [`<h1>flashattn bench</h1>`, intro, `<dl>${envRows.map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`).join('')}</dl>`, ...body];
  parts.push(`<h2>Files</h2><p>results.json holds every measurement (raw sample times included), the validations and the environment; each chart is also a .svg and a .png file beside this page.</p>`);
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flashattn bench: ${escapeHtml(env.backend)} ${escapeHtml(env.date)}</title>
<style>${STYLE}</style></head>
<body>
${parts.filter((p) => p !== '').join('\n')}
</body></html>
`;
}

/** The page's body for the default and product suites: validations, attention tables and charts, encoder. */
function attentionParts(r: Results, fig: (id: string) => string, chartsNote: string | undefined): string[] {
  const failed = r.attention.validations.filter((v) => !v.ok).length;
  const parts: string[] = [
    `<p>FlashAttention (tiled, online softmax, never stores the N×N score matrix) against the standard algorithm (stores S and P, and P, dP, dS in the backward), on the same backend. Every kernel was validated against a float64 reference before it was timed.</p>`,
    ...summaryPart(r),
    `<h2>Validation</h2>`,
    `<p>Each kernel (algorithm × forward/backward × D, dtype, causal) ran on a small problem and was compared with the float64 reference: ${failed ? `<span class="fail">${failed} FAILED</span> (not timed)` : '<span class="ok">all passed</span>'}.</p>`,
    `<details${failed ? ' open' : ''}><summary>${r.attention.validations.length} validations</summary><pre>${escapeHtml(validationLines(r).join('\n'))}</pre></details>`,
    `<h2>Attention</h2>`,
  ];
  if (chartsNote) parts.push(`<p class="fail">No charts: ${escapeHtml(chartsNote)}</p>`);
  parts.push(fig('attention-time'), fig('attention-memory'));
  parts.push(
    `<h3>The IO story</h3><p>The paper's argument (Theorem 2): standard attention reads and writes Θ(N·d + N²) bytes of slow memory, FlashAttention Θ(N²·d²/M) for on-chip memory M, many times fewer for the d and M of real hardware. The ${slowMemory(r) === 'HBM' ? 'HBM' : 'moved'} MiB column of the tables and the chart below count those bytes (to and from ${slowMemory(r)}) for the kernels that ran here, with their real tile sizes; the time column beside it is measured.</p>`,
    fig('attention-io'),
    fig('attention-tflops'),
    fig('attention-variants'),
  );
  for (const s of r.attention.sweeps) parts.push(table(sweepTable(r, s)));
  parts.push(`<ul class="notes">${attentionNotes(r).map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul>`);
  if (r.anchors?.sdpa) {
    parts.push(`<h2>Beside PyTorch</h2>`, table(sdpaTable(r, r.anchors.sdpa)));
  }
  if (r.encoder) {
    parts.push(
      `<h2>The encoder experiment: a transformer encoder</h2>`,
      `<p>A ${r.encoder.settings.layers}-layer encoder (d_model ${r.encoder.settings.dModel}, ${r.encoder.settings.heads} heads) run forward with flash attention and with standard attention at growing N, as in a PyTorch notebook that compared the two (docs/encoder-experiment.md in the flashattn repository), timed until the work is done.</p>`,
    );
    parts.push(fig('encoder-time'), fig('encoder-memory'), table(encoderTable(r.encoder, r.anchors?.seed)));
  }
  return parts;
}

/** "What was found": the summary's sentences (findings.ts), computed from the measurements. */
function summaryPart(r: Results): string[] {
  const lines = summary(r);
  if (!lines.length) return [];
  return [`<h2>What was found</h2>`, `<ul class="summary">${lines.map((l) => `<li>${escapeHtml(l)}</li>`).join('')}</ul>`];
}

/** The page's body for the decode suite: validations, the bandwidth chart, the tables beside the peers'. */
function decodeParts(r: Results, fig: (id: string) => string, chartsNote: string | undefined): string[] {
  const d = r.decode!;
  const failed = d.validations.filter((v) => !v.ok).length;
  const parts = [
    `<p>The decode step of inference: one new query per sequence (Nq = 1) against a long K and V, which it reads once with little arithmetic per byte, so its measure is the memory bandwidth reached. Each case ran as forward() on the tensors, and through a contiguous and a paged KV cache; each was validated against a float64 reference before it was timed.</p>`,
    `<h2>Validation</h2>`,
    `<p>The first batch row's first key/value head and the last row's last (with their query heads), for each case and variant, against the float64 reference over the same values: ${failed ? `<span class="fail">${failed} FAILED</span> (not timed)` : '<span class="ok">all passed</span>'}.</p>`,
    `<details${failed ? ' open' : ''}><summary>${d.validations.length} validations</summary><pre>${escapeHtml(decodeValidationLines(d).join('\n'))}</pre></details>`,
    `<h2>Decode</h2>`,
  ];
  if (chartsNote) parts.push(`<p class="fail">No charts: ${escapeHtml(chartsNote)}</p>`);
  parts.push(fig('decode-bandwidth'), table(decodeSummaryTable(r)));
  for (const g of decodeGroups(r)) parts.push(table(decodeTable(r, g)));
  parts.push(`<ul class="notes">${decodeNotes(r).map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul>`);
  return parts;
}
