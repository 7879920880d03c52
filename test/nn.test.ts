// The nn ops and the encoder model. Each op on cpu and webgpu against a float64 computation here, with
// sizes that are not multiples of any tile, under error bounds derived from the rounding of f32 arithmetic
// and of the storage dtype; a tiny encoder on cpu and webgpu against a float64 encoder written here, flash
// against standard attention; the encoder's batch slices under a small per-buffer limit against its
// whole-batch forward, bit for bit; memory accounting, typed errors and OutOfMemoryError.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DTypeError,
  MemoryTracker,
  OutOfMemoryError,
  ShapeError,
  ValueError,
  createEncoder,
  encoderWeights,
  roundToF16,
  type EncoderConfig,
  type GpuTensor,
  type Tensor,
} from '../src/index.js';
import { batchSlices } from '../src/models/encoder.js';
import { createOps, type NnDType, type Ops } from '../src/nn/index.js';
import { LAYER_NORM_EPS } from '../src/nn/ops.js';
import { fromValues, toF64 } from '../src/tensor.js';
import { gpuEntry, webgpuStatus } from '../src/webgpu/device.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { randn } from './util.js';

reportWebgpuSkip();

const status = await webgpuStatus();
/** (backend, dtype) pairs to run: f32 and f16 on cpu; on webgpu f16 where the adapter has shader-f16. */
const TARGETS = BACKENDS.flatMap((backend) =>
  (['f32', 'f16'] as const).filter((dtype) => backend === 'cpu' || dtype === 'f32' || (status.ok && status.gpu.f16)).map((dtype) => ({ backend, dtype })),
);

/** Unit roundoff of f32 arithmetic (the bound for f64 arithmetic too) and of each storage dtype. */
const U32 = 2 ** -24;
const U_STORE: Record<NnDType, number> = { f32: 2 ** -24, f16: 2 ** -11 };
/** Smallest f16 subnormal: values below it round to zero however small their relative error. */
const F16_TINY = 2 ** -24;

/** Seeded normal values, exactly representable in the dtype (so the f64 references see the same inputs). */
function values(n: number, seed: number, dtype: NnDType, scale = 1, shift = 0): Float64Array {
  return randn(n, seed, scale).map((x) => (dtype === 'f16' ? roundToF16(x + shift) : Math.fround(x + shift)));
}

function hostTensor(v: Float64Array, shape: number[], dtype: NnDType): Tensor {
  return { data: fromValues(v, dtype), dtype, shape } as Tensor;
}

/** The ops' own tensor of these values (uploaded on webgpu). */
async function opTensor(ops: Ops, v: Float64Array, shape: number[]) {
  return ops.input(hostTensor(v, shape, ops.dtype), 'x');
}

async function read(ops: Ops, t: Tensor | GpuTensor): Promise<Float64Array> {
  return toF64((await ops.output(t, true)) as Tensor);
}

/** Asserts |got − ref| ≤ tol elementwise, reporting the worst element relative to its bound. */
function assertWithin(what: string, got: Float64Array, ref: Float64Array, tol: (i: number) => number): void {
  assert.equal(got.length, ref.length, `${what}: lengths`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < ref.length; i++) {
    const ratio = Math.abs(got[i] - ref[i]) / tol(i);
    if (!(ratio <= worst)) {
      worst = ratio;
      at = i;
    }
  }
  assert.ok(worst <= 1, `${what}: element ${at} is ${got[at]}, expected ${ref[at]} ± ${tol(at)} (${worst.toFixed(2)}× the bound)`);
}

const linearCases = new Map<string, ReturnType<typeof linearCase>>();

/**
 * Inputs of a linear case (exact in the dtype), x·Wᵀ + b in f64 and Σ|x_k·w_k| + |b| per entry; made once
 * per dtype and sizes, shared by the backends and the ReLU variant.
 */
function linearCase(dtype: NnDType, M: number, N: number, K: number) {
  const xv = values(M * K, 1, dtype);
  const wv = values(N * K, 2, dtype, 1 / Math.sqrt(K));
  const bv = values(N, 3, dtype);
  const sum = new Float64Array(M * N);
  const mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bv[n];
      let a = Math.abs(bv[n]);
      for (let k = 0; k < K; k++) {
        const p = xv[m * K + k] * wv[n * K + k];
        s += p;
        a += Math.abs(p);
      }
      sum[m * N + n] = s;
      mag[m * N + n] = a;
    }
  }
  return { xv, wv, bv, sum, mag };
}

function cachedLinearCase(dtype: NnDType, M: number, N: number, K: number) {
  const key = [dtype, M, N, K].join();
  if (!linearCases.has(key)) linearCases.set(key, linearCase(dtype, M, N, K));
  return linearCases.get(key)!;
}

for (const { backend, dtype } of TARGETS) {
  describe(`nn ops: ${backend} ${dtype}`, () => {
    const ops = createOps({ backend, dtype, memory: new MemoryTracker() });

    // M = B·N rows: tails for every tile (4-row cpu groups, 64 and 128 on webgpu); the second case is large
    // enough for the cpu worker pool, the third for webgpu's 128×128 tile; the last three are rows few
    // enough for webgpu's matrix-vector kernel (M ≤ 8: decode) and the cpu's column blocks, and for the
    // cpu's rows that read W in place (M ≤ 8, cpu/linear.ts's DIRECT_ROWS); the last, M = 9, just past it.
    const sizes = [
      { x: [2, 19, 45], N: 70 },
      { x: [300, 70], N: 130 },
      { x: [2100, 37], N: 2100 },
      { x: [3, 1, 45], N: 70 },
      { x: [1, 37], N: 2100 },
      { x: [2, 1, 45], N: 71 },
      { x: [8, 45], N: 77 },
      { x: [3, 3, 45], N: 77 },
    ];
    /** GELU, tanh approximation, and the largest |GELU'| (1.13 near v = 1.5), its error's factor. */
    const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
    const GELU_SLOPE = 1.13;
    const variants = [{}, { activation: 'relu' }, { activation: 'gelu' }, { residual: true }] as const;
    // webgpu has two matrix-vector kernels (OpsConfig.linearRows); the one this adapter does not pick by
    // default runs the cases of few rows too.
    const other = backend === 'webgpu' ? createOps({ backend, dtype, memory: new MemoryTracker(), linearRows: status.ok && status.gpu.software ? 'split' : 'column' }) : undefined;
    const runs = sizes.flatMap((size) => [{ ...size, ops, kernel: '' }, ...(other && size.x.slice(0, -1).reduce((a, b) => a * b, 1) <= 8 ? [{ ...size, ops: other, kernel: ' (the other matrix-vector kernel)' }] : [])]);
    for (const { x: xShape, N, ops, kernel } of runs) {
      for (const variant of variants) {
        const activation = 'activation' in variant ? variant.activation : undefined;
        const residual = 'residual' in variant;
        const label = activation === 'relu' ? ', ReLU' : activation === 'gelu' ? ', GELU' : residual ? ' + residual' : '';
        test(`linear x [${xShape}] · Wᵀ [${N}, ${xShape.at(-1)}] + b${label}${kernel}`, async () => {
          const o = await ops;
          const K = xShape.at(-1)!;
          const M = xShape.reduce((a, b) => a * b, 1) / K;
          const { xv, wv, bv, sum, mag } = cachedLinearCase(dtype, M, N, K);
          const rv = values(M * N, 8, dtype);
          const shape = [...xShape.slice(0, -1), N];
          const [x, w, b, r] = await Promise.all([opTensor(o, xv, xShape), opTensor(o, wv, [N, K]), opTensor(o, bv, [N]), opTensor(o, rv, shape)]);
          const y = await o.linear(x, w, b, residual ? { residual: r } : activation ? { activation } : {});
          assert.deepEqual(y.shape, shape);
          const got = await read(o, y);
          // f64 reference, and Σ|x_k·w_k| + |b| per entry for the bound: a sum of K products and a bias in
          // f32 (or better) errs by at most γ_{K+1} = (K+1)u/(1 − (K+1)u) of that; ReLU is 1-Lipschitz, GELU
          // 1.13-Lipschitz and its own f32 evaluation errs by a few u; the residual add rounds once in f32;
          // the store rounds once more, by U_STORE relative (or F16_TINY absolute, below f16's normal range).
          const ref = sum.map((v, i) => (activation === 'relu' ? Math.max(v, 0) : activation === 'gelu' ? gelu(v) : residual ? v + rv[i] : v));
          const gamma = ((K + 1) * U32) / (1 - (K + 1) * U32);
          const slope = activation === 'gelu' ? GELU_SLOPE : 1;
          const own = (i: number) => (activation === 'gelu' ? 8 * U32 * (Math.abs(sum[i]) + 1) : residual ? U32 * Math.abs(ref[i]) : 0);
          assertWithin(`${backend} ${dtype} linear${label}`, got, ref, (i) => slope * gamma * mag[i] * (1 + U_STORE[dtype]) + own(i) + U_STORE[dtype] * Math.abs(ref[i]) + F16_TINY);
          if (activation === 'relu') assert.ok(got.every((v) => v >= 0), 'ReLU leaves no negative entry');
          [x, w, b, r].forEach((t) => o.free(t));
        });
      }
    }

    test('embedding: rows of the token table plus rows of the position table', async () => {
      const o = await ops;
      const [V, P, C] = [11, 7, 45];
      const [tv, pv] = [values(V * C, 9, dtype), values(P * C, 10, dtype)];
      const [wte, wpe] = await Promise.all([opTensor(o, tv, [V, C]), opTensor(o, pv, [P, C])]);
      const tokens = [3, 0, 10, 3, 7, 1];
      const positions = [0, 1, 2, 6, 0, 5];
      const got = await read(o, await o.embedding(tokens, positions, wte, wpe, [2, 3]));
      const ref = new Float64Array(6 * C).map((_, e) => tv[tokens[Math.floor(e / C)] * C + (e % C)] + pv[positions[Math.floor(e / C)] * C + (e % C)]);
      assertWithin(`${backend} ${dtype} embedding`, got, ref, (i) => U_STORE[dtype] * Math.abs(ref[i]) + F16_TINY);
      await assert.rejects(o.embedding([11], [0], wte, wpe, [1]), (e: unknown) => e instanceof ValueError && e.argument === 'tokens[0]');
      await assert.rejects(o.embedding([1], [7], wte, wpe, [1]), (e: unknown) => e instanceof ValueError && e.argument === 'positions[0]');
      await assert.rejects(o.embedding([1, 2], [0], wte, wpe, [2]), (e: unknown) => e instanceof ShapeError && e.argument === 'positions');
      [wte, wpe].forEach((t) => o.free(t));
    });

    for (const residual of [false, true]) {
      test(`layer norm of x [2, 19, 45]${residual ? ' + residual' : ''}, with weight and bias`, async () => {
        const o = await ops;
        const [M, C] = [2 * 19, 45];
        const xv = values(M * C, 4, dtype, 2, 0.5);
        const rv = values(M * C, 5, dtype);
        // Row 0 constant (variance 0: y = bias only thanks to eps), row 1 with a variance near eps.
        xv.fill(0.75, 0, C);
        xv.set(values(C, 12, dtype, 0.003, 0.5), C);
        rv.fill(0, 0, 2 * C);
        const gv = values(C, 6, dtype, 0.3, 1);
        const bv = values(C, 7, dtype, 0.3);
        const [x, r, g, b] = await Promise.all([opTensor(o, xv, [2, 19, C]), opTensor(o, rv, [2, 19, C]), opTensor(o, gv, [C]), opTensor(o, bv, [C])]);
        const got = await read(o, await o.layerNorm(x, g, b, residual ? r : undefined));
        const ref = new Float64Array(M * C);
        const tol = new Float64Array(M * C);
        for (let m = 0; m < M; m++) {
          const v = Array.from({ length: C }, (_, c) => xv[m * C + c] + (residual ? rv[m * C + c] : 0));
          const mean = v.reduce((a, b) => a + b, 0) / C;
          const sigma = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / C + LAYER_NORM_EPS);
          const vmax = Math.max(...v.map(Math.abs));
          for (let c = 0; c < C; c++) {
            const xhat = (v[c] - mean) / sigma;
            const y = xhat * gv[c] + bv[c];
            ref[m * C + c] = y;
            // The mean errs by γ_C·max|v|, the centred value by that plus u·|v − mean|, σ (from a sum of C
            // squares, a division and a square root) by about (C + 4)u relative; so x̂ errs by at most
            // (C + 4)u·(max|v|/σ)·(1 + |x̂|). Then γ·x̂ + β rounds twice and the store once.
            tol[m * C + c] = (C + 4) * U32 * (vmax / sigma) * (1 + Math.abs(xhat)) * Math.abs(gv[c]) + 2 * U32 * (Math.abs(xhat * gv[c]) + Math.abs(bv[c])) + U_STORE[dtype] * Math.abs(y) + F16_TINY;
          }
        }
        assertWithin(`${backend} ${dtype} layer norm`, got, ref, (i) => tol[i]);
        [x, r, g, b].forEach((t) => o.free(t));
      });
    }

    test('attention over (B, N, C) as H heads of C/H, causal', async () => {
      const o = await ops;
      const [B, N, H, D] = [2, 19, 4, 8];
      const C = H * D;
      const [qv, kv, vv] = [8, 9, 10].map((seed) => values(B * N * C, seed, dtype));
      const [q, k, v] = await Promise.all([qv, kv, vv].map((t) => opTensor(o, t, [B, N, C])));
      for (const algorithm of ['flash', 'standard'] as const) {
        const got = await read(o, await o.attention(q, k, v, { heads: H, causal: true, algorithm }));
        const ref = new Float64Array(B * N * C);
        const tol = new Float64Array(B * N * C);
        for (let b = 0; b < B; b++)
          for (let h = 0; h < H; h++)
            for (let i = 0; i < N; i++) {
              const at = (t: Float64Array, n: number, d: number) => t[((b * N + n) * H + h) * D + d];
              const s = Array.from({ length: i + 1 }, (_, j) => Array.from({ length: D }, (_, d) => at(qv, i, d) * at(kv, j, d)).reduce((x, y) => x + y) / Math.sqrt(D));
              const mx = Math.max(...s);
              const p = s.map((x) => Math.exp(x - mx));
              const l = p.reduce((x, y) => x + y);
              for (let d = 0; d < D; d++) {
                const vmax = Math.max(...Array.from({ length: i + 1 }, (_, j) => Math.abs(at(vv, j, d))));
                const y = p.reduce((acc, pj, j) => acc + pj * at(vv, j, d), 0) / l;
                ref[((b * N + i) * H + h) * D + d] = y;
                // Each logit errs by about (D + 2)u·Σ|q_d k_d|/√D, each weight by that (through exp) plus a
                // few u, and the weighted sum of i + 1 values by (i + 8)u·max|v|: bound the logits' part by
                // the largest logit magnitude, generously. The cpu's standard algorithm stores P in the
                // inputs' dtype (as PyTorch's math path does): a relative rounding of every weight moves
                // out by at most 2·U_STORE·max|v|.
                const smax = Math.max(...s.map(Math.abs)) + 1;
                tol[((b * N + i) * H + h) * D + d] = 4 * (2 * (D + 2) * smax + i + 8) * U32 * vmax + 2 * U_STORE[dtype] * vmax + U_STORE[dtype] * Math.abs(y) + F16_TINY;
              }
            }
        assertWithin(`${backend} ${dtype} attention ${algorithm}`, got, ref, (i) => tol[i]);
      }
      [q, k, v].forEach((t) => o.free(t));
    });

    test('bad arguments give typed errors naming them', async () => {
      const o = await ops;
      const x = await opTensor(o, values(2 * 5 * 6, 1, dtype), [2, 5, 6]);
      const w = await opTensor(o, values(4 * 7, 2, dtype), [4, 7]);
      const b = await opTensor(o, values(4, 3, dtype), [4]);
      const isError = (kind: new (...a: never[]) => Error, argument: string) => (e: unknown) => e instanceof kind && (e as unknown as { argument: string }).argument === argument;
      await assert.rejects(o.linear(x, w, b), isError(ShapeError, 'weight.shape'));
      await assert.rejects(o.layerNorm(x, b, b), isError(ShapeError, 'weight.shape'));
      await assert.rejects(o.attention(x, x, x, { heads: 4, causal: true, algorithm: 'flash' }), isError(ValueError, 'config.heads'));
      const other = hostTensor(values(60, 1, 'f32'), [2, 5, 6], dtype === 'f32' ? 'f16' : 'f32');
      await assert.rejects(o.input(other, 'x'), isError(DTypeError, 'x.dtype'));
      [x, w, b].forEach((t) => o.free(t));
      assert.equal(o.memory.live, 0, 'everything made was freed');
    });
  });
}

/** A float64 encoder written from the layer's definition, on the model's own weights (rounded as it stores them). */
function referenceEncoder(c: EncoderConfig, x: Float64Array, B: number, N: number): Float64Array {
  const round = c.dtype === 'f16' ? roundToF16 : (v: number) => v;
  const d = c.dModel;
  const H = c.heads;
  const D = d / H;
  const M = B * N;
  const linear = (t: Float64Array, w: Float32Array, b: Float32Array, inF: number, outF: number, relu = false) => {
    const y = new Float64Array(M * outF);
    for (let m = 0; m < M; m++)
      for (let n = 0; n < outF; n++) {
        let s = round(b[n]);
        for (let k = 0; k < inF; k++) s += t[m * inF + k] * round(w[n * inF + k]);
        y[m * outF + n] = relu ? Math.max(0, s) : s;
      }
    return y;
  };
  const norm = (a: Float64Array, r: Float64Array, w: Float32Array, b: Float32Array) => {
    const y = new Float64Array(M * d);
    for (let m = 0; m < M; m++) {
      const v = Array.from({ length: d }, (_, i) => a[m * d + i] + r[m * d + i]);
      const mean = v.reduce((p, q) => p + q) / d;
      const sigma = Math.sqrt(v.reduce((p, q) => p + (q - mean) ** 2, 0) / d + LAYER_NORM_EPS);
      for (let i = 0; i < d; i++) y[m * d + i] = ((v[i] - mean) / sigma) * round(w[i]) + round(b[i]);
    }
    return y;
  };
  let h = x;
  for (const w of encoderWeights(c)) {
    const [q, k, v] = (['q', 'k', 'v'] as const).map((p) => linear(h, w[p].weight, w[p].bias, d, d));
    const a = new Float64Array(M * d);
    for (let b = 0; b < B; b++)
      for (let hd = 0; hd < H; hd++)
        for (let i = 0; i < N; i++) {
          const at = (t: Float64Array, n: number, e: number) => t[(b * N + n) * d + hd * D + e];
          const keys = c.causal ? i + 1 : N;
          const s = Array.from({ length: keys }, (_, j) => Array.from({ length: D }, (_, e) => at(q, i, e) * at(k, j, e)).reduce((p, r) => p + r) / Math.sqrt(D));
          const mx = Math.max(...s);
          const p = s.map((z) => Math.exp(z - mx));
          const l = p.reduce((u, z) => u + z);
          for (let e = 0; e < D; e++) a[(b * N + i) * d + hd * D + e] = p.reduce((u, pj, j) => u + pj * at(v, j, e), 0) / l;
        }
    const h1 = norm(linear(a, w.out.weight, w.out.bias, d, d), h, w.norm1.weight, w.norm1.bias);
    const f = linear(h1, w.linear1.weight, w.linear1.bias, d, c.ffn, true);
    h = norm(linear(f, w.linear2.weight, w.linear2.bias, c.ffn, d), h1, w.norm2.weight, w.norm2.bias);
  }
  return h;
}

function maxAbs(a: Float64Array, b: Float64Array): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return Number.isNaN(a.reduce((s, v) => s + v, 0)) ? NaN : e;
}

/**
 * The tiny encoder's tolerances. A layer is eight steps (q, k, v; attention; out; norm; two linears; norm),
 * each rounding its result: a sum of at most K = max(dModel, ffn) = 64 products errs by at most K·u of
 * Σ|products| in f32 arithmetic (u = 2⁻²⁴), a result stored in f16 by 2⁻¹¹ of itself. Entries are about 4
 * at most (layer-norm outputs of 32 features) and a step passes on the error it is given at a gain of
 * about one (each norm undoes the linears' scale). So f32: 2 layers × 8 steps × 4 × 64u ≈ 2.4e-4; f16:
 * 2 layers × 8 steps × 4 × 2⁻¹¹ ≈ 0.031. A wrong weight, mask or residual errs by O(1).
 */
const TOLERANCE: Record<NnDType, number> = { f32: 2 * 8 * 4 * 64 * U32, f16: 2 * 8 * 4 * 2 ** -11 };

describe('encoder', () => {
  const base: Omit<EncoderConfig, 'backend' | 'dtype' | 'attention'> = { layers: 2, dModel: 32, heads: 4, ffn: 64, causal: true, seed: 7 };
  const [B, N] = [2, 19];

  for (const { backend, dtype } of TARGETS) {
    test(`${backend} ${dtype}: flash and standard against a float64 encoder; memory is the weights after a forward`, async () => {
      const xv = values(B * N * base.dModel, 11, dtype);
      const ref = referenceEncoder({ ...base, backend, dtype, attention: 'flash' }, xv, B, N);
      const results: Record<string, Float64Array> = {};
      for (const attention of ['flash', 'standard'] as const) {
        const memory = new MemoryTracker();
        const enc = await createEncoder({ ...base, backend, dtype, attention, memory });
        const weights = memory.live;
        const P = base.layers * (4 * (base.dModel + 1) * base.dModel + 2 * base.ffn * base.dModel + base.ffn + base.dModel + 4 * base.dModel);
        assert.ok(weights >= P * (dtype === 'f16' ? 2 : 4), `the weights are counted: ${weights} B for ${P} parameters`);
        const x = hostTensor(xv, [B, N, base.dModel], dtype);
        const untouched = x.data.slice();
        const y = (await enc.forward(x)) as Tensor;
        assert.deepEqual(x.data, untouched, 'x is not modified');
        assert.deepEqual(y.shape, [B, N, base.dModel]);
        assert.equal(memory.live, weights, 'only the weights stay counted after a forward');
        assert.ok(memory.peak > weights, 'the activations were counted');
        const got = toF64(y);
        const err = maxAbs(got, ref);
        assert.ok(err <= TOLERANCE[dtype], `${backend} ${dtype} ${attention}: max error ${err} against the float64 encoder exceeds ${TOLERANCE[dtype]}`);
        results[attention] = got;
        enc.dispose();
        assert.equal(memory.live, 0, 'dispose frees the weights');
      }
      const diff = maxAbs(results.flash, results.standard);
      assert.ok(diff <= TOLERANCE[dtype], `flash and standard differ by ${diff}`);
    });
  }

  test('batchSlices: the fewest slices under the limit, as even as possible', () => {
    const counts = (B: number, per: number, limit: number) => batchSlices(B, per, limit).map(({ count }) => count);
    assert.deepEqual(batchSlices(32, 10, 320), [{ start: 0, count: 32 }], 'the whole batch fits: one slice');
    assert.deepEqual(counts(32, 10, 319), [16, 16]);
    assert.deepEqual(batchSlices(5, 10, 20), [{ start: 0, count: 2 }, { start: 2, count: 2 }, { start: 4, count: 1 }]);
    assert.deepEqual(counts(7, 10, 30), [3, 2, 2]);
    assert.deepEqual(counts(3, 10, 9), [1, 1, 1], 'a sequence over the limit: slices of one, whose first fails');
    // The seed experiment at N = 16384 on an H100: the (32, N, 2048) f16 hidden layer is 2^31 bytes, over
    // the 2^31 − 4 binding limit; two slices of 16 sequences.
    assert.deepEqual(counts(32, 16384 * 2048 * 2, 2 ** 31 - 4), [16, 16]);
  });

  /** The bits of a typed-array tensor, for exact comparison. */
  const bits = (t: Tensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  function assertSameBits(what: string, got: Tensor, want: Tensor): void {
    assert.deepEqual(got.shape, want.shape, `${what}: shape`);
    const [a, b] = [bits(got), bits(want)];
    const at = a.findIndex((v, i) => v !== b[i]);
    assert.equal(at, -1, `${what}: byte ${at} differs (element ${Math.floor(at / (a.length / got.data.length))}: ${got.data[Math.floor(at / (a.length / got.data.length))]} vs ${want.data[Math.floor(at / (a.length / got.data.length))]})`);
  }

  // Slices: dModel 15 (3 heads of 5) and N = 19, so an f16 sequence of N·dModel elements is 570 bytes,
  // not a whole number of 4-byte words: odd starts cut and join inside a word. Per sequence the largest
  // buffer is the (N, ffn) hidden layer, 1140 elements (the cpu standard algorithm's S, 3·19² = 1083
  // elements, and attention's f32 copies, 285·4 bytes, are smaller), so a limit of 1500 elements gives
  // slices of one sequence and 2500 slices of two (2, 2, 1); the cpu's (B, N, dModel) output array, 1425
  // elements, fits both.
  const sliced = { layers: 2, dModel: 15, heads: 3, ffn: 60, causal: true, seed: 7 };
  const [SB, SN] = [5, 19];
  for (const { backend, dtype } of TARGETS) {
    test(`${backend} ${dtype}: batch slices under a small per-buffer limit give the whole batch's output bit for bit, in less memory`, async () => {
      const e = dtype === 'f16' ? 2 : 4;
      const x = hostTensor(values(SB * SN * sliced.dModel, 13, dtype), [SB, SN, sliced.dModel], dtype);
      for (const attention of ['flash', 'standard'] as const) {
        const run = async (maxBufferBytes?: number) => {
          const memory = new MemoryTracker();
          const enc = await createEncoder({ ...sliced, backend, dtype, attention, memory, maxBufferBytes });
          const weights = memory.live;
          memory.resetPeak();
          const y = (await enc.forward(x)) as Tensor;
          assert.equal(memory.live, weights, `${attention}, limit ${maxBufferBytes}: only the weights stay counted after a forward`);
          enc.dispose();
          assert.equal(memory.live, 0);
          return { y, peak: memory.peak - weights };
        };
        const whole = await run();
        for (const elements of [1500, 2500]) {
          const part = await run(elements * e);
          assertSameBits(`${backend} ${dtype} ${attention} in slices of ${elements * e} bytes`, part.y, whole.y);
          assert.ok(part.peak < whole.peak, `${attention}: slices peak at ${part.peak} B of activations, the whole batch at ${whole.peak} B`);
        }
      }
    });

    test(`${backend} ${dtype}: one sequence over the per-buffer limit is an OutOfMemoryError naming x, and nothing is left allocated`, async () => {
      const e = dtype === 'f16' ? 2 : 4;
      const memory = new MemoryTracker();
      // 1000 elements: the weights (W1, W2: 900), the (2, N, dModel) output (570) and q, k, v of a sequence
      // (285) fit, its hidden layer (1140) does not.
      const enc = await createEncoder({ ...sliced, backend, dtype, attention: 'flash', memory, maxBufferBytes: 1000 * e });
      const weights = memory.live;
      const x = hostTensor(values(2 * SN * sliced.dModel, 13, dtype), [2, SN, sliced.dModel], dtype);
      const hidden = SN * sliced.ffn * e;
      await assert.rejects(enc.forward(x), (err: unknown) => err instanceof OutOfMemoryError && err.argument === 'x' && err.received === `${hidden} bytes`);
      assert.equal(memory.live, weights, 'the failed forward freed what it made');
      enc.dispose();
    });
  }

  if (BACKENDS.includes('webgpu')) {
    for (const dtype of TARGETS.filter((t) => t.backend === 'webgpu').map((t) => t.dtype)) {
      test(`webgpu ${dtype}: slices of a GpuTensor, and copies split where a bound range would pass the limit, are bit for bit the whole batch`, async () => {
        const e = dtype === 'f16' ? 2 : 4;
        const ops = await createOps({ backend: 'webgpu', dtype });
        const x = hostTensor(values(SB * SN * sliced.dModel, 13, dtype), [SB, SN, sliced.dModel], dtype);
        const gx = (await ops.input(x, 'x')) as GpuTensor;
        const forward = async (config: Omit<EncoderConfig, 'backend' | 'dtype' | 'attention'>, input: Tensor | GpuTensor, maxBufferBytes?: number) => {
          const memory = new MemoryTracker();
          const enc = await createEncoder({ ...config, backend: 'webgpu', dtype, attention: 'flash', memory, maxBufferBytes });
          const weights = memory.live;
          const y = await enc.forward(input);
          assert.equal(memory.live, weights, 'only the weights stay counted after a forward');
          enc.dispose();
          return y;
        };
        // GpuTensor in and out, slices of one: the cut and the join start inside a word (f16).
        const whole = (await forward(sliced, x)) as Tensor;
        const gy = (await forward(sliced, gx, 1500 * e)) as GpuTensor;
        assert.ok(gy.data instanceof GPUBuffer, 'out is a GPUBuffer');
        assertSameBits(`webgpu ${dtype} GpuTensor in slices`, (await ops.output(gy, true)) as Tensor, whole);
        gy.data.destroy();
        // ffn 8 < dModel: the (N, dModel) activations are the largest buffer, and a limit of 285 elements
        // and 100 bytes holds a slice of one sequence but not the range its copy binds (a slice and up to
        // 256 bytes of offset alignment), so each copy runs in two pieces.
        const narrow = { ...sliced, ffn: 8 };
        const wholeNarrow = (await forward(narrow, x)) as Tensor;
        assertSameBits(`webgpu ${dtype} copies in pieces`, (await forward(narrow, x, SN * sliced.dModel * e + 100)) as Tensor, wholeNarrow);
        ops.free(gx);
      });
    }

    test('webgpu: a GpuTensor in gives a GpuTensor out, equal to the typed-array path', async () => {
      const enc = await createEncoder({ ...base, backend: 'webgpu', dtype: 'f32', attention: 'flash' });
      const x = hostTensor(values(B * N * base.dModel, 11, 'f32'), [B, N, base.dModel], 'f32');
      const host = (await enc.forward(x)) as Tensor;
      const ops = await createOps({ backend: 'webgpu', dtype: 'f32' });
      const gx = (await ops.input(x, 'x')) as GpuTensor;
      const gy = await enc.forward(gx);
      assert.ok(gy.data instanceof GPUBuffer, 'out is a GPUBuffer');
      assert.deepEqual(await read(ops, gy), toF64(host));
      gy.data.destroy();
      ops.free(gx);
      enc.dispose();
    });

    test('webgpu: f16 on a device without shader-f16, and a GPUBuffer of another device, are typed errors', async () => {
      const adapter = await (await gpuEntry())!.gpu.requestAdapter();
      const other = await adapter!.requestDevice(); // no features: no shader-f16
      const config: EncoderConfig = { ...base, backend: 'webgpu', dtype: 'f16', attention: 'flash', device: other };
      await assert.rejects(createEncoder(config), (e: unknown) => e instanceof DTypeError && e.argument === 'config.dtype');
      const memory = new MemoryTracker();
      const enc = await createEncoder({ ...config, dtype: 'f32', memory });
      const weights = memory.live;
      const ops = await createOps({ backend: 'webgpu', dtype: 'f32' }); // the library's own device
      const x = await ops.input(hostTensor(values(B * N * base.dModel, 11, 'f32'), [B, N, base.dModel], 'f32'), 'x');
      await assert.rejects(enc.forward(x as GpuTensor), (e: unknown) => e instanceof ValueError && e.argument === 'x.data');
      assert.equal(memory.live, weights, 'the failed forward freed what it made');
      ops.free(x);
      enc.dispose();
      other.destroy();
    });

    test('webgpu: a sequence whose activation is larger than the device allows is an OutOfMemoryError, and nothing is left allocated', async () => {
      const device = status.ok ? status.gpu.device : undefined;
      const limit = Math.min(device!.limits.maxStorageBufferBindingSize, device!.limits.maxBufferSize);
      const ffn = 2 ** 16;
      const n = Math.floor(limit / (ffn * 4)) + 1; // the (1, n, ffn) hidden layer is one f32 buffer past the limit
      const memory = new MemoryTracker();
      const enc = await createEncoder({ layers: 1, dModel: 4, heads: 1, ffn, causal: true, attention: 'flash', backend: 'webgpu', dtype: 'f32', memory });
      const weights = memory.live;
      // Two sequences: the batch is cut into slices of one, and the first fails at its hidden layer.
      const oom = (e: unknown) => e instanceof OutOfMemoryError && e.argument === 'x' && e.received === `${n * ffn * 4} bytes`;
      await assert.rejects(enc.forward(hostTensor(values(2 * n * 4, 1, 'f32'), [2, n, 4], 'f32')), oom);
      assert.equal(memory.live, weights, 'the failed forward freed what it made');
      enc.dispose();
    });
  }

  for (const backend of BACKENDS) {
    test(`${backend}: weights no device could hold are an OutOfMemoryError before any is drawn`, async () => {
      const memory = new MemoryTracker();
      const config: EncoderConfig = { layers: 1, dModel: 8, heads: 1, ffn: 2 ** 42, causal: true, attention: 'flash', backend, dtype: 'f32', memory };
      await assert.rejects(createEncoder(config), (e: unknown) => e instanceof OutOfMemoryError && e.argument === 'config.ffn');
      assert.equal(memory.live, 0, 'the weights made before the failure were freed');
    });
  }

  test('bad configurations and inputs give typed errors naming them', async () => {
    const config: EncoderConfig = { ...base, backend: 'cpu', dtype: 'f32', attention: 'flash' };
    const isError = (kind: new (...a: never[]) => Error, argument: string) => (e: unknown) => e instanceof kind && (e as unknown as { argument: string }).argument === argument;
    await assert.rejects(createEncoder({ ...config, heads: 5 }), isError(ValueError, 'config.heads'));
    await assert.rejects(createEncoder({ ...config, layers: 0 }), isError(ValueError, 'config.layers'));
    await assert.rejects(createEncoder({ ...config, backend: 'gpu' as 'cpu' }), isError(ValueError, 'config.backend'));
    await assert.rejects(createEncoder({ ...config, attention: 'fast' as 'flash' }), isError(ValueError, 'config.attention'));
    await assert.rejects(createEncoder({ ...config, maxBufferBytes: 0 }), isError(ValueError, 'config.maxBufferBytes'));
    const enc = await createEncoder(config);
    await assert.rejects(enc.forward(hostTensor(values(2 * 3 * 31, 1, 'f32'), [2, 3, 31], 'f32')), isError(ShapeError, 'x.shape'));
    await assert.rejects(enc.forward(hostTensor(values(2 * 3 * 32, 1, 'f16'), [2, 3, 32], 'f16')), isError(DTypeError, 'x.dtype'));
    enc.dispose();
    await assert.rejects(enc.forward(hostTensor(values(2 * 3 * 32, 1, 'f32'), [2, 3, 32], 'f32')), isError(ValueError, 'encoder'));
  });
});
