/**
 * onnxruntime-web's WebGPU GroupQueryAttention on the decode suite's cases, in Node over the same Dawn
 * (the `webgpu` package) as flashattn: the JavaScript peer beside `flashattn bench --suite decode`.
 * Prints the anchor format (src/cli/anchors.ts): a header {gpu, onnxruntime}, then one JSON line per case
 * {backend: 'gqa', dtype, B, H, Hkv, Nk, D, ms, min_ms, max_ms, GBps, wall_ms} or {..., error}; give the
 * file to the bench with --anchor.
 *
 * What runs: a one-node model (onnx-gqa.mjs) per (H, Hkv, D), its session on the WebGPU execution provider
 * of ort.webgpu.bundle.min.mjs (onnxruntime-web 1.30.0: 1.31.1 hangs in run() here). One call is one
 * decode step as GroupQueryAttention runs it: append one new token's k and v, attend q (B, 1, H·D) to
 * the Nk keys (Nk − 1 cached + the new one; seqlens_k = Nk − 1, total_sequence_length = Nk). The cache is
 * past_key/past_value (B, Hkv, Nk, D), on the GPU, bound again as present_key/present_value, so ORT shares
 * the buffer (past_present_share_buffer: its CopyKVCache writes the new token only) and the output goes to
 * a GPU buffer of ours: nothing crosses to the host but seqlens_k and total_sequence_length (CPU tensors).
 * The cache is filled with flashattn's hashed values (dist/src/cli/decode-inputs.js) on ORT's device.
 * Validation: the first batch row's first key/value head and the last row's last against a float64
 * reference (a plain loop) over the same values, out within 1e-2 of max|ref| as the bench's;
 * a case that fails prints an error line instead of a time. Timing: flashattn's GpuTimer (timestamp
 * queries) on ORT's device around 100 back-to-back run() calls, 5 samples after 300 ms of spin-up; wall_ms
 * is the host's time per call over the same calls.
 *
 * Node 20; run from the project root after `npm run build`:
 *   node bench/peers/onnxruntime-decode.mjs [--small] [--nk 1024,4096] > ort.jsonl
 * ORT_WEB: the folder holding ort.webgpu.bundle.min.mjs and ort-wasm-simd-threaded.asyncify.mjs and .wasm
 * (default bench/peers/node_modules/onnxruntime-web/dist, from `npm ci --prefix bench/peers`;
 * bench/peers/pack.sh packs the three into bench/peers/ort-web.tar.xz for the GPU machine).
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { create, globals } from 'webgpu';
import { gqaModel } from './onnx-gqa.mjs';

const root = resolve(new URL('../..', import.meta.url).pathname);
const dist = (p) => import(pathToFileURL(resolve(root, 'dist', p)).href);
const { DAWN_TOGGLES, describeAdapter, isSoftware } = await dist('src/webgpu/device.js');
const { GpuTimer } = await dist('src/webgpu/timer.js');
const { decodeGrid, kvBytes } = await dist('src/cli/suites.js');
const { fillHashedF16, hashedF16 } = await dist('src/cli/decode-inputs.js');
const { decodeF16 } = await dist('src/index.js');
const { relativeMaxError, median } = await dist('src/cli/bench.js');

const CALLS = 100;
const SAMPLES = 5;
const SPIN_UP_MS = 300;
const TOLERANCE = 1e-2;
const SEED = { q: 11, k: 12, v: 13, kNew: 14, vNew: 15 };

const args = process.argv.slice(2);
const arg = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

Object.assign(globalThis, globals);
const gpu = create(DAWN_TOGGLES);
Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: 'node' }, configurable: true });
// dawn.node rejects the typed-array views ORT passes to writeBuffer: retry with a copy as a Uint8Array.
const writeBuffer = GPUQueue.prototype.writeBuffer;
GPUQueue.prototype.writeBuffer = function (buffer, offset, data, dataOffset, size) {
  try {
    return writeBuffer.call(this, buffer, offset, data, dataOffset, size);
  } catch {
    const view = ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
    const element = ArrayBuffer.isView(data) ? (data.BYTES_PER_ELEMENT ?? 1) : 1;
    const start = (dataOffset ?? 0) * element;
    const length = size === undefined ? view.byteLength - start : size * element;
    return writeBuffer.call(this, buffer, offset, view.slice(start, start + length));
  }
};

const ortDir = resolve(process.env.ORT_WEB ?? resolve(root, 'bench/peers/node_modules/onnxruntime-web/dist'));
const bundle = resolve(ortDir, 'ort.webgpu.bundle.min.mjs');
if (!existsSync(bundle)) {
  console.error(`no ${bundle}: run npm ci --prefix bench/peers, or set ORT_WEB`);
  process.exit(2);
}
const ort = await import(pathToFileURL(bundle).href);
ort.env.wasm.numThreads = 1; // no worker threads: the WebGPU EP runs on this thread
ort.env.logLevel = 'error';

const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
const software = adapter ? isSoftware(adapter) : true;
console.log(JSON.stringify({ gpu: adapter ? describeAdapter(adapter) : 'unknown', onnxruntime: ort.env.versions?.web ?? ort.env.versions?.common ?? 'unknown' }));

const sessions = new Map();
async function session(H, Hkv, D) {
  const key = `${H}/${Hkv}/${D}`;
  if (!sessions.has(key)) sessions.set(key, await ort.InferenceSession.create(gqaModel({ H, Hkv, D, scale: 1 / Math.sqrt(D) }), { executionProviders: ['webgpu'] }));
  return sessions.get(key);
}

async function readBack(device, buffer, bytes) {
  const staging = device.createBuffer({ size: Math.ceil(bytes / 4) * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, 0, staging, 0, staging.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const data = staging.getMappedRange().slice(0, bytes);
  staging.unmap();
  staging.destroy();
  return data;
}

/**
 * softmax(q Kᵀ / √D) V in float64 for one query head: q (D), K and V (Nk, D) as f64 arrays. A plain loop
 * (the library's reference backend takes seconds per head at Nk = 128k, and this peer has a time budget).
 */
function attend(q, K, V, Nk, D) {
  const s = new Float64Array(Nk);
  let m = -Infinity;
  for (let j = 0; j < Nk; j++) {
    let x = 0;
    for (let d = 0; d < D; d++) x += q[d] * K[j * D + d];
    s[j] = x / Math.sqrt(D);
    if (s[j] > m) m = s[j];
  }
  const o = new Float64Array(D);
  let l = 0;
  for (let j = 0; j < Nk; j++) {
    const p = Math.exp(s[j] - m);
    l += p;
    for (let d = 0; d < D; d++) o[d] += p * V[j * D + d];
  }
  return o.map((x) => x / l);
}

/** Our out on the first row's first key/value head and the last row's last (their query heads) against the float64 reference. */
async function validate(c, out, q) {
  const { B, H, Hkv, Nk, D } = c;
  const G = H / Hkv;
  const slices = B === 1 && Hkv === 1 ? [[0, 0]] : [[0, 0], [B - 1, Hkv - 1]];
  const ours = [];
  const refs = [];
  for (const [b, g] of slices) {
    // past (B, Hkv, Nk, D): element ((b·Hkv + g)·Nk + j)·D + d; the new token (B, 1, Hkv·D) is key Nk − 1.
    const kv = (seed, seedNew) => {
      const all = new Float64Array(Nk * D);
      all.set(decodeF16(hashedF16(seed, (Nk - 1) * D, (i) => (b * Hkv + g) * Nk * D + i)));
      all.set(decodeF16(hashedF16(seedNew, D, (d) => (b * Hkv + g) * D + d)), (Nk - 1) * D);
      return all;
    };
    const [K, V] = [kv(SEED.k, SEED.kNew), kv(SEED.v, SEED.vNew)];
    for (let h = g * G; h < (g + 1) * G; h++) {
      refs.push(...attend(q.subarray((b * H + h) * D, (b * H + h + 1) * D), K, V, Nk, D));
      for (let d = 0; d < D; d++) ours.push(out[(b * H + h) * D + d]);
    }
  }
  return relativeMaxError(ours, refs);
}

async function runCase(c, device) {
  const { B, H, Hkv, Nk, D } = c;
  const s = await session(H, Hkv, D);
  const made = [];
  const buffer = (bytes) => {
    const b = device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 16) * 16), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    made.push(b);
    return b;
  };
  const upload = (data) => {
    const b = buffer(data.byteLength);
    const padded = new Uint16Array(b.size / 2);
    padded.set(data);
    device.queue.writeBuffer(b, 0, padded);
    return b;
  };
  try {
    const qHost = hashedF16(SEED.q, B * H * D);
    const past = B * Hkv * Nk * D;
    const pastK = buffer(past * 2);
    const pastV = buffer(past * 2);
    fillHashedF16(device, pastK, SEED.k, past);
    fillHashedF16(device, pastV, SEED.v, past);
    const gt = (b, dims) => ort.Tensor.fromGpuBuffer(b, { dataType: 'float16', dims });
    const pastKT = gt(pastK, [B, Hkv, Nk, D]);
    const pastVT = gt(pastV, [B, Hkv, Nk, D]);
    const outB = buffer(B * H * D * 2);
    const feeds = {
      query: gt(upload(qHost), [B, 1, H * D]),
      key: gt(upload(hashedF16(SEED.kNew, B * Hkv * D)), [B, 1, Hkv * D]),
      value: gt(upload(hashedF16(SEED.vNew, B * Hkv * D)), [B, 1, Hkv * D]),
      past_key: pastKT,
      past_value: pastVT,
      seqlens_k: new ort.Tensor('int32', new Int32Array(B).fill(Nk - 1), [B]),
      total_sequence_length: new ort.Tensor('int32', Int32Array.of(Nk), []),
    };
    const fetches = { output: gt(outB, [B, 1, H * D]), present_key: pastKT, present_value: pastVT };
    const run = () => s.run(feeds, fetches);
    await run();
    const out = decodeF16(new Uint16Array(await readBack(device, outB, B * H * D * 2)));
    const err = await validate(c, out, decodeF16(qHost));
    if (!(err <= TOLERANCE)) return { error: `failed validation: out max|err|/max|ref| ${err.toExponential(2)} (tolerance ${TOLERANCE})` };
    const start = performance.now();
    while (performance.now() - start < SPIN_UP_MS) {
      for (let i = 0; i < 10; i++) await run();
      await device.queue.onSubmittedWorkDone();
    }
    const timer = new GpuTimer(device);
    const ms = [];
    const wall = [];
    for (let r = 0; r < SAMPLES; r++) {
      await timer.start();
      const t0 = performance.now();
      for (let i = 0; i < CALLS; i++) await run();
      await timer.mark();
      await device.queue.onSubmittedWorkDone();
      wall.push((performance.now() - t0) / CALLS);
      ms.push((await timer.finish())[0] / CALLS);
    }
    timer.destroy();
    const m = median(ms);
    const round = (x) => +x.toPrecision(5);
    return { ms: round(m), min_ms: round(Math.min(...ms)), max_ms: round(Math.max(...ms)), GBps: round(kvBytes(c) / (m * 1e6)), wall_ms: round(median(wall)), timer: timer.method, validation: +err.toExponential(2) };
  } finally {
    await device.queue.onSubmittedWorkDone();
    made.forEach((b) => b.destroy());
  }
}

// The first session makes ORT's device; its limits say which cases fit.
await session(...(software ? [8, 2, 64] : [32, 8, 128]));
const device = await ort.env.webgpu.device;
const nks = arg('--nk')?.split(',').map(Number);
const { cases, dropped } = decodeGrid({
  scale: software || args.includes('--small') ? 'small' : 'gpu',
  nks,
  maxTensor: { bytes: Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize), source: "ORT's device's maxStorageBufferBindingSize" },
});
for (const c of dropped) console.error(`not run: B=${c.B} H=${c.H} Hkv=${c.Hkv} Nk=${c.Nk} D=${c.D}: ${c.reason}`);
console.error(`ORT's device: maxStorageBufferBindingSize ${device.limits.maxStorageBufferBindingSize}, features ${[...device.features].join(', ')}`);
// Smallest K and V first: a process that dies on a large case has printed the others.
cases.sort((a, b) => kvBytes(a) - kvBytes(b));
for (const c of cases) {
  console.error(`B=${c.B} H=${c.H} Hkv=${c.Hkv} Nk=${c.Nk} D=${c.D} ...`);
  let r;
  try {
    r = await runCase(c, device);
  } catch (e) {
    r = { error: String(e instanceof Error ? e.message : e).split('\n')[0].slice(0, 160) };
  }
  console.log(JSON.stringify({ backend: 'gqa', dtype: 'float16', B: c.B, H: c.H, Hkv: c.Hkv, Nk: c.Nk, D: c.D, ...r }));
}
process.exit(0);
