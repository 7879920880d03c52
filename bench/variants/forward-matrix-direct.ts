/**
 * Forward kernel on subgroup matrices (tensor cores), FlashAttention-2 order; f16 storage, f32 accumulation.
 * Chosen where the adapter lists an f16→f32 16×16×16 subgroup-matrix config and D is a multiple of 16
 * (see webgpu/index.ts); the portable kernel (forward.ts) runs everywhere else.
 *
 * This Dawn requires the pointer and offset of every subgroup-matrix load and store to be uniform across
 * the workgroup, so a workgroup is one subgroup (SGS invocations). It owns query block Q_i of Br = 16·RF
 * rows of one head; dispatch (Tr, B·H). Q_i's RF × Dp/16 fragments and the unnormalised O_i's RF × Dp/16
 * f32 fragments stay in registers for the whole loop. Fragments of Q_i, K_j and V_j are loaded straight
 * from the storage buffers (Q and K column-major views of their rows, V row-major), so nothing is staged
 * and no tile is copied. Per key block (Bc keys):
 *   1. S = Q_i K_jᵀ: each K_j fragment is loaded once and used for the RF row fragments; S goes to
 *      workgroup memory ([c][r], stride Br);
 *   2. each invocation takes its row (or share of a row: SGS/Br invocations per row, combined with
 *      subgroup shuffles): running max m, P̃ = exp2(S·scale·log2e − m) written to P in f16, and l, the
 *      sum of those f16 values read back from P (so a one-hot row, as with logits of ±1e4, gives exactly
 *      its V row);
 *   3. O_i += P̃ V_j.
 * The rescale O_i = diag(e^(m_old − m)) O_i needs per-row scalars, which subgroup matrices cannot take; so
 * m only moves when a row's block max exceeds it by more than TAU (in log2 units; P̃ ≤ 2^TAU, well within
 * f16). The result is exact either way (O_i and l share the same m); for ordinary inputs m settles in the
 * first blocks, so the round trip through workgroup memory that a rescale needs is rare.
 * Tails without padding or bounds checks: the last query block starts at Nq − Br and the last key block
 * at Nk − Bc (so this kernel needs Nq ≥ Br, Nk ≥ Bc), overlapping the block before it; keys that block
 * already saw are masked, and rows it already computed are computed again identically. Masked scores are
 * left out of m and get P̃ = 0. Causal: key blocks above the diagonal are never loaded; query blocks run
 * in reverse order so the heaviest start first.
 * Workgroup memory: S 4·Br·Bc + P 2·Br·Bc + 4 bytes (the rescale flag); Br = 32, Bc = 64: 12 KiB.
 */
import { MASKED_WGSL, NAN_WGSL, NEG_INF_BITS, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, keyBlocksWGSL } from '../../src/webgpu/kernels/common.js';
import { FRAGMENT, LEFT, LOG2E_WGSL, MATRIX_ENABLES, RESULT, RIGHT, combine, grid, range } from '../../src/webgpu/kernels/matrix.js';

export interface ForwardMatrixParams {
  D: number;
  /** Keys per block. */
  Bc: number;
  /** Row fragments per workgroup: Br = 16·RF query rows. */
  RF: number;
  /** The adapter's (fixed) subgroup size, the workgroup size. */
  SGS: number;
  causal: boolean;
}


export function forwardMatrixWorkgroupBytes(p: ForwardMatrixParams): number {
  return 6 * FRAGMENT * p.RF * p.Bc + 4;
}

/** Why these params cannot work (undefined when they can). */
export function forwardMatrixProblem(p: ForwardMatrixParams): string | undefined {
  const Br = FRAGMENT * p.RF;
  if (p.D % FRAGMENT !== 0) return `D = ${p.D} is not a multiple of ${FRAGMENT}`;
  if (p.Bc % FRAGMENT !== 0) return `Bc = ${p.Bc} is not a multiple of ${FRAGMENT}`;
  if (![16, 32, 64, 128].includes(p.SGS)) return `subgroup size ${p.SGS} is not a power of two from 16 to 128`;
  if (Br > p.SGS) return `Br = ${Br} rows exceed the ${p.SGS} invocations of a subgroup`;
  return undefined;
}

/** The sizes this kernel handles (its tails overlap the block before, so a whole block must fit). */
export function forwardMatrixFits(p: ForwardMatrixParams, Nq: number, Nk: number): boolean {
  return Nq >= FRAGMENT * p.RF && Nk >= p.Bc;
}


export function forwardMatrixWGSL(p: ForwardMatrixParams, workgroupLimit: number): string {
  const problem = forwardMatrixProblem(p);
  if (problem) throw new Error(`forwardMatrix: ${problem}`);
  checkWorkgroupBytes('forwardMatrix', forwardMatrixWorkgroupBytes(p), workgroupLimit);
  const { D, Bc, RF, SGS, causal } = p;
  const Br = FRAGMENT * RF;
  const DF = D / FRAGMENT; // fragments along D
  const CF = Bc / FRAGMENT; // fragments along the key block
  const SHARES = SGS / Br; // invocations per row
  const shuffles = (x: string, op: (a: string, b: string) => string) => combine(x, op, Br, SHARES);
  const visible = `key >= jc${causal ? ' && visible(row, key)' : ''}`;
  return `${MATRIX_ENABLES}
${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<f16>;
@group(0) @binding(2) var<storage, read> k: array<f16>;
@group(0) @binding(3) var<storage, read> v: array<f16>;
@group(0) @binding(4) var<storage, read_write> o: array<f16>;
@group(0) @binding(5) var<storage, read_write> lse: array<u32>; // f32 bits

const D = ${D}u;
const Br = ${Br}u;
const Bc = ${Bc}u;
const FLAG = ${Br * Bc}u;
const TAU = 8.0;
${LOG2E_WGSL}
${MASKED_WGSL}

// S: [c][r]; also the round trip of O_i's fragments ([d][r]); its last element is the rescale flag.
var<workgroup> S: array<f32, ${Br * Bc + 1}>;
var<workgroup> P: array<f16, ${Br * Bc}>; // [c][r]

${VISIBLE_WGSL}
${NAN_WGSL}

@compute @workgroup_size(${SGS})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(subgroup_invocation_id) lane: u32) {
  let r = lane % Br;       // this invocation's row of Q_i
  let part = lane / Br;    // its share of the row's keys
  let bh = wid.y;
  let b = bh / u.H;
  let h = bh % u.H;
  let qo = b * u.qBatch + h * u.qHead;
  let ko = b * u.kvBatch + (h / (u.H / u.Hkv)) * u.kvHead;
  let Tr = (u.Nq + Br - 1u) / Br;
  let i = ${causal ? 'Tr - 1u - wid.x' : 'wid.x'};
  let r0 = min(i * Br, u.Nq - Br); // the last block overlaps the one before
  let row = r0 + r;
  let scale2 = u.scale * LOG2E;

  // Alg. 1 line 4: Q_i, row fragment f at rows r0 + 16f, into registers.
${grid(RF, DF)
  .map(([f, d]) => `  let q${f}_${d} = subgroupMatrixLoad<${LEFT}, row_major>(&q, qo + (r0 + ${f * FRAGMENT}u) * u.qRow + ${d * FRAGMENT}u, u.qRow);`)
  .join('\n')}
  // Alg. 1 line 5: O_i = 0, m = −∞ (MASKED), l = 0.
${grid(RF, DF)
  .map(([f, d]) => `  var o${f}_${d} = ${RESULT}();`)
  .join('\n')}
  var m = MASKED;
  var l = 0.0;
  var poisoned = false; // a NaN logit makes this row's out and L NaN, and no other row's

  // Causal: key blocks entirely above the diagonal are skipped.
  ${keyBlocksWGSL(causal)}
  for (var j = 0u; j < Tc; j++) {
    let jc = j * Bc;                   // the block's first key not seen before
    let c0 = min(jc, u.Nk - Bc);       // where it is loaded from (the last block overlaps)
    let kv0 = ko + c0 * u.kvRow;
    workgroupBarrier(); // the previous block's P and flag are no longer read
    S[FLAG] = 0.0;
    // Alg. 1 line 8: S = Q_i K_jᵀ. All of K_j's fragments are loaded first, so that their latencies overlap.
${grid(CF, DF)
  .map(([c, d]) => `    let k${c}_${d} = subgroupMatrixLoad<${RIGHT}, col_major>(&k, kv0 + ${c * FRAGMENT}u * u.kvRow + ${d * FRAGMENT}u, u.kvRow);`)
  .join('\n')}
${range(CF)
  .map(
    (c) => `    {
${range(RF)
  .map((f) => `      var s${f} = ${RESULT}();`)
  .join('\n')}
${grid(DF, RF)
  .map(([d, f]) => `      s${f} = subgroupMatrixMultiplyAccumulate(q${f}_${d}, k${c}_${d}, s${f});`)
  .join('\n')}
${range(RF)
  .map((f) => `      subgroupMatrixStore<col_major>(&S, ${c * FRAGMENT * Br + f * FRAGMENT}u, s${f}, Br);`)
  .join('\n')}
    }`,
  )
  .join('\n')}
    // V_j's fragments, loaded now: their latency hides behind the softmax.
${grid(CF, DF)
  .map(([c, d]) => `    let v${c}_${d} = subgroupMatrixLoad<${RIGHT}, row_major>(&v, kv0 + ${c * FRAGMENT}u * u.kvRow + ${d * FRAGMENT}u, u.kvRow);`)
  .join('\n')}
    workgroupBarrier();
    // Alg. 1 line 9: the block's row max; m moves only by more than TAU (see above).
    var mx = MASKED;
    var bad = 0u;
    for (var t = 0u; t < ${Bc / SHARES}u; t++) {
      let c = part * ${Bc / SHARES}u + t;
      let key = c0 + c;
      let x = S[c * Br + r] * scale2;
      if (${visible}) {
        mx = max(mx, x);
        bad = bad | u32(is_nan(x));
      }
    }
    ${shuffles('mx', (a, b) => `max(${a}, ${b})`)}
    ${shuffles('bad', (a, b) => `${a} | ${b}`)}
    poisoned = poisoned || bad != 0u;
    var alpha = 1.0;
    if (mx > m + TAU) {
      if (m != MASKED) {
        alpha = exp2(m - mx);
        S[FLAG] = 1.0;
      }
      l = l * alpha;
      m = mx;
    }
    for (var t = 0u; t < ${Bc / SHARES}u; t++) {
      let c = part * ${Bc / SHARES}u + t;
      let key = c0 + c;
      P[c * Br + r] = f16(select(0.0, exp2(S[c * Br + r] * scale2 - m), ${visible}));
    }
    workgroupBarrier(); // P is written
    // l sums the P̃ that O_i is made of, read back from P: so O_i / l weighs V exactly as P̃ does (a
    // one-hot row gives exactly its V row). Summing the values as computed is not the same: the compiler
    // may keep them unrounded, or compute them twice with and without a fused multiply-add.
    var sum = 0.0;
    for (var t = 0u; t < ${Bc / SHARES}u; t++) {
      sum += f32(P[(part * ${Bc / SHARES}u + t) * Br + r]);
    }
    ${shuffles('sum', (a, b) => `${a} + ${b}`)}
    l += sum;
    if (workgroupUniformLoad(&S[FLAG]) != 0.0) {
      // O_i = diag(alpha) O_i, 16 columns at a time through S ([d][r]).
${range(DF)
  .map(
    (d) => `${range(RF)
      .map((f) => `      subgroupMatrixStore<col_major>(&S, ${f * FRAGMENT}u, o${f}_${d}, Br);`)
      .join('\n')}
      workgroupBarrier();
      for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
        let at = (part * ${FRAGMENT / SHARES}u + t) * Br + r;
        S[at] = S[at] * alpha;
      }
      workgroupBarrier();
${range(RF)
  .map((f) => `      o${f}_${d} = subgroupMatrixLoad<${RESULT}, col_major>(&S, ${f * FRAGMENT}u, Br);`)
  .join('\n')}
      workgroupBarrier();`,
  )
  .join('\n')}
    }
    // Alg. 1 line 10: O_i += P̃ V_j.
${range(CF)
  .map(
    (c) => `    {
${range(RF)
  .map((f) => `      let p${f} = subgroupMatrixLoad<${LEFT}, col_major>(&P, ${c * FRAGMENT * Br + f * FRAGMENT}u, Br);`)
  .join('\n')}
${grid(DF, RF)
  .map(([d, f]) => `      o${f}_${d} = subgroupMatrixMultiplyAccumulate(p${f}, v${c}_${d}, o${f}_${d});`)
  .join('\n')}
    }`,
  )
  .join('\n')}
  }

  // Alg. 1 lines 12-15: O_i = O_i / l, L_i = m + log l (natural log); a row that saw no key: O = 0, L = −∞.
  if (part == 0u) {
    let L = (m + log2(l)) * LN2;
    lse[bh * u.Nq + row] = select(select(bitcast<u32>(L), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
  }
  let orow = qo + row * u.qRow;
${range(DF)
  .map(
    (d) => `  workgroupBarrier();
${range(RF)
  .map((f) => `  subgroupMatrixStore<col_major>(&S, ${f * FRAGMENT}u, o${f}_${d}, Br);`)
  .join('\n')}
  workgroupBarrier();
  for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
    let dd = part * ${FRAGMENT / SHARES}u + t;
    o[orow + ${d * FRAGMENT}u + dd] = f16(select(select(S[dd * Br + r] / l, 0.0, l == 0.0), nan(), poisoned));
  }`,
  )
  .join('\n')}
}
`;
}
