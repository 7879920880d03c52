/**
 * Backward kernels, register-tiled: the f32 path (and f16 storage where subgroup matrices are missing) on
 * GPUs. Plain f32 multiply-adds, no subgroup operations. The FlashAttention-2 split of backward.ts and
 * backward-matrix.ts: the portable preprocess (D = rowsum(dO ∘ O)), then a dK/dV kernel over query blocks
 * and a dQ kernel that recomputes S and dP; no two workgroups write the same element (deterministic, no
 * float atomics). Masks, tails, causal block skipping, grouped-query heads, rows that see no key and NaN
 * as the portable kernels (backward.ts), whose arithmetic each kernel repeats entry by entry:
 *   - S is recomputed as the forwards compute it, s += dot(scale·q, k) over vec4s in order of D (Q_i is
 *     staged with the scale folded in), so that P = exp(S − L) is the forward's P (one key: P = 1);
 *   - dP = dO_i V_jᵀ is summed vec4 by vec4 in order of D, as the preprocess sums D (one key: dP − D = 0);
 *   - the accumulators are two-level: a block's partial sum (in the portable kernels' order), then added
 *     to the accumulator.
 * The WG = RT·CT invocations (RT = Br/TM, CT = Bc/TN) form an RT × CT grid; invocation (rg, cg) owns the
 * TM×TN micro-tile of S, P, dP and dS (in registers) at query rows rg + RT·i and keys cg + CT·j of the
 * block. Workgroup memory holds Q_i (scale folded in), dO_i, K_j, V_j as rows of vec4<f32> (D padded with
 * zeros to D4 = ⌈D/4⌉) with odd strides, the row statistics L_i, D_i, and the Br×Bc tiles (odd strides)
 * through which P and dS reach the invocations that own the accumulators.
 *
 * dK/dV (one workgroup per key block K_j of Bc keys of one key/value head; dispatch (Tc, B·Hkv)):
 *   invocation (rg, cg) owns the dK_j and dV_j rows of its TN keys cg + CT·j, at vec4 columns rg + RT·t
 *   (TDV = ⌈D4/RT⌉ of them), in registers. K_j, V_j are staged once. For each query head of the group,
 *   for each query block i (causal: blocks entirely above the diagonal skipped):
 *     1. Q_i, dO_i, L_i, D_i staged (barrier);
 *     2. S and dP in registers: per vec4 of D, 2·(TM + TN) loads feed 2·TM·TN dot products; P = exp(S − L)
 *        (0 where masked or L = −∞), dS = P ∘ (dP − D) (0 where P = 0); both written to their tiles
 *        (barrier);
 *     3. per query row r: TN loads of P and of dS, TDV of dO_i and of Q_i feed 2·TN·TDV vec4
 *        multiply-adds into the block's partial sums, then dV_j += Pᵀ dO_i, dK_j += dSᵀ (scale·Q_i).
 *   Workgroup memory (bytes): 16·(2·Br·QS + 2·Bc·KS) + 8·Br·PS + 8·Br, QS = odd(max(D4, TDV·RT)), KS =
 *   odd(D4), PS = odd(Bc). Registers: 2·2·TN·TDV vec4s of accumulators and partial sums (D = 128, TN = 2,
 *   RT = 8: 128 floats), 2·TM·TN floats of S and dP.
 * dQ (one workgroup per query block Q_i of Br rows of one head; dispatch (Tr, B·H), causal heaviest
 *   first): invocation (rg, cg) owns the dQ_i rows of its TM rows rg + RT·i at vec4 columns cg + CT·t
 *   (TDV = ⌈D4/CT⌉). Q_i, dO_i, L_i, D_i are staged once; per key block j (causal: blocks entirely above
 *   the diagonal skipped):
 *     1. K_j, V_j staged (barrier);
 *     2. S and dP in registers as above; dS = exp(S − L) ∘ (dP − D) (0 where masked or L = −∞) to its tile
 *        (barrier);
 *     3. per key c: TM loads of dS and TDV of K_j feed TM·TDV vec4 multiply-adds into the block's partial
 *        sum, then dQ_i += dS K_j. dQ_i = scale·dQ_i is written once.
 *   Workgroup memory (bytes): 16·(2·Br·QS + 2·Bc·KS) + 4·Br·PS + 8·Br, QS = odd(D4), KS = odd(max(D4,
 *   TDV·CT)), PS = odd(Bc). Registers: 2·TM·TDV vec4s (D = 128, TM = 2, CT = 8: 64 floats), 2·TM·TN floats.
 * Variants (kernels/modifiers.ts; only where the params carry `mods`, so that plain and causal WGSL stay as
 * they were), as the oracle (src/reference/standard.ts): S is the modified score (mod_score2 also gives
 * the soft-cap's derivative g), P = exp(S − L) where the element rule keeps the entry; with dropout
 * dV sums (P ∘ Z)ᵀ dO and dP is dO V_jᵀ ∘ Z; dS = P ∘ (dP − D) is what the dK/dV kernel writes to dbias
 * (flag 'g'; each (query head, row, key) by the one workgroup that owns the key), and dK, dQ take dS ∘ g.
 * Blocks: with a window the dK/dV kernel runs over the query blocks [iStart, iEnd) that see its keys and
 * the dQ kernel over the key blocks [jStart, Tc) its rows see; with a block mask each skips the tiles its
 * own tile table (the host's, for its Br × Bc: backwardTiles) marks empty, in uniform control flow, and
 * FULL tiles skip the element rule.
 * Strides padded past D4 (QS, KS) leave columns that are never staged: the accumulators that read them are
 * never written out. Registers are named variables unrolled at generation time (never private arrays
 * indexed in loops: lavapipe's LLVM takes minutes on those); the loops over D4 and over the block's rows
 * or keys run to constant bounds with `unroll` (GPU compilers unroll them), else to opaque() bounds
 * (software adapters). With D % 4 == 0 storage is read and written as vec4s.
 */
import { MASKED_WGSL, NAN_TESTS_WGSL, OPAQUE_WGSL, QUERY_HEAD_WGSL, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, enables, firstQueryBlockWGSL, keyBlocksWGSL, type StorageType } from './common.js';
import { rowStatsWGSL } from './backward.js';
import { forwardTiledProblem, loadRow, storeRow4, variants } from './forward-tiled.js';
import { grid, range } from './matrix.js';
import { windowKeyBlocksWGSL, windowQueryBlocksWGSL } from './modifiers.js';

/** The tiled dK/dV or dQ kernel's compile-time configuration. */
export interface BackwardTiledParams {
  D: number;
  /** Query rows per block. */
  Br: number;
  /** Keys per block. */
  Bc: number;
  /** Query rows of S (and, in the dQ kernel, of dQ_i) each invocation owns. */
  TM: number;
  /** Keys of S (and, in the dK/dV kernel, of dK_j and dV_j) each invocation owns. */
  TN: number;
  /** Loop bounds as constants (GPU compilers unroll them); false keeps them opaque (software adapters). */
  unroll: boolean;
  dtype: StorageType;
  causal: boolean;
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
}

export type BackwardTiledTiles = Pick<BackwardTiledParams, 'Br' | 'Bc' | 'TM' | 'TN'>;

const odd = (x: number) => x | 1;

/**
 * Sizes that follow from the params. `kv`: the dK/dV kernel (accumulator columns spread over the RT row
 * groups), else the dQ kernel (over the CT column groups).
 */
export function backwardTiledShape(p: Pick<BackwardTiledParams, 'D' | 'Br' | 'Bc' | 'TM' | 'TN'>, kv: boolean) {
  const RT = p.Br / p.TM;
  const CT = p.Bc / p.TN;
  const D4 = Math.ceil(p.D / 4);
  const TDV = Math.ceil(D4 / (kv ? RT : CT));
  const QS = odd(kv ? Math.max(D4, TDV * RT) : D4);
  const KS = odd(kv ? D4 : Math.max(D4, TDV * CT));
  return { RT, CT, WG: RT * CT, D4, TDV, QS, KS, PS: odd(p.Bc) };
}

export function backwardTiledWorkgroupBytes(p: Pick<BackwardTiledParams, 'D' | 'Br' | 'Bc' | 'TM' | 'TN'>, kv: boolean): number {
  const { QS, KS, PS } = backwardTiledShape(p, kv);
  return 16 * (2 * p.Br * QS + 2 * p.Bc * KS) + 4 * (kv ? 2 : 1) * p.Br * PS + 8 * p.Br;
}

/** Floats of accumulators and partial sums each invocation holds in registers. */
export function backwardTiledAccumulator(p: Pick<BackwardTiledParams, 'D' | 'Br' | 'Bc' | 'TM' | 'TN'>, kv: boolean): number {
  const { TDV } = backwardTiledShape(p, kv);
  return kv ? 16 * p.TN * TDV : 8 * p.TM * TDV;
}

/** Why these params cannot work (undefined when they can): the tiled forward's rule. */
export function backwardTiledProblem(p: BackwardTiledParams): string | undefined {
  return forwardTiledProblem(p);
}

/** What both kernels share: bindings' element type, loops, staging, S and dP in registers. */
function common(p: BackwardTiledParams, kv: boolean) {
  const { D, Br, Bc, TM, TN, unroll } = p;
  const shape = backwardTiledShape(p, kv);
  const mods = variants(p, kv ? 'backward-kv' : 'backward-q');
  const { RT, CT, WG, D4 } = shape;
  const vec = D % 4 === 0; // every row then starts at a multiple of 4 elements (strides are multiples of D)
  const bound = (n: number) => (unroll ? `${n}u` : `opaque(${n}u)`);
  const rowOf = (i: number) => `rg + ${i * RT}u`; // tile row of the invocation's i-th query row
  const keyOf = (j: number) => `cg + ${j * CT}u`; // tile row of its j-th key
  // Stages `rows` rows of D4 vec4s into each of `tiles` (arrays of rows), WG invocations at a time;
  // `value(tile, r, d)` is the vec4 for tile row r, column d. Unrolled: straight-line code with every load
  // before the first store, so that their latencies overlap; else a loop.
  const stage = (tiles: string[], rows: number, value: (tile: string, r: string, d: string) => string) => {
    const total = rows * D4;
    if (!unroll) {
      return `for (var e = lid; e < ${total}u; e += WG) {
${tiles.map((t) => `      ${t}[e / D4][e % D4] = ${value(t, '(e / D4)', '(e % D4)')};`).join('\n')}
    }`;
    }
    const n = range(Math.ceil(total / WG));
    const guard = (e: number, x: string) => ((e + 1) * WG > total ? `if (e${e} < ${total}u) { ${x} }` : x);
    return `{
${n.map((e) => `      let e${e} = lid + ${e * WG}u;\n${tiles.map((t, ti) => `      let x${ti}_${e} = ${value(t, `(e${e} / D4)`, `(e${e} % D4)`)};`).join('\n')}`).join('\n')}
${n.map((e) => `      ${guard(e, tiles.map((t, ti) => `${t}[e${e} / D4][e${e} % D4] = x${ti}_${e};`).join(' '))}`).join('\n')}
    }`;
  };
  // S = (scale·Q_i) K_jᵀ and dP = dO_i V_jᵀ, this invocation's TM×TN entries, in order of D.
  const scores = `${grid(TM, TN)
    .map(([i, j]) => `    var s${i}_${j} = 0.0;\n    var dp${i}_${j} = 0.0;`)
    .join('\n')}
    for (var d = 0u; d < ${bound(D4)}; d++) {
${range(TM)
  .map((i) => `      let q${i} = Qi[${rowOf(i)}][d];\n      let o${i} = dOi[${rowOf(i)}][d];`)
  .join('\n')}
${range(TN)
  .map((j) => `      let k${j} = Kj[${keyOf(j)}][d];\n      let v${j} = Vj[${keyOf(j)}][d];`)
  .join('\n')}
${grid(TM, TN)
  .map(([i, j]) => `      s${i}_${j} += dot(q${i}, k${j});\n      dp${i}_${j} += dot(o${i}, v${j});`)
  .join('\n')}
    }`;
  // Query row r0 + rowOf(i) sees key c0 + keyOf(j) (sees(L): the row sees some key; a NaN L passes).
  const visible = (i: number, j: number) => `c0 + ${keyOf(j)} < u.Nk && sees(L${i})${mods.keep(`r0 + ${rowOf(i)}`, `c0 + ${keyOf(j)}`)}`;
  // The score modifier of entry (i, j): `let sg = vec2(modified score, soft-cap's derivative)`, when any.
  const f = mods.f;
  const scoreMod = f.softcap || f.alibi || f.bias;
  const modScore = (i: number, j: number) => (scoreMod ? `let sg = mod_score2(bh, r0 + ${rowOf(i)}, c0 + ${keyOf(j)}, s${i}_${j});` : '');
  const logit = (i: number, j: number) => (scoreMod ? 'sg.x' : `s${i}_${j}`);
  // dP = dO_i V_jᵀ ∘ Z with dropout.
  const dP = (i: number, j: number) => (f.dropout ? `dp${i}_${j} * mod_drop(bh, r0 + ${rowOf(i)}, c0 + ${keyOf(j)})` : `dp${i}_${j}`);
  const header = (bindings: string[], tiles: string) => `${enables(p.dtype)}${mods.wgsl}
${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
${bindings.join('\n')}

const D = ${D}u;
const D4 = ${D4}u;
const Br = ${Br}u;
const Bc = ${Bc}u;
const CT = ${CT}u;
const WG = ${WG}u;
const QS = ${shape.QS}u;
const KS = ${shape.KS}u;
const PS = ${shape.PS}u;
${MASKED_WGSL}

var<workgroup> Qi: array<array<vec4<f32>, QS>, Br>; // scale·Q_i
var<workgroup> dOi: array<array<vec4<f32>, QS>, Br>;
var<workgroup> Kj: array<array<vec4<f32>, KS>, Bc>;
var<workgroup> Vj: array<array<vec4<f32>, KS>, Bc>;
${tiles}
var<workgroup> Lrow: array<f32, Br>;
var<workgroup> Drow: array<f32, Br>;

${VISIBLE_WGSL}
${NAN_TESTS_WGSL}
${OPAQUE_WGSL}
${loadRow('q', vec)}
${loadRow('k', vec)}
${loadRow('v', vec)}
${loadRow('dout', vec)}`;
  const elem = vec ? `vec4<${p.dtype}>` : p.dtype;
  const store = (name: string, at: string, col: string, x: string) => storeRow4(name, at, col, x, p.dtype, vec);
  const loadRows = (from: 'k' | 'v' | 'q' | 'dout', first: string, n: string, off: string, r: string, d: string) =>
    `load_${from}4(${off} + min(${first} + ${r}, ${n} - 1u) * ${from === 'k' || from === 'v' ? 'u.kvRow' : 'u.qRow'}, ${d}, ${first} + ${r} < ${n})`;
  const stageQ = () =>
    stage(['Qi', 'dOi'], Br, (t, r, d) => (t === 'Qi' ? `${loadRows('q', 'r0', 'u.Nq', 'qo', r, d)} * u.scale` : loadRows('dout', 'r0', 'u.Nq', 'qo', r, d)));
  const stageKV = () => stage(['Kj', 'Vj'], Bc, (t, r, d) => loadRows(t === 'Kj' ? 'k' : 'v', 'c0', 'u.Nk', 'ko', r, d));
  const stats = `${range(TM)
    .map((i) => `    let L${i} = Lrow[${rowOf(i)}];\n    let D${i} = Drow[${rowOf(i)}];`)
    .join('\n')}`;
  // The bindings both kernels read; each adds its outputs after them.
  const inputs = [
    `@group(0) @binding(1) var<storage, read> q: array<${elem}>;`,
    `@group(0) @binding(2) var<storage, read> k: array<${elem}>;`,
    `@group(0) @binding(3) var<storage, read> v: array<${elem}>;`,
    `@group(0) @binding(4) var<storage, read> dout: array<${elem}>;`,
    '@group(0) @binding(5) var<storage, read> lse: array<u32>; // f32 bits',
    '@group(0) @binding(6) var<storage, read> Dvec: array<f32>;',
  ];
  return { ...shape, elem, bound, rowOf, keyOf, scores, visible, header, store, stageQ, stageKV, stats, inputs, mods, modScore, logit, dP };
}

/** Alg. 2 lines 5-18 for one key block: dK_j and dV_j in registers, summed over the group's query heads. */
export function backwardKVTiledWGSL(p: BackwardTiledParams, workgroupLimit: number): string {
  const problem = backwardTiledProblem(p);
  if (problem) throw new Error(`backwardKVTiled: ${problem}`);
  checkWorkgroupBytes('backwardKVTiled', backwardTiledWorkgroupBytes(p, true), workgroupLimit);
  const { Br, TM, TN, causal } = p;
  const c = common(p, true);
  const { RT, TDV, elem, bound, rowOf, keyOf } = c;
  const f = c.mods.f;
  // Entry (i, j): P (∘ Z with dropout, for dV), dS (for dbias, flag 'g') and dS times the soft-cap's
  // derivative (for dK); as before without variants.
  const entry = (i: number, j: number) => {
    if (!p.mods) {
      return `        let p = select(0.0, exp(s${i}_${j} - L${i}), ${c.visible(i, j)});
        P[${rowOf(i)}][${keyOf(j)}] = p;
        dS[${rowOf(i)}][${keyOf(j)}] = select(0.0, p * (dp${i}_${j} - D${i}), nonzero(p));`;
    }
    const [row, key] = [`r0 + ${rowOf(i)}`, `c0 + ${keyOf(j)}`];
    const z = f.dropout ? `mod_drop(bh, ${row}, ${key})` : '';
    return [
      c.modScore(i, j),
      `let p = select(0.0, exp(${c.logit(i, j)} - L${i}), ${c.visible(i, j)});`,
      z && `let z = ${z};`,
      `P[${rowOf(i)}][${keyOf(j)}] = ${z ? 'p * z' : 'p'};`,
      `let ds = select(0.0, p * (${z ? `dp${i}_${j} * z` : `dp${i}_${j}`} - D${i}), nonzero(p));`,
      f.biasGrad ? `if (nonzero(p)) {\n          dbias[bh * u.Nq * u.Nk + (${row}) * u.Nk + ${key}] = ds; // dS, before the soft-cap's derivative\n        }` : '',
      `dS[${rowOf(i)}][${keyOf(j)}] = ${f.softcap ? 'ds * sg.y' : 'ds'};`,
    ]
      .filter((x) => x)
      .map((x) => `        ${x}`)
      .join('\n');
  };
  const J = range(TN);
  const acc = grid(TN, TDV);
  const colOf = (t: number) => `rg + ${t * RT}u`; // vec4 column of dK_j, dV_j for its t-th column
  // A tile with masked entries (across the causal diagonal; with the variants, any but a FULL one) adds
  // its products only where P (or dS) is not 0: a masked entry's 0 times a NaN in its row's Q_i or dO_i
  // must add nothing, so a NaN stays out of dk, dv of the keys its row cannot see. Other tiles run the
  // plain loop.
  const masking = causal || Boolean(p.mods);
  const partialTileWGSL = p.mods
    ? f.blocks
      ? 'let partial = !full;'
      : 'let partial = true;'
    : 'let partial = i32(c0 + Bc) - 1 > i32(r0) + i32(u.Nk) - i32(u.Nq); // a key past the first row\'s reach';
  const accumulate = (guarded: boolean) => `      for (var r = 0u; r < ${bound(Br)}; r++) {
${J.map((j) => `        let p${j} = P[r][${keyOf(j)}];\n        let ds${j} = dS[r][${keyOf(j)}];`).join('\n')}
${range(TDV)
  .map((t) => `        let o${t} = dOi[r][${colOf(t)}];\n        let q${t} = Qi[r][${colOf(t)}];`)
  .join('\n')}
${acc
  .map(([j, t]) =>
    guarded
      ? `        av${j}_${t} += select(vec4<f32>(0.0), p${j} * o${t}, nonzero(p${j}));\n        ak${j}_${t} += select(vec4<f32>(0.0), ds${j} * q${t}, nonzero(ds${j}));`
      : `        av${j}_${t} += p${j} * o${t};\n        ak${j}_${t} += ds${j} * q${t};`,
  )
  .join('\n')}
      }`;
  return `${c.header(
    [
      ...c.inputs,
      `@group(0) @binding(7) var<storage, read_write> dk: array<${elem}>;`,
      `@group(0) @binding(8) var<storage, read_write> dv: array<${elem}>;`,
    ],
    'var<workgroup> P: array<array<f32, PS>, Br>;\nvar<workgroup> dS: array<array<f32, PS>, Br>;',
  )}

@compute @workgroup_size(${c.WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let cg = lid % CT; // column group: keys cg + CT·j
  let rg = lid / CT; // row group: query rows rg + RT·i, and vec4 columns rg + RT·t of dK_j, dV_j
  let bk = wid.y;
  let b = bk / u.Hkv;
  let hkv = bk % u.Hkv;
  let G = u.H / u.Hkv;
  let ko = b * u.kvBatch + hkv * u.kvHead;
  let c0 = wid.x * Bc;

  // Alg. 2 lines 6-7: K_j, V_j (keys past Nk read as 0); dK_j = 0, dV_j = 0.
  ${c.stageKV()}
${acc.map(([j, t]) => `  var dk${j}_${t} = vec4<f32>(0.0);\n  var dv${j}_${t} = vec4<f32>(0.0);`).join('\n')}

  let Tr = (u.Nq + Br - 1u) / Br;
  ${f.window ? '// The band: the query blocks [iStart, iEnd) that see any key of K_j.' : '// Alg. 2 line 8, causal: the first query block that sees key c0.'}
  ${f.window ? windowQueryBlocksWGSL('Br', 'Bc') : firstQueryBlockWGSL(causal, 'Br')}
  for (var g = 0u; g < G; g++) {
    let h = hkv * G + g;
    let qo = b * u.qBatch + h * u.qHead;
    let Lo = (b * u.H + h) * u.Nq;${p.mods ? '\n    let bh = b * u.H + h;' : ''}
    for (var i = iStart; i < ${f.window ? 'iEnd' : 'Tr'}; i++) {
      let r0 = i * Br;${
        f.blocks
          ? `
      let tile = mod_tile(bh, i, wid.x);
      if (tile == 0u) {
        continue; // an empty tile (uniform: every invocation skips it)
      }
      let full = tile == 1u; // every element kept: no element rule`
          : ''
      }
      workgroupBarrier(); // the previous block's Q_i, dO_i, P and dS are no longer read
      // Alg. 2 line 9: Q_i (with the softmax scale folded in), dO_i, L_i, D_i; rows past Nq read as 0.
      ${c.stageQ()}
      ${rowStatsWGSL()}
      workgroupBarrier();
      // Alg. 2 lines 10-11, 13: S = scale·Q_i K_jᵀ and dP = dO_i V_jᵀ.
  ${c.scores.replace(/\n/g, '\n  ')}
      // P = exp(S − L) (0 where masked or L = −∞), dS = P ∘ (dP − D) (Alg. 2 line 14; 0 where P = 0).
  ${c.stats.replace(/\n/g, '\n  ')}
${grid(TM, TN)
  .map(([i, j]) => `      {\n${entry(i, j)}\n      }`)
  .join('\n')}
      workgroupBarrier();
      // Alg. 2 lines 12 and 16: dV_j += Pᵀ dO_i, dK_j += dSᵀ (scale·Q_i), this block's sums apart first.
${acc.map(([j, t]) => `      var av${j}_${t} = vec4<f32>(0.0);\n      var ak${j}_${t} = vec4<f32>(0.0);`).join('\n')}
${masking ? `      ${partialTileWGSL}\n      if (partial) {\n${accumulate(true)}\n      } else {\n${accumulate(false)}\n      }` : accumulate(false)}
${acc.map(([j, t]) => `      dv${j}_${t} += av${j}_${t};\n      dk${j}_${t} += ak${j}_${t};`).join('\n')}
    }
  }

  // Alg. 2 line 18: write dK_j, dV_j once.
${J.map(
  (j) => `  if (c0 + ${keyOf(j)} < u.Nk) {
    let at = ko + (c0 + ${keyOf(j)}) * u.kvRow;
${range(TDV)
  .map(
    (t) => `    if (${colOf(t)} < D4) {
      ${c.store('dk', 'at', colOf(t), `dk${j}_${t}`)}
      ${c.store('dv', 'at', colOf(t), `dv${j}_${t}`)}
    }`,
  )
  .join('\n')}
  }`,
).join('\n')}
}
`;
}

/** Alg. 2 line 15, reordered FlashAttention-2 style: dQ_i in registers over all key blocks, written once. */
export function backwardQTiledWGSL(p: BackwardTiledParams, workgroupLimit: number): string {
  const problem = backwardTiledProblem(p);
  if (problem) throw new Error(`backwardQTiled: ${problem}`);
  checkWorkgroupBytes('backwardQTiled', backwardTiledWorkgroupBytes(p, false), workgroupLimit);
  const { TM, TN, causal } = p;
  const c = common(p, false);
  const { CT, TDV, elem, bound, rowOf, keyOf } = c;
  const v = c.mods;
  // dS of entry (i, j), times the soft-cap's derivative; as before without variants.
  const entry = (i: number, j: number) => {
    const ds = `dS[${rowOf(i)}][${keyOf(j)}] = select(0.0, exp(${c.logit(i, j)} - L${i}) * (${c.dP(i, j)} - D${i})${v.f.softcap ? ' * sg.y' : ''}, ${c.visible(i, j)});`;
    const score = c.modScore(i, j);
    return score ? `    {\n      ${score}\n      ${ds}\n    }` : `    ${ds}`;
  };
  const I = range(TM);
  const acc = grid(TM, TDV);
  const colOf = (t: number) => `cg + ${t * CT}u`; // vec4 column of dQ_i for its t-th column
  return `${c.header(
    [
      ...c.inputs,
      `@group(0) @binding(7) var<storage, read_write> dq: array<${elem}>;`,
    ],
    'var<workgroup> dS: array<array<f32, PS>, Br>;',
  )}

@compute @workgroup_size(${c.WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let cg = lid % CT; // column group: keys cg + CT·j, and vec4 columns cg + CT·t of dQ_i
  let rg = lid / CT; // row group: query rows rg + RT·i
${QUERY_HEAD_WGSL}
  let Lo = bh * u.Nq;
  let Tr = (u.Nq + Br - 1u) / Br;
  let r0 = ${causal ? '(Tr - 1u - wid.x)' : 'wid.x'} * Br;${v.f.blocks ? '\n  let ti = r0 / Br; // the query tile of the tile table' : ''}

  // Q_i (with the softmax scale folded in), dO_i, L_i, D_i; rows past Nq read as 0; dQ_i = 0.
  ${c.stageQ()}
  ${rowStatsWGSL()}
${acc.map(([i, t]) => `  var dq${i}_${t} = vec4<f32>(0.0);`).join('\n')}

  ${v.f.window ? '// The band: key blocks that no row of Q_i sees are skipped.' : '// Causal: key blocks entirely above the diagonal are skipped.'}
  ${v.f.window ? windowKeyBlocksWGSL() : keyBlocksWGSL(causal)}
  ${v.loop}
    let c0 = j * Bc;${v.f.blocks ? '\n    let full = mod_tile(bh, ti, j) == 1u; // every element kept: no element rule' : ''}
    workgroupBarrier(); // the previous block's K_j and dS are no longer read
    // Alg. 2 lines 6-7: K_j, V_j (keys past Nk read as 0).
    ${c.stageKV()}
    workgroupBarrier();
    // Alg. 2 lines 10-11, 13: S = scale·Q_i K_jᵀ and dP = dO_i V_jᵀ.
${c.scores}
    // Alg. 2 line 14: dS = exp(S − L) ∘ (dP − D); 0 where masked or L = −∞.
${c.stats}
${grid(TM, TN)
  .map(([i, j]) => entry(i, j))
  .join('\n')}
    workgroupBarrier();
    // Alg. 2 line 15: dQ_i += dS K_j, this block's sum apart first (the scale is applied once, at the write).
${acc.map(([i, t]) => `    var a${i}_${t} = vec4<f32>(0.0);`).join('\n')}
    for (var c = 0u; c < ${bound(p.Bc)}; c++) {
${I.map((i) => `      let ds${i} = dS[${rowOf(i)}][c];`).join('\n')}
${range(TDV)
  .map((t) => `      let k${t} = Kj[c][${colOf(t)}];`)
  .join('\n')}
${acc.map(([i, t]) => `      a${i}_${t} += ds${i} * k${t};`).join('\n')}
    }
${acc.map(([i, t]) => `    dq${i}_${t} += a${i}_${t};`).join('\n')}
  }

  // dQ_i = scale·dQ_i, written once (rows that see no key: 0).
${I.map(
  (i) => `  if (r0 + ${rowOf(i)} < u.Nq) {
    let at = qo + (r0 + ${rowOf(i)}) * u.qRow;
${range(TDV)
  .map(
    (t) => `    if (${colOf(t)} < D4) {
      let x = dq${i}_${t} * u.scale;
      ${c.store('dq', 'at', colOf(t), 'x')}
    }`,
  )
  .join('\n')}
  }`,
).join('\n')}
}
`;
}
