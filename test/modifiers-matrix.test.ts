// The variants (src/modifiers.ts) on the subgroup-matrix (tensor-core) kernels (kernels/forward-matrix.ts,
// kernels/backward-matrix.ts), forced, against the float64 oracle: every modifier set of modifier-cases.ts
// in f16 forward and backward (dbias too), grouped-query heads, Nq ≠ Nk (a tail block moved back over the
// one before it on both axes, rows that see no key), both layouts; and the f32 forward on split halves
// (precision 'high') for the sets it runs (not causal, no bias nor ALiBi). These kernels need f16
// subgroup matrices, which a software adapter (lavapipe) lacks: there the tests are reported as skipped,
// with the reason, and run on the GPU machine (FLASHATTN_REQUIRE_WEBGPU requires an adapter, not
// subgroup matrices).
//
// The yardstick: the webgpu standard kernels do not run the variants in this branch, so the rule's
// "standard attention in the same dtype" is computed here as those kernels compute it (storedStandard:
// f32 arithmetic, values stored in the dtype where they store them). Checked against the webgpu standard
// itself on a plain case (on any adapter): f16 to the digits printed, f32 within 30 % (exp and log are
// correctly rounded here, not in shaders).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { backward, forward, type Layout, type Tensor } from '../src/index.js';
import { roundToF16 } from '../src/f16.js';
import { alibiSlope, at, dropoutRow, keeps } from '../src/modifiers.js';
import { checkBackward, checkForward, type Problem } from '../src/problem.js';
import { biasValues } from '../src/reference/standard.js';
import { toF64 } from '../src/tensor.js';
import { webgpuStatus, type Gpu } from '../src/webgpu/device.js';
import { backwardChoice, backwardMatrixParams, forwardChoice, forwardMatrixParams, webgpuBackward, webgpuForward, type BackwardChoice, type ForwardChoice } from '../src/webgpu/index.js';
import { modifierSets, oracleOf, type ModResults, type Mods } from './modifier-cases.js';
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

/** Σ term(x) for x < n in f32, in chunks of 16 summed in order, then the chunks' sums in order (the standard matmul's BK = 16). */
function sum32(n: number, term: (x: number) => number): number {
  let total = 0;
  for (let c = 0; c < n; c += 16) {
    let part = 0;
    for (let x = c; x < Math.min(n, c + 16); x++) part = f32(part + term(x));
    total = f32(total + part);
  }
  return total;
}
const f32 = Math.fround;

/**
 * Standard attention with the modifiers as the webgpu standard kernels compute it (kernels/standard.ts,
 * with the variants as the portable kernels' branch gives them): every product, sum, exp, log and tanh in
 * f32 (sums as sum32), S = scale·QKᵀ, P ∘ Z, O, dP, dS and the gradients rounded to `dtype` where those
 * kernels store them; the modified score from the stored S, L in f32, D = rowsum(dO ∘ O) from the stored
 * O, dbias from dS in f32. Not modelled: the shaders' exp and log (correctly rounded here, within a few
 * ulp on GPUs) and their tree reductions' order. BNHD inputs, as the oracle's.
 */
function storedStandard(c: Case, dtype: 'f16' | 'f32', mods: Mods): ModResults {
  const st = dtype === 'f16' ? roundToF16 : f32; // a stored value
  const t = inputs(c, dtype, 'BNHD');
  const [Q, K, V, dO] = [t.q, t.k, t.v, t.dout].map((x) => toF64(x));
  const p = checkForward(t.q, t.k, t.v, mods);
  const m = p.mods;
  const bias = biasValues(m);
  const { B, H, Hkv, Nq, Nk, D } = c;
  const scale = f32(p.scale);
  const qa = (b: number, i: number, h: number) => ((b * Nq + i) * H + h) * D;
  const ka = (b: number, j: number, h: number) => ((b * Nk + j) * Hkv + Math.floor(h / (H / Hkv))) * D;
  const dot = (x: Float64Array, xo: number, y: Float64Array, yo: number) => sum32(D, (d) => f32(x[xo + d] * y[yo + d]));
  const out = new Float64Array(Q.length);
  const lse = new Float64Array(B * H * Nq);
  const [dq, dk, dv] = [new Float64Array(Q.length), new Float64Array(K.length), new Float64Array(V.length)];
  const index = m.bias?.grad ? m.bias.index : undefined;
  const dbias = index && new Float64Array(index.shape.reduce((a, x) => a * x, 1));
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const [X, G, Z, PZ, dS] = [0, 0, 0, 0, 0].map(() => new Float64Array(Nq * Nk)); // modified S, soft-cap derivative, Z, P ∘ Z, dS
      const L = new Float64Array(Nq);
      for (let i = 0; i < Nq; i++) {
        const e = i * Nk;
        for (let j = 0; j < Nk; j++) X[e + j] = st(f32(scale * dot(Q, qa(b, i, h), K, ka(b, j, h))));
        // The modifiers as the oracle's modifyRow applies them, each step in f32.
        for (let j = 0; j < Nk; j++) {
          let x = X[e + j];
          G[e + j] = 1;
          if (m.softcap !== undefined) {
            const th = f32(Math.tanh(f32(x / m.softcap)));
            x = f32(m.softcap * th);
            G[e + j] = f32(1 - f32(th * th));
          }
          if (m.alibi) x = f32(x - f32(alibiSlope(m, b, h) * Math.abs(i + Nk - Nq - j)));
          if (bias) x = f32(x + bias[at(m.bias!.index, b, h, i, j)]);
          X[e + j] = keeps(m, b, h, i, j, Nq, Nk) ? x : -Infinity;
        }
        if (m.dropout) dropoutRow(m, b * H + h, i, 0, Nk, Z, e);
        else Z.fill(1, e, e + Nk);
        let mx = -Infinity;
        for (let j = 0; j < Nk; j++) mx = Math.max(mx, X[e + j]);
        if (mx === -Infinity) {
          L[i] = -Infinity;
          continue;
        }
        const l = sum32(Nk, (j) => f32(Math.exp(f32(X[e + j] - mx))));
        L[i] = f32(mx + f32(Math.log(l)));
        for (let j = 0; j < Nk; j++) PZ[e + j] = st(f32(f32(f32(Math.exp(f32(X[e + j] - mx))) / l) * Z[e + j]));
        for (let d = 0; d < D; d++) out[qa(b, i, h) + d] = st(sum32(Nk, (j) => f32(PZ[e + j] * V[ka(b, j, h) + d])));
      }
      lse.set(L, (b * H + h) * Nq);
      // The backward: P = exp(S − L) as stored, dP = dO Vᵀ as stored, dS = P ∘ (dP ∘ Z − D).
      for (let i = 0; i < Nq; i++) {
        const e = i * Nk;
        const rowD = dot(dO, qa(b, i, h), out, qa(b, i, h));
        for (let j = 0; j < Nk; j++) {
          const pj = L[i] === -Infinity || X[e + j] === -Infinity ? 0 : st(f32(Math.exp(f32(X[e + j] - L[i]))));
          PZ[e + j] = st(f32(pj * Z[e + j]));
          const dP = st(dot(dO, qa(b, i, h), V, ka(b, j, h)));
          const ds = f32(pj * f32(f32(dP * Z[e + j]) - rowD));
          if (dbias && index) dbias[at(index, b, h, i, j)] = f32(dbias[at(index, b, h, i, j)] + ds);
          dS[e + j] = st(f32(ds * G[e + j]));
        }
      }
      for (let i = 0; i < Nq; i++) for (let d = 0; d < D; d++) dq[qa(b, i, h) + d] = st(f32(scale * sum32(Nk, (j) => f32(dS[i * Nk + j] * K[ka(b, j, h) + d]))));
      // dK and dV: summed over the group's query heads before they are stored (the last head rounds them).
      const last = h % (H / Hkv) === H / Hkv - 1;
      for (let j = 0; j < Nk; j++) {
        for (let d = 0; d < D; d++) {
          const o = ka(b, j, h) + d;
          dk[o] = f32(dk[o] + f32(scale * sum32(Nq, (i) => f32(dS[i * Nk + j] * Q[qa(b, i, h) + d]))));
          dv[o] = f32(dv[o] + sum32(Nq, (i) => f32(PZ[i * Nk + j] * dO[qa(b, i, h) + d])));
          if (last) [dk[o], dv[o]] = [st(dk[o]), st(dv[o])];
        }
      }
    }
  }
  return { out, lse, dq, dk, dv, ...(dbias && { dbias }) };
}

/** How far the yardstick computed here may be from the webgpu standard's error (relative). */
const TOLERANCE = { f16: 0.05, f32: 0.5 };

/** The sets the split f32 forward runs: not causal, no bias nor ALiBi (families.ts, forwardMatrixParams). */
const splitRuns = (m: Mods) => !m.causal && !m.bias && !m.alibiSlopes;

if (GPU) {
  for (const dtype of ['f16', 'f32'] as const) {
    test(`the yardstick: standard attention computed here is the webgpu standard's error to within ${TOLERANCE[dtype]} on a plain ${dtype} case`, async () => {
      const c: Case = { B: 1, H: 4, Hkv: 2, Nq: 200, Nk: 300, D: 64 };
      const oracle = oracleOf(c, dtype, {});
      const stored = storedStandard(c, dtype, {});
      const { q, k, v, dout } = inputs(c, dtype, 'BNHD');
      const f = await forward(q, k, v, { backend: 'webgpu', algorithm: 'standard' });
      const gr = await backward(dout, q, k, v, f.out, f.lse, { backend: 'webgpu', algorithm: 'standard' });
      const webgpu = { out: toF64(f.out), lse: toF64(f.lse), dq: toF64(gr.dq), dk: toF64(gr.dk), dv: toF64(gr.dv) };
      for (const x of ['out', 'lse', 'dq', 'dk', 'dv'] as const) {
        const [e, s] = [maxError(stored[x], oracle[x]), maxError(webgpu[x], oracle[x])];
        if (LOG) console.log(`yardstick ${dtype} ${x}: computed here ${e.toExponential(3)}, webgpu standard ${s.toExponential(3)}`);
        assert.ok(Math.abs(e - s) <= TOLERANCE[dtype] * s, `${dtype} ${x}: computed here ${e.toExponential(3)}, webgpu standard ${s.toExponential(3)}`);
      }
    });
  }
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
          const standard = storedStandard(c, 'f16', mods);
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
    test("f32 at precision 'high' with a bias or ALiBi is not run on split halves", () => {
      const { q, k, v } = inputs(c, 'f32', 'BNHD');
      for (const [name, mods] of Object.entries(modifierSets(c, 'f32'))) {
        const p = checkForward(q, k, v, { ...mods, precision: 'high' });
        assert.equal(forwardChoice(p, gpu).kernel === 'forwardMatrix', splitRuns(mods), name);
      }
    });
    for (const [name, mods] of Object.entries(modifierSets(c, 'f32')).filter(([, m]) => splitRuns(m))) {
      const label = `${name}: f32 (split halves, precision 'high') forward BNHD Nq=${c.Nq} Nk=${c.Nk} H=${c.H}/${c.Hkv} D=${c.D}`;
      test(label, async () => {
        const oracle = oracleOf(c, 'f32', mods);
        const standard = storedStandard(c, 'f32', mods);
        const got = await matrixRun(c, 'f32', 'BNHD', mods);
        for (const x of ['out', 'lse'] as const) rule(`${label} ${x}`, maxError(got[x]!, oracle[x]), maxError(standard[x], oracle[x]), 2);
      });
    }
  });
}
