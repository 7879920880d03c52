/**
 * The one correctness spec every backend runs (PRODUCT.md, "Correctness rules"): forward and backward
 * against the float64 oracle over the shape grid, under the error rule of util.ts. The oracle and the
 * standard-attention yardstick are computed once per case and shared by every backend and layout.
 */
import { describe, test } from 'node:test';
import { backward, forward, type AttentionOptions, type DType, type Layout, type Tensor } from '../src/index.js';
import { checkForward } from '../src/problem.js';
import { standardForwardBackward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { webgpuStatus } from '../src/webgpu/device.js';
import { assertWithinRule, inputs, maxError, relayout, webgpuSkipMessage, type Case } from './util.js';

export const GRID_SHAPES: readonly [number, number][] = [
  [1, 1],
  [113, 203],
  [128, 217],
  [113, 211],
  [108, 256],
  [256, 512],
  [512, 256],
  [1023, 1024],
  [1024, 1023],
];
export const GRID_D: readonly number[] = [1, 8, 40, 59, 64, 111, 128, 256];

interface Results {
  out: Float64Array;
  lse: Float64Array;
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/** Back to BNHD as f64, so results of either layout compare with the oracle. */
export function bnhd(t: Tensor, layout: Layout): Float64Array {
  if (layout === 'BNHD') return toF64(t);
  const [B, H, N, D] = t.shape;
  const src = toF64(t);
  const out = new Float64Array(src.length);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let n = 0; n < N; n++)
        for (let d = 0; d < D; d++) out[((b * N + n) * H + h) * D + d] = src[((b * H + h) * N + n) * D + d];
  return out;
}

const oracles = new Map<string, Results>();
const standards = new Map<string, Results>();
let held: { key: string; layouts: Record<Layout, Inputs> } | undefined;

/**
 * The case's seeded inputs in either layout, made once per case and dtype: each case runs the oracle, a
 * standard and two flash calls per backend on the same values, and making them (normal samples, f16
 * rounding, relayout) cost as much as a small case. One case at a time is kept, as with the oracle.
 */
function caseInputs(c: Case, dtype: DType, layout: Layout): Inputs {
  const key = JSON.stringify([c, dtype]);
  if (held?.key !== key) {
    const t = inputs(c, dtype, 'BNHD');
    const moved = { q: relayout(t.q, 'BHND'), k: relayout(t.k, 'BHND'), v: relayout(t.v, 'BHND'), dout: relayout(t.dout, 'BHND') };
    held = { key, layouts: { BNHD: t, BHND: moved } };
  }
  return held.layouts[layout];
}

/**
 * The float64 oracle for one case (BNHD inputs), and the yardstick of the error rule: standard attention
 * in the same dtype on the same backend (as FlashAttention's tests compare with PyTorch's standard
 * attention on the same GPU), so a backend's flash kernels are held to its own arithmetic: the cpu
 * backend computes in f64 registers, WGSL in f32. One case at a time is kept, to bound memory.
 */
async function yardsticks(backend: Backend, c: Case, dtype: DType, causal: boolean) {
  const key = JSON.stringify([c, dtype, causal]);
  if (!oracles.has(key)) {
    const { q, k, v, dout } = caseInputs(c, dtype, 'BNHD');
    const p = checkForward(q, k, v, { causal });
    const [Q, K, V, dO] = [toF64(q), toF64(k), toF64(v), toF64(dout)];
    oracles.clear();
    standards.clear();
    oracles.set(key, standardForwardBackward(p, dO, Q, K, V));
  }
  const skey = `${backend} ${key}`;
  if (!standards.has(skey)) standards.set(skey, await run(c, dtype, 'BNHD', causal, { backend, algorithm: 'standard' }));
  return { oracle: oracles.get(key)!, standard: standards.get(skey)! };
}

async function run(c: Case, dtype: DType, layout: Layout, causal: boolean, how: { backend: Backend | 'reference'; algorithm: 'flash' | 'standard' }): Promise<Results> {
  const { q, k, v, dout } = caseInputs(c, dtype, layout);
  const options = { causal, layout, ...how };
  const f = await forward(q, k, v, options);
  const g = await backward(dout, q, k, v, f.out, f.lse, options);
  return { out: bnhd(f.out, layout), lse: toF64(f.lse), dq: bnhd(g.dq, layout), dk: bnhd(g.dk, layout), dv: bnhd(g.dv, layout) };
}

/** Forward and backward of `backend` (flash) on one case, checked against the oracle by the error rule. */
export async function checkCase(backend: Backend, c: Case, dtype: DType, layout: Layout, causal: boolean): Promise<void> {
  const { oracle, standard } = await yardsticks(backend, c, dtype, causal);
  const got = await run(c, dtype, layout, causal, { backend, algorithm: 'flash' });
  const label = `${backend} ${dtype} ${layout} causal=${causal} Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`;
  assertWithinRule(`${label} out`, maxError(got.out, oracle.out), maxError(standard.out, oracle.out), 2);
  assertWithinRule(`${label} lse`, maxError(got.lse, oracle.lse), maxError(standard.lse, oracle.lse), 2);
  for (const g of ['dq', 'dk', 'dv'] as const) {
    assertWithinRule(`${label} ${g}`, maxError(got[g], oracle[g]), maxError(standard[g], oracle[g]), 3);
  }
}



export type Backend = 'cpu' | 'webgpu';

/**
 * The backends the spec runs on: cpu always, webgpu when an adapter is present. Without one the webgpu
 * tests are reported as skipped, with the reason; with FLASHATTN_REQUIRE_WEBGPU=1 (CI) a missing adapter
 * fails instead.
 */
const webgpu = await webgpuStatus();
if (!webgpu.ok && process.env.FLASHATTN_REQUIRE_WEBGPU === '1') {
  throw new Error(`FLASHATTN_REQUIRE_WEBGPU=1 but no WebGPU adapter: ${webgpu.reason}`);
}
/** FLASHATTN_TEST_BACKENDS=webgpu (say) narrows the run, e.g. on a GPU machine whose cpu side is already tested. */
const only = process.env.FLASHATTN_TEST_BACKENDS?.split(',');
export const BACKENDS: readonly Backend[] = (webgpu.ok ? (['cpu', 'webgpu'] as const) : (['cpu'] as const)).filter((b) => !only || only.includes(b));
export const WEBGPU_SKIPPED = webgpu.ok ? undefined : webgpuSkipMessage(webgpu.reason);

/** Registers a visibly skipped test saying why the webgpu tests did not run (nothing when they run). */
export function reportWebgpuSkip(): void {
  if (WEBGPU_SKIPPED) test(WEBGPU_SKIPPED, { skip: WEBGPU_SKIPPED }, () => {});
}

/**
 * A software adapter (lavapipe in CI) runs the grid's cases up to this many Nq·Nk·D per head; the larger
 * ones (Nq, Nk ≈ 1024 with D ≥ 40) would take it most of an hour, so they are reported as skipped there
 * and run on a GPU adapter (bench/gpu.sh runs the whole grid on the GPU machine).
 */
export const SOFTWARE_ADAPTER_WORK = 2 ** 25;

function skipReason(backend: Backend, c: Case): string | undefined {
  if (backend === 'webgpu' && webgpu.ok && webgpu.gpu.software && c.Nq * c.Nk * c.D > SOFTWARE_ADAPTER_WORK) {
    return `too large for a software WebGPU adapter (${webgpu.gpu.description}); runs on a GPU adapter`;
  }
  return undefined;
}

/**
 * One test per backend and (Nq, Nk, D) of the grid, B = 2, H = 3, for one dtype and causal setting, in
 * both layouts. Largest cases first, so the slowest file does not start last.
 */
export function registerGrid(dtype: DType, causal: boolean): void {
  const cases = GRID_SHAPES.flatMap(([Nq, Nk]) => GRID_D.map((D) => ({ B: 2, H: 3, Hkv: 3, Nq, Nk, D })));
  cases.sort((a, b) => b.Nq * b.Nk * b.D - a.Nq * a.Nk * a.D);
  describe(`grid ${dtype} causal=${causal}`, () => {
    reportWebgpuSkip();
    for (const c of cases) {
      for (const backend of BACKENDS) {
        const skip = skipReason(backend, c);
        test(`${backend} Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`, { skip }, async () => {
          for (const layout of ['BNHD', 'BHND'] as const) await checkCase(backend, c, dtype, layout, causal);
        });
      }
    }
  });
}

export interface Inputs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  dout: Tensor;
}

/**
 * Forward and backward of `how` on given inputs, checked against the oracle by the error rule with the
 * same backend's standard attention in the same dtype as yardstick (the cpu's for the reference backend,
 * whose own standard algorithm is the oracle). Returns the results for further checks.
 */
export async function checkInputs(label: string, t: Inputs, options: AttentionOptions, how: { backend: Backend | 'reference' }) {
  const p = checkForward(t.q, t.k, t.v, options);
  const [Q, K, V, dO] = [toF64(t.q), toF64(t.k), toF64(t.v), toF64(t.dout)];
  const oracle = standardForwardBackward(p, dO, Q, K, V);
  const results = async (algorithm: 'flash' | 'standard', backend: Backend | 'reference') => {
    const f = await forward(t.q, t.k, t.v, { ...options, backend, algorithm });
    const g = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, { ...options, backend, algorithm });
    return { out: f.out, lse: f.lse, dq: g.dq, dk: g.dk, dv: g.dv };
  };
  const standard = await results('standard', how.backend === 'reference' ? 'cpu' : how.backend);
  const got = await results('flash', how.backend);
  assertWithinRule(`${label} out`, maxError(got.out, oracle.out), maxError(standard.out, oracle.out), 2);
  assertWithinRule(`${label} lse`, maxError(got.lse, oracle.lse), maxError(standard.lse, oracle.lse), 2);
  for (const g of ['dq', 'dk', 'dv'] as const) {
    assertWithinRule(`${label} ${g}`, maxError(got[g], oracle[g]), maxError(standard[g], oracle[g]), 3);
  }
  return got;
}
