/**
 * The cpu kernels of the nn ops that run inline (the matrix product runs on the worker threads:
 * src/cpu/linear.ts): f32 or f16 in memory and f64 in registers.
 *
 * layerNormRows: y = LN(x [+ r])·weight + bias per row of C, two passes (mean, then the centred
 *   variance), biased variance as torch.nn.LayerNorm; runs inline (it is O(M·C)).
 * embeddingRows: y[m] = tokenTable[tokens[m]] + positionTable[positions[m]], rows of C; inline.
 */
import { at, store, type HostData } from '../../cpu/linear.js';

export { GELU_C, gelu, linearColumnBlock, linearRowBlock, linearScratch, linearTasks, type Activation, type HostData, type LinearArrays, type LinearShape } from '../../cpu/linear.js';
/** y[m] = (v − mean(v)) / sqrt(var(v) + eps) · weight + bias with v = x[m] (+ r[m]), for M rows of C. */
export function layerNormRows(x: HostData, r: HostData | undefined, weight: HostData, bias: HostData, y: HostData, M: number, C: number, eps: number): void {
  const v = new Float64Array(C);
  for (let m = 0; m < M; m++) {
    const o = m * C;
    let sum = 0;
    for (let c = 0; c < C; c++) {
      v[c] = r ? at(x, o + c) + at(r, o + c) : at(x, o + c);
      sum += v[c];
    }
    const mean = sum / C;
    let sq = 0;
    for (let c = 0; c < C; c++) sq += (v[c] - mean) * (v[c] - mean);
    const inv = 1 / Math.sqrt(sq / C + eps);
    for (let c = 0; c < C; c++) store(y, o + c, (v[c] - mean) * inv * at(weight, c) + at(bias, c));
  }
}

/** y[m] = tokenTable[tokens[m]] + positionTable[positions[m]] for M rows of C (ids already checked). */
export function embeddingRows(tokens: Int32Array, positions: Int32Array, tokenTable: HostData, positionTable: HostData, y: HostData, C: number): void {
  for (let m = 0; m < tokens.length; m++) {
    const [t, p, o] = [tokens[m] * C, positions[m] * C, m * C];
    for (let c = 0; c < C; c++) store(y, o + c, at(tokenTable, t + c) + at(positionTable, p + c));
  }
}
