/**
 * Backward kernels on subgroup matrices (tensor cores), FlashAttention-2 order (Alg. 2); f16 storage,
 * f32 accumulation. Chosen with the subgroup-matrix forward (see webgpu/index.ts) where D is a multiple
 * of 16; the preprocess D = rowsum(dO ∘ O) is the portable kernel's (backward.ts). Tails are handled as
 * in the forward, by moving the last block back so that it ends at N (masking what the block before
 * already covered; rows it computed again are computed identically). So Nq and Nk must each hold a whole
 * block.
 *
 * dK/dV: a workgroup is W warps and owns 16·W keys of one key/value head, 16 per warp; dispatch
 *   (⌈Nk/16W⌉, B·Hkv). Each warp's K_jᵀ (right matrices) and V_j (left) fragments, loaded from
 *   storage, and its accumulators dK_j, dV_j (D/16 result fragments each) stay in registers. For each
 *   query head of the group, for each query block Q_i of Bq = 16·QF rows (causal: blocks entirely above
 *   the diagonal of the workgroup's first key skipped), Q_i and dO_i are staged in workgroup memory,
 *   shared by the warps (block i + 1's loads in flight while block i is computed):
 *     S = Q_i K_jᵀ with the operands in the forward's roles, so that it is the forward's S bit for bit
 *     (with logits of ±1e4 an f32 ulp of S is 1e-3, and P = exp(S·scale − L) of a one-hot row must be
 *     exactly 1; Sᵀ = K_j Q_iᵀ differed: dv 4× the standard's error), stored row-major, and
 *     dPᵀ = V_j dO_iᵀ (dO_i read as column-major dO_iᵀ), to the warp's workgroup memory (both [r][c],
 *     stride 16); each invocation takes its share of the 16 keys' columns: Pᵀ =
 *     exp2((Sᵀ·scale − L)·log2e), dSᵀ = Pᵀ ∘ (dPᵀ − D_i), both stored in f16;
 *     dV_j += Pᵀ dO_i, dK_j += dSᵀ Q_i (the tiles read row-major).
 *   dK_j = scale·dK_j and dV_j are written once, through workgroup memory.
 * dQ: as the forward (forward-matrix.ts), a workgroup is W warps and owns Br = W·16·RF query rows Q_i of
 *   one head; dispatch (Tr, B·H). Each warp's Q_i and dO_i fragments and its accumulator dQ_i stay in
 *   registers. For each key block (Bc keys; causal: blocks above the diagonal skipped), K_j and V_j are
 *   staged in workgroup memory, shared by the warps (block j + 1's loads in flight while block j is
 *   computed): S = Q_i K_jᵀ and dP = dO_i V_jᵀ to the warp's workgroup memory ([c][r]); each invocation
 *   takes its row: dS = P ∘ (dP − D_i) in f16; dQ_i += dS K_j. dQ_i = scale·dQ_i is written once.
 * The variants (only where the params carry `mods`): the window's query blocks (dK/dV) and key blocks
 * (dQ), the tile table's non-empty blocks with a block mask (a moved-back tail spans two tiles), the
 * element rule (skipped on full blocks), the modified logit and the soft-cap's derivative g
 * (mod_score2): P = exp(S' − L), dS = P ∘ (dP∘Z − D) with dropout's Z, dV takes P∘Z, dQ and dK take
 * dS·g, and dK/dV writes dS itself to dbias where kept (by its key's workgroup, at its row's block; the
 * moved-back tail workgroup writes its overlapped keys' again, the same values; the zeroed buffer keeps
 * the rest).
 * Rows that see no key (L = −∞) get P = dS = 0. Workgroup memory: dK/dV 12·W·Bq·16 bytes (Sᵀ, dPᵀ in
 * f32, Pᵀ, dSᵀ in f16) and 4·Bq·(D + PAD) (Q_i, dO_i); dQ 10·Br·Bc bytes (S, dP in f32, dS in f16) and 4·Bc·(D + PAD) (K_j, V_j).
 */
import { MASKED_WGSL, NEG_INF_BITS, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, keyBlocksWGSL, firstQueryBlockWGSL } from './common.js';
import { FRAGMENT, LEFT, LOG2E_WGSL, MATRIX_ENABLES, RESULT, RIGHT, BAND_FULL_WGSL, blockLoopWGSL, grid, hasFullBlocks, kvStaging, lines, matrixKeepWGSL, range, tileStaging, tileWalkWGSL, warpRowsWGSL } from './matrix.js';
import { modFlags, modifiersWGSL, windowKeyBlocksWGSL, windowQueryBlocksWGSL } from './modifiers.js';

export interface BackwardKVMatrixParams {
  D: number;
  /** Query row fragments per block: Bq = 16·QF. */
  QF: number;
  /** Warps (subgroups) per workgroup, 16 keys each: 16·W keys per workgroup. */
  W: number;
  /** f16 elements padding each row of the Q_i, dO_i tiles in workgroup memory (0 or 8). */
  PAD: number;
  /** The adapter's (fixed) subgroup size. */
  SGS: number;
  causal: boolean;
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
}

/** Keys per dK/dV workgroup. */
export function backwardKVMatrixKeys(p: Pick<BackwardKVMatrixParams, 'W'>): number {
  return FRAGMENT * p.W;
}

export interface BackwardQMatrixParams {
  D: number;
  /** Row fragments per warp: 16·RF query rows each. */
  RF: number;
  /** Keys per block. */
  Bc: number;
  /** Warps (subgroups) per workgroup: Br = W·16·RF query rows. */
  W: number;
  /** f16 elements padding each row of the K_j, V_j tiles in workgroup memory (0 or 8). */
  PAD: number;
  SGS: number;
  causal: boolean;
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
}

/** Query rows per dQ workgroup. */
export function backwardQMatrixRows(p: Pick<BackwardQMatrixParams, 'RF' | 'W'>): number {
  return FRAGMENT * p.RF * p.W;
}

export function backwardKVMatrixWorkgroupBytes(p: BackwardKVMatrixParams): number {
  return 12 * p.W * FRAGMENT * p.QF * FRAGMENT + 4 * FRAGMENT * p.QF * (p.D + p.PAD);
}

export function backwardQMatrixWorkgroupBytes(p: BackwardQMatrixParams): number {
  return 10 * backwardQMatrixRows(p) * p.Bc + 4 * p.Bc * (p.D + p.PAD);
}

/** Why these params cannot work (undefined when they can). */
export function backwardMatrixProblem(p: { D: number; SGS: number; rows: number; Bc: number }): string | undefined {
  if (p.D % FRAGMENT !== 0) return `D = ${p.D} is not a multiple of ${FRAGMENT}`;
  if (p.Bc % FRAGMENT !== 0) return `Bc = ${p.Bc} is not a multiple of ${FRAGMENT}`;
  if (![16, 32, 64, 128].includes(p.SGS)) return `subgroup size ${p.SGS} is not a power of two from 16 to 128`;
  if (p.rows > p.SGS) return `${p.rows} rows exceed the ${p.SGS} invocations of a subgroup`;
  return undefined;
}

/** The bindings both kernels share (the portable backward's order); q and dout as arrays of `qLike`, k and v of `kv`. */
const bindings = (qLike: string, kv: string) => `@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<${qLike}>;
@group(0) @binding(2) var<storage, read> k: array<${kv}>;
@group(0) @binding(3) var<storage, read> v: array<${kv}>;
@group(0) @binding(4) var<storage, read> dout: array<${qLike}>;
@group(0) @binding(5) var<storage, read> lse: array<u32>; // f32 bits
@group(0) @binding(6) var<storage, read> Dvec: array<f32>;`;

/**
 * L of a query row (MASKED where L = −∞: the row sees no key). P = exp2((S·scale − L)·log2e): the
 * difference is taken in natural units, where S·scale − L is small and one fused multiply-add gives it
 * to within L's own rounding; scaling S and L by log2e first would add two roundings at the size of L
 * (2^-11 of 1e4 with logits of ±1e4), enough to fail the gradient rule there.
 */
const ROW_L = `fn row_l(at: u32) -> f32 {
  let bits = lse[at];
  return select(bitcast<f32>(bits), MASKED, bits == ${NEG_INF_BITS});
}`;

/**
 * WGSL (indented by `pad`) for one element (row, key) of a head bh of a kernel with `mods`: P (0 unless
 * `kept` and the element rule hold: the rule is skipped on a block the tile table calls full), dS = P ∘
 * (dP∘Z − D) for the dropout multipliers Z; `P` receives P∘Z (what dV takes), `dS` dS times the soft-cap's
 * derivative (what dQ and dK take); the dK/dV kernel (`dbias`) also writes dS itself to dbias where kept.
 * `s`, `dp`, `L`, `D`: the raw score QKᵀ, dP, L and D of the element.
 */
function modElementWGSL(
  p: { causal: boolean; mods?: string },
  e: { s: string; dp: string; L: string; D: string; kept: string; pad: string; P?: string; dS: string; dbias: boolean },
): string {
  const f = modFlags(p.mods);
  const scores = f.softcap || f.alibi || f.bias !== undefined;
  const keep = matrixKeepWGSL(p, 'bh', 'row', 'key');
  const z = f.dropout ? ' * z' : '';
  return [
    `let kept = ${e.kept} && ${hasFullBlocks(p.mods) ? `(full || (${keep}))` : keep};`,
    ...(scores ? [`let sg = mod_score2(bh, row, key, ${e.s} * u.scale); // the modified logit and the soft-cap's derivative`] : []),
    `let pe = select(0.0, exp2((${scores ? 'sg.x' : `${e.s} * u.scale`} - ${e.L}) * LOG2E), kept);`,
    ...(f.dropout ? ['let z = mod_drop(bh, row, key);'] : []),
    ...(e.P ? [`${e.P} = f16(pe${z});`] : []),
    `let ds = pe * (${e.dp}${z} - ${e.D});`,
    ...(e.dbias && f.biasGrad ? ['if (kept) {', '  dbias[(bh * u.Nq + row) * u.Nk + key] = ds;', '}'] : []),
    `${e.dS} = f16(ds${scores ? ' * sg.y' : ''});`,
  ]
    .map((line) => e.pad + line)
    .join('\n');
}

/** Alg. 2 lines 5-18 for 16·W keys: dK_j and dV_j, summed over the group's query heads. */
export function backwardKVMatrixWGSL(p: BackwardKVMatrixParams, workgroupLimit: number): string {
  const problem = backwardMatrixProblem({ D: p.D, SGS: p.SGS, rows: FRAGMENT, Bc: FRAGMENT });
  if (problem) throw new Error(`backwardKVMatrix: ${problem}`);
  checkWorkgroupBytes('backwardKVMatrix', backwardKVMatrixWorkgroupBytes(p), workgroupLimit);
  const { D, QF, W, PAD, SGS, causal } = p;
  const DF = D / FRAGMENT;
  const Bq = FRAGMENT * QF;
  const DS = D + PAD;
  const SHARES = SGS / FRAGMENT; // invocations per key column
  const RS = Bq / SHARES; // query rows each invocation takes
  const WG = W * SGS;
  const staging = tileStaging({
    D,
    rows: Bq,
    WG,
    tiles: [
      { from: 'q', reg: 'q', at: 'QT' },
      { from: 'dout', reg: 'dout', at: 'GT' },
    ],
    base: 'qo',
    n: 'u.Nq',
    stride: 'u.qRow',
    block: 'Bq',
  });
  const fragment = 16 * 16;
  // The variants (kernels/modifiers.ts), where the params carry \`mods\`: the band's query blocks, the tile
  // table's (the workgroup's keys span key tiles t0 and t1 where it is the tail, moved back), the
  // element rule, the score modifier, dropout, and dS written for dbias.
  const f = modFlags(p.mods);
  const end = f.window ? 'iEnd' : 'Tr';
  const loop = blockLoopWGSL({ x: 'i', first: 'iStart', end, fetch: staging.fetch, indent: '    ', ...(f.blocks && { tiles: { a0: 't0', a1: 't1' } }) });
  return `${MATRIX_ENABLES}
diagnostic(off, chromium.subgroup_matrix_uniformity);
${SIZES_WGSL}
${bindings('vec4<f16>', 'f16')}
@group(0) @binding(7) var<storage, read_write> dk: array<f16>;
@group(0) @binding(8) var<storage, read_write> dv: array<f16>;${p.mods ? `\n${modifiersWGSL(p.mods, 'f16', 'backward-kv')}${f.blocks ? `\n${tileWalkWGSL('rows')}` : hasFullBlocks(p.mods) ? `\n${BAND_FULL_WGSL}` : ''}` : ''}

const D = ${D}u;
const DS = ${DS}u;
const Bq = ${Bq}u;
const KB = ${FRAGMENT * W}u;
const DPT = ${W * Bq * FRAGMENT}u;
${LOG2E_WGSL}
${MASKED_WGSL}

// Warp w's Sᵀ ([r][c]) at w·Bq·16 and dPᵀ at DPT + w·Bq·16; at the end its dK_j's and dV_j's round trips
// ([d][c]), one fragment in each.
var<workgroup> F: array<f32, ${2 * W * Bq * FRAGMENT}>;
// All f16 tiles in one array, declared last (see forward-matrix.ts): Q_i at QT and dO_i at GT ([row][d],
// stride DS), warp w's Pᵀ at PT + w·Bq·16 and dSᵀ at ST + w·Bq·16 ([r][c]).
var<workgroup> T: array<f16, ${2 * Bq * DS + 2 * W * Bq * FRAGMENT}>;
const QT = 0u;
const GT = ${Bq * DS}u;
const PT = ${2 * Bq * DS}u;
const ST = ${2 * Bq * DS + W * Bq * FRAGMENT}u;

${VISIBLE_WGSL}
${ROW_L}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
  let w = lid / ${SGS}u;   // this invocation's warp: keys 16w .. of the workgroup's
  let c = lane % 16u;      // its key of the warp's 16
  let part = lane / 16u;   // its share of the block's query rows
  let sw = w * Bq * 16u;   // the warp's Sᵀ, dPᵀ, Pᵀ and dSᵀ
  let bk = wid.y;
  let b = bk / u.Hkv;
  let hkv = bk % u.Hkv;
  let G = u.H / u.Hkv;
  let ko = b * u.kvBatch + hkv * u.kvHead;
  let c0 = min(wid.x * KB, u.Nk - KB); // the workgroup's first key (the last block overlaps the one before)
  let cw = c0 + w * 16u;                // the warp's first key
  let key = cw + c;
  let kv0 = ko + cw * u.kvRow;

  // Alg. 2 lines 6-7: the warp's K_jᵀ (right) and V_j (left) fragments; dK_j = dV_j = 0.
${lines(DF, (d) => `  let k${d} = subgroupMatrixLoad<${RIGHT}, col_major>(&k, kv0 + ${d * FRAGMENT}u, u.kvRow);
  let v${d} = subgroupMatrixLoad<${LEFT}, row_major>(&v, kv0 + ${d * FRAGMENT}u, u.kvRow);
  var dk${d} = ${RESULT}();
  var dv${d} = ${RESULT}();`)}

  let Tr = (u.Nq + Bq - 1u) / Bq;
  // Alg. 2 line 8, causal: the first query block that sees the workgroup's first key${f.window ? '; the window: the blocks that see any of its keys' : ''}.
  ${f.window ? windowQueryBlocksWGSL('Bq', 'KB') : firstQueryBlockWGSL(causal, 'Bq')}${f.blocks ? "\n  // The tile table's key tiles the workgroup's keys span (two for the tail, moved back).\n  let t0 = c0 / KB;\n  let t1 = (c0 + KB - 1u) / KB;" : ''}
  // Q_i and dO_i through registers into workgroup memory; block i + 1's are loaded while block i is computed.
${staging.declare}
  for (var gq = 0u; gq < G; gq++) {
    let h = hkv * G + gq;
    let qo = b * u.qBatch + h * u.qHead;
    let Lo = (b * u.H + h) * u.Nq;${p.mods ? '\n    let bh = b * u.H + h; // the query head, as the modifiers index it' : ''}
${loop.open}
      let iq = i * Bq;                  // the block's first row not seen before
      let r0 = min(iq, u.Nq - Bq);      // where it is loaded from (the last block overlaps)${
        hasFullBlocks(p.mods) && !f.blocks ? '\n      let full = band_full(r0, r0 + Bq - 1u, c0, c0 + KB - 1u); // every element in the band' : ''
      }
      // L and D of this invocation's rows (t·SHARES + part) of the block, loaded before the barriers so
      // that they arrive while the tiles are stored and Sᵀ, dPᵀ computed.
${lines(RS, (t) => `      let Lt${t} = row_l(Lo + r0 + ${t * SHARES}u + part);\n      let Dt${t} = Dvec[Lo + r0 + ${t * SHARES}u + part];`)}
      workgroupBarrier(); // the previous block's tiles, Pᵀ and dSᵀ are no longer read
${staging.store}
      workgroupBarrier();
${loop.next}
      // Alg. 2 lines 10 and 13: S = Q_i K_jᵀ (as the forward computes it), dPᵀ = V_j dO_iᵀ.
${lines(
  QF,
  (f) => `      {
        var s = ${RESULT}();
        var t = ${RESULT}();
${lines(DF, (d) => `        s = subgroupMatrixMultiplyAccumulate(subgroupMatrixLoad<${LEFT}, row_major>(&T, QT + ${f * FRAGMENT * DS + d * FRAGMENT}u, DS), k${d}, s);
        t = subgroupMatrixMultiplyAccumulate(v${d}, subgroupMatrixLoad<${RIGHT}, col_major>(&T, GT + ${f * FRAGMENT * DS + d * FRAGMENT}u, DS), t);`)}
        subgroupMatrixStore<row_major>(&F, sw + ${f * fragment}u, s, 16u);
        subgroupMatrixStore<col_major>(&F, DPT + sw + ${f * fragment}u, t, 16u);
      }`,
)}
      workgroupBarrier();
      // Alg. 2 lines 11 and 14: Pᵀ = exp(Sᵀ − L), dSᵀ = Pᵀ ∘ (dPᵀ − D); 0 where masked or seen before.
${lines(
  RS,
  (t) => `      {
        let r = ${t * SHARES}u + part;
        let row = r0 + r;
        let at = sw + r * 16u + c;
${
  p.mods
    ? modElementWGSL(p, { s: 'F[at]', dp: 'F[DPT + at]', L: `Lt${t}`, D: `Dt${t}`, kept: `row >= iq && Lt${t} != MASKED`, pad: '        ', P: 'T[PT + at]', dS: 'T[ST + at]', dbias: true })
    : `        let pe = select(0.0, exp2((F[at] * u.scale - Lt${t}) * LOG2E), row >= iq && Lt${t} != MASKED${causal ? ' && visible(row, key)' : ''});
        T[PT + at] = f16(pe);
        T[ST + at] = f16(pe * (F[DPT + at] - Dt${t}));`
}
      }`,
)}
      workgroupBarrier();
      // Alg. 2 lines 12 and 16: dV_j += Pᵀ dO_i, dK_j += dSᵀ Q_i.
${lines(
  QF,
  (f) => `      {
        let pf = subgroupMatrixLoad<${LEFT}, col_major>(&T, PT + sw + ${f * fragment}u, 16u);
        let sf = subgroupMatrixLoad<${LEFT}, col_major>(&T, ST + sw + ${f * fragment}u, 16u);
${lines(DF, (d) => `        dv${d} = subgroupMatrixMultiplyAccumulate(pf, subgroupMatrixLoad<${RIGHT}, row_major>(&T, GT + ${f * FRAGMENT * DS + d * FRAGMENT}u, DS), dv${d});
        dk${d} = subgroupMatrixMultiplyAccumulate(sf, subgroupMatrixLoad<${RIGHT}, row_major>(&T, QT + ${f * FRAGMENT * DS + d * FRAGMENT}u, DS), dk${d});`)}
      }`,
)}
    }
  }

  // Alg. 2 line 18: dK_j = scale·dK_j and dV_j, written once through the warp's Sᵀ and dPᵀ ([d][c]).
  let at = ko + key * u.kvRow;
${lines(
  DF,
  (d) => `  workgroupBarrier();
  subgroupMatrixStore<col_major>(&F, sw, dk${d}, 16u);
  subgroupMatrixStore<col_major>(&F, DPT + sw, dv${d}, 16u);
  workgroupBarrier();
  for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
    let dd = t * ${SHARES}u + part;
    dk[at + ${d * FRAGMENT}u + dd] = f16(F[sw + dd * 16u + c] * u.scale);
    dv[at + ${d * FRAGMENT}u + dd] = f16(F[DPT + sw + dd * 16u + c]);
  }`,
)}
}
`;
}

/** Alg. 2 line 15, reordered FlashAttention-2 style: dQ_i over all key blocks, written once. */
export function backwardQMatrixWGSL(p: BackwardQMatrixParams, workgroupLimit: number): string {
  const BrW = FRAGMENT * p.RF; // rows per warp
  const problem = backwardMatrixProblem({ D: p.D, SGS: p.SGS, rows: BrW, Bc: p.Bc });
  if (problem) throw new Error(`backwardQMatrix: ${problem}`);
  checkWorkgroupBytes('backwardQMatrix', backwardQMatrixWorkgroupBytes(p), workgroupLimit);
  const { D, RF, Bc, W, PAD, SGS, causal } = p;
  const Br = backwardQMatrixRows(p);
  const DS = D + PAD;
  const DF = D / FRAGMENT;
  const CF = Bc / FRAGMENT;
  const SHARES = SGS / BrW;
  const WG = W * SGS;
  const staging = kvStaging({ D, Bc, WG });
  // The variants, as in the forward (forward-matrix.ts): the band's key blocks, the tile table's (the
  // block's rows span row tiles t0 and t1 where it is the tail, moved back), the element rule, the score
  // modifier, dropout.
  const f = modFlags(p.mods);
  const loop = blockLoopWGSL({ x: 'j', first: f.window ? 'jStart' : '0u', end: 'Tc', fetch: staging.fetch, indent: '  ', ...(f.blocks && { tiles: { a0: 't0', a1: 't1' } }) });
  return `${MATRIX_ENABLES}
diagnostic(off, chromium.subgroup_matrix_uniformity);
${SIZES_WGSL}
${bindings('f16', 'vec4<f16>')}
@group(0) @binding(7) var<storage, read_write> dq: array<f16>;${p.mods ? `\n${modifiersWGSL(p.mods, 'f16', 'backward-q')}${f.blocks ? `\n${tileWalkWGSL('keys')}` : hasFullBlocks(p.mods) ? `\n${BAND_FULL_WGSL}` : ''}` : ''}

const D = ${D}u;
const DS = ${DS}u;
const Br = ${Br}u;
const BrW = ${BrW}u;
const Bc = ${Bc}u;
const DP = ${Br * Bc}u;
${LOG2E_WGSL}
${MASKED_WGSL}

// Warp w's S ([c][r]) at w·BrW·Bc and dP at DP + w·BrW·Bc; at the end its dQ_i's round trip ([d][r]).
var<workgroup> F: array<f32, ${2 * Br * Bc}>;
// All f16 tiles in one array, declared last (see forward-matrix.ts): K_j at KT, V_j at VT ([key][d],
// stride DS), warp w's dS ([c][r]) at ST + w·BrW·Bc.
var<workgroup> T: array<f16, ${2 * Bc * DS + Br * Bc}>;
const KT = 0u;
const VT = ${Bc * DS}u;
const ST = ${2 * Bc * DS}u;

${VISIBLE_WGSL}
${ROW_L}

${warpRowsWGSL(p, 'S, dP and dS')}
  let L = row_l((b * u.H + h) * u.Nq + row);
  let Dr = Dvec[(b * u.H + h) * u.Nq + row];

  // The warp's rows of Q_i, dO_i into registers; dQ_i = 0.
${grid(RF, DF)
  .map(
    ([f, d]) => `  let q${f}_${d} = subgroupMatrixLoad<${LEFT}, row_major>(&q, qo + (w0 + ${f * FRAGMENT}u) * u.qRow + ${d * FRAGMENT}u, u.qRow);
  let g${f}_${d} = subgroupMatrixLoad<${LEFT}, row_major>(&dout, qo + (w0 + ${f * FRAGMENT}u) * u.qRow + ${d * FRAGMENT}u, u.qRow);
  var a${f}_${d} = ${RESULT}();`,
  )
  .join('\n')}

  // Causal: key blocks entirely above the diagonal are skipped${f.window ? '; the window: those outside the band' : ''}.
  ${f.window ? windowKeyBlocksWGSL() : keyBlocksWGSL(causal)}
  // K_j and V_j through registers into workgroup memory; block j + 1's are loaded while block j is computed.
${staging.declare}
${f.blocks ? "  // The tile table's row tiles this block spans (two for the tail block, moved back).\n  let t0 = r0 / Br;\n  let t1 = (r0 + Br - 1u) / Br;\n" : ''}${loop.open}
    let jc = j * Bc;                   // the block's first key not seen before
    let c0 = min(jc, u.Nk - Bc);       // where it is loaded from (the last block overlaps)${
      hasFullBlocks(p.mods) && !f.blocks ? '\n    let full = band_full(r0, r0 + Br - 1u, c0, c0 + Bc - 1u); // every element in the band' : ''
    }
    workgroupBarrier(); // the previous block's K_j, V_j and dS are no longer read
${staging.store}
    workgroupBarrier();
${loop.next}
    // Alg. 2 lines 10 and 13: S = Q_i K_jᵀ, dP = dO_i V_jᵀ, the warp's rows.
${range(CF)
  .map(
    (c) => `    {
${lines(RF, (f) => `      var s${f} = ${RESULT}();\n      var t${f} = ${RESULT}();`)}
${lines(
  DF,
  (d) => `      {
        let kf = subgroupMatrixLoad<${RIGHT}, col_major>(&T, KT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);
        let vf = subgroupMatrixLoad<${RIGHT}, col_major>(&T, VT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);
${lines(RF, (f) => `        s${f} = subgroupMatrixMultiplyAccumulate(q${f}_${d}, kf, s${f});\n        t${f} = subgroupMatrixMultiplyAccumulate(g${f}_${d}, vf, t${f});`)}
      }`,
)}
${lines(RF, (f) => `      subgroupMatrixStore<col_major>(&F, sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, s${f}, BrW);\n      subgroupMatrixStore<col_major>(&F, DP + sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, t${f}, BrW);`)}
    }`,
  )
  .join('\n')}
    workgroupBarrier();
    // Alg. 2 lines 11 and 14: P = exp(S − L), dS = P ∘ (dP − D); 0 where masked or seen before.
    for (var t = 0u; t < ${Bc / SHARES}u; t++) {
      let c = t * ${SHARES}u + part;
      let key = c0 + c;
      let at = sw + c * BrW + r;
${
  p.mods
    ? modElementWGSL(p, { s: 'F[at]', dp: 'F[DP + at]', L: 'L', D: 'Dr', kept: 'key >= jc && L != MASKED', pad: '      ', dS: 'T[ST + at]', dbias: false })
    : `      let pe = select(0.0, exp2((F[at] * u.scale - L) * LOG2E), key >= jc && L != MASKED${causal ? ' && visible(row, key)' : ''});
      T[ST + at] = f16(pe * (F[DP + at] - Dr));`
}
    }
    workgroupBarrier();
    // Alg. 2 line 15: dQ_i += dS K_j.
${range(CF)
  .map(
    (c) => `    {
${lines(RF, (f) => `      let s${f} = subgroupMatrixLoad<${LEFT}, col_major>(&T, ST + sw + ${c * FRAGMENT * BrW + f * FRAGMENT}u, BrW);`)}
${lines(
  DF,
  (d) => `      {
        let kf = subgroupMatrixLoad<${RIGHT}, row_major>(&T, KT + ${c * FRAGMENT * DS + d * FRAGMENT}u, DS);
${lines(RF, (f) => `        a${f}_${d} = subgroupMatrixMultiplyAccumulate(s${f}, kf, a${f}_${d});`)}
      }`,
)}
    }`,
  )
  .join('\n')}
  }

  // dQ_i = scale·dQ_i, written once through the warp's F ([d][r]).
  let at = qo + row * u.qRow;
${lines(
  DF,
  (d) => `  workgroupBarrier();
${lines(RF, (f) => `  subgroupMatrixStore<col_major>(&F, sw + ${f * FRAGMENT}u, a${f}_${d}, BrW);`)}
  workgroupBarrier();
  for (var t = 0u; t < ${FRAGMENT / SHARES}u; t++) {
    let dd = t * ${SHARES}u + part;
    dq[at + ${d * FRAGMENT}u + dd] = f16(F[sw + dd * BrW + r] * u.scale);
  }`,
)}
}
`;
}
