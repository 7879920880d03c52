/**
 * The variants on the reference's Algorithms 1 and 2 and on the cpu kernels, where the grid of
 * modifiers.test.ts does not reach: tiles much smaller than the problem (so that the band's block ranges
 * and the tile classes matter), the cpu on its worker threads (the grid's cases are small enough to run
 * inline) with several backward tasks per key/value head, and few queries with the variants the decode
 * kernel leaves to the tiled one.
 */
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { describe, test } from 'node:test';
import { type Tensor } from '../src/index.js';
import { cpuDecodeFits } from '../src/cpu/index.js';
import { cpuShape, tileSizes } from '../src/cpu/job.js';
import { threadsFor } from '../src/cpu/pool.js';
import { checkForward } from '../src/problem.js';
import { algorithm1, algorithm2, standardBackward, standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { modifierSets, oracleOf, runWith } from './modifier-cases.js';
import { assertWithinRule, inputs, maxError, type Case } from './util.js';

/** |x − ref| ≤ 1e-12 · max(1, max |ref|): the two differ only in the order of f64 roundings. */
function assertClose(what: string, x: Float64Array, ref: Float64Array): void {
  const scale = ref.reduce((m, r) => (Number.isFinite(r) ? Math.max(m, Math.abs(r)) : m), 1);
  const err = maxError(x, ref);
  assert.ok(err <= 1e-12 * scale, `${what}: error ${err} > ${1e-12 * scale}`);
}

describe('modifiers: Algorithms 1 and 2 against the oracle with small tiles (f64)', () => {
  const c: Case = { B: 2, H: 4, Hkv: 2, Nq: 67, Nk: 93, D: 24 };
  const { q, k, v, dout } = inputs(c, 'f64', 'BNHD');
  const [Q, K, V, dO] = [q, k, v, dout].map((t) => toF64(t));
  for (const [name, mods] of Object.entries(modifierSets(c, 'f64'))) {
    for (const bs of [{ Br: 8, Bc: 16 }, { Br: 7, Bc: 5 }]) {
      test(`${name}: Br=${bs.Br} Bc=${bs.Bc}`, () => {
        const p = checkForward(q, k, v, mods);
        const ref = standardForward(p, Q, K, V);
        const grad = standardBackward(p, dO, Q, K, V);
        const { O, L } = algorithm1(p, Q, K, V, bs);
        assertClose('O', O, ref.out);
        assertClose('L', L, ref.lse);
        const g = algorithm2(p, Q, K, V, O, dO, L, bs);
        assertClose('dQ', g.dQ, grad.dq);
        assertClose('dK', g.dK, grad.dk);
        assertClose('dV', g.dV, grad.dv);
        assert.equal(g.dbias !== undefined, mods.biasGrad === true, 'dbias exactly when asked');
        if (g.dbias) assertClose('dbias', g.dbias, grad.dbias!);
      });
    }
  }
});

describe('modifiers: the cpu on its workers, several tiles and backward tasks per head', () => {
  // D = 128: 64×64 tiles (tileSizes), so 4 query blocks and 5 key blocks, which the band and the block
  // mask's 16×32 blocks cut into empty, full and partial tiles; B·Hkv = 1, so the backward splits the key
  // blocks of the one key/value head over several tasks.
  const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 200, Nk: 300, D: 128 };
  test('the case runs on several threads, in several tiles', async () => {
    assert.equal(tileSizes(c.D).Bc, 64);
    const threads = await threadsFor(c.B * c.H * c.Nq * c.Nk * c.D);
    if (availableParallelism() > 1) assert.ok(threads > 1, 'the case is large enough for the workers');
    const { q, k, v } = inputs(c, 'f32', 'BNHD');
    if (threads > 1) assert.ok(cpuShape(checkForward(q, k, v, {}), threads).chunks > 1, 'several backward tasks per key/value head');
  });
  for (const [name, mods] of Object.entries(modifierSets(c, 'f32'))) {
    test(name, async () => {
      const oracle = oracleOf(c, 'f32', mods);
      const standard = await runWith(c, 'f32', 'BNHD', mods, { backend: 'cpu', algorithm: 'standard' });
      const got = await runWith(c, 'f32', 'BHND', mods, { backend: 'cpu', algorithm: 'flash' });
      for (const x of ['out', 'lse'] as const) assertWithinRule(x, maxError(got[x], oracle[x]), maxError(standard[x], oracle[x]), 2);
      for (const x of ['dq', 'dk', 'dv'] as const) assertWithinRule(x, maxError(got[x], oracle[x]), maxError(standard[x], oracle[x]), 3);
      if (mods.biasGrad) {
        assert.ok(got.dbias && standard.dbias, 'dbias returned');
        assertWithinRule('dbias', maxError(got.dbias, oracle.dbias!), maxError(standard.dbias, oracle.dbias!), 3);
      }
    });
  }
});

describe('modifiers: few queries with a bias, a mask, a block mask or dropout run the tiled kernel', () => {
  const c: Case = { B: 2, H: 4, Hkv: 2, Nq: 8, Nk: 150, D: 32 };
  const sets = modifierSets(c, 'f32');
  const names = ['bias (1, H, 1, Nk) + grad', 'mask (1, H, Nq, Nk)', 'dropout', 'bias + mask + dropout + causal', 'block mask + softcap + causal'];
  test('cpuDecodeFits leaves them to the tiled kernel', () => {
    const { q, k, v } = inputs(c, 'f32', 'BNHD');
    assert.ok(cpuDecodeFits(checkForward(q, k, v, { causal: true })));
    for (const name of names) assert.ok(!cpuDecodeFits(checkForward(q, k, v, sets[name])), name);
  });
  for (const name of names) {
    test(name, async () => {
      const mods = sets[name];
      const oracle = oracleOf(c, 'f32', mods);
      const standard = await runWith(c, 'f32', 'BNHD', mods, { backend: 'cpu', algorithm: 'standard' });
      const got = await runWith(c, 'f32', 'BNHD', mods, { backend: 'cpu', algorithm: 'flash' });
      for (const x of ['out', 'lse'] as const) assertWithinRule(x, maxError(got[x], oracle[x]), maxError(standard[x], oracle[x]), 2);
    });
  }
});

describe('modifiers: the cpu shape carries the variants only when there are some beyond causal', () => {
  const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 5, Nk: 7, D: 4 };
  const { q, k, v } = inputs(c, 'f32', 'BNHD');
  test('plain and causal: no mods (the kernels run their plain loops)', () => {
    assert.equal(cpuShape(checkForward(q, k, v, {}), 2).mods, undefined);
    assert.equal(cpuShape(checkForward(q, k, v, { causal: true }), 2).mods, undefined);
  });
  test('a bias travels without its data, which the job carries in shared memory', () => {
    const bias: Tensor = { data: new Float32Array(c.Nk), dtype: 'f32', shape: [1, 1, 1, c.Nk] };
    const mods = cpuShape(checkForward(q, k, v, { bias, window: [2, 0] }), 2).mods;
    assert.ok(mods?.bias && mods.band);
    assert.ok(!('data' in mods.bias));
  });
});
