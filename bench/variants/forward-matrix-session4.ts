/**
 * The subgroup-matrix forward as session 4 shipped it (main at be471a5), kept only as the baseline that
 * bench/variants/forward-matrix.ts times beside the current kernel: K_j/V_j staged vec4 by every
 * invocation, S read twice, l summed from P read back.
 *
 * Forward kernel on subgroup matrices (tensor cores), FlashAttention-2 order; f16 storage, f32 accumulation.
 * Chosen where the adapter lists an f16→f32 16×16×16 subgroup-matrix config and D is a multiple of 16
 * (see webgpu/index.ts); the portable kernel (forward.ts) runs everywhere else.
 *
 * A workgroup is W subgroups (warps) of SGS invocations and owns query block Q_i of Br = W·16·RF rows of
 * one head; dispatch (Tr, B·H). Warp w owns rows 16·RF·w .. of the block: its Q fragments (RF × D/16)
 * and the unnormalised O_i's f32 fragments stay in registers for the whole loop. Per key block (Bc keys):
 *   0. all invocations copy K_j and V_j into workgroup memory (vec4 loads, coalesced; rows padded by PAD
 *      f16 so that a fragment's 16 rows fall in different banks), shared by the W warps; the loads of
 *      block j + 1 are issued into registers right after, so they arrive while block j is computed;
 *   1. S = Q_i K_jᵀ: each warp multiplies its Q fragments by K_j's fragments read from workgroup memory
 *      and stores its S ([c][r], stride 16·RF) in its own region;
 *   2. each invocation takes its row (or share of a row: SGS/(16·RF) invocations per row, combined with
 *      subgroup shuffles): running max m = sm·scale·log2e (sm: the raw score it came from), P̃ =
 *      exp2((S − sm)·scale·log2e) written to the warp's P in f16 (the difference first: S·scale·log2e − m
 *      at logits of 1e4 is a fused multiply-add on the H100, whose unrounded product puts up to half an
 *      f32 ulp of 3e4 into the max key's P̃, and so into L: dv was off by 4 f16 ulps in edge.test.ts),
 *      and l, the sum of those f16 values read back from P (so a one-hot row, as with logits of ±1e4,
 *      gives exactly its V row; summing the values as computed is not the same, as the compiler may keep
 *      them unrounded or compute them twice, with and without a fused multiply-add);
 *   3. O_i += P̃ V_j, V_j's fragments read from workgroup memory.
 * The rescale O_i = diag(e^(m_old − m)) O_i needs per-row scalars, which subgroup matrices cannot take; so
 * m only moves when a row's block max exceeds it by more than TAU (in log2 units; P̃ ≤ 2^TAU, well within
 * f16). The result is exact either way (O_i and l share the same m); for ordinary inputs m settles in the
 * first blocks, so the round trip of O_i through workgroup memory that a rescale needs is rare (one flag
 * for the workgroup: its barriers must be reached by every warp).
 * Tails without padding or bounds checks: the last query block starts at Nq − Br and the last key block
 * at Nk − Bc (so this kernel needs Nq ≥ Br, Nk ≥ Bc), overlapping the block before it; keys that block
 * already saw are masked, and rows it already computed are computed again identically. Masked scores are
 * left out of m and get P̃ = 0. Causal: key blocks above the diagonal are never loaded; query blocks run
 * in reverse order so the heaviest start first.
 * Fragment offsets differ per warp, which this Dawn's uniformity analysis rejects unless told otherwise
 * (`chromium.subgroup_matrix_uniformity`): every warp's offsets are uniform within the warp, which is what
 * the hardware needs.
 * Workgroup memory: K_j, V_j 4·Bc·(D + PAD) + S 4·Br·Bc + P 2·Br·Bc + 4 bytes (the rescale flag);
 * D = 128, Bc = 32, Br = 64, PAD = 8: 29 KiB.
 */
import { MASKED_WGSL, NAN_WGSL, NEG_INF_BITS, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, keyBlocksWGSL } from '../../src/webgpu/kernels/common.js';
import { FRAGMENT, LEFT, LOG2E_WGSL, MATRIX_ENABLES, RESULT, RIGHT, combine, grid, kvStaging, range, warpRowsWGSL } from '../../src/webgpu/kernels/matrix.js';

export interface ForwardMatrixParams {
  D: number;
  /** Keys per block. */
  Bc: number;
  /** Row fragments per warp: 16·RF query rows each. */
  RF: number;
  /** Warps (subgroups) per workgroup: Br = W·16·RF query rows. */
  W: number;
  /** f16 elements padding each row of the K_j, V_j tiles in workgroup memory (0 or 8). */
  PAD: number;
  /** The adapter's (fixed) subgroup size. */
  SGS: number;
  causal: boolean;
}

/** Query rows per workgroup. */
export function forwardMatrixRows(p: Pick<ForwardMatrixParams, 'RF' | 'W'>): number {
  return FRAGMENT * p.RF * p.W;
}

export function forwardMatrixWorkgroupBytes(p: ForwardMatrixParams): number {
  return 4 * p.Bc * (p.D + p.PAD) + 6 * forwardMatrixRows(p) * p.Bc + 4;
}

/** Why these params cannot work (undefined when they can). */
export function forwardMatrixProblem(p: ForwardMatrixParams): string | undefined {
  const BrW = FRAGMENT * p.RF;
  if (p.D % FRAGMENT !== 0) return `D = ${p.D} is not a multiple of ${FRAGMENT}`;
  if (p.Bc % FRAGMENT !== 0) return `Bc = ${p.Bc} is not a multiple of ${FRAGMENT}`;
  if (![16, 32, 64, 128].includes(p.SGS)) return `subgroup size ${p.SGS} is not a power of two from 16 to 128`;
  if (BrW > p.SGS) return `16·RF = ${BrW} rows exceed the ${p.SGS} invocations of a subgroup`;
  if (!Number.isInteger(p.W) || p.W < 1 || p.W * p.SGS > 1024) return `W = ${p.W} warps is not 1 .. ${1024 / p.SGS}`;
  if (p.PAD % 8 !== 0) return `PAD = ${p.PAD} is not a multiple of 8`;
  return undefined;
}

/** The sizes this kernel handles (its tails overlap the block before, so a whole block must fit). */
export function forwardMatrixFits(p: ForwardMatrixParams, Nq: number, Nk: number): boolean {
  return Nq >= forwardMatrixRows(p) && Nk >= p.Bc;
}

export function forwardMatrixWGSL(p: ForwardMatrixParams, workgroupLimit: number): string {
  const problem = forwardMatrixProblem(p);
  if (problem) throw new Error(`forwardMatrix: ${problem}`);
  checkWorkgroupBytes('forwardMatrix', forwardMatrixWorkgroupBytes(p), workgroupLimit);
  const { D, Bc, RF, W, PAD, SGS, causal } = p;
  const BrW = FRAGMENT * RF; // rows per warp
  const Br = BrW * W;
  const DS = D + PAD; // row stride of the K_j, V_j tiles
  const DF = D / FRAGMENT; // fragments along D
  const CF = Bc / FRAGMENT; // fragments along the key block
  const SHARES = SGS / BrW; // invocations per row
  const PER = Bc / SHARES; // keys of a row each of them takes
  const shuffles = (x: string, op: (a: string, b: string) => string) => combine(x, op, BrW, SHARES);
  const visible = `key >= jc${causal ? ' && visible(row, key)' : ''}`;
  // Keys are dealt to a row's invocations in turn (c = t·SHARES + part): neighbouring lanes, neighbouring banks.
  const key = (t: string) => `${t} * ${SHARES}u + part`;
  const staging = kvStaging({ D, Bc, WG: W * SGS });
  return `${MATRIX_ENABLES}
diagnostic(off, chromium.subgroup_matrix_uniformity);
${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<f16>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read_write> o: array<f16>;
@group(0) @binding(5) var<storage, read_write> lse: array<u32>; // f32 bits

const D = ${D}u;
const DS = ${DS}u;
const Br = ${Br}u;
const BrW = ${BrW}u;
const Bc = ${Bc}u;
const FLAG = ${Br * Bc}u;
const TAU = 8.0;
${LOG2E_WGSL}
${MASKED_WGSL}

// S: warp w's [c][r] at w·BrW·Bc; also the round trip of its O_i fragments ([d][r]); the last element is
// the workgroup's rescale flag.
var<workgroup> S: array<f32, ${Br * Bc + 1}>;
// All f16 tiles in one array, declared last: on an H100 a workgroup variable declared after an f16 array
// was seen to alias that array's first words. K_j at KT and V_j at VT ([key][d], stride DS); warp w's P̃
// ([c][r]) at PT + w·BrW·Bc.
var<workgroup> T: array<f16, ${2 * Bc * DS + Br * Bc}>;
const KT = 0u;
const VT = ${Bc * DS}u;
const PT = ${2 * Bc * DS}u;

${VISIBLE_WGSL}
${NAN_WGSL}

${warpRowsWGSL(p, 'S and P')}
  let scale2 = u.scale * LOG2E;

  // Alg. 1 line 4: the warp's rows of Q_i, row fragment f at rows w0 + 16f, into registers.
${grid(RF, DF)
  .map(([f, d]) => `  let q${f}_${d} = subgroupMatrixLoad<${LEFT}, row_major>(&q, qo + (w0 + ${f * FRAGMENT}u) * u.qRow + ${d * FRAGMENT}u, u.qRow);`)
  .join('\n')}
  // Alg. 1 line 5: O_i = 0, m = −∞ (MASKED), l = 0.
${grid(RF, DF)
  .map(([f, d]) => `  var o${f}_${d} = ${RESULT}();`)
  .join('\n')}
  var m = MASKED;
  var sm = 0.0;   // the raw score m = sm·scale·log2e came from
  var l = 0.0;    // Σ P̃ as rounded to f16 (O_i's weights)
  var l32 = 0.0;  // Σ P̃ unrounded (L's sum)
  var poisoned = false; // a NaN logit makes this row's out and L NaN, and no other row's

  // Causal: key blocks entirely above the diagonal are skipped.
  ${keyBlocksWGSL(causal)}
  // Alg. 1 lines 6-7: K_j and V_j go through registers into workgroup memory; block j + 1's are loaded
  // while block j is computed.
${staging.declare}
  if (Tc > 0u) {
${staging.fetch('0u')}
  }
  for (var j = 0u; j < Tc; j++) {
    let jc = j * Bc;                   // the block's first key not seen before
    let c0 = min(jc, u.Nk - Bc);       // where it is loaded from (the last block overlaps)
    workgroupBarrier(); // the previous block's K_j, V_j, P and flag are no longer read
    S[FLAG] = 0.0;
${staging.store}
    workgroupBarrier();
    if (j + 1u < Tc) {
${staging.fetch('j + 1u')}
    }
    // Alg. 1 line 8: S = Q_i K_jᵀ, the warp's rows.
${range(CF)
  .map(
    (c) => `    {
${range(RF)
  .map((f) => `      var s${f} = ${RESULT}();`)
  .join('\n')}
${range(DF)
  .map(
    (d) => `      let k${d} = subgroupMatrixLoad<${RIGHT}, col_major>(&T, KT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);
${range(RF)
  .map((f) => `      s${f} = subgroupMatrixMultiplyAccumulate(q${f}_${d}, k${d}, s${f});`)
  .join('\n')}`,
  )
  .join('\n')}
${range(RF)
  .map((f) => `      subgroupMatrixStore<col_major>(&S, sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, s${f}, BrW);`)
  .join('\n')}
    }`,
  )
  .join('\n')}
    workgroupBarrier();
    // Alg. 1 line 9: the block's row max; m moves only by more than TAU (see above).
    // sx: the raw score the block max came from (ties: the larger), for L (see the end).
    var mx = MASKED;
    var sx = 0.0;
    var bad = 0u;
    for (var t = 0u; t < ${PER}u; t++) {
      let c = ${key('t')};
      let key = c0 + c;
      let sc = S[sw + c * BrW + r];
      let x = sc * scale2;
      if (${visible}) {
        if (x > mx || (x == mx && sc > sx)) {
          mx = x;
          sx = sc;
        }
        bad = bad | u32(is_nan(x));
      }
    }
${range(Math.log2(SHARES))
  .map(
    (i) => `    {
      let om = subgroupShuffleXor(mx, ${BrW << i}u);
      let os = subgroupShuffleXor(sx, ${BrW << i}u);
      let take = om > mx || (om == mx && os > sx);
      mx = select(mx, om, take);
      sx = select(sx, os, take);
    }`,
  )
  .join('\n')}
    ${shuffles('bad', (a, b) => `${a} | ${b}`)}
    poisoned = poisoned || bad != 0u;
    var alpha = 1.0;
    if (mx > m + TAU) {
      if (m != MASKED) {
        alpha = exp2((sm - sx) * scale2);
        S[FLAG] = 1.0;
      }
      l = l * alpha;
      l32 = l32 * alpha;
      m = mx;
      sm = sx;
    }
    var sum32 = 0.0;
    for (var t = 0u; t < ${PER}u; t++) {
      let c = ${key('t')};
      let key = c0 + c;
      let pe = select(0.0, exp2((S[sw + c * BrW + r] - sm) * scale2), ${visible});
      T[PT + sw + c * BrW + r] = f16(pe);
      sum32 += pe;
    }
    ${shuffles('sum32', (a, b) => `${a} + ${b}`)}
    l32 += sum32;
    workgroupBarrier(); // P and the flag are written
    // l sums the P̃ that O_i is made of, read back from P (see above).
    var sum = 0.0;
    for (var t = 0u; t < ${PER}u; t++) {
      sum += f32(T[PT + sw + (${key('t')}) * BrW + r]);
    }
    ${shuffles('sum', (a, b) => `${a} + ${b}`)}
    l += sum;
    if (workgroupUniformLoad(&S[FLAG]) != 0.0) {
      // O_i = diag(alpha) O_i, 16 columns at a time through the warp's S ([d][r]).
${range(DF)
  .map(
    (d) => `${range(RF)
      .map((f) => `      subgroupMatrixStore<col_major>(&S, sw + ${f * FRAGMENT}u, o${f}_${d}, BrW);`)
      .join('\n')}
      workgroupBarrier();
      for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
        let at = sw + (t * ${SHARES}u + part) * BrW + r;
        S[at] = S[at] * alpha;
      }
      workgroupBarrier();
${range(RF)
  .map((f) => `      o${f}_${d} = subgroupMatrixLoad<${RESULT}, col_major>(&S, sw + ${f * FRAGMENT}u, BrW);`)
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
  .map((f) => `      let p${f} = subgroupMatrixLoad<${LEFT}, col_major>(&T, PT + sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, BrW);`)
  .join('\n')}
${range(DF)
  .map(
    (d) => `      let v${d} = subgroupMatrixLoad<${RIGHT}, row_major>(&T, VT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);
${range(RF)
  .map((f) => `      o${f}_${d} = subgroupMatrixMultiplyAccumulate(p${f}, v${d}, o${f}_${d});`)
  .join('\n')}`,
  )
  .join('\n')}
    }`,
  )
  .join('\n')}
  }

  // Alg. 1 lines 12-15: O_i = O_i / l, L_i = m + log l in natural units, as sm·scale + log(l32): P̃ of
  // the score sm is exactly 1, so for a one-hot row L = sm·scale exactly; (m + log2 l)·ln 2 would add two roundings at the size of L (5e-4 at 1e4), which
  // the backward's P = exp(S·scale − L) feels. A row that saw no key: O = 0, L = −∞.
  if (part == 0u) {
    let L = sm * u.scale + log(l32);
    lse[bh * u.Nq + row] = select(select(bitcast<u32>(L), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
  }
  let orow = qo + row * u.qRow;
${range(DF)
  .map(
    (d) => `  workgroupBarrier();
${range(RF)
  .map((f) => `  subgroupMatrixStore<col_major>(&S, sw + ${f * FRAGMENT}u, o${f}_${d}, BrW);`)
  .join('\n')}
  workgroupBarrier();
  for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
    let dd = t * ${SHARES}u + part;
    o[orow + ${d * FRAGMENT}u + dd] = f16(select(select(S[sw + dd * BrW + r] / l, 0.0, l == 0.0), nan(), poisoned));
  }`,
  )
  .join('\n')}
}
`;
}
