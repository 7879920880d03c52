/**
 * `flashattn demo`: a page on 127.0.0.1 where a user picks a GPT-2 folder (Hugging Face layout) and
 * generates text in the browser, on WebGPU (or the cpu backend, inline), with tokens/s shown. The server
 * only serves the page, the built library (dist/src/ under /lib/) and GPT-2's vocabulary from the
 * gpt-tokenizer package (for folders without tokenizer files, under /gpt-tokenizer/ through the page's
 * import map); the model's files never leave the browser. 127.0.0.1 is a secure context, which
 * navigator.gpu needs.
 */
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { parsePositiveInt } from './parse.js';

const TYPES: Record<string, string> = { '.js': 'text/javascript', '.map': 'application/json', '.html': 'text/html; charset=utf-8' };

/** The page: the controls, and a module that loads the chosen folder and generates with the library. */
const PAGE = `<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>flashattn: GPT-2 in the browser</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script type="importmap">{ "imports": { "gpt-tokenizer/bpeRanks/r50k_base": "/gpt-tokenizer/bpeRanks/r50k_base.js" } }</script>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; margin: 0 0 1rem; }
  label { display: inline-block; margin: 0.25rem 1rem 0.25rem 0; }
  textarea { width: 100%; font: inherit; }
  input[type=number] { width: 5rem; }
  #output { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 6px; padding: 0.75rem; min-height: 6rem; }
  #output .prompt { color: #666; }
  #stats, #status { color: #555; font-size: 14px; }
  #status.error { color: #b00; }
</style>
<h1>GPT-2 with flashattn</h1>
<fieldset>
  <legend>Model</legend>
  <label>Folder (config.json, model.safetensors, tokenizer files): <input type="file" id="folder" webkitdirectory multiple></label>
  <div id="model">No model loaded.</div>
</fieldset>
<fieldset>
  <legend>Generate</legend>
  <textarea id="prompt" rows="3">The meaning of life is</textarea><br>
  <label>New tokens <input type="number" id="tokens" value="50" min="1"></label>
  <label>Temperature <input type="number" id="temperature" value="0" min="0" step="0.1"></label>
  <label>Top-p <input type="number" id="topP" value="1" min="0.01" max="1" step="0.05"></label>
  <label>Seed <input type="number" id="seed" value="0" min="0"></label>
  <label>Backend <select id="backend"><option value="webgpu">webgpu</option><option value="cpu">cpu</option></select></label>
  <label>Storage <select id="dtype"><option value="f32">f32</option><option value="f16">f16</option></select></label>
  <button id="generate" disabled>Generate</button>
</fieldset>
<div id="output"></div>
<p id="stats"></p>
<p id="status"></p>
<script type="module">
import * as lib from '/lib/index.js';
const $ = (id) => document.getElementById(id);
let loaded;
const status = (text, error = false) => { $('status').textContent = text; $('status').className = error ? 'error' : ''; };
const fail = (e) => status(e instanceof Error ? e.message : String(e), true);

try {
  const device = await lib.webgpuDevice();
  if (!device.features.has('shader-f16')) $('dtype').querySelector('[value=f16]').disabled = true;
  status('WebGPU: ' + (device.adapterInfo?.description || device.adapterInfo?.vendor || 'ready'));
} catch (e) {
  $('backend').value = 'cpu';
  $('backend').querySelector('[value=webgpu]').disabled = true;
  status('No WebGPU here (' + (e instanceof Error ? e.message : e) + '): the cpu backend runs instead.');
}

$('folder').addEventListener('change', async (event) => {
  try {
    const files = new Map([...event.target.files].map((f) => [f.name, f]));
    for (const name of ['config.json', 'model.safetensors']) if (!files.has(name)) throw new Error('The folder has no ' + name + '.');
    const text = async (name) => (files.has(name) ? files.get(name).text() : undefined);
    status('Reading the folder…');
    const checkpoint = lib.gpt2Checkpoint({ config: await text('config.json'), safetensors: new Uint8Array(await files.get('model.safetensors').arrayBuffer()) });
    const [tokenizerJson, vocabJson, mergesTxt] = [await text('tokenizer.json'), await text('vocab.json'), await text('merges.txt')];
    const tokenizer = tokenizerJson !== undefined || (vocabJson !== undefined && mergesTxt !== undefined)
      ? lib.tokenizerFromFiles({ tokenizerJson, vocabJson, mergesTxt })
      : await lib.gpt2Tokenizer();
    const c = checkpoint.config;
    loaded = { checkpoint, tokenizer };
    $('model').textContent = c.layers + ' layers, n_embd ' + c.embed + ', ' + c.heads + ' heads, vocabulary ' + c.vocabSize + ', ' + checkpoint.dtype + ' file; tokenizer: ' + tokenizer.source;
    $('generate').disabled = false;
    status('Model read.');
  } catch (e) {
    loaded = undefined;
    $('generate').disabled = true;
    fail(e);
  }
});

$('generate').addEventListener('click', async () => {
  const { checkpoint, tokenizer } = loaded;
  const prompt = $('prompt').value;
  const button = $('generate');
  let model;
  button.disabled = true;
  try {
    if (prompt.trim() === '') throw new Error('The prompt is empty.');
    const ids = tokenizer.encode(prompt);
    const maxNewTokens = Math.max(1, Math.floor(Number($('tokens').value)));
    const maxLength = Math.min(checkpoint.config.positions, ids.length + maxNewTokens);
    if (ids.length >= maxLength) throw new Error('The prompt has ' + ids.length + ' tokens; the model takes fewer than ' + checkpoint.config.positions + '.');
    const memory = new lib.MemoryTracker();
    status('Loading the weights…');
    model = await lib.createGPT2(checkpoint, { backend: $('backend').value, dtype: $('dtype').value, maxLength, memory });
    const out = $('output');
    out.replaceChildren(Object.assign(document.createElement('span'), { className: 'prompt', textContent: prompt }));
    const text = out.appendChild(document.createElement('span'));
    text.id = 'generated';
    const decoder = new TextDecoder();
    status('Generating…');
    $('stats').textContent = '';
    const r = await lib.generate(model, [ids], {
      maxNewTokens, temperature: Number($('temperature').value), topP: Number($('topP').value), seed: Math.floor(Number($('seed').value)),
      onToken: (t) => { text.textContent += decoder.decode(tokenizer.decodeBytes([t]), { stream: true }); },
    });
    text.textContent += decoder.decode();
    const rate = (n, s) => (s > 0 ? (n / s).toFixed(1) : '—');
    $('stats').textContent = 'prefill: ' + r.prefill.tokens + ' tokens, ' + rate(r.prefill.tokens, r.prefill.seconds) + ' tokens/s; decode: ' + r.decode.tokens + ' tokens, ' + rate(r.decode.tokens, r.decode.seconds) + ' tokens/s; peak memory ' + (memory.peak / 2 ** 20).toFixed(1) + ' MiB (' + model.backend + ', ' + model.dtype + ')';
    status('Done.');
  } catch (e) {
    fail(e);
  } finally {
    model?.dispose();
    button.disabled = false;
  }
});
</script>
</html>
`;

/** Where the server's files are: the built library (dist/src/) and gpt-tokenizer's ES modules. */
function roots(): { lib: string; tokenizer?: string } {
  const lib = fileURLToPath(new URL('..', import.meta.url)); // dist/src/
  let tokenizer: string | undefined;
  try {
    // .../gpt-tokenizer/esm/bpeRanks/r50k_base.js → .../gpt-tokenizer/esm/
    tokenizer = dirname(dirname(fileURLToPath(import.meta.resolve('gpt-tokenizer/bpeRanks/r50k_base')))) + sep;
  } catch {
    tokenizer = undefined; // the page then needs tokenizer files in the folder
  }
  return { lib, tokenizer };
}

/** Start the demo's server on host:port (port 0: any free one); resolves once it listens. */
export async function startDemo(options: { host?: string; port?: number } = {}): Promise<{ server: Server; url: string }> {
  const { lib, tokenizer } = roots();
  const mounts: [string, string | undefined][] = [
    ['/lib/', lib],
    ['/gpt-tokenizer/', tokenizer],
  ];
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    if (path === '/') return void res.writeHead(200, { 'content-type': TYPES['.html'], 'cache-control': 'no-store' }).end(PAGE);
    if (path === '/favicon.ico') return void res.writeHead(204).end();
    for (const [prefix, root] of mounts) {
      if (!root || !path.startsWith(prefix)) continue;
      const file = normalize(join(root, path.slice(prefix.length)));
      if (!file.startsWith(root)) break;
      try {
        return void res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(await readFile(file));
      } catch {
        break;
      }
    }
    res.writeHead(404).end();
  });
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(options.port ?? 0, host, resolve));
  return { server, url: `http://${host}:${(server.address() as AddressInfo).port}/` };
}

/** Add `demo` to the program. */
export function addDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('Serve a page on 127.0.0.1 where you pick a GPT-2 folder and generate text in the browser on WebGPU, with tokens/s shown.')
    .option('--port <n>', 'the port (default 8080)', parsePositiveInt, 8080)
    .action(async (o: { port: number }, cmd: Command) => {
      try {
        const { url } = await startDemo({ port: o.port });
        process.stdout.write(`flashattn demo: open ${url} in a browser with WebGPU (Ctrl-C stops the server)\n`);
      } catch (e) {
        cmd.error(`error: --port ${o.port}: ${e instanceof Error ? e.message : String(e)}`, { exitCode: 2 });
      }
    });
}
