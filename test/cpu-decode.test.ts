/**
 * The cpu decode kernel (src/cpu/decode.ts) on the paths the decode and KV cache specs do not force: many
 * splits with ragged ends, on this thread and on the worker pool, K and V paged with a page size that
 * divides neither the tile nor the split, f16 and f32, a slot with no key, causal with more queries than
 * keys, the NaN rule, and forward() on K and V that live on shared memory (read by every worker). Every
 * row is checked against the float64 oracle under the error rule, with the cpu backend's standard
 * attention on the same inputs as yardstick.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createKVCache, forward, type Tensor } from '../src/index.js';
import { DECODE_MAX_QUERIES, decodeScratch, decodeTasks, mergeDecode, type DecodeShape } from '../src/cpu/decode.js';
import { cpuDecodeFits } from '../src/cpu/index.js';
import { runJob, sharedBuffer, threadsFor, whole } from '../src/cpu/pool.js';
import { checkForward } from '../src/problem.js';
import { standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { assertWithinRule, maxError, randomTensor, rows } from './util.js';

type Storage = Float32Array | Uint16Array;

/** A copy of `a` on a buffer the workers share. */
function shared<T extends Storage | Int32Array>(a: T): T {
  const copy = new (a.constructor as Uint16ArrayConstructor)(sharedBuffer(a.byteLength));
  copy.set(a as Uint16Array);
  return copy as unknown as T;
}


/**
 * Check batch row b of (out, lse) against attention of its queries over `k` and `v` (1, L, Hkv, D):
 * the oracle, and the error rule against the cpu's standard attention; no key at all: 0 and −∞.
 * `scale`: the softmax scale (default 1/√D).
 */
async function checkRow(label: string, q: Tensor, out: Tensor, lse: Float32Array, b: number, k: Tensor | undefined, v: Tensor | undefined, causal: boolean, scale?: number) {
  const [, Nq, H] = q.shape;
  const ob = rows(out, b, 0, Nq);
  const lb = Float64Array.from(lse.subarray(b * H * Nq, (b + 1) * H * Nq));
  if (!k || !v) {
    assert.ok(toF64(ob).every((x) => x === 0) && lb.every((x) => x === -Infinity), `${label}: a row with no key gives 0 and −∞`);
    return;
  }
  const qb = rows(q, b, 0, Nq);
  const p = checkForward(qb, k, v, { causal, scale });
  const oracle = standardForward(p, toF64(qb), toF64(k), toF64(v));
  const std = await forward(qb, k, v, { causal, scale, backend: 'cpu', algorithm: 'standard' });
  assertWithinRule(`${label} row ${b} out`, maxError(ob, oracle.out), maxError(std.out, oracle.out), 2);
  assertWithinRule(`${label} row ${b} lse`, maxError(lb, oracle.lse), maxError(std.lse, oracle.lse), 2);
}

/**
 * A paged pool (pages of `pageSize` tokens, handed out in a scrambled order) holding each row's keys,
 * its block table, and each row's K and V as contiguous tensors for the oracle.
 */
function pagedPool(dtype: 'f32' | 'f16', lengths: number[], Hkv: number, D: number, pageSize: number, seed: number) {
  const maxPages = Math.max(1, ...lengths.map((L) => Math.ceil(L / pageSize)));
  const pages = lengths.length * maxPages;
  const width = Hkv * D;
  const kPool = randomTensor(dtype, [pages, pageSize, Hkv, D], seed).data as Storage;
  const vPool = randomTensor(dtype, [pages, pageSize, Hkv, D], seed + 1).data as Storage;
  const table = new Int32Array(lengths.length * maxPages).fill(-1);
  const order = Array.from({ length: pages }, (_, i) => (i * 7 + 3) % pages); // 7 is prime to every page count used here
  let next = 0;
  const history = lengths.map((L, b) => {
    if (L === 0) return [undefined, undefined] as const;
    for (let p = 0; p < Math.ceil(L / pageSize); p++) table[b * maxPages + p] = order[next++];
    const gather = (pool: Storage): Tensor => {
      const data = new (pool.constructor as Uint16ArrayConstructor)(L * width);
      for (let t = 0; t < L; t++) {
        const at = (table[b * maxPages + Math.floor(t / pageSize)] * pageSize + (t % pageSize)) * width;
        data.set(pool.subarray(at, at + width) as Uint16Array, t * width);
      }
      return { data, dtype, shape: [1, L, Hkv, D] };
    };
    return [gather(kPool), gather(vPool)] as const;
  });
  return { kPool, vPool, table, maxPages, history };
}

for (const dtype of ['f32', 'f16'] as const) {
  for (const causal of [false, true]) {
    test(`kernel, ${dtype} causal=${causal}: 5 splits of 32 keys (the last ragged), pages of 5 tokens, an empty row, Nq > length, inline and on the pool`, async () => {
      // Rows of 0, 2 (fewer keys than queries), 149 (ragged: not a multiple of the 32-key split, an odd last tile) and 64 keys.
      const lengths = [0, 2, 149, 64];
      const [B, H, Hkv, Nq, D, pageSize, Bc] = [lengths.length, 6, 2, 3, 24, 5, 16];
      const { kPool, vPool, table, maxPages, history } = pagedPool(dtype, lengths, Hkv, D, pageSize, 3);
      const q = randomTensor(dtype, [B, Nq, H, D], 1);
      const s: DecodeShape = {
        B, H, Hkv, Nq, D, causal, scale: 0.3,
        qBatch: Nq * H * D, qRow: H * D, qHead: D,
        kvPage: pageSize * Hkv * D, kvRow: Hkv * D, kvHead: D, pageSize, maxPages,
        f16: dtype === 'f16', Bc, R: 4, rowChunks: 3, splits: 5, chunk: 2 * Bc, // G·Nq = 9 rows in chunks of 4: the last has 1
      };
      const t = dtype === 'f16' ? '.f16' : '';
      const poolThreads = await threadsFor(Infinity);
      for (const threads of [...new Set([1, poolThreads])]) {
        const opart = sharedBuffer(B * H * Nq * s.splits * D * 8);
        const lpart = sharedBuffer(B * H * Nq * s.splits * 8);
        const buffers = {
          ['q' + t]: whole(shared(q.data as Storage).buffer),
          ['k' + t]: whole(shared(kPool).buffer),
          ['v' + t]: whole(shared(vPool).buffer),
          'table.i32': whole(shared(table).buffer),
          'lengths.i32': whole(shared(Int32Array.from(lengths)).buffer),
          'opart.f64': whole(opart),
          'lpart.f64': whole(lpart),
        };
        const scratch = Array.from({ length: threads }, () => whole(sharedBuffer(decodeScratch(s) * 8)));
        await runJob({ kernel: 'decode', shape: s, tasks: decodeTasks(s), buffers, scratch, counter: whole(sharedBuffer(4)) });
        const out: Tensor = { data: dtype === 'f16' ? new Uint16Array(q.data.length) : new Float32Array(q.data.length), dtype, shape: q.shape };
        const lse = new Float32Array(B * H * Nq);
        mergeDecode(s, new Float64Array(opart), new Float64Array(lpart), out.data as Storage, lse);
        for (let b = 0; b < B; b++) {
          const [k, v] = history[b];
          await checkRow(`${threads} thread(s)`, q, out, lse, b, k, v, causal, s.scale);
        }
        if (causal) {
          // Row 1 holds 2 keys for 3 queries: query 0 sees none.
          for (let h = 0; h < H; h++) assert.equal(lse[(1 * H + h) * Nq], -Infinity, 'query 0 of row 1 sees no key');
        }
      }
    });
  }
}

test('KV cache, f16, pages of 48 tokens: slots of 0, 4100 and 1234 keys on every worker, decode and a causal speculative step', async () => {
  const [H, Hkv, D, pageSize] = [8, 2, 64, 48];
  const cache = await createKVCache({ batch: 3, kvHeads: Hkv, headDim: D, maxLength: 4200, dtype: 'f16', backend: 'cpu', pageSize });
  const history: [Tensor | undefined, Tensor | undefined][] = [[undefined, undefined], [undefined, undefined], [undefined, undefined]];
  const append = async (slot: number, n: number, seed: number) => {
    const k = randomTensor('f16', [1, n, Hkv, D], seed);
    const v = randomTensor('f16', [1, n, Hkv, D], seed + 1);
    await cache.append(k, v, { sequences: [slot] });
    history[slot] = [k, v];
  };
  await append(1, 4100, 10);
  await append(2, 1234, 20);
  for (const [Nq, causal] of [
    [1, false],
    [3, true],
  ] as const) {
    const q = randomTensor('f16', [3, Nq, H, D], 30 + Nq);
    const r = await cache.forward(q, undefined, undefined, { causal });
    for (let b = 0; b < 3; b++) await checkRow(`cache Nq=${Nq}`, q, r.out as Tensor, r.lse.data as Float32Array, b, ...history[b], causal);
  }
  cache.dispose();
});

test('forward(), f32, K and V on shared memory (every worker reads them): GQA 4:1, Nk = 5000, Nq = 2 causal', async () => {
  const [B, H, Hkv, Nq, Nk, D] = [1, 8, 2, 2, 5000, 64];
  const q = randomTensor('f32', [B, Nq, H, D], 1);
  const k = randomTensor('f32', [B, Nk, Hkv, D], 2);
  const v = randomTensor('f32', [B, Nk, Hkv, D], 3);
  const ks = { ...k, data: shared(k.data as Float32Array) };
  const vs = { ...v, data: shared(v.data as Float32Array) };
  const r = await forward(q, ks, vs, { causal: true, backend: 'cpu' });
  await checkRow('shared K/V', q, r.out, r.lse.data as Float32Array, 0, k, v, true);
});

test('forward() on the decode kernel: a NaN in one query row stays in that row; rows that see no key give 0 and −∞', async () => {
  const [B, H, Hkv, Nq, Nk, D] = [2, 4, 2, 12, 5, 16];
  const q = randomTensor('f32', [B, Nq, H, D], 1);
  const k = randomTensor('f32', [B, Nk, Hkv, D], 2);
  const v = randomTensor('f32', [B, Nk, Hkv, D], 3);
  const [b0, i0, h0] = [1, 9, 2];
  (q.data as Float32Array)[((b0 * Nq + i0) * H + h0) * D + 3] = NaN;
  const r = await forward(q, k, v, { causal: true, backend: 'cpu' });
  const out = toF64(r.out);
  const lse = r.lse.data as Float32Array;
  const p = checkForward(q, k, v, { causal: true });
  const ref = standardForward(p, toF64(q), toF64(k), toF64(v));
  for (let b = 0; b < B; b++)
    for (let i = 0; i < Nq; i++)
      for (let h = 0; h < H; h++) {
        const L = lse[(b * H + h) * Nq + i];
        const row = out.subarray(((b * Nq + i) * H + h) * D, ((b * Nq + i) * H + h + 1) * D);
        if (b === b0 && i === i0 && h === h0) assert.ok(Number.isNaN(L) && row.every(Number.isNaN), 'the NaN row is NaN');
        else if (i < Nq - Nk) assert.ok(L === -Infinity && row.every((x) => x === 0), `query ${i} sees no key`);
        else assert.ok(Math.abs(L - ref.lse[(b * H + h) * Nq + i]) < 1e-5 && row.every(Number.isFinite), `row b=${b} i=${i} h=${h}`);
      }
});

test('forward() takes the decode kernel for flash with Nq up to 16, as measured', () => {
  const fits = (dtype: 'f32' | 'f16', Nq: number, algorithm: 'flash' | 'standard' = 'flash') => {
    const q = randomTensor(dtype, [1, Nq, 4, 8], 1);
    const kv = randomTensor(dtype, [1, 40, 2, 8], 2);
    return cpuDecodeFits(checkForward(q, kv, kv, { algorithm }));
  };
  assert.deepEqual(DECODE_MAX_QUERIES, { f32: 16, f16: 16 });
  assert.ok(fits('f32', 1) && fits('f32', 16) && !fits('f32', 17));
  assert.ok(fits('f16', 1) && fits('f16', 16) && !fits('f16', 17));
  assert.ok(!fits('f32', 1, 'standard'), 'the standard baseline stays the baseline');
});
