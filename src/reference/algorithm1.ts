/**
 * FlashAttention-2, Algorithm 1 (forward pass), in float64, line by line with the paper's names so the
 * code can be read beside it (Dao 2023, "FlashAttention-2", Algorithm 1). Per head (b, h):
 *   Q is split into Tr blocks Q_i of Br rows, K and V into Tc blocks K_j, V_j of Bc rows; for each Q_i the
 *   K_j, V_j stream past with a running max m, a running sum l and an unnormalised O_i, rescaled once at
 *   the end; L_i = m_i + log(l_i) is the log-sum-exp the backward pass recomputes P from.
 * Additions to the paper, each marked: the softmax scale, the variants (src/modifiers.ts: key blocks
 * outside a query block's band — causal, window — are never visited, tiles the block mask leaves empty
 * are skipped, full tiles need no per-element test; the score modifier and the element rules per row;
 * dropout multiplies P̃ where it meets V, while l sums P̃ without it, so L is the softmax's before
 * dropout) and rows that see no key at all (O = 0, L = −∞).
 */
import { EMPTY, FULL, dropoutRow, keyRange, modifyRow, scoreModifiers, tileClass } from '../modifiers.js';
import type { Problem } from '../problem.js';
import { biasValues, heads } from './standard.js';

export interface BlockSizes {
  Br: number;
  Bc: number;
}

/**
 * The paper's choice for on-chip memory of M elements (FlashAttention, Algorithm 1 line 1):
 * Bc = ceil(M / 4d), Br = min(ceil(M / 4d), d).
 */
export function blockSizes(M: number, d: number): BlockSizes {
  const Bc = Math.ceil(M / (4 * d));
  return { Br: Math.min(Bc, d), Bc };
}

/** First key block query block i can see at all under the band (causal, window), and the last (exclusive). */
export function keyBlockRange(p: Problem, i: number, Br: number, Bc: number): [number, number] {
  const [lo, hi] = keyRange(p.mods, i * Br, Math.min((i + 1) * Br, p.Nq), p.Nq, p.Nk);
  return hi > lo ? [Math.floor(lo / Bc), Math.ceil(hi / Bc)] : [0, 0];
}

/** (B, Nq, H, D) q, (B, Nk, Hkv, D) k, v in float64 -> O like q and L (B, H, Nq). */
export function algorithm1(
  p: Problem,
  Q: Float64Array,
  K: Float64Array,
  V: Float64Array,
  { Br, Bc }: BlockSizes = blockSizes(16384, p.D),
): { O: Float64Array; L: Float64Array } {
  const { B, H, Hkv, Nq: N_q, Nk: N_k, D: d, scale } = p;
  const hd = heads(p);
  const O = new Float64Array(Q.length);
  const L = new Float64Array(B * H * N_q);
  // line 1: Q in Tr blocks of Br rows, K and V in Tc blocks of Bc rows (the last block of each may be short)
  const Tr = Math.ceil(N_q / Br);
  const Q_i = new Float64Array(Br * d);
  const K_j = new Float64Array(Bc * d);
  const V_j = new Float64Array(Bc * d);
  const S_ij = new Float64Array(Br * Bc);
  const O_i = new Float64Array(Br * d);
  const l_i = new Float64Array(Br);
  const m_i = new Float64Array(Br);
  const mods = p.mods;
  const bias = biasValues(mods);
  const fullMods = scoreModifiers(mods);
  const Z = new Float64Array(Bc); // dropout's multipliers of one row of the tile

  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qo = hd.q(b, h);
      const ko = hd.kv(b, Math.floor(h / (H / Hkv)));
      // line 3
      for (let i = 0; i < Tr; i++) {
        const r0 = i * Br;
        const rows = Math.min(Br, N_q - r0);
        // line 4: load Q_i
        for (let r = 0; r < rows; r++) for (let x = 0; x < d; x++) Q_i[r * d + x] = Q[qo + (r0 + r) * hd.qRow + x];
        // line 5: O_i = 0, l_i = 0, m_i = −∞
        O_i.fill(0);
        l_i.fill(0);
        m_i.fill(-Infinity);
        // line 6 (the band: key blocks no row of Q_i sees are never visited)
        const [jStart, jEnd] = keyBlockRange(p, i, Br, Bc);
        for (let j = jStart; j < jEnd; j++) {
          const c0 = j * Bc;
          const cols = Math.min(Bc, N_k - c0);
          // (tiles the band and block mask leave empty are skipped; full ones need no per-element test)
          const tile = tileClass(mods, b, h, r0, r0 + rows, c0, c0 + cols, N_q, N_k);
          if (tile === EMPTY) continue;
          // line 7: load K_j, V_j
          for (let c = 0; c < cols; c++) {
            for (let x = 0; x < d; x++) {
              K_j[c * d + x] = K[ko + (c0 + c) * hd.kvRow + x];
              V_j[c * d + x] = V[ko + (c0 + c) * hd.kvRow + x];
            }
          }
          // line 8: S_i^(j) = Q_i K_jᵀ (times the softmax scale; then modified, dropped entries −∞)
          for (let r = 0; r < rows; r++) {
            for (let c = 0; c < cols; c++) {
              let s = 0;
              for (let x = 0; x < d; x++) s += Q_i[r * d + x] * K_j[c * d + x];
              S_ij[r * Bc + c] = s * scale;
            }
            modifyRow(tile === FULL ? fullMods : mods, b, h, r0 + r, c0, cols, S_ij, r * Bc, N_q, N_k, bias);
          }
          for (let r = 0; r < rows; r++) {
            // line 9: m_i^(j) = max(m_i^(j−1), rowmax(S_i^(j)))
            const m_prev = m_i[r];
            let m_new = m_prev;
            for (let c = 0; c < cols; c++) m_new = nanMax(m_new, S_ij[r * Bc + c]);
            // a row that has seen only masked keys keeps m = −∞; exp(−∞ − (−∞)) would be NaN, so use 0
            const m_ref = m_new === -Infinity ? 0 : m_new;
            // line 9: P̃_i^(j) = exp(S_i^(j) − m_i^(j)),  l_i^(j) = e^(m_i^(j−1) − m_i^(j)) l_i^(j−1) + rowsum(P̃_i^(j))
            const alpha = Math.exp(m_prev - m_ref);
            let rowsum = 0;
            for (let c = 0; c < cols; c++) rowsum += S_ij[r * Bc + c] = Math.exp(S_ij[r * Bc + c] - m_ref);
            l_i[r] = alpha * l_i[r] + rowsum;
            // (dropout: P̃ ∘ Z meets V below; l above is the sum without it)
            if (mods.dropout) {
              dropoutRow(mods, b * H + h, r0 + r, c0, cols, Z, 0);
              for (let c = 0; c < cols; c++) S_ij[r * Bc + c] *= Z[c];
            }
            // line 10: O_i^(j) = diag(e^(m_i^(j−1) − m_i^(j))) O_i^(j−1) + P̃_i^(j) V_j
            for (let x = 0; x < d; x++) {
              let pv = 0;
              for (let c = 0; c < cols; c++) pv += S_ij[r * Bc + c] * V_j[c * d + x];
              O_i[r * d + x] = alpha * O_i[r * d + x] + pv;
            }
            m_i[r] = m_new;
          }
        }
        for (let r = 0; r < rows; r++) {
          // line 12: O_i = diag(l_i^(Tc))^−1 O_i^(Tc)   (a row that saw no key: O = 0)
          const inv = l_i[r] === 0 ? 0 : 1 / l_i[r];
          // line 14: write O_i
          for (let x = 0; x < d; x++) O[qo + (r0 + r) * hd.qRow + x] = O_i[r * d + x] * inv;
          // lines 13 and 15: L_i = m_i^(Tc) + log(l_i^(Tc)), written (−∞ for a row that saw no key)
          L[(b * H + h) * N_q + r0 + r] = m_i[r] + Math.log(l_i[r]);
        }
      }
    }
  }
  // line 17
  return { O, L };
}

/** max that keeps NaN (Math.max does too, but this reads as intended in the loops). */
function nanMax(a: number, b: number): number {
  return a !== a || b !== b ? NaN : a > b ? a : b;
}
