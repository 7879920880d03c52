/**
 * forward() on the split-KV decode schedule (few queries against many keys): webgpu chooses it by itself
 * for Nq ≤ 16; checked against the float64 oracle under the error rule on every backend, with splits
 * (long key ranges), GQA groups, ragged D, both layouts, causal and the NaN rule.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { forward, type DType, type Layout } from '../src/index.js';
import { checkForward } from '../src/problem.js';
import { standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { decodeChoice, decodeFits, decodePlan, splitPlan, type DecodeShape } from '../src/webgpu/decode.js';
import type { Gpu } from '../src/webgpu/device.js';
import { webgpuDecodeForward } from '../src/webgpu/index.js';
import { defaultGpu } from '../src/webgpu/device.js';
import { BACKENDS, checkInputs, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, inputs, maxError, relayout, type Case } from './util.js';

const CASES: (Case & { dtype: DType; layout: Layout; causal: boolean })[] = [
  { B: 2, H: 8, Hkv: 2, Nq: 1, Nk: 3000, D: 64, dtype: 'f16', layout: 'BNHD', causal: false },
  { B: 1, H: 4, Hkv: 1, Nq: 5, Nk: 1100, D: 40, dtype: 'f32', layout: 'BHND', causal: true },
  { B: 3, H: 3, Hkv: 3, Nq: 16, Nk: 257, D: 7, dtype: 'f32', layout: 'BNHD', causal: true },
  { B: 2, H: 6, Hkv: 2, Nq: 2, Nk: 1, D: 128, dtype: 'f16', layout: 'BHND', causal: true },
  { B: 1, H: 32, Hkv: 1, Nq: 1, Nk: 600, D: 1, dtype: 'f32', layout: 'BNHD', causal: false },
  { B: 2, H: 16, Hkv: 2, Nq: 3, Nk: 777, D: 96, dtype: 'f16', layout: 'BHND', causal: true },
];

test('on a GPU with subgroups of 32: GQA groups take the reduce-scattered kernel with the most lanes a key and 8 keys a group at a time, in long splits of 256 workgroups; MHA the all-reduced one', () => {
  const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024, maxComputeWorkgroupSizeX: 1024 } as GPUSupportedLimits;
  const gpu = { limits, software: false, subgroups: true, subgroupSize: 32, matrixF16: true } as Gpu;
  const shape = (D: number, G: number): DecodeShape => ({ D, dtype: 'f16', G, Nq: 1, causal: false, cache: false, paged: false, aligned: true, aligned8: true });
  const pick = (c: ReturnType<typeof decodeChoice>) => (c?.kernel === 'decodeSubgroup' ? { T: c.params.T, U: c.params.U, R: c.params.R, NG: c.params.NG, scatter: c.params.scatter === true, wide: c.params.wide === true } : c?.kernel);
  assert.deepEqual(pick(decodeChoice(shape(128, 4), gpu)), { T: 32, U: 8, R: 4, NG: 8, scatter: true, wide: false });
  assert.deepEqual(pick(decodeChoice(shape(64, 8), gpu)), { T: 16, U: 8, R: 4, NG: 16, scatter: true, wide: false });
  assert.deepEqual(pick(decodeChoice(shape(256, 4), gpu)), { T: 32, U: 8, R: 4, NG: 8, scatter: true, wide: true });
  assert.deepEqual(pick(decodeChoice(shape(128, 1), gpu)), { T: 8, U: 8, R: 1, NG: 16, scatter: false, wide: true });
  // B = 8, Hkv = 8, Nk = 32768 and B = 1, Nk = 131072: 256 workgroups (8192 and 4096 keys a split).
  const c = decodeChoice(shape(128, 4), gpu)!;
  const wgs = (B: number, Nk: number) => {
    const plan = decodePlan(c, B, 8, 4, Nk);
    return B * 8 * plan.rowChunks * plan.splits;
  };
  assert.equal(wgs(8, 32768), 256);
  assert.equal(wgs(1, 131072), 256);
});

describe('decode schedule', () => {
  reportWebgpuSkip();
  for (const backend of BACKENDS) {
    for (const c of CASES) {
      test(`${backend} ${c.dtype} ${c.layout} causal=${c.causal} B=${c.B} H=${c.H} Hkv=${c.Hkv} Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`, async () => {
        await checkInputs(`${backend} decode`, inputs(c, c.dtype, c.layout), { causal: c.causal, layout: c.layout }, { backend });
      });
    }
  }

  if (BACKENDS.includes('webgpu')) {
    test('webgpu runs these cases on the decode schedule, split where the keys are many', async () => {
      const gpu = await defaultGpu();
      for (const c of CASES) {
        const { q, k, v } = inputs(c, c.dtype, c.layout);
        const p = checkForward(q, k, v, { causal: c.causal, layout: c.layout });
        const params = decodeFits(p, gpu);
        assert.ok(params, `decode schedule for ${JSON.stringify(c)}`);
      }
      assert.equal(splitPlan(1, 1, 1, 3000, 32, 1024).splits > 1, true);
    });

    for (const kernels of ['portable', 'subgroup', 'matrix'] as const) {
      test(`webgpu: the ${kernels} decode kernel, chosen explicitly`, async (tc) => {
        const gpu = await defaultGpu();
        if (kernels === 'matrix' && !gpu.matrixF16) return tc.skip('the adapter has no f16 subgroup matrices');
        for (const c of CASES) {
          const t = inputs(c, c.dtype, c.layout);
          const options = { causal: c.causal, layout: c.layout };
          const p = checkForward(t.q, t.k, t.v, options);
          const choice = decodeFits(p, gpu, kernels)!;
          // The subgroup kernel needs vec4 rows and a fixed subgroup size: D = 7 runs the portable one;
          // the subgroup-matrix kernel f16, D % 16 == 0 and more than one row per key/value head.
          const matrix = c.dtype === 'f16' && c.D % 16 === 0 && (c.H / c.Hkv) * c.Nq > 1;
          const expected = kernels === 'subgroup' && c.D % 4 === 0 && gpu.subgroupSize !== undefined ? 'decodeSubgroup' : kernels === 'matrix' && matrix ? 'decodeMatrix' : 'decode';
          assert.equal(choice.kernel, expected);
          const got = await webgpuDecodeForward(p, gpu, choice, t.q, t.k, t.v);
          const oracle = standardForward(p, toF64(t.q), toF64(t.k), toF64(t.v));
          const std = await forward(t.q, t.k, t.v, { ...options, backend: 'webgpu', algorithm: 'standard' });
          const label = `${choice.kernel} ${JSON.stringify(c)}`;
          const ref = toF64(relayout({ data: oracle.out, dtype: 'f64', shape: [c.B, c.Nq, c.H, c.D] }, c.layout));
          assertWithinRule(`${label} out`, maxError(got.out as never, ref), maxError(std.out, ref), 2);
          assertWithinRule(`${label} lse`, maxError(got.lse as never, oracle.lse), maxError(std.lse, oracle.lse), 2);
        }
      });
    }

    test('webgpu: the subgroup kernel with its scores reduce-scattered (T = 16 or the subgroup size, U = T and T / 2 keys at a time, R = 4), 8- and 16-byte loads', async (tc) => {
      const gpu = await defaultGpu();
      if (gpu.subgroupSize === undefined) return tc.skip('the adapter has no fixed subgroup size');
      let runs = 0;
      // Shapes of a few vec4s a lane (on lavapipe, subgroups of 4 with 128-bit vectors: more would take minutes to compile).
      const cases: typeof CASES = [
        { B: 2, H: 8, Hkv: 2, Nq: 1, Nk: 700, D: 64, dtype: 'f16', layout: 'BNHD', causal: false },
        { B: 1, H: 8, Hkv: 2, Nq: 3, Nk: 333, D: 32, dtype: 'f32', layout: 'BHND', causal: true },
        { B: 2, H: 6, Hkv: 2, Nq: 2, Nk: 1100, D: 128, dtype: 'f16', layout: 'BHND', causal: true },
      ];
      for (const c of cases) {
        const variants = [{}, { window: [40, 1] as const, softcap: 20, alibiSlopes: Float32Array.from({ length: c.H }, (_, h) => 2 ** -(h + 1)) }];
        for (const extra of variants) {
          const t = inputs(c, c.dtype, c.layout);
          const options = { causal: c.causal, layout: c.layout, ...extra };
          const p = checkForward(t.q, t.k, t.v, options);
          const chosen = decodeFits(p, gpu, 'subgroup');
          if (chosen?.kernel !== 'decodeSubgroup') continue;
          const T = Math.min(16, gpu.subgroupSize);
          if (c.D % (4 * T) !== 0 || c.D / (4 * T) > 4) continue;
          for (const [wide, U] of [[false, T], [true, T], [false, T / 2]] as const) {
            if (wide && (c.dtype !== 'f16' || (c.D / 4 / T) % 2 !== 0)) continue;
            const choice = { kernel: 'decodeSubgroup' as const, params: { ...chosen.params, T, U, R: 4, NG: 4, scatter: true, wide } };
            const got = await webgpuDecodeForward(p, gpu, choice, t.q, t.k, t.v);
            const oracle = standardForward(p, toF64(t.q), toF64(t.k), toF64(t.v));
            const std = await forward(t.q, t.k, t.v, { ...options, backend: 'webgpu', algorithm: 'standard' });
            const label = `scatter T=${T} U=${U} wide=${wide} ${JSON.stringify(c)} ${Object.keys(extra).join(',')}`;
            const ref = toF64(relayout({ data: oracle.out, dtype: 'f64', shape: [c.B, c.Nq, c.H, c.D] }, c.layout));
            assertWithinRule(`${label} out`, maxError(got.out as never, ref), maxError(std.out, ref), 2);
            assertWithinRule(`${label} lse`, maxError(got.lse as never, oracle.lse), maxError(std.lse, oracle.lse), 2);
            runs++;
          }
        }
      }
      assert.ok(runs >= 4, `the scatter kernel ran on ${runs} cases`);
    });

    test('webgpu decode: a NaN in one query row stays in that row; a causal row that sees no key gives 0 and −∞', async () => {
      const c = { B: 1, H: 4, Hkv: 2, Nq: 4, Nk: 2, D: 16 };
      const { q, k, v } = inputs(c, 'f32', 'BNHD');
      (q.data as Float32Array)[3 * c.H * c.D + 2 * c.D + 3] = NaN; // query 3, head 2
      const r = await forward(q, k, v, { causal: true, backend: 'webgpu' });
      const out = toF64(r.out as never);
      const lse = toF64(r.lse as never);
      const p = checkForward(q, k, v, { causal: true });
      const ref = standardForward(p, toF64(q), toF64(k), toF64(v));
      for (let i = 0; i < c.Nq; i++)
        for (let h = 0; h < c.H; h++) {
          const L = lse[h * c.Nq + i];
          const row = out.subarray((i * c.H + h) * c.D, (i * c.H + h + 1) * c.D);
          if (i === 3 && h === 2) {
            assert.ok(Number.isNaN(L) && row.every(Number.isNaN), 'the NaN row is NaN');
          } else if (i < 2) {
            // queries 0 and 1 see no key (Nk − Nq = −2): out 0, lse −∞
            assert.equal(L, -Infinity);
            assert.ok(row.every((x) => x === 0));
          } else {
            assert.ok(Math.abs(L - ref.lse[h * c.Nq + i]) < 1e-5, `lse row ${i} head ${h}`);
          }
        }
    });
  }
});
