/**
 * The reference backend: everything in float64. algorithm 'standard' is the oracle (standard attention,
 * S and P materialised); 'flash' runs the paper's Algorithms 1 and 2. Results are rounded once to the
 * input dtype (f64 inputs give f64 results), so the reference is exact up to that last rounding.
 * The float64 functions themselves are exported for tests and readers: `flashattn/reference`.
 */
/// <reference types="@webgpu/types" preserve="true" />
import type { Problem } from '../problem.js';
import { fromValues, toF64, type Tensor } from '../tensor.js';
import { algorithm1 } from './algorithm1.js';
import { algorithm2 } from './algorithm2.js';
import { standardBackward, standardForward } from './standard.js';

export { algorithm1, blockSizes, keyBlockRange, type BlockSizes } from './algorithm1.js';
export { algorithm2, queryBlockRange } from './algorithm2.js';
export { heads, standardBackward, standardForward, standardForwardBackward, visible, type Heads } from './standard.js';

export function referenceForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): { out: Tensor; lse: Tensor } {
  const [Q, K, V] = [toF64(q), toF64(k), toF64(v)];
  const { out, lse } = p.algorithm === 'standard' ? standardForward(p, Q, K, V) : renameForward(algorithm1(p, Q, K, V));
  const lseType = p.dtype === 'f64' ? 'f64' : 'f32';
  return {
    out: { data: fromValues(out, p.dtype), dtype: p.dtype, shape: [...q.shape] },
    lse: { data: fromValues(lse, lseType), dtype: lseType, shape: [p.B, p.H, p.Nq] },
  };
}

export function referenceBackward(
  p: Problem,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
): { dq: Tensor; dk: Tensor; dv: Tensor; dbias?: Tensor } {
  const [dO, Q, K, V] = [toF64(dout), toF64(q), toF64(k), toF64(v)];
  const g =
    p.algorithm === 'standard'
      ? standardBackward(p, dO, Q, K, V)
      : renameBackward(algorithm2(p, Q, K, V, toF64(out), dO, toF64(lse)));
  const wrap = (values: Float64Array, like: Tensor): Tensor => ({ data: fromValues(values, p.dtype), dtype: p.dtype, shape: [...like.shape] });
  const result = { dq: wrap(g.dq, q), dk: wrap(g.dk, k), dv: wrap(g.dv, v) };
  const dbias = 'dbias' in g ? (g.dbias as Float64Array | undefined) : undefined;
  if (!dbias) return result;
  const dtype = p.dtype === 'f64' ? 'f64' : 'f32';
  return { ...result, dbias: { data: fromValues(dbias, dtype), dtype, shape: [...p.mods.bias!.index.shape] } };
}

function renameForward({ O, L }: { O: Float64Array; L: Float64Array }) {
  return { out: O, lse: L };
}

function renameBackward({ dQ, dK, dV, dbias }: { dQ: Float64Array; dK: Float64Array; dV: Float64Array; dbias?: Float64Array }) {
  return { dq: dQ, dk: dK, dv: dV, ...(dbias && { dbias }) };
}
