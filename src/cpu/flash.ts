/**
 * The cpu flash kernels: FlashAttention-2 over cache-sized tiles, f32 in memory and f64 in registers
 * and scratch (JavaScript numbers are doubles, so the arithmetic costs the same and rounds less).
 *
 * forwardTask: one task owns query block Q_i of one head (Br rows). K_j and V_j (Bc rows) stream past;
 *   S = Q_i K_jᵀ (Br×Bc) lives in scratch with the running max m, running sum l and the unnormalised O_i;
 *   O_i and L_i are written once. Causal: key blocks above the diagonal are never visited, and only
 *   blocks that cross it are masked element by element.
 * backwardTask: one task owns a run of key blocks K_j, V_j of one key/value head (every query head of its
 *   group). For each K_j it streams the query blocks, recomputes P = exp(S − L) and accumulates dK_j and
 *   dV_j in scratch (written once), and dQ into the task's own f64 partial, summed over tasks afterwards
 *   in a fixed order: no atomics, the result is deterministic.
 * Scratch per thread: (2·Br·D + Br·Bc + 2·Br) f64 forward, (2·Bc·D + 2·Br·Bc + G·Nq) f64 backward.
 * Nothing of size Nq×Nk is ever allocated.
 */
import type { CpuShape } from './job.js';

export interface ForwardArrays {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  lse: Float32Array;
}

export interface BackwardArrays {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  dout: Float32Array;
  lse: Float32Array;
  /** (chunks, B, H, Nq, D) partial sums of dQ. */
  dqPartial: Float64Array;
  dk: Float32Array;
  dv: Float32Array;
}

/** Number of forward tasks: one per query block of each head. */
export function forwardTasks(s: CpuShape): number {
  return s.B * s.H * Math.ceil(s.Nq / s.Br);
}

/** Number of backward tasks: `chunks` runs of key blocks for each key/value head. */
export function backwardTasks(s: CpuShape): number {
  return s.B * s.Hkv * s.chunks;
}

/** The key blocks [jStart, jEnd) that query rows [r0, r0 + rows) can see. */
function keyBlocks(s: CpuShape, r0: number, rows: number): number {
  const Tc = Math.ceil(s.Nk / s.Bc);
  if (!s.causal) return Tc;
  const lastKey = r0 + rows - 1 + s.Nk - s.Nq; // the last key the block's last row sees
  return Math.max(0, Math.min(Tc, Math.floor(lastKey / s.Bc) + 1));
}

export function forwardTask(s: CpuShape, a: ForwardArrays, t: number, scratch: Float64Array): void {
  const { B, H, Hkv, Nq, Nk, D, Br, Bc, scale, causal, qRow, kvRow } = s;
  const { q, k, v, out, lse } = a;
  const Tr = Math.ceil(Nq / Br);
  // Tasks with the most key blocks first (causal: the last query blocks), so threads finish together.
  const bh = t % (B * H);
  const i = Tr - 1 - Math.floor(t / (B * H));
  const b = Math.floor(bh / H);
  const h = bh % H;
  const qo = b * s.qBatch + h * s.qHead;
  const ko = b * s.kvBatch + Math.floor(h / (H / Hkv)) * s.kvHead;
  const r0 = i * Br;
  const rows = Math.min(Br, Nq - r0);
  const offset = Nk - Nq; // causal: row r sees keys c <= r + offset

  const Qi = scratch.subarray(0, Br * D);
  const Oi = scratch.subarray(Br * D, 2 * Br * D);
  const S = scratch.subarray(2 * Br * D, 2 * Br * D + Br * Bc);
  const m = scratch.subarray(2 * Br * D + Br * Bc, 2 * Br * D + Br * Bc + Br);
  const l = scratch.subarray(2 * Br * D + Br * Bc + Br, 2 * Br * D + Br * Bc + 2 * Br);

  // Alg. 1 lines 4-5: load Q_i with the softmax scale folded in; O_i = 0, l = 0, m = −∞.
  for (let r = 0; r < rows; r++) {
    const src = qo + (r0 + r) * qRow;
    for (let x = 0; x < D; x++) Qi[r * D + x] = q[src + x] * scale;
  }
  Oi.fill(0, 0, rows * D);
  l.fill(0, 0, rows);
  m.fill(-Infinity, 0, rows);

  const jEnd = keyBlocks(s, r0, rows);
  for (let j = 0; j < jEnd; j++) {
    const c0 = j * Bc;
    const cols = Math.min(Bc, Nk - c0);
    // Only a block that crosses the diagonal needs the mask: its last key is beyond its first row's reach.
    const masked = causal && c0 + cols - 1 > r0 + offset;

    // Alg. 1 line 8: S = Q_i K_jᵀ, two key rows at a time to halve the loads of Q_i.
    for (let c = 0; c < cols; c += 2) {
      const k0 = ko + (c0 + c) * kvRow;
      const k1 = c + 1 < cols ? k0 + kvRow : k0;
      for (let r = 0; r < rows; r++) {
        const qr = r * D;
        let s0 = 0;
        let s1 = 0;
        for (let x = 0; x < D; x++) {
          const qx = Qi[qr + x];
          s0 += qx * k[k0 + x];
          s1 += qx * k[k1 + x];
        }
        S[r * Bc + c] = s0;
        if (c + 1 < cols) S[r * Bc + c + 1] = s1;
      }
    }
    if (masked) {
      for (let r = 0; r < rows; r++) {
        for (let c = Math.max(0, r0 + r + offset + 1 - c0); c < cols; c++) S[r * Bc + c] = -Infinity;
      }
    }

    for (let r = 0; r < rows; r++) {
      // Alg. 1 line 9: new running max, P̃ = exp(S − m), l = e^(m_old − m) l + rowsum(P̃).
      const mOld = m[r];
      let mNew = mOld;
      const sr = r * Bc;
      for (let c = 0; c < cols; c++) {
        const x = S[sr + c];
        if (x !== x) mNew = NaN; // a NaN logit makes its row NaN, and only its row
        else if (x > mNew) mNew = x;
      }
      if (mNew === -Infinity) continue; // nothing visible yet in this row: P̃ = 0, nothing changes
      const alpha = Math.exp(mOld - mNew);
      let rowsum = 0;
      for (let c = 0; c < cols; c++) rowsum += S[sr + c] = Math.exp(S[sr + c] - mNew);
      l[r] = alpha * l[r] + rowsum;
      m[r] = mNew;
      // Alg. 1 line 10: O_i = diag(e^(m_old − m)) O_i + P̃ V_j, four key rows at a time.
      const or = r * D;
      if (alpha !== 1) for (let x = 0; x < D; x++) Oi[or + x] *= alpha;
      let c = 0;
      for (; c + 4 <= cols; c += 4) {
        const p0 = S[sr + c];
        const p1 = S[sr + c + 1];
        const p2 = S[sr + c + 2];
        const p3 = S[sr + c + 3];
        const v0 = ko + (c0 + c) * kvRow;
        const v1 = v0 + kvRow;
        const v2 = v1 + kvRow;
        const v3 = v2 + kvRow;
        for (let x = 0; x < D; x++) Oi[or + x] += p0 * v[v0 + x] + p1 * v[v1 + x] + p2 * v[v2 + x] + p3 * v[v3 + x];
      }
      for (; c < cols; c++) {
        const p0 = S[sr + c];
        const v0 = ko + (c0 + c) * kvRow;
        for (let x = 0; x < D; x++) Oi[or + x] += p0 * v[v0 + x];
      }
    }
  }

  // Alg. 1 lines 12-15: O_i = O_i / l, L_i = m + log l (a row that saw no key: O = 0, L = −∞).
  for (let r = 0; r < rows; r++) {
    const inv = l[r] === 0 ? 0 : 1 / l[r];
    const dst = qo + (r0 + r) * qRow;
    for (let x = 0; x < D; x++) out[dst + x] = Oi[r * D + x] * inv;
    lse[(b * H + h) * Nq + r0 + r] = l[r] === 0 ? -Infinity : m[r] + Math.log(l[r]);
  }
}

export function backwardTask(s: CpuShape, a: BackwardArrays, t: number, scratch: Float64Array): void {
  const { B, H, Hkv, Nq, Nk, D, Br, Bc, scale, causal, qRow, kvRow, chunks } = s;
  const { q, k, v, out, dout, lse, dqPartial, dk, dv } = a;
  const G = H / Hkv; // query heads per key/value head
  const Tc = Math.ceil(Nk / Bc);
  const chunk = t % chunks;
  const bk = Math.floor(t / chunks);
  const b = Math.floor(bk / Hkv);
  const hkv = bk % Hkv;
  const ko = b * s.kvBatch + hkv * s.kvHead;
  const offset = Nk - Nq; // causal: row r sees keys c <= r + offset
  // This task's key blocks: an even share of the Tc blocks, in order.
  const jStart = Math.floor((chunk * Tc) / chunks);
  const jEnd = Math.floor(((chunk + 1) * Tc) / chunks);

  const dKj = scratch.subarray(0, Bc * D);
  const dVj = scratch.subarray(Bc * D, 2 * Bc * D);
  const P = scratch.subarray(2 * Bc * D, 2 * Bc * D + Br * Bc);
  const dS = scratch.subarray(2 * Bc * D + Br * Bc, 2 * Bc * D + 2 * Br * Bc);
  const Dg = scratch.subarray(2 * Bc * D + 2 * Br * Bc, 2 * Bc * D + 2 * Br * Bc + G * Nq);

  // Alg. 2 line 4: D = rowsum(dO ∘ O) for every query head of the group.
  for (let g = 0; g < G; g++) {
    const qo = b * s.qBatch + (hkv * G + g) * s.qHead;
    for (let n = 0; n < Nq; n++) {
      const o = qo + n * qRow;
      let sum = 0;
      for (let x = 0; x < D; x++) sum += dout[o + x] * out[o + x];
      Dg[g * Nq + n] = sum;
    }
  }

  for (let j = jStart; j < jEnd; j++) {
    const c0 = j * Bc;
    const cols = Math.min(Bc, Nk - c0);
    dKj.fill(0, 0, cols * D);
    dVj.fill(0, 0, cols * D);
    // Causal: the first query row that sees key c0; query blocks before it are skipped.
    const iStart = causal ? Math.max(0, Math.floor((c0 - offset) / Br)) : 0;
    for (let g = 0; g < G; g++) {
      const h = hkv * G + g;
      const qo = b * s.qBatch + h * s.qHead;
      const Lo = (b * H + h) * Nq;
      const dqo = ((chunk * B + b) * H + h) * Nq * D;
      for (let r0 = iStart * Br; r0 < Nq; r0 += Br) {
        const rows = Math.min(Br, Nq - r0);
        const masked = causal && c0 + cols - 1 > r0 + offset;
        // Alg. 2 lines 10-14: S = scale Q_i K_jᵀ, P = exp(S − L), dP = dO_i V_jᵀ, dS = P ∘ (dP − D).
        for (let r = 0; r < rows; r++) {
          const qr = qo + (r0 + r) * qRow;
          const L = lse[Lo + r0 + r];
          const Dr = Dg[g * Nq + r0 + r];
          const cVisible = masked ? Math.min(cols, r0 + r + offset + 1 - c0) : cols;
          for (let c = 0; c < cols; c++) {
            let p = 0;
            let ds = 0;
            if (c < cVisible && L !== -Infinity) {
              const kc = ko + (c0 + c) * kvRow;
              let sc = 0;
              let dp = 0;
              for (let x = 0; x < D; x++) {
                sc += q[qr + x] * k[kc + x];
                dp += dout[qr + x] * v[kc + x];
              }
              p = Math.exp(sc * scale - L);
              ds = p * (dp - Dr);
            }
            P[r * Bc + c] = p;
            dS[r * Bc + c] = ds;
          }
        }
        // Alg. 2 lines 12 and 16: dV_j += Pᵀ dO_i, dK_j += scale dSᵀ Q_i.
        for (let r = 0; r < rows; r++) {
          const qr = qo + (r0 + r) * qRow;
          for (let c = 0; c < cols; c++) {
            const p = P[r * Bc + c];
            if (p === 0 && dS[r * Bc + c] === 0) continue;
            const ds = scale * dS[r * Bc + c];
            const kc = c * D;
            for (let x = 0; x < D; x++) {
              dVj[kc + x] += p * dout[qr + x];
              dKj[kc + x] += ds * q[qr + x];
            }
          }
        }
        // Alg. 2 line 15: dQ_i += scale dS K_j, into this task's partial.
        for (let r = 0; r < rows; r++) {
          const dr = dqo + (r0 + r) * D;
          for (let c = 0; c < cols; c++) {
            const ds = dS[r * Bc + c];
            if (ds === 0) continue;
            const f = scale * ds;
            const kc = ko + (c0 + c) * kvRow;
            for (let x = 0; x < D; x++) dqPartial[dr + x] += f * k[kc + x];
          }
        }
      }
    }
    // Alg. 2 line 18: write dK_j, dV_j once, summed over the group's heads.
    for (let c = 0; c < cols; c++) {
      const dst = ko + (c0 + c) * kvRow;
      for (let x = 0; x < D; x++) {
        dk[dst + x] = dKj[c * D + x];
        dv[dst + x] = dVj[c * D + x];
      }
    }
  }
}

/** dq = sum over chunks of the f64 partials, written in the layout of q. */
export function reduceDq(s: CpuShape, dqPartial: Float64Array, dq: Float32Array): void {
  const { B, H, Nq, D, chunks, qRow } = s;
  const slice = B * H * Nq * D;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let n = 0; n < Nq; n++) {
        const src = ((b * H + h) * Nq + n) * D;
        const dst = b * s.qBatch + h * s.qHead + n * qRow;
        for (let x = 0; x < D; x++) {
          let sum = 0;
          for (let c = 0; c < chunks; c++) sum += dqPartial[c * slice + src + x];
          dq[dst + x] = sum;
        }
      }
    }
  }
}
