/**
 * Lab notebook: the cpu backend's decode step (src/cpu/decode.ts), Nq new queries against Nk cached keys,
 * in GB/s of K and V read. For each case, after checking every path's out and lse against the float64
 * reference (max |error| / max |reference| ≤ 1e-2 for f16, 1e-5 for f32):
 *   forward decode    forward() on the decode kernel (K and V typed arrays of the caller: on this thread)
 *   forward tiled     forward() on the tiled flash kernel (cpu/flash.ts: q, k, v staged as f32 first)
 *   forward shared    the decode kernel with K and V on a SharedArrayBuffer (read by every worker)
 *   cache, paged(16)  a contiguous and a paged KV cache (16 tokens a page), cache.forward(q)
 * and with --sweep, the kernel alone on shared K and V over its split count and key tile, and the cost of
 * filling a fresh SharedArrayBuffer (what a shared copy of K and V would cost per call).
 * Times: the fastest of REPEATS samples of back-to-back calls, with the median beside it; on Linux a
 * sample counts only if other processes took under 5 % of the machine's CPU time meanwhile (/proc/stat
 * against this process's own CPU time), since a 2-core machine shared with other work halves the pool.
 * Each path runs on the WebAssembly decode kernel (src/cpu/wasm/decode.ts) and on decode.ts's JavaScript
 * one (setCpuKernels, --kernels wasm,js); with --cpu, times are this process's CPU time per call (every
 * thread) with wall beside, taken whatever else runs, and a memcpy of K and V gives the ceiling.
 * Run: node dist/bench/variants/cpu-decode.js [--nk 4096,32768] [--nq 1] [--dtype f32,f16] [--sweep]
 *        [--shape B,H,Hkv,D (1,8,2,64)] [--kernels wasm,js] [--paths 'forward decode,cache,…'] [--cpu]
 *
 * Measured 2026-12-04 on the 2-core AMD EPYC VM (Node 20), B = 1, H = 8, Hkv = 2, D = 64, Nq = 1, GB/s
 * of K and V (ms per call); before: main at b6f9fd5 (the cache gathered each slot's K and V and ran the
 * tiled kernel per row):
 *                    f32 Nk=4096     f32 Nk=32768    f16 Nk=4096     f16 Nk=32768
 *   before forward   0.61 (6.8)      0.64 (52.7)     0.27 (7.8)      0.28 (60.6)
 *   before cache     0.54 (7.8)      0.55 (60.8)     0.24 (8.6)      0.25 (66.1)
 *   forward decode   1.64 (2.56)     2.20 (15.2)     1.08 (1.95)     1.12 (14.9)
 *   forward tiled    0.53 (7.93)     0.73 (45.9)     0.29 (7.23)     0.32 (52.8)
 *   forward shared   2.50 (1.68)     3.01 (11.1)     1.22 (1.73)     1.38 (12.2)
 *   cache            2.48 (1.69)     3.03 (11.1)     1.23 (1.71)     1.36 (12.4)
 *   paged(16)        3.23 (1.30)     2.94 (11.4)     1.21 (1.74)     1.37 (12.2)
 * The kernel alone on shared K and V, f32: 1 thread 1.96 ms (4096) and 20.0 ms (32768), 2 threads 1.10
 * and 10.0 ms; from 4 splits on, the count hardly matters (1.10–1.11 ms up to 16); Bc = 64 beat 32 and
 * 256. forward() copies a caller's K and V into the workspace for the workers: against running on this
 * thread without a copy, 2.48 against 2.30 ms (f32, 4096), 16.1 against 21.4 (f32, 32768), 2.09 against
 * 2.78 (f16, 4096), 14.6 against 23.9 (f16, 32768). --nq 1,4,8,16,32 (causal, Nk = 4096): decode against
 * tiled, f32 2.35/6.31, 5.92/8.53, 10.9/12.9, 21.3/22.5, 41.3/38.4 ms; f16 2.26/7.33, 7.03/9.88,
 * 11.9/13.0, 24.0/22.1, 52.2/39.2 ms: hence DECODE_MAX_QUERIES (src/cpu/decode.ts).
 *
 * 2026-12-04, the WebAssembly decode kernel beside the JavaScript one, the machine loaded by other work
 * (load average 9–13), so --cpu: CPU ms per call (GB/s of K and V per CPU second), paged(16), B = 1,
 * H = 32, Hkv = 8, D = 128 (cache and forward shared within 5 % of it; forward decode, which copies the
 * caller's K and V to shared memory first, 10–25 % more; bench/results/2026-12-04-cpu-wasm-decode.md):
 *                    f32 Nk=4096    f32 Nk=32768    f16 Nk=4096    f16 Nk=32768
 *   Nq=1  wasm       18.8 (1.79)    134.0 (2.00)    16.4 (1.03)    134.6 (1.00)
 *         js         35.9 (0.93)    253.8 (1.06)    37.6 (0.45)    292.8 (0.46)
 *   Nq=4  wasm       26.5 (1.26)    214.8 (1.25)    25.3 (0.66)    203.4 (0.66)
 *         js         94.7 (0.35)    767.8 (0.35)   141.5 (0.12)   1084.1 (0.12)
 * A memcpy of K and V on one thread ran at 8.5–10.9 GB/s, so the kernel reads at a fifth of it (f32) and
 * a tenth (f16). The cost is the copy into the module's memory, a subarray and a set per row of one head
 * (about 70 ns each whatever the bytes, so f16 gains nothing from its half size): one thread, K and V in
 * cache, D = 128, 4 rows, per key 180 ns to copy K and V in, 27 to widen, 48 for qk, 8 softmax, 30 pv.
 * Tried, in alternated runs: touching each 64-byte line of the next tile's rows before this tile's
 * products, 20 % less CPU time at Nk = 4096 and 32768 (kept); copying a page's rows as one span with the
 * other heads' elements between them, 25–35 % less at Hkv = 2, D = 64, but 5 % (f16) and 45 % (f32) more
 * at Hkv = 4, D = 128 (kept where kvRow ≤ 2·D). Decode against tiled, both in WebAssembly, the default
 * shape, Nk = 4096, causal, --nq 1,4,8,16,32 (before spans): f32 2.53/4.43, 3.95/4.71, 5.65/7.54,
 * 9.97/11.04, 20.4/18.2 ms CPU; f16 2.57/6.21, 3.58/6.44, 5.41/8.39, 10.2/11.7, 19.5/20.0: f16 decode
 * now wins at Nq = 16 too (DECODE_MAX_QUERIES.f16 = 8 came from the JavaScript kernels; not changed).
 */
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { createKVCache, forward, type Tensor } from '../../src/index.js';
import { cpuDecodeForward, cpuTiledForward } from '../../src/cpu/index.js';
import { decodeScratch, decodeTasks, decodeTile, mergeDecode, type DecodeShape } from '../../src/cpu/decode.js';
import { runJob, sharedBuffer, threadsFor, whole } from '../../src/cpu/pool.js';
import { setCpuKernels } from '../../src/cpu/wasm/index.js';
import { checkForward } from '../../src/problem.js';
import { standardForward } from '../../src/reference/index.js';
import { toF64 } from '../../src/tensor.js';
import { encodeF16 } from '../../src/f16.js';
import { randomNormal } from './util.js';

function option(name: string, fallback: string): string[] {
  const i = process.argv.indexOf(name);
  return (i >= 0 ? process.argv[i + 1] : fallback).split(',');
}
const NK = option('--nk', '4096,32768').map(Number);
const NQ = option('--nq', '1').map(Number);
const DTYPES = option('--dtype', 'f32,f16') as ('f32' | 'f16')[];
const KERNELS = option('--kernels', 'wasm,js') as ('wasm' | 'js')[];
const PATHS = option('--paths', 'forward decode,forward tiled,forward shared,cache,paged(16)');
const sweep = process.argv.includes('--sweep');
const byCpu = process.argv.includes('--cpu');
const [B, H, Hkv, D] = option('--shape', '1,8,2,64').map(Number);
const SAMPLE_MS = 400;
const REPEATS = 7;

/** CPU ms all processes have used (/proc/stat, 100 ticks a second), or undefined off Linux. */
function machineBusyMs(): number | undefined {
  try {
    const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return (user + nice + system + irq + softirq + steal) * 10;
  } catch {
    return undefined;
  }
}

/** CPU ms this process (every thread) has used. */
function ownMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * ms per call: the fastest and the median of REPEATS samples, each of back-to-back calls for SAMPLE_MS;
 * a sample during which other processes were busy is dropped and taken again after a pause. With --cpu,
 * every sample counts and the figure is this process's CPU time per call (all its threads: the work done,
 * whatever else shares the machine), wall beside it.
 */
async function time(run: () => Promise<unknown>): Promise<{ min: number; median: number; wall?: number }> {
  for (let i = 0; i < 3; i++) await run();
  if (byCpu) {
    const cpu: number[] = [];
    const wall: number[] = [];
    for (let i = 0; i < REPEATS; i++) {
      let calls = 0;
      const own0 = ownMs();
      const t0 = performance.now();
      while (performance.now() - t0 < SAMPLE_MS) {
        await run();
        calls++;
      }
      wall.push((performance.now() - t0) / calls);
      cpu.push((ownMs() - own0) / calls);
    }
    cpu.sort((a, b) => a - b);
    wall.sort((a, b) => a - b);
    return { min: cpu[0], median: cpu[REPEATS >> 1], wall: wall[0] };
  }
  const samples: number[] = [];
  for (let attempt = 0; samples.length < REPEATS; attempt++) {
    if (attempt >= 40 * REPEATS) throw new Error('the machine was never quiet for a sample');
    let calls = 0;
    const [busy0, own0] = [machineBusyMs(), ownMs()];
    const t0 = performance.now();
    while (performance.now() - t0 < SAMPLE_MS) {
      await run();
      calls++;
    }
    const wall = performance.now() - t0;
    const busy1 = machineBusyMs();
    const foreign = busy0 === undefined || busy1 === undefined ? 0 : busy1 - busy0 - (ownMs() - own0);
    if (foreign > 0.05 * wall * availableParallelism()) {
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    samples.push(wall / calls);
  }
  samples.sort((a, b) => a - b);
  return { min: samples[0], median: samples[samples.length >> 1] };
}

function tensorOf(dtype: 'f32' | 'f16', shape: number[], seed: number, shared = false): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const x = randomNormal(n, seed);
  const data = dtype === 'f16' ? encodeF16(x) : Float32Array.from(x);
  if (!shared) return { data, dtype, shape };
  const copy = new (data.constructor as Uint16ArrayConstructor)(sharedBuffer(data.byteLength));
  copy.set(data as Uint16Array);
  return { data: copy, dtype, shape };
}

/** max |x − ref| / max |ref| over out, and max |lse − ref| / max |ref lse|. */
function relError(out: Tensor, lse: Tensor, ref: { out: Float64Array; lse: Float64Array }): number {
  const rel = (x: Float64Array, r: Float64Array) => {
    let e = 0;
    let m = 0;
    for (let i = 0; i < r.length; i++) {
      e = Math.max(e, Math.abs(x[i] - r[i]));
      m = Math.max(m, Math.abs(r[i]));
    }
    return e / m;
  };
  return Math.max(rel(toF64(out), ref.out), rel(toF64(lse), ref.lse));
}

console.log(`# cpu decode; ${cpus()[0]?.model ?? 'cpu'} × ${availableParallelism()}; pool threads ${await threadsFor(Infinity)}; node ${process.version}; ${new Date().toISOString()}`);
for (const dtype of DTYPES) {
  for (const Nk of NK) {
    for (const Nq of NQ) {
      const bytes = 2 * B * Nk * Hkv * D * (dtype === 'f16' ? 2 : 4);
      console.log(`\n## ${dtype} B=${B} H=${H} Hkv=${Hkv} D=${D} Nq=${Nq} Nk=${Nk} (K+V ${(bytes / 2 ** 20).toFixed(1)} MiB)`);
      const q = tensorOf(dtype, [B, Nq, H, D], 1);
      const k = tensorOf(dtype, [B, Nk, Hkv, D], 2);
      const v = tensorOf(dtype, [B, Nk, Hkv, D], 3);
      const ks = tensorOf(dtype, [B, Nk, Hkv, D], 2, true);
      const vs = tensorOf(dtype, [B, Nk, Hkv, D], 3, true);
      const p = checkForward(q, k, v, { causal: Nq > 1 });
      const ref = standardForward(p, toF64(q), toF64(k), toF64(v));
      const tolerance = dtype === 'f16' ? 1e-2 : 1e-5;
      const caches = await Promise.all(
        [undefined, 16].map(async (pageSize) => {
          const cache = await createKVCache({ batch: B, kvHeads: Hkv, headDim: D, maxLength: Nk, dtype, backend: 'cpu', pageSize });
          await cache.append(k, v);
          return cache;
        }),
      );
      const paths: [string, () => Promise<{ out: Tensor; lse: Tensor }>][] = [
        ['forward decode', () => cpuDecodeForward(p, q, k, v)],
        ['forward tiled', () => cpuTiledForward(p, q, k, v)],
        ['forward shared', () => forward(q, ks, vs, { causal: Nq > 1, backend: 'cpu' })],
        ['cache', () => caches[0].forward(q, undefined, undefined, { causal: Nq > 1 }) as Promise<{ out: Tensor; lse: Tensor }>],
        ['paged(16)', () => caches[1].forward(q, undefined, undefined, { causal: Nq > 1 }) as Promise<{ out: Tensor; lse: Tensor }>],
      ];
      for (const [label, run] of paths.filter(([name]) => PATHS.includes(name))) {
        for (const kernels of KERNELS) {
          setCpuKernels(kernels);
          const r = await run();
          const err = relError(r.out, r.lse, ref);
          if (!(err <= tolerance)) throw new Error(`${label} ${kernels}: relative error ${err} over ${tolerance}`);
          const t = await time(run);
          const wall = t.wall === undefined ? '' : `  wall ${t.wall.toFixed(3)} ms`;
          console.log(`${`${label} ${kernels}`.padEnd(21)} ${t.min.toFixed(3).padStart(8)} ms${byCpu ? ' cpu' : ''} (median ${t.median.toFixed(3)})  ${(bytes / t.min / 1e6).toFixed(2).padStart(5)} GB/s${wall}  err ${err.toExponential(1)}`);
        }
      }
      setCpuKernels('wasm');
      caches.forEach((c) => c.dispose());
      if (byCpu) {
        // What reading K and V costs at the least on one thread: a copy of each into an array of its own.
        const into = [k, v].map((x) => new (x.data.constructor as Uint16ArrayConstructor)(x.data.length));
        const t = await time(async () => [k, v].forEach((x, i) => into[i].set(x.data as Uint16Array)));
        console.log(`${'copy K, V (memcpy)'.padEnd(21)} ${t.min.toFixed(3).padStart(8)} ms cpu (median ${t.median.toFixed(3)})  ${(bytes / t.min / 1e6).toFixed(2).padStart(5)} GB/s`);
      }

      if (sweep && Nq === 1) {
        // The kernel alone on shared K and V: splits of the keys × the key tile, on the pool.
        const threads = await threadsFor(Infinity);
        const t = dtype === 'f16' ? '.f16' : '';
        for (const Bc of [32, decodeTile(D), 256]) {
          for (const splits of [1, 2, 4, 8, 16, 32]) {
            const chunk = Math.ceil(Math.ceil(Nk / Bc) / splits) * Bc;
            const s: DecodeShape = {
              B, H, Hkv, Nq, D, causal: false, scale: p.scale, qBatch: Nq * H * D, qRow: H * D, qHead: D,
              kvPage: Nk * Hkv * D, kvRow: Hkv * D, kvHead: D, pageSize: Nk, maxPages: 1,
              f16: dtype === 'f16', Bc, R: H / Hkv, rowChunks: 1, splits: Math.ceil(Nk / chunk), chunk,
            };
            const opart = sharedBuffer(B * H * s.splits * D * 8);
            const lpart = sharedBuffer(B * H * s.splits * 8);
            const qs = tensorOf(dtype, [B, Nq, H, D], 1, true);
            const lengths = new Int32Array(sharedBuffer(4)).fill(Nk);
            const buffers = {
              ['q' + t]: whole(qs.data.buffer),
              ['k' + t]: whole(ks.data.buffer),
              ['v' + t]: whole(vs.data.buffer),
              'table.i32': whole(sharedBuffer(4)),
              'lengths.i32': whole(lengths.buffer),
              'opart.f64': whole(opart),
              'lpart.f64': whole(lpart),
            };
            const scratch = Array.from({ length: threads }, () => whole(sharedBuffer(decodeScratch(s) * 8)));
            const counter = whole(sharedBuffer(4));
            const out = dtype === 'f16' ? new Uint16Array(q.data.length) : new Float32Array(q.data.length);
            const lse = new Float32Array(B * H);
            const run = async () => {
              await runJob({ kernel: 'decode', shape: s, tasks: decodeTasks(s), buffers, scratch, counter });
              mergeDecode(s, new Float64Array(opart), new Float64Array(lpart), out, lse);
              return { out: { data: out, dtype, shape: q.shape } as Tensor, lse: { data: lse, dtype: 'f32', shape: [B, H, 1] } as Tensor };
            };
            const first = await run();
            const err = relError(first.out, first.lse, ref);
            if (!(err <= tolerance)) throw new Error(`kernel Bc=${Bc} splits=${s.splits}: relative error ${err}`);
            const tm = await time(run);
            console.log(`kernel Bc=${String(Bc).padEnd(3)} splits=${String(s.splits).padEnd(2)} ${tm.min.toFixed(3).padStart(8)} ms (median ${tm.median.toFixed(3)})  ${(bytes / tm.min / 1e6).toFixed(2).padStart(5)} GB/s`);
          }
        }
        // What a shared copy of K and V would cost per call: a fresh SharedArrayBuffer, filled.
        const fill = await time(async () => {
          for (const x of [k, v]) new (x.data.constructor as Uint16ArrayConstructor)(sharedBuffer(x.data.byteLength)).set(x.data as Uint16Array);
        });
        console.log(`copy K, V into a fresh SharedArrayBuffer: ${fill.min.toFixed(3)} ms (${(fill.min / (bytes / 2 ** 20)).toFixed(2)} ms/MiB)`);
      }
    }
  }
}
process.exit(0);
