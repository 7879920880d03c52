/**
 * Lab notebook: a prompt after cached tokens (chunked prefill) on a GPU, f16, causal, GPUBuffer tensors.
 * The KV cache runs such a prompt on forward()'s prefill kernels over the slots' keys as the store copies
 * them out (src/kvcache.ts); the alternative is the decode schedule, whose workgroups each read all the
 * keys for a few query rows (what a cache built without its prefill path runs: every call there is a
 * decode step). For each case, both caches hold the same prefix; one call appends the chunk and attends.
 *
 * Checked before it is timed: one small case against the float64 reference (the correctness rule, beside
 * the webgpu standard attention), and every case's two outputs against forward() over each slot's whole
 * keys on the webgpu backend (the prefill kernels that the spec grid validates): the chunked path must
 * give forward()'s bits where the slots are of one length (no mask), and the decode schedule within the
 * rule's tolerance of forward().
 *
 * Timed: GPU time of the one call (timestamp queries around it), and its wall time to the queue's end,
 * best and median of REPS, each on a cache refilled to the prefix.
 * Run: node dist/bench/variants/chunked-prefill.js [--cases 0,2]
 */
import { KVCache, cacheGeometry } from '../../src/kvcache.js';
import { createKVCache, forward, type GpuTensor, type Tensor } from '../../src/index.js';
import { MemoryTracker } from '../../src/memory.js';
import { toF64 } from '../../src/tensor.js';
import { defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { WebgpuCacheStore } from '../../src/webgpu/cache.js';
import { GpuTimer } from '../../src/webgpu/timer.js';
import { gpuTensor, maxErr, readF16, tiled } from './util.js';

interface Case {
  /** Tokens each slot holds before the call. */
  prefix: number[];
  /** New tokens in the call (each a query). */
  n: number;
  H: number;
  Hkv: number;
  D: number;
  pageSize?: number;
}

const CASES: Case[] = [
  { prefix: [192, 130], n: 64, H: 8, Hkv: 2, D: 64, pageSize: 16 }, // the one checked against the float64 reference
  { prefix: [3584], n: 512, H: 32, Hkv: 8, D: 128, pageSize: 16 },
  { prefix: [3584], n: 512, H: 32, Hkv: 8, D: 128 },
  { prefix: [14336], n: 2048, H: 32, Hkv: 8, D: 128, pageSize: 16 },
  { prefix: [4096, 3072, 2048, 1024], n: 512, H: 32, Hkv: 8, D: 128, pageSize: 16 },
  { prefix: [30720], n: 2048, H: 32, Hkv: 8, D: 64, pageSize: 16 },
];
const REPS = 5;
const casesArg = process.argv.indexOf('--cases');
const only = casesArg > 0 ? new Set(process.argv[casesArg + 1].split(',').map(Number)) : undefined;

/** Rows of slot b of a (B, n, heads, D) f16 array. */
function slotRows(x: Uint16Array, b: number, n: number, heads: number, D: number): Uint16Array {
  return x.subarray(b * n * heads * D, (b + 1) * n * heads * D);
}

/** A slot's whole keys (or values): its prefix then its chunk, (1, L, Hkv, D). */
function joined(prefix: Uint16Array, chunk: Uint16Array, length: number, n: number, Hkv: number, D: number): Tensor {
  const data = new Uint16Array((length + n) * Hkv * D);
  data.set(prefix.subarray(0, length * Hkv * D));
  data.set(chunk, length * Hkv * D);
  return { data, dtype: 'f16', shape: [1, length + n, Hkv, D] };
}

async function run(gpu: Gpu, c: Case, index: number): Promise<void> {
  const { prefix, n, H, Hkv, D, pageSize } = c;
  const B = prefix.length;
  const longest = Math.max(...prefix);
  const maxLength = longest + n;
  console.log(`\n## case ${index}: B=${B} prefix ${prefix.join('/')} + ${n} new, H=${H} Hkv=${Hkv} D=${D}, ${pageSize ? `paged (${pageSize} a page)` : 'contiguous'}`);
  // The prefix of slot b is the first prefix[b] rows of its (longest, Hkv, D) block.
  const kp = tiled(B * longest * Hkv * D, 11 + index);
  const vp = tiled(B * longest * Hkv * D, 12 + index);
  const qh = tiled(B * n * H * D, 13 + index);
  const kh = tiled(B * n * Hkv * D, 14 + index);
  const vh = tiled(B * n * Hkv * D, 15 + index);
  const q = gpuTensor(gpu, qh, [B, n, H, D]);
  const k = gpuTensor(gpu, kh, [B, n, Hkv, D]);
  const v = gpuTensor(gpu, vh, [B, n, Hkv, D]);
  const prefixTensors = prefix.map((len, b) => ({
    k: gpuTensor(gpu, slotRows(kp, b, longest, Hkv, D).slice(0, len * Hkv * D), [1, len, Hkv, D]),
    v: gpuTensor(gpu, slotRows(vp, b, longest, Hkv, D).slice(0, len * Hkv * D), [1, len, Hkv, D]),
  }));
  const config = { batch: B, kvHeads: Hkv, headDim: D, maxLength, dtype: 'f16' as const, backend: 'webgpu' as const, pageSize };
  const memory = new MemoryTracker();
  const caches = {
    chunked: await createKVCache({ ...config, device: gpu.device }),
    'decode schedule': new KVCache(cacheGeometry(config), new WebgpuCacheStore(cacheGeometry(config), gpu, memory), memory),
  };
  const fill = async (cache: KVCache) => {
    cache.reset();
    for (const [b, t] of prefixTensors.entries()) await cache.append(t.k, t.v, { sequences: [b] });
    await gpu.device.queue.onSubmittedWorkDone();
  };

  // forward() over each slot's whole keys: the validated prefill kernels, and the float64 reference on case 0.
  const want: Float64Array[] = [];
  const refs: { out: Float64Array; std: number }[] = [];
  for (let b = 0; b < B; b++) {
    const qb: Tensor = { data: slotRows(qh, b, n, H, D).slice(), dtype: 'f16', shape: [1, n, H, D] };
    const kb = joined(slotRows(kp, b, longest, Hkv, D), slotRows(kh, b, n, Hkv, D), prefix[b], n, Hkv, D);
    const vb = joined(slotRows(vp, b, longest, Hkv, D), slotRows(vh, b, n, Hkv, D), prefix[b], n, Hkv, D);
    const f = await forward(qb, kb, vb, { backend: 'webgpu', device: gpu.device, causal: true });
    want.push(toF64(f.out as Tensor));
    if (index === 0) {
      const ref = await forward(qb, kb, vb, { backend: 'reference', causal: true });
      const std = await forward(qb, kb, vb, { backend: 'webgpu', device: gpu.device, causal: true, algorithm: 'standard' });
      const e = maxErr(f.out as Tensor, ref.out);
      const s = maxErr(std.out as Tensor, ref.out);
      console.log(`slot ${b}: forward() against the float64 reference: out err ${e.toExponential(2)} (std ${s.toExponential(2)}) ${e <= 2 * s + 1e-6 ? 'ok' : 'FAILS THE RULE'}`);
      refs.push({ out: toF64(ref.out), std: s });
    }
  }
  // Case 0: each cache's call, once, against the float64 reference slot by slot.
  for (const [name, cache] of refs.length > 0 ? Object.entries(caches) : []) {
    await fill(cache);
    const r = await cache.forward(q, k, v, { causal: true });
    const got = await readF16(gpu, r.out as GpuTensor, B * n * H * D);
    refs.forEach(({ out, std }, b) => {
      const e = out.reduce((m, x, i) => Math.max(m, Math.abs(got[b * n * H * D + i] - x)), 0);
      console.log(`slot ${b}: ${name} against the float64 reference: out err ${e.toExponential(2)} ${e <= 2 * std + 1e-6 ? 'ok' : 'FAILS THE RULE'}`);
    });
    (r.out as GpuTensor).data.destroy();
    (r.lse as GpuTensor).data.destroy();
  }

  const timer = new GpuTimer(gpu.device);
  for (const [name, cache] of Object.entries(caches)) {
    const gpuMs: number[] = [];
    const wallMs: number[] = [];
    let check = '';
    for (let rep = 0; rep < REPS + 1; rep++) {
      await fill(cache);
      await timer.start();
      const t0 = performance.now();
      const r = await cache.forward(q, k, v, { causal: true });
      await timer.mark();
      await gpu.device.queue.onSubmittedWorkDone();
      const wall = performance.now() - t0;
      const [g] = await timer.finish();
      if (rep === 0) {
        // The first call (pipelines compiled) is the checked one, not timed.
        const got = await readF16(gpu, r.out as GpuTensor, B * n * H * D);
        const diffs = want.map((w, b) => w.reduce((m, x, i) => Math.max(m, Math.abs(x - got[b * n * H * D + i])), 0));
        const sameBits = diffs.every((d) => d === 0);
        check = `max |out − forward()| ${Math.max(...diffs).toExponential(2)}${sameBits ? ' (same bits)' : ''}`;
      } else {
        gpuMs.push(g);
        wallMs.push(wall);
      }
      (r.out as GpuTensor).data.destroy();
      (r.lse as GpuTensor).data.destroy();
    }
    const median = (x: number[]) => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)];
    console.log(
      `${name.padEnd(16)} GPU ${Math.min(...gpuMs).toFixed(3)} ms (median ${median(gpuMs).toFixed(3)})  wall ${Math.min(...wallMs).toFixed(3)} ms (median ${median(wallMs).toFixed(3)})  ${check}`,
    );
    cache.dispose();
  }
  for (const t of [q, k, v, ...prefixTensors.flatMap((p) => [p.k, p.v])]) t.data.destroy();
}

const gpu = await defaultGpu();
console.log(`# chunked prefill: ${gpu.description}; ${new Date().toISOString()}; node ${process.version}`);
for (const [index, c] of CASES.entries()) if (!only || only.has(index)) await run(gpu, c, index);
process.exit(0);
