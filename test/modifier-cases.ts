/**
 * The modifier sets of the variants' tests (test/modifiers.test.ts and the kernel-family tests), the
 * float64 oracle of a case under them, and one forward + backward through the public API.
 */
import { backward, forward, type AttentionOptions, type DType, type Layout, type Tensor } from '../src/index.js';
import { encodeF16 } from '../src/f16.js';
import { mix32 } from '../src/modifiers.js';
import { checkForward } from '../src/problem.js';
import { standardForwardBackward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { bnhd } from './spec.js';
import { inputs, randn, type Case } from './util.js';

export type Mods = Pick<AttentionOptions, 'causal' | 'window' | 'alibiSlopes' | 'softcap' | 'bias' | 'biasGrad' | 'mask' | 'blockMask' | 'dropout'>;

/** A deterministic 0/1 pattern with about `density` ones. */
function pattern(n: number, seed: number, density: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let e = 0; e < n; e++) out[e] = mix32(e * 7919 + seed) / 2 ** 32 < density ? 1 : 0;
  return out;
}

function biasTensor(dtype: DType, shape: number[], seed: number): Tensor {
  const values = randn(shape.reduce((a, b) => a * b, 1), seed, 2);
  if (dtype === 'f16') return { data: encodeF16(values), dtype: 'f16', shape };
  if (dtype === 'f64') return { data: values, dtype: 'f64', shape };
  return { data: Float32Array.from(values), dtype: 'f32', shape };
}

/** The modifier sets of the grid, by name, for a case and dtype (bias in the inputs' dtype). */
export function modifierSets(c: Case, dtype: DType): Record<string, Mods> {
  const { B, H, Nq, Nk } = c;
  const Bq = 16;
  const Bk = 32;
  const blocks = [B, 1, Math.ceil(Nq / Bq), Math.ceil(Nk / Bk)];
  return {
    'window (left)': { window: [24, -1] },
    'window (both)': { window: [17, 9] },
    'window + causal': { window: [40, -1], causal: true },
    alibi: { alibiSlopes: Float32Array.from({ length: H }, (_, h) => 2 ** (-(h + 1))) },
    'alibi (per batch) + causal': { alibiSlopes: Float32Array.from({ length: B * H }, (_, e) => 0.1 * (e + 1)), causal: true },
    softcap: { softcap: 1.5 },
    'bias (B, H, Nq, Nk) + grad': { bias: biasTensor(dtype, [B, H, Nq, Nk], 5), biasGrad: true },
    'bias (1, H, 1, Nk) + grad': { bias: biasTensor(dtype, [1, H, 1, Nk], 6), biasGrad: true },
    'mask (B, 1, 1, Nk) padding': { mask: { data: Uint8Array.from({ length: B * Nk }, (_, e) => (e % Nk < Nk - 5 * (Math.floor(e / Nk) + 1) ? 1 : 0)), shape: [B, 1, 1, Nk] } },
    'mask (1, H, Nq, Nk)': { mask: { data: pattern(H * Nq * Nk, 3, 0.7), shape: [1, H, Nq, Nk] } },
    'block mask': { blockMask: { data: pattern(blocks.reduce((a, b) => a * b, 1), 9, 0.4), shape: blocks, blockSize: [Bq, Bk] } },
    dropout: { dropout: { p: 0.25, seed: 1234 } },
    'softcap + alibi + window + causal': { softcap: 2, alibiSlopes: Float32Array.from({ length: H }, (_, h) => 0.05 * (h + 1)), window: [30, 0], causal: true },
    'bias + mask + dropout + causal': { bias: biasTensor(dtype, [B, H, Nq, Nk], 7), biasGrad: true, mask: { data: pattern(Nq * Nk, 4, 0.8), shape: [1, 1, Nq, Nk] }, dropout: { p: 0.1, seed: 99 }, causal: true },
    'block mask + softcap + causal': { blockMask: { data: pattern(blocks.reduce((a, b) => a * b, 1), 11, 0.5), shape: blocks, blockSize: [Bq, Bk] }, softcap: 3, causal: true },
  };
}

export interface ModResults {
  out: Float64Array;
  lse: Float64Array;
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
  dbias?: Float64Array;
}

/** Forward and backward of one backend and algorithm with the modifiers, results as BNHD f64. */
export async function runWith(c: Case, dtype: DType, layout: Layout, mods: Mods, how: { backend: 'cpu' | 'webgpu' | 'reference'; algorithm: 'flash' | 'standard' }): Promise<ModResults> {
  const { q, k, v, dout } = inputs(c, dtype, layout);
  const options: AttentionOptions = { ...mods, layout, ...how };
  const f = await forward(q, k, v, options);
  const g = await backward(dout, q, k, v, f.out, f.lse, options);
  return {
    out: bnhd(f.out, layout),
    lse: toF64(f.lse),
    dq: bnhd(g.dq, layout),
    dk: bnhd(g.dk, layout),
    dv: bnhd(g.dv, layout),
    ...(g.dbias && { dbias: toF64(g.dbias) }),
  };
}

/** The float64 oracle for one case and modifier set (BNHD inputs, the modifiers' tensors as given). */
export function oracleOf(c: Case, dtype: DType, mods: Mods): ModResults {
  const { q, k, v, dout } = inputs(c, dtype, 'BNHD');
  const bias = mods.bias && { ...mods.bias, data: toF64(mods.bias as Tensor), dtype: 'f64' as const };
  const f64 = (t: Tensor): Tensor => ({ data: toF64(t), dtype: 'f64', shape: t.shape });
  const p = checkForward(f64(q), f64(k), f64(v), { ...mods, ...(bias && { bias }) });
  const [Q, K, V, dO] = [toF64(q), toF64(k), toF64(v), toF64(dout)];
  return standardForwardBackward(p, dO, Q, K, V);
}

