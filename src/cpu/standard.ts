/**
 * The cpu standard-attention baseline, for comparisons: it materialises the Nq×Nk matrices of every head
 * as the textbook algorithm (and PyTorch's math path) does, in the input dtype (f32, or f16 storage).
 *   forward:  S = scale·QKᵀ (masked −∞), P = softmax(S), O = PV, L = m + log l.     Holds S and P.
 *   backward: P = exp(scale·QKᵀ − L), dP = dO Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)),
 *             dV = Pᵀ dO, dQ = scale·dS K, dK = scale·dSᵀ Q.                        Holds P, dP and dS.
 * One task per head (forward) or per key/value head with its group (backward); f64 accumulation. Query
 * rows go four at a time, copied to f64 scratch, so each key and value element loaded feeds four rows.
 * The variants (src/modifiers.ts), where the shape has them: S is stored as the modified logit (modifyRow
 * over every key of a row: soft-cap, ALiBi, bias, dropped elements −∞); dropout multiplies P where it
 * meets V, and in the backward dP = (dO Vᵀ) ∘ Z is stored and P ∘ Z meets dO; dS (stored) is the gradient
 * of the modified logits, from which index.ts sums dbias, and dQ, dK take it times the soft-cap's derivative.
 */
import { f16ToNumber, numberToF16, roundToF16 } from '../f16.js';
import { dropoutRow, modifyRow, type Modifiers } from '../modifiers.js';
import { modifiersOf, type CpuShape } from './job.js';

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
  bias?: Float64Array;
  mask?: Uint8Array;
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
  bias?: Float64Array;
  mask?: Uint8Array;
}

/** The task's Modifiers (only where the shape has variants) and the bias values. */
function taskMods(s: CpuShape, a: { bias?: Float64Array; mask?: Uint8Array }): { m: Modifiers; bias: Float64Array | undefined } | undefined {
  return s.mods && { m: modifiersOf(s.mods, a.bias, a.mask), bias: a.bias };
}

/** Store x in a score matrix and return the value stored (rounded to f16 where the matrix is f16). */
function put(a: Scores, i: number, x: number): number {
  if (a instanceof Float32Array) return (a[i] = x);
  const h = numberToF16(x);
  a[i] = h;
  return f16ToNumber(h);
}

/** x as a score matrix like `a` would hold it (the backward recomputes S as the forward stored it). */
function rounded(a: Scores, x: number): number {
  return a instanceof Float32Array ? Math.fround(x) : roundToF16(x);
}

function get(a: Scores, i: number): number {
  return a instanceof Float32Array ? a[i] : f16ToNumber(a[i]);
}

/** Copy up to four rows of D elements (row stride `stride`) into packed `dst`; missing rows repeat the last. */
function loadRows(dst: Float64Array, src: Float32Array, o: number, stride: number, rows: number, D: number): void {
  for (let r = 0; r < 4; r++) {
    const so = o + Math.min(r, rows - 1) * stride;
    for (let x = 0; x < D; x++) dst[r * D + x] = src[so + x];
  }
}

/**
 * T[r·ld + j] = A_r · src row j, for the four packed rows of A and keys j0 <= j < j1, each dot summed in
 * order of x; two keys at a time, so each load of A feeds two products and each key element four.
 */
function dots4(T: Float64Array, ld: number, A: Float64Array, src: Float32Array, o: number, stride: number, j0: number, j1: number, D: number): void {
  let j = j0;
  for (; j + 2 <= j1; j += 2) {
    const kj = o + j * stride;
    const kk = kj + stride;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    let t0 = 0;
    let t1 = 0;
    let t2 = 0;
    let t3 = 0;
    for (let x = 0; x < D; x++) {
      const kx = src[kj + x];
      const ky = src[kk + x];
      const a0 = A[x];
      const a1 = A[D + x];
      const a2 = A[2 * D + x];
      const a3 = A[3 * D + x];
      s0 += a0 * kx;
      s1 += a1 * kx;
      s2 += a2 * kx;
      s3 += a3 * kx;
      t0 += a0 * ky;
      t1 += a1 * ky;
      t2 += a2 * ky;
      t3 += a3 * ky;
    }
    T[j] = s0;
    T[ld + j] = s1;
    T[2 * ld + j] = s2;
    T[3 * ld + j] = s3;
    T[j + 1] = t0;
    T[ld + j + 1] = t1;
    T[2 * ld + j + 1] = t2;
    T[3 * ld + j + 1] = t3;
  }
  for (; j < j1; j++) {
    const kj = o + j * stride;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let x = 0; x < D; x++) {
      const kx = src[kj + x];
      s0 += A[x] * kx;
      s1 += A[D + x] * kx;
      s2 += A[2 * D + x] * kx;
      s3 += A[3 * D + x] * kx;
    }
    T[j] = s0;
    T[ld + j] = s1;
    T[2 * ld + j] = s2;
    T[3 * ld + j] = s3;
  }
}

export function standardForwardTask(s: CpuShape, a: StandardForwardArrays, t: number, scratch: Float64Array): void {
  const { H, Hkv, Nq, Nk, D, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, lse, S, P } = a;
  const b = Math.floor(t / H);
  const h = t % H;
  const qo = b * s.qBatch + h * s.qHead;
  const ko = b * s.kvBatch + Math.floor(h / (H / Hkv)) * s.kvHead;
  const base = t * Nq * Nk;
  let at = 0;
  const take = (n: number) => scratch.subarray(at, (at += n));
  const Qr = take(4 * D); // four query rows
  const O = take(4 * D); // their output rows, accumulated in f64
  const T = take(4 * Nk); // the four rows' scores, then each row's nonzero P packed to the front
  const nz = take(4 * Nk); // each row's keys with P ≠ 0
  const mods = taskMods(s, a);
  const extra = mods ? Nk : 0;
  const Srow = take(extra); // with the variants: a row's modified logits
  const Z = take(extra); // and dropout's multipliers
  const dropout = mods?.m.dropout !== undefined;
  const n = [0, 0, 0, 0];
  for (let i0 = 0; i0 < Nq; i0 += 4) {
    const rows = Math.min(4, Nq - i0);
    // keys the group's last row sees (with the variants, the modifiers drop the rest)
    const seenAll = causal && !mods ? Math.max(0, Math.min(Nk, i0 + rows + Nk - Nq)) : Nk;
    loadRows(Qr, q, qo + i0 * qRow, qRow, rows, D);
    dots4(T, Nk, Qr, k, ko, kvRow, 0, seenAll, D);
    for (let r = 0; r < rows; r++) {
      const i = i0 + r;
      const row = base + i * Nk;
      const tr = r * Nk;
      if (mods) {
        for (let j = 0; j < Nk; j++) Srow[j] = T[tr + j] * scale;
        modifyRow(mods.m, b, h, i, 0, Nk, Srow, 0, Nq, Nk, mods.bias);
        for (let j = 0; j < Nk; j++) put(S, row + j, Srow[j]);
      } else {
        const seen = causal ? Math.max(0, Math.min(Nk, i + Nk - Nq + 1)) : Nk; // keys 0 .. seen-1 are visible
        for (let j = 0; j < seen; j++) put(S, row + j, T[tr + j] * scale);
        for (let j = seen; j < Nk; j++) put(S, row + j, -Infinity);
      }
      let m = -Infinity;
      for (let j = 0; j < Nk; j++) m = Math.max(m, get(S, row + j)); // Math.max keeps a NaN: the row turns NaN
      let l = 0;
      if (m !== -Infinity) for (let j = 0; j < Nk; j++) l += T[tr + j] = Math.exp(get(S, row + j) - m);
      const inv = l === 0 ? 0 : 1 / l;
      // P, and the keys where it is nonzero (packed to the front of the row's T): only those meet V (dropout: P ∘ Z).
      if (dropout) dropoutRow(mods!.m, t, i, 0, Nk, Z, 0);
      let c = 0;
      for (let j = 0; j < Nk; j++) {
        let p = put(P, row + j, m === -Infinity ? 0 : T[tr + j] * inv);
        if (dropout) p *= Z[j];
        if (p === 0) continue;
        T[tr + c] = p;
        nz[tr + c++] = j;
      }
      n[r] = c;
      lse[t * Nq + i] = l === 0 ? -Infinity : m + Math.log(l);
    }
    // O = P V. Each row sums its nonzero terms four at a time in key order, (p0·v0 + p1·v1 + p2·v2 + p3·v3)
    // added to O; over the keys where all four rows have the same nonzero list, the four rows go together
    // (the same sums, each V element loaded once for four rows), then each row finishes on its own.
    O.fill(0);
    let shared = 0;
    if (rows === 4) {
      const most = Math.min(n[0], n[1], n[2], n[3]);
      while (shared < most && nz[shared] === nz[Nk + shared] && nz[shared] === nz[2 * Nk + shared] && nz[shared] === nz[3 * Nk + shared]) shared++;
      shared -= shared % 4;
    }
    for (let c = 0; c < shared; c += 4) {
      const v0 = ko + nz[c] * kvRow;
      const v1 = ko + nz[c + 1] * kvRow;
      const v2 = ko + nz[c + 2] * kvRow;
      const v3 = ko + nz[c + 3] * kvRow;
      const a0 = T[c], a1 = T[c + 1], a2 = T[c + 2], a3 = T[c + 3];
      const b0 = T[Nk + c], b1 = T[Nk + c + 1], b2 = T[Nk + c + 2], b3 = T[Nk + c + 3];
      const c0 = T[2 * Nk + c], c1 = T[2 * Nk + c + 1], c2 = T[2 * Nk + c + 2], c3 = T[2 * Nk + c + 3];
      const d0 = T[3 * Nk + c], d1 = T[3 * Nk + c + 1], d2 = T[3 * Nk + c + 2], d3 = T[3 * Nk + c + 3];
      for (let d = 0; d < D; d++) {
        const x0 = v[v0 + d];
        const x1 = v[v1 + d];
        const x2 = v[v2 + d];
        const x3 = v[v3 + d];
        O[d] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3;
        O[D + d] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3;
        O[2 * D + d] += c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3;
        O[3 * D + d] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3;
      }
    }
    for (let r = 0; r < rows; r++) {
      const tr = r * Nk;
      const rd = r * D;
      let c = shared;
      for (; c + 4 <= n[r]; c += 4) {
        const p0 = T[tr + c];
        const p1 = T[tr + c + 1];
        const p2 = T[tr + c + 2];
        const p3 = T[tr + c + 3];
        const v0 = ko + nz[tr + c] * kvRow;
        const v1 = ko + nz[tr + c + 1] * kvRow;
        const v2 = ko + nz[tr + c + 2] * kvRow;
        const v3 = ko + nz[tr + c + 3] * kvRow;
        for (let d = 0; d < D; d++) O[rd + d] += p0 * v[v0 + d] + p1 * v[v1 + d] + p2 * v[v2 + d] + p3 * v[v3 + d];
      }
      for (; c < n[r]; c++) {
        const p0 = T[tr + c];
        const v0 = ko + nz[tr + c] * kvRow;
        for (let d = 0; d < D; d++) O[rd + d] += p0 * v[v0 + d];
      }
      const oi = qo + (i0 + r) * qRow;
      for (let d = 0; d < D; d++) out[oi + d] = O[rd + d];
    }
  }
}

export function standardBackwardTask(s: CpuShape, a: StandardBackwardArrays, t: number, scratch: Float64Array): void {
  const { H, Hkv, Nq, Nk, D, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, dout, lse, dq, dk, dv, P, dP, dS } = a;
  const G = H / Hkv;
  const b = Math.floor(t / Hkv);
  const hkv = t % Hkv;
  const ko = b * s.kvBatch + hkv * s.kvHead;
  let at = 0;
  const take = (n: number) => scratch.subarray(at, (at += n));
  const Di = take(Nq);
  const dK = take(Nk * D).fill(0);
  const dV = take(Nk * D).fill(0);
  const Qr = take(4 * D); // four query rows, their dO rows and their dQ, in f64
  const dOr = take(4 * D);
  const dQr = take(4 * D);
  const Ts = take(4 * Nk); // the four rows' Q Kᵀ, then their P as stored
  const Td = take(4 * Nk); // the four rows' dO Vᵀ, then scale·dS as stored
  const seen = [0, 0, 0, 0];
  const mods = taskMods(s, a);
  // With the variants: a row's modified logits, soft-cap derivatives and dropout multipliers.
  const Srow = take(mods ? Nk : 0);
  const dcap = take(mods ? Nk : 0);
  const Z = take(mods ? Nk : 0);
  const dropout = mods?.m.dropout !== undefined;
  /**
   * With the variants, row i of head h (at `row` in the matrices, `tr` in Ts = Q Kᵀ and Td = dO Vᵀ): P from
   * the modified logits, dP = (dO Vᵀ) ∘ Z, dS = P ∘ (dP − D) stored; then P ∘ Z and scale·dS times the
   * soft-cap's derivative in Ts and Td, as the products below take them.
   */
  const modifiedRow = (i: number, h: number, row: number, tr: number, L: number, Dr: number): void => {
    for (let j = 0; j < Nk; j++) Srow[j] = Ts[tr + j] * scale;
    modifyRow(mods!.m, b, h, i, 0, Nk, Srow, 0, Nq, Nk, mods!.bias, dcap);
    if (dropout) dropoutRow(mods!.m, b * H + h, i, 0, Nk, Z, 0);
    for (let j = 0; j < Nk; j++) {
      const z = dropout ? Z[j] : 1;
      const p = put(P, row + j, L === -Infinity ? 0 : Math.exp(rounded(P, Srow[j]) - L));
      const dp = put(dP, row + j, Td[tr + j] * z);
      put(dS, row + j, p * (dp - Dr));
      Ts[tr + j] = p * z;
      Td[tr + j] = scale * get(dS, row + j) * dcap[j];
    }
  };

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
    for (let i0 = 0; i0 < Nq; i0 += 4) {
      const rows = Math.min(4, Nq - i0);
      loadRows(Qr, q, qo + i0 * qRow, qRow, rows, D);
      loadRows(dOr, dout, qo + i0 * qRow, qRow, rows, D);
      let most = 0;
      let least = Nk;
      for (let r = 0; r < 4; r++) {
        const i = i0 + Math.min(r, rows - 1);
        const L = lse[(b * H + h) * Nq + i];
        seen[r] = L === -Infinity ? 0 : causal && !mods ? Math.max(0, Math.min(Nk, i + Nk - Nq + 1)) : Nk;
        most = Math.max(most, seen[r]);
        least = Math.min(least, seen[r]);
      }
      // P = exp(scale·QKᵀ − L) and dP = dO Vᵀ, both materialised; then dS = P ∘ (dP − D).
      dots4(Ts, Nk, Qr, k, ko, kvRow, 0, most, D);
      dots4(Td, Nk, dOr, v, ko, kvRow, 0, Nk, D);
      for (let r = 0; r < rows; r++) {
        const i = i0 + r;
        const L = lse[(b * H + h) * Nq + i];
        const row = base + i * Nk;
        const tr = r * Nk;
        if (mods) {
          modifiedRow(i, h, row, tr, L, Di[i]);
          continue;
        }
        for (let j = 0; j < Nk; j++) {
          const p = put(P, row + j, j < seen[r] ? Math.exp(rounded(P, Ts[tr + j] * scale) - L) : 0);
          const dp = put(dP, row + j, Td[tr + j]);
          put(dS, row + j, p * (dp - Di[i]));
          Ts[tr + j] = get(P, row + j);
          Td[tr + j] = scale * get(dS, row + j);
        }
      }
      // dV += Pᵀ dO, dK += scale·dSᵀ Q, dQ = scale·dS K: four rows per key where all four see it, then
      // row by row, skipping the entries that are zero (masked keys, rows that see none).
      dQr.fill(0);
      const all = rows === 4 ? least : 0;
      let j = 0;
      // Two keys at a time: each of dQ's entries takes the first key's term, then the second's, as one
      // key at a time would add them; each row of dO and Q loaded feeds both keys.
      for (; j + 2 <= all; j += 2) {
        const p0 = Ts[j], p1 = Ts[Nk + j], p2 = Ts[2 * Nk + j], p3 = Ts[3 * Nk + j];
        const s0 = Td[j], s1 = Td[Nk + j], s2 = Td[2 * Nk + j], s3 = Td[3 * Nk + j];
        const e0 = Ts[j + 1], e1 = Ts[Nk + j + 1], e2 = Ts[2 * Nk + j + 1], e3 = Ts[3 * Nk + j + 1];
        const f0 = Td[j + 1], f1 = Td[Nk + j + 1], f2 = Td[2 * Nk + j + 1], f3 = Td[3 * Nk + j + 1];
        const kj = ko + j * kvRow;
        const kk = kj + kvRow;
        const o = j * D;
        const oo = o + D;
        for (let d = 0; d < D; d++) {
          const g0 = dOr[d], g1 = dOr[D + d], g2 = dOr[2 * D + d], g3 = dOr[3 * D + d];
          dV[o + d] += p0 * g0 + p1 * g1 + p2 * g2 + p3 * g3;
          dV[oo + d] += e0 * g0 + e1 * g1 + e2 * g2 + e3 * g3;
          const q0 = Qr[d], q1 = Qr[D + d], q2 = Qr[2 * D + d], q3 = Qr[3 * D + d];
          dK[o + d] += s0 * q0 + s1 * q1 + s2 * q2 + s3 * q3;
          dK[oo + d] += f0 * q0 + f1 * q1 + f2 * q2 + f3 * q3;
          const kx = k[kj + d];
          const ky = k[kk + d];
          dQr[d] = dQr[d] + s0 * kx + f0 * ky;
          dQr[D + d] = dQr[D + d] + s1 * kx + f1 * ky;
          dQr[2 * D + d] = dQr[2 * D + d] + s2 * kx + f2 * ky;
          dQr[3 * D + d] = dQr[3 * D + d] + s3 * kx + f3 * ky;
        }
      }
      for (; j < all; j++) {
        const p0 = Ts[j], p1 = Ts[Nk + j], p2 = Ts[2 * Nk + j], p3 = Ts[3 * Nk + j];
        const s0 = Td[j], s1 = Td[Nk + j], s2 = Td[2 * Nk + j], s3 = Td[3 * Nk + j];
        const kj = ko + j * kvRow;
        const o = j * D;
        for (let d = 0; d < D; d++) {
          dV[o + d] += p0 * dOr[d] + p1 * dOr[D + d] + p2 * dOr[2 * D + d] + p3 * dOr[3 * D + d];
          dK[o + d] += s0 * Qr[d] + s1 * Qr[D + d] + s2 * Qr[2 * D + d] + s3 * Qr[3 * D + d];
          const kx = k[kj + d];
          dQr[d] += s0 * kx;
          dQr[D + d] += s1 * kx;
          dQr[2 * D + d] += s2 * kx;
          dQr[3 * D + d] += s3 * kx;
        }
      }
      for (let r = 0; r < rows; r++) {
        const tr = r * Nk;
        const rd = r * D;
        for (let j = rows === 4 ? least : 0; j < Nk; j++) {
          const p = Ts[tr + j];
          const ds = Td[tr + j];
          if (p === 0 && ds === 0) continue;
          const kj = ko + j * kvRow;
          const o = j * D;
          for (let d = 0; d < D; d++) {
            dV[o + d] += p * dOr[rd + d];
            dK[o + d] += ds * Qr[rd + d];
            dQr[rd + d] += ds * k[kj + d];
          }
        }
        const qi = qo + (i0 + r) * qRow;
        for (let d = 0; d < D; d++) dq[qi + d] = dQr[rd + d];
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
