/**
 * FlashAttention-2, Algorithm 2 (backward pass), in float64, line by line with the paper's names
 * (Dao 2023, "FlashAttention-2", Algorithm 2). Per head: D = rowsum(dO ∘ O); then for each key block
 * K_j, V_j the query blocks stream past, P is recomputed from L (no Nq×Nk matrix is stored), dV_j and
 * dK_j accumulate on chip and dQ_i is updated in "HBM".
 * Additions to the paper, each marked: the softmax scale (dS is scaled where it meets K and Q), the causal
 * mask (query blocks entirely above the diagonal are skipped), rows that see no key (L = −∞, so P = 0)
 * and grouped-query heads (dK, dV of a key/value head sum over the query heads that share it).
 */
import type { Problem } from '../problem.js';
import { blockSizes, type BlockSizes } from './algorithm1.js';
import { heads, visible } from './standard.js';

/** First query block that sees any key of key block j under the causal mask. */
export function firstQueryBlock(p: Problem, j: number, Br: number, Bc: number): number {
  if (!p.causal) return 0;
  const firstRow = j * Bc - (p.Nk - p.Nq); // the first query that sees key j·Bc
  return Math.max(0, Math.floor(firstRow / Br));
}

export function algorithm2(
  p: Problem,
  Q: Float64Array,
  K: Float64Array,
  V: Float64Array,
  O: Float64Array,
  dO: Float64Array,
  L: Float64Array,
  { Br, Bc }: BlockSizes = blockSizes(16384, p.D),
): { dQ: Float64Array; dK: Float64Array; dV: Float64Array } {
  const { B, H, Hkv, Nq: N_q, Nk: N_k, D: d, scale } = p;
  const hd = heads(p);
  // line 1
  const Tr = Math.ceil(N_q / Br);
  const Tc = Math.ceil(N_k / Bc);
  // line 3: dQ = 0 in HBM; dK, dV in Tc blocks
  const dQ = new Float64Array(Q.length);
  const dK = new Float64Array(K.length);
  const dV = new Float64Array(V.length);
  const D_ = new Float64Array(N_q); // the paper's D (not the head dim d)
  const K_j = new Float64Array(Bc * d);
  const V_j = new Float64Array(Bc * d);
  const dK_j = new Float64Array(Bc * d);
  const dV_j = new Float64Array(Bc * d);
  const P_ij = new Float64Array(Br * Bc);
  const dS_ij = new Float64Array(Br * Bc);

  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qo = hd.q(b, h);
      const ko = hd.kv(b, Math.floor(h / (H / Hkv)));
      const Lo = (b * H + h) * N_q;
      const row = (n: number) => qo + n * hd.qRow;
      // line 4: D = rowsum(dO ∘ O)
      for (let n = 0; n < N_q; n++) {
        let s = 0;
        for (let x = 0; x < d; x++) s += dO[row(n) + x] * O[row(n) + x];
        D_[n] = s;
      }
      // line 5
      for (let j = 0; j < Tc; j++) {
        const c0 = j * Bc;
        const cols = Math.min(Bc, N_k - c0);
        // line 6: load K_j, V_j; line 7: dK_j = 0, dV_j = 0
        for (let c = 0; c < cols; c++) {
          for (let x = 0; x < d; x++) {
            K_j[c * d + x] = K[ko + (c0 + c) * hd.kvRow + x];
            V_j[c * d + x] = V[ko + (c0 + c) * hd.kvRow + x];
          }
        }
        dK_j.fill(0);
        dV_j.fill(0);
        // line 8 (causal: query blocks entirely above the diagonal are skipped)
        for (let i = firstQueryBlock(p, j, Br, Bc); i < Tr; i++) {
          const r0 = i * Br;
          const rows = Math.min(Br, N_q - r0);
          // line 9: Q_i, O_i, dO_i, L_i, D_i are read in place below
          for (let r = 0; r < rows; r++) {
            const L_r = L[Lo + r0 + r];
            for (let c = 0; c < cols; c++) {
              // line 10: S_i^(j) = Q_i K_jᵀ (times the scale);  line 11: P_i^(j) = exp(S_i^(j) − L_i)
              let P = 0;
              if (visible(p, r0 + r, c0 + c) && L_r !== -Infinity) {
                let s = 0;
                for (let x = 0; x < d; x++) s += Q[row(r0 + r) + x] * K_j[c * d + x];
                P = Math.exp(s * scale - L_r);
              }
              P_ij[r * Bc + c] = P;
              // line 13: dP_i^(j) = dO_i V_jᵀ;  line 14: dS_i^(j) = P_i^(j) ∘ (dP_i^(j) − D_i)
              let dP = 0;
              for (let x = 0; x < d; x++) dP += dO[row(r0 + r) + x] * V_j[c * d + x];
              dS_ij[r * Bc + c] = P === 0 ? 0 : P * (dP - D_[r0 + r]);
            }
          }
          for (let c = 0; c < cols; c++) {
            for (let x = 0; x < d; x++) {
              let dv = 0;
              let dk = 0;
              for (let r = 0; r < rows; r++) {
                dv += P_ij[r * Bc + c] * dO[row(r0 + r) + x]; // line 12: dV_j ← dV_j + (P_i^(j))ᵀ dO_i
                dk += dS_ij[r * Bc + c] * Q[row(r0 + r) + x]; // line 16: dK_j ← dK_j + dS_i^(j)ᵀ Q_i
              }
              dV_j[c * d + x] += dv;
              dK_j[c * d + x] += scale * dk;
            }
          }
          // line 15: dQ_i ← dQ_i + dS_i^(j) K_j, in HBM
          for (let r = 0; r < rows; r++) {
            for (let x = 0; x < d; x++) {
              let dq = 0;
              for (let c = 0; c < cols; c++) dq += dS_ij[r * Bc + c] * K_j[c * d + x];
              dQ[row(r0 + r) + x] += scale * dq;
            }
          }
        }
        // line 18: write dK_j, dV_j (added: query heads that share a key/value head sum into it)
        for (let c = 0; c < cols; c++) {
          for (let x = 0; x < d; x++) {
            dK[ko + (c0 + c) * hd.kvRow + x] += dK_j[c * d + x];
            dV[ko + (c0 + c) * hd.kvRow + x] += dV_j[c * d + x];
          }
        }
      }
    }
  }
  // line 20
  return { dQ, dK, dV };
}
