/**
 * Variant (session 8, tried and not shipped): the subgroup-matrix forward with two groups of warps in
 * ping-pong, f16 storage, f32 accumulation (after FlashAttention-3's ping-pong schedule of warpgroups).
 * Same bindings, dispatch (Tr, B·H), tails, masking and numerics as src/webgpu/kernels/forward-matrix.ts,
 * whose header explains them; what differs is the schedule.
 *
 * Measured on an NVIDIA H200 (bench/results/2026-12-02-h200-session8.md): valid under the 2× rule on
 * the sweep's shapes (through the library, commit 91dce3f), and slower everywhere. N = 4096, B·N = 16384,
 * H·D = 2048, forward TFLOP/s non-causal / causal, beside the shipped kernel's 92.9 / 81.1 (D = 128,
 * Bc 32, 8 warps) and 75.1 / 61.4 (D = 64, Bc 16, 8 warps) in the same run:
 *   D = 128: Bc 16, W 8: 51.2 / 41.7; Bc 32, W 4: 32.7 / 30.6; Bc 16, W 16: 29.9 / 24.7.
 *   D = 64:  Bc 16, W 16: 53.7 / 44.9; Bc 16, W 8: 49.7 / 43.4; Bc 32, W 8: 39.3 / 32.9.
 * Halving the barriers and letting one group's exponentials meet the other's products did not pay for
 * what it costs: half the products per barrier interval for each warp, K and V double-buffered (Bc 16 at
 * D = 128 to fit 48 KiB), and subgroup-matrix operations under control flow that differs between warps.
 * Which of these costs most was not measured.
 *
 * A workgroup is W warps (W even), each owning 16 query rows of Q_i (Br = 16·W), its Q fragments and
 * O_i's f32 fragments in registers. The warps form two groups: group 0 (warps 0 .. W/2 − 1) and group 1,
 * which runs one interval behind. The loop runs over intervals separated by one workgroup barrier each
 * (the workgroupUniformLoad of the interval's rescale flag); a warp's step u = interval − group is
 *   u = 2j:     O_i += P̃_{j−1} V_{j−1} (and l += P̃_{j−1}·1), then S_j = Q_i K_jᵀ stored to its S region
 *               (tensor cores);
 *   u = 2j + 1: the online softmax of S_j: m, P̃_j written to its P region, α where m moved (ALUs).
 * So in every interval one group multiplies while the other exponentiates, and a key block costs two
 * barriers (forward-matrix.ts: four, with every warp in the same phase). K_j is read in intervals 2j and
 * 2j + 1, V_j in 2j + 2 and 2j + 3, so both are double-buffered: in every even interval 2i all
 * invocations store K_{i+1} and V_i (loaded into registers in interval 2i − 2) into the buffers whose
 * previous blocks are no longer read, then issue the loads of K_{i+2} and V_{i+1}.
 * The rescale of O_i (rare, see forward-matrix.ts) goes through the warp's S region, which S_j has left,
 * at the barrier after its softmax interval; three flags rotate over the intervals, so that the one an
 * interval clears was read two barriers before and is set only in the next.
 * Workgroup memory: K, V 2 × 2 × Bc·(D + PAD)·2 + S 4·Br·Bc + P 2·Br·Bc + 12 (flags) + 512 (ones);
 * D = 128, Bc = 16, W = 8, PAD = 8: 29.4 KiB; D = 64, Bc = 32, W = 8: 42.5 KiB.
 */
import { MASKED_WGSL, NAN_WGSL, NEG_INF_BITS, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, keyBlocksWGSL } from '../../src/webgpu/kernels/common.js';
import { FRAGMENT, LEFT, LOG2E_WGSL, MATRIX_ENABLES, RESULT, RIGHT, combine, range, tileStaging, warpRowsWGSL } from '../../src/webgpu/kernels/matrix.js';

export interface ForwardPingPongParams {
  D: number;
  /** Keys per block. */
  Bc: number;
  /** Warps per workgroup (even): Br = 16·W query rows, W/2 per group. */
  W: number;
  /** f16 elements padding each row of the K_j, V_j tiles in workgroup memory (0 or 8). */
  PAD: number;
  /** The adapter's (fixed) subgroup size. */
  SGS: number;
  causal: boolean;
}

export function forwardPingPongRows(p: Pick<ForwardPingPongParams, 'W'>): number {
  return FRAGMENT * p.W;
}

export function forwardPingPongWorkgroupBytes(p: ForwardPingPongParams): number {
  const Br = forwardPingPongRows(p);
  return 2 * (4 * p.Bc * (p.D + p.PAD) + Br * p.Bc + FRAGMENT * FRAGMENT) + 4 * (Br * p.Bc + 3);
}

/** Why these params cannot work (undefined when they can). */
export function forwardPingPongProblem(p: ForwardPingPongParams): string | undefined {
  if (p.D % FRAGMENT !== 0) return `D = ${p.D} is not a multiple of ${FRAGMENT}`;
  if (p.Bc % FRAGMENT !== 0) return `Bc = ${p.Bc} is not a multiple of ${FRAGMENT}`;
  if (![16, 32, 64, 128].includes(p.SGS)) return `subgroup size ${p.SGS} is not a power of two from 16 to 128`;
  if (!Number.isInteger(p.W) || p.W < 2 || p.W % 2 !== 0 || p.W * p.SGS > 1024) return `W = ${p.W} warps is not even, 2 .. ${1024 / p.SGS}`;
  if (p.PAD % 8 !== 0) return `PAD = ${p.PAD} is not a multiple of 8`;
  return undefined;
}

export function forwardPingPongWGSL(p: ForwardPingPongParams, workgroupLimit: number): string {
  const problem = forwardPingPongProblem(p);
  if (problem) throw new Error(`forwardPingPong: ${problem}`);
  checkWorkgroupBytes('forwardPingPong', forwardPingPongWorkgroupBytes(p), workgroupLimit);
  const { D, Bc, W, PAD, SGS, causal } = p;
  const BrW = FRAGMENT;
  const Br = BrW * W;
  const DS = D + PAD;
  const DF = D / FRAGMENT;
  const CF = Bc / FRAGMENT;
  const SHARES = SGS / BrW; // invocations per row
  const PER = Bc / SHARES; // keys of a row each of them takes
  const shuffles = (x: string, op: (a: string, b: string) => string) => combine(x, op, BrW, SHARES);
  const at = (t: number) => `sr + ${t * SHARES * BrW}u`;
  const visible = (t: number) => `kr + ${t * SHARES}u >= jc${causal ? ` && visible(row, kr + ${t * SHARES}u)` : ''}`;
  const staging = (name: 'k' | 'v') =>
    tileStaging({ D, rows: Bc, WG: W * SGS, tiles: [{ from: name, reg: name, at: `${name.toUpperCase()}B` }], base: 'ko', n: 'u.Nk', stride: 'u.kvRow', block: 'Bc' });
  const K = staging('k');
  const V = staging('v');
  const outs = range(DF).map((d) => `o${d}`);
  // The fragments `names` through the warp's S region ([d][r]): stored (by the warps where `who` holds),
  // `body` run by every invocation (it guards itself), loaded back if `back`; barriers for all warps.
  const guarded = (who: string | undefined, body: string[]) => (who ? [`if (${who}) {`, ...body.map((x) => `  ${x}`), '}'] : body);
  const roundTrip = (names: string[], who: string | undefined, body: string, back: boolean, pad: string) =>
    [
      'workgroupBarrier();',
      ...guarded(
        who,
        names.map((x, f) => `subgroupMatrixStore<col_major>(&S, sw + ${f * FRAGMENT * BrW}u, ${x}, BrW);`),
      ),
      'workgroupBarrier();',
      ...body.split('\n'),
      ...(back
        ? [
            'workgroupBarrier();',
            ...guarded(
              who,
              names.map((x, f) => `${x} = subgroupMatrixLoad<${RESULT}, col_major>(&S, sw + ${f * FRAGMENT * BrW}u, BrW);`),
            ),
          ]
        : []),
    ]
      .map((line) => pad + line)
      .join('\n');
  // Fragments per round trip: the warp's S region holds Bc/16 of them.
  const batches = (names: string[]) => range(Math.ceil(names.length / CF)).map((b) => names.slice(b * CF, (b + 1) * CF));
  return `${MATRIX_ENABLES}
diagnostic(off, chromium.subgroup_matrix_uniformity);
diagnostic(off, subgroup_uniformity);
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
const FLAG = ${Br * Bc}u; // the rescale flags: interval t sets and reads FLAG + t % 3
const TAU = 8.0;
${LOG2E_WGSL}
${MASKED_WGSL}

// S: warp w's [c][r] at w·BrW·Bc (also the round trips of O_i and l, [d][r]); then the three flags.
var<workgroup> S: array<f32, ${Br * Bc + 3}>;
// f16 tiles: K_j in buffer j % 2 at KT, V_j at VT ([key][d], stride DS); warp w's P̃ ([c][r]) at
// PT + w·BrW·Bc; a 16×16 block of ones at ONES.
var<workgroup> T: array<f16, ${4 * Bc * DS + Br * Bc + FRAGMENT * FRAGMENT}>;
const KT = 0u;
const VT = ${2 * Bc * DS}u;
const TILE = ${Bc * DS}u;
const PT = ${4 * Bc * DS}u;
const ONES = ${4 * Bc * DS + Br * Bc}u;

${VISIBLE_WGSL}
${NAN_WGSL}
${warpRowsWGSL({ W, SGS, causal }, 'S and P')}
  let group = w / ${W / 2}u; // 1: one interval behind group 0
  let scale2 = u.scale * LOG2E;
  let sr = sw + part * BrW + r; // this invocation's first element of the warp's S and P
  for (var e = lid; e < ${FRAGMENT * FRAGMENT}u; e += ${W * SGS}u) {
    T[ONES + e] = 1.0h;
  }
  // Alg. 1 line 4: the warp's rows of Q_i into registers.
${range(DF)
  .map((d) => `  let q${d} = subgroupMatrixLoad<${LEFT}, row_major>(&q, qo + w0 * u.qRow + ${d * FRAGMENT}u, u.qRow);`)
  .join('\n')}
  // Alg. 1 line 5 (see forward-matrix.ts): O_i = 0, l = 0 as fragments, m = −∞.
${[...outs, 'l']
  .map((x) => `  var ${x} = ${RESULT}();`)
  .join('\n')}
  var m = MASKED;
  var sm = 0.0;   // the raw score m = sm·scale·log2e came from
  var l32 = 0.0;  // Σ P̃ unrounded (L's sum), over this invocation's share of the row
  var alpha = 1.0;
  var poisoned = false;
  var rescaling = false; // this warp's softmax moved m in the interval just ended

  ${keyBlocksWGSL(causal)}
${K.declare}
${V.declare}
  // K_0 into its buffer; K_1 and V_0 into registers, for interval 0.
  if (Tc > 0u) {
    let KB = KT;
${K.fetch('0u')}
${K.store}
  }
  if (Tc > 1u) {
${K.fetch('1u')}
  }
  if (Tc > 0u) {
${V.fetch('0u')}
  }
  if (lid == 0u) {
    S[FLAG] = 0.0;
    S[FLAG + 1u] = 0.0;
    S[FLAG + 2u] = 0.0;
  }
  workgroupBarrier();
  let ones = subgroupMatrixLoad<${RIGHT}, row_major>(&T, ONES, ${FRAGMENT}u);

  for (var t = 0u; t < 2u * Tc + 2u; t++) {
    if (lid == 0u) {
      S[FLAG + (t + 1u) % 3u] = 0.0; // read two barriers ago, set in the next interval
    }
    if ((t & 1u) == 0u) {
      // Alg. 1 lines 6-7: K_{i+1} and V_i into the buffers no longer read; then load K_{i+2}, V_{i+1}.
      let bi = t / 2u;
      if (bi + 1u < Tc) {
        let KB = KT + ((bi + 1u) & 1u) * TILE;
${K.store}
      }
      if (bi < Tc) {
        let VB = VT + (bi & 1u) * TILE;
${V.store}
      }
      if (bi + 2u < Tc) {
${K.fetch('bi + 2u')}
      }
      if (bi + 1u < Tc) {
${V.fetch('bi + 1u')}
      }
    }
    let step = i32(t) - i32(group);
    let j = u32(max(step, 0)) / 2u;
    if (step >= 0 && (step & 1) == 0) {
      if (j >= 1u) {
        // Alg. 1 line 10: O_i += P̃ V_{j−1}, and l += P̃·1.
        let VB = VT + ((j - 1u) & 1u) * TILE;
${range(CF)
  .map(
    (c) => `        {
          let p = subgroupMatrixLoad<${LEFT}, col_major>(&T, PT + sw + ${c * FRAGMENT * BrW}u, BrW);
          l = subgroupMatrixMultiplyAccumulate(p, ones, l);
${range(DF)
  .map(
    (d) => `          let v${d} = subgroupMatrixLoad<${RIGHT}, row_major>(&T, VB + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);
          o${d} = subgroupMatrixMultiplyAccumulate(p, v${d}, o${d});`,
  )
  .join('\n')}
        }`,
  )
  .join('\n')}
      }
      if (j < Tc) {
        // Alg. 1 line 8: S = Q_i K_jᵀ, the warp's rows.
        let KB = KT + (j & 1u) * TILE;
${range(CF)
  .map(
    (c) => `        {
          var s = ${RESULT}();
${range(DF)
  .map(
    (d) => `          let k${d} = subgroupMatrixLoad<${RIGHT}, col_major>(&T, KB + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);
          s = subgroupMatrixMultiplyAccumulate(q${d}, k${d}, s);`,
  )
  .join('\n')}
          subgroupMatrixStore<col_major>(&S, sw + ${c * FRAGMENT * BrW}u, s, BrW);
        }`,
  )
  .join('\n')}
      }
    }
    if (step >= 0 && (step & 1) == 1 && j < Tc) {
      // Alg. 1 line 9: the block's row max, m moved only by more than TAU; P̃ = exp2((S − sm)·scale·log2e).
      let jc = j * Bc;                   // the block's first key not seen before
      let kr = min(jc, u.Nk - Bc) + part; // this invocation's first key (the last block overlaps)
      var mx = MASKED;
      var sx = 0.0;
      var bad = 0u;
${range(PER)
  .map(
    (t) => `      let sc${t} = S[${at(t)}];
      let in${t} = ${visible(t)};
      if (in${t}) {
        let x = sc${t} * scale2;
        if (x > mx || (x == mx && sc${t} > sx)) {
          mx = x;
          sx = sc${t};
        }
        bad = bad | u32(is_nan(x));
      }`,
  )
  .join('\n')}
${range(Math.log2(SHARES))
  .map(
    (i) => `      {
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
      alpha = 1.0;
      if (mx > m + TAU) {
        if (m != MASKED) {
          alpha = exp2((sm - sx) * scale2);
          S[FLAG + t % 3u] = 1.0;
        }
        l32 = l32 * alpha;
        m = mx;
        sm = sx;
      }
      rescaling = subgroupAny(alpha != 1.0);
${range(PER)
  .map(
    (t) => `      {
        let pe = select(0.0, exp2((sc${t} - sm) * scale2), in${t});
        T[PT + ${at(t)}] = f16(pe);
        l32 += pe;
      }`,
  )
  .join('\n')}
    }
    // The interval's barrier; where a softmax moved m: O_i = diag(alpha) O_i, l = alpha·l.
    if (workgroupUniformLoad(&S[FLAG + t % 3u]) != 0.0) {
${batches([...outs, 'l'])
  .map((names) =>
    roundTrip(
      names,
      'rescaling',
      `if (rescaling) {
  for (var e = 0u; e < ${(names.length * FRAGMENT) / SHARES}u; e++) {
    let x = sw + (e * ${SHARES}u + part) * BrW + r;
    S[x] = S[x] * alpha;
  }
}`,
      true,
      '      ',
    ),
  )
  .join('\n')}
    }
    rescaling = false;
  }

  // Alg. 1 lines 12-15 (see forward-matrix.ts): O_i = O_i / l, L_i = sm·scale + log(l32).
  ${shuffles('l32', (a, b) => `${a} + ${b}`)}
${roundTrip(['l'], undefined, 'let lsum = S[sw + r];', false, '  ')}
  if (part == 0u) {
    let L = sm * u.scale + log(l32);
    lse[bh * u.Nq + row] = select(select(bitcast<u32>(L), ${NEG_INF_BITS}, lsum == 0.0), bitcast<u32>(nan()), poisoned);
  }
  let orow = qo + row * u.qRow;
${batches(outs)
  .map((names, b) =>
    roundTrip(
      names,
      undefined,
      `for (var e = 0u; e < ${(names.length * FRAGMENT) / SHARES}u; e++) {
  let dd = e * ${SHARES}u + part;
  o[orow + ${b * CF * FRAGMENT}u + dd] = f16(select(select(S[sw + dd * BrW + r] / lsum, 0.0, lsum == 0.0), nan(), poisoned));
}`,
      false,
      '  ',
    ),
  )
  .join('\n')}
}
`;
}
