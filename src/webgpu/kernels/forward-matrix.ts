/**
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
 *      subgroup shuffles), reads its scores once into registers, and computes the running max
 *      m = sm·scale·log2e (sm: the raw score it came from) and P̃ = exp2((S − sm)·scale·log2e), written
 *      to the warp's P in f16 (the difference first: S·scale·log2e − m at logits of 1e4 is a fused
 *      multiply-add on the H100, whose unrounded product puts up to half an f32 ulp of 3e4 into the max
 *      key's P̃, and so into L: dv was off by 4 f16 ulps in edge.test.ts); it also sums the unrounded P̃
 *      for L (l32);
 *   3. O_i += P̃ V_j, V_j's fragments read from workgroup memory, and l += P̃·1 (a block of ones): l is the
 *      sum of the f16 values O_i is made of, on the same tensor cores, so a one-hot row, as with logits
 *      of ±1e4, gives exactly its V row (summing the values as computed is not the same: the compiler
 *      may keep them unrounded or compute them twice, with and without a fused multiply-add).
 * The workgroupUniformLoad of the rescale flag is the barrier between steps 2 and 3: 4 barriers per block.
 * The rescale O_i = diag(e^(m_old − m)) O_i (and l) needs per-row scalars, which subgroup matrices cannot
 * take; so m only moves when a row's block max exceeds it by more than TAU (in log2 units; P̃ ≤ 2^TAU,
 * well within f16). The result is exact either way (O_i and l share the same m); for ordinary inputs m
 * settles in the first blocks, so the round trip of O_i and l through workgroup memory that a rescale
 * needs is rare (one flag for the workgroup: its barriers must be reached by every warp).
 * Tails without padding or bounds checks: the last query block starts at Nq − Br and the last key block
 * at Nk − Bc (so this kernel needs Nq ≥ Br, Nk ≥ Bc), overlapping the block before it; keys that block
 * already saw are masked, and rows it already computed are computed again identically. Masked scores are
 * left out of m and get P̃ = 0. Causal: key blocks above the diagonal are never loaded; query blocks run
 * in reverse order so the heaviest start first.
 * Fragment offsets differ per warp, which this Dawn's uniformity analysis rejects unless told otherwise
 * (`chromium.subgroup_matrix_uniformity`): every warp's offsets are uniform within the warp, which is what
 * the hardware needs.
 * Workgroup memory: K_j, V_j 4·Bc·(D + PAD) + S 4·Br·Bc + P 2·Br·Bc + 4 bytes (the rescale flag) + 512
 * (the ones); D = 128, Bc = 32, Br = 128, PAD = 8: 41.5 KiB.
 * f32 (dtype 'f32', run at options.precision 'high'): Q, K and V arrive split into f16 hi and lo
 * halves, scaled by powers of two (kernels/split.ts), and every product is three, lo·hi + hi·lo +
 * hi·hi. The tensor cores' f32
 * accumulation truncates every partial sum to 24 bits relative to its magnitude (measured on an H100:
 * one accumulator for all three products gave S an error of about 1e-6, 20× the FMA kernels'), so the
 * corrections (lo·hi + hi·lo) go into accumulators of their own, which stay small: S's are stored to a
 * second tile (SC) and added to S when the scores are read; O_i's (OC) are added at the end. P̃ is split
 * the same way after scaling by 2^7 (P̃ ≤ 2^TAU, so 2^15 at most: small P̃ keep their bits above f16's
 * subnormals); l is then the invocations' own sum (l32, times 2^7), not a product with ones. The scores'
 * powers of two fold into the softmax scale and V's is undone on the output, exactly. L takes the score
 * of the key m came from recomputed from the f32 inputs as the tiled kernels compute S (see the end),
 * so that the f32 backward's P = exp(S − L) of a one-hot row is exactly 1. Workgroup memory:
 * 8·Bc·(D + PAD) + 12·Br·Bc + 516 bytes (D = 128, Bc = 16, Br = 128: 41.5 KiB).
 * Error (H100, bench/variants/forward-split.ts): within the correctness rule on its grid's inputs (unit
 * normal), where the +1e-6 term carries it: out 9.8e-7 against the standard's 1.8e-7 at D = 128, Nq =
 * 1023, Nk = 1024; at magnitudes of 1e4 (q, v), where only the 2× term counts, 2.1× the standard's
 * (4.2e-3 against 1.95e-3, D = 128, Nk = 300) and 3.2× at D = 64: the truncation of O_i's
 * accumulation over the key blocks, which this kernel does not avoid. (The block of ones is loaded but
 * unused for f32.)
 * The variants (kernels/modifiers.ts; only where the params carry `mods`, so plain and causal WGSL is
 * unchanged): the window's key blocks (windowKeyBlocksWGSL) and, with a block mask, only the key blocks
 * the tile table does not call empty (the next one's loads issued as before; the tail query block, moved
 * back, spans two row tiles of the table, and is empty or full only where both are); the element rule
 * with the other masking, skipped on a block the table (or, for a window alone, band_full) calls full;
 * the score modifier on the scaled score, the scores then being the modified logits (L = sm + log l);
 * dropout on P̃ as O_i takes it (P̃∘Z), so l is the invocations' own sum of P̃, not P̃·1.
 * Measured on an H100 (bench/results/2026-11-22-h100-session5.md): reading S once and summing l on the
 * tensor cores made this kernel 1.18× (D = 128, N = 4096) to 1.35× (causal) the one before; staging K_j,
 * V_j as whole fragments (subgroupMatrixLoad from storage, subgroupMatrixStore) was 2.3× slower.
 */
import { MASKED_WGSL, NAN_WGSL, NEG_INF_BITS, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, keyBlocksWGSL, type StorageType } from './common.js';
import { FRAGMENT, LEFT, LOG2E_WGSL, MATRIX_ENABLES, RESULT, RIGHT, combine, grid, BAND_FULL_WGSL, blockLoopWGSL, hasFullBlocks, kvStaging, matrixKeepWGSL, range, tileWalkWGSL, warpRowsWGSL } from './matrix.js';
import { modFlags, modifiersWGSL, scoreWGSL, windowKeyBlocksWGSL } from './modifiers.js';
import { SPLIT_EXPONENT_WGSL, SPLIT_HIGH_WGSL } from './split.js';

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
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
  /** The inputs' and output's dtype: 'f32' takes them split into f16 halves (see above); 'f16' if absent. */
  dtype?: StorageType;
  /** f32: O_i's corrections (lo·hi + hi·lo) in accumulators of their own, as S's are (see above). */
  OC?: boolean;
}

/** Query rows per workgroup. */
export function forwardMatrixRows(p: Pick<ForwardMatrixParams, 'RF' | 'W'>): number {
  return FRAGMENT * p.RF * p.W;
}

export function forwardMatrixWorkgroupBytes(p: ForwardMatrixParams): number {
  const halves = p.dtype === 'f32' ? 2 : 1; // f16 tiles per operand, and f32 score tiles (S and its corrections)
  return halves * (4 * p.Bc * (p.D + p.PAD) + 2 * forwardMatrixRows(p) * p.Bc + 4 * forwardMatrixRows(p) * p.Bc) + 4 + 2 * FRAGMENT * FRAGMENT;
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
  const split = p.dtype === 'f32';
  const BrW = FRAGMENT * RF; // rows per warp
  const Br = BrW * W;
  const DS = D + PAD; // row stride of the K_j, V_j tiles
  const DF = D / FRAGMENT; // fragments along D
  const CF = Bc / FRAGMENT; // fragments along the key block
  const SHARES = SGS / BrW; // invocations per row
  const PER = Bc / SHARES; // keys of a row each of them takes
  const shuffles = (x: string, op: (a: string, b: string) => string) => combine(x, op, BrW, SHARES);
  // Keys are dealt to a row's invocations in turn (c = t·SHARES + part): neighbouring lanes, neighbouring
  // banks. Key t of this invocation's share is S[sr + t·SHARES·BrW], key kr + t·SHARES.
  const at = (t: number) => `sr + ${t * SHARES * BrW}u`;
  const key = (t: number) => `kr + ${t * SHARES}u`;
  // The variants (kernels/modifiers.ts), only where the params carry `mods`: the element rule (skipped
  // on a tile the table calls full), the score modifier on the scaled score (the scores then are the
  // modified logits, in natural units), dropout on P̃ as O_i takes it.
  const f = modFlags(p.mods);
  const scores = f.softcap || f.alibi || f.bias !== undefined;
  const visible = (t: number) =>
    p.mods
      ? `${key(t)} >= jc && ${hasFullBlocks(p.mods) ? `(full || (${matrixKeepWGSL(p, 'bh', 'row', key(t))}))` : matrixKeepWGSL(p, 'bh', 'row', key(t))}`
      : `kr + ${t * SHARES}u >= jc${causal ? ` && visible(row, kr + ${t * SHARES}u)` : ''}`;
  const score = (t: number) => {
    const raw = `S[${at(t)}]${split ? ` + S[SC + ${at(t)}]` : ''}`;
    return scores ? scoreWGSL(p, 'bh', 'row', key(t), split ? `(${raw}) * scale` : `${raw} * u.scale`) : raw;
  };
  const drop = (t: number) => (f.dropout ? ` * mod_drop(bh, row, ${key(t)})` : '');
  // l = P̃·1 on the tensor cores (f16 without dropout), else the invocations' own sum l32: with dropout
  // O_i is made of P̃∘Z, while l sums P̃.
  const lOnes = !split && !f.dropout;
  const staging = kvStaging({ D, Bc, WG: W * SGS, split });
  // The key blocks: [first, Tc), and with the block mask only those the tile table does not call empty.
  const loop = blockLoopWGSL({ x: 'j', first: f.window ? 'jStart' : '0u', end: 'Tc', fetch: staging.fetch, indent: '  ', ...(f.blocks && { tiles: { a0: 't0', a1: 't1' } }) });
  // acc += a·b, a and b given as [hi, lo] names; f32: three products of the halves, the corrections
  // lo·hi + hi·lo into `corr` (acc itself, or an accumulator of their own), hi·hi into acc; f16: one.
  const products = (a: [string, string], b: [string, string], acc: string, corr: string, pad: string) =>
    (split ? [[a[1], b[0], corr], [a[0], b[1], corr], [a[0], b[0], acc]] : [[a[0], b[0], acc]])
      .map(([x, y, z]) => `${pad}${z} = subgroupMatrixMultiplyAccumulate(${x}, ${y}, ${z});`)
      .join('\n');
  const OC = split && Boolean(p.OC);
  // The fragments of O_i and l, which a rescale and the output take through the warp's S: [d][r]. f32:
  // O_i's corrections (OC) come after O_i's, and l is summed by the invocations (l32).
  const outs = (x: string) => range(DF).map((d) => range(RF).map((f) => `${x}${f}_${d}`));
  const held = split ? [...outs('o'), ...(OC ? outs('oc') : [])] : [...outs('o'), ...(lOnes ? [range(RF).map((f) => `l${f}`)] : [])];
  // The fragments `names` (one per row fragment) stored to the warp's S (and `corrections`, f32, to its
  // corrections' region), `body` run on them there, and loaded back if `back`; every line indented by `pad`.
  const roundTrip = (names: string[], body: string, back: boolean, pad: string, corrections: string[] = []) =>
    [
      'workgroupBarrier();',
      ...names.map((x, f) => `subgroupMatrixStore<col_major>(&S, sw + ${f * FRAGMENT}u, ${x}, BrW);`),
      ...corrections.map((x, f) => `subgroupMatrixStore<col_major>(&S, SC + sw + ${f * FRAGMENT}u, ${x}, BrW);`),
      'workgroupBarrier();',
      ...body.split('\n'),
      ...(back ? ['workgroupBarrier();', ...names.map((x, f) => `${x} = subgroupMatrixLoad<${RESULT}, col_major>(&S, sw + ${f * FRAGMENT}u, BrW);`)] : []),
    ]
      .map((line) => pad + line)
      .join('\n');
  return `${MATRIX_ENABLES}
diagnostic(off, chromium.subgroup_matrix_uniformity);
${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<f16>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read_write> o: array<${split ? 'f32' : 'f16'}>;
@group(0) @binding(5) var<storage, read_write> lse: array<u32>; // f32 bits${
    split
      ? `
// q, k and v hold f32 tensors split into f16 halves (split.ts), hi then lo; their largest magnitudes:
@group(0) @binding(6) var<storage, read> maxima: array<u32>; // |q|, |k|, |v| as f32 bits
@group(0) @binding(7) var<storage, read> q32: array<vec4<f32>>; // the f32 inputs themselves
@group(0) @binding(8) var<storage, read> k32: array<vec4<f32>>;`
      : ''
  }${p.mods ? `\n${modifiersWGSL(p.mods, 'f16', 'forward')}${f.blocks ? `\n${tileWalkWGSL('keys')}` : hasFullBlocks(p.mods) ? `\n${BAND_FULL_WGSL}` : ''}` : ''}

const D = ${D}u;
const DS = ${DS}u;
const Br = ${Br}u;
const BrW = ${BrW}u;
const Bc = ${Bc}u;
const FLAG = ${(split ? 2 : 1) * Br * Bc}u;${split ? `\nconst SC = ${Br * Bc}u; // f32: where the corrections of S (and of O_i, OC) go` : ''}
const TAU = 8.0;${split ? '\nconst PSCALE = 128.0; // P̃ is split after scaling by 2^7 (see above)' : ''}
${LOG2E_WGSL}
${MASKED_WGSL}

// S: warp w's [c][r] at w·BrW·Bc; also the round trip of its O_i and l fragments ([d][r]); the last
// element is the workgroup's rescale flag.
var<workgroup> S: array<f32, ${(split ? 2 : 1) * Br * Bc + 1}>;
// All f16 tiles in one array, declared last: on an H100 a workgroup variable declared after an f16 array
// was seen to alias that array's first words. K_j at KT and V_j at VT ([key][d], stride DS); warp w's P̃
// ([c][r]) at PT + w·BrW·Bc; a 16×16 block of ones at ONES (l = P̃ · 1 on the tensor cores).
${
    split
      ? `// f32: the lo halves of K_j, V_j and P̃ at KLT, VLT and PLT.
var<workgroup> T: array<f16, ${4 * Bc * DS + 2 * Br * Bc + FRAGMENT * FRAGMENT}>;
const KT = 0u;
const KLT = ${Bc * DS}u;
const VT = ${2 * Bc * DS}u;
const VLT = ${3 * Bc * DS}u;
const PT = ${4 * Bc * DS}u;
const PLT = ${4 * Bc * DS + Br * Bc}u;
const ONES = ${4 * Bc * DS + 2 * Br * Bc}u;`
      : `var<workgroup> T: array<f16, ${2 * Bc * DS + Br * Bc + FRAGMENT * FRAGMENT}>;
const KT = 0u;
const VT = ${Bc * DS}u;
const PT = ${2 * Bc * DS}u;
const ONES = ${2 * Bc * DS + Br * Bc}u;`
  }

${VISIBLE_WGSL}
${NAN_WGSL}
${split ? `${SPLIT_EXPONENT_WGSL}\n${SPLIT_HIGH_WGSL}\n` : ''}
${warpRowsWGSL(p, 'S and P')}
${
  split
    ? `  // The powers of two the halves carry: the scores' fold into the softmax scale, V's is undone on the
  // output; the lo halves start after the hi ones.
  let eq = splitExponent(maxima[0]);
  let ek = splitExponent(maxima[1]);
  let ev = splitExponent(maxima[2]);
  let scale = ldexp(u.scale, -(eq + ek));
  let scale2 = ${scores ? 'LOG2E; // the scores are modified logits' : 'scale * LOG2E;'}
  let qLo = u.B * u.qBatch;
  let kLo4 = u.B * u.kvBatch / 4u;
  let vLo4 = kLo4;`
    : `  let scale2 = ${scores ? 'LOG2E; // the scores are modified logits' : 'u.scale * LOG2E;'}`
}
  let sr = sw + part * BrW + r; // this invocation's first element of the warp's S and P
  for (var e = lid; e < ${FRAGMENT * FRAGMENT}u; e += ${W * SGS}u) {
    T[ONES + e] = 1.0h;
  }

  // Alg. 1 line 4: the warp's rows of Q_i, row fragment f at rows w0 + 16f, into registers.
${grid(RF, DF)
  .map(([f, d]) =>
    [['q', ''], ...(split ? [['ql', 'qLo + ']] : [])]
      .map(([x, lo]) => `  let ${x}${f}_${d} = subgroupMatrixLoad<${LEFT}, row_major>(&q, ${lo}qo + (w0 + ${f * FRAGMENT}u) * u.qRow + ${d * FRAGMENT}u, u.qRow);`)
      .join('\n'),
  )
  .join('\n')}
  // Alg. 1 line 5: O_i = 0, l = 0 (as fragments: l = P̃·1 sums the f16 P̃ that O_i is made of, so a
  // one-hot row, as with logits of ±1e4, gives exactly its V row), m = −∞ (MASKED).
${held
  .flat()
  .map((x) => `  var ${x} = ${RESULT}();`)
  .join('\n')}
  var m = MASKED;
  var sm = 0.0;   // the raw score m = sm·scale·log2e came from${split ? '\n  var km = 0u;    // f32: its key, whose score L takes exactly (see the end)' : ''}
  var l32 = 0.0;  // Σ P̃ unrounded (L's sum), over this invocation's share of the row
  var poisoned = false; // a NaN logit makes this row's out and L NaN, and no other row's

  // Causal: key blocks entirely above the diagonal are skipped${f.window ? '; the window: those outside the band' : ''}.
  ${f.window ? windowKeyBlocksWGSL() : keyBlocksWGSL(causal)}
  // Alg. 1 lines 6-7: K_j and V_j go into workgroup memory; block j + 1's are loaded while block j is
  // computed.
${staging.declare}
  workgroupBarrier();
  let ones = subgroupMatrixLoad<${RIGHT}, row_major>(&T, ONES, ${FRAGMENT}u);
${f.blocks ? "  // The tile table's row tiles this block spans (two for the tail block, moved back).\n  let t0 = r0 / Br;\n  let t1 = (r0 + Br - 1u) / Br;\n" : ''}${loop.open}
    let jc = j * Bc;                   // the block's first key not seen before
    let c0 = min(jc, u.Nk - Bc);       // where it is loaded from (the last block overlaps)
    let kr = c0 + part;                // this invocation's first key${
      hasFullBlocks(p.mods) && !f.blocks ? '\n    let full = band_full(r0, r0 + Br - 1u, c0, c0 + Bc - 1u); // every element in the band' : ''
    }
    workgroupBarrier(); // the previous block's K_j, V_j, P and flag are no longer read
    S[FLAG] = 0.0;
${staging.store}
    workgroupBarrier();
${loop.next}
    // Alg. 1 line 8: S = Q_i K_jᵀ, the warp's rows.
${range(CF)
  .map(
    (c) => `    {
${range(RF)
  .map((f) => `      var s${f} = ${RESULT}();${split ? `\n      var c${f} = ${RESULT}();` : ''}`)
  .join('\n')}
${range(DF)
  .map(
    (d) => `      let k${d} = subgroupMatrixLoad<${RIGHT}, col_major>(&T, KT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);${
      split ? `\n      let kl${d} = subgroupMatrixLoad<${RIGHT}, col_major>(&T, KLT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);` : ''
    }
${range(RF)
  .map((f) => products([`q${f}_${d}`, `ql${f}_${d}`], [`k${d}`, `kl${d}`], `s${f}`, `c${f}`, '      '))
  .join('\n')}`,
  )
  .join('\n')}
${range(RF)
  .map(
    (f) =>
      `      subgroupMatrixStore<col_major>(&S, sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, s${f}, BrW);${
        split ? `\n      subgroupMatrixStore<col_major>(&S, SC + sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, c${f}, BrW);` : ''
      }`,
  )
  .join('\n')}
    }`,
  )
  .join('\n')}
    workgroupBarrier();
    // Alg. 1 line 9: the block's row max over this invocation's keys, read once into registers; m moves
    // only by more than TAU (see above). sx: the raw score the block max came from (ties: the larger),
    // for L (see the end).
    var mx = MASKED;
    var sx = 0.0;${split ? '\n    var kx = 0u;' : ''}
    var bad = 0u;
${range(PER)
  .map(
    (t) => `    let sc${t} = ${score(t)};
    let in${t} = ${visible(t)};
    if (in${t}) {
      let x = sc${t} * scale2;
      if (x > mx || (x == mx && sc${t} > sx)) {
        mx = x;
        sx = sc${t};${split ? `\n        kx = kr + ${t * SHARES}u;` : ''}
      }
      bad = bad | u32(is_nan(x));
    }`,
  )
  .join('\n')}
${range(Math.log2(SHARES))
  .map(
    (i) => `    {
      let om = subgroupShuffleXor(mx, ${BrW << i}u);
      let os = subgroupShuffleXor(sx, ${BrW << i}u);
      let take = om > mx || (om == mx && os > sx);
      mx = select(mx, om, take);
      sx = select(sx, os, take);${split ? `\n      kx = select(kx, subgroupShuffleXor(kx, ${BrW << i}u), take);` : ''}
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
      l32 = l32 * alpha;
      m = mx;
      sm = sx;${split ? '\n      km = kx;' : ''}
    }
${range(PER)
  .map(
    (t) => `    {
      let pe = select(0.0, exp2((sc${t} - sm) * scale2), in${t});${
        split
          ? `
      let pp = pe${drop(t)} * PSCALE;
      let ph = f16High(pp);
      T[PT + ${at(t)}] = f16(ph);
      T[PLT + ${at(t)}] = f16(pp - ph);`
          : `
      T[PT + ${at(t)}] = f16(pe${drop(t)});`
      }
      l32 += pe;
    }`,
  )
  .join('\n')}
    // P and the flag are written (the load is a workgroup barrier).
    if (workgroupUniformLoad(&S[FLAG]) != 0.0) {
      // O_i = diag(alpha) O_i and l = alpha·l, 16 columns at a time through the warp's S ([d][r]).
${held
  .map((names) =>
    roundTrip(
      names,
      `for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
  let at = sw + (t * ${SHARES}u + part) * BrW + r;
  S[at] = S[at] * alpha;
}`,
      true,
      '      ',
    ),
  )
  .join('\n')}
    }
    // Alg. 1 line 10: O_i += P̃ V_j, and l += P̃·1.
${range(CF)
  .map(
    (c) => `    {
${range(RF)
  .map(
    (f) => `      let p${f} = subgroupMatrixLoad<${LEFT}, col_major>(&T, PT + sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, BrW);${
      split ? `\n      let pl${f} = subgroupMatrixLoad<${LEFT}, col_major>(&T, PLT + sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, BrW);` : ''
    }${lOnes ? `\n      l${f} = subgroupMatrixMultiplyAccumulate(p${f}, ones, l${f});` : ''}`,
  )
  .join('\n')}
${range(DF)
  .map(
    (d) => `      let v${d} = subgroupMatrixLoad<${RIGHT}, row_major>(&T, VT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);${
      split ? `\n      let vl${d} = subgroupMatrixLoad<${RIGHT}, row_major>(&T, VLT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);` : ''
    }
${range(RF)
  .map((f) => products([`p${f}`, `pl${f}`], [`v${d}`, `vl${d}`], `o${f}_${d}`, `${OC ? 'oc' : 'o'}${f}_${d}`, '      '))
  .join('\n')}`,
  )
  .join('\n')}
    }`,
  )
  .join('\n')}
  }

  // Alg. 1 lines 12-15: O_i = O_i / l, L_i = m + log l in natural units, as sm·scale + log(l32): P̃ of
  // the score sm is exactly 1, so for a one-hot row L = sm·scale exactly; (m + log2 l)·ln 2 would add two
  // roundings at the size of L (5e-4 at 1e4), which the backward's P = exp(S·scale − L) feels. A row that
  // saw no key: O = 0, L = −∞.
  ${shuffles('l32', (a, b) => `${a} + ${b}`)}
${split ? '  let l = l32 * PSCALE; // what O_i is made of: P̃·2^7' : lOnes ? roundTrip(held[DF], 'let l = S[sw + r];', false, '  ') : '  let l = l32;'}
  if (part == 0u) {
${
  split
    ? `    // The f32 kernels' backward recomputes S = Σ dot(scale·q, k) over vec4s in order of D, and P =
    // exp(S − L): at logits of 1e4 the split's score is off by more than P can bear (a one-hot row's P
    // must come out 1). So L takes the score of key km as those kernels compute it, from the f32 inputs.
    var se = 0.0;
    let qr = (qo + row * u.qRow) / 4u;
    let kc = (ko + km * u.kvRow) / 4u;
    for (var d4 = 0u; d4 < ${D / 4}u; d4++) {
      se += dot(q32[qr + d4] * u.scale, k32[kc + d4]);
    }
    let L = ${scores ? 'mod_score(bh, row, km, se)' : 'se'} + log(l32);`
    : `    let L = sm${scores ? '' : ' * u.scale'} + log(l32);`
}
    lse[bh * u.Nq + row] = select(select(bitcast<u32>(L), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
  }
  let orow = qo + row * u.qRow;
${range(DF)
  .map((d) =>
    roundTrip(
      held[d],
      `for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
  let dd = t * ${SHARES}u + part;
  o[orow + ${d * FRAGMENT}u + dd] = ${
    split
      ? `select(select(ldexp((S[sw + dd * BrW + r]${OC ? ' + S[SC + sw + dd * BrW + r]' : ''}) / l, -ev), 0.0, l == 0.0), nan(), poisoned)`
      : 'f16(select(select(S[sw + dd * BrW + r] / l, 0.0, l == 0.0), nan(), poisoned))'
  };
}`,
      false,
      '  ',
      OC ? held[DF + d] : [],
    ),
  )
  .join('\n')}
}
`;
}
