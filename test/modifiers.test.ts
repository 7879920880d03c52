/**
 * The variants (src/modifiers.ts): the float64 oracle's semantics checked against direct definitions,
 * and every backend and kernel family against the oracle under the 2×/3× rule of the spec, for each
 * modifier alone and in combinations, f32 and f16, both layouts, GQA, Nq ≠ Nk.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { backward, forward, MemoryTracker, webgpuDevice, type AttentionOptions, type DType, type Layout, type Tensor } from '../src/index.js';
import { dropoutKeeps, dropoutRowKey, mix32 } from '../src/modifiers.js';
import { setCpuKernels } from '../src/cpu/wasm/index.js';
import { checkForward } from '../src/problem.js';
import { standardBackward, standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { modifierSets, oracleOf, runWith, type ModResults, type Mods } from './modifier-cases.js';
import { assertWithinRule, inputs, maxError, onDevice, randn, randomTensor, type Case } from './util.js';

describe('modifiers: the oracle against direct definitions', () => {
  const c: Case = { B: 2, H: 2, Hkv: 1, Nq: 7, Nk: 11, D: 5 };
  const { q, k, v } = inputs(c, 'f64', 'BNHD');

  /** Scores of head (b, h) computed directly, with a per-element rule. */
  function direct(keep: (b: number, h: number, i: number, j: number) => boolean, add: (b: number, h: number, i: number, j: number, s: number) => number) {
    const Q = toF64(q);
    const K = toF64(k);
    const V = toF64(v);
    const out = new Float64Array(Q.length);
    const scale = 1 / Math.sqrt(c.D);
    for (let b = 0; b < c.B; b++) {
      for (let h = 0; h < c.H; h++) {
        for (let i = 0; i < c.Nq; i++) {
          const s: number[] = [];
          for (let j = 0; j < c.Nk; j++) {
            let x = 0;
            for (let d = 0; d < c.D; d++) x += Q[((b * c.Nq + i) * c.H + h) * c.D + d] * K[((b * c.Nk + j) * c.Hkv + 0) * c.D + d];
            s.push(keep(b, h, i, j) ? add(b, h, i, j, x * scale) : -Infinity);
          }
          const m = Math.max(...s);
          if (m === -Infinity) continue;
          const e = s.map((x) => Math.exp(x - m));
          const l = e.reduce((a, x) => a + x, 0);
          for (let d = 0; d < c.D; d++) {
            let o = 0;
            for (let j = 0; j < c.Nk; j++) o += (e[j] / l) * V[((b * c.Nk + j) * c.Hkv + 0) * c.D + d];
            out[((b * c.Nq + i) * c.H + h) * c.D + d] = o;
          }
        }
      }
    }
    return out;
  }
  const none = (_b: number, _h: number, _i: number, _j: number, s: number) => s;
  const all = () => true;
  const off = c.Nk - c.Nq;
  const cases: [string, AttentionOptions, Float64Array][] = [
    ['window [2, 1]', { window: [2, 1] }, direct((_b, _h, i, j) => j >= i + off - 2 && j <= i + off + 1, none)],
    ['window [3, -1] + causal', { window: [3, -1], causal: true }, direct((_b, _h, i, j) => j >= i + off - 3 && j <= i + off, none)],
    ['alibi', { alibiSlopes: Float32Array.of(0.5, 0.25) }, direct(all, (_b, h, i, j, s) => s - Math.fround([0.5, 0.25][h]) * Math.abs(i + off - j))],
    ['softcap', { softcap: 0.7 }, direct(all, (_b, _h, _i, _j, s) => 0.7 * Math.tanh(s / 0.7))],
    ['mask', { mask: { data: Uint8Array.from({ length: c.Nq * c.Nk }, (_, e) => (e % 3 === 0 ? 0 : 1)), shape: [1, 1, c.Nq, c.Nk] } }, direct((_b, _h, i, j) => (i * c.Nk + j) % 3 !== 0, none)],
    ['block mask [2, 4]', { blockMask: { data: Uint8Array.of(1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1), shape: [1, 1, 4, 3], blockSize: [2, 4] } }, direct((_b, _h, i, j) => [1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1][Math.floor(i / 2) * 3 + Math.floor(j / 4)] === 1, none)],
  ];
  for (const [name, options, expected] of cases) {
    test(name, () => {
      const p = checkForward(q, k, v, options);
      const { out } = standardForward(p, toF64(q), toF64(k), toF64(v));
      assert.ok(maxError(out, expected) < 1e-12, `${name}: ${maxError(out, expected)}`);
    });
  }

  test('a row that keeps no key: out 0, lse −∞', () => {
    const p = checkForward(q, k, v, { mask: { data: Uint8Array.from({ length: c.Nk }, () => 0), shape: [1, 1, 1, c.Nk] } });
    const { out, lse } = standardForward(p, toF64(q), toF64(k), toF64(v));
    assert.ok(out.every((x) => x === 0));
    assert.ok(lse.every((x) => x === -Infinity));
  });

  test('bias and its gradient by finite differences', () => {
    const shape = [1, c.H, 1, c.Nk];
    const bias = { data: randn(c.H * c.Nk, 4), dtype: 'f64' as const, shape };
    const dout = inputs(c, 'f64', 'BNHD').dout;
    const loss = (b: Float64Array) => {
      const p = checkForward(q, k, v, { bias: { ...bias, data: b }, softcap: 1.3 });
      const { out } = standardForward(p, toF64(q), toF64(k), toF64(v));
      return out.reduce((a, x, e) => a + x * (dout.data as Float64Array)[e], 0);
    };
    const p = checkForward(q, k, v, { bias, biasGrad: true, softcap: 1.3 });
    const g = standardBackward(p, toF64(dout), toF64(q), toF64(k), toF64(v));
    for (const e of [0, 3, c.Nk + 2]) {
      const h = 1e-6;
      const up = Float64Array.from(bias.data);
      const down = Float64Array.from(bias.data);
      up[e] += h;
      down[e] -= h;
      const fd = (loss(up) - loss(down)) / (2 * h);
      assert.ok(Math.abs(fd - g.dbias![e]) < 1e-6, `dbias[${e}] ${g.dbias![e]} against ${fd}`);
    }
  });

  test('softcap and dropout gradients by finite differences (fixed seed)', () => {
    const dout = toF64(inputs(c, 'f64', 'BNHD').dout);
    const options: AttentionOptions = { softcap: 0.9, dropout: { p: 0.3, seed: 7 }, alibiSlopes: Float32Array.of(0.3, 0.1) };
    const Q0 = toF64(q);
    const loss = (Q: Float64Array) => {
      const p = checkForward({ ...q, data: Q }, k, v, options);
      return standardForward(p, Q, toF64(k), toF64(v)).out.reduce((a, x, e) => a + x * dout[e], 0);
    };
    const p = checkForward(q, k, v, options);
    const g = standardBackward(p, dout, Q0, toF64(k), toF64(v));
    for (const e of [0, 7, 31]) {
      const h = 1e-6;
      const up = Float64Array.from(Q0);
      const down = Float64Array.from(Q0);
      up[e] += h;
      down[e] -= h;
      const fd = (loss(up) - loss(down)) / (2 * h);
      assert.ok(Math.abs(fd - g.dq[e]) < 1e-6, `dq[${e}] ${g.dq[e]} against ${fd}`);
    }
  });

  test('dropout: kept fraction and an unbiased mean', () => {
    const p = 0.3;
    const threshold = Math.round(p * 2 ** 24);
    let kept = 0;
    const n = 200_000;
    for (let e = 0; e < n; e++) if (dropoutKeeps(dropoutRowKey(42, e % 13, Math.floor(e / 1000)), e % 1000, threshold)) kept++;
    const frac = kept / n;
    const sigma = Math.sqrt((p * (1 - p)) / n);
    assert.ok(Math.abs(frac - (1 - p)) < 5 * sigma, `kept ${frac}, expected ${1 - p} ± ${5 * sigma}`);
    // E[out] over seeds equals the output without dropout.
    const big: Case = { B: 1, H: 1, Hkv: 1, Nq: 4, Nk: 64, D: 4 };
    const x = inputs(big, 'f64', 'BNHD');
    const plain = standardForward(checkForward(x.q, x.k, x.v, {}), toF64(x.q), toF64(x.k), toF64(x.v)).out;
    const mean = new Float64Array(plain.length);
    const seeds = 400;
    for (let s = 0; s < seeds; s++) {
      const o = standardForward(checkForward(x.q, x.k, x.v, { dropout: { p: 0.5, seed: s } }), toF64(x.q), toF64(x.k), toF64(x.v)).out;
      o.forEach((y, e) => (mean[e] += y / seeds));
    }
    assert.ok(maxError(mean, plain) < 0.12, `mean over ${seeds} seeds is off by ${maxError(mean, plain)}`);
  });
});

/**
 * Backends and algorithms that the grid below runs with modifiers (the reference's flash algorithms
 * included). The yardstick is the same backend's standard attention, the cpu's for the reference backend
 * (whose standard algorithm is the oracle, while its Algorithm 2 reads out and lse as rounded to the
 * input dtype, as every other backward does), as in spec.ts.
 */
const FAMILIES: { backend: 'cpu' | 'webgpu' | 'reference'; algorithm: 'flash' | 'standard' }[] = [
  { backend: 'reference', algorithm: 'flash' },
  ...(BACKENDS.includes('cpu') ? [{ backend: 'cpu' as const, algorithm: 'flash' as const }] : []),
  ...(BACKENDS.includes('webgpu') ? [{ backend: 'webgpu' as const, algorithm: 'flash' as const }] : []),
];

describe('modifiers: every backend against the oracle', () => {
  reportWebgpuSkip();
  const grid: { c: Case; dtype: DType; layout: Layout }[] = [
    { c: { B: 2, H: 4, Hkv: 2, Nq: 67, Nk: 93, D: 24 }, dtype: 'f32', layout: 'BNHD' },
    { c: { B: 2, H: 2, Hkv: 2, Nq: 96, Nk: 70, D: 40 }, dtype: 'f16', layout: 'BHND' },
  ];
  for (const { c, dtype, layout } of grid) {
    for (const [name, mods] of Object.entries(modifierSets(c, dtype))) {
      let oracle: ModResults | undefined;
      for (const { backend, algorithm } of FAMILIES) {
        const label = `${name}: ${backend} ${algorithm} ${dtype} ${layout} Nq=${c.Nq} Nk=${c.Nk} H=${c.H}/${c.Hkv} D=${c.D}`;
        test(label, async () => {
          oracle ??= oracleOf(c, dtype, mods);
          const standard = await runWith(c, dtype, 'BNHD', mods, { backend: backend === 'reference' ? 'cpu' : backend, algorithm: 'standard' });
          const got = await runWith(c, dtype, layout, mods, { backend, algorithm });
          for (const x of ['out', 'lse'] as const) assertWithinRule(`${label} ${x}`, maxError(got[x], oracle[x]), maxError(standard[x], oracle[x]), 2);
          for (const x of ['dq', 'dk', 'dv'] as const) assertWithinRule(`${label} ${x}`, maxError(got[x], oracle[x]), maxError(standard[x], oracle[x]), 3);
          if (mods.biasGrad) {
            assert.ok(got.dbias && standard.dbias, 'dbias returned');
            assertWithinRule(`${label} dbias`, maxError(got.dbias, oracle.dbias!), maxError(standard.dbias, oracle.dbias!), 3);
          }
        });
      }
    }
  }
});

/**
 * A bias with one value along the keys (key axis of size 1) shifts every logit of a row alike, which
 * softmax takes away: its gradient is zero (the oracle's is, to its rounding). The backends return zeros
 * (biasGradIsZero, src/modifiers.ts) instead of summing dS, whose sum over a row holds only the few ulp
 * by which FlashAttention's D = rowsum(dO ∘ O) differs from Σ_j P_ij·dP_ij; at (1, H, 1, 1) those add up
 * over every row (a random case of this shape at D = 128 was 7× the standard's error). dq, dk and dv keep
 * the bits of the same call without biasGrad.
 */
describe('modifiers: dbias of a bias constant along the keys is zero', () => {
  reportWebgpuSkip();
  const c: Case = { B: 2, H: 6, Hkv: 2, Nq: 78, Nk: 49, D: 128 };
  const { q, k, v, dout } = inputs(c, 'f32', 'BNHD', 11);
  const variants: AttentionOptions = {
    softcap: 5,
    alibiSlopes: Float32Array.from({ length: c.H }, (_, h) => 0.05 * (h + 1)),
    dropout: { p: 0.2, seed: 5 },
    mask: { data: Uint8Array.from({ length: c.Nq * c.Nk }, (_, e) => (mix32(e) % 5 === 0 ? 0 : 1)), shape: [1, 1, c.Nq, c.Nk] },
    causal: true,
  };
  const families = BACKENDS.flatMap((backend) => (['flash', 'standard'] as const).map((algorithm) => ({ backend, algorithm })));
  for (const shape of [
    [1, c.H, 1, 1],
    [c.B, c.H, c.Nq, 1],
    [c.B, 1, 1, 1],
  ]) {
    const bias = randomTensor('f32', shape, 13, 2);
    test(`bias [${shape.join(', ')}]: the oracle's dbias is zero to rounding`, () => {
      const f64 = (t: Tensor): Tensor => ({ data: toF64(t), dtype: 'f64', shape: t.shape });
      const p = checkForward(f64(q), f64(k), f64(v), { ...variants, bias: f64(bias), biasGrad: true });
      const g = standardBackward(p, toF64(dout), toF64(q), toF64(k), toF64(v));
      const scale = g.dq.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      assert.ok(scale > 0.1, `dq is not trivially small (${scale})`);
      assert.ok(maxError(g.dbias!, new Float64Array(g.dbias!.length)) < 1e-12, `oracle's dbias ${maxError(g.dbias!, new Float64Array(g.dbias!.length))}`);
    });
    for (const how of families) {
      test(`bias [${shape.join(', ')}]: ${how.backend} ${how.algorithm} returns zeros, dq, dk, dv as without biasGrad`, async () => {
        const o: AttentionOptions = { ...variants, ...how, bias };
        const f = await forward(q, k, v, o);
        const g = await backward(dout, q, k, v, f.out, f.lse, { ...o, biasGrad: true });
        const plain = await backward(dout, q, k, v, f.out, f.lse, o);
        assert.ok(g.dbias, 'dbias returned');
        assert.deepEqual(g.dbias.shape, shape);
        assert.equal(g.dbias.dtype, 'f32');
        assert.ok(g.dbias.data.every((x) => x === 0), 'dbias is zero');
        for (const n of ['dq', 'dk', 'dv'] as const) assert.deepEqual(g[n].data, plain[n].data, `${n} as without biasGrad`);
      });
    }
  }

  test('packed sequences on the cpu: zeros of the packed bias shape', async () => {
    const cuSeqlensQ = Int32Array.of(0, 5, 12);
    const cuSeqlensK = Int32Array.of(0, 9, 20);
    const t = inputs({ B: 1, H: 4, Hkv: 2, Nq: 12, Nk: 20, D: 16 }, 'f32', 'BNHD', 3);
    const o: AttentionOptions = { cuSeqlensQ, cuSeqlensK, bias: randomTensor('f32', [2, 4, 1, 1], 4), softcap: 3, backend: 'cpu' };
    const f = await forward(t.q, t.k, t.v, o);
    const g = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, { ...o, biasGrad: true });
    assert.deepEqual(g.dbias?.shape, [2, 4, 1, 1]);
    assert.ok(g.dbias.data.every((x) => x === 0), 'dbias is zero');
  });

  if (BACKENDS.includes('webgpu')) {
    test('GPUBuffers on webgpu: dbias a zeroed GPUBuffer, handed over (nothing left counted)', async () => {
      const device = await webgpuDevice();
      const memory = new MemoryTracker();
      const [gq, gk, gv, gdout, gbias] = [q, k, v, dout, randomTensor('f32', [1, c.H, 1, 1], 17)].map((x) => onDevice(device, x));
      const o: AttentionOptions = { ...variants, bias: gbias, memory };
      const f = await forward(gq, gk, gv, o);
      const g = await backward(gdout, gq, gk, gv, f.out, f.lse, { ...o, biasGrad: true });
      assert.equal(memory.live, 0, 'nothing counted once the outputs are handed over');
      assert.ok(g.dbias?.data instanceof GPUBuffer, 'dbias is a GPUBuffer');
      assert.deepEqual(g.dbias.shape, [1, c.H, 1, 1]);
      const staging = device.createBuffer({ size: g.dbias.data.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(g.dbias.data, 0, staging, 0, g.dbias.data.size);
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      assert.ok(new Float32Array(staging.getMappedRange()).every((x) => x === 0), 'dbias is zero');
      staging.destroy();
      for (const x of [gq, gk, gv, gdout, gbias, f.out, f.lse, g.dq, g.dk, g.dv, g.dbias]) x.data.destroy();
    });
  }
});

/**
 * dbias of a bias that varies along the keys, where FlashAttention's D = rowsum(dO ∘ O), taken from the f16
 * out, differs from the D that makes each row of dS sum to zero by about 2⁻¹¹ of |dO|·|O|: f16, rows that
 * see one to three keys, an f32 bias summing dS over rows and heads. The cpu's flash backward corrects each
 * row (reduceDbias); both of its kernels are checked against the oracle under the rule. Without the
 * correction the first case (a random case's shape, its bias's seed found by a search) is 4.9× the
 * standard's error.
 */
describe('modifiers: dbias with f16 out and narrow rows, within the rule', () => {
  const cases: { c: Case; mods: Mods; layout: Layout }[] = [
    { c: { B: 1, H: 3, Hkv: 3, Nq: 2, Nk: 2, D: 12 }, mods: { bias: randomTensor('f32', [1, 1, 1, 2], 31), biasGrad: true, causal: true }, layout: 'BHND' },
    { c: { B: 2, H: 4, Hkv: 2, Nq: 64, Nk: 64, D: 24 }, mods: { bias: randomTensor('f32', [1, 4, 1, 64], 21), biasGrad: true, window: [2, 0] }, layout: 'BNHD' },
  ];
  const kernels = BACKENDS.includes('cpu') ? (['js', 'wasm'] as const) : [];
  for (const { c, mods, layout } of cases) {
    let oracle: ModResults | undefined;
    for (const kernel of kernels) {
      const label = `cpu ${kernel} kernels, Nq=${c.Nq} Nk=${c.Nk} bias [${(mods.bias as Tensor).shape.join(', ')}]`;
      test(label, async () => {
        oracle ??= oracleOf(c, 'f16', mods);
        setCpuKernels(kernel);
        try {
          const standard = await runWith(c, 'f16', layout, mods, { backend: 'cpu', algorithm: 'standard' });
          const got = await runWith(c, 'f16', layout, mods, { backend: 'cpu', algorithm: 'flash' });
          assertWithinRule(`${label} dbias`, maxError(got.dbias!, oracle.dbias!), maxError(standard.dbias!, oracle.dbias!), 3);
        } finally {
          setCpuKernels('wasm');
        }
      });
    }
  }
});
