/**
 * The oracle: standard attention in float64, materialising S and P for one head at a time.
 *   S = scale · Q Kᵀ (masked entries −∞),  P = softmax(S) row-wise,  O = P V,  L = rowmax(S) + log rowsum(exp(S − rowmax))
 * and its exact gradient
 *   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − rowsum(dP ∘ P)),  dQ = scale · dS K,  dK = scale · dSᵀ Q.
 * A fully masked row has P = 0, O = 0 and L = −∞. Every test compares against these functions.
 */
import type { Problem } from '../problem.js';
import { strides } from '../tensor.js';

export interface Heads {
  /** Offset of row 0 of query head (b, h) in q / out / dout. */
  q(b: number, h: number): number;
  /** Offset of row 0 of key/value head (b, hkv) in k / v. */
  kv(b: number, hkv: number): number;
  /** Row strides (elements between consecutive rows of one head). */
  qRow: number;
  kvRow: number;
}

/** Where each head's rows live, for the problem's layout. */
export function heads(p: Problem): Heads {
  const sq = strides({ B: p.B, N: p.Nq, H: p.H, D: p.D }, p.layout);
  const sk = strides({ B: p.B, N: p.Nk, H: p.Hkv, D: p.D }, p.layout);
  return {
    q: (b, h) => b * sq.batch + h * sq.head,
    kv: (b, h) => b * sk.batch + h * sk.head,
    qRow: sq.row,
    kvRow: sk.row,
  };
}

/**
 * Σ_d a[ao + d] · b[bo + d] with four partial sums: a single running sum waits on each add's latency,
 * four run four times as fast (and round no worse).
 */
export function dot(a: Float64Array, ao: number, b: Float64Array, bo: number, n: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let d = 0;
  for (; d + 4 <= n; d += 4) {
    s0 += a[ao + d] * b[bo + d];
    s1 += a[ao + d + 1] * b[bo + d + 1];
    s2 += a[ao + d + 2] * b[bo + d + 2];
    s3 += a[ao + d + 3] * b[bo + d + 3];
  }
  for (; d < n; d++) s0 += a[ao + d] * b[bo + d];
  return s0 + s1 + (s2 + s3);
}

/** Causal mask, bottom-right aligned: query i sees key j iff j ≤ i + Nk − Nq. */
export function visible(p: Problem, i: number, j: number): boolean {
  return !p.causal || j <= i + p.Nk - p.Nq;
}

/**
 * Keys are visited in blocks of this many so that a block of K (or V, dK, dV) stays in cache while every
 * query row passes it. Only the loop order changes: every sum still runs over j (and over i) in order.
 */
const KEYS = 64;

/** S = scale · Q Kᵀ for one head, masked entries −∞; then P = softmax(S) in place. Returns L per row. */
function probabilities(p: Problem, hd: Heads, q: Float64Array, k: Float64Array, qo: number, ko: number, P: Float64Array): Float64Array {
  const { Nq, Nk, D, scale } = p;
  for (let j0 = 0; j0 < Nk; j0 += KEYS) {
    for (let i = 0; i < Nq; i++) {
      for (let j = j0; j < Math.min(j0 + KEYS, Nk); j++) {
        P[i * Nk + j] = visible(p, i, j) ? scale * dot(q, qo + i * hd.qRow, k, ko + j * hd.kvRow, D) : -Infinity;
      }
    }
  }
  const L = new Float64Array(Nq);
  for (let i = 0; i < Nq; i++) {
    let m = -Infinity;
    for (let j = 0; j < Nk; j++) {
      const s = P[i * Nk + j];
      if (s !== s) m = NaN; // a NaN logit makes the whole row NaN
      else if (s > m) m = s;
    }
    if (m === -Infinity) {
      P.fill(0, i * Nk, (i + 1) * Nk);
      L[i] = -Infinity;
      continue;
    }
    let l = 0;
    for (let j = 0; j < Nk; j++) l += P[i * Nk + j] = Math.exp(P[i * Nk + j] - m);
    for (let j = 0; j < Nk; j++) P[i * Nk + j] /= l;
    L[i] = m + Math.log(l);
  }
  return L;
}

/** (B, Nq, H, D) q, (B, Nk, Hkv, D) k, v -> out like q, lse (B, H, Nq); all float64. */
export function standardForward(p: Problem, q: Float64Array, k: Float64Array, v: Float64Array): { out: Float64Array; lse: Float64Array } {
  const { B, H, Hkv, Nq, Nk, D } = p;
  const hd = heads(p);
  const out = new Float64Array(q.length);
  const lse = new Float64Array(B * H * Nq);
  const P = new Float64Array(Nq * Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qo = hd.q(b, h);
      const ko = hd.kv(b, Math.floor(h / (H / Hkv)));
      lse.set(probabilities(p, hd, q, k, qo, ko, P), (b * H + h) * Nq);
      for (let j0 = 0; j0 < Nk; j0 += KEYS) {
        for (let i = 0; i < Nq; i++) {
          const o = qo + i * hd.qRow;
          for (let j = j0; j < Math.min(j0 + KEYS, Nk); j++) {
            const pij = P[i * Nk + j];
            if (pij === 0) continue; // masked keys (and underflowed ones) contribute nothing
            const vo = ko + j * hd.kvRow;
            for (let d = 0; d < D; d++) out[o + d] += pij * v[vo + d];
          }
        }
      }
    }
  }
  return { out, lse };
}

/** The exact gradient of sum(out ∘ dout) with respect to q, k, v; all float64. */
export function standardBackward(
  p: Problem,
  dout: Float64Array,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { B, H, Hkv, Nq, Nk, D, scale } = p;
  const hd = heads(p);
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const P = new Float64Array(Nq * Nk);
  const dS = new Float64Array(Nq * Nk);
  const rowDot = new Float64Array(Nq); // rowsum(dP ∘ P)
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qo = hd.q(b, h);
      const ko = hd.kv(b, Math.floor(h / (H / Hkv)));
      probabilities(p, hd, q, k, qo, ko, P);
      for (let j0 = 0; j0 < Nk; j0 += KEYS) {
        for (let i = 0; i < Nq; i++) {
          for (let j = j0; j < Math.min(j0 + KEYS, Nk); j++) dS[i * Nk + j] = dot(dout, qo + i * hd.qRow, v, ko + j * hd.kvRow, D); // dP = dO Vᵀ
        }
      }
      for (let i = 0; i < Nq; i++) {
        let sum = 0;
        for (let j = 0; j < Nk; j++) sum += dS[i * Nk + j] * P[i * Nk + j];
        rowDot[i] = sum;
      }
      for (let j0 = 0; j0 < Nk; j0 += KEYS) {
        for (let i = 0; i < Nq; i++) {
          const oi = qo + i * hd.qRow;
          for (let j = j0; j < Math.min(j0 + KEYS, Nk); j++) {
            const pij = P[i * Nk + j];
            const ds = pij === 0 ? 0 : pij * (dS[i * Nk + j] - rowDot[i]); // dS = P ∘ (dP − rowsum(dP ∘ P))
            const kj = ko + j * hd.kvRow;
            for (let d = 0; d < D; d++) {
              dv[kj + d] += pij * dout[oi + d]; // dV = Pᵀ dO
              dq[oi + d] += scale * ds * k[kj + d]; // dQ = scale dS K
              dk[kj + d] += scale * ds * q[oi + d]; // dK = scale dSᵀ Q
            }
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}
