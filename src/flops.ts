/**
 * FLOP counts as FlashAttention's benchmarks count them: forward 4·B·H·Nq·Nk·D (two matmuls of
 * 2·Nq·Nk·D each), halved when causal; backward 2.5 × forward; forward + backward 3.5 × forward.
 */
export function attentionFlops(
  s: { B: number; H: number; Nq: number; Nk: number; D: number; causal: boolean },
  pass: 'forward' | 'backward' | 'forward+backward' = 'forward',
): number {
  const fwd = (4 * s.B * s.H * s.Nq * s.Nk * s.D) / (s.causal ? 2 : 1);
  return pass === 'forward' ? fwd : pass === 'backward' ? 2.5 * fwd : 3.5 * fwd;
}
