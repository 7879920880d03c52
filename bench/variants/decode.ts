/**
 * Lab notebook: the split-KV decode schedule (src/webgpu/kernels/decode.ts) on a GPU, f16, Nq = 1.
 * For each case: the shipped choice through forward() on GPUBuffer tensors (new outputs, and the caller's
 * through options.out / options.lse) and through a contiguous and a
 * paged KV cache (cache.forward with the caller's out and lse), then a sweep of the kernel's block Bc,
 * workgroup size and split target, each validated against the float64 reference (on one batch row and
 * the first key/value head's group) before it is timed. Prints K/V bytes read per second, and the host's
 * wall time per call over 100 back-to-back calls against their GPU time.
 * Run: node dist/bench/variants/decode.js [--sweep | --sweep-all | --sweep-scatter | --sweep-tune | --sweep-wave] (--sweep: the shipped
 * kernel over split targets; --sweep-all: also the subgroup kernel over T, U and R, the subgroup-matrix
 * kernel over its warps, and the portable kernel; --sweep-scatter: the subgroup kernel with its scores
 * all-reduced (T = U = 8, R = 2) and reduce-scattered (T = U = 16, R = 4), with 8- and 16-byte loads,
 * over split targets of 128 to 1024 workgroups; --sweep-tune: the shipped choice with half and twice its
 * workgroup size, over 16K to 48K invocations a dispatch; --sweep-wave:
 * the reduce-scattered choice at 4, 8 and 16 groups a workgroup over 64 to 1024
 * workgroups a dispatch; --sweep-keys: the reduce-scattered choice with 16, 8 and 4 keys a group at a time
 * (U ≤ T: fewer K/V rows a lane), 16 and 32 lanes a key, 8 and 16 groups, over 128 to 1024 workgroups.
 * --cases 0,2: only those cases, by their index in CASES)
 */
import { createKVCache, forward, type GpuTensor, type Tensor } from '../../src/index.js';
import { checkForward } from '../../src/problem.js';
import { decodeFits, decodeScratch, decodeShape, decodeSizes, encodeDecode, splitPlan, decodePipelines, type DecodeChoice } from '../../src/webgpu/decode.js';
import { defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { decodeSizesBytes, type DecodeParams } from '../../src/webgpu/kernels/decode.js';
import { problemStrides } from '../../src/problem.js';
import { GpuTimer } from '../../src/webgpu/timer.js';
import { toF64 } from '../../src/tensor.js';
import { gpuTensor, randomF16, readF16, tiled } from './util.js';

const CASES = [
  { B: 8, H: 32, Hkv: 8, Nk: 32768, D: 128 },
  { B: 32, H: 32, Hkv: 32, Nk: 4096, D: 128 },
  { B: 1, H: 32, Hkv: 8, Nk: 131072, D: 128 },
  { B: 8, H: 32, Hkv: 8, Nk: 4096, D: 64 },
];
const CALLS = 100;
const sweepAll = process.argv.includes('--sweep-all');
const sweepScatter = process.argv.includes('--sweep-scatter');
const sweepTune = process.argv.includes('--sweep-tune');
const sweepWave = process.argv.includes('--sweep-wave');
const sweepKeys = process.argv.includes('--sweep-keys');
const sweep = sweepAll || sweepScatter || sweepTune || sweepWave || sweepKeys || process.argv.includes('--sweep');
/** --cases 0,2: only those of CASES (by index). */
const casesArg = process.argv.indexOf('--cases');
const only = casesArg > 0 ? new Set(process.argv[casesArg + 1].split(',').map(Number)) : undefined;

/** GPU ms per call (timestamp queries) and wall ms per call of CALLS back-to-back calls of `run`. */
async function time(gpu: Gpu, run: () => Promise<unknown>): Promise<{ gpu: number; wall: number }> {
  for (let i = 0; i < 5; i++) await run();
  await gpu.device.queue.onSubmittedWorkDone();
  const timer = new GpuTimer(gpu.device);
  const gpuMs: number[] = [];
  const wallMs: number[] = [];
  for (let rep = 0; rep < 3; rep++) {
    await timer.start();
    const t0 = performance.now();
    for (let i = 0; i < CALLS; i++) await run();
    await timer.mark();
    await gpu.device.queue.onSubmittedWorkDone();
    wallMs.push((performance.now() - t0) / CALLS);
    gpuMs.push((await timer.finish())[0] / CALLS);
  }
  return { gpu: Math.min(...gpuMs), wall: Math.min(...wallMs) };
}

function row(label: string, c: (typeof CASES)[number], t: { gpu: number; wall: number }, err: string) {
  const bytes = 2 * c.B * c.Nk * c.Hkv * c.D * 2;
  console.log(
    `${label.padEnd(44)} ${t.gpu.toFixed(4).padStart(9)} ms  ${(bytes / t.gpu / 1e6).toFixed(0).padStart(5)} GB/s  wall/gpu ${(t.wall / t.gpu).toFixed(2)}  ${err}`,
  );
}

const gpu = await defaultGpu();
console.log(`# ${gpu.description}; ${new Date().toISOString()}; node ${process.version}`);
for (const [index, c] of CASES.entries()) {
  if (only && !only.has(index)) continue;
  const { B, H, Hkv, Nk, D } = c;
  const qh = randomF16(B * H * D, 1);
  const kh = tiled(B * Nk * Hkv * D, 2);
  const vh = tiled(B * Nk * Hkv * D, 3);
  const q = gpuTensor(gpu, qh, [B, 1, H, D]);
  const k = gpuTensor(gpu, kh, [B, Nk, Hkv, D]);
  const v = gpuTensor(gpu, vh, [B, Nk, Hkv, D]);
  console.log(`\n## B=${B} H=${H} Hkv=${Hkv} Nk=${Nk} D=${D}  (K+V ${((2 * B * Nk * Hkv * D * 2) / 2 ** 20).toFixed(0)} MiB)`);

  // The yardstick: float64 reference and webgpu standard attention on batch row 0, the first group's heads.
  const G = H / Hkv;
  const q0: Tensor = { data: qh.slice(0, G * D), dtype: 'f16', shape: [1, 1, G, D] };
  const kv0 = (x: Uint16Array): Tensor => {
    const out = new Uint16Array(Nk * D);
    for (let j = 0; j < Nk; j++) out.set(x.subarray(j * Hkv * D, j * Hkv * D + D), j * D);
    return { data: out, dtype: 'f16', shape: [1, Nk, 1, D] };
  };
  const [k0, v0] = [kv0(kh), kv0(vh)];
  const ref = await forward(q0, k0, v0, { backend: 'reference' });
  const std = await forward(q0, k0, v0, { backend: 'webgpu', algorithm: 'standard' });
  const refOut = toF64(ref.out);
  const maxErr = (a: Float64Array, b: Float64Array) => a.reduce((e, x, i) => Math.max(e, Math.abs(x - b[i])), 0);
  const stdErr = maxErr(toF64(std.out), refOut);
  const check = async (out: GpuTensor) => {
    const got = await readF16(gpu, out, G * D); // batch row 0, heads 0..G−1 (BNHD, Nq = 1)
    const e = maxErr(got, refOut);
    return `${e <= 2 * stdErr + 1e-6 ? 'ok' : 'FAILS THE RULE'} err ${e.toExponential(2)} (std ${stdErr.toExponential(2)})`;
  };

  // forward(): creates its outputs each call (destroyed here once queued).
  {
    const r = await forward(q, k, v);
    const err = await check(r.out as GpuTensor);
    const t = await time(gpu, async () => {
      const x = await forward(q, k, v);
      (x.out as GpuTensor).data.destroy();
      (x.lse as GpuTensor).data.destroy();
    });
    row('forward() (GPU tensors, new outputs)', c, t, err);
  }
  // forward() into the caller's out and lse, as a decode loop calls it.
  {
    const out = gpuTensor(gpu, new Uint16Array(B * H * D), [B, 1, H, D]);
    const lse: GpuTensor = { data: gpu.device.createBuffer({ size: B * H * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC }), dtype: 'f32', shape: [B, H, 1] };
    await forward(q, k, v, { out, lse });
    const err = await check(out);
    const t = await time(gpu, () => forward(q, k, v, { out, lse }));
    row('forward() (GPU tensors, options.out/lse)', c, t, err);
  }
  // KV caches: filled once, then attention only into the caller's out and lse.
  for (const pageSize of [undefined, 16]) {
    const cache = await createKVCache({ batch: B, kvHeads: Hkv, headDim: D, maxLength: Nk, dtype: 'f16', backend: 'webgpu', pageSize });
    await cache.append(k, v);
    const out = gpuTensor(gpu, new Uint16Array(B * H * D), [B, 1, H, D]);
    const lse: GpuTensor = { data: gpu.device.createBuffer({ size: B * H * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC }), dtype: 'f32', shape: [B, H, 1] };
    await cache.forward(q, undefined, undefined, { out, lse });
    const err = await check(out);
    const t = await time(gpu, () => cache.forward(q, undefined, undefined, { out, lse }));
    row(pageSize ? `paged cache (${pageSize} tokens a page)` : 'contiguous cache', c, t, err);
    cache.dispose();
  }
  if (sweep) {
    // The kernel alone over its tiles and split targets (the same dispatches forward() encodes).
    const p = checkForward(q, k, v, {});
    const scratch = decodeScratch(gpu.device);
    const out = gpuTensor(gpu, new Uint16Array(B * H * D), [B, 1, H, D]);
    const lse = gpu.device.createBuffer({ size: B * H * 4, usage: GPUBufferUsage.STORAGE });
    const { q: sq, kv: sk } = problemStrides(p);
    const portable = decodeFits(p, gpu, 'portable')!;
    const sub = decodeFits(p, gpu, 'subgroup')!;
    const matrix = decodeFits(p, gpu, 'matrix');
    const choices: DecodeChoice[] = [];
    if (sweepAll && matrix?.kernel === 'decodeMatrix') for (const W of [1, 2, 4]) if (W <= matrix.params.W) choices.push({ kernel: 'decodeMatrix', params: { ...matrix.params, W } });
    if (sub.kernel === 'decodeSubgroup') {
      choices.push(sub);
      if (sweepAll) for (const T of [8, 16, 32]) for (const U of [4, 8]) for (const R of [1, 2, 4]) if (R <= sub.params.R) choices.push({ kernel: 'decodeSubgroup', params: { ...sub.params, T, U, R, NG: 128 / T, scatter: false, wide: false } });
      // The reduce-scattered scores (U = T = 16, R = 4) against the all-reduced ones (T = U = 8, R = 2), 8- and 16-byte loads.
      if (sweepScatter) {
        for (const wide of [false, true]) {
          if (G >= 4) choices.push({ kernel: 'decodeSubgroup', params: { ...sub.params, T: 16, U: 16, R: 4, NG: 8, scatter: true, wide } });
          choices.push({ kernel: 'decodeSubgroup', params: { ...sub.params, T: 8, U: 8, R: Math.min(2, G), NG: 16, scatter: false, wide } });
        }
      }
    }
    // The reduce-scattered choice at 64 to 256 invocations a workgroup, over 64 to 1024 workgroups.
    if (sweepWave && sub.kernel === 'decodeSubgroup' && sub.params.scatter) {
      const T = sub.params.T;
      for (const NG of [4, 8, 16]) if (NG * T <= gpu.limits.maxComputeInvocationsPerWorkgroup) choices.push({ kernel: 'decodeSubgroup', params: { ...sub.params, NG } });
    }
    // The reduce-scattered choice with fewer keys a group at a time (U < T holds fewer K/V rows a lane), and 32 lanes a key.
    // (MHA too: one row a key/value head, R = 1.)
    if (sweepKeys && sub.kernel === 'decodeSubgroup') {
      for (const T of [16, 32]) {
        if (T > (gpu.subgroupSize ?? 0) || D % (4 * T) !== 0) continue;
        const wide = p.dtype === 'f16' && (D / 4 / T) % 2 === 0;
        for (const U of [16, 8, 4]) for (const NG of [8, 16]) if (U <= T && NG * T <= gpu.limits.maxComputeInvocationsPerWorkgroup) choices.push({ kernel: 'decodeSubgroup', params: { ...sub.params, T, U, NG, R: Math.min(4, G), scatter: true, wide } });
      }
    }
    // Around the shipped choice: workgroups of 64 to 256 invocations, 16K to 48K invocations a dispatch.
    if (sweepTune && sub.kernel === 'decodeSubgroup') for (const f of [0.5, 2]) choices.push({ kernel: 'decodeSubgroup', params: { ...sub.params, NG: sub.params.NG * f } });
    if (sweepAll) for (const WG of [128]) choices.push({ kernel: 'decode', params: { ...(portable.params as DecodeParams), WG } });
    for (const choice of choices) {
      const { R, block, WG } = decodeShape(choice);
      const targets = choice.kernel === 'decodeMatrix' ? [2048, 4096, 8192] : sweepWave ? [64, 128, 256, 384, 512, 1024] : sweepKeys || sweepScatter ? [128, 256, 512, 1024] : sweepTune ? [16384, 24576, 32768, 49152].map((n) => n / WG) : [1024, 2048];
      const seen = new Set<number>();
      for (const target of targets) {
        const rowChunks = Math.ceil(G / R);
        if (choice.kernel === 'decode' && target > 1024) continue;
        const plan = splitPlan(B, Hkv, rowChunks, Nk, block, target, sweepWave || sweepKeys ? 1 : undefined);
        if (seen.has(plan.splits)) continue;
        seen.add(plan.splits);
        const sizes = decodeSizes({ B, H, Hkv, Nq: 1, Nk, q: sq, keys: { kvPage: sk.batch, kvRow: sk.row, kvHead: sk.head, pageSize: Nk, maxPages: 1 }, scale: p.scale }, R, plan);
        const label = `${choice.kernel} ${Object.entries(choice.params).filter(([key]) => ['T', 'U', 'NG', 'R', 'Bc', 'WG', 'W', 'scatter', 'wide'].includes(key)).map(([key, x]) => `${key}=${x}`).join(' ')} splits=${plan.splits} wgs=${B * Hkv * rowChunks * plan.splits}`;
        let pipes;
        try {
          pipes = await decodePipelines(gpu, choice, plan.splits > 1);
        } catch (e) {
          console.log(`${label}: ${(e as Error).message.split('\n')[0]}`);
          continue;
        }
        const uniform = gpu.device.createBuffer({ size: 80, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
        gpu.device.queue.writeBuffer(uniform, 0, decodeSizesBytes(sizes));
        const run = async () => {
          const enc = gpu.device.createCommandEncoder();
          encodeDecode(enc, scratch, pipes, D, sizes, uniform, { q: q.data, k: k.data, v: v.data, out: out.data, lse }, true);
          gpu.device.queue.submit([enc.finish()]);
        };
        await run();
        const err = await check(out);
        row(label, c, await time(gpu, run), err);
      }
    }
  }
  for (const t of [q, k, v]) t.data.destroy();
}
process.exit(0);
