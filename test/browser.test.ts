// The library in a browser: Debian's Chromium, headless, driven by playwright-core, loads dist/src/index.js
// as an ES module from a static server on 127.0.0.1 (a secure context, so navigator.gpu exists) and runs
// forward and backward there, flash and standard, on the webgpu backend (SwiftShader, f32), the cpu
// backend (inline: no worker threads in a page) and the float64 reference. The numbers come back to Node
// and are held to the one error rule of util.ts. Without Chromium or playwright-core the test is skipped
// with the reason; with FLASHATTN_REQUIRE_BROWSER=1 (CI) it fails instead.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import type { Browser } from 'playwright-core';
import { checkForward } from '../src/problem.js';
import { standardForwardBackward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { CHROMIUM, FLAGS, browserSkipReason } from './browser.js';
import { assertWithinRule, inputs, maxError, type Case } from './util.js';

/** Tails in every direction (no size a multiple of a tile), causal with Nq < Nk (bottom-right aligned), two heads. */
const c: Case = { B: 1, H: 2, Hkv: 2, Nq: 37, Nk: 53, D: 24 };
const causal = true;
/**
 * About 15 s here, nearly all of it SwiftShader compiling the flash kernels on first use (backward ~10 s,
 * forward ~3 s; the calls after that take tens of ms): the limits are several times that, for a loaded machine.
 */
const PAGE_MS = 90_000;

const dist = fileURLToPath(new URL('..', import.meta.url)); // dist/ (with its trailing /), which holds src/ and test/ built

const skip = await browserSkipReason('browser test');
if (skip && process.env.FLASHATTN_REQUIRE_BROWSER === '1') throw new Error(`FLASHATTN_REQUIRE_BROWSER=1 but ${skip}`);

const TYPES: Record<string, string> = { '.js': 'text/javascript', '.map': 'application/json', '.html': 'text/html' };
const PAGE = '<!doctype html><meta charset="utf-8"><title>flashattn in a browser</title>';

/** Serves PAGE at / and dist/ under /dist/, nothing else; records what it could not serve, for the error message. */
async function serve(missing: string[]): Promise<{ server: Server; origin: string }> {
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    if (path === '/') return void res.writeHead(200, { 'content-type': TYPES['.html'] }).end(PAGE);
    if (path === '/favicon.ico') return void res.writeHead(204).end();
    const file = normalize(join(dist, path.replace(/^\/dist\//, '/')));
    try {
      if (!path.startsWith('/dist/') || !file.startsWith(dist)) throw new Error('outside dist/');
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(body);
    } catch {
      missing.push(path);
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

interface Run {
  out: number[];
  lse: number[];
  dq: number[];
  dk: number[];
  dv: number[];
  backend: string[];
  ms: number;
}

interface PageArgs {
  index: string;
  device: string;
  shapes: { q: number[]; kv: number[] };
  data: { q: number[]; k: number[]; v: number[]; dout: number[] };
  causal: boolean;
}

/**
 * Runs in the page (serialised by playwright, so it refers to nothing outside itself): imports the library
 * from the server, reports the device the library got, and runs each backend and algorithm.
 */
async function inPage(a: PageArgs) {
  const lib = (await import(a.index)) as typeof import('../src/index.js');
  const dev = (await import(a.device)) as typeof import('../src/webgpu/device.js');
  const entry = await dev.gpuEntry();
  const status = await dev.webgpuStatus();
  if (!status.ok) throw new Error(`no WebGPU in the page: ${status.reason}`);
  const info = status.gpu.device.adapterInfo as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const make = (dtype: 'f32' | 'f64') => {
    const t = (x: number[], shape: number[]) => lib.tensor(dtype === 'f32' ? Float32Array.from(x) : Float64Array.from(x), shape, dtype);
    return { q: t(a.data.q, a.shapes.q), k: t(a.data.k, a.shapes.kv), v: t(a.data.v, a.shapes.kv), dout: t(a.data.dout, a.shapes.q) };
  };
  const run = async (backend: 'webgpu' | 'cpu' | 'reference', algorithm: 'flash' | 'standard') => {
    const { q, k, v, dout } = make(backend === 'reference' ? 'f64' : 'f32'); // the oracle: the f32 inputs, exactly, in f64
    const options = { causal: a.causal, backend, algorithm };
    const t0 = performance.now();
    const f = await lib.forward(q, k, v, options);
    const g = await lib.backward(dout, q, k, v, f.out, f.lse, options);
    const ms = performance.now() - t0;
    const list = (t: { data: ArrayLike<number> }) => Array.from(t.data);
    return { out: list(f.out), lse: list(f.lse), dq: list(g.dq), dk: list(g.dk), dv: list(g.dv), backend: [f.backend, g.backend], ms };
  };
  return {
    source: entry?.source,
    description: status.gpu.description,
    software: status.gpu.software,
    fallback: info.isFallbackAdapter,
    f16: status.gpu.f16,
    reference: await run('reference', 'standard'),
    webgpu: { flash: await run('webgpu', 'flash'), standard: await run('webgpu', 'standard') },
    cpu: { flash: await run('cpu', 'flash'), standard: await run('cpu', 'standard') },
  };
}

/** `promise`, or an error saying what took longer than `ms`. */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

test(skip ?? `Chromium: forward and backward through navigator.gpu (SwiftShader), the cpu backend and the reference, B=${c.B} H=${c.H} Nq=${c.Nq} Nk=${c.Nk} D=${c.D} causal`, { skip, timeout: PAGE_MS + 30_000 }, async (t) => {
  const { chromium } = await import('playwright-core');
  const { q, k, v, dout } = inputs(c, 'f32', 'BNHD');
  const missing: string[] = [];
  const pageErrors: string[] = [];
  const { server, origin } = await serve(missing);
  let browser: Browser | undefined;
  let got: Awaited<ReturnType<typeof inPage>>;
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30_000 });
    const page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && pageErrors.push(m.text()));
    await page.goto(`${origin}/`, { timeout: 10_000 });
    const args: PageArgs = {
      index: '/dist/src/index.js',
      device: '/dist/src/webgpu/device.js',
      shapes: { q: [...q.shape], kv: [...k.shape] },
      data: { q: Array.from(q.data), k: Array.from(k.data), v: Array.from(v.data), dout: Array.from(dout.data) },
      causal,
    };
    got = await within(PAGE_MS, 'the page', page.evaluate(inPage, args)).catch((e: Error) => {
      const more = [missing.length ? `not served: ${missing.join(', ')}` : '', pageErrors.length ? `page errors: ${pageErrors.join('; ')}` : ''];
      throw new Error([e.message, ...more].filter((s) => s).join('\n'));
    });
  } finally {
    await browser?.close().catch(() => undefined);
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  t.diagnostic(`${got.source}: ${got.description} (software ${got.software}, isFallbackAdapter ${got.fallback}, shader-f16 ${got.f16})`);
  const ms = (r: Run) => r.ms.toFixed(0);
  t.diagnostic(
    `forward+backward in the page, ms: webgpu flash ${ms(got.webgpu.flash)}, standard ${ms(got.webgpu.standard)}; ` +
      `cpu flash ${ms(got.cpu.flash)}, standard ${ms(got.cpu.standard)}; reference ${ms(got.reference)}`,
  );

  assert.equal(got.source, 'navigator.gpu', 'the library took the browser’s WebGPU');
  assert.ok(got.software && got.fallback, `the adapter is SwiftShader, the software one: ${got.description}`);
  for (const backend of ['webgpu', 'cpu'] as const) {
    for (const r of [got[backend].flash, got[backend].standard]) assert.deepEqual(r.backend, [backend, backend], 'the backend that ran forward and backward');
  }
  assert.deepEqual(got.reference.backend, ['reference', 'reference']);

  // The page's oracle is the float64 reference on the f32 inputs in f64, as test/spec.ts builds it; it
  // must agree with the same oracle computed here in Node.
  const p = checkForward(q, k, v, { causal });
  const [Q, K, V, dO] = [toF64(q), toF64(k), toF64(v), toF64(dout)];
  const node = standardForwardBackward(p, dO, Q, K, V);
  const oracle = {} as Record<keyof typeof node, Float64Array>;
  for (const x of ['out', 'lse', 'dq', 'dk', 'dv'] as const) {
    oracle[x] = Float64Array.from(got.reference[x]);
    assert.ok(maxError(oracle[x], node[x]) <= 1e-12, `reference ${x} in the page agrees with Node's: ${maxError(oracle[x], node[x])}`);
  }

  for (const backend of ['webgpu', 'cpu'] as const) {
    const { flash, standard } = got[backend];
    const err = (r: Run, x: keyof Run & keyof typeof node) => maxError(Float64Array.from(r[x]), oracle[x]);
    const label = `browser ${backend} f32 causal Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`;
    assertWithinRule(`${label} out`, err(flash, 'out'), err(standard, 'out'), 2);
    assertWithinRule(`${label} lse`, err(flash, 'lse'), err(standard, 'lse'), 2);
    for (const g of ['dq', 'dk', 'dv'] as const) assertWithinRule(`${label} ${g}`, err(flash, g), err(standard, g), 3);
  }
});
