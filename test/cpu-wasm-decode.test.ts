/**
 * The cpu decode kernel in WebAssembly (src/cpu/wasm/decode.ts) on shapes the other decode tests do not
 * reach: Nq from 1 to 16, GQA ratios 1 to 6, D not a multiple of 4, f16 and f32, K and V paged with odd
 * page sizes (pages handed out scrambled) or contiguous per head, staged row by row (Hkv of 3 and 8) or
 * as spans of a page (Hkv of 1 and 2, and contiguous), several
 * sequences of different lengths (one empty, one with fewer keys than queries), the window, ALiBi and the
 * soft-cap, a NaN in one query row, rows that see no key. Each case runs the kernel through the pool
 * (inline and on every worker) and is checked row by row against the float64 oracle under the error rule,
 * with standard attention in f32 arithmetic as yardstick (as modifiers-decode.test.ts: the cpu's standard
 * attention runs no variants); then task by task against the JavaScript decodeTask on the same shape:
 * the same partials written, each within a bound of the other's, and not bit for bit the same (the WASM
 * kernel ran, not a fallback). forward() and the KV cache take the WASM kernel too (setCpuKernels).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createKVCache, forward, type AttentionOptions, type DType, type Tensor } from '../src/index.js';
import { decodeModifiers, decodeRows, decodeScratch, decodeSplits, decodeTask, decodeTasks, decodeTile, mergeDecode, type DecodeArrays, type DecodeShape } from '../src/cpu/decode.js';
import { cpuDecodeFits } from '../src/cpu/index.js';
import { runJob, sharedBuffer, threadsFor, whole } from '../src/cpu/pool.js';
import { setCpuKernels, setWasmVariant, wasmDecode, wasmSupport } from '../src/cpu/wasm/index.js';
import { f16ToNumber, numberToF16 } from '../src/f16.js';
import { keysSeen, modifyRow } from '../src/modifiers.js';
import { checkForward, type Problem } from '../src/problem.js';
import { standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { bnhd } from './spec.js';
import { assertWithinRule, inputs, maxError, randomTensor, rows, type Case } from './util.js';

type Storage = Float32Array | Uint16Array;
type Variants = Pick<AttentionOptions, 'causal' | 'window' | 'softcap' | 'alibiSlopes'>;

interface Spec {
  dtype: 'f32' | 'f16';
  H: number;
  Hkv: number;
  Nq: number;
  D: number;
  lengths: number[];
  /** Tokens a page (paged), or 'contiguous': each head's keys one after the other (BHND, one page a row). */
  pages: number | 'contiguous';
  variants: Variants;
  /** Keys per tile, where not decodeTile(D): smaller tiles give more of them, and ragged splits. */
  Bc?: number;
  /** A NaN in q at (b, i, h). */
  nan?: [number, number, number];
}

const slopes = (H: number) => Float32Array.from({ length: H }, (_, h) => 0.3 / (h + 1));

const CASES: Spec[] = [
  { dtype: 'f32', H: 3, Hkv: 3, Nq: 1, D: 5, lengths: [33, 0, 100], pages: 7, variants: {}, Bc: 16 },
  { dtype: 'f16', H: 6, Hkv: 2, Nq: 3, D: 24, lengths: [0, 2, 149, 64], pages: 5, variants: { causal: true }, Bc: 16 },
  { dtype: 'f32', H: 6, Hkv: 1, Nq: 16, D: 64, lengths: [77, 500], pages: 13, variants: { causal: true } },
  { dtype: 'f16', H: 8, Hkv: 2, Nq: 8, D: 37, lengths: [300, 45], pages: 11, variants: { causal: true, window: [40, 0] }, Bc: 16 },
  { dtype: 'f32', H: 4, Hkv: 2, Nq: 2, D: 40, lengths: [260, 1], pages: 16, variants: { alibiSlopes: slopes(4), softcap: 5 } },
  { dtype: 'f16', H: 5, Hkv: 1, Nq: 4, D: 18, lengths: [150, 31], pages: 9, variants: { causal: true, window: [60, -1], alibiSlopes: slopes(5), softcap: 2 }, Bc: 16 },
  { dtype: 'f16', H: 32, Hkv: 8, Nq: 1, D: 128, lengths: [1000, 333], pages: 16, variants: {} },
  { dtype: 'f32', H: 4, Hkv: 2, Nq: 4, D: 32, lengths: [200, 150, 3], pages: 'contiguous', variants: { causal: true }, Bc: 16 },
  { dtype: 'f16', H: 2, Hkv: 1, Nq: 16, D: 64, lengths: [90], pages: 'contiguous', variants: {}, Bc: 16 },
  { dtype: 'f32', H: 10, Hkv: 2, Nq: 5, D: 7, lengths: [70, 20], pages: 3, variants: { softcap: 3 }, Bc: 16, nan: [1, 2, 3] },
];

const label = (c: Spec) =>
  `${c.dtype} H=${c.H} Hkv=${c.Hkv} Nq=${c.Nq} D=${c.D} lengths=${c.lengths.join('/')} pages=${c.pages}${c.Bc ? ` Bc=${c.Bc}` : ''} ${JSON.stringify({ ...c.variants, alibiSlopes: c.variants.alibiSlopes && 'per head' })}${c.nan ? ' NaN row' : ''}`;

/** A copy of `a` on a buffer the workers share. */
function shared<T extends Storage | Int32Array>(a: T): T {
  const copy = new (a.constructor as Uint16ArrayConstructor)(sharedBuffer(a.byteLength));
  copy.set(a as Uint16Array);
  return copy as unknown as T;
}

/**
 * K and V of every batch row as the kernel reads them, the addressing of DecodeShape, and each row's
 * keys as contiguous (1, L, Hkv, D) tensors for the oracle. Paged: pages handed out in a scrambled order.
 */
function keyStore(c: Spec, seed: number) {
  const { Hkv, D, dtype, lengths } = c;
  const B = lengths.length;
  const longest = Math.max(1, ...lengths);
  const pageSize = c.pages === 'contiguous' ? longest : c.pages;
  const maxPages = Math.ceil(longest / pageSize);
  const pages = B * maxPages;
  const kPool = randomTensor(dtype, [pages * pageSize * Hkv * D], seed).data as Storage;
  const vPool = randomTensor(dtype, [pages * pageSize * Hkv * D], seed + 1).data as Storage;
  // (pages, pageSize, Hkv, D), or (B, Hkv, longest, D) where contiguous
  const keys =
    c.pages === 'contiguous'
      ? { kvPage: Hkv * longest * D, kvRow: D, kvHead: longest * D, pageSize, maxPages }
      : { kvPage: pageSize * Hkv * D, kvRow: Hkv * D, kvHead: D, pageSize, maxPages };
  const table = new Int32Array(B * maxPages).fill(-1);
  const order = Array.from({ length: pages }, (_, i) => (c.pages === 'contiguous' ? i : (i * 7 + 3) % pages)); // 7 is prime to every page count here
  let next = 0;
  const history = lengths.map((L, b) => {
    for (let p = 0; p < Math.ceil(L / pageSize); p++) table[b * maxPages + p] = order[next++];
    const gather = (pool: Storage): Tensor => {
      const data = new (pool.constructor as Uint16ArrayConstructor)(L * Hkv * D);
      for (let t = 0; t < L; t++) {
        for (let hk = 0; hk < Hkv; hk++) {
          const at = table[b * maxPages + Math.floor(t / pageSize)] * keys.kvPage + (t % pageSize) * keys.kvRow + hk * keys.kvHead;
          data.set(pool.subarray(at, at + D) as Uint16Array, (t * Hkv + hk) * D);
        }
      }
      return { data, dtype, shape: [1, L, Hkv, D] };
    };
    return { k: gather(kPool), v: gather(vPool) };
  });
  return { kPool, vPool, table, keys, history };
}

/**
 * Standard attention in f32 arithmetic (BNHD, p's variants): every product and sum rounded to f32, out to
 * the storage dtype; modifiers-decode.test.ts's yardstick, for one batch row's problem.
 */
function f32Standard(p: Problem, q: Tensor, k: Tensor, v: Tensor): { out: Float64Array; lse: Float64Array } {
  const { H, Hkv, Nq, Nk, D } = p;
  const f = Math.fround;
  const [Q, K, V] = [toF64(q), toF64(k), toF64(v)];
  const out = new Float64Array(Nq * H * D);
  const lse = new Float64Array(H * Nq);
  const S = new Float64Array(Nk);
  const store = p.dtype === 'f16' ? (x: number) => f16ToNumber(numberToF16(x)) : f;
  for (let h = 0; h < H; h++) {
    const hk = Math.floor(h / (H / Hkv));
    for (let i = 0; i < Nq; i++) {
      const qo = (i * H + h) * D;
      for (let j = 0; j < Nk; j++) {
        let s = 0;
        for (let d = 0; d < D; d++) s = f(s + f(Q[qo + d] * K[(j * Hkv + hk) * D + d]));
        S[j] = f(s * p.scale);
      }
      modifyRow(p.mods, 0, h, i, 0, Nk, S, 0, Nq, Nk);
      let m = -Infinity;
      for (let j = 0; j < Nk; j++) m = Math.max(m, (S[j] = f(S[j])));
      if (m === -Infinity) {
        lse[h * Nq + i] = -Infinity;
        continue;
      }
      let l = 0;
      for (let j = 0; j < Nk; j++) l = f(l + (S[j] = f(Math.exp(S[j] - m))));
      lse[h * Nq + i] = f(m + f(Math.log(l)));
      for (let d = 0; d < D; d++) {
        let o = 0;
        for (let j = 0; j < Nk; j++) o = f(o + f(f(S[j] / l) * V[(j * Hkv + hk) * D + d]));
        out[qo + d] = store(o);
      }
    }
  }
  return { out, lse };
}

/** Entries of a and b (same length) where `drop` holds set to 0 in copies of both (a NaN row, checked apart). */
function without(a: Float64Array, b: Float64Array, drop: (e: number) => boolean): [Float64Array, Float64Array] {
  const [x, y] = [a.slice(), b.slice()];
  for (let e = 0; e < x.length; e++) if (drop(e)) x[e] = y[e] = 0;
  return [x, y];
}

/** One case's inputs, its DecodeShape (splits as for `threads`) and its arrays on shared memory. */
function setup(c: Spec, threads: number) {
  const { H, Hkv, Nq, D, dtype, lengths } = c;
  const B = lengths.length;
  const store = keyStore(c, 11);
  const q = randomTensor(dtype, [B, Nq, H, D], 7);
  if (c.nan) {
    const [b, i, h] = c.nan;
    (q.data as Storage)[((b * Nq + i) * H + h) * D + 1] = dtype === 'f16' ? 0x7e00 : NaN;
  }
  // The variants as a problem over any keys carries them (the band and the slopes do not depend on Nk).
  const p = checkForward(q, randomTensor(dtype, [B, 1, Hkv, D], 1), randomTensor(dtype, [B, 1, Hkv, D], 2), c.variants);
  const mods = decodeModifiers(p.mods, p.causal);
  const Bc = c.Bc ?? decodeTile(D);
  const { R, rowChunks } = decodeRows((H / Hkv) * Nq);
  const { splits, chunk } = decodeSplits(B * Hkv * rowChunks, keysSeen(mods, Nq, Math.max(...lengths)), Bc, threads);
  const s: DecodeShape = {
    B, H, Hkv, Nq, D, causal: p.causal, scale: p.scale,
    qBatch: Nq * H * D, qRow: H * D, qHead: D,
    ...store.keys, f16: dtype === 'f16', Bc, R, rowChunks, splits, chunk, ...(mods && { mods }),
  };
  const arrays = {
    q: shared(q.data as Storage),
    k: shared(store.kPool),
    v: shared(store.vPool),
    table: shared(store.table),
    lengths: shared(Int32Array.from(lengths)),
  };
  return { q, s, arrays, history: store.history };
}

describe('cpu decode kernel in WebAssembly', () => {
  test('the runtime has WebAssembly SIMD, so the decode kernel runs it', () => {
    assert.notEqual(wasmSupport(), 'none');
  });

  for (const c of CASES) {
    test(`against the float64 oracle, inline and on the pool: ${label(c)}`, async () => {
      const poolThreads = await threadsFor(Infinity);
      let splitsSeen = 0;
      for (const threads of [...new Set([1, poolThreads, 16])]) {
        const { q, s, arrays, history } = setup(c, threads);
        splitsSeen = Math.max(splitsSeen, s.splits);
        const t = s.f16 ? '.f16' : '';
        const rowsAll = s.B * s.H * s.Nq;
        const opart = sharedBuffer(rowsAll * s.splits * s.D * 8);
        const lpart = sharedBuffer(rowsAll * s.splits * 8);
        const buffers = {
          ['q' + t]: whole(arrays.q.buffer),
          ['k' + t]: whole(arrays.k.buffer),
          ['v' + t]: whole(arrays.v.buffer),
          'table.i32': whole(arrays.table.buffer),
          'lengths.i32': whole(arrays.lengths.buffer),
          'opart.f64': whole(opart),
          'lpart.f64': whole(lpart),
        };
        const workers = Math.min(threads, poolThreads);
        const scratch = Array.from({ length: workers }, () => whole(sharedBuffer(decodeScratch(s) * 8)));
        await runJob({ kernel: 'decode', shape: s, tasks: decodeTasks(s), buffers, scratch, counter: whole(sharedBuffer(4)) });
        const out: Tensor = { data: s.f16 ? new Uint16Array(q.data.length) : new Float32Array(q.data.length), dtype: c.dtype, shape: q.shape };
        const lse = new Float32Array(rowsAll);
        mergeDecode(s, new Float64Array(opart), new Float64Array(lpart), out.data as Storage, lse);
        for (let b = 0; b < s.B; b++) {
          const what = `${workers} thread(s), ${s.splits} split(s), row ${b}`;
          const qb = rows(q, b, 0, s.Nq);
          const ob = toF64(rows(out, b, 0, s.Nq));
          const lb = Float64Array.from(lse.subarray(b * s.H * s.Nq, (b + 1) * s.H * s.Nq));
          const { k, v } = history[b];
          if (c.lengths[b] === 0) {
            assert.ok(ob.every((x) => x === 0) && lb.every((x) => x === -Infinity), `${what}: a row with no key gives 0 and −∞`);
            continue;
          }
          const p = checkForward(qb, k, v, c.variants);
          const oracle = standardForward(p, toF64(qb), toF64(k), toF64(v));
          const std = f32Standard(p, qb, k, v);
          // A NaN row is NaN in out and lse, and nowhere else; the rule holds for the other rows.
          const nanHere = c.nan && c.nan[0] === b ? c.nan : undefined;
          const inNanRow = (e: number) => nanHere !== undefined && Math.floor(e / s.D) === nanHere[1] * s.H + nanHere[2];
          const lseNan = (e: number) => nanHere !== undefined && e === nanHere[2] * s.Nq + nanHere[1];
          if (nanHere) {
            assert.ok(ob.every((x, e) => Number.isNaN(x) === inNanRow(e)), `${what}: out NaN exactly in the NaN row`);
            assert.ok(lb.every((x, e) => Number.isNaN(x) === lseNan(e)), `${what}: lse NaN exactly in the NaN row`);
          }
          const [o1, o2] = without(ob, oracle.out, inNanRow);
          const [s1, s2] = without(std.out, oracle.out, inNanRow);
          const [l1, l2] = without(lb, oracle.lse, lseNan);
          const [m1, m2] = without(std.lse, oracle.lse, lseNan);
          assertWithinRule(`${what} out`, maxError(o1, o2), maxError(s1, s2), 2);
          assertWithinRule(`${what} lse`, maxError(l1, l2), maxError(m1, m2), 2);
          // A query that sees no key (none, or all before its diagonal): out 0, lse −∞, as the oracle says.
          for (let e = 0; e < lb.length; e++) if (oracle.lse[e] === -Infinity) assert.equal(lb[e], -Infinity, `${what}: lse ${e} sees no key`);
        }
      }
      assert.ok(splitsSeen > 1, 'some run splits the keys');
    });
  }

  for (const c of CASES) {
    test(`task by task beside the JavaScript decodeTask: ${label(c)}`, () => {
      const variants = wasmSupport() === 'relaxed' ? (['relaxed', 'simd'] as const) : (['simd'] as const);
      for (const variant of variants) {
        setWasmVariant(variant);
        try {
          const { s, arrays } = setup(c, 16);
          const rowsAll = s.B * s.H * s.Nq;
          const SENTINEL = 12345.5;
          const make = (): DecodeArrays => ({
            ...arrays,
            opart: new Float64Array(rowsAll * s.splits * s.D).fill(SENTINEL),
            lpart: new Float64Array(rowsAll * s.splits).fill(SENTINEL),
          });
          const [js, wa] = [make(), make()];
          const run = wasmDecode(s, wa);
          assert.ok(run, 'the WASM decode kernel can run here');
          const scratch = new Float64Array(decodeScratch(s));
          let differs = false;
          for (let t = 0; t < decodeTasks(s); t++) {
            decodeTask(s, js, t, scratch);
            run(t);
            for (let e = 0; e < js.lpart.length; e++) {
              const [a, b] = [js.lpart[e], wa.lpart[e]];
              const where = `task ${t} (${variant}), lse partial ${e}`;
              assert.equal(a === SENTINEL, b === SENTINEL, `${where}: written by both or neither`);
              assert.equal(Number.isNaN(a), Number.isNaN(b), `${where}: NaN in both or neither`);
              if (a === SENTINEL || Number.isNaN(a)) continue;
              if (a === -Infinity || b === -Infinity) assert.equal(a, b, `${where}: −∞ in both`);
              else assert.ok(Math.abs(a - b) <= 2e-6 * Math.max(1, Math.abs(a)), `${where}: ${a} against ${b}`);
              differs ||= a !== b;
              for (let x = 0; x < s.D; x++) {
                const [o, w] = [js.opart[e * s.D + x], wa.opart[e * s.D + x]];
                // O / l is a weighted mean of V (|V| < 6 here): P̃ and the 32-key sums in f32 move it by ~1e-7
                assert.ok(Math.abs(o - w) <= 4e-6 || (Number.isNaN(o) && Number.isNaN(w)), `${where}, O[${x}]: ${o} against ${w}`);
                differs ||= o !== w && !Number.isNaN(o);
              }
            }
          }
          assert.ok(differs, 'the two kernels round differently: results that differ show the WASM one ran');
        } finally {
          setWasmVariant(undefined);
        }
      }
    });
  }

  test('forward() (both layouts, f32 and f16, Nq 1 to 16) and the KV cache take the WASM decode kernel', async () => {
    const cases: [DType, 'BNHD' | 'BHND', number, number][] = [
      ['f32', 'BNHD', 1, 8],
      ['f32', 'BHND', 16, 2],
      ['f16', 'BHND', 8, 4],
      ['f16', 'BNHD', 2, 5],
    ];
    for (const [dtype, layout, Nq, G] of cases) {
      const c: Case = { B: 2, H: G * 2, Hkv: 2, Nq, Nk: 777, D: 48 };
      const { q, k, v } = inputs(c, dtype, layout);
      const base = inputs(c, dtype, 'BNHD');
      const options = { causal: true, layout, backend: 'cpu' } as const;
      const p = checkForward(q, k, v, options);
      assert.ok(cpuDecodeFits(p), 'forward() takes the decode kernel');
      const got = await forward(q, k, v, options);
      setCpuKernels('js');
      let js;
      try {
        js = await forward(q, k, v, options);
      } finally {
        setCpuKernels('wasm');
      }
      const oracle = standardForward(checkForward(base.q, base.k, base.v, { causal: true }), toF64(base.q), toF64(base.k), toF64(base.v));
      const std = await forward(q, k, v, { ...options, algorithm: 'standard' });
      const what = `forward ${dtype} ${layout} Nq=${Nq} G=${G}`;
      assertWithinRule(`${what} out`, maxError(bnhd(got.out, layout), oracle.out), maxError(bnhd(std.out, layout), oracle.out), 2);
      assertWithinRule(`${what} lse`, maxError(got.lse, oracle.lse), maxError(std.lse, oracle.lse), 2);
      const differs = maxError(got.out, toF64(js.out)) > 0 || maxError(got.lse, toF64(js.lse)) > 0;
      assert.ok(differs, `${what}: the WASM kernel's results differ from the JavaScript kernel's in their rounding`);
    }

    const [Hkv, D, H, Nq] = [2, 40, 8, 1];
    const cache = await createKVCache({ batch: 2, kvHeads: Hkv, headDim: D, maxLength: 600, dtype: 'f32', backend: 'cpu', pageSize: 7 });
    const k = randomTensor('f32', [2, 555, Hkv, D], 4);
    const v = randomTensor('f32', [2, 555, Hkv, D], 5);
    await cache.append(k, v);
    const q = randomTensor('f32', [2, Nq, H, D], 6);
    const got = await cache.forward(q);
    setCpuKernels('js');
    let js;
    try {
      js = await cache.forward(q);
    } finally {
      setCpuKernels('wasm');
    }
    const p = checkForward(q, k, v, {});
    const oracle = standardForward(p, toF64(q), toF64(k), toF64(v));
    const std = await forward(q, k, v, { backend: 'cpu', algorithm: 'standard' });
    assertWithinRule('cache out', maxError(got.out as Tensor, oracle.out), maxError(std.out, oracle.out), 2);
    assertWithinRule('cache lse', maxError(got.lse as Tensor, oracle.lse), maxError(std.lse, oracle.lse), 2);
    assert.ok(maxError(got.out as Tensor, toF64(js.out as Tensor)) > 0, 'the cache ran the WASM kernel');
    cache.dispose();
  });
});
