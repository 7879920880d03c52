/**
 * The oracle: standard attention in float64, materialising S and P for one head at a time, every
 * product written as a matrix product of dense per-head matrices.
 *   S = scale · Q Kᵀ (masked entries −∞),  P = softmax(S) row-wise,  O = P V,  L = rowmax(S) + log rowsum(exp(S − rowmax))
 * and its exact gradient
 *   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − rowsum(dP ∘ P)),  dQ = scale · dS K,  dK = scale · dSᵀ Q.
 * A fully masked row has P = 0, O = 0 and L = −∞. Every test compares against these functions.
 * The variants (src/modifiers.ts) enter as written there: S is the modified logit (soft-cap, ALiBi, bias,
 * dropped elements −∞); with dropout, O = (P ∘ Z) V for the dropout multipliers Z, and the gradient
 * follows: dV = (P ∘ Z)ᵀ dO, dP = (dO Vᵀ) ∘ Z; dQ and dK take dS times the soft-cap's derivative, and
 * dbias is dS summed over the axes the bias broadcasts.
 */
import { dropoutRow, modifyRow, type Modifiers } from '../modifiers.js';
import { problemStrides, type Problem } from '../problem.js';
import { toF64 } from '../tensor.js';

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
  const { q: sq, kv: sk } = problemStrides(p);
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
 * C (m×n) = A (m×k) · Bᵀ with B (n×k): every entry is the dot product of two contiguous rows. Rows of B
 * are visited in blocks that stay in cache while every row of A passes them.
 */
function gemmNT(A: Float64Array, B: Float64Array, m: number, n: number, k: number, alpha = 1): Float64Array {
  const C = new Float64Array(m * n);
  for (let j0 = 0; j0 < n; j0 += 64) {
    for (let i = 0; i < m; i++) {
      for (let j = j0; j < Math.min(j0 + 64, n); j++) C[i * n + j] = alpha * dot(A, i * k, B, j * k, k);
    }
  }
  return C;
}

/** The transpose of an (m×n) matrix. */
function transpose(A: Float64Array, m: number, n: number): Float64Array {
  const T = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) T[j * m + i] = A[i * n + j];
  return T;
}

/** The N rows of one head as a dense (N×D) matrix. */
function rowsOf(x: Float64Array, offset: number, rowStride: number, N: number, D: number): Float64Array {
  const out = new Float64Array(N * D);
  for (let n = 0; n < N; n++) out.set(x.subarray(offset + n * rowStride, offset + n * rowStride + D), n * D);
  return out;
}

/** Add a dense (N×D) matrix into the N rows of one head. */
function addRows(x: Float64Array, offset: number, rowStride: number, N: number, D: number, values: Float64Array): void {
  for (let n = 0; n < N; n++) for (let d = 0; d < D; d++) x[offset + n * rowStride + d] += values[n * D + d];
}

/** The bias as f64 values (or undefined), read once per call. */
export function biasValues(m: Modifiers): Float64Array | undefined {
  const b = m.bias;
  if (!b) return undefined;
  if (b.data instanceof Float64Array) return b.data;
  return toF64({ data: b.data as Float32Array | Uint16Array, dtype: b.dtype, shape: [...b.index.shape] });
}

/**
 * P = softmax(S) for head (b, h) (S = scale · Q Kᵀ on entry, modified and masked here), in place; returns
 * L per row, and the soft-cap's derivative per element when `dcap` is given.
 */
function softmax(p: Problem, S: Float64Array, b: number, h: number, bias: Float64Array | undefined, dcap?: Float64Array): Float64Array {
  const { Nq, Nk } = p;
  const L = new Float64Array(Nq);
  for (let i = 0; i < Nq; i++) {
    modifyRow(p.mods, b, h, i, 0, Nk, S, i * Nk, Nq, Nk, bias, dcap);
    let m = -Infinity;
    for (let j = 0; j < Nk; j++) {
      const s = S[i * Nk + j];
      if (s !== s) m = NaN; // a NaN logit makes the whole row NaN
      else if (s > m) m = s;
    }
    if (m === -Infinity) {
      S.fill(0, i * Nk, (i + 1) * Nk);
      L[i] = -Infinity;
      continue;
    }
    let l = 0;
    for (let j = 0; j < Nk; j++) l += S[i * Nk + j] = Math.exp(S[i * Nk + j] - m);
    for (let j = 0; j < Nk; j++) S[i * Nk + j] /= l;
    L[i] = m + Math.log(l);
  }
  return L;
}

/** Dropout's multipliers Z (Nq × Nk) of head (b, h), or undefined without dropout. */
function dropoutOf(p: Problem, b: number, h: number): Float64Array | undefined {
  if (!p.mods.dropout) return undefined;
  const Z = new Float64Array(p.Nq * p.Nk);
  for (let i = 0; i < p.Nq; i++) dropoutRow(p.mods, b * p.H + h, i, 0, p.Nk, Z, i * p.Nk);
  return Z;
}

/** One head's dense Q, K, V (and P with L) from the inputs. */
function head(p: Problem, hd: Heads, q: Float64Array, k: Float64Array, v: Float64Array, b: number, h: number, bias: Float64Array | undefined, dcap?: Float64Array) {
  const { Nq, Nk, D, H, Hkv, scale } = p;
  const qo = hd.q(b, h);
  const ko = hd.kv(b, Math.floor(h / (H / Hkv)));
  const Q = rowsOf(q, qo, hd.qRow, Nq, D);
  const K = rowsOf(k, ko, hd.kvRow, Nk, D);
  const V = rowsOf(v, ko, hd.kvRow, Nk, D);
  const P = gemmNT(Q, K, Nq, Nk, D, scale); // S = scale · Q Kᵀ, softmax'd in place below
  const L = softmax(p, P, b, h, bias, dcap);
  return { qo, ko, Q, K, V, P, L };
}

/** A ∘ B elementwise (a new array). */
function times(A: Float64Array, B: Float64Array): Float64Array {
  return A.map((a, i) => a * B[i]);
}

/** (B, Nq, H, D) q, (B, Nk, Hkv, D) k, v -> out like q, lse (B, H, Nq); all float64. */
export function standardForward(p: Problem, q: Float64Array, k: Float64Array, v: Float64Array): { out: Float64Array; lse: Float64Array } {
  const { B, H, Nq, Nk, D } = p;
  const hd = heads(p);
  const out = new Float64Array(q.length);
  const lse = new Float64Array(B * H * Nq);
  const bias = biasValues(p.mods);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const { qo, V, P, L } = head(p, hd, q, k, v, b, h, bias);
      const Z = dropoutOf(p, b, h);
      addRows(out, qo, hd.qRow, Nq, D, gemmNT(Z ? times(P, Z) : P, transpose(V, Nk, D), Nq, D, Nk)); // O = (P ∘ Z) V
      lse.set(L, (b * H + h) * Nq);
    }
  }
  return { out, lse };
}

/** The exact gradient of sum(out ∘ dout) with respect to q, k, v (and the bias when asked); all float64. */
export function standardBackward(
  p: Problem,
  dout: Float64Array,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array; dbias?: Float64Array } {
  const { B, H, Nq, Nk, D, scale } = p;
  const hd = heads(p);
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const bias = biasValues(p.mods);
  const biasIndex = p.mods.bias?.grad ? p.mods.bias.index : undefined;
  const dbias = biasIndex && new Float64Array(biasIndex.shape.reduce((a, c) => a * c, 1));
  const dcap = new Float64Array(Nq * Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const { qo, ko, Q, K, V, P } = head(p, hd, q, k, v, b, h, bias, dcap);
      const Z = dropoutOf(p, b, h);
      const dO = rowsOf(dout, qo, hd.qRow, Nq, D);
      const dS = gemmNT(dO, V, Nq, Nk, D); // dP = dO Vᵀ (∘ Z), turned into dS in place
      if (Z) for (let e = 0; e < dS.length; e++) dS[e] *= Z[e];
      for (let i = 0; i < Nq; i++) {
        let rowDot = 0; // rowsum(dP ∘ P)
        for (let j = 0; j < Nk; j++) rowDot += dS[i * Nk + j] * P[i * Nk + j];
        for (let j = 0; j < Nk; j++) dS[i * Nk + j] = P[i * Nk + j] * (dS[i * Nk + j] - rowDot); // dS = P ∘ (dP − rowDot)
      }
      if (dbias && biasIndex) {
        const [s0, s1, s2, s3] = biasIndex.strides;
        for (let i = 0; i < Nq; i++) for (let j = 0; j < Nk; j++) dbias[b * s0 + h * s1 + i * s2 + j * s3] += dS[i * Nk + j];
      }
      for (let e = 0; e < dS.length; e++) dS[e] *= dcap[e]; // the soft-cap's derivative (1 without one)
      addRows(dv, ko, hd.kvRow, Nk, D, gemmNT(transpose(Z ? times(P, Z) : P, Nq, Nk), transpose(dO, Nq, D), Nk, D, Nq)); // dV = (P ∘ Z)ᵀ dO
      addRows(dq, qo, hd.qRow, Nq, D, gemmNT(dS, transpose(K, Nk, D), Nq, D, Nk, scale)); // dQ = scale dS K
      addRows(dk, ko, hd.kvRow, Nk, D, gemmNT(transpose(dS, Nq, Nk), transpose(Q, Nq, D), Nk, D, Nq, scale)); // dK = scale dSᵀ Q
    }
  }
  return { dq, dk, dv, ...(dbias && { dbias }) };
}
