/**
 * Forward kernel, register-tiled, FlashAttention-2 order: the f32 path (and f16 storage where subgroup
 * matrices are missing). Plain f32 multiply-adds, no subgroup operations: it runs on every adapter.
 *
 * One workgroup owns query block Q_i (Br rows) of one head (b, h); dispatch (Tr, B·H), causal blocks in
 * reverse order so that the heaviest start first. Its WG = RT·CT invocations form an RT × CT grid
 * (RT = Br/TM row groups, CT = Bc/TN column groups); invocation (rg, cg) owns, in registers:
 *   - the TM×TN micro-tile of S = Q_i K_jᵀ at rows rg + RT·i and keys G·(cg + CT·jj) + w (w < G): runs
 *     of G consecutive keys (G = 4, or 2 or 1: the largest that divides TN), so that P̃ is written as
 *     whole vec4s (no two invocations write parts of one vector);
 *   - the TM × TDV·4 micro-tile of the unnormalised O_i at the same rows and vec4 columns cg + CT·t
 *     (TDV = ⌈D4/CT⌉), with its rows' m and its share of l.
 * Workgroup memory holds Q_i (scale folded in, for the whole loop), K_j and V_j (one tile, or two with
 * `split`), P̃ (Br×Bc) and one float per (row, column group) for the row max and, at the end, l. Rows are
 * vec4<f32> (D padded with zeros to D4 = ⌈D/4⌉) with odd strides, and key c = G·g + w of a block sits in
 * tile row w·Bc/G + g: the invocations of a warp then read consecutive rows, without bank conflicts.
 * Per key block:
 *   1. S = Q_i K_jᵀ: per vec4 of D, TM + TN vec4 loads feed TM·TN dot products (4·TM·TN multiply-adds),
 *      summed as the backward (backward.ts) recomputes S, s += dot(scale·q, k) in order of D, so that
 *      P = exp(S − L) there is exactly what it was here (one key: P = 1, dV = dO exactly);
 *   2. the row max over the CT invocations that share a row, through workgroup memory; each of them
 *      computes the same m, rescales its own O and l by e^(m_old − m), and writes its P̃ = exp(S − m);
 *   3. O += P̃ V_j: per G keys, TM loads of P̃ (vecG) and G·TDV vec4 loads of V_j feed 4·G·TM·TDV
 *      multiply-adds.
 * Barriers per block: 4 with one K/V tile (K_j in, S done, V_j in, PV done); 2 with `split`, where
 * K_{j+1} is loaded beside V_j. At the end the CT shares of l are summed, O_i = O_i / l, L_i = m + log l.
 * Masks, tails and NaN as the portable kernel (forward.ts): masked scores are MASKED and give P̃ = 0; a
 * row that sees no key gives O = 0 and L = −∞; a NaN score makes its row's O and L NaN, no other row's.
 * Workgroup memory (bytes): 16·(Br·QS + Bc·KS·(1 or 2)) + 4·G·Br·PS + 4·Br·CT, where QS = D4, KS =
 * max(D4, TDV·CT) (vec4s) and PS = Bc/G (vecGs), each rounded up to an odd number. D = 128, Br = Bc = 32,
 * TM = TN = 4: 16·(32·33 + 32·33) + 16·32·9 + 4·32·8 = 39424.
 * Variants (kernels/modifiers.ts; only where the params carry `mods`, so that plain and causal WGSL stay as
 * they were): with a window the key blocks run over the band's range [jStart, Tc); with a block mask the
 * loop steps from one non-empty tile to the next (next_block over the host's tile table for Br × Bc tiles,
 * ti = r0 / Br: the table is read-only storage, so every invocation takes the same steps and the barriers
 * stay in uniform control flow), and FULL tiles skip the element rule; the element rule (mod_keep) masks
 * as causal does; the score modifier takes the scaled score (scale is folded into Q_i); with dropout, O
 * sums P̃ ∘ Z while l sums P̃, so that L is the undropped softmax's (the backward's P = exp(S − L)).
 * Registers are named variables unrolled at generation time (s0_0, o0_0, ...), never private arrays
 * indexed in loops (lavapipe's LLVM takes minutes on those); with D % 4 == 0 storage is read and written
 * as vec4s. The tiles are arrays of rows, indexed [row][column]: the bounds clamps that robustness adds to
 * every index then apply to the row (loop-invariant) and to a column that unrolled loops make constant.
 */
import { MASKED_WGSL, QUERY_HEAD_WGSL, NAN_WGSL, NEG_INF_BITS, OPAQUE_WGSL, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, enables, keyBlocksWGSL, type StorageType } from './common.js';
import { loadVec4 } from './forward.js';
import { grid, range } from './matrix.js';
import { keepWGSL, modFlags, modifiersWGSL, scoreWGSL, windowKeyBlocksWGSL } from './modifiers.js';

export interface ForwardTiledParams {
  D: number;
  /** Query rows per workgroup. */
  Br: number;
  /** Keys per block. */
  Bc: number;
  /** Rows of S and O each invocation owns. */
  TM: number;
  /** Keys of S each invocation owns. */
  TN: number;
  /** K_j and V_j in two tiles: 2 barriers per key block instead of 4, for Bc·D4·16 more bytes. */
  split: boolean;
  /**
   * P̃V_j summed apart and added once, O = diag(alpha) O + P̃V_j (Alg. 1 line 10), rather than each key's
   * term added to O: O's rounding error then grows with the number of key blocks, not of keys (at N = 1024,
   * about 2× the portable kernel's error without it); costs TM·TDV vec4 registers more.
   */
  blockSum: boolean;
  /**
   * Loop bounds as constants, which GPU compilers unroll; false keeps them opaque (OPAQUE_WGSL) so that
   * lavapipe's LLVM does not unroll them (seconds of compile time).
   */
  unroll: boolean;
  dtype: StorageType;
  causal: boolean;
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
}

/** Sizes that follow from the params: thread grid, key runs, vec4 columns, padded strides. */
export function forwardTiledShape(p: Pick<ForwardTiledParams, 'D' | 'Br' | 'Bc' | 'TM' | 'TN'>) {
  const RT = p.Br / p.TM;
  const CT = p.Bc / p.TN;
  const G = p.TN % 4 === 0 ? 4 : p.TN % 2 === 0 ? 2 : 1;
  const D4 = Math.ceil(p.D / 4);
  const TDV = Math.ceil(D4 / CT);
  const odd = (x: number) => x | 1;
  return { RT, CT, G, WG: RT * CT, D4, TDV, QS: odd(D4), KS: odd(Math.max(D4, TDV * CT)), PS: odd(p.Bc / G) };
}

export function forwardTiledWorkgroupBytes(p: Pick<ForwardTiledParams, 'D' | 'Br' | 'Bc' | 'TM' | 'TN' | 'split'>): number {
  const { CT, G, QS, KS, PS } = forwardTiledShape(p);
  return 16 * (p.Br * QS + p.Bc * KS * (p.split ? 2 : 1)) + 4 * G * p.Br * PS + 4 * p.Br * CT;
}

/** Floats of O_i (and of P̃V_j with blockSum) each invocation holds in registers (what bounds TM and TDV). */
export function forwardTiledAccumulator(p: Pick<ForwardTiledParams, 'D' | 'Br' | 'Bc' | 'TM' | 'TN' | 'blockSum'>): number {
  return 4 * p.TM * forwardTiledShape(p).TDV * (p.blockSum ? 2 : 1);
}

/**
 * Why these params cannot work (undefined when they can): the micro-tiles must divide the blocks (also the
 * tiled backward's rule, backward-tiled.ts).
 */
export function forwardTiledProblem(p: Pick<ForwardTiledParams, 'D' | 'Br' | 'Bc' | 'TM' | 'TN'>): string | undefined {
  const int = (x: number) => Number.isInteger(x) && x >= 1;
  if (![p.D, p.Br, p.Bc, p.TM, p.TN].every(int)) return 'D, Br, Bc, TM and TN must be positive integers';
  if (p.Br % p.TM !== 0) return `Br = ${p.Br} is not a multiple of TM = ${p.TM}`;
  if (p.Bc % p.TN !== 0) return `Bc = ${p.Bc} is not a multiple of TN = ${p.TN}`;
  return undefined;
}

/**
 * WGSL: `fn load_<name>(base, d4, ok) -> vec4<f32>`, vec4 d4 of the row at element `base` (0 when !ok):
 * one vec4 load when `vec` (the storage is an array of vec4s), else lane by lane with D's tail zeroed.
 */
export function loadRow(name: string, vec: boolean): string {
  if (!vec) {
    return `${loadVec4(name)}
fn load_${name}4(base: u32, d4: u32, ok: bool) -> vec4<f32> {
  return load_${name}(base, 4u * d4, ok);
}`;
  }
  return `fn load_${name}4(base: u32, d4: u32, ok: bool) -> vec4<f32> {
  return select(vec4<f32>(0.0), vec4<f32>(${name}[base / 4u + d4]), ok);
}`;
}

/**
 * WGSL: store the vec4<f32> `x` as vec4 column `col` of the row at element `at` of storage array `name`:
 * one vec4 store when `vec` (the array holds vec4s), else lane by lane, lanes past D dropped.
 */
export function storeRow4(name: string, at: string, col: string, x: string, dtype: StorageType, vec: boolean): string {
  if (vec) return `${name}[${at} / 4u + ${col}] = vec4<${dtype}>(${x});`;
  return ['x', 'y', 'z', 'w'].map((c, w) => `if (4u * (${col}) + ${w}u < D) { ${name}[${at} + 4u * (${col}) + ${w}u] = ${dtype}(${x}.${c}); }`).join('\n        ');
}

export function forwardTiledWGSL(p: ForwardTiledParams, workgroupLimit: number): string {
  const problem = forwardTiledProblem(p);
  if (problem) throw new Error(`forwardTiled: ${problem}`);
  checkWorkgroupBytes('forwardTiled', forwardTiledWorkgroupBytes(p), workgroupLimit);
  const { D, Br, Bc, TM, TN, split, blockSum, unroll, dtype } = p;
  const { RT, CT, G, WG, D4, TDV, QS, KS, PS } = forwardTiledShape(p);
  const BcG = Bc / G; // tile rows per position in a run of keys
  const vec = D % 4 === 0; // every row then starts at a multiple of 4 elements (strides are multiples of D)
  const elem = vec ? `vec4<${dtype}>` : dtype;
  const pType = G === 1 ? 'f32' : `vec${G}<f32>`;
  const lane = (x: string, w: number) => (G === 1 ? x : `${x}.${'xyzw'[w]}`);
  const bound = (n: number) => (unroll ? `${n}u` : `opaque(${n}u)`);
  const I = range(TM);
  const J = range(TN);
  const T = range(TDV);
  const runs = range(TN / G);
  const Vt = split ? 'Vj' : 'Kj';
  const acc = blockSum ? 'a' : 'o'; // what P̃ V_j is summed into
  const rowOf = (i: number) => `rg + ${i * RT}u`; // tile row of the invocation's i-th row of Q_i
  // Its j-th key (w-th of run jj) within the block, and the tile row that holds it.
  const keyOf = (j: number) => `${G}u * (cg + ${Math.floor(j / G) * CT}u) + ${j % G}u`;
  const keyRow = (j: number) => `cg + ${(j % G) * BcG + Math.floor(j / G) * CT}u`;
  const colOf = (t: number) => `cg + ${t * CT}u`; // vec4 column of O_i, V_j for its t-th column
  const maxOf = (xs: string[]): string => (xs.length === 1 ? xs[0] : `max(${maxOf(xs.slice(0, -1))}, ${xs[xs.length - 1]})`);
  // Copies `rows` rows of D4 vec4s into `tile` (an array of rows), WG invocations at a time; `value(r, d)`
  // is the vec4 for tile row r, column d. Unrolled: straight-line code with every load before the first
  // store, so that their latencies overlap; else a loop.
  const stage = (tile: string, rows: number, value: (r: string, d: string) => string) => {
    const total = rows * D4;
    if (!unroll) {
      return `for (var e = lid; e < ${total}u; e += WG) {
      ${tile}[e / D4][e % D4] = ${value('(e / D4)', '(e % D4)')};
    }`;
    }
    const n = range(Math.ceil(total / WG));
    const guard = (e: number, x: string) => ((e + 1) * WG > total ? `if (e${e} < ${total}u) { ${x} }` : x);
    return `{
${n.map((e) => `      let e${e} = lid + ${e * WG}u;\n      let x${e} = ${value(`(e${e} / D4)`, `(e${e} % D4)`)};`).join('\n')}
${n.map((e) => `      ${guard(e, `${tile}[e${e} / D4][e${e} % D4] = x${e};`)}`).join('\n')}
    }`;
  };
  // K_j or V_j of the block at key `first`: tile row r holds key G·(r % BcG) + r / BcG.
  const loadTile = (tile: string, from: 'k' | 'v', first: string) =>
    stage(tile, Bc, (r, d) => {
      const key = G === 1 ? `${first} + ${r}` : `${first} + ${G}u * (${r} % ${BcG}u) + ${r} / ${BcG}u`;
      return `load_${from}4(ko + min(${key}, u.Nk - 1u) * u.kvRow, ${d}, ${key} < u.Nk)`;
    });
  const v = variants(p);
  const visible = (i: number, j: number) => `c0 + ${keyOf(j)} < u.Nk${v.keep(`row${i}`, `c0 + ${keyOf(j)}`)}`;
  const score = (i: number, j: number) => scoreWGSL(p, 'bh', `row${i}`, `c0 + ${keyOf(j)}`, `s${i}_${j}`);
  // P̃ as O takes it: with dropout, P̃ ∘ Z (l sums P̃ itself).
  const dropped = (i: number, j: number) => (v.f.dropout ? `p${j} * mod_drop(bh, row${i}, c0 + ${keyOf(j)})` : `p${j}`);
  const store = (i: number, t: number) => storeRow4('o', `at${i}`, colOf(t), 'x', dtype, vec);
  return `${enables(dtype)}${v.wgsl}
${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<${elem}>;
@group(0) @binding(2) var<storage, read> k: array<${elem}>;
@group(0) @binding(3) var<storage, read> v: array<${elem}>;
@group(0) @binding(4) var<storage, read_write> o: array<${elem}>;
@group(0) @binding(5) var<storage, read_write> lse: array<u32>; // f32 bits

const D = ${D}u;
const D4 = ${D4}u;
const Br = ${Br}u;
const Bc = ${Bc}u;
const CT = ${CT}u;
const WG = ${WG}u;
const QS = ${QS}u;
const KS = ${KS}u;
const PS = ${PS}u;
${MASKED_WGSL}

var<workgroup> Qi: array<array<vec4<f32>, QS>, Br>;
var<workgroup> Kj: array<array<vec4<f32>, KS>, Bc>;${split ? '\nvar<workgroup> Vj: array<array<vec4<f32>, KS>, Bc>;' : ' // K_j, then V_j'}
var<workgroup> P: array<array<${pType}, PS>, Br>; // P̃: [row][run of ${G} keys]
var<workgroup> share: array<array<f32, CT>, Br>; // [row][column group]: the block's row max, then l

${VISIBLE_WGSL}
${OPAQUE_WGSL}
${NAN_WGSL}
${loadRow('q', vec)}
${loadRow('k', vec)}
${loadRow('v', vec)}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let cg = lid % CT; // column group
  let rg = lid / CT; // row group
${QUERY_HEAD_WGSL}
  let Tr = (u.Nq + Br - 1u) / Br;
  let r0 = ${p.causal ? '(Tr - 1u - wid.x)' : 'wid.x'} * Br;
${I.map((i) => `  let row${i} = r0 + ${rowOf(i)};`).join('\n')}${v.f.blocks ? '\n  let ti = r0 / Br; // the query tile of the tile table' : ''}

  // Alg. 1 line 4: Q_i, with the softmax scale folded in; rows past Nq read as 0.
  ${stage('Qi', Br, (r, d) => `load_q4(qo + min(r0 + ${r}, u.Nq - 1u) * u.qRow, ${d}, r0 + ${r} < u.Nq) * u.scale`)}
  // Alg. 1 line 5: O_i = 0, m = −∞ (MASKED), l = 0 (this invocation's share of it).
${grid(TM, TDV)
  .map(([i, t]) => `  var o${i}_${t} = vec4<f32>(0.0);`)
  .join('\n')}
${I.map((i) => `  var m${i} = MASKED;\n  var l${i} = 0.0;\n  var bad${i} = false; // a NaN score: the row's O and L are NaN`).join('\n')}

  ${v.f.window ? '// The band: key blocks that no row of Q_i sees are skipped.' : '// Causal: key blocks entirely above the diagonal are skipped.'}
  ${v.f.window ? windowKeyBlocksWGSL() : keyBlocksWGSL(p.causal)}
${split ? `  {\n    let c0 = ${p.mods ? `${v.next(v.first)} * Bc` : '0u'};\n    ${loadTile('Kj', 'k', 'c0')}\n  }` : ''}
  ${v.loop}
    let c0 = j * Bc;${v.f.blocks ? '\n    let full = mod_tile(bh, ti, j) == 1u; // every element kept: no element rule' : ''}
${
  split
    ? '    // K_j was loaded beside V_{j−1} (or before the loop).'
    : `    workgroupBarrier(); // O += P̃ V_{j−1} no longer reads V_{j−1} or P̃
    // Alg. 1 line 7: K_j
    ${loadTile('Kj', 'k', 'c0')}`
}
    workgroupBarrier();
    // Alg. 1 line 8: S = Q_i K_jᵀ, this invocation's TM×TN entries.
${grid(TM, TN)
  .map(([i, j]) => `    var s${i}_${j} = 0.0;`)
  .join('\n')}
    for (var d = 0u; d < ${bound(D4)}; d++) {
${I.map((i) => `      let q${i} = Qi[${rowOf(i)}][d];`).join('\n')}
${J.map((j) => `      let k${j} = Kj[${keyRow(j)}][d];`).join('\n')}
${grid(TM, TN)
  .map(([i, j]) => `      s${i}_${j} += dot(q${i}, k${j});`)
  .join('\n')}
    }
    // Masked entries are MASKED; each invocation's row max goes to share.
${I.map(
  (i) => `${J.map((j) => `    s${i}_${j} = select(MASKED, ${score(i, j)}, ${visible(i, j)});`).join('\n')}
    bad${i} = bad${i} || ${J.map((j) => `is_nan(s${i}_${j})`).join(' || ')};
    share[${rowOf(i)}][cg] = ${maxOf(J.map((j) => `s${i}_${j}`))};`,
).join('\n')}
    workgroupBarrier(); // share holds the row maxima; K_j is no longer read
    // Alg. 1 line 9: m = max(m, rowmax(S)) (the same in every invocation of a row), P̃ = exp(S − m),
    // l = alpha l + rowsum(P̃) with alpha = e^(m_old − m)${blockSum ? '' : '; O = diag(alpha) O'}. A row with
    // nothing visible yet keeps m = MASKED, and gets alpha = exp(0) = 1 and P̃ = 0.
${I.map(
  (i) => `    let mx${i} = ${maxOf([`m${i}`, ...range(CT).map((g) => `share[${rowOf(i)}][${g}]`)])};
    let alpha${i} = exp(m${i} - mx${i});
    m${i} = mx${i};
    {
${J.map((j) => `      let p${j} = select(exp(s${i}_${j} - mx${i}), 0.0, s${i}_${j} == MASKED);`).join('\n')}
${runs.map((jj) => `      P[${rowOf(i)}][cg + ${jj * CT}u] = ${G === 1 ? dropped(i, jj) : `${pType}(${range(G).map((w) => dropped(i, jj * G + w)).join(', ')})`};`).join('\n')}
      l${i} = alpha${i} * l${i} + ${J.map((j) => `p${j}`).join(' + ')};${blockSum ? '' : `\n${T.map((t) => `      o${i}_${t} *= alpha${i};`).join('\n')}`}
    }`,
).join('\n')}
    // Alg. 1 line 7 (second half): V_j${split ? ', and K_{j+1} beside it' : ', into the tile K_j used'}.
    ${loadTile(Vt, 'v', 'c0')}${
      split
        ? `
    ${v.f.blocks ? 'let jn = next_block(bh, ti, j + 1u, Tc);\n    if (jn < Tc) {\n      let c1 = jn * Bc;' : 'if (j + 1u < Tc) {\n      let c1 = c0 + Bc;'}
      ${loadTile('Kj', 'k', 'c1')}
    }`
        : ''
    }
    workgroupBarrier();
    // Alg. 1 line 10: ${blockSum ? 'O = diag(alpha) O + P̃ V_j' : 'O += P̃ V_j'}, a run of ${G} keys at a time (key G·g + w in tile row w·Bc/G + g).
${blockSum ? grid(TM, TDV).map(([i, t]) => `    var a${i}_${t} = vec4<f32>(0.0);`).join('\n') : ''}
    for (var g = 0u; g < ${bound(BcG)}; g++) {
${I.map((i) => `      let p${i} = P[${rowOf(i)}][g];`).join('\n')}
${range(G)
  .map(
    (w) => `${T.map((t) => `      let v${w}_${t} = ${Vt}[${w * BcG}u + g][${colOf(t)}];`).join('\n')}
${grid(TM, TDV)
  .map(([i, t]) => `      ${acc}${i}_${t} += ${lane(`p${i}`, w)} * v${w}_${t};`)
  .join('\n')}`,
  )
  .join('\n')}
    }
${blockSum ? grid(TM, TDV).map(([i, t]) => `    o${i}_${t} = alpha${i} * o${i}_${t} + a${i}_${t};`).join('\n') : ''}
  }

  // Alg. 1 lines 12-15: l = the sum of the row's CT shares; O_i = O_i / l, L_i = m + log l; a row that
  // saw no key: O = 0, L = −∞. A share of −1 marks a NaN score (l ≥ 0 otherwise). The last block's
  // row maxima were read before its last barrier, so share is free.
${I.map((i) => `  share[${rowOf(i)}][cg] = select(l${i}, -1.0, bad${i});`).join('\n')}
  workgroupBarrier();
${I.map(
  (i) => `  {
    var l = 0.0;
    var poisoned = false;
    for (var g = 0u; g < CT; g++) {
      let x = share[${rowOf(i)}][g];
      l += x;
      poisoned = poisoned || x < 0.0;
    }
    if (row${i} < u.Nq) {
      if (cg == 0u) {
        lse[bh * u.Nq + row${i}] = select(select(bitcast<u32>(m${i} + log(l)), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
      }
      let at${i} = qo + row${i} * u.qRow;
${T.map(
  (t) => `      if (${colOf(t)} < D4) {
        let x = select(select(o${i}_${t} / l, vec4<f32>(0.0), l == 0.0), vec4<f32>(nan()), poisoned);
        ${store(i, t)}
      }`,
).join('\n')}
    }
  }`,
).join('\n')}
}
`;
}

/**
 * The variants of a kernel of this family with Br-row query tiles (kernels/modifiers.ts), as WGSL
 * fragments that are empty for plain and causal params (so that their WGSL stays what it was):
 *   - wgsl: group 1 and the hooks, and with the block mask `next_block`, which the key-block loop steps
 *     by so that empty tiles are skipped (in uniform control flow: the tile table is read-only storage);
 *   - keep(row, key): the element rule, ` && …` (with the block mask: not on FULL tiles, `full`);
 *   - first, next(j), loop: the key-block loop, from the band's first block (jStart) or 0 (the kernels
 *     that step by key blocks; the dK/dV kernel steps by query blocks and skips empty tiles itself).
 */
export function variants(p: { causal: boolean; mods?: string; dtype: StorageType }, role: 'forward' | 'backward-kv' | 'backward-q' = 'forward') {
  const f = modFlags(p.mods);
  const keep = (row: string, key: string) => {
    const rule = keepWGSL(p, 'bh', row, key);
    return f.blocks && rule ? ` && (full || (${rule.slice(' && '.length)}))` : rule;
  };
  const first = f.window ? 'jStart' : '0u';
  const next = (j: string) => (f.blocks ? `next_block(bh, ti, ${j}, Tc)` : j);
  const loop = f.blocks ? `for (var j = ${next(first)}; j < Tc; j = ${next('j + 1u')}) {` : `for (var j = ${first}; j < Tc; j++) {`;
  const blocks = `
/** The first key block from j0 on (Tc when none) whose tile (ti, ·) of head bh is not empty. */
fn next_block(bh: u32, ti: u32, j0: u32, Tc: u32) -> u32 {
  var j = j0;
  while (j < Tc && mod_tile(bh, ti, j) == 0u) {
    j++;
  }
  return j;
}`;
  const wgsl = p.mods ? `${modifiersWGSL(p.mods, p.dtype, role)}${f.blocks && role !== 'backward-kv' ? blocks : ''}\n` : '';
  return { f, keep, first, next, loop, wgsl };
}
