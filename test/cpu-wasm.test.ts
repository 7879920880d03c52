// The cpu backend's WebAssembly forward (src/cpu/wasm): against the float64 oracle under the error rule
// of util.ts (the cpu's standard attention as yardstick, as spec.ts does) on a spread of shapes, through
// the normal path (worker threads for the larger cases, inline for the small); beside flash.ts's
// JavaScript kernel on the same inputs; and the semantics the JavaScript kernel has at the edges.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { forward, type DType, type Layout, type Tensor } from '../src/index.js';
import { checkForward } from '../src/problem.js';
import { standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { forwardTask, forwardTasks } from '../src/cpu/flash.js';
import { scratchLength, tileSizes, type CpuShape } from '../src/cpu/job.js';
import { setCpuKernels, setWasmVariant, wasmForward, wasmSupport } from '../src/cpu/wasm/index.js';
import { bnhd } from './spec.js';
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

async function runForward(c: Spec, t: { q: Tensor; k: Tensor; v: Tensor }, algorithm: 'flash' | 'standard') {
  const f = await forward(t.q, t.k, t.v, { causal: c.causal, layout: c.layout, backend: 'cpu', algorithm });
  return { out: bnhd(f.out, c.layout), lse: toF64(f.lse) };
}

describe('cpu WebAssembly forward', () => {
  test('the runtime has WebAssembly SIMD, so the cpu forward runs it', () => {
    assert.notEqual(wasmSupport(), 'none');
  });

  for (const c of CASES) {
    test(`against the float64 oracle, and beside the JavaScript kernel: ${label(c)}`, async () => {
      const t = inputs(c, c.dtype, c.layout);
      const base = inputs(c, c.dtype, 'BNHD');
      const p = checkForward(base.q, base.k, base.v, { causal: c.causal });
      const oracle = standardForward(p, toF64(base.q), toF64(base.k), toF64(base.v));
      const standard = await runForward(c, t, 'standard');
      const got = await runForward(c, t, 'flash');
      setCpuKernels('js');
      let js;
      try {
        js = await runForward(c, t, 'flash');
      } finally {
        setCpuKernels('wasm');
      }
      // The two kernels round differently (f32 products against f64): results that differ show both ran.
      if (c.Nk > 1) assert.ok(maxError(got.out, js.out) > 0, 'the WebAssembly and JavaScript kernels gave identical results');
      if (process.env.FLASHATTN_TEST_VERBOSE === '1') {
        const e = (r: typeof got, k: 'out' | 'lse') => `${maxError(r[k], oracle[k]).toExponential(2)}`;
        process.stderr.write(`${label(c)}: out ${e(got, 'out')} js ${e(js, 'out')} std ${e(standard, 'out')}; lse ${e(got, 'lse')} js ${e(js, 'lse')} std ${e(standard, 'lse')}\n`);
      }
      for (const [name, r] of [['wasm', got], ['js', js]] as const) {
        assertWithinRule(`${name} ${label(c)} out`, maxError(r.out, oracle.out), maxError(standard.out, oracle.out), 2);
        assertWithinRule(`${name} ${label(c)} lse`, maxError(r.lse, oracle.lse), maxError(standard.lse, oracle.lse), 2);
      }
    });
  }
});

/** A job shape for direct calls of the task functions (BNHD). */
function shapeOf(c: Case, causal: boolean): CpuShape {
  const { Br, Bc } = tileSizes(c.D);
  return {
    B: c.B, H: c.H, Hkv: c.Hkv, Nq: c.Nq, Nk: c.Nk, D: c.D, causal, scale: 1 / Math.sqrt(c.D),
    qBatch: c.Nq * c.H * c.D, qRow: c.H * c.D, qHead: c.D,
    kvBatch: c.Nk * c.Hkv * c.D, kvRow: c.Hkv * c.D, kvHead: c.D,
    Br, Bc, chunks: 1, f16Scores: false,
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
