/**
 * The KV cache on every backend: contiguous and paged, prefill and decode and speculative steps on slots of
 * different lengths, checked after every step against the float64 oracle over each slot's whole history
 * (error rule of util.ts, with the same backend's standard attention over that history as yardstick);
 * what the cache holds is exactly what was appended; pages go back to the pool; bad input is refused.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createKVCache, forward, KVCache, OutOfMemoryError, ShapeError, ValueError, webgpuDevice, type DType, type GpuTensor, type Tensor } from '../src/index.js';
import { checkForward } from '../src/problem.js';
import { cacheGeometry } from '../src/kvcache.js';
import { memory } from '../src/memory.js';
import { WebgpuCacheStore } from '../src/webgpu/cache.js';
import type { DecodeKernels } from '../src/webgpu/decode.js';
import { defaultGpu } from '../src/webgpu/device.js';
import { standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, concat, maxError, onDevice, randomTensor, rows } from './util.js';

/** The first n f32 of a GPUBuffer (COPY_SRC) of `device`. */
async function readF32(device: GPUDevice, buffer: GPUBuffer, n: number): Promise<Float32Array> {
  const staging = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, 0, staging, 0, n * 4);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const data = new Float32Array(staging.getMappedRange().slice(0));
  staging.destroy();
  return data;
}



interface Model {
  backend: 'cpu' | 'webgpu';
  dtype: DType;
  H: number;
  Hkv: number;
  D: number;
  history: (Tensor | undefined)[][]; // per slot: [k, v]
}

/** Check out/lse of batch row b (slot s) of a step against the oracle over the slot's history. */
async function checkRow(m: Model, label: string, q: Tensor, out: Tensor, lse: Tensor, b: number, s: number, causal: boolean) {
  const [k, v] = m.history[s];
  const Nq = q.shape[1];
  const qb = rows(q, b, 0, Nq);
  const ob = rows(out, b, 0, Nq);
  const lb = Float64Array.from((lse.data as Float32Array).subarray(b * m.H * Nq, (b + 1) * m.H * Nq));
  if (!k || !v) {
    assert.ok(toF64(ob).every((x) => x === 0) && lb.every((x) => x === -Infinity), `${label}: an empty slot gives 0 and −∞`);
    return;
  }
  const p = checkForward(qb, k, v, { causal });
  const oracle = standardForward(p, toF64(qb), toF64(k), toF64(v));
  const std = await forward(qb, k, v, { causal, backend: m.backend, algorithm: 'standard' });
  assertWithinRule(`${label} slot ${s} out`, maxError(ob, oracle.out), maxError(std.out, oracle.out), 2);
  assertWithinRule(`${label} slot ${s} lse`, maxError(lb, oracle.lse), maxError(std.lse, oracle.lse), 2);
}

/** One step: append n tokens to `slots` and attend Nq queries; checks every row. */
async function step(m: Model, cache: KVCache, slots: number[], n: number, Nq: number, causal: boolean, seed: number) {
  const B = slots.length;
  const q = randomTensor(m.dtype, [B, Nq, m.H, m.D], seed);
  const k = randomTensor(m.dtype, [B, n, m.Hkv, m.D], seed + 1);
  const v = randomTensor(m.dtype, [B, n, m.Hkv, m.D], seed + 2);
  slots.forEach((s, b) => {
    m.history[s] = [concat(m.history[s][0], rows(k, b, 0, n)), concat(m.history[s][1], rows(v, b, 0, n))];
  });
  const r = await cache.forward(q, k, v, { sequences: slots, causal });
  for (let b = 0; b < B; b++) await checkRow(m, `${m.backend} ${m.dtype} step(n=${n}, Nq=${Nq})`, q, r.out as Tensor, r.lse as Tensor, b, slots[b], causal);
}

describe('KV cache', () => {
  reportWebgpuSkip();
  // webgpu: the kernel the device gets, and the subgroup decode kernel forced (software adapters get the
  // portable one), all-reduced and reduce-scattered (GQA groups on GPUs).
  const runs = BACKENDS.flatMap((backend) => (backend === 'webgpu' ? [['webgpu', 'auto'], ['webgpu', 'subgroup'], ['webgpu', 'scatter']] : [['cpu', 'auto']]) as ['cpu' | 'webgpu', DecodeKernels][]);
  for (const [backend, kernels] of runs) {
    for (const [dtype, D, pageSize] of [
      ['f32', 40, undefined],
      ['f16', 64, 16],
      ['f32', 7, 5],
    ] as const) {
      test(`${backend}${kernels === 'auto' ? '' : ` (${kernels} kernel)`} ${dtype} D=${D} ${pageSize ? `paged (${pageSize} tokens a page)` : 'contiguous'}: prefill, decode, speculative steps`, async () => {
        const m: Model = { backend, dtype, H: 6, Hkv: 2, D, history: [[], [], []] };
        const config = { batch: 3, kvHeads: 2, headDim: D, maxLength: 80, dtype, backend, pageSize };
        const cache =
          kernels === 'auto' ? await createKVCache(config) : new KVCache(cacheGeometry(config), new WebgpuCacheStore(cacheGeometry(config), await defaultGpu(), memory, kernels), memory);
        assert.equal(cache.backend, backend);
        await step(m, cache, [0], 37, 37, true, 1); // prefill slot 0
        await step(m, cache, [2], 5, 5, true, 10); // prefill slot 2; slot 1 stays empty
        await step(m, cache, [0, 1, 2], 1, 1, false, 20); // decode, one token each
        await step(m, cache, [2, 0], 4, 4, true, 30); // speculative: 4 tokens, causal among them
        await step(m, cache, [0], 20, 20, true, 35); // chunked prefill: 20 more tokens after 42 cached
        const q = randomTensor(dtype, [3, 1, 6, D], 40);
        const r = await cache.forward(q); // attention only
        for (let b = 0; b < 3; b++) await checkRow(m, `${backend} attend`, q, r.out as Tensor, r.lse as Tensor, b, b, false);
        assert.deepEqual(cache.lengths, [62, 1, 10]);
        for (let s = 0; s < 3; s++) {
          const { k, v } = await cache.read(s);
          assert.deepEqual(Array.from(k.data), Array.from(m.history[s][0]!.data), `slot ${s} k as appended`);
          assert.deepEqual(Array.from(v.data), Array.from(m.history[s][1]!.data), `slot ${s} v as appended`);
        }
        if (pageSize) {
          const before = cache.freePages;
          cache.release(0);
          assert.equal(cache.freePages, before + Math.ceil(62 / pageSize));
          m.history[0] = [];
          await step(m, cache, [0], 3, 1, false, 50);
        }
        cache.dispose();
      });
    }
  }

  for (const backend of BACKENDS) {
    test(`${backend}: a prompt into empty slots is forward() over its own q, k, v (the same bits), then decode steps see its keys`, async () => {
      const [B, Nq, H, Hkv, D] = [2, 40, 4, 2, 16];
      const q = randomTensor('f32', [B, Nq, H, D], 61);
      const k = randomTensor('f32', [B, Nq, Hkv, D], 62);
      const v = randomTensor('f32', [B, Nq, Hkv, D], 63);
      const options = { causal: true, window: [24, 0] as const, softcap: 30 };
      const cache = await createKVCache({ batch: 3, kvHeads: Hkv, headDim: D, maxLength: 64, backend, pageSize: 8 });
      const got = await cache.forward(q, k, v, { ...options, sequences: [2, 0] });
      const want = await forward(q, k, v, { ...options, backend });
      assert.deepEqual(Array.from(got.out.data as Float32Array), Array.from(want.out.data as Float32Array));
      assert.deepEqual(Array.from(got.lse.data as Float32Array), Array.from(want.lse.data as Float32Array));
      assert.deepEqual(cache.lengths, [40, 0, 40]);
      const { k: k2 } = await cache.read(2);
      assert.deepEqual(Array.from(k2.data), Array.from(rows(k, 0, 0, Nq).data), 'slot 2 holds row 0 of k');
      // A decode step on top: 41 keys, against the oracle.
      const m: Model = { backend, dtype: 'f32', H, Hkv, D, history: [[rows(k, 1, 0, Nq), rows(v, 1, 0, Nq)], [], [rows(k, 0, 0, Nq), rows(v, 0, 0, Nq)]] };
      await step(m, cache, [0, 2], 1, 1, false, 70);
      cache.dispose();
    });
  }

  for (const backend of BACKENDS) {
    test(`${backend}: a prompt after cached tokens (chunked prefill) is forward() over the slots' keys (the same bits); on webgpu slots of different lengths too, left-padded and masked`, async () => {
      const [H, Hkv, D, n0, n] = [4, 2, 16, 27, 21];
      const options = { causal: true, window: [30, 0] as const, softcap: 30 };
      const cache = await createKVCache({ batch: 3, kvHeads: Hkv, headDim: D, maxLength: 96, backend, pageSize: 8 });
      const [k0, v0] = [81, 82].map((seed) => randomTensor('f32', [2, n0, Hkv, D], seed));
      const q = randomTensor('f32', [2, n, H, D], 83);
      const [k, v] = [84, 85].map((seed) => randomTensor('f32', [2, n, Hkv, D], seed));
      // Each batch row's n0 cached tokens, then its n new ones: (2, n0 + n, Hkv, D).
      const joined = (a: Tensor, b: Tensor): Tensor => {
        const [r0, r1] = [0, 1].map((row) => concat(rows(a, row, 0, n0), rows(b, row, 0, n)));
        return { data: Float32Array.from([...(r0.data as Float32Array), ...(r1.data as Float32Array)]), dtype: 'f32', shape: [2, n0 + n, Hkv, D] };
      };
      const want = await forward(q, joined(k0, k), joined(v0, v), { ...options, backend });
      const sequences = [2, 0];
      let out: Float32Array;
      let lse: Float32Array;
      if (backend === 'webgpu') {
        // GPUBuffer tensors, into the caller's out and lse.
        const device = await webgpuDevice();
        const gpu = (t: Tensor) => onDevice(device, t);
        await cache.append(gpu(k0), gpu(v0), { sequences });
        const [o, l] = [gpu(randomTensor('f32', [2, n, H, D], 9)), gpu(randomTensor('f32', [2, H, n], 9))];
        await cache.forward(gpu(q), gpu(k), gpu(v), { ...options, sequences, out: o, lse: l });
        [out, lse] = await Promise.all([readF32(device, o.data, 2 * n * H * D), readF32(device, l.data, 2 * H * n)]);
      } else {
        await cache.append(k0, v0, { sequences });
        const r = await cache.forward(q, k, v, { ...options, sequences });
        [out, lse] = [r.out.data as Float32Array, r.lse.data as Float32Array];
      }
      assert.deepEqual(Array.from(out), Array.from(want.out.data as Float32Array));
      assert.deepEqual(Array.from(lse), Array.from(want.lse.data as Float32Array));
      assert.deepEqual(cache.lengths, [n0 + n, 0, n0 + n]);
      if (backend === 'webgpu') {
        // Typed arrays take the path too (q uploaded, out and lse read back).
        const typed = await createKVCache({ batch: 3, kvHeads: Hkv, headDim: D, maxLength: 96, backend, pageSize: 8 });
        await typed.append(k0, v0, { sequences });
        const r = (await typed.forward(q, k, v, { ...options, sequences })) as { out: Tensor; lse: Tensor };
        assert.deepEqual(Array.from(r.out.data as Float32Array), Array.from(want.out.data as Float32Array));
        assert.deepEqual(Array.from(r.lse.data as Float32Array), Array.from(want.lse.data as Float32Array));
        typed.dispose();
      }
      // Slots 0 (48 tokens) and 1 (empty) take 18 more each: different lengths (webgpu: slot 1's row
      // left-padded and masked, GPUBuffer tensors; the cpu: the decode schedule), against the oracle over
      // each slot's history.
      const m: Model = { backend, dtype: 'f32', H, Hkv, D, history: [[rows(joined(k0, k), 1, 0, n0 + n), rows(joined(v0, v), 1, 0, n0 + n)], [], []] };
      const [q2, k2, v2] = [91, 92, 93].map((seed, i) => randomTensor('f32', [2, 18, i === 0 ? H : Hkv, D], seed));
      [0, 1].forEach((slot, b) => (m.history[slot] = [concat(m.history[slot][0], rows(k2, b, 0, 18)), concat(m.history[slot][1], rows(v2, b, 0, 18))]));
      let r2: { out: Tensor; lse: Tensor };
      if (backend === 'webgpu') {
        const device = await webgpuDevice();
        const got = await cache.forward(onDevice(device, q2), onDevice(device, k2), onDevice(device, v2), { sequences: [0, 1], causal: true });
        const [o2, l2] = [got.out, got.lse] as GpuTensor[];
        r2 = { out: { data: await readF32(device, o2.data, 2 * 18 * H * D), dtype: 'f32', shape: o2.shape }, lse: { data: await readF32(device, l2.data, 2 * H * 18), dtype: 'f32', shape: l2.shape } };
      } else {
        r2 = (await cache.forward(q2, k2, v2, { sequences: [0, 1], causal: true })) as { out: Tensor; lse: Tensor };
      }
      for (let b = 0; b < 2; b++) await checkRow(m, `${backend} chunked prefill, slots of 66 and 18 tokens`, q2, r2.out, r2.lse, b, b, true);
      // And with typed arrays (on webgpu the masked path again, q uploaded; the cpu: the decode schedule): 17 more each.
      await step(m, cache, [1, 0], 17, 17, true, 95);
      cache.dispose();
    });
  }

  if (BACKENDS.includes('webgpu')) {
    test('webgpu: GPUBuffer tensors in, results in the caller’s out and lse, the same as typed arrays', async () => {
      const device = await webgpuDevice();
      const make = (t: Tensor) => {
        const buffer = device.createBuffer({ size: Math.ceil(t.data.byteLength / 4) * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
        device.queue.writeBuffer(buffer, 0, t.data.buffer, 0, Math.ceil(t.data.byteLength / 4) * 4);
        return { data: buffer, dtype: t.dtype as 'f32', shape: t.shape };
      };
      const config = { batch: 2, kvHeads: 1, headDim: 16, maxLength: 700, backend: 'webgpu' as const, pageSize: 64 };
      const [a, b] = [await createKVCache(config), await createKVCache(config)];
      const k = randomTensor('f32', [2, 600, 1, 16], 1);
      const v = randomTensor('f32', [2, 600, 1, 16], 2);
      const q = randomTensor('f32', [2, 1, 4, 16], 3);
      await a.append(k, v);
      const ref = await a.forward(q);
      await b.append(make(k), make(v));
      const out = make(randomTensor('f32', [2, 1, 4, 16], 9));
      const lse = make(randomTensor('f32', [2, 4, 1], 9));
      const got = await b.forward(make(q), undefined, undefined, { out, lse });
      assert.equal(got.out.data, out.data);
      assert.deepEqual(Array.from(await readF32(device, out.data, 128)), Array.from(ref.out.data as Float32Array));
      assert.deepEqual(Array.from(await readF32(device, lse.data, 8)), Array.from(ref.lse.data as Float32Array));
      a.dispose();
      b.dispose();
    });
  }

  test('bad input: typed errors naming the argument', async () => {
    await assert.rejects(createKVCache({ batch: 0, kvHeads: 1, headDim: 8, maxLength: 4 }), (e: ValueError) => e.argument === 'config.batch');
    await assert.rejects(createKVCache({ batch: 1, kvHeads: 1, headDim: 8, maxLength: 4, pages: 3 }), (e: ValueError) => e.argument === 'config.pages');
    const cache = await createKVCache({ batch: 2, kvHeads: 2, headDim: 8, maxLength: 4, backend: 'cpu', pageSize: 2, pages: 2 });
    const t = (B: number, N: number, H: number) => randomTensor('f32', [B, N, H, 8], 1);
    await assert.rejects(cache.forward(t(2, 1, 3)), (e: ShapeError) => e.argument === 'q.shape');
    await assert.rejects(cache.forward(t(1, 1, 2), undefined, undefined, { sequences: [2] }), (e: ValueError) => e.argument === 'options.sequences[0]');
    await assert.rejects(cache.forward(t(2, 1, 2), t(2, 1, 2)), (e: ValueError) => e.argument === 'v');
    await assert.rejects(cache.append(t(2, 5, 2), t(2, 5, 2)), (e: ValueError) => e.argument === 'k.shape'); // past maxLength
    await assert.rejects(cache.append(t(2, 3, 2), t(2, 3, 2)), (e: OutOfMemoryError) => e instanceof OutOfMemoryError && e.argument === 'k'); // 4 pages needed, 2 in the pool
    assert.deepEqual(cache.lengths, [0, 0], 'a refused call changes nothing');
    await cache.append(t(2, 2, 2), t(2, 2, 2));
    assert.deepEqual(cache.lengths, [2, 2]);
    cache.dispose();
    await assert.rejects(cache.forward(t(2, 1, 2)), (e: ValueError) => e.argument === 'cache');
  });
});
