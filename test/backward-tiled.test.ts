// The register-tiled backward kernels (src/webgpu/kernels/backward-tiled.ts), forced on whatever adapter
// runs the tests (GPUs pick them by default; software adapters keep the portable kernels), with small tiles
// and loops left opaque as on a software adapter: grid shapes with tails, D with and without a vec4 tail,
// causal on and off, grouped-query heads, rows that see one key or none, a NaN row. Gradients are held to
// the error rule against the float64 oracle, with the webgpu standard backward as the yardstick; the
// choice of kernels and the limits are checked on described devices.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { forward, MemoryTracker, tensor, type Tensor } from '../src/index.js';
import { checkBackward, type Problem } from '../src/problem.js';
import { standardBackward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import type { Gpu } from '../src/webgpu/device.js';
import { backwardChoice, backwardParams, backwardTiledParams, BACKWARD_TILED_MAX_ACCUMULATOR, webgpuBackward, type BackwardChoice } from '../src/webgpu/index.js';
import { backwardTiledAccumulator, backwardTiledShape, backwardTiledWorkgroupBytes, type BackwardTiledTiles } from '../src/webgpu/kernels/backward-tiled.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, inputs, maxError, type Case } from './util.js';

reportWebgpuSkip();

const LOG = process.env.FLASHATTN_LOG_ERRORS === '1';

/** Tile sets the forced runs use: square 2×2 micro-tiles, and uneven ones (TM ≠ TN, Br ≠ Bc). */
const TILE_SETS: Array<{ kv: BackwardTiledTiles; q: BackwardTiledTiles }> = [
  { kv: { Br: 16, Bc: 16, TM: 2, TN: 2 }, q: { Br: 16, Bc: 16, TM: 2, TN: 2 } },
  { kv: { Br: 8, Bc: 16, TM: 1, TN: 2 }, q: { Br: 16, Bc: 8, TM: 2, TN: 1 } },
];

/** 2×2 micro-tiles in smaller blocks, for D = 128 within 32 KiB. */
const SMALL_SQUARE = { kv: { Br: 8, Bc: 16, TM: 2, TN: 2 }, q: { Br: 16, Bc: 8, TM: 2, TN: 2 } };

/** A choice that forces the tiled kernels with these tiles (loops opaque, as on lavapipe). */
function tiled(set: (typeof TILE_SETS)[number], unroll = false): (p: Problem, gpu: Gpu) => BackwardChoice {
  return (p) => {
    const base = { D: p.D, unroll, dtype: p.dtype as 'f32' | 'f16', causal: p.causal };
    return { kernel: 'tiled', kv: { ...base, ...set.kv }, q: { ...base, ...set.q } };
  };
}
const portable = (p: Problem, gpu: Gpu): BackwardChoice => ({ kernel: 'portable', ...backwardParams(p, gpu) });

/** dq, dk, dv of the webgpu backward with `choose`, after the webgpu forward; plain typed-array inputs. */
async function grads(t: { q: Tensor; k: Tensor; v: Tensor; dout: Tensor }, causal: boolean, choose: (p: Problem, gpu: Gpu) => BackwardChoice, algorithm: 'flash' | 'standard' = 'flash') {
  const f = await forward(t.q, t.k, t.v, { backend: 'webgpu', causal, algorithm });
  if (algorithm === 'standard') {
    const { backward } = await import('../src/index.js');
    return backward(t.dout, t.q, t.k, t.v, f.out, f.lse, { backend: 'webgpu', causal, algorithm });
  }
  const p = checkBackward(t.dout, t.q, t.k, t.v, f.out, f.lse, { backend: 'webgpu', causal });
  return webgpuBackward(p, t.dout, t.q, t.k, t.v, f.out, f.lse, choose);
}

/** The error rule for dq, dk, dv of forced tiled kernels on a case, against the f64 oracle and the webgpu standard. */
async function checkTiled(c: Case, causal: boolean, set: (typeof TILE_SETS)[number], dtype: 'f32' | 'f16' = 'f32', unroll = false) {
  const t = inputs(c, dtype, 'BNHD');
  const p = checkBackward(t.dout, t.q, t.k, t.v, t.q, tensor(new Float32Array(c.B * c.H * c.Nq), [c.B, c.H, c.Nq]), { causal });
  const oracle = standardBackward(p, toF64(t.dout), toF64(t.q), toF64(t.k), toF64(t.v));
  const [got, standard] = [await grads(t, causal, tiled(set, unroll)), await grads(t, causal, portable, 'standard')];
  const label = `${dtype} Nq=${c.Nq} Nk=${c.Nk} D=${c.D} H=${c.H} Hkv=${c.Hkv} causal=${causal} tiles=${JSON.stringify(set)}${unroll ? ' unrolled' : ''}`;
  const errors = (['dq', 'dk', 'dv'] as const).map((g) => [g, maxError(got[g] as Tensor, oracle[g]), maxError(standard[g] as Tensor, oracle[g])] as const);
  if (LOG) console.log(`${label} ${errors.map(([g, e, s]) => `${g} ${e.toExponential(2)} (std ${s.toExponential(2)})`).join(', ')}`);
  for (const [g, e, s] of errors) assertWithinRule(`${label} ${g}`, e, s, 3);
}

if (BACKENDS.includes('webgpu')) {
  describe('tiled backward, forced', () => {
    for (const [Nq, Nk] of [
      [113, 203],
      [128, 217],
      [256, 512],
      [512, 256],
    ] as const) {
      for (const D of [8, 59, 64, 128]) {
        test(`Nq=${Nq} Nk=${Nk} D=${D}, causal on and off, grouped-query heads`, async () => {
          for (const causal of [false, true]) {
            // Square tiles on one head per key/value head (D = 128: smaller blocks, within lavapipe's
            // 32 KiB), uneven tiles with two query heads per key/value head.
            await checkTiled({ B: 1, H: 2, Hkv: 2, Nq, Nk, D }, causal, D === 128 ? SMALL_SQUARE : TILE_SETS[0]);
            await checkTiled({ B: 1, H: 2, Hkv: 1, Nq, Nk, D }, causal, TILE_SETS[1]);
          }
        });
      }
    }

    test('rows that see no key: zero dq; the other rows within the rule', async () => {
      const c: Case = { B: 2, H: 3, Hkv: 3, Nq: 150, Nk: 70, D: 24 };
      await checkTiled(c, true, TILE_SETS[1]);
      const got = await grads(inputs(c, 'f32', 'BNHD'), true, tiled(TILE_SETS[1]));
      const dq = toF64(got.dq as Tensor);
      for (let b = 0; b < c.B; b++)
        for (let n = 0; n < c.Nq - c.Nk; n++)
          for (let h = 0; h < c.H; h++) for (let d = 0; d < c.D; d++) assert.equal(dq[((b * c.Nq + n) * c.H + h) * c.D + d], 0, `dq row ${n}`);
    });

    test('one visible key: P = 1, so dV = dO exactly (Nq = Nk = 1, and the first row of causal)', async () => {
      for (const set of TILE_SETS) {
        const one: Case = { B: 2, H: 3, Hkv: 3, Nq: 1, Nk: 1, D: 33 };
        const t = inputs(one, 'f32', 'BNHD');
        const got = await grads(t, false, tiled(set));
        assert.deepEqual(Array.from(got.dv.data as Float32Array), Array.from(t.dout.data as Float32Array), 'dv = dout');
        assert.ok(Array.from(got.dk.data as Float32Array).every((x) => x === 0) && Array.from(got.dq.data as Float32Array).every((x) => x === 0), 'dk = dq = 0');
        for (const [Nq, Nk] of [
          [1, 300],
          [300, 1],
        ]) {
          for (const causal of [false, true]) await checkTiled({ B: 2, H: 3, Hkv: 3, Nq, Nk, D: 33 }, causal, set);
        }
      }
    });

    test('a NaN in one query row: the NaNs of the portable kernels (causal too), the other rows of dq unchanged', async () => {
      const c: Case = { B: 2, H: 3, Hkv: 3, Nq: 130, Nk: 140, D: 20 };
      const t = inputs(c, 'f32', 'BNHD');
      const poisoned = t.q.data.slice() as Float32Array;
      const [b0, n0, h0] = [1, 77, 2];
      poisoned[((b0 * c.Nq + n0) * c.H + h0) * c.D + 5] = NaN;
      const bad = { ...t, q: tensor(poisoned, t.q.shape) };
      // Causal: the row sees only keys up to its diagonal, and dk, dv of the others (in the tile across the
      // diagonal too) must stay free of its NaN, as the portable kernels keep them.
      for (const causal of [false, true]) {
        const [clean, got, ref] = [await grads(t, causal, tiled(TILE_SETS[0])), await grads(bad, causal, tiled(TILE_SETS[0])), await grads(bad, causal, portable)];
        for (const g of ['dq', 'dk', 'dv'] as const) {
          const [x, y] = [toF64(got[g] as Tensor), toF64(ref[g] as Tensor)];
          x.forEach((e, i) => assert.equal(Number.isNaN(e), Number.isNaN(y[i]), `causal=${causal} ${g}[${i}] NaN as the portable kernel's`));
          assert.ok(x.some(Number.isNaN) && !x.every(Number.isNaN), `causal=${causal} ${g} holds the row's NaN, and not everywhere`);
        }
        const [dq, dq0] = [toF64(got.dq as Tensor), toF64(clean.dq as Tensor)];
        for (let i = 0; i < dq.length; i++) {
          const row = Math.floor(i / c.D);
          const hit = row === (b0 * c.Nq + n0) * c.H + h0;
          // (The poisoned row's own NaNs are those of the portable kernels, checked above.)
          if (!hit) assert.equal(dq[i], dq0[i], `causal=${causal} dq[${i}] unchanged`);
        }
      }
    });

    test('logits of ±1e4 do not overflow, causal on and off', async () => {
      const c: Case = { B: 1, H: 2, Hkv: 2, Nq: 67, Nk: 131, D: 16 };
      const t = inputs(c, 'f32', 'BNHD');
      const { randomTensor } = await import('./util.js');
      const big = { ...t, q: randomTensor('f32', [1, 67, 2, 16], 11, 100), k: randomTensor('f32', [1, 131, 2, 16], 12, 100) };
      for (const causal of [false, true]) {
        const got = await grads(big, causal, tiled(TILE_SETS[0]));
        for (const g of [got.dq, got.dk, got.dv]) assert.ok(toF64(g as Tensor).every(Number.isFinite), 'all finite');
      }
    });

    // lavapipe's LLVM takes minutes on the unrolled loops (about 4 minutes for these two pipeline pairs on
    // 2 cores), so on a software adapter this runs only where asked; on a GPU always.
    test('loops unrolled at constant bounds, as on GPUs', async (t) => {
      const { defaultGpu } = await import('../src/webgpu/device.js');
      if ((await defaultGpu()).software && process.env.FLASHATTN_TEST_UNROLLED !== '1') {
        return t.skip('software adapter: minutes of compile time (FLASHATTN_TEST_UNROLLED=1 runs it)');
      }
      for (const causal of [false, true]) await checkTiled({ B: 1, H: 2, Hkv: 1, Nq: 113, Nk: 203, D: 59 }, causal, TILE_SETS[1], 'f32', true);
    });

    test('f16 storage, where the adapter has shader-f16', async (t) => {
      const { defaultGpu } = await import('../src/webgpu/device.js');
      if (!(await defaultGpu()).f16) return t.skip('no shader-f16');
      for (const causal of [false, true]) await checkTiled({ B: 1, H: 2, Hkv: 1, Nq: 113, Nk: 203, D: 64 }, causal, TILE_SETS[1], 'f16');
    });
  });
}

describe('tiled backward: the choice on described devices', () => {
  function device(workgroupBytes: number, invocations: number, extra: Partial<Gpu> = {}): Gpu {
    const limits = { maxComputeWorkgroupStorageSize: workgroupBytes, maxComputeInvocationsPerWorkgroup: invocations, maxComputeWorkgroupSizeX: invocations } as GPUSupportedLimits;
    return { limits, software: false, matrixF16: false, subgroupSize: undefined, ...extra } as Gpu;
  }
  const problem = (D: number, dtype: 'f32' | 'f16' = 'f32'): Problem => ({
    B: 1, H: 2, Hkv: 2, Nq: 256, Nk: 256, D, dtype, layout: 'BNHD', causal: false, scale: 1 / Math.sqrt(D), backend: 'webgpu', algorithm: 'flash', precision: 'highest', memory: new MemoryTracker(), onGpu: false, mods: {},
  });
  const h100 = device(49152, 1024, { subgroupSize: 32 });

  test('GPUs: the tiled kernels for f32 (and f16 without subgroup matrices), loops unrolled; software adapters: the portable ones', () => {
    for (const D of [8, 59, 64, 128]) {
      const c = backwardChoice(problem(D), h100);
      assert.equal(c.kernel, 'tiled', `D = ${D}`);
      if (c.kernel === 'tiled') assert.ok(c.kv.unroll && c.q.unroll);
    }
    assert.equal(backwardChoice(problem(64, 'f16'), h100).kernel, 'tiled');
    assert.equal(backwardChoice(problem(64), device(32768, 1024, { software: true })).kernel, 'portable');
  });

  test('every head dim of the grid: tiles within the device limits, or the portable kernels', () => {
    for (const gpu of [h100, device(32768, 256), device(16384, 256), device(16384, 64)]) {
      for (const D of [1, 8, 40, 59, 64, 111, 128, 256, 512]) {
        const t = backwardTiledParams(problem(D), gpu);
        if (!t) continue; // the portable kernels run (where their own tiles fit)
        for (const [params, kv] of [
          [t.kv, true],
          [t.q, false],
        ] as const) {
          assert.ok(backwardTiledWorkgroupBytes(params, kv) <= gpu.limits.maxComputeWorkgroupStorageSize, `D = ${D} workgroup memory`);
          assert.ok(backwardTiledShape(params, kv).WG <= Math.min(256, gpu.limits.maxComputeInvocationsPerWorkgroup), 'invocations');
          assert.ok(backwardTiledAccumulator(params, kv) <= BACKWARD_TILED_MAX_ACCUMULATOR, 'registers');
        }
      }
    }
    assert.ok(backwardTiledParams(problem(128), h100), 'D = 128 fits 48 KiB');
  });
});
