/**
 * FlashAttention-2, Algorithm 2 (backward pass), in float64, line by line with the paper's names
 * (Dao 2023, "FlashAttention-2", Algorithm 2). Per head: D = rowsum(dO ∘ O); then for each key block
 * K_j, V_j the query blocks stream past, P is recomputed from L (no Nq×Nk matrix is stored), dV_j and
 * dK_j accumulate on chip and dQ_i is updated in "HBM".
 * Additions to the paper, each marked: the softmax scale (dS is scaled where it meets K and Q), the
 * variants (src/modifiers.ts: query blocks outside a key block's band are never visited, tiles the block
 * mask leaves empty are skipped, full tiles need no per-element test; S modified as the forward did;
 * dropout's Z regenerated: dV takes P ∘ Z and dP is (dO V_jᵀ) ∘ Z, while D = rowsum(dO ∘ O) stays
 * rowsum(dP ∘ P); dbias sums dS, and dQ, dK take dS times the soft-cap's derivative), rows that see no
 * key (L = −∞, so P = 0) and grouped-query heads (dK, dV of a key/value head sum over the query heads that
 * share it).
 */
import { EMPTY, FULL, at, dropoutRow, modifyRow, rowRange, scoreModifiers, tileClass } from '../modifiers.js';
import type { Problem } from '../problem.js';
import { blockSizes, type BlockSizes } from './algorithm1.js';
import { biasValues, heads } from './standard.js';

/** First query block that sees any key of key block j under the band (causal, window), and the last (exclusive). */
export function queryBlockRange(p: Problem, j: number, Br: number, Bc: number): [number, number] {
  const [lo, hi] = rowRange(p.mods, j * Bc, Math.min((j + 1) * Bc, p.Nk), p.Nq, p.Nk);
  return hi > lo ? [Math.floor(lo / Br), Math.ceil(hi / Br)] : [0, 0];
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
): { dQ: Float64Array; dK: Float64Array; dV: Float64Array; dbias?: Float64Array } {
  const { B, H, Hkv, Nq: N_q, Nk: N_k, D: d, scale } = p;
  const hd = heads(p);
  // line 1
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
  const mods = p.mods;
  const bias = biasValues(mods);
  const fullMods = scoreModifiers(mods);
  const S_r = new Float64Array(Bc); // one row's modified scores
  const dcap = new Float64Array(Bc); // and the soft-cap's derivative
  const Z = new Float64Array(Bc).fill(1); // and dropout's multipliers (1 without dropout)
  // (dbias: dS summed into the bias's shape when asked)
  const biasIndex = mods.bias?.grad ? mods.bias.index : undefined;
  const dbias = biasIndex && new Float64Array(biasIndex.shape.reduce((a, c) => a * c, 1));

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
        // line 8 (the band: query blocks that see no key of K_j are never visited)
        const [iStart, iEnd] = queryBlockRange(p, j, Br, Bc);
        for (let i = iStart; i < iEnd; i++) {
          const r0 = i * Br;
          const rows = Math.min(Br, N_q - r0);
          // (tiles the band and block mask leave empty are skipped; full ones need no per-element test)
          const tile = tileClass(mods, b, h, r0, r0 + rows, c0, c0 + cols, N_q, N_k);
          if (tile === EMPTY) continue;
          // line 9: Q_i, O_i, dO_i, L_i, D_i are read in place below
          for (let r = 0; r < rows; r++) {
            const L_r = L[Lo + r0 + r];
            // line 10: S_i^(j) = Q_i K_jᵀ (times the scale, then modified as the forward did)
            for (let c = 0; c < cols; c++) {
              let s = 0;
              for (let x = 0; x < d; x++) s += Q[row(r0 + r) + x] * K_j[c * d + x];
              S_r[c] = s * scale;
            }
            modifyRow(tile === FULL ? fullMods : mods, b, h, r0 + r, c0, cols, S_r, 0, N_q, N_k, bias, dcap);
            if (mods.dropout) dropoutRow(mods, b * H + h, r0 + r, c0, cols, Z, 0);
            for (let c = 0; c < cols; c++) {
              // line 11: P_i^(j) = exp(S_i^(j) − L_i)
              const P = L_r === -Infinity ? 0 : Math.exp(S_r[c] - L_r);
              P_ij[r * Bc + c] = P * Z[c]; // (dropout: P ∘ Z, as dV takes it)
              // line 13: dP_i^(j) = dO_i V_jᵀ (∘ Z);  line 14: dS_i^(j) = P_i^(j) ∘ (dP_i^(j) − D_i)
              let dP = 0;
              for (let x = 0; x < d; x++) dP += dO[row(r0 + r) + x] * V_j[c * d + x];
              const dS = P === 0 ? 0 : P * (dP * Z[c] - D_[r0 + r]);
              // (dbias takes dS; dQ and dK take it times the soft-cap's derivative)
              if (dbias && biasIndex) dbias[at(biasIndex, b, h, r0 + r, c0 + c)] += dS;
              dS_ij[r * Bc + c] = dS * dcap[c];
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
  return { dQ, dK, dV, ...(dbias && { dbias }) };
}
