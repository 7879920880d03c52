// The variants (src/modifiers.ts) on the subgroup-matrix (tensor-core) kernels (kernels/forward-matrix.ts,
// kernels/backward-matrix.ts), forced, against the float64 oracle: every modifier set of modifier-cases.ts
// in f16 forward and backward (dbias too), grouped-query heads, Nq ≠ Nk (a tail block moved back over the
// one before it on both axes, rows that see no key), both layouts; f32 calls with variants at precision
// 'high' do not run on split halves. These kernels need f16
// subgroup matrices, which a software adapter (lavapipe) lacks: there the tests are reported as skipped,
// with the reason, and run on the GPU machine (FLASHATTN_REQUIRE_WEBGPU requires an adapter, not
// subgroup matrices).
//
// The yardstick: the webgpu standard attention with the same variants, in the same dtype, as the rule asks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Layout, Tensor } from '../src/index.js';
import { checkBackward, checkForward, type Problem } from '../src/problem.js';
import { toF64 } from '../src/tensor.js';
import { webgpuStatus, type Gpu } from '../src/webgpu/device.js';
import { backwardChoice, backwardMatrixParams, forwardChoice, forwardMatrixParams, webgpuBackward, webgpuForward, type BackwardChoice, type ForwardChoice } from '../src/webgpu/index.js';
import { modifierSets, oracleOf, runWith, type ModResults, type Mods } from './modifier-cases.js';
import { BACKENDS, bnhd, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, inputs, maxError, type Case } from './util.js';

reportWebgpuSkip();

const LOG = process.env.FLASHATTN_LOG_ERRORS === '1';

/** The error rule, and with FLASHATTN_LOG_ERRORS=1 the errors printed (for the margins in reports). */
function rule(what: string, err: number, errStandard: number, factor: 2 | 3): void {
  if (LOG) console.log(`${what}: ${err.toExponential(2)} (standard ${errStandard.toExponential(2)}, bound ${(factor * errStandard + 1e-6).toExponential(2)})`);
  assertWithinRule(what, err, errStandard, factor);
}

const status = await webgpuStatus();
/** The adapter, where the webgpu tests run (reportWebgpuSkip has said why where not). */
const GPU = status.ok && BACKENDS.includes('webgpu') ? status.gpu : undefined;
const SKIP =
  GPU && (!GPU.matrixF16 || GPU.subgroupSize === undefined)
    ? `subgroup-matrix variants: skipped, the adapter (${GPU.description || 'unnamed'}) has no f16 subgroup matrices with a fixed subgroup size; they run on a GPU that lists them`
    : undefined;
if (SKIP) test(SKIP, { skip: SKIP }, () => {});

/** The subgroup-matrix forward, forced (the test fails where it does not fit the case). */
function matrixForward(p: Problem, gpu: Gpu): ForwardChoice {
  const params = forwardMatrixParams(p, gpu);
  assert.ok(params, 'the subgroup-matrix forward fits the case');
  return { kernel: 'forwardMatrix', params };
}

function matrixBackward(p: Problem, gpu: Gpu): BackwardChoice {
  const params = backwardMatrixParams(p, gpu);
  assert.ok(params, 'the subgroup-matrix backward fits the case');
  return { kernel: 'matrix', ...params };
}

/** Forward (and for f16 backward) on the subgroup-matrix kernels with the modifiers, results as BNHD f64. */
async function matrixRun(c: Case, dtype: 'f16' | 'f32', layout: Layout, mods: Mods): Promise<Partial<ModResults>> {
  const { q, k, v, dout } = inputs(c, dtype, layout);
  const options = { ...mods, layout, ...(dtype === 'f32' && { precision: 'high' as const }) };
  const f = await webgpuForward(checkForward(q, k, v, options), q, k, v, matrixForward);
  const [out, lse] = [f.out as Tensor, f.lse as Tensor];
  const fwd = { out: bnhd(out, layout), lse: toF64(lse) };
  if (dtype === 'f32') return fwd; // the f32 backward runs on the tiled or portable kernels
  const g = await webgpuBackward(checkBackward(dout, q, k, v, out, lse, options), dout, q, k, v, out, lse, matrixBackward);
  return {
    ...fwd,
    dq: bnhd(g.dq as Tensor, layout),
    dk: bnhd(g.dk as Tensor, layout),
    dv: bnhd(g.dv as Tensor, layout),
    ...(g.dbias && { dbias: toF64(g.dbias as Tensor) }),
  };
}

if (GPU && !SKIP) {
  const gpu = GPU;
  describe('subgroup-matrix kernels with the variants against the oracle', () => {

    test('calls with variants choose the subgroup-matrix kernels', () => {
      const c: Case = { B: 1, H: 4, Hkv: 2, Nq: 200, Nk: 300, D: 64 };
      const { q, k, v, dout } = inputs(c, 'f16', 'BNHD');
      for (const [name, mods] of Object.entries(modifierSets(c, 'f16'))) {
        assert.equal(forwardChoice(checkForward(q, k, v, mods), gpu).kernel, 'forwardMatrix', name);
        assert.equal(backwardChoice(checkBackward(dout, q, k, v, q, { data: new Float32Array(c.H * c.Nq), dtype: 'f32', shape: [1, c.H, c.Nq] }, mods), gpu).kernel, 'matrix', name);
      }
    });

    const grid: { c: Case; layout: Layout }[] = [
      { c: { B: 1, H: 4, Hkv: 2, Nq: 200, Nk: 300, D: 64 }, layout: 'BNHD' },
      { c: { B: 2, H: 2, Hkv: 2, Nq: 160, Nk: 144, D: 32 }, layout: 'BHND' },
    ];
    for (const { c, layout } of grid) {
      for (const [name, mods] of Object.entries(modifierSets(c, 'f16'))) {
        const label = `${name}: f16 ${layout} Nq=${c.Nq} Nk=${c.Nk} H=${c.H}/${c.Hkv} D=${c.D}`;
        test(label, async () => {
          const oracle = oracleOf(c, 'f16', mods);
          const standard = await runWith(c, 'f16', 'BNHD', mods, { backend: 'webgpu', algorithm: 'standard' });
          const got = await matrixRun(c, 'f16', layout, mods);
          for (const x of ['out', 'lse'] as const) rule(`${label} ${x}`, maxError(got[x]!, oracle[x]), maxError(standard[x], oracle[x]), 2);
          for (const x of ['dq', 'dk', 'dv'] as const) rule(`${label} ${x}`, maxError(got[x]!, oracle[x]), maxError(standard[x], oracle[x]), 3);
          if (mods.biasGrad) {
            assert.ok(got.dbias, 'dbias returned');
            rule(`${label} dbias`, maxError(got.dbias, oracle.dbias!), maxError(standard.dbias!, oracle.dbias!), 3);
          }
        });
      }
    }

    const c: Case = { B: 1, H: 4, Hkv: 2, Nq: 200, Nk: 300, D: 64 };
    test("f32 at precision 'high' with variants is not run on split halves", () => {
      const { q, k, v } = inputs(c, 'f32', 'BNHD');
      assert.equal(forwardChoice(checkForward(q, k, v, { precision: 'high' }), gpu).kernel, 'forwardMatrix', 'without variants');
      for (const [name, mods] of Object.entries(modifierSets(c, 'f32'))) {
        assert.notEqual(forwardChoice(checkForward(q, k, v, { ...mods, precision: 'high' }), gpu).kernel, 'forwardMatrix', name);
      }
    });
  });
}
