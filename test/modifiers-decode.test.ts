/**
 * The variants of a decode step on the split-KV decode schedule: sliding window, soft-capping and ALiBi
 * (alone and together, with causal) on the cpu decode kernel and on both webgpu decode kernels (each
 * forced), through forward()'s decode route and through the KV cache (contiguous and paged, slots of
 * different lengths, single-token and speculative steps), GQA, Nq = 1 and 4, f32 and f16. Every row is
 * checked against the float64 oracle with the same variants over the equivalent full problem, under the
 * error rule, with standard attention in f32 arithmetic as yardstick (no backend's standard attention runs
 * the variants yet). Keys outside every window are never read: NaNs there change nothing. Calls with the
 * variants the decode kernels leave to the prefill kernels (bias, mask, block mask, dropout) stay off the
 * decode schedule, and the cache's variant options are checked as forward()'s.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createKVCache, DTypeError, KVCache, ShapeError, ValueError, type AttentionOptions, type DType, type Tensor } from '../src/index.js';
import { cpuDecodeFits, cpuDecodeForward } from '../src/cpu/index.js';
import { decodeModifiers } from '../src/cpu/decode.js';
import { f16ToNumber, numberToF16 } from '../src/f16.js';
import { cacheGeometry, type CacheCallOptions } from '../src/kvcache.js';
import { memory } from '../src/memory.js';
import { keysSeen, modifyRow } from '../src/modifiers.js';
import { checkForward, type Problem } from '../src/problem.js';
import { standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { WebgpuCacheStore } from '../src/webgpu/cache.js';
import { decodeFits, type DecodeKernels } from '../src/webgpu/decode.js';
import { defaultGpu } from '../src/webgpu/device.js';
import { webgpuDecodeForward } from '../src/webgpu/index.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, inputs, maxError, concat, randomTensor, type Case } from './util.js';

type Variants = Pick<AttentionOptions, 'causal' | 'window' | 'softcap' | 'alibiSlopes'>;

/** The variant sets of a decode step, for H query heads and B batch rows. */
function variantSets(B: number, H: number): Record<string, Variants> {
  const slopes = Float32Array.from({ length: H }, (_, h) => 2 ** (-(h + 1)));
  return {
    'window (left)': { window: [24, -1] },
    'window [40, 1]': { window: [40, 1] },
    'window + causal': { window: [40, -1], causal: true },
    alibi: { alibiSlopes: slopes },
    'alibi (per batch) + causal': { alibiSlopes: Float32Array.from({ length: B * H }, (_, e) => 0.1 * (e + 1)), causal: true },
    softcap: { softcap: 1.5 },
    'softcap + alibi + window + causal': { softcap: 2, alibiSlopes: Float32Array.from({ length: H }, (_, h) => 0.05 * (h + 1)), window: [30, 0], causal: true },
  };
}

/**
 * Standard attention in f32 arithmetic, BNHD, with p's variants: S = scale·QKᵀ and P = softmax(S)
 * materialised, every product and sum rounded to f32 (the variants applied to the f32 scores, as
 * src/modifiers.ts's modifyRow), out rounded to the storage dtype. The yardstick of the error rule.
 */
function f32Standard(p: Problem, q: Tensor, k: Tensor, v: Tensor): { out: Float64Array; lse: Float64Array } {
  const { B, H, Hkv, Nq, Nk, D } = p;
  const f = Math.fround;
  const [Q, K, V] = [toF64(q), toF64(k), toF64(v)];
  const out = new Float64Array(B * Nq * H * D);
  const lse = new Float64Array(B * H * Nq);
  const S = new Float64Array(Nk);
  const store = p.dtype === 'f16' ? (x: number) => f16ToNumber(numberToF16(x)) : f;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / (H / Hkv));
      for (let i = 0; i < Nq; i++) {
        const qo = ((b * Nq + i) * H + h) * D;
        for (let j = 0; j < Nk; j++) {
          const ko = ((b * Nk + j) * Hkv + hk) * D;
          let s = 0;
          for (let d = 0; d < D; d++) s = f(s + f(Q[qo + d] * K[ko + d]));
          S[j] = f(s * p.scale);
        }
        modifyRow(p.mods, b, h, i, 0, Nk, S, 0, Nq, Nk);
        let m = -Infinity;
        for (let j = 0; j < Nk; j++) m = Math.max(m, (S[j] = f(S[j])));
        if (m === -Infinity) {
          lse[(b * H + h) * Nq + i] = -Infinity;
          continue;
        }
        let l = 0;
        for (let j = 0; j < Nk; j++) l = f(l + (S[j] = f(Math.exp(S[j] - m))));
        lse[(b * H + h) * Nq + i] = f(m + f(Math.log(l)));
        for (let d = 0; d < D; d++) {
          let o = 0;
          for (let j = 0; j < Nk; j++) o = f(o + f(f(S[j] / l) * V[((b * Nk + j) * Hkv + hk) * D + d]));
          out[qo + d] = store(o);
        }
      }
    }
  }
  return { out, lse };
}

/** Check out and lse (BNHD) of a call against the oracle of p, under the rule with f32Standard as yardstick. */
function checkAgainstOracle(label: string, p: Problem, q: Tensor, k: Tensor, v: Tensor, out: Tensor | Float64Array, lse: Tensor | Float64Array): void {
  const oracle = standardForward(p, toF64(q), toF64(k), toF64(v));
  const std = f32Standard(p, q, k, v);
  assertWithinRule(`${label} out`, maxError(out, oracle.out), maxError(std.out, oracle.out), 2);
  assertWithinRule(`${label} lse`, maxError(lse, oracle.lse), maxError(std.lse, oracle.lse), 2);
}

/** The decode route of forward() on one backend: the cpu decode kernel, or a webgpu decode kernel forced. */
type Route = { backend: 'cpu' } | { backend: 'webgpu'; kernels: DecodeKernels };
const ROUTES: Route[] = BACKENDS.flatMap((b): Route[] =>
  b === 'webgpu' ? [{ backend: 'webgpu', kernels: 'portable' }, { backend: 'webgpu', kernels: 'subgroup' }, { backend: 'webgpu', kernels: 'matrix' }] : [{ backend: 'cpu' }],
);
const NO_MATRICES = 'the adapter has no f16 subgroup matrices (the subgroup-matrix decode kernel runs on GPUs that list them)';
/** The matrix route on an adapter without f16 subgroup matrices (lavapipe): nothing of its own to run. */
async function withoutMatrices(r: Route): Promise<boolean> {
  return r.backend === 'webgpu' && r.kernels === 'matrix' && !(await defaultGpu()).matrixF16;
}
const routeName = (r: Route) => (r.backend === 'cpu' ? 'cpu' : `webgpu (${r.kernels} kernel)`);

/** forward() on the decode route (asserting that the call takes it). */
async function decodeForward(r: Route, p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
  if (r.backend === 'cpu') {
    assert.ok(cpuDecodeFits(p), 'the cpu decode kernel takes the call');
    return cpuDecodeForward(p, q, k, v);
  }
  const gpu = await defaultGpu();
  const choice = decodeFits(p, gpu, r.kernels);
  assert.ok(choice, 'a webgpu decode kernel takes the call');
  if (r.kernels === 'subgroup' && p.D % 4 === 0 && gpu.subgroupSize !== undefined) assert.equal(choice.kernel, 'decodeSubgroup');
  if (r.kernels === 'matrix' && p.dtype === 'f16' && p.D % 16 === 0 && (p.H / p.Hkv) * p.Nq > 1) assert.equal(choice.kernel, 'decodeMatrix');
  return (await webgpuDecodeForward(p, gpu, choice, q, k, v)) as { out: Tensor; lse: Tensor };
}

const CASES: (Case & { dtype: DType })[] = [
  { B: 2, H: 8, Hkv: 2, Nq: 1, Nk: 700, D: 32, dtype: 'f32' },
  { B: 1, H: 4, Hkv: 1, Nq: 4, Nk: 300, D: 64, dtype: 'f16' },
];

describe('decode schedule with variants', () => {
  reportWebgpuSkip();
  for (const route of ROUTES) {
    for (const c of CASES) {
      test(`${routeName(route)} ${c.dtype} B=${c.B} H=${c.H} Hkv=${c.Hkv} Nq=${c.Nq} Nk=${c.Nk} D=${c.D}: each variant set against the oracle`, async (t) => {
        if (await withoutMatrices(route)) return t.skip(NO_MATRICES);
        const { q, k, v } = inputs(c, c.dtype, 'BNHD');
        for (const [name, variants] of Object.entries(variantSets(c.B, c.H))) {
          const p = checkForward(q, k, v, variants);
          const r = await decodeForward(route, p, q, k, v);
          checkAgainstOracle(`${routeName(route)} ${name}`, p, q, k, v, r.out, r.lse);
        }
      });
    }

    test(`${routeName(route)}: keys before every query's window are never read (NaN there changes nothing), split over the window`, async (t) => {
      if (await withoutMatrices(route)) return t.skip(NO_MATRICES);
      const c: Case = { B: 2, H: 4, Hkv: 2, Nq: 4, Nk: 3000, D: 16 };
      // f16 for the subgroup-matrix kernel (f16 only), whose tiles of 16 keys start at the window's start.
      const dtype = route.backend === 'webgpu' && route.kernels === 'matrix' ? 'f16' : 'f32';
      const NAN = dtype === 'f16' ? 0x7e00 : NaN;
      const { q, k, v } = inputs(c, dtype, 'BNHD');
      const left = 100;
      const options: Variants = { window: [left, -1], causal: true, softcap: 3 };
      const p = checkForward(q, k, v, options);
      const clean = await decodeForward(route, p, q, k, v);
      checkAgainstOracle(`${routeName(route)} window ${left}`, p, q, k, v, clean.out, clean.lse);
      // No query sees a key before Nk − Nq − left.
      const [kn, vn] = [k.data.slice() as Float32Array | Uint16Array, v.data.slice() as Float32Array | Uint16Array];
      kn.fill(NAN, 0, (c.Nk - c.Nq - left) * c.Hkv * c.D);
      vn.fill(NAN, 0, (c.Nk - c.Nq - left) * c.Hkv * c.D);
      for (let b = 1; b < c.B; b++) {
        kn.fill(NAN, b * c.Nk * c.Hkv * c.D, (b * c.Nk + c.Nk - c.Nq - left) * c.Hkv * c.D);
        vn.fill(NAN, b * c.Nk * c.Hkv * c.D, (b * c.Nk + c.Nk - c.Nq - left) * c.Hkv * c.D);
      }
      const poisoned = await decodeForward(route, p, q, { ...k, data: kn }, { ...v, data: vn });
      assert.deepEqual(Array.from(poisoned.out.data), Array.from(clean.out.data), 'out as without the NaNs');
      assert.deepEqual(Array.from(poisoned.lse.data), Array.from(clean.lse.data), 'lse as without the NaNs');
    });
  }

  test('the splits cover the keys some query sees: left + Nq with a window, however long the sequence', () => {
    const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 4, Nk: 3000, D: 8 };
    const { q, k, v } = inputs(c, 'f32', 'BNHD');
    for (const [options, keys] of [
      [{ window: [100, 0], causal: true }, 104],
      [{ window: [100, -1] }, 104],
      [{ window: [5000, -1] }, 3000],
      [{ window: [-1, 2] }, 3000],
      [{ causal: true, softcap: 2 }, 3000],
    ] as const) {
      const p = checkForward(q, k, v, options);
      assert.equal(keysSeen(p.mods, p.Nq, p.Nk), keys, `webgpu ${JSON.stringify(options)}`);
      assert.equal(keysSeen(decodeModifiers(p.mods, p.causal), p.Nq, p.Nk), keys, `cpu ${JSON.stringify(options)}`);
    }
  });

  test('calls with bias, mask, block mask or dropout stay off the decode schedule (the prefill kernels run them)', async () => {
    const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 1, Nk: 40, D: 8 };
    const { q, k, v } = inputs(c, 'f32', 'BNHD');
    const off: Record<string, AttentionOptions> = {
      bias: { bias: randomTensor('f32', [1, 2, 1, 40], 5) },
      mask: { mask: { data: new Uint8Array(40).fill(1), shape: [1, 1, 1, 40] } },
      blockMask: { blockMask: { data: Uint8Array.of(1, 1), shape: [1, 1, 1, 2], blockSize: [1, 32] } },
      dropout: { dropout: { p: 0.1, seed: 1 } },
    };
    const on: Record<string, AttentionOptions> = { window: { window: [8, 0] }, softcap: { softcap: 5 }, alibi: { alibiSlopes: Float32Array.of(0.5, 0.25) } };
    const gpu = BACKENDS.includes('webgpu') ? await defaultGpu() : undefined;
    for (const [name, o] of Object.entries(off)) {
      const p = checkForward(q, k, v, o);
      assert.equal(cpuDecodeFits(p), false, `cpu: ${name}`);
      if (gpu) assert.equal(decodeFits(p, gpu), undefined, `webgpu: ${name}`);
    }
    for (const [name, o] of Object.entries(on)) {
      const p = checkForward(q, k, v, o);
      assert.equal(cpuDecodeFits(p), true, `cpu: ${name}`);
      if (gpu) assert.ok(decodeFits(p, gpu)?.params.mods, `webgpu: ${name}`);
    }
  });
});

/** Rows [0, N) of batch row b of a (B, N, heads, D) tensor, as (1, N, heads, D). */
function row(t: Tensor, b: number): Tensor {
  const [, N, heads, D] = t.shape;
  const w = N * heads * D;
  return { data: t.data.slice(b * w, (b + 1) * w) as Tensor['data'], dtype: t.dtype, shape: [1, N, heads, D] };
}


describe('KV cache with variants', () => {
  reportWebgpuSkip();
  const runs = BACKENDS.flatMap((backend) => (backend === 'webgpu' ? [['webgpu', 'portable'], ['webgpu', 'subgroup'], ['webgpu', 'matrix']] : [['cpu', 'auto']]) as ['cpu' | 'webgpu', DecodeKernels][]);
  for (const [backend, kernels] of runs) {
    for (const [dtype, D, pageSize] of [
      ['f32', 32, undefined],
      ['f16', 64, 16],
    ] as const) {
      test(`${backend}${backend === 'webgpu' ? ` (${kernels} kernel)` : ''} ${dtype} D=${D} ${pageSize ? `paged (${pageSize} tokens a page)` : 'contiguous'}: slots of different lengths, Nq = 1 and 4, each variant set`, async (t) => {
        if (await withoutMatrices({ backend, kernels })) return t.skip(NO_MATRICES);
        const [H, Hkv] = [6, 2];
        const config = { batch: 3, kvHeads: Hkv, headDim: D, maxLength: 200, dtype, backend, pageSize };
        const g = cacheGeometry(config);
        const cache = backend === 'cpu' ? await createKVCache(config) : new KVCache(g, new WebgpuCacheStore(g, await defaultGpu(), memory, kernels), memory);
        const history: [Tensor | undefined, Tensor | undefined][] = [[undefined, undefined], [undefined, undefined], [undefined, undefined]];
        const append = async (slots: number[], n: number, seed: number) => {
          const k = randomTensor(dtype, [slots.length, n, Hkv, D], seed);
          const v = randomTensor(dtype, [slots.length, n, Hkv, D], seed + 1);
          await cache.append(k, v, { sequences: slots });
          slots.forEach((s, b) => (history[s] = [concat(history[s][0], row(k, b)), concat(history[s][1], row(v, b))]));
        };
        await append([0], 150, 1);
        await append([1], 7, 3);
        await append([2], 61, 5);
        let seed = 10;
        for (const [name, variants] of Object.entries(variantSets(3, H))) {
          for (const Nq of [1, 4]) {
            // A step: Nq new tokens for every slot, then their queries against everything cached.
            await append([0, 1, 2], Nq, (seed += 2));
            const q = randomTensor(dtype, [3, Nq, H, D], (seed += 1));
            const r = await cache.forward(q, undefined, undefined, variants as CacheCallOptions);
            for (let b = 0; b < 3; b++) {
              const [k, v] = history[b];
              const slopes = variants.alibiSlopes;
              const own = slopes && slopes.length === 3 * H ? { alibiSlopes: slopes.subarray(b * H, (b + 1) * H) } : {};
              const p = checkForward(row(q, b), k!, v!, { ...variants, ...own });
              const lse = Float64Array.from((r.lse.data as Float32Array).subarray(b * H * Nq, (b + 1) * H * Nq));
              checkAgainstOracle(`${backend} ${name} Nq=${Nq} slot ${b} (${k!.shape[1]} keys)`, p, row(q, b), k!, v!, row(r.out as Tensor, b), lse);
            }
          }
        }
        cache.dispose();
      });
    }
  }

  test('the cache checks window, softcap and alibiSlopes as forward() does; a refused call changes nothing', async () => {
    const cache = await createKVCache({ batch: 2, kvHeads: 1, headDim: 8, maxLength: 8, backend: 'cpu', pageSize: 2 });
    const t = (B: number, N: number, heads: number) => randomTensor('f32', [B, N, heads, 8], 1);
    const call = (o: unknown) => cache.forward(t(2, 1, 2), t(2, 1, 1), t(2, 1, 1), o as CacheCallOptions);
    await assert.rejects(call({ window: [-2, 0] }), (e: ValueError) => e instanceof ValueError && e.argument === 'options.window');
    await assert.rejects(call({ window: [1] }), (e: ValueError) => e instanceof ValueError && e.argument === 'options.window');
    await assert.rejects(call({ softcap: -1 }), (e: ValueError) => e instanceof ValueError && e.argument === 'options.softcap');
    await assert.rejects(call({ alibiSlopes: Float64Array.of(1, 2) }), (e: DTypeError) => e instanceof DTypeError && e.argument === 'options.alibiSlopes');
    await assert.rejects(call({ alibiSlopes: Float32Array.of(1, 2, 3) }), (e: ShapeError) => e instanceof ShapeError && e.argument === 'options.alibiSlopes');
    await assert.rejects(call({ bias: t(1, 1, 1) }), (e: ValueError) => e instanceof ValueError && e.argument === 'options.bias');
    assert.deepEqual(cache.lengths, [0, 0], 'refused calls append nothing');
    assert.equal(cache.freePages, 8, 'refused calls take no page');
    await call({ window: [1, 0], softcap: 2, alibiSlopes: Float32Array.of(0.5, 0.25, 0.125, 0.0625) }); // B·H slopes
    assert.deepEqual(cache.lengths, [1, 1]);
    cache.dispose();
  });
});
