// The variants (src/modifiers.ts) on the subgroup-matrix (tensor-core) kernels (kernels/forward-matrix.ts,
// kernels/backward-matrix.ts), forced, against the float64 oracle: every modifier set of modifier-cases.ts
// in f16 forward and backward (dbias too), grouped-query heads, Nq ≠ Nk (a tail block moved back over the
// one before it on both axes, rows that see no key), both layouts; and the f32 forward on split halves
// (precision 'high') for the sets without causal. These kernels need f16 subgroup matrices, which a
// software adapter (lavapipe) lacks: there the tests are reported as skipped, with the reason, and run on
// the GPU machine (FLASHATTN_REQUIRE_WEBGPU requires an adapter, not subgroup matrices).
//
// The yardstick: the webgpu standard kernels do not run the variants yet, so the rule's "standard
// attention in the same dtype" is standard attention as those kernels compute it, with f16 (or f32)
// storage of S, P, dP, dS and every output and exact arithmetic otherwise (storedStandard below): its
// error against the oracle is that of the storage rounding alone. Their f32 arithmetic adds about 1e-7
// relative, 1/5000 of f16's half ulp, so for f16 this is the webgpu standard's error to within a few
// per cent (checked against it on the plain case below); for f32 the rule's +1e-6 carries it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { backward, forward, type Layout, type Tensor } from '../src/index.js';
import { roundToF16 } from '../src/f16.js';
import { dropoutRow, modifyRow } from '../src/modifiers.js';
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

/**
 * Standard attention with the modifiers as the webgpu standard kernels store it (kernels/standard.ts):
 * the modified S, P (forward, and recomputed as exp(S − L) in the backward), dP, dS and the outputs rounded
 * to `dtype`, everything else exact; dK and dV summed over a group's query heads before rounding, dbias
 * summed from the stored dS. BNHD inputs, as the oracle's.
 */
function storedStandard(c: Case, dtype: 'f16' | 'f32', mods: Mods): ModResults {
  const round = dtype === 'f16' ? roundToF16 : Math.fround;
  const t = inputs(c, dtype, 'BNHD');
  const [Q, K, V, dO] = [t.q, t.k, t.v, t.dout].map((x) => toF64(x));
  const p = checkForward(t.q, t.k, t.v, mods);
  const m = p.mods;
  const bias = biasValues(m);
  const { B, H, Hkv, Nq, Nk, D } = c;
  const qa = (b: number, i: number, h: number) => ((b * Nq + i) * H + h) * D;
  const ka = (b: number, j: number, h: number) => ((b * Nk + j) * Hkv + h) * D;
  const out = new Float64Array(Q.length);
  const lse = new Float64Array(B * H * Nq);
  const dq = new Float64Array(Q.length);
  const dk = new Float64Array(K.length);
  const dv = new Float64Array(V.length);
  const index = m.bias?.grad ? m.bias.index : undefined;
  const dbias = index && new Float64Array(index.shape.reduce((a, x) => a * x, 1));
  const [S, g, Z, P] = [new Float64Array(Nk), new Float64Array(Nk), new Float64Array(Nk), new Float64Array(Nk)];
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / (H / Hkv));
      for (let i = 0; i < Nq; i++) {
        const qo = qa(b, i, h);
        for (let j = 0; j < Nk; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += Q[qo + d] * K[ka(b, j, hk) + d];
          S[j] = p.scale * s;
        }
        modifyRow(m, b, h, i, 0, Nk, S, 0, Nq, Nk, bias, g);
        let mx = -Infinity;
        for (let j = 0; j < Nk; j++) mx = Math.max(mx, (S[j] = round(S[j])));
        let l = 0;
        for (let j = 0; j < Nk; j++) l += mx === -Infinity ? 0 : Math.exp(S[j] - mx);
        const L = mx === -Infinity ? -Infinity : Math.fround(mx + Math.log(l));
        lse[(b * H + h) * Nq + i] = L;
        if (m.dropout) dropoutRow(m, b * H + h, i, 0, Nk, Z, 0);
        else Z.fill(1);
        for (let j = 0; j < Nk; j++) P[j] = L === -Infinity ? 0 : round(Math.exp(S[j] - mx) / l);
        for (let d = 0; d < D; d++) {
          let o = 0;
          for (let j = 0; j < Nk; j++) o += P[j] * Z[j] * V[ka(b, j, hk) + d];
          out[qo + d] = round(o);
        }
        // The backward: D = rowsum(dO ∘ O), P = exp(S − L) as stored, dP = dO Vᵀ, dS = P ∘ (dP ∘ Z − D).
        let rowD = 0;
        for (let d = 0; d < D; d++) rowD += dO[qo + d] * out[qo + d];
        for (let j = 0; j < Nk; j++) {
          const pb = L === -Infinity ? 0 : round(Math.exp(S[j] - L));
          let dp = 0;
          for (let d = 0; d < D; d++) dp += dO[qo + d] * V[ka(b, j, hk) + d];
          const ds = round(pb * (round(dp) * Z[j] - rowD));
          if (dbias && index) dbias[b * index.strides[0] + h * index.strides[1] + i * index.strides[2] + j * index.strides[3]] += ds;
          const dsg = ds * g[j];
          const ko = ka(b, j, hk);
          for (let d = 0; d < D; d++) {
            dq[qo + d] += p.scale * dsg * K[ko + d];
            dk[ko + d] += p.scale * dsg * Q[qo + d];
            dv[ko + d] += pb * Z[j] * dO[qo + d];
          }
        }
        for (let d = 0; d < D; d++) dq[qo + d] = round(dq[qo + d]);
      }
    }
  }
  for (const x of [dk, dv]) for (let e = 0; e < x.length; e++) x[e] = round(x[e]);
  return { out, lse, dq, dk, dv, ...(dbias && { dbias }) };
}

/** The sets without causal (the split f32 forward does not run causal calls). */
const notCausal = (sets: Record<string, Mods>) => Object.entries(sets).filter(([, m]) => !m.causal);

if (GPU) {
  test('the yardstick: standard attention with f16 storage is the webgpu standard to within 5 % on a plain f16 case', async () => {
    const c: Case = { B: 1, H: 4, Hkv: 2, Nq: 200, Nk: 300, D: 64 };
    const oracle = oracleOf(c, 'f16', {});
    const stored = storedStandard(c, 'f16', {});
    const { q, k, v, dout } = inputs(c, 'f16', 'BNHD');
    const f = await forward(q, k, v, { backend: 'webgpu', algorithm: 'standard' });
    const gr = await backward(dout, q, k, v, f.out, f.lse, { backend: 'webgpu', algorithm: 'standard' });
    const webgpu = { out: toF64(f.out), lse: toF64(f.lse), dq: toF64(gr.dq), dk: toF64(gr.dk), dv: toF64(gr.dv) };
    for (const x of ['out', 'lse', 'dq', 'dk', 'dv'] as const) {
      const [e, s] = [maxError(stored[x], oracle[x]), maxError(webgpu[x], oracle[x])];
      assert.ok(Math.abs(e - s) <= 0.05 * s, `${x}: stored-rounding standard ${e.toExponential(3)}, webgpu standard ${s.toExponential(3)}`);
    }
  });
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
    for (const [name, mods] of notCausal(modifierSets(c, 'f32'))) {
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
