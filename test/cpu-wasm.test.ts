// The cpu backend's WebAssembly forward and backward (src/cpu/wasm): against the float64 oracle under the
// error rule of util.ts (the cpu's standard attention as yardstick, as spec.ts does) on a spread of
// shapes, through the normal path (worker threads for the larger cases, inline for the small); beside
// flash.ts's JavaScript kernels on the same inputs; and the semantics the JavaScript kernels have at the
// edges (NaN, rows that see no key). Then the same with the variants (test/modifier-cases.ts's sets), and
// a check that the generated modules are still the plain kernels' bytes.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { backward, decodeF16, encodeF16, forward, type DType, type Layout, type Tensor } from '../src/index.js';
import { linearScratch, linearTask, linearTasks, type LinearKernel, type LinearShape } from '../src/cpu/linear.js';
import { linearModule, wasmLinearKernel } from '../src/cpu/wasm/linear.js';
import { f16ToNumber } from '../src/f16.js';
import { checkForward } from '../src/problem.js';
import { standardBackward, standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { backwardTask, backwardTasks, forwardTask, forwardTasks, reduceDq, type BackwardArrays, type ForwardArrays } from '../src/cpu/flash.js';
import { cpuShape, scratchLength, tileSizes, type CpuShape } from '../src/cpu/job.js';
import { backwardLayout, backwardModule } from '../src/cpu/wasm/backward-module.js';
import { forwardLayout, forwardModule } from '../src/cpu/wasm/forward-module.js';
import { instance, reserve } from '../src/cpu/wasm/instance.js';
import { modifyRow, type Modifiers } from '../src/modifiers.js';
import { biasValues } from '../src/reference/standard.js';
import { setCpuKernels, setWasmVariant, wasmBackward, wasmForward, wasmSupport } from '../src/cpu/wasm/index.js';
import { bnhd } from './spec.js';
import { modifierSets, oracleOf, runWith, type Mods } from './modifier-cases.js';
import { assertWithinRule, inputs, maxError, type Case } from './util.js';

interface Spec extends Case {
  dtype: DType;
  layout: Layout;
  causal: boolean;
}

const CASES: Spec[] = [
  { B: 1, H: 2, Hkv: 2, Nq: 1, Nk: 1, D: 1, dtype: 'f32', layout: 'BNHD', causal: false },
  { B: 2, H: 3, Hkv: 3, Nq: 113, Nk: 203, D: 1, dtype: 'f32', layout: 'BNHD', causal: true },
  { B: 2, H: 2, Hkv: 1, Nq: 130, Nk: 77, D: 8, dtype: 'f32', layout: 'BHND', causal: false },
  { B: 1, H: 4, Hkv: 2, Nq: 203, Nk: 113, D: 40, dtype: 'f16', layout: 'BNHD', causal: true },
  { B: 2, H: 3, Hkv: 3, Nq: 129, Nk: 257, D: 59, dtype: 'f32', layout: 'BNHD', causal: false },
  { B: 1, H: 2, Hkv: 2, Nq: 256, Nk: 512, D: 59, dtype: 'f16', layout: 'BHND', causal: true },
  { B: 1, H: 4, Hkv: 1, Nq: 300, Nk: 300, D: 64, dtype: 'f32', layout: 'BNHD', causal: true },
  { B: 2, H: 2, Hkv: 2, Nq: 257, Nk: 129, D: 64, dtype: 'f32', layout: 'BHND', causal: false },
  { B: 1, H: 3, Hkv: 3, Nq: 150, Nk: 250, D: 128, dtype: 'f16', layout: 'BNHD', causal: false },
  { B: 1, H: 2, Hkv: 1, Nq: 200, Nk: 100, D: 128, dtype: 'f32', layout: 'BHND', causal: true },
  { B: 1, H: 2, Hkv: 2, Nq: 97, Nk: 333, D: 256, dtype: 'f32', layout: 'BNHD', causal: true },
  { B: 2, H: 1, Hkv: 1, Nq: 64, Nk: 190, D: 256, dtype: 'f16', layout: 'BHND', causal: false },
];

const label = (c: Spec) => `${c.dtype} ${c.layout} causal=${c.causal} B=${c.B} H=${c.H} Hkv=${c.Hkv} Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`;

async function run(c: Spec, t: { q: Tensor; k: Tensor; v: Tensor; dout: Tensor }, algorithm: 'flash' | 'standard') {
  const options = { causal: c.causal, layout: c.layout, backend: 'cpu', algorithm } as const;
  const f = await forward(t.q, t.k, t.v, options);
  const g = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, options);
  return { out: bnhd(f.out, c.layout), lse: toF64(f.lse), dq: bnhd(g.dq, c.layout), dk: bnhd(g.dk, c.layout), dv: bnhd(g.dv, c.layout) };
}

const OUTPUTS = [['out', 2], ['lse', 2], ['dq', 3], ['dk', 3], ['dv', 3]] as const;

describe('cpu WebAssembly forward and backward', () => {
  test('the runtime has WebAssembly SIMD, so the cpu forward and backward run it', () => {
    assert.notEqual(wasmSupport(), 'none');
  });

  for (const c of CASES) {
    test(`against the float64 oracle, and beside the JavaScript kernels: ${label(c)}`, async () => {
      const t = inputs(c, c.dtype, c.layout);
      const base = inputs(c, c.dtype, 'BNHD');
      const p = checkForward(base.q, base.k, base.v, { causal: c.causal });
      const [Q, K, V, dO] = [toF64(base.q), toF64(base.k), toF64(base.v), toF64(base.dout)];
      const oracle = { ...standardForward(p, Q, K, V), ...standardBackward(p, dO, Q, K, V) };
      const standard = await run(c, t, 'standard');
      const got = await run(c, t, 'flash');
      setCpuKernels('js');
      let js;
      try {
        js = await run(c, t, 'flash');
      } finally {
        setCpuKernels('wasm');
      }
      // The two kernels round differently (f32 products against f64): results that differ show both ran.
      if (c.Nk > 1) {
        for (const k of ['out', 'dq', 'dk', 'dv'] as const) assert.ok(maxError(got[k], js[k]) > 0, `the WebAssembly and JavaScript kernels gave identical ${k}`);
      }
      if (process.env.FLASHATTN_TEST_VERBOSE === '1') {
        const e = (r: typeof got, k: (typeof OUTPUTS)[number][0]) => `${maxError(r[k], oracle[k]).toExponential(2)}`;
        process.stderr.write(`${label(c)}: ${OUTPUTS.map(([k]) => `${k} ${e(got, k)} js ${e(js, k)} std ${e(standard, k)}`).join('; ')}\n`);
      }
      for (const [name, r] of [['wasm', got], ['js', js]] as const) {
        for (const [k, factor] of OUTPUTS) assertWithinRule(`${name} ${label(c)} ${k}`, maxError(r[k], oracle[k]), maxError(standard[k], oracle[k]), factor);
      }
    });
  }
});

/** A job shape for direct calls of the task functions (BNHD). */
function shapeOf(c: Case, causal: boolean, chunks = 1): CpuShape {
  const { Br, Bc } = tileSizes(c.D);
  return {
    B: c.B, H: c.H, Hkv: c.Hkv, Nq: c.Nq, Nk: c.Nk, D: c.D, causal, scale: 1 / Math.sqrt(c.D),
    qBatch: c.Nq * c.H * c.D, qRow: c.H * c.D, qHead: c.D,
    kvBatch: c.Nk * c.Hkv * c.D, kvRow: c.Hkv * c.D, kvHead: c.D,
    Br, Bc, chunks, f16Scores: false,
  };
}

/** Both kernels' task functions over all tasks, on the same f32 inputs. */
function both(c: Case, causal: boolean, q: Float32Array, k: Float32Array, v: Float32Array) {
  const s = shapeOf(c, causal);
  const arrays = () => ({ q, k, v, out: new Float32Array(q.length), lse: new Float32Array(c.B * c.H * c.Nq) });
  const js = arrays();
  const scratch = new Float64Array(scratchLength('flashForward', s));
  for (let t = 0; t < forwardTasks(s); t++) forwardTask(s, js, t, scratch);
  const wasm = arrays();
  const task = wasmForward(s, wasm);
  assert.ok(task, 'the WebAssembly kernel runs here');
  for (let t = 0; t < forwardTasks(s); t++) task(t);
  return { js, wasm };
}

function f32(t: Tensor): Float32Array {
  return Float32Array.from(toF64(t));
}

describe('cpu WebAssembly forward, task by task beside flash.ts', () => {
  const variants = wasmSupport() === 'relaxed' ? (['relaxed', 'simd'] as const) : (['simd'] as const);
  for (const variant of variants) {
    test(`${variant}: the same results as the JavaScript kernel within f32 rounding, every D from 1 to 20 and some larger`, () => {
      setWasmVariant(variant);
      try {
        for (const D of [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 20, 33, 100]) {
          for (const causal of [false, true]) {
            const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 37 + D, Nk: 70 - D / 2 | 0, D };
            const t = inputs(c, 'f32', 'BNHD', D);
            const { js, wasm } = both(c, causal, f32(t.q), f32(t.k), f32(t.v));
            const eo = maxError(Float64Array.from(wasm.out), Float64Array.from(js.out));
            const el = maxError(Float64Array.from(wasm.lse), Float64Array.from(js.lse));
            assert.ok(eo < 1e-5 && el < 1e-5, `D=${D} causal=${causal}: out differs by ${eo}, lse by ${el}`);
          }
        }
      } finally {
        setWasmVariant(undefined);
      }
    });
  }

  test('a NaN in one query row poisons that row only; a NaN in a key poisons only the rows that see it', () => {
    const c: Case = { B: 1, H: 1, Hkv: 1, Nq: 40, Nk: 40, D: 8 };
    const t = inputs(c, 'f32', 'BNHD');
    const q = f32(t.q);
    const k = f32(t.k);
    q[5 * 8 + 3] = NaN; // query row 5
    k[20 * 8 + 1] = NaN; // key 20: causal rows 20.. see it
    for (const causal of [false, true]) {
      const { js, wasm } = both(c, causal, q, k, f32(t.v));
      for (let r = 0; r < c.Nq; r++) {
        const poisoned = r === 5 || !causal || r >= 20;
        assert.equal(Number.isNaN(wasm.lse[r]), poisoned, `causal=${causal} row ${r} lse`);
        assert.equal(Number.isNaN(wasm.lse[r]), Number.isNaN(js.lse[r]), `causal=${causal} row ${r}: as the JavaScript kernel`);
        for (let x = 0; x < c.D; x++) assert.equal(Number.isNaN(wasm.out[r * 8 + x]), poisoned, `causal=${causal} row ${r} out`);
      }
    }
  });

  test('a NaN in a value row reaches only the rows that see its key', () => {
    const c: Case = { B: 1, H: 1, Hkv: 1, Nq: 9, Nk: 9, D: 4 };
    const t = inputs(c, 'f32', 'BNHD');
    const v = f32(t.v);
    v[6 * 4] = NaN;
    const { wasm } = both(c, true, f32(t.q), f32(t.k), v);
    for (let r = 0; r < c.Nq; r++) assert.equal(Number.isNaN(wasm.out[r * 4]), r >= 6, `row ${r}`);
  });

  test('causal with Nq > Nk: rows that see no key give out = 0 and lse = −∞', () => {
    const c: Case = { B: 1, H: 2, Hkv: 2, Nq: 150, Nk: 70, D: 24 };
    const t = inputs(c, 'f32', 'BNHD');
    const { wasm } = both(c, true, f32(t.q), f32(t.k), f32(t.v));
    for (let h = 0; h < c.H; h++) {
      for (let n = 0; n < c.Nq; n++) {
        const blind = n < c.Nq - c.Nk;
        assert.equal(wasm.lse[h * c.Nq + n] === -Infinity, blind, `head ${h} row ${n} lse`);
        if (blind) for (let x = 0; x < c.D; x++) assert.equal(wasm.out[(n * c.H + h) * c.D + x], 0);
      }
    }
  });
});

/**
 * Both backward kernels' task functions over all tasks on the same inputs (out and lse from flash.ts's
 * forward), dq reduced over the chunks; `headBytes` below a group's query rows makes the WebAssembly
 * kernel copy them one block at a time.
 */
function bothBackward(c: Case, causal: boolean, t: { q: Float32Array; k: Float32Array; v: Float32Array; dout: Float32Array }, chunks = 1, headBytes?: number) {
  const s = shapeOf(c, causal, chunks);
  const { q, k, v, dout } = t;
  const fwd = { q, k, v, out: new Float32Array(q.length), lse: new Float32Array(c.B * c.H * c.Nq) };
  const scratch = new Float64Array(Math.max(scratchLength('flashForward', s), scratchLength('flashBackward', s)));
  for (let i = 0; i < forwardTasks(s); i++) forwardTask(s, fwd, i, scratch);
  const arrays = (): BackwardArrays => ({
    ...fwd, dout, dqPartial: new Float64Array(chunks * q.length), dk: new Float32Array(k.length), dv: new Float32Array(v.length),
  });
  const grads = (a: BackwardArrays) => {
    const dq = new Float32Array(q.length);
    reduceDq(s, a.dqPartial, dq);
    return { dq, dk: a.dk, dv: a.dv };
  };
  const js = arrays();
  for (let i = 0; i < backwardTasks(s); i++) backwardTask(s, js, i, scratch);
  const wasm = arrays();
  const task = wasmBackward(s, wasm, headBytes);
  assert.ok(task, 'the WebAssembly kernel runs here');
  for (let i = 0; i < backwardTasks(s); i++) task(i);
  return { js: grads(js), wasm: grads(wasm), lse: fwd.lse };
}

const GRADS = ['dq', 'dk', 'dv'] as const;

/** max |wasm − js| / max |js| over the three gradients. */
function relativeGap(r: ReturnType<typeof bothBackward>): number {
  const largest = (a: Float32Array) => a.reduce((m, x) => Math.max(m, Math.abs(x)), 1e-30);
  return Math.max(...GRADS.map((g) => maxError(Float64Array.from(r.wasm[g]), Float64Array.from(r.js[g])) / largest(r.js[g])));
}

describe('cpu WebAssembly backward, task by task beside flash.ts', () => {
  const variants = wasmSupport() === 'relaxed' ? (['relaxed', 'simd'] as const) : (['simd'] as const);
  for (const variant of variants) {
    test(`${variant}: the same gradients as the JavaScript kernel within f32 rounding, every D from 1 to 20 and some larger, GQA, Nq ≠ Nk`, () => {
      setWasmVariant(variant);
      try {
        for (const D of [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 20, 33, 100, 256]) {
          for (const causal of [false, true]) {
            const c: Case = { B: 2, H: 4, Hkv: 2, Nq: 37 + D, Nk: (70 - D / 4) | 0, D };
            const t = inputs(c, 'f32', 'BNHD', D);
            const r = bothBackward(c, causal, { q: f32(t.q), k: f32(t.k), v: f32(t.v), dout: f32(t.dout) }, 2);
            const gap = relativeGap(r);
            assert.ok(gap < 1e-5, `D=${D} causal=${causal}: gradients differ by ${gap} of their largest`);
          }
        }
      } finally {
        setWasmVariant(undefined);
      }
    });
  }

  test('query rows copied one block at a time give the gradients of the whole copy', () => {
    for (const causal of [false, true]) {
      const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 300, Nk: 170, D: 24 };
      const t = inputs(c, 'f32', 'BNHD', 7);
      const arrays = { q: f32(t.q), k: f32(t.k), v: f32(t.v), dout: f32(t.dout) };
      const whole = bothBackward(c, causal, arrays);
      const blocks = bothBackward(c, causal, arrays, 1, 0);
      for (const g of GRADS) assert.deepEqual(blocks.wasm[g], whole.wasm[g], `causal=${causal} ${g}`);
      assert.ok(relativeGap(blocks) < 1e-5);
    }
  });

  test("a NaN in one query row stays in that row's dq and in dk, dv of the keys that row sees; as the JavaScript kernel", () => {
    const c: Case = { B: 1, H: 1, Hkv: 1, Nq: 40, Nk: 40, D: 8 };
    const t = inputs(c, 'f32', 'BNHD');
    for (const input of ['q', 'dout'] as const) {
      const arrays = { q: f32(t.q), k: f32(t.k), v: f32(t.v), dout: f32(t.dout) };
      arrays[input][5 * 8 + 3] = NaN; // query row 5
      for (const causal of [false, true]) {
        const { js, wasm } = bothBackward(c, causal, arrays);
        for (let n = 0; n < c.Nq; n++) {
          for (let x = 0; x < c.D; x++) {
            const i = n * c.D + x;
            // either NaN makes row 5's dS NaN (through P or dP): dQ of row 5, dK of the keys it sees; dV = Pᵀ dO
            // of those keys, every column where P is NaN (q), column 3 where only dO is (dout)
            assert.equal(Number.isNaN(wasm.dq[i]), n === 5, `${input} causal=${causal} dq row ${n}`);
            const seen = !causal || n <= 5; // key n is seen by row 5
            assert.equal(Number.isNaN(wasm.dk[i]), seen, `${input} causal=${causal} dk key ${n}`);
            assert.equal(Number.isNaN(wasm.dv[i]), seen && (input === 'q' || x === 3), `${input} causal=${causal} dv key ${n}`);
            for (const g of GRADS) assert.equal(Number.isNaN(wasm[g][i]), Number.isNaN(js[g][i]), `${input} causal=${causal} ${g}[${i}]: as the JavaScript kernel`);
          }
        }
      }
    }
  });

  test('a NaN in a key or value row reaches only the rows that see it; as the JavaScript kernel', () => {
    const c: Case = { B: 1, H: 2, Hkv: 1, Nq: 33, Nk: 41, D: 12 };
    const t = inputs(c, 'f32', 'BNHD', 3);
    for (const input of ['k', 'v'] as const) {
      const arrays = { q: f32(t.q), k: f32(t.k), v: f32(t.v), dout: f32(t.dout) };
      arrays[input][20 * 12 + 1] = NaN; // key 20: causal rows 12.. see it (Nk − Nq = 8)
      const { js, wasm } = bothBackward(c, true, arrays);
      for (let n = 0; n < c.Nq; n++) {
        for (let h = 0; h < c.H; h++) assert.equal(Number.isNaN(wasm.dq[(n * c.H + h) * 12]), n >= 12, `${input} dq row ${n} head ${h}`);
      }
      for (const g of GRADS) {
        for (let i = 0; i < wasm[g].length; i++) assert.equal(Number.isNaN(wasm[g][i]), Number.isNaN(js[g][i]), `${input} ${g}[${i}]: as the JavaScript kernel`);
      }
    }
  });

  test('causal with Nq > Nk: rows that see no key give zero dq, and nothing to dk, dv', () => {
    const c: Case = { B: 1, H: 2, Hkv: 2, Nq: 150, Nk: 70, D: 24 };
    const t = inputs(c, 'f32', 'BNHD');
    const r = bothBackward(c, true, { q: f32(t.q), k: f32(t.k), v: f32(t.v), dout: f32(t.dout) });
    for (let h = 0; h < c.H; h++) {
      for (let n = 0; n < c.Nq - c.Nk; n++) {
        assert.equal(r.lse[h * c.Nq + n], -Infinity);
        for (let x = 0; x < c.D; x++) assert.equal(r.wasm.dq[(n * c.H + h) * c.D + x], 0, `head ${h} row ${n}`);
      }
    }
    assert.ok(relativeGap(r) < 1e-5);
  });
});

/**
 * The generated modules' bytes (sha-256, first 16 hex digits) of the plain kernels: the variants run as
 * hooks between the modules' functions, so the plain kernels' code is the same code. (Last changed with
 * the functions load and store of the forward, which left every result bit for bit the same, and the
 * backward's atbExact, dV_j in f64.)
 */
const MODULE_HASHES = `
4 128 128 false f1bd79213b00a52e b839f38392ad7949
4 128 128 true 507b1c45904f4524 871b0c2771ea9080
8 128 128 false e7a6b5dbdf38de85 2dc334229636eb40
8 128 128 true ccc9e134e11ad671 068c3da1f77b076e
24 128 128 false d9c1c13a1d30e17b dd21be2b1f7c514c
24 128 128 true 4f950c087fc4232d 7bda0516f20e4ca3
60 128 128 false 7c190c8ed589fdf8 89c0b6b0f46bdb72
60 128 128 true d846135d2fd54993 e702aa4587184ef2
64 128 128 false a3b5c1ed4976c85c 4fc348222f449b5b
64 128 128 true 0a89efbfe3e843f9 9d41ca7171b13857
128 64 64 false 18693430e9bed948 83276a3ea883feb3
128 64 64 true 0919f65e3fca3a1e 65e7313310181bf7
256 32 32 false 2fa0fef5ca074508 2c006cd5a4237718
256 32 32 true c3eaee71df3374f8 59b02ba088750e8f`;

describe('cpu WebAssembly modules', () => {
  test('the forward and backward modules are byte for byte those of the plain kernels', () => {
    const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);
    for (const line of MODULE_HASHES.trim().split('\n')) {
      const [Dp, Br, Bc, relaxed, fh, bh] = line.split(' ');
      const [d, r, c] = [Number(Dp), Number(Br), Number(Bc)];
      assert.equal(hash(forwardModule(forwardLayout(d, r, c), relaxed === 'true')), fh, `forward ${line}`);
      assert.equal(hash(backwardModule(backwardLayout(d, r, c), relaxed === 'true')), bh, `backward ${line}`);
    }
  });
});

// ---- the variants (src/modifiers.ts) in the WebAssembly kernels ----

/** Cases for the public API: GQA, Nq ≠ Nk both ways, several tiles (64×64 at D = 128, 32×32 at D = 256). */
const MOD_CASES: { c: Case; dtype: DType; layout: Layout }[] = [
  { c: { B: 1, H: 2, Hkv: 1, Nq: 200, Nk: 300, D: 128 }, dtype: 'f32', layout: 'BHND' },
  { c: { B: 2, H: 4, Hkv: 2, Nq: 100, Nk: 70, D: 256 }, dtype: 'f16', layout: 'BNHD' },
];

describe('cpu WebAssembly forward and backward with the variants, against the float64 oracle and beside the JavaScript kernels', () => {
  for (const { c, dtype, layout } of MOD_CASES) {
    for (const [name, mods] of Object.entries(modifierSets(c, dtype))) {
      test(`${name}: ${dtype} ${layout} B=${c.B} H=${c.H} Hkv=${c.Hkv} Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`, async () => {
        const oracle = oracleOf(c, dtype, mods);
        const standard = await runWith(c, dtype, layout, mods, { backend: 'cpu', algorithm: 'standard' });
        const got = await runWith(c, dtype, layout, mods, { backend: 'cpu', algorithm: 'flash' });
        setCpuKernels('js');
        let js;
        try {
          js = await runWith(c, dtype, layout, mods, { backend: 'cpu', algorithm: 'flash' });
        } finally {
          setCpuKernels('wasm');
        }
        // The two kernels round differently (f32 products against f64): results that differ show the WebAssembly ran.
        for (const k of ['out', 'dq', 'dk', 'dv'] as const) assert.ok(maxError(got[k], js[k]) > 0, `the WebAssembly and JavaScript kernels gave identical ${k}`);
        for (const [kernel, r] of [['wasm', got], ['js', js]] as const) {
          for (const x of ['out', 'lse'] as const) assertWithinRule(`${kernel} ${x}`, maxError(r[x], oracle[x]), maxError(standard[x], oracle[x]), 2);
          for (const x of ['dq', 'dk', 'dv'] as const) assertWithinRule(`${kernel} ${x}`, maxError(r[x], oracle[x]), maxError(standard[x], oracle[x]), 3);
          assert.equal(r.dbias !== undefined, mods.biasGrad === true, 'dbias exactly when asked');
          if (r.dbias) assertWithinRule(`${kernel} dbias`, maxError(r.dbias, oracle.dbias!), maxError(standard.dbias!, oracle.dbias!), 3);
        }
      });
    }
  }
});

/**
 * Both kernels' forward and backward task functions over all tasks with the variants `mods`, on the same
 * f32 inputs (BNHD), with tiles of Br × Bc (small: the band's block ranges and every tile class occur);
 * the backward of each from its own forward; dq reduced, dS and P (for dbias) where asked.
 */
function bothWithMods(c: Case, mods: Mods, t: { q: Float32Array; k: Float32Array; v: Float32Array; dout: Float32Array }, Br: number, Bc: number, chunks = 2, headBytes?: number) {
  const tensor = (data: Float32Array, N: number, H: number): Tensor => ({ data, dtype: 'f32', shape: [c.B, N, H, c.D] });
  const p = checkForward(tensor(t.q, c.Nq, c.H), tensor(t.k, c.Nk, c.Hkv), tensor(t.v, c.Nk, c.Hkv), mods);
  const s: CpuShape = { ...cpuShape(p, 2), Br, Bc, chunks };
  assert.ok(s.mods, 'the shape carries the variants');
  const extra = { bias: biasValues(p.mods), mask: p.mods.mask?.data };
  const scratch = new Float64Array(Math.max(scratchLength('flashForward', s), scratchLength('flashBackward', s)));
  const run = (kernel: 'wasm' | 'js') => {
    const fwd: ForwardArrays = { q: t.q, k: t.k, v: t.v, out: new Float32Array(t.q.length), lse: new Float32Array(c.B * c.H * c.Nq), ...extra };
    const ft = kernel === 'wasm' ? wasmForward(s, fwd) : (i: number) => forwardTask(s, fwd, i, scratch);
    assert.ok(ft, 'the WebAssembly forward runs here');
    for (let i = 0; i < forwardTasks(s); i++) ft(i);
    const bwd: BackwardArrays = {
      ...fwd, dout: t.dout, dqPartial: new Float64Array(chunks * t.q.length), dk: new Float32Array(t.k.length), dv: new Float32Array(t.v.length),
      ...(p.mods.bias?.grad && { dS: new Float32Array(c.B * c.H * c.Nq * c.Nk), dbiasP: new Float32Array(c.B * c.H * c.Nq * c.Nk) }),
    };
    const bt = kernel === 'wasm' ? wasmBackward(s, bwd, headBytes) : (i: number) => backwardTask(s, bwd, i, scratch);
    assert.ok(bt, 'the WebAssembly backward runs here');
    for (let i = 0; i < backwardTasks(s); i++) bt(i);
    const dq = new Float32Array(t.q.length);
    reduceDq(s, bwd.dqPartial, dq);
    return { out: fwd.out, lse: fwd.lse, dq, dk: bwd.dk, dv: bwd.dv, dS: bwd.dS, dbiasP: bwd.dbiasP };
  };
  return { wasm: run('wasm'), js: run('js') };
}

type Both = ReturnType<typeof bothWithMods>;
const ALL = ['out', 'lse', 'dq', 'dk', 'dv', 'dS', 'dbiasP'] as const;

/** max |wasm − js| / max |js| over the outputs (lse: absolute), and whether ±∞ and NaN sit in the same places. */
function assertBeside(what: string, r: Both, tolerance: number): void {
  for (const x of ALL) {
    const a = r.wasm[x];
    const b = r.js[x];
    assert.equal(a === undefined, b === undefined, `${what} ${x}`);
    if (!a || !b) continue;
    const largest = x === 'lse' ? 1 : b.reduce((m, y) => (Number.isFinite(y) ? Math.max(m, Math.abs(y)) : m), 1e-30);
    for (let i = 0; i < a.length; i++) {
      if (a[i] === b[i] || (Number.isNaN(a[i]) && Number.isNaN(b[i]))) continue;
      assert.ok(Math.abs(a[i] - b[i]) <= tolerance * largest, `${what} ${x}[${i}]: ${a[i]} (WebAssembly) against ${b[i]} (JavaScript)`);
    }
  }
}

describe('cpu WebAssembly forward and backward with the variants, task by task beside flash.ts', () => {
  const c: Case = { B: 2, H: 4, Hkv: 2, Nq: 67, Nk: 93, D: 24 };
  const t = inputs(c, 'f32', 'BNHD', 5);
  const arrays = () => ({ q: f32(t.q), k: f32(t.k), v: f32(t.v), dout: f32(t.dout) });
  const variants = wasmSupport() === 'relaxed' ? (['relaxed', 'simd'] as const) : (['simd'] as const);
  for (const [name, mods] of Object.entries(modifierSets(c, 'f32'))) {
    test(`${name}: the same results within f32 rounding, tiles 8×16 and 12×20, ${variants.join(' and ')}`, () => {
      for (const variant of variants) {
        setWasmVariant(variant);
        try {
          assertBeside(`${variant} 8×16`, bothWithMods(c, mods, arrays(), 8, 16), 1e-5);
          assertBeside(`${variant} 12×20, one query block at a time`, bothWithMods(c, mods, arrays(), 12, 20, 3, 0), 1e-5);
        } finally {
          setWasmVariant(undefined);
        }
      }
    });
  }

  test('rows that see no key (a mask that hides every key of some rows): out 0, lse −∞, zero dq; as the JavaScript kernel', () => {
    const hidden = (i: number) => i % 5 === 2;
    const mask = { data: Uint8Array.from({ length: c.Nq * c.Nk }, (_, e) => (hidden(Math.floor(e / c.Nk)) ? 0 : 1)), shape: [1, 1, c.Nq, c.Nk] };
    const r = bothWithMods(c, { mask, softcap: 3, dropout: { p: 0.2, seed: 5 } }, arrays(), 8, 16);
    for (let b = 0; b < c.B; b++) {
      for (let h = 0; h < c.H; h++) {
        for (let i = 0; i < c.Nq; i++) {
          assert.equal(r.wasm.lse[(b * c.H + h) * c.Nq + i] === -Infinity, hidden(i), `b ${b} h ${h} row ${i} lse`);
          const o = ((b * c.Nq + i) * c.H + h) * c.D;
          for (let x = 0; x < c.D; x++) {
            if (!hidden(i)) continue;
            assert.equal(r.wasm.out[o + x], 0, `row ${i} out`);
            assert.equal(r.wasm.dq[o + x], 0, `row ${i} dq`);
          }
        }
      }
    }
    assertBeside('hidden rows', r, 1e-5);
  });

  test('a NaN in a key reaches only the rows whose band and mask keep it; NaN where the JavaScript kernel has it', () => {
    const mods: Mods = { window: [10, 3], alibiSlopes: Float32Array.of(0.1, 0.2, 0.3, 0.4) };
    const a = arrays();
    a.k[(40 * c.Hkv + 1) * c.D + 3] = NaN; // key 40 of kv head 1 (query heads 2, 3): rows 40 − 26 − 3 .. 40 − 26 + 10 see it
    const r = bothWithMods(c, mods, a, 8, 16);
    const off = c.Nk - c.Nq;
    for (let h = 0; h < c.H; h++) {
      for (let i = 0; i < c.Nq; i++) {
        const sees = h >= 2 && i + off - 10 <= 40 && 40 <= i + off + 3;
        assert.equal(Number.isNaN(r.wasm.lse[h * c.Nq + i]), sees, `head ${h} row ${i}`);
      }
    }
    assertBeside('NaN key', r, 1e-5);
  });

  test('a NaN in a query row and in a dO row, under soft-cap, bias, mask and dropout: NaN exactly where the JavaScript kernel has it', () => {
    const sets = modifierSets(c, 'f32');
    const mods: Mods = { ...sets['bias + mask + dropout + causal'], softcap: 2 };
    const a = arrays();
    a.q[(7 * c.H + 1) * c.D + 2] = NaN; // query row 7 of head 1
    a.dout[(30 * c.H + 2) * c.D + 5] = NaN; // dO row 30 of head 2
    const r = bothWithMods(c, mods, a, 8, 16);
    assert.ok(Number.isNaN(r.wasm.lse[1 * c.Nq + 7]) && !Number.isNaN(r.wasm.lse[1 * c.Nq + 8]), 'row 7 of head 1 only');
    assert.ok(r.wasm.dq.some((x) => Number.isNaN(x)) && r.wasm.dk.some((x) => Number.isNaN(x)), 'the NaNs reach the gradients');
    assertBeside('NaN rows', r, 1e-5);
  });
});

describe("cpu WebAssembly: the module's soft-cap and ALiBi (score-mod.ts) beside modifyRow", () => {
  test('modify gives modifyRow\'s soft-cap, its derivative and ALiBi within a few f32 ulps of the logit, NaN for NaN', () => {
    const Bc = 64;
    const lay = backwardLayout(4, 8, Bc, true);
    const w = instance('test: backward 4 8 64 with soft-cap and ALiBi', () => backwardModule(lay, false, { softcap: true, alibi: true }));
    assert.ok(w, 'the module instantiates');
    const F = w.f32;
    const modify = w.exports.modify as (rows4: number, cols: number, d0: number, cap: number, slope: number) => void;
    const cap = 2.5;
    const slope = Math.fround(0.37);
    // scores over [−40, 40] and near the polynomial's edge |S / cap| = 0.625, one NaN
    const S = Float32Array.from({ length: 8 * Bc }, (_, e) => Math.fround((e % 3 === 0 ? 0.625 * cap : 40) * Math.sin(e * 0.7311)));
    S[77] = NaN;
    const panel = lay.panelB / 4;
    const idx = (r: number, c: number) => lay.S / 4 + (r >> 2) * panel + 4 * c + (r & 3);
    for (let r = 0; r < 8; r++) for (let c = 0; c < Bc; c++) F[idx(r, c)] = S[r * Bc + c];
    const d0 = 5; // r0 + Nk − Nq − c0: row r's diagonal is key d0 + r of the tile
    modify(8, Bc, d0, cap, slope);
    const m: Modifiers = { softcap: cap, alibi: { slopes: Float32Array.of(slope), H: 1 } };
    for (let r = 0; r < 8; r++) {
      const row = Float64Array.from(S.subarray(r * Bc, (r + 1) * Bc));
      const dcap = new Float64Array(Bc);
      // modifyRow's ALiBi distance is |i + Nk − Nq − j|: row i = r, Nk − Nq = d0 and keys from c0 = 0
      modifyRow(m, 0, 0, r, 0, Bc, row, 0, 1, 1 + d0, undefined, dcap);
      for (let c = 0; c < Bc; c++) {
        const got = F[idx(r, c)];
        const dc = F[lay.dcap / 4 + (r >> 2) * panel + 4 * c + (r & 3)];
        if (Number.isNaN(row[c])) {
          assert.ok(Number.isNaN(got) && Number.isNaN(dc), `row ${r} key ${c}: NaN`);
          continue;
        }
        // cap·tanh within 4 ulps of cap in f32, the distance term as f32 rounds it
        const ulp = 2 ** -23;
        assert.ok(Math.abs(got - row[c]) <= 4 * ulp * cap + 2 * ulp * Math.abs(row[c]), `row ${r} key ${c}: ${got} against ${row[c]}`);
        assert.ok(Math.abs(dc - dcap[c]) <= 8 * ulp, `row ${r} key ${c}: derivative ${dc} against ${dcap[c]}`);
      }
    }
  });
});

describe('cpu WebAssembly: the nn linear', () => {
  test('the micro-kernel gives the JavaScript kernel’s bits: f32 and f16, rows and columns past the tiles, activations, residual', (t) => {
    const w = wasmLinearKernel({ M: 16, N: 4, K: 4, MB: 16, NB: 4, activation: 'none', residual: false });
    if (!w) return t.skip(`no WebAssembly SIMD here (${wasmSupport()})`);
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
    for (const dtype of ['f32', 'f16'] as const) {
      // M past DIRECT_ROWS (the packed path), N and M not multiples of 4, K odd and K = 1
      for (const [M, N, K] of [[9, 5, 3], [61, 101, 77], [64, 8, 1], [13, 6, 130]]) {
        const data = (n: number) => (dtype === 'f16' ? encodeF16(Float64Array.from({ length: n }, rnd)) : Float32Array.from({ length: n }, rnd));
        const [x, wt, b, r] = [data(M * K), data(N * K), data(N), data(M * N)];
        for (const [activation, residual] of [['none', false], ['gelu', true], ['relu', false]] as const) {
          const s: LinearShape = { M, N, K, MB: 16, NB: 4 * Math.ceil(N / 8), activation, residual };
          const y = (kernel: LinearKernel | undefined) => {
            const out = dtype === 'f16' ? new Uint16Array(M * N) : new Float32Array(M * N);
            const scratch = new Float64Array(linearScratch(s));
            for (let task = 0; task < linearTasks(s); task++) linearTask(s, { x, w: wt, b, y: out, r }, task, scratch, kernel);
            return Array.from(out);
          };
          assert.deepEqual(y(wasmLinearKernel(s)), y(undefined), `${dtype} ${M}×${N}×${K} ${activation}${residual ? ' + residual' : ''}`);
        }
      }
    }
  });

  test('rows that read W in place (M ≤ 8): the WebAssembly and the JavaScript path within the error bound of an f32 sum', (t) => {
    if (wasmSupport() === 'none') return t.skip(`no WebAssembly SIMD here (${wasmSupport()})`);
    let seed = 11;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
    const u = 2 ** -24;
    for (const dtype of ['f32', 'f16'] as const) {
      // one and eight rows, N past a multiple of 8, K past a multiple of 4
      for (const [M, N, K] of [[1, 70, 45], [8, 77, 45], [2, 21, 130]]) {
        const values = (n: number) => (dtype === 'f16' ? Array.from(decodeF16(encodeF16(Float64Array.from({ length: n }, rnd)))) : Array.from(Float32Array.from({ length: n }, rnd)));
        const [xv, wv, bv] = [values(M * K), values(N * K), values(N)];
        const data = (v: number[]) => (dtype === 'f16' ? encodeF16(Float64Array.from(v)) : Float32Array.from(v));
        const s: LinearShape = { M, N, K, MB: 16, NB: 4 * Math.ceil(N / 4), activation: 'none', residual: false };
        for (const kernel of [wasmLinearKernel(s), undefined]) {
          const out = dtype === 'f16' ? new Uint16Array(M * N) : new Float32Array(M * N);
          const scratch = new Float64Array(linearScratch(s));
          for (let task = 0; task < linearTasks(s); task++) linearTask(s, { x: data(xv), w: data(wv), b: data(bv), y: out }, task, scratch, kernel);
          const got = dtype === 'f16' ? decodeF16(out as Uint16Array) : out;
          for (let m = 0; m < M; m++) {
            for (let n = 0; n < N; n++) {
              let sum = bv[n];
              let mag = Math.abs(bv[n]);
              for (let k = 0; k < K; k++) {
                sum += xv[m * K + k] * wv[n * K + k];
                mag += Math.abs(xv[m * K + k] * wv[n * K + k]);
              }
              // γ_{K+1} of the magnitudes, and the store's rounding (f16: its unit roundoff, or its smallest step)
              const store = dtype === 'f16' ? 2 ** -11 * Math.abs(sum) + 2 ** -25 : u * Math.abs(sum);
              const bound = (((K + 1) * u) / (1 - (K + 1) * u)) * mag * 1.001 + store;
              assert.ok(Math.abs(got[m * N + n] - sum) <= bound, `${kernel ? 'WebAssembly' : 'JavaScript'} ${dtype} ${M}×${N}×${K} [${m}, ${n}]: ${got[m * N + n]} against ${sum}`);
            }
          }
        }
      }
    }
  });
});

test('cpu WebAssembly: the linear module widens every f16 exactly (subnormals, ±0, ±Inf, NaN)', (t) => {
  if (wasmSupport() === 'none') return t.skip('no WebAssembly SIMD here');
  const w = instance('linear (the f16 test)', linearModule);
  assert.ok(w && reserve(w, 6 * 65536), 'an instance with 384 KiB'); // 65536 f16 in, 65536 f32 out
  const { exports, mem } = w;
  const bits = new Uint16Array(mem.buffer, 0, 65536);
  bits.forEach((_, i) => (bits[i] = i));
  (exports.widen as (src: number, dst: number, n4: number) => void)(0, 131072, 65536 / 4);
  const got = new Float32Array(mem.buffer, 131072, 65536);
  for (let h = 0; h < 65536; h++) {
    const want = f16ToNumber(h);
    assert.ok(Number.isNaN(want) ? Number.isNaN(got[h]) : Object.is(got[h], want), `f16 bits ${h.toString(16)}: ${got[h]} against ${want}`);
  }
});
