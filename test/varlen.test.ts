// Packed variable-length sequences (options.cuSeqlensQ / cuSeqlensK) on every backend: forward and
// backward against the float64 oracle run sequence by sequence, under the error rule of util.ts with the
// same backend's packed path at algorithm 'standard' as the yardstick (the cpu's for the reference
// backend, whose standard algorithm is the oracle); the same results as one call per sequence; GPUBuffers
// in and out on webgpu; counted memory; and each bad input a typed error naming it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DTypeError,
  MemoryTracker,
  NotSupportedError,
  ShapeError,
  ValueError,
  backward,
  forward,
  tensor,
  webgpuDevice,
  type AttentionOptions,
  type DType,
  type FlashAttnError,
  type GpuTensor,
  type Layout,
  type Tensor,
} from '../src/index.js';
import { checkForward } from '../src/problem.js';
import { standardBackward, standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { defaultGpu } from '../src/webgpu/device.js';
import { BACKENDS, bnhd, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, maxError, onDevice, randomTensor, relayout } from './util.js';

reportWebgpuSkip();

/**
 * Five sequences: nq < nk, no queries, nq = nk, no keys, and nq > nk (causal: its first 9 rows see no key;
 * 20 queries, past the webgpu decode schedule's 16, so that the tiled forward runs too).
 */
const SEQ_Q = [5, 0, 9, 3, 20];
const SEQ_K = [7, 4, 9, 0, 11];
const offsets = (lengths: number[]) => Int32Array.from([0, ...lengths.map((_, s) => lengths.slice(0, s + 1).reduce((a, b) => a + b, 0))]);
const cuSeqlensQ = offsets(SEQ_Q);
const cuSeqlensK = offsets(SEQ_K);
const [totalQ, totalK] = [cuSeqlensQ[SEQ_Q.length], cuSeqlensK[SEQ_K.length]];

interface Heads {
  H: number;
  Hkv: number;
  D: number;
}

interface Packed {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  dout: Tensor;
}

/** Seeded packed inputs, (1, totalQ, H, D) and (1, totalK, Hkv, D) in BNHD, moved to `layout`. */
function packedInputs({ H, Hkv, D }: Heads, dtype: DType, layout: Layout): Packed {
  const make = (N: number, h: number, seed: number) => relayout(randomTensor(dtype, [1, N, h, D], seed), layout);
  return { q: make(totalQ, H, 11), k: make(totalK, Hkv, 12), v: make(totalK, Hkv, 13), dout: make(totalQ, H, 14) };
}

interface Results {
  out: Float64Array;
  lse: Float64Array;
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
  dbias?: Float64Array;
}

/**
 * The float64 oracle, one standard attention per sequence on its rows (BNHD), written into packed
 * results: rows of a sequence without keys are out 0, lse −∞ and dq 0; keys of one without queries dk, dv 0.
 * `variants` hold per sequence (sequenceOptions cuts bias, mask and block mask by hand); dropout draws
 * sequence s's masks as batch row s's (heads s·H + h); dbias sums each sequence's into the packed shape.
 */
function oracle({ H, Hkv, D }: Heads, t: Packed, layout: Layout, causal: boolean, variants: AttentionOptions = {}): Results {
  const [Q, K, V, dO] = [t.q, t.k, t.v, t.dout].map((x) => bnhd(x, layout));
  const r: Results = {
    out: new Float64Array(Q.length),
    lse: new Float64Array(H * totalQ).fill(-Infinity),
    dq: new Float64Array(Q.length),
    dk: new Float64Array(K.length),
    dv: new Float64Array(K.length),
    ...(variants.biasGrad && { dbias: new Float64Array(variants.bias!.shape.reduce((a, b) => a * b, 1)) }),
  };
  for (let s = 0; s < SEQ_Q.length; s++) {
    const [q0, nq, k0, nk] = [cuSeqlensQ[s], SEQ_Q[s], cuSeqlensK[s], SEQ_K[s]];
    if (nq === 0 || nk === 0) continue;
    const rows = (x: Float64Array, at: number, n: number, h: number) => x.slice(at * h * D, (at + n) * h * D);
    const [Qs, Ks, Vs, dOs] = [rows(Q, q0, nq, H), rows(K, k0, nk, Hkv), rows(V, k0, nk, Hkv), rows(dO, q0, nq, H)];
    const own = sequenceOptions(variants, s, H, nq, nk);
    if (own.bias) own.bias = tensor(toF64(own.bias as Tensor), own.bias.shape); // the oracle's bias in f64, as its inputs
    const p = checkForward(tensor(Qs, [1, nq, H, D]), tensor(Ks, [1, nk, Hkv, D]), tensor(Vs, [1, nk, Hkv, D]), { ...own, causal });
    if (p.mods.dropout) p.mods.dropout.headOffset = s * H;
    const f = standardForward(p, Qs, Ks, Vs);
    const g = standardBackward(p, dOs, Qs, Ks, Vs);
    r.out.set(f.out, q0 * H * D);
    for (let h = 0; h < H; h++) r.lse.set(f.lse.subarray(h * nq, (h + 1) * nq), h * totalQ + q0);
    r.dq.set(g.dq, q0 * H * D);
    r.dk.set(g.dk, k0 * Hkv * D);
    r.dv.set(g.dv, k0 * Hkv * D);
    if (r.dbias) {
      const dbias = r.dbias;
      const [Sb, Hb, Rb, Cb] = variants.bias!.shape;
      const sub = (g as { dbias?: Float64Array }).dbias!;
      const [rq, ck] = [Rb === 1 ? 1 : nq, Cb === 1 ? 1 : nk];
      for (let h = 0; h < Hb; h++) {
        for (let i = 0; i < rq; i++) for (let j = 0; j < ck; j++) dbias[(((Sb === 1 ? 0 : s) * Hb + h) * Rb + i) * Cb + j] += sub[(h * rq + i) * ck + j];
      }
    }
  }
  return r;
}

/**
 * Sequence s's own options of a packed call's variants, cut by hand: bias, mask and block mask over
 * (S, H, max nq, max nk) (blocks of those) give their (1, H, nq, nk) corner of batch row s; S·H ALiBi
 * slopes give sequence s's H.
 */
function sequenceOptions(o: AttentionOptions, s: number, H: number, nq: number, nk: number): AttentionOptions {
  const corner = <T extends Float32Array | Uint16Array | Uint8Array>(data: T, shape: readonly number[], rows: number, cols: number): { data: T; shape: number[] } => {
    const [Sb, Hb, Rb, Cb] = shape;
    const [r, c] = [Rb === 1 ? 1 : rows, Cb === 1 ? 1 : cols];
    const out = new (data.constructor as new (n: number) => T)(Hb * r * c);
    for (let h = 0; h < Hb; h++) for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[(h * r + i) * c + j] = data[(((Sb === 1 ? 0 : s) * Hb + h) * Rb + i) * Cb + j];
    return { data: out, shape: [1, Hb, r, c] };
  };
  const x: AttentionOptions = { ...o };
  if (o.alibiSlopes && o.alibiSlopes.length > H) x.alibiSlopes = o.alibiSlopes.slice(s * H, (s + 1) * H);
  if (o.bias) x.bias = { ...corner(o.bias.data as Float32Array | Uint16Array, o.bias.shape, nq, nk), dtype: o.bias.dtype } as Tensor;
  if (o.mask) x.mask = corner(o.mask.data, o.mask.shape, nq, nk);
  if (o.blockMask) {
    const [rows, cols] = o.blockMask.blockSize;
    x.blockMask = { ...corner(o.blockMask.data, o.blockMask.shape, Math.ceil(nq / rows), Math.ceil(nk / cols)), blockSize: [rows, cols] };
  }
  return x;
}

/** Forward and backward over the packed sequences, results back in BNHD as f64. */
async function packed(t: Packed, layout: Layout, options: AttentionOptions): Promise<Results> {
  const o = { ...options, layout, cuSeqlensQ, cuSeqlensK };
  const f = await forward(t.q, t.k, t.v, o);
  assert.deepEqual(f.out.shape, t.q.shape);
  assert.deepEqual(f.lse.shape, [1, t.q.shape[layout === 'BNHD' ? 2 : 1], totalQ]);
  const g = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, o);
  if (o.biasGrad) assert.deepEqual(g.dbias?.shape, o.bias?.shape, 'dbias has the bias\'s shape');
  return { out: bnhd(f.out, layout), lse: toF64(f.lse), dq: bnhd(g.dq, layout), dk: bnhd(g.dk, layout), dv: bnhd(g.dv, layout), ...(g.dbias && { dbias: toF64(g.dbias) }) };
}

function assertRule(label: string, got: Results, standard: Results, ref: Results): void {
  assertWithinRule(`${label} out`, maxError(got.out, ref.out), maxError(standard.out, ref.out), 2);
  assertWithinRule(`${label} lse`, maxError(got.lse, ref.lse), maxError(standard.lse, ref.lse), 2);
  for (const g of ['dq', 'dk', 'dv'] as const) assertWithinRule(`${label} ${g}`, maxError(got[g], ref[g]), maxError(standard[g], ref[g]), 3);
  if (ref.dbias) assertWithinRule(`${label} dbias`, maxError(got.dbias!, ref.dbias), maxError(standard.dbias!, ref.dbias), 3);
}

/** Rows no sequence computes hold exactly what a row that sees no key holds. */
function assertEmptyRows({ H, Hkv, D }: Heads, got: Results): void {
  const noKeys = SEQ_Q.findIndex((n, s) => n > 0 && SEQ_K[s] === 0);
  const noQueries = SEQ_Q.findIndex((n, s) => n === 0 && SEQ_K[s] > 0);
  const [q0, q1] = [cuSeqlensQ[noKeys], cuSeqlensQ[noKeys + 1]];
  const [k0, k1] = [cuSeqlensK[noQueries], cuSeqlensK[noQueries + 1]];
  assert.ok(got.out.subarray(q0 * H * D, q1 * H * D).every((x) => x === 0), 'out of a sequence without keys is 0');
  assert.ok(got.dq.subarray(q0 * H * D, q1 * H * D).every((x) => x === 0), 'dq of a sequence without keys is 0');
  for (let h = 0; h < H; h++) assert.ok(got.lse.subarray(h * totalQ + q0, h * totalQ + q1).every((x) => x === -Infinity), 'lse of a sequence without keys is −∞');
  for (const g of [got.dk, got.dv]) assert.ok(g.subarray(k0 * Hkv * D, k1 * Hkv * D).every((x) => x === 0), 'dk, dv of a sequence without queries are 0');
}

const webgpuF16 = BACKENDS.includes('webgpu') && (await defaultGpu()).f16;

/**
 * The cases: on the reference and cpu backends each dtype, layout and causal setting at D = 7 (not a
 * multiple of 4), and two of them at D = 64; GQA throughout (H = 4, Hkv = 2). On webgpu each (D, dtype,
 * causal) compiles kernels of its own, seconds each on lavapipe, while the layout is a run-time stride:
 * there f32 causal at D = 7 and f16 non-causal at D = 64, each in both layouts.
 */
interface Setting {
  dtype: DType;
  layout: Layout;
  causal: boolean;
  D: number;
}
const bothLayouts = (s: Omit<Setting, 'layout'>): Setting[] => (['BNHD', 'BHND'] as const).map((layout) => ({ ...s, layout }));
const HOST_CASES: Setting[] = [
  ...(['f32', 'f16'] as const).flatMap((dtype) => [false, true].flatMap((causal) => bothLayouts({ dtype, causal, D: 7 }))),
  { dtype: 'f32', layout: 'BHND', causal: true, D: 64 },
  { dtype: 'f16', layout: 'BNHD', causal: false, D: 64 },
];
const WEBGPU_CASES: Setting[] = [...bothLayouts({ dtype: 'f32', causal: true, D: 7 }), ...bothLayouts({ dtype: 'f16', causal: false, D: 64 })];

describe('packed sequences against the float64 oracle', () => {
  for (const backend of ['reference', ...BACKENDS] as const) {
    for (const { dtype, layout, causal, D } of backend === 'webgpu' ? WEBGPU_CASES : HOST_CASES) {
      const skip = backend === 'webgpu' && dtype === 'f16' && !webgpuF16 ? 'this adapter lacks shader-f16' : undefined;
      test(`${backend} ${dtype} ${layout} causal=${causal} D=${D}`, { skip }, async () => {
        const heads = { H: 4, Hkv: 2, D };
        const t = packedInputs(heads, dtype, layout);
        const ref = oracle(heads, t, layout, causal);
        const standard = await packed(t, layout, { causal, backend: backend === 'reference' ? 'cpu' : backend, algorithm: 'standard' });
        const got = await packed(t, layout, { causal, backend, algorithm: 'flash' });
        assertRule(`${backend} ${dtype} ${layout} causal=${causal} D=${D}`, got, standard, ref);
        assertEmptyRows(heads, got);
      });
    }
  }
});

describe('packed sequences with variants (window, ALiBi, soft-cap, dropout) against the oracle per sequence', () => {
  const variants: AttentionOptions = { window: [4, 2], alibiSlopes: Float32Array.of(0.5, 0.25, 0.125, 0.0625), softcap: 1.5, dropout: { p: 0.3, seed: 21 } };
  const cases: Setting[] = [
    { dtype: 'f32', layout: 'BNHD', causal: true, D: 7 },
    { dtype: 'f16', layout: 'BHND', causal: false, D: 16 },
  ];
  for (const backend of ['reference', ...BACKENDS] as const) {
    for (const { dtype, layout, causal, D } of cases) {
      test(`${backend} ${dtype} ${layout} causal=${causal} D=${D}`, async () => {
        const heads = { H: 4, Hkv: 2, D };
        const t = packedInputs(heads, dtype, layout);
        const ref = oracle(heads, t, layout, causal, variants);
        // The yardstick goes through the packed path too, so check that path's masks on their own: the
        // oracle's own algorithm through it gives the oracle's out up to the rounding of its results.
        const exact = await forward(t.q, t.k, t.v, { ...variants, causal, layout, cuSeqlensQ, cuSeqlensK, backend: 'reference', algorithm: 'standard' });
        const bound = (dtype === 'f16' ? 2 ** -11 : 2 ** -24) * ref.out.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        assert.ok(maxError(bnhd(exact.out, layout), ref.out) <= bound, `packed reference standard: error ${maxError(bnhd(exact.out, layout), ref.out)} > ${bound}`);
        const standard = await packed(t, layout, { ...variants, causal, backend: backend === 'webgpu' ? 'webgpu' : 'cpu', algorithm: 'standard' });
        // The yardstick itself drew the oracle's masks: one that drew others would be off by about out's size,
        // far past its rounding (f16 storage of S, P and out; f32 or f64 arithmetic).
        const outMax = ref.out.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        const yardstickError = maxError(standard.out, ref.out);
        assert.ok(yardstickError <= (dtype === 'f16' ? 2 ** -7 : 2 ** -14) * outMax, `packed standard (${backend === 'webgpu' ? 'webgpu' : 'cpu'}): error ${yardstickError}`);
        const got = await packed(t, layout, { ...variants, causal, backend, algorithm: 'flash' });
        assertRule(`${backend} ${dtype} ${layout}`, got, standard, ref);
        assertEmptyRows(heads, got);
      });
    }
  }
});

/** The longest sequence's lengths: the padded batch's Nq and Nk, over which packed variants broadcast. */
const [maxNq, maxNk] = [Math.max(...SEQ_Q), Math.max(...SEQ_K)];

/**
 * bias, mask and block mask of packed sequences, as a batch padded to the longest sequence would take them:
 * a full (S, H, max nq, max nk) bias (dbias per sequence), and one broadcast (1, H, 1, max nk) (dbias sums
 * every sequence's), with a mask, a block mask of 2 × 3 blocks and S·H ALiBi slopes.
 */
function biasVariants(dtype: DType, H: number, full: boolean): AttentionOptions {
  const S = SEQ_Q.length;
  const keep = (n: number, seed: number, fraction: number) => Uint8Array.from(randomTensor('f32', [n], seed).data as Float32Array, (x) => (x > fraction ? 1 : 0));
  const biasShape = full ? [S, H, maxNq, maxNk] : [1, H, 1, maxNk];
  const blocks = [S, 1, Math.ceil(maxNq / 2), Math.ceil(maxNk / 3)];
  return {
    bias: randomTensor(dtype, biasShape, 31),
    biasGrad: true,
    ...(full
      ? { alibiSlopes: Float32Array.from({ length: S * H }, (_, e) => 0.05 * (1 + (e % 7))) }
      : {
          mask: { data: keep(S * maxNq * maxNk, 32, -0.8), shape: [S, 1, maxNq, maxNk] },
          blockMask: { data: keep(blocks.reduce((a, b) => a * b, 1), 33, -0.6), shape: blocks, blockSize: [2, 3] },
        }),
  };
}

describe('packed sequences with bias, mask and block mask against the oracle per sequence (forward, backward, dbias)', () => {
  const cases: (Setting & { full: boolean })[] = [
    { dtype: 'f32', layout: 'BNHD', causal: true, D: 7, full: true },
    { dtype: 'f16', layout: 'BHND', causal: false, D: 16, full: false },
  ];
  for (const backend of ['reference', ...BACKENDS] as const) {
    for (const { dtype, layout, causal, D, full } of cases) {
      const skip = backend === 'webgpu' && dtype === 'f16' && !webgpuF16 ? 'this adapter lacks shader-f16' : undefined;
      test(`${backend} ${dtype} ${layout} causal=${causal} D=${D} ${full ? 'full bias, ALiBi' : 'broadcast bias, mask, block mask'}`, { skip }, async () => {
        const heads = { H: 4, Hkv: 2, D };
        const t = packedInputs(heads, dtype, layout);
        const variants = biasVariants(dtype, heads.H, full);
        const ref = oracle(heads, t, layout, causal, variants);
        const standard = await packed(t, layout, { ...variants, causal, backend: backend === 'webgpu' ? 'webgpu' : 'cpu', algorithm: 'standard' });
        const got = await packed(t, layout, { ...variants, causal, backend, algorithm: 'flash' });
        assertRule(`${backend} ${dtype} ${layout}`, got, standard, ref);
        assertEmptyRows(heads, got);
        // dbias where no sequence reads (rows and keys past a sequence's own lengths) is exactly 0.
        if (full) {
          const [S, H] = [SEQ_Q.length, heads.H];
          for (let s = 0; s < S; s++) {
            for (let h = 0; h < H; h++) {
              for (let i = 0; i < maxNq; i++) {
                for (let j = 0; j < maxNk; j++) {
                  if (i >= SEQ_Q[s] || j >= SEQ_K[s]) assert.equal(got.dbias![((s * H + h) * maxNq + i) * maxNk + j], 0, `dbias[${s}, ${h}, ${i}, ${j}]`);
                }
              }
            }
          }
        }
      });
    }
  }
});

describe('packed sequences: the same results as one call per sequence', () => {
  for (const backend of ['reference', ...BACKENDS] as const) {
    test(backend, async () => {
      const heads = { H: 4, Hkv: 2, D: 7 };
      const layout = 'BHND';
      const t = packedInputs(heads, 'f32', layout);
      const options = { backend, causal: true, layout } as const;
      const f = await forward(t.q, t.k, t.v, { ...options, cuSeqlensQ, cuSeqlensK });
      const g = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, { ...options, cuSeqlensQ, cuSeqlensK });
      const got = { out: bnhd(f.out, layout), lse: toF64(f.lse), dq: bnhd(g.dq, layout), dk: bnhd(g.dk, layout), dv: bnhd(g.dv, layout) };
      const [Q, K, V, dO] = [t.q, t.k, t.v, t.dout].map((x) => bnhd(x, 'BHND'));
      const { H, Hkv, D } = heads;
      for (let s = 0; s < SEQ_Q.length; s++) {
        const [q0, nq, k0, nk] = [cuSeqlensQ[s], SEQ_Q[s], cuSeqlensK[s], SEQ_K[s]];
        if (nq === 0 || nk === 0) continue;
        const rows = (x: Float64Array, at: number, n: number, h: number) =>
          relayout(tensor(Float32Array.from(x.subarray(at * h * D, (at + n) * h * D)), [1, n, h, D]), layout);
        const [Qs, Ks, Vs, dOs] = [rows(Q, q0, nq, H), rows(K, k0, nk, Hkv), rows(V, k0, nk, Hkv), rows(dO, q0, nq, H)];
        const fs = await forward(Qs, Ks, Vs, options);
        const gs = await backward(dOs, Qs, Ks, Vs, fs.out, fs.lse, options);
        assert.deepEqual(got.out.subarray(q0 * H * D, (q0 + nq) * H * D), bnhd(fs.out, layout), `sequence ${s} out`);
        for (let h = 0; h < H; h++) assert.deepEqual(got.lse.subarray(h * totalQ + q0, h * totalQ + q0 + nq), toF64(fs.lse).subarray(h * nq, (h + 1) * nq), `sequence ${s} lse`);
        assert.deepEqual(got.dq.subarray(q0 * H * D, (q0 + nq) * H * D), bnhd(gs.dq, layout), `sequence ${s} dq`);
        assert.deepEqual(got.dk.subarray(k0 * Hkv * D, (k0 + nk) * Hkv * D), bnhd(gs.dk, layout), `sequence ${s} dk`);
        assert.deepEqual(got.dv.subarray(k0 * Hkv * D, (k0 + nk) * Hkv * D), bnhd(gs.dv, layout), `sequence ${s} dv`);
      }
    });
  }
});

describe('packed sequences: memory', () => {
  for (const backend of ['reference', ...BACKENDS] as const) {
    test(`${backend}: outputs and copies are counted while they live`, async () => {
      const heads = { H: 4, Hkv: 2, D: 7 };
      const t = packedInputs(heads, 'f32', 'BHND');
      const memory = new MemoryTracker();
      const o = { backend, layout: 'BHND', causal: true, memory, cuSeqlensQ, cuSeqlensK } as const;
      const f = await forward(t.q, t.k, t.v, o);
      assert.equal(memory.live, 0);
      assert.ok(memory.peak >= f.out.data.byteLength + f.lse.data.byteLength, `forward peak ${memory.peak} B holds the packed outputs`);
      memory.resetPeak();
      const g = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, o);
      assert.equal(memory.live, 0);
      assert.ok(memory.peak >= g.dq.data.byteLength + g.dk.data.byteLength + g.dv.data.byteLength, `backward peak ${memory.peak} B holds the packed outputs`);
    });
  }
});

/** A GpuTensor's values, as a typed array of its dtype (the buffer is destroyed). */
async function readBack(device: GPUDevice, t: GpuTensor): Promise<Tensor> {
  const staging = device.createBuffer({ size: t.data.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(t.data, 0, staging, 0, t.data.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const bytes = staging.getMappedRange().slice(0);
  staging.destroy();
  t.data.destroy();
  const n = t.shape.reduce((a, b) => a * b, 1);
  return { data: t.dtype === 'f16' ? new Uint16Array(bytes, 0, n) : new Float32Array(bytes, 0, n), dtype: t.dtype, shape: t.shape };
}

if (BACKENDS.includes('webgpu')) {
  describe('packed sequences in GPUBuffers (webgpu, zero-copy)', () => {
    // One run per sequence (BNHD) in f32, one per head (BHND) in f16: 2-byte values, D = 64, 4-byte runs.
    const cases = [
      { dtype: 'f32', layout: 'BNHD', causal: true, D: 7 },
      { dtype: 'f16', layout: 'BHND', causal: false, D: 64 },
    ] as const;
    for (const { dtype, layout, causal, D } of cases) {
      const skip = dtype === 'f16' && !webgpuF16 ? 'this adapter lacks shader-f16' : undefined;
      test(`${dtype} ${layout} causal=${causal} D=${D}: GPUBuffers out, as the typed-array path, within the rule`, { skip }, async () => {
        const device = await webgpuDevice();
        const heads = { H: 4, Hkv: 2, D };
        const t = packedInputs(heads, dtype, layout);
        const memory = new MemoryTracker();
        const o = { causal, layout, cuSeqlensQ, cuSeqlensK, memory };
        const [q, k, v, dout] = [t.q, t.k, t.v, t.dout].map((x) => onDevice(device, x));
        const f = await forward(q, k, v, o);
        assert.ok(f.out.data instanceof GPUBuffer && f.lse.data instanceof GPUBuffer, 'out and lse are GPUBuffers');
        const g = await backward(dout, q, k, v, f.out, f.lse, o);
        assert.equal(memory.live, 0, 'nothing counted once the outputs are handed over');
        const gpu = { out: await readBack(device, f.out), lse: await readBack(device, f.lse), dq: await readBack(device, g.dq), dk: await readBack(device, g.dk), dv: await readBack(device, g.dv) };
        [q, k, v, dout].forEach((x) => x.data.destroy());
        const hf = await forward(t.q, t.k, t.v, { ...o, backend: 'webgpu' });
        const hg = await backward(t.dout, t.q, t.k, t.v, hf.out, hf.lse, { ...o, backend: 'webgpu' });
        const host = { out: hf.out, lse: hf.lse, dq: hg.dq, dk: hg.dk, dv: hg.dv };
        for (const name of ['out', 'lse', 'dq', 'dk', 'dv'] as const) assert.deepEqual(gpu[name].data, host[name].data, `${name} as the typed-array path`);
        const got = { out: bnhd(gpu.out, layout), lse: toF64(gpu.lse), dq: bnhd(gpu.dq, layout), dk: bnhd(gpu.dk, layout), dv: bnhd(gpu.dv, layout) };
        const standard = await packed(t, layout, { causal, backend: 'webgpu', algorithm: 'standard' });
        assertRule(`GPUBuffers ${dtype} ${layout} causal=${causal}`, got, standard, oracle(heads, t, layout, causal));
        assertEmptyRows(heads, got);
      });
    }

    // A bias in a GPUBuffer: each sequence's part gathered on the device (an f16 part of an odd count of
    // halves at (1, 1, max nq, max nk): 5·7 for sequence 0), its dbias added into the packed dbias there.
    const biasCases = [
      { dtype: 'f32', layout: 'BNHD', causal: true, D: 7, shape: [SEQ_Q.length, 4, maxNq, maxNk] },
      { dtype: 'f16', layout: 'BHND', causal: false, D: 16, shape: [1, 1, maxNq, maxNk] },
    ] as const;
    for (const { dtype, layout, causal, D, shape } of biasCases) {
      const skip = dtype === 'f16' && !webgpuF16 ? 'this adapter lacks shader-f16' : undefined;
      test(`${dtype} ${layout}: a bias [${shape.join(', ')}] in a GPUBuffer, with dbias, within the rule`, { skip }, async () => {
        const device = await webgpuDevice();
        const heads = { H: 4, Hkv: 2, D };
        const t = packedInputs(heads, dtype, layout);
        const bias = randomTensor(dtype, [...shape], 41);
        const variants = { bias, biasGrad: true };
        const memory = new MemoryTracker();
        const [q, k, v, dout, b] = [t.q, t.k, t.v, t.dout, bias].map((x) => onDevice(device, x));
        const o = { causal, layout, cuSeqlensQ, cuSeqlensK, memory, bias: b, biasGrad: true };
        const f = await forward(q, k, v, o);
        const g = await backward(dout, q, k, v, f.out, f.lse, o);
        assert.equal(memory.live, 0, 'nothing counted once the outputs are handed over');
        assert.ok(g.dbias?.data instanceof GPUBuffer, 'dbias is a GPUBuffer');
        assert.deepEqual(g.dbias.shape, [...shape]);
        const got = {
          out: bnhd(await readBack(device, f.out), layout),
          lse: toF64(await readBack(device, f.lse)),
          dq: bnhd(await readBack(device, g.dq), layout),
          dk: bnhd(await readBack(device, g.dk), layout),
          dv: bnhd(await readBack(device, g.dv), layout),
          dbias: toF64(await readBack(device, g.dbias)),
        };
        [q, k, v, dout, b].forEach((x) => x.data.destroy());
        const standard = await packed(t, layout, { ...variants, causal, backend: 'webgpu', algorithm: 'standard' });
        assertRule(`GPUBuffers ${dtype} ${layout} bias`, got, standard, oracle(heads, t, layout, causal, variants));
      });
    }

    test('f16 rows that are not whole 4-byte words are NotSupportedError; a buffer that cannot be copied from a ValueError', async () => {
      const device = await webgpuDevice();
      const o = { cuSeqlensQ, cuSeqlensK };
      const expectError = async (call: Promise<unknown>, kind: new (...a: never[]) => FlashAttnError, argument: string) =>
        assert.rejects(call, (e: unknown) => {
          assert.ok(e instanceof kind, String(e));
          assert.equal(e.argument, argument);
          return true;
        });
      if (webgpuF16) {
        const odd = packedInputs({ H: 4, Hkv: 2, D: 7 }, 'f16', 'BHND'); // D = 7: every head's run is 14 bytes
        const [q, k, v] = [odd.q, odd.k, odd.v].map((x) => onDevice(device, x));
        await expectError(forward(q, k, v, { ...o, layout: 'BHND' }), NotSupportedError, 'q.shape');
        const kOdd = packedInputs({ H: 2, Hkv: 1, D: 7 }, 'f16', 'BNHD'); // H·D = 14, Hkv·D = 7
        const [q2, k2, v2] = [kOdd.q, kOdd.k, kOdd.v].map((x) => onDevice(device, x));
        await expectError(forward(q2, k2, v2, o), NotSupportedError, 'k.shape');
        [q, k, v, q2, k2, v2].forEach((x) => x.data.destroy());
      }
      const t = packedInputs({ H: 4, Hkv: 2, D: 8 }, 'f32', 'BNHD');
      const [q, k, v] = [t.q, t.k, t.v].map((x) => onDevice(device, x));
      const noCopy = onDevice(device, t.v, GPUBufferUsage.STORAGE);
      await expectError(forward(q, k, noCopy, o), ValueError, 'v.data');
      [q, k, v, noCopy].forEach((x) => x.data.destroy());
    });
  });
}

describe('packed sequences: bad input', () => {
  const t = packedInputs({ H: 4, Hkv: 2, D: 3 }, 'f32', 'BNHD');
  const { q, k, v, dout } = t;
  const run = (o: unknown) => () => forward(q, k, v, o as AttentionOptions);
  const cases: [string, () => Promise<unknown>, new (...a: never[]) => FlashAttnError, string][] = [
    ['cuSeqlensQ without cuSeqlensK', run({ cuSeqlensQ }), ValueError, 'options.cuSeqlensK'],
    ['cuSeqlensK without cuSeqlensQ', run({ cuSeqlensK }), ValueError, 'options.cuSeqlensQ'],
    ['a Float32Array', run({ cuSeqlensQ: Float32Array.from(cuSeqlensQ), cuSeqlensK }), DTypeError, 'options.cuSeqlensQ'],
    ['a plain array', run({ cuSeqlensQ, cuSeqlensK: [...cuSeqlensK] }), DTypeError, 'options.cuSeqlensK'],
    ['a number', run({ cuSeqlensQ: 5, cuSeqlensK }), ValueError, 'options.cuSeqlensQ'],
    ['one entry', run({ cuSeqlensQ: new Int32Array([0]), cuSeqlensK: new Int32Array([0]) }), ShapeError, 'options.cuSeqlensQ'],
    ['first entry not 0', run({ cuSeqlensQ: new Int32Array([1, totalQ]), cuSeqlensK: new Int32Array([0, totalK]) }), ValueError, 'options.cuSeqlensQ'],
    ['decreasing', run({ cuSeqlensQ, cuSeqlensK: new Int32Array([0, 9, 4, totalK]) }), ValueError, 'options.cuSeqlensK'],
    ['last entry short of totalQ', run({ cuSeqlensQ: new Int32Array([0, 3, totalQ - 1]), cuSeqlensK: new Int32Array([0, 3, totalK]) }), ValueError, 'options.cuSeqlensQ'],
    ['last entry past totalK', run({ cuSeqlensQ: new Int32Array([0, 3, totalQ]), cuSeqlensK: new Int32Array([0, 3, totalK + 1]) }), ValueError, 'options.cuSeqlensK'],
    ['different numbers of sequences', run({ cuSeqlensQ, cuSeqlensK: new Int32Array([0, 3, totalK]) }), ShapeError, 'options.cuSeqlensK'],
    [
      'batch 2',
      () => forward(tensor(new Float32Array(2 * 3 * 4 * 3), [2, 3, 4, 3]), tensor(new Float32Array(2 * 3 * 2 * 3), [2, 3, 2, 3]), tensor(new Float32Array(2 * 3 * 2 * 3), [2, 3, 2, 3]), {
        cuSeqlensQ: new Int32Array([0, 3]),
        cuSeqlensK: new Int32Array([0, 3]),
      }),
      ShapeError,
      'q.shape',
    ],
    ['backward checks them too', () => backward(dout, q, k, v, dout, tensor(new Float32Array(4 * totalQ), [1, 4, totalQ]), { cuSeqlensQ }), ValueError, 'options.cuSeqlensK'],
  ];
  for (const [name, call, kind, argument] of cases) {
    test(name, async () => {
      await assert.rejects(call, (e: unknown) => {
        assert.ok(e instanceof kind, `expected ${kind.name}, got ${String(e)}`);
        assert.equal(e.argument, argument);
        assert.ok(e.message.startsWith(`${argument}: `), e.message);
        return true;
      });
    });
  }
});
