/**
 * The cpu standard-attention baseline, for comparisons: it materialises the Nq×Nk matrices of every head
 * as the textbook algorithm (and PyTorch's math path) does, in the input dtype (f32, or f16 storage).
 *   forward:  S = scale·QKᵀ (masked −∞), P = softmax(S), O = PV, L = m + log l.     Holds S and P.
 *   backward: P = exp(scale·QKᵀ − L), dP = dO Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)),
 *             dV = Pᵀ dO, dQ = scale·dS K, dK = scale·dSᵀ Q.                        Holds P, dP and dS.
 * One task per head (forward) or per key/value head with its group (backward); f64 accumulation.
 */
import { f16ToNumber, numberToF16 } from '../f16.js';
import type { CpuShape } from './job.js';

/** An Nq×Nk matrix of all heads, in f32 or in f16 bits. */
type Scores = Float32Array | Uint16Array;

export interface StandardForwardArrays {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  lse: Float32Array;
  S: Scores;
  P: Scores;
}

export interface StandardBackwardArrays {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  dout: Float32Array;
  lse: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
  P: Scores;
  dP: Scores;
  dS: Scores;
}

/** Store x in a score matrix and return the value stored (rounded to f16 where the matrix is f16). */
function put(a: Scores, i: number, x: number): number {
  if (a instanceof Float32Array) return (a[i] = x);
  const h = numberToF16(x);
  a[i] = h;
  return f16ToNumber(h);
}

function get(a: Scores, i: number): number {
  return a instanceof Float32Array ? a[i] : f16ToNumber(a[i]);
}

export function standardForwardTask(s: CpuShape, a: StandardForwardArrays, t: number): void {
  const { H, Hkv, Nq, Nk, D, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, lse, S, P } = a;
  const b = Math.floor(t / H);
  const h = t % H;
  const qo = b * s.qBatch + h * s.qHead;
  const ko = b * s.kvBatch + Math.floor(h / (H / Hkv)) * s.kvHead;
  const base = t * Nq * Nk;
  for (let i = 0; i < Nq; i++) {
    const qi = qo + i * qRow;
    const row = base + i * Nk;
    const seen = causal ? Math.min(Nk, i + Nk - Nq + 1) : Nk; // keys 0 .. seen-1 are visible
    for (let j = 0; j < Nk; j++) {
      let x = -Infinity;
      if (j < seen) {
        x = 0;
        const kj = ko + j * kvRow;
        for (let d = 0; d < D; d++) x += q[qi + d] * k[kj + d];
        x *= scale;
      }
      put(S, row + j, x);
    }
    let m = -Infinity;
    for (let j = 0; j < Nk; j++) {
      const x = get(S, row + j);
      if (x !== x) m = NaN;
      else if (x > m) m = x;
    }
    let l = 0;
    if (m !== -Infinity) for (let j = 0; j < Nk; j++) l += Math.exp(get(S, row + j) - m);
    const inv = l === 0 ? 0 : 1 / l;
    const oi = qo + i * qRow;
    for (let d = 0; d < D; d++) out[oi + d] = 0;
    for (let j = 0; j < Nk; j++) {
      const p = put(P, row + j, m === -Infinity ? 0 : Math.exp(get(S, row + j) - m) * inv);
      if (p === 0) continue;
      const vj = ko + j * kvRow;
      for (let d = 0; d < D; d++) out[oi + d] += p * v[vj + d];
    }
    lse[t * Nq + i] = l === 0 ? -Infinity : m + Math.log(l);
  }
}

export function standardBackwardTask(s: CpuShape, a: StandardBackwardArrays, t: number, scratch: Float64Array): void {
  const { H, Hkv, Nq, Nk, D, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, dout, lse, dq, dk, dv, P, dP, dS } = a;
  const G = H / Hkv;
  const b = Math.floor(t / Hkv);
  const hkv = t % Hkv;
  const ko = b * s.kvBatch + hkv * s.kvHead;
  const Di = scratch.subarray(0, Nq);
  const dK = scratch.subarray(Nq, Nq + Nk * D).fill(0);
  const dV = scratch.subarray(Nq + Nk * D, Nq + 2 * Nk * D).fill(0);
  for (let g = 0; g < G; g++) {
    const h = hkv * G + g;
    const qo = b * s.qBatch + h * s.qHead;
    const base = (b * H + h) * Nq * Nk;
    for (let i = 0; i < Nq; i++) {
      const qi = qo + i * qRow;
      let sum = 0;
      for (let d = 0; d < D; d++) sum += dout[qi + d] * out[qi + d];
      Di[i] = sum;
    }
    // P = exp(scale·QKᵀ − L) and dP = dO Vᵀ, both materialised; then dS = P ∘ (dP − D).
    for (let i = 0; i < Nq; i++) {
      const qi = qo + i * qRow;
      const L = lse[(b * H + h) * Nq + i];
      const seen = L === -Infinity ? 0 : causal ? Math.min(Nk, i + Nk - Nq + 1) : Nk;
      const row = base + i * Nk;
      for (let j = 0; j < Nk; j++) {
        const kj = ko + j * kvRow;
        let x = 0;
        let y = 0;
        for (let d = 0; d < D; d++) y += dout[qi + d] * v[kj + d];
        if (j < seen) {
          for (let d = 0; d < D; d++) x += q[qi + d] * k[kj + d];
          x = Math.exp(x * scale - L);
        }
        const p = put(P, row + j, x);
        const dp = put(dP, row + j, y);
        put(dS, row + j, p * (dp - Di[i]));
      }
    }
    // dV += Pᵀ dO, dK += scale·dSᵀ Q, dQ = scale·dS K.
    for (let i = 0; i < Nq; i++) {
      const qi = qo + i * qRow;
      const row = base + i * Nk;
      for (let d = 0; d < D; d++) dq[qi + d] = 0;
      for (let j = 0; j < Nk; j++) {
        const p = get(P, row + j);
        const ds = scale * get(dS, row + j);
        if (p === 0 && ds === 0) continue;
        const kj = ko + j * kvRow;
        for (let d = 0; d < D; d++) {
          dV[j * D + d] += p * dout[qi + d];
          dK[j * D + d] += ds * q[qi + d];
          dq[qi + d] += ds * k[kj + d];
        }
      }
    }
  }
  for (let j = 0; j < Nk; j++) {
    const kj = ko + j * kvRow;
    for (let d = 0; d < D; d++) {
      dk[kj + d] = dK[j * D + d];
      dv[kj + d] = dV[j * D + d];
    }
  }
}
