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
 * C (m×n) = alpha · A (m×k) · Bᵀ with B (n×k): entry (i, j) is alpha · dot(row i of A, row j of B), summed
 * as `dot` sums it. Rows of B are visited in blocks that stay in cache while every row of A passes them;
 * within a block, entries go two rows by two columns at a time (dot2x2), so each element loaded feeds two
 * products. Tails (an odd row or column) take `dot` itself.
 */
function gemmNT(A: Float64Array, B: Float64Array, m: number, n: number, k: number, alpha = 1): Float64Array {
  const C = new Float64Array(m * n);
  for (let j0 = 0; j0 < n; j0 += 64) {
    const j1 = Math.min(j0 + 64, n);
    let i = 0;
    for (; i + 2 <= m; i += 2) {
      let j = j0;
      for (; j + 2 <= j1; j += 2) dot2x2(C, i * n + j, n, A, i * k, B, j * k, k, alpha);
      for (; j < j1; j++) {
        C[i * n + j] = alpha * dot(A, i * k, B, j * k, k);
        C[(i + 1) * n + j] = alpha * dot(A, (i + 1) * k, B, j * k, k);
      }
    }
    for (; i < m; i++) for (let j = j0; j < j1; j++) C[i * n + j] = alpha * dot(A, i * k, B, j * k, k);
  }
  return C;
}

/**
 * Four entries of gemmNT at once: C[c], C[c + 1], C[c + ldc], C[c + ldc + 1] = alpha · the dot products of
 * rows (a, a + k) of A with rows (b, b + k) of B. Each entry keeps dot's own four partial sums, added in
 * dot's order, so the values are exactly dot's; only the loads are shared.
 */
function dot2x2(C: Float64Array, c: number, ldc: number, A: Float64Array, a: number, B: Float64Array, b: number, k: number, alpha: number): void {
  const a1 = a + k;
  const b1 = b + k;
  let p0 = 0, p1 = 0, p2 = 0, p3 = 0; // row a · row b
  let q0 = 0, q1 = 0, q2 = 0, q3 = 0; // row a · row b1
  let r0 = 0, r1 = 0, r2 = 0, r3 = 0; // row a1 · row b
  let t0 = 0, t1 = 0, t2 = 0, t3 = 0; // row a1 · row b1
  let d = 0;
  for (; d + 4 <= k; d += 4) {
    const x0 = A[a + d], x1 = A[a + d + 1], x2 = A[a + d + 2], x3 = A[a + d + 3];
    const y0 = B[b + d], y1 = B[b + d + 1], y2 = B[b + d + 2], y3 = B[b + d + 3];
    p0 += x0 * y0; p1 += x1 * y1; p2 += x2 * y2; p3 += x3 * y3;
    const z0 = B[b1 + d], z1 = B[b1 + d + 1], z2 = B[b1 + d + 2], z3 = B[b1 + d + 3];
    q0 += x0 * z0; q1 += x1 * z1; q2 += x2 * z2; q3 += x3 * z3;
    const w0 = A[a1 + d], w1 = A[a1 + d + 1], w2 = A[a1 + d + 2], w3 = A[a1 + d + 3];
    r0 += w0 * y0; r1 += w1 * y1; r2 += w2 * y2; r3 += w3 * y3;
    t0 += w0 * z0; t1 += w1 * z1; t2 += w2 * z2; t3 += w3 * z3;
  }
  for (; d < k; d++) {
    p0 += A[a + d] * B[b + d];
    q0 += A[a + d] * B[b1 + d];
    r0 += A[a1 + d] * B[b + d];
    t0 += A[a1 + d] * B[b1 + d];
  }
  C[c] = alpha * (p0 + p1 + (p2 + p3));
  C[c + 1] = alpha * (q0 + q1 + (q2 + q3));
  C[c + ldc] = alpha * (r0 + r1 + (r2 + r3));
  C[c + ldc + 1] = alpha * (t0 + t1 + (t2 + t3));
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
  const { out, lse } = standard(p, q, k, v, { forward: true });
  return { out: out!, lse: lse! };
}

/** The exact gradient of sum(out ∘ dout) with respect to q, k, v (and the bias when asked); all float64. */
export function standardBackward(
  p: Problem,
  dout: Float64Array,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array; dbias?: Float64Array } {
  const { dq, dk, dv, dbias } = standard(p, q, k, v, { forward: false, dout });
  return { dq: dq!, dk: dk!, dv: dv!, ...(dbias && { dbias }) };
}

/**
 * standardForward and standardBackward in one pass: each head's P is computed once and serves both (the
 * same values as the two calls give, at one matrix product and one softmax less per head).
 */
export function standardForwardBackward(
  p: Problem,
  dout: Float64Array,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
): { out: Float64Array; lse: Float64Array; dq: Float64Array; dk: Float64Array; dv: Float64Array; dbias?: Float64Array } {
  const { out, lse, dq, dk, dv, dbias } = standard(p, q, k, v, { forward: true, dout });
  return { out: out!, lse: lse!, dq: dq!, dk: dk!, dv: dv!, ...(dbias && { dbias }) };
}

/** Per head: P (and L) from head(); then the forward's O = (P ∘ Z) V and L when asked, the gradient when dout is given. */
function standard(p: Problem, q: Float64Array, k: Float64Array, v: Float64Array, want: { forward: boolean; dout?: Float64Array }) {
  const { B, H, Nq, Nk, D, scale } = p;
  const { forward, dout } = want;
  const hd = heads(p);
  const out = forward ? new Float64Array(q.length) : undefined;
  const lse = forward ? new Float64Array(B * H * Nq) : undefined;
  const dq = dout && new Float64Array(q.length);
  const dk = dout && new Float64Array(k.length);
  const dv = dout && new Float64Array(v.length);
  const bias = biasValues(p.mods);
  const biasIndex = dout && p.mods.bias?.grad ? p.mods.bias.index : undefined;
  const dbias = biasIndex && new Float64Array(biasIndex.shape.reduce((a, c) => a * c, 1));
  const dcap = dout && new Float64Array(Nq * Nk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const { qo, ko, Q, K, V, P, L } = head(p, hd, q, k, v, b, h, bias, dcap);
      const Z = dropoutOf(p, b, h);
      const PZ = Z ? times(P, Z) : P;
      if (out && lse) {
        addRows(out, qo, hd.qRow, Nq, D, gemmNT(PZ, transpose(V, Nk, D), Nq, D, Nk)); // O = (P ∘ Z) V
        lse.set(L, (b * H + h) * Nq);
      }
      if (!(dout && dq && dk && dv && dcap)) continue;
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
      addRows(dv, ko, hd.kvRow, Nk, D, gemmNT(transpose(PZ, Nq, Nk), transpose(dO, Nq, D), Nk, D, Nq)); // dV = (P ∘ Z)ᵀ dO
      addRows(dq, qo, hd.qRow, Nq, D, gemmNT(dS, transpose(K, Nk, D), Nq, D, Nk, scale)); // dQ = scale dS K
      addRows(dk, ko, hd.kvRow, Nk, D, gemmNT(transpose(dS, Nq, Nk), transpose(Q, Nq, D), Nk, D, Nq, scale)); // dK = scale dSᵀ Q
    }
  }
  return { out, lse, dq, dk, dv, dbias };
}
