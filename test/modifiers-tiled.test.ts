// The variants (src/modifiers.ts) in the register-tiled WebGPU kernels (kernels/forward-tiled.ts,
// kernels/backward-tiled.ts): the tiled forward as forwardChoice picks it (on software adapters too), the
// tiled backward forced (software adapters keep the portable kernels), for each modifier set of
// test/modifier-cases.ts, against the float64 oracle.
//
// The yardstick: the error rule (test/util.ts) asks for standard attention of the same dtype; until the
// webgpu standard kernels run the variants, it is the webgpu standard's arithmetic computed here
// (`standardOf`: every product, sum, exp, log, tanh rounded to f32, sums taken in order, S, P, O, dP, dS
// and the gradients rounded to the inputs' dtype where the standard kernels store them), on the same
// modifiers. It has the rounding of the standard kernels but not their shaders' exp and log (correctly
// rounded here, within a few ulp on GPUs), nor their two-level sums, so it is a yardstick of the same
// size, not a looser one.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type Tensor } from '../src/index.js';
import { roundToF16 } from '../src/f16.js';
import { alibiSlope, at, dropoutRow, keeps } from '../src/modifiers.js';
import { checkBackward, checkForward, type Problem } from '../src/problem.js';
import { biasValues } from '../src/reference/standard.js';
import { toF64 } from '../src/tensor.js';
import { defaultGpu, type Gpu } from '../src/webgpu/device.js';
import { BACKWARD_FAMILIES, backwardChoice, FORWARD_FAMILIES, forwardChoice, webgpuBackward, webgpuForward, type BackwardChoice, type ForwardChoice } from '../src/webgpu/index.js';
import type { ForwardTiledParams } from '../src/webgpu/kernels/forward-tiled.js';
import { modsParam } from '../src/webgpu/modifiers.js';
import type { BackwardTiledTiles } from '../src/webgpu/kernels/backward-tiled.js';
import { modifierSets, oracleOf, type ModResults, type Mods } from './modifier-cases.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, inputs, maxError, type Case } from './util.js';

reportWebgpuSkip();

const LOG = process.env.FLASHATTN_LOG_ERRORS === '1';
const f = Math.fround;

/**
 * Standard attention in the dtype of `p` with its modifiers, as the webgpu standard kernels compute it
 * (kernels/standard.ts): arithmetic and sums in f32 (in order), a value rounded to the storage dtype where
 * it is stored (S, P, O, dP, dS and the gradients; lse stays f32), Dvec = rowsum(dO ∘ O) from the stored O;
 * the modifiers as the oracle (src/reference/standard.ts) applies them. Inputs: f64 holding the dtype's values.
 */
function standardOf(p: Problem, q: Float64Array, k: Float64Array, v: Float64Array, dout: Float64Array): ModResults {
  const { B, H, Hkv, Nq, Nk, D, scale } = p;
  const m = p.mods;
  const st = p.dtype === 'f16' ? roundToF16 : f; // a stored value
  const bias = biasValues(m);
  const [out, dq] = [new Float64Array(q.length), new Float64Array(q.length)];
  const [dk, dv] = [new Float64Array(k.length), new Float64Array(k.length)];
  const lse = new Float64Array(B * H * Nq);
  const dbias = m.bias?.grad ? new Float64Array(m.bias.index.shape.reduce((a, c) => a * c, 1)) : undefined;
  const qAt = (b: number, i: number, h: number) => ((b * Nq + i) * H + h) * D;
  const kAt = (b: number, j: number, h: number) => ((b * Nk + j) * Hkv + Math.floor(h / (H / Hkv))) * D;
  const dot = (x: Float64Array, xo: number, y: Float64Array, yo: number) => {
    let s = 0;
    for (let d = 0; d < D; d++) s = f(s + f(x[xo + d] * y[yo + d]));
    return s;
  };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const P = new Float64Array(Nq * Nk);
      const Z = new Float64Array(Nq * Nk).fill(1);
      const G = new Float64Array(Nq * Nk).fill(1); // the soft-cap's derivative
      for (let i = 0; i < Nq; i++) {
        if (m.dropout) dropoutRow(m, b * H + h, i, 0, Nk, Z, i * Nk);
        const S = new Float64Array(Nk);
        let mx = -Infinity;
        for (let j = 0; j < Nk; j++) {
          let s = st(f(scale * dot(q, qAt(b, i, h), k, kAt(b, j, h))));
          if (m.softcap !== undefined) {
            const t = f(Math.tanh(f(s / m.softcap)));
            s = f(m.softcap * t);
            G[i * Nk + j] = f(1 - f(t * t));
          }
          if (m.alibi) s = f(s - f(alibiSlope(m, b, h) * Math.abs(i + Nk - Nq - j)));
          if (bias) s = f(s + bias[at(m.bias!.index, b, h, i, j)]);
          S[j] = keeps(m, b, h, i, j, Nq, Nk) ? s : -Infinity;
          mx = Math.max(mx, S[j]);
        }
        if (mx === -Infinity) {
          lse[(b * H + h) * Nq + i] = -Infinity;
          continue;
        }
        let l = 0;
        for (let j = 0; j < Nk; j++) l = f(l + f(Math.exp(f(S[j] - mx))));
        for (let j = 0; j < Nk; j++) P[i * Nk + j] = st(f(f(Math.exp(f(S[j] - mx))) / l));
        lse[(b * H + h) * Nq + i] = f(mx + f(Math.log(l)));
        for (let d = 0; d < D; d++) {
          let o = 0;
          for (let j = 0; j < Nk; j++) o = f(o + f(f(P[i * Nk + j] * Z[i * Nk + j]) * v[kAt(b, j, h) + d]));
          out[qAt(b, i, h) + d] = st(o);
        }
      }
      // dS = P ∘ (dP ∘ Z − rowsum(dO ∘ O)); dbias takes dS, dQ and dK dS times the soft-cap's derivative.
      const dS = new Float64Array(Nq * Nk);
      for (let i = 0; i < Nq; i++) {
        const rowDot = dot(dout, qAt(b, i, h), out, qAt(b, i, h));
        for (let j = 0; j < Nk; j++) {
          const dP = f(st(dot(dout, qAt(b, i, h), v, kAt(b, j, h))) * Z[i * Nk + j]);
          const x = st(f(P[i * Nk + j] * f(dP - rowDot)));
          if (dbias) dbias[at(m.bias!.index, b, h, i, j)] = f(dbias[at(m.bias!.index, b, h, i, j)] + x);
          dS[i * Nk + j] = f(x * G[i * Nk + j]);
        }
      }
      for (let d = 0; d < D; d++) {
        for (let i = 0; i < Nq; i++) {
          let x = 0;
          for (let j = 0; j < Nk; j++) x = f(x + f(dS[i * Nk + j] * k[kAt(b, j, h) + d]));
          dq[qAt(b, i, h) + d] = f(scale * x);
        }
        for (let j = 0; j < Nk; j++) {
          let x = 0;
          let y = 0;
          for (let i = 0; i < Nq; i++) {
            x = f(x + f(dS[i * Nk + j] * q[qAt(b, i, h) + d]));
            y = f(y + f(f(P[i * Nk + j] * Z[i * Nk + j]) * dout[qAt(b, i, h) + d]));
          }
          dk[kAt(b, j, h) + d] = f(dk[kAt(b, j, h) + d] + f(scale * x)); // summed over the query heads of the group
          dv[kAt(b, j, h) + d] = f(dv[kAt(b, j, h) + d] + y);
        }
      }
    }
  }
  const stored = (x: Float64Array) => x.map(st);
  return { out, lse, dq: stored(dq), dk: stored(dk), dv: stored(dv), ...(dbias && { dbias }) };
}

/** Tiles of the forced tiled backward: uneven micro-tiles and blocks unlike the forward's (Br = 32, Bc = 16 on software adapters). */
const BACKWARD_TILES: { kv: BackwardTiledTiles; q: BackwardTiledTiles } = { kv: { Br: 8, Bc: 16, TM: 1, TN: 2 }, q: { Br: 16, Bc: 8, TM: 2, TN: 1 } };

/** The tiled backward forced, with the call's variants (loops opaque as on software adapters, or unrolled as on GPUs). */
function tiledBackward(unroll: boolean): (p: Problem) => BackwardChoice {
  return (p) => {
    const base = { D: p.D, unroll, dtype: p.dtype as 'f32' | 'f16', causal: p.causal };
    return { kernel: 'tiled', kv: { ...base, ...BACKWARD_TILES.kv, ...modsParam(p, 'backward') }, q: { ...base, ...BACKWARD_TILES.q, ...modsParam(p) } };
  };
}

/** How the kernels are forced: loops unrolled (every kernel), K_j and V_j in two tiles (the forward). */
interface Forced {
  unroll?: boolean;
  split?: boolean;
}

/** forwardChoice's tiled forward, with `forced` applied. */
function forcedForward(forced: Forced): (p: Problem, gpu: Gpu) => ForwardChoice {
  return (p, gpu) => {
    const choice = forwardChoice(p, gpu);
    assert.equal(choice.kernel, 'forwardTiled', 'forwardChoice picks the tiled forward');
    return { kernel: 'forwardTiled', params: { ...(choice.params as ForwardTiledParams), ...forced } };
  };
}

/**
 * Forward (forwardChoice) and forced tiled backward on webgpu with the modifiers, results as f64 (BNHD);
 * `t`: other inputs than the case's.
 */
async function runTiled(c: Case, dtype: 'f32' | 'f16', mods: Mods, gpu: Gpu, t = inputs(c, dtype, 'BNHD'), forced: Forced = {}): Promise<ModResults> {
  const { q, k, v, dout } = t;
  const options = { ...mods, backend: 'webgpu' as const };
  const p = checkForward(q, k, v, options);
  assert.equal(forwardChoice(p, gpu).kernel, 'forwardTiled', 'forwardChoice picks the tiled forward');
  const fw = await webgpuForward(p, q, k, v, forced.unroll || forced.split ? forcedForward(forced) : undefined);
  const pb = checkBackward(dout, q, k, v, fw.out as Tensor, fw.lse as Tensor, options);
  const g = await webgpuBackward(pb, dout, q, k, v, fw.out, fw.lse, tiledBackward(forced.unroll ?? false));
  const x = (t: unknown) => toF64(t as Tensor);
  return { out: x(fw.out), lse: x(fw.lse), dq: x(g.dq), dk: x(g.dk), dv: x(g.dv), ...(g.dbias && { dbias: x(g.dbias) }) };
}

/**
 * Every output against the oracle (of the case's inputs), by the rule with standardOf as the yardstick;
 * `poisoned`: the kernels run on these inputs instead (values the variants keep out of every result).
 */
async function check(c: Case, dtype: 'f32' | 'f16', name: string, mods: Mods, gpu: Gpu, poisoned?: ReturnType<typeof inputs>, forced: Forced = {}) {
  const oracle = oracleOf(c, dtype, mods);
  const { q, k, v, dout } = inputs(c, dtype, 'BNHD');
  const p = checkForward(q, k, v, mods);
  const yardstick = standardOf(p, toF64(q), toF64(k), toF64(v), toF64(dout));
  const got = await runTiled(c, dtype, mods, gpu, poisoned, forced);
  const names = ['out', 'lse', 'dq', 'dk', 'dv', ...(oracle.dbias ? ['dbias' as const] : [])] as const;
  assert.equal(Boolean(got.dbias), Boolean(oracle.dbias), `${name}: dbias returned iff asked`);
  const rows = names.map((n) => [n, maxError(got[n]!, oracle[n]!), maxError(yardstick[n]!, oracle[n]!)] as const);
  const label = `${dtype} B=${c.B} H=${c.H} Hkv=${c.Hkv} Nq=${c.Nq} Nk=${c.Nk} D=${c.D} ${name}${forced.unroll ? ' unrolled' : ''}${forced.split ? ' split' : ''}`;
  if (LOG) console.log(`${label}: ${rows.map(([n, e, s]) => `${n} ${e.toExponential(2)} (standard ${s.toExponential(2)})`).join(', ')}`);
  for (const [n, e, s] of rows) assertWithinRule(`${label} ${n}`, e, s, n === 'out' || n === 'lse' ? 2 : 3);
}

test('a call with variants on a GPU without subgroup matrices: the tiled kernels, their params carrying the flags', () => {
  const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024, maxComputeWorkgroupSizeX: 1024 } as GPUSupportedLimits;
  const gpu = { limits, software: false, matrixF16: false, subgroupSize: undefined } as unknown as Gpu;
  const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 256, Nk: 256, D: 64 };
  const { q, k, v } = inputs(c, 'f32', 'BNHD');
  const p = checkForward(q, k, v, modifierSets(c, 'f32')['bias + mask + dropout + causal']);
  const f = forwardChoice(p, gpu);
  assert.equal(f.kernel, 'forwardTiled');
  assert.equal(f.params.mods, 'bmd');
  const b = backwardChoice(p, gpu);
  assert.equal(b.kernel, 'tiled');
  assert.deepEqual([b.kv.mods, b.q.mods], ['bgmd', 'bmd'], 'dbias is written by the dK/dV kernel only');
});

if (BACKENDS.includes('webgpu')) {
  describe('variants in the tiled kernels, against the oracle', () => {
    test('the tiled kernels call the hooks', () => {
      assert.ok(FORWARD_FAMILIES.forwardTiled.modifiers && BACKWARD_FAMILIES.tiled.modifiers);
    });

    // Tails in every block of both kernels (Nq = 67, Nk = 93), D with no vec4 tail, grouped-query heads.
    const c32: Case = { B: 2, H: 2, Hkv: 1, Nq: 67, Nk: 93, D: 24 };
    for (const [name, mods] of Object.entries(modifierSets(c32, 'f32'))) {
      test(`f32 ${name}`, async () => check(c32, 'f32', name, mods, await defaultGpu()));
    }

    // Tiles the block mask leaves empty are skipped, not computed and masked: NaN keys and values there
    // (keys 32..63: whole key blocks of every kernel's tiles, Bc = 16 and 8) would otherwise reach O
    // through P̃ V (0 · NaN) and dQ through dS K. Their dK and dV are 0, as the oracle's.
    // The forward with K_{j+1} loaded beside V_j (split): the first tile's K before the loop and each next
    // one's are those of the band's first block and of the next non-empty tile.
    test('f32 forward with K_j and V_j in two tiles: the band and the block mask', async () => {
      const sets = modifierSets(c32, 'f32');
      for (const name of ['window (both)', 'block mask', 'block mask + softcap + causal']) await check(c32, 'f32', name, sets[name], await defaultGpu(), undefined, { split: true });
    });

    for (const causal of [false, true]) {
      test(`f32 block mask dropping whole key blocks: never read${causal ? ', causal' : ''}`, async () => {
        const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 67, Nk: 93, D: 24 };
        const [rows, cols] = [Math.ceil(c.Nq / 16), Math.ceil(c.Nk / 32)];
        const data = Uint8Array.from({ length: rows * cols }, (_, e) => (e % cols === 1 ? 0 : 1));
        const mods: Mods = { blockMask: { data, shape: [1, 1, rows, cols], blockSize: [16, 32] }, causal };
        const t = inputs(c, 'f32', 'BNHD');
        const nan = (x: Tensor): Tensor => ({ ...x, data: (x.data as Float32Array).map((y, e) => (Math.floor(e / (c.Hkv * c.D)) % c.Nk >= 32 && Math.floor(e / (c.Hkv * c.D)) % c.Nk < 64 ? NaN : y)) });
        const poisoned = { ...t, k: nan(t.k), v: nan(t.v) };
        await check(c, 'f32', 'block mask, NaN in the dropped keys', mods, await defaultGpu(), poisoned);
        await check(c, 'f32', 'block mask, NaN in the dropped keys', mods, await defaultGpu(), poisoned, { split: true });
      });
    }

    // lavapipe's LLVM takes minutes on unrolled loops, so on a software adapter this runs only where asked
    // (as in test/backward-tiled.test.ts); on a GPU always.
    test('loops unrolled at constant bounds, as on GPUs: every variant at once', async (t) => {
      const gpu = await defaultGpu();
      if (gpu.software && process.env.FLASHATTN_TEST_UNROLLED !== '1') {
        return t.skip('software adapter: minutes of compile time (FLASHATTN_TEST_UNROLLED=1 runs it)');
      }
      const sets = modifierSets(c32, 'f32');
      for (const name of ['bias + mask + dropout + causal', 'block mask + softcap + causal', 'softcap + alibi + window + causal']) {
        await check(c32, 'f32', name, sets[name], gpu, undefined, { unroll: true });
      }
    });

    // f16 storage (bias in f16), Nq > Nk (rows that see no key under causal), D with a vec4 tail.
    const c16: Case = { B: 1, H: 2, Hkv: 2, Nq: 50, Nk: 37, D: 18 };
    for (const name of ['window (both)', 'alibi (per batch) + causal', 'bias (1, H, 1, Nk) + grad', 'bias + mask + dropout + causal', 'block mask + softcap + causal']) {
      test(`f16 ${name}`, async (t) => {
        const gpu = await defaultGpu();
        if (!gpu.f16) return t.skip('no shader-f16 on this adapter');
        await check(c16, 'f16', name, modifierSets(c16, 'f16')[name], gpu);
      });
    }
  });
}
