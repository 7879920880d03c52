// The reference: Algorithms 1 and 2 equal the float64 oracle to ~1e-12, and the oracle's backward
// agrees with finite differences of its forward.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { checkForward } from '../src/problem.js';
import { algorithm1, algorithm2, blockSizes, standardBackward, standardForward } from '../src/reference/index.js';
import { GRID_SHAPES } from './spec.js';
import { inputs, maxError, type Case } from './util.js';

function f64Inputs(c: Case, causal: boolean, layout: 'BNHD' | 'BHND' = 'BNHD') {
  const { q, k, v, dout } = inputs(c, 'f64', layout, 7);
  const p = checkForward(q, k, v, { causal, layout });
  return { p, Q: q.data as Float64Array, K: k.data as Float64Array, V: v.data as Float64Array, dO: dout.data as Float64Array };
}

/** |x − ref| ≤ 1e-12 · max(1, max |ref|): the two differ only in the order of f64 roundings. */
function assertClose(what: string, x: Float64Array, ref: Float64Array): void {
  const scale = ref.reduce((m, r) => (Number.isFinite(r) ? Math.max(m, Math.abs(r)) : m), 1);
  const err = maxError(x, ref);
  assert.ok(err <= 1e-12 * scale, `${what}: error ${err} > ${1e-12 * scale}`);
}

describe('Algorithms 1 and 2 against the oracle (f64)', () => {
  const blocks = [undefined, { Br: 16, Bc: 24 }, { Br: 7, Bc: 5 }];
  for (const [Nq, Nk] of GRID_SHAPES.filter(([a, b]) => a * b <= 256 * 512)) {
    for (const D of [1, 8, 59]) {
      for (const causal of [false, true]) {
        test(`Nq=${Nq} Nk=${Nk} D=${D} causal=${causal}`, () => {
          const c = { B: 2, H: 3, Hkv: 3, Nq, Nk, D };
          const { p, Q, K, V, dO } = f64Inputs(c, causal);
          const ref = standardForward(p, Q, K, V);
          const grad = standardBackward(p, dO, Q, K, V);
          for (const bs of blocks) {
            const label = `${bs ? `Br=${bs.Br} Bc=${bs.Bc}` : 'paper blocks'}`;
            const { O, L } = algorithm1(p, Q, K, V, bs);
            assertClose(`${label} O`, O, ref.out);
            assertClose(`${label} L`, L, ref.lse);
            const { dQ, dK, dV } = algorithm2(p, Q, K, V, O, dO, L, bs);
            assertClose(`${label} dQ`, dQ, grad.dq);
            assertClose(`${label} dK`, dK, grad.dk);
            assertClose(`${label} dV`, dV, grad.dv);
          }
        });
      }
    }
  }

  test('grouped-query heads and the BHND layout', () => {
    for (const Hkv of [1, 2]) {
      for (const causal of [false, true]) {
        const { p, Q, K, V, dO } = f64Inputs({ B: 2, H: 4, Hkv, Nq: 37, Nk: 53, D: 11 }, causal, 'BHND');
        const ref = standardForward(p, Q, K, V);
        const grad = standardBackward(p, dO, Q, K, V);
        const { O, L } = algorithm1(p, Q, K, V, { Br: 8, Bc: 16 });
        assertClose('O', O, ref.out);
        const { dQ, dK, dV } = algorithm2(p, Q, K, V, O, dO, L, { Br: 8, Bc: 16 });
        assertClose('dQ', dQ, grad.dq);
        assertClose('dK', dK, grad.dk);
        assertClose('dV', dV, grad.dv);
      }
    }
  });

  test('logits of ±1e4 (f64): no overflow, equal to the oracle', () => {
    const c = { B: 1, H: 2, Hkv: 2, Nq: 67, Nk: 131, D: 16 };
    const { q, k, v, dout } = inputs(c, 'f64', 'BNHD', 7);
    const big = (t: Float64Array) => t.map((x) => 100 * x);
    for (const causal of [false, true]) {
      const p = checkForward(q, k, v, { causal });
      const [Q, K, V, dO] = [big(q.data as Float64Array), big(k.data as Float64Array), v.data as Float64Array, dout.data as Float64Array];
      const ref = standardForward(p, Q, K, V);
      const grad = standardBackward(p, dO, Q, K, V);
      assert.ok(ref.lse.some((l) => Math.abs(l) > 1000), 'the logits are large');
      const { O, L } = algorithm1(p, Q, K, V, { Br: 16, Bc: 24 });
      assertClose('O', O, ref.out);
      assertClose('L', L, ref.lse);
      const { dQ, dK, dV } = algorithm2(p, Q, K, V, O, dO, L, { Br: 16, Bc: 24 });
      for (const [name, x, r] of [['dQ', dQ, grad.dq], ['dK', dK, grad.dk], ['dV', dV, grad.dv]] as const) {
        assert.ok(x.every(Number.isFinite), `${name} finite`);
        assertClose(name, x, r);
      }
    }
  });

  test("the paper's block sizes", () => {
    assert.deepEqual(blockSizes(16384, 64), { Br: 64, Bc: 64 });
    assert.deepEqual(blockSizes(16384, 128), { Br: 32, Bc: 32 });
    assert.deepEqual(blockSizes(1000, 3), { Br: 3, Bc: 84 });
  });
});

describe('the oracle backward against finite differences', () => {
  for (const causal of [false, true]) {
    for (const [Nq, Nk, Hkv] of [
      [5, 7, 2],
      [7, 4, 1],
    ]) {
      test(`Nq=${Nq} Nk=${Nk} Hkv=${Hkv} causal=${causal}`, () => {
        const { p, Q, K, V, dO } = f64Inputs({ B: 2, H: 2, Hkv, Nq, Nk, D: 3 }, causal);
        // loss = sum(out ∘ dout); its gradient is what backward returns.
        const loss = () => standardForward(p, Q, K, V).out.reduce((s, o, i) => s + o * dO[i], 0);
        const grad = standardBackward(p, dO, Q, K, V);
        const h = 1e-6;
        for (const [name, x, g] of [
          ['dq', Q, grad.dq],
          ['dk', K, grad.dk],
          ['dv', V, grad.dv],
        ] as const) {
          for (let i = 0; i < x.length; i++) {
            const x0 = x[i];
            x[i] = x0 + h;
            const up = loss();
            x[i] = x0 - h;
            const down = loss();
            x[i] = x0;
            const fd = (up - down) / (2 * h);
            assert.ok(Math.abs(fd - g[i]) <= 1e-7 * Math.max(1, Math.abs(fd)), `${name}[${i}]: analytic ${g[i]}, finite difference ${fd}`);
          }
        }
      });
    }
  }
});
