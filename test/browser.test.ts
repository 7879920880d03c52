// The library in a browser: Debian's Chromium, headless, driven by playwright-core, loads dist/src/index.js
// as an ES module from a static server on 127.0.0.1 (a secure context, so navigator.gpu exists) and runs
// forward and backward there, flash and standard, on the webgpu backend (SwiftShader, f32), the cpu
// backend and the float64 reference. The numbers come back to Node and are held to the one error rule of
// util.ts. The first page is not cross-origin isolated: the cpu backend runs on the page's own thread and
// cpuThreads() says so. The second is (the server sends COOP and COEP): the cpu backend runs on Web
// Workers, its WebAssembly forward included. A third, isolated but without the worker script, shows the
// fallback: one thread, and the reason. Without Chromium or playwright-core the tests are skipped
// with the reason; with FLASHATTN_REQUIRE_BROWSER=1 (CI) they fail instead.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { checkForward } from '../src/problem.js';
import { standardForwardBackward } from '../src/reference/index.js';
import { toF64, type Tensor } from '../src/tensor.js';
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

/** The headers that make a page cross-origin isolated (crossOriginIsolated: SharedArrayBuffer, and so the cpu backend's Web Workers). */
const ISOLATION = { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };

/** How the server serves the page: cross-origin isolated or not, and whether it withholds the cpu backend's worker script. */
type Serving = 'plain' | 'isolated' | 'isolated, no worker.js';

/**
 * Serves PAGE at / and dist/ under /dist/, nothing else, with ISOLATION's headers where the page is to be
 * isolated; records what it could not serve, for the error message.
 */
async function serve(missing: string[], serving: Serving): Promise<{ server: Server; origin: string }> {
  const headers = serving === 'plain' ? {} : ISOLATION;
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    if (path === '/') return void res.writeHead(200, { 'content-type': TYPES['.html'], ...headers }).end(PAGE);
    if (path === '/favicon.ico') return void res.writeHead(204).end();
    const file = normalize(join(dist, path.replace(/^\/dist\//, '/')));
    try {
      if (!path.startsWith('/dist/') || !file.startsWith(dist)) throw new Error('outside dist/');
      if (serving === 'isolated, no worker.js' && path.endsWith('/cpu/worker.js')) throw new Error('withheld');
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', ...headers }).end(body);
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
  /** The device module, to run the webgpu backend too; without it, the cpu backend and the reference alone. */
  device?: string;
  wasm: string;
  shapes: { q: number[]; kv: number[] };
  data: { q: number[]; k: number[]; v: number[]; dout: number[] };
  causal: boolean;
}

/**
 * Runs in the page (serialised by playwright, so it refers to nothing outside itself): imports the library
 * from the server, reports the device the library got and the cpu backend's threads, and runs each backend
 * and algorithm; then the cpu flash forward once more on the JavaScript kernel (setCpuKernels('js'), which
 * a job carries to the workers), so that Node can tell that the default run took the WebAssembly one.
 */
async function inPage(a: PageArgs) {
  const lib = (await import(a.index)) as typeof import('../src/index.js');
  const make = (dtype: 'f32' | 'f64') => {
    const t = (x: number[], shape: number[]) => lib.tensor(dtype === 'f32' ? Float32Array.from(x) : Float64Array.from(x), shape, dtype);
    return { q: t(a.data.q, a.shapes.q), k: t(a.data.k, a.shapes.kv), v: t(a.data.v, a.shapes.kv), dout: t(a.data.dout, a.shapes.q) };
  };
  const list = (t: { data: ArrayLike<number> }) => Array.from(t.data);
  const run = async (backend: 'webgpu' | 'cpu' | 'reference', algorithm: 'flash' | 'standard') => {
    const { q, k, v, dout } = make(backend === 'reference' ? 'f64' : 'f32'); // the oracle: the f32 inputs, exactly, in f64
    const options = { causal: a.causal, backend, algorithm };
    const t0 = performance.now();
    const f = await lib.forward(q, k, v, options);
    const g = await lib.backward(dout, q, k, v, f.out, f.lse, options);
    const ms = performance.now() - t0;
    return { out: list(f.out), lse: list(f.lse), dq: list(g.dq), dk: list(g.dk), dv: list(g.dv), backend: [f.backend, g.backend], ms };
  };
  let webgpu;
  if (a.device) {
    const dev = (await import(a.device)) as typeof import('../src/webgpu/device.js');
    const entry = await dev.gpuEntry();
    const status = await dev.webgpuStatus();
    if (!status.ok) throw new Error(`no WebGPU in the page: ${status.reason}`);
    const info = status.gpu.device.adapterInfo as GPUAdapterInfo & { isFallbackAdapter?: boolean };
    webgpu = {
      source: entry?.source,
      description: status.gpu.description,
      software: status.gpu.software,
      fallback: info.isFallbackAdapter,
      f16: status.gpu.f16,
      flash: await run('webgpu', 'flash'),
      standard: await run('webgpu', 'standard'),
    };
  }
  const threads = await lib.cpuThreads();
  const cpu = { flash: await run('cpu', 'flash'), standard: await run('cpu', 'standard') };
  const wasm = (await import(a.wasm)) as typeof import('../src/cpu/wasm/index.js');
  wasm.setCpuKernels('js');
  const { q, k, v } = make('f32');
  const jsOut = list((await lib.forward(q, k, v, { causal: a.causal, backend: 'cpu' })).out);
  wasm.setCpuKernels('wasm');
  return {
    webgpu,
    reference: await run('reference', 'standard'),
    cpu,
    jsOut,
    isolated: (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated,
    threads,
  };
}

/** `promise`, or an error saying what took longer than `ms`. */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The page's float64 oracle, after checking that it agrees with the same oracle computed here in Node (the
 * float64 reference on the f32 inputs in f64, as test/spec.ts builds it).
 */
function pageOracle(got: { reference: Run }, q: Tensor, k: Tensor, v: Tensor, dout: Tensor): Record<'out' | 'lse' | 'dq' | 'dk' | 'dv', Float64Array> {
  const p = checkForward(q, k, v, { causal });
  const [Q, K, V, dO] = [toF64(q), toF64(k), toF64(v), toF64(dout)];
  const node = standardForwardBackward(p, dO, Q, K, V);
  const oracle = {} as Record<'out' | 'lse' | 'dq' | 'dk' | 'dv', Float64Array>;
  for (const x of ['out', 'lse', 'dq', 'dk', 'dv'] as const) {
    oracle[x] = Float64Array.from(got.reference[x]);
    assert.ok(maxError(oracle[x], node[x]) <= 1e-12, `reference ${x} in the page agrees with Node's: ${maxError(oracle[x], node[x])}`);
  }
  return oracle;
}

/** Flash against the oracle under the 2×/3× rule of standard attention's error, both run on `backend` in the page. */
function assertBackend(label: string, r: { flash: Run; standard: Run }, oracle: Record<'out' | 'lse' | 'dq' | 'dk' | 'dv', Float64Array>): void {
  const err = (x: Run, y: 'out' | 'lse' | 'dq' | 'dk' | 'dv') => maxError(Float64Array.from(x[y]), oracle[y]);
  assertWithinRule(`${label} out`, err(r.flash, 'out'), err(r.standard, 'out'), 2);
  assertWithinRule(`${label} lse`, err(r.flash, 'lse'), err(r.standard, 'lse'), 2);
  for (const g of ['dq', 'dk', 'dv'] as const) assertWithinRule(`${label} ${g}`, err(r.flash, g), err(r.standard, g), 3);
}

/** A page of `origin` in a fresh Chromium, handed to `use`; page errors and files not served go into the error of a failure. */
async function withPage<T>(serving: Serving, use: (page: Page, origin: string) => Promise<T>): Promise<T> {
  const { chromium } = await import('playwright-core');
  const missing: string[] = [];
  const pageErrors: string[] = [];
  const { server, origin } = await serve(missing, serving);
  let browser: Browser | undefined;
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30_000 });
    const page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && pageErrors.push(m.text()));
    await page.goto(`${origin}/`, { timeout: 10_000 });
    return await use(page, origin).catch((e: Error) => {
      const more = [missing.length ? `not served: ${missing.join(', ')}` : '', pageErrors.length ? `page errors: ${pageErrors.join('; ')}` : ''];
      throw new Error([e.message, ...more].filter((s) => s).join('\n'));
    });
  } finally {
    await browser?.close().catch(() => undefined);
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

/** The page's arguments: the library, the inputs of case `x`, and the device module where the webgpu backend is to run too. */
function pageArgs(x: Case, seed: number, webgpu: boolean) {
  const tensors = inputs(x, 'f32', 'BNHD', seed);
  const { q, k, v, dout } = tensors;
  const args: PageArgs = {
    index: '/dist/src/index.js',
    ...(webgpu && { device: '/dist/src/webgpu/device.js' }),
    wasm: '/dist/src/cpu/wasm/index.js',
    shapes: { q: [...q.shape], kv: [...k.shape] },
    data: { q: Array.from(q.data), k: Array.from(k.data), v: Array.from(v.data), dout: Array.from(dout.data) },
    causal,
  };
  return { tensors, args };
}

const ms = (r: Run) => r.ms.toFixed(0);

test(skip ?? `Chromium: forward and backward through navigator.gpu (SwiftShader), the cpu backend and the reference, B=${c.B} H=${c.H} Nq=${c.Nq} Nk=${c.Nk} D=${c.D} causal`, { skip, timeout: PAGE_MS + 30_000 }, async (t) => {
  const { tensors: x, args } = pageArgs(c, 1, true);
  const got = await withPage('plain', (page) => within(PAGE_MS, 'the page', page.evaluate(inPage, args)));
  const gpu = got.webgpu;
  assert.ok(gpu, 'the page ran the webgpu backend');
  t.diagnostic(`${gpu.source}: ${gpu.description} (software ${gpu.software}, isFallbackAdapter ${gpu.fallback}, shader-f16 ${gpu.f16})`);
  t.diagnostic(
    `forward+backward in the page, ms: webgpu flash ${ms(gpu.flash)}, standard ${ms(gpu.standard)}; ` +
      `cpu flash ${ms(got.cpu.flash)}, standard ${ms(got.cpu.standard)}; reference ${ms(got.reference)}`,
  );

  assert.equal(gpu.source, 'navigator.gpu', 'the library took the browser’s WebGPU');
  assert.ok(gpu.software && gpu.fallback, `the adapter is SwiftShader, the software one: ${gpu.description}`);
  for (const [backend, r] of [['webgpu', gpu], ['cpu', got.cpu]] as const) {
    for (const run of [r.flash, r.standard]) assert.deepEqual(run.backend, [backend, backend], 'the backend that ran forward and backward');
  }
  assert.deepEqual(got.reference.backend, ['reference', 'reference']);
  t.diagnostic(`cpu threads without cross-origin isolation: ${JSON.stringify(got.threads)}`);
  assert.equal(got.isolated, false, 'the page is not cross-origin isolated');
  assert.equal(got.threads.threads, 1, 'the cpu backend runs on the page’s thread');
  assert.equal(got.threads.workers, 'none');
  assert.match(got.threads.reason ?? '', /not cross-origin isolated/, 'and says why');

  const oracle = pageOracle(got, x.q, x.k, x.v, x.dout);
  assertBackend(`browser webgpu f32 causal Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`, gpu, oracle);
  assertBackend(`browser cpu f32 causal Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`, got.cpu, oracle);
});

/**
 * Large enough that the cpu backend splits it over its workers (B·H·Nq·Nk·D = 4.8M multiply-adds, past
 * pool.ts's INLINE_WORK), with tails in every direction (tiles of 128 rows at D = 40).
 */
const w: Case = { B: 1, H: 2, Hkv: 2, Nq: 200, Nk: 300, D: 40 };

test(skip ?? `Chromium, cross-origin isolated: the cpu backend on Web Workers (WebAssembly forward), B=${w.B} H=${w.H} Nq=${w.Nq} Nk=${w.Nk} D=${w.D} causal`, { skip, timeout: PAGE_MS + 30_000 }, async (t) => {
  const { tensors: x, args } = pageArgs(w, 5, false);
  const got = await withPage('isolated', (page) => within(PAGE_MS, 'the isolated page', page.evaluate(inPage, args)));
  t.diagnostic(`cpu threads in the isolated page: ${JSON.stringify(got.threads)}; forward+backward ms: flash ${ms(got.cpu.flash)}, standard ${ms(got.cpu.standard)}`);
  assert.equal(got.isolated, true, 'the page is cross-origin isolated');
  assert.equal(got.threads.workers, 'web-workers');
  assert.ok(got.threads.threads > 1, `the cpu backend has more than one thread: ${got.threads.threads}`);
  assert.notEqual(got.threads.wasm, 'none', 'the workers have WebAssembly SIMD');
  for (const r of [got.cpu.flash, got.cpu.standard]) assert.deepEqual(r.backend, ['cpu', 'cpu']);

  const oracle = pageOracle(got, x.q, x.k, x.v, x.dout);
  const label = `browser cpu on Web Workers f32 causal Nq=${w.Nq} Nk=${w.Nk} D=${w.D}`;
  assertBackend(label, got.cpu, oracle);
  // The job ran on the workers alone (the page's thread runs no task of a pool's job), so an out that is
  // not the JavaScript kernel's is the WebAssembly kernel's, run in the workers: where WebAssembly could
  // not run there, they would have fallen back to the JavaScript kernel, bit for bit.
  assert.ok(
    got.cpu.flash.out.some((y, i) => y !== got.jsOut[i]),
    'the flash forward in the workers is the WebAssembly kernel, not the JavaScript one',
  );
  const err = (y: number[]) => maxError(Float64Array.from(y), oracle.out);
  assertWithinRule(`${label} out (JavaScript kernel)`, err(got.jsOut), err(got.cpu.standard.out), 2);
});

test(skip ?? 'Chromium, cross-origin isolated, worker.js not served: the cpu backend says its Web Workers did not start and runs on the page’s thread', { skip, timeout: PAGE_MS + 30_000 }, async (t) => {
  const { tensors: x, args } = pageArgs(c, 1, false);
  const got = await withPage('isolated, no worker.js', (page) => within(PAGE_MS, 'the page without worker.js', page.evaluate(inPage, args)));
  t.diagnostic(`cpu threads without worker.js: ${JSON.stringify(got.threads)}`);
  assert.equal(got.isolated, true, 'the page is cross-origin isolated');
  assert.equal(got.threads.threads, 1);
  assert.equal(got.threads.workers, 'none');
  assert.match(got.threads.reason ?? '', /Web Workers did not start/);
  assertBackend(`browser cpu without workers f32 causal Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`, got.cpu, pageOracle(got, x.q, x.k, x.v, x.dout));
});
