/**
 * Split-KV decode on subgroup matrices (tensor cores): the schedule of decode.ts (up to 16 of the G·Nq
 * query rows that share a key/value head of a batch row, one split of the keys; partials merged by
 * mergeWGSL), with the products on 16×16×16 f16→f32 fragments, as FlashAttention-2's decode packs a
 * group's query heads into the rows of its tensor-core tiles. Not chosen by 'auto' (webgpu/decode.ts's
 * DecodeKernels 'matrix' asks for it): on an H200 it read K/V at 0.37–1.1 TB/s where the subgroup kernel
 * (decode-subgroup.ts) reads 2.6 (B = 8, H = 32, Hkv = 8, D = 128, Nk = 32768; bench/variants/decode.ts
 * --sweep, bench/results/2026-12-04-h200-decode-matrix.md). It is kept, tested on GPUs, as the start of
 * that schedule: each tile's chain (staging, fragment loads, S through workgroup memory, the softmax,
 * P̃ back, the PV products, four barriers) ran as if one tile at a time per SM was in flight.
 *
 * A workgroup is W warps (subgroups of SGS invocations, a multiple of 16), each with a split of its own;
 * every warp runs the same number of tiles (the longest split's), masked past its own keys, so that the
 * barriers are uniform. Q's 16 rows (zeros past the group's) are staged once into D/16 left fragments.
 * Per tile of 16 keys, per warp:
 *   1. the tile's K and V rows, loaded as vec4s into registers during the tile before (zeros for keys
 *      past the split: no key outside it is read, so a NaN there cannot reach O through 0·NaN), are
 *      staged into the warp's part of workgroup memory and read back as fragments (Kᵀ column-major, V
 *      row-major);
 *   2. S = Q Kᵀ (16 rows × 16 keys, f32) goes to workgroup memory; invocation (r, part) reads row r's
 *      scores of keys part·KPP.., applies the scale, the modifiers' hooks and the masking (past the
 *      split, causal, the window), and with the other parts (shuffles) forms the tile's row max;
 *   3. m moves only when the tile's max exceeds it by more than TAU (natural log units; P̃ ≤ e^TAU
 *      within f16), as in forward-matrix.ts: O and l then need diag(e^(m_old − m)), which fragments cannot
 *      take, so they go through workgroup memory one fragment at a time (rare: m settles in the first
 *      tiles). The result is exact either way: O and l share the same m;
 *   4. P̃ = exp(S − m) in f16 (0 where masked), O += P̃ V and l += P̃·1 (the sum of the f16 values O is
 *      made of, on the same tensor cores: a one-hot row gives exactly its V row); L's sum is of the
 *      unrounded P̃.
 * The split's O / l and L = m + log l go to the partials (or out and lse with one split). A NaN score of
 * a key a row sees makes that row's out and L NaN, and no other row's.
 * The variants (`mods`: window, ALiBi, soft-cap) as in decode.ts. Requires f16, D % 16 == 0, vec4 K/V
 * rows, and an adapter with f16→f32 16×16×16 subgroup-matrix configs.
 */
import { MASKED_WGSL, NAN_WGSL, NEG_INF_BITS, checkWorkgroupBytes } from './common.js';
import { DECODE_SIZES_WGSL, decodeBindingsWGSL, decodeKeepWGSL, decodeModsWGSL, decodeScoreWGSL } from './decode.js';
import { FRAGMENT, LEFT, MATRIX_ENABLES, RESULT, RIGHT, lines, range } from './matrix.js';

export interface DecodeMatrixParams {
  /** Head dim, a multiple of 16. */
  D: number;
  /** Storage: f16 only. */
  dtype: 'f16';
  /** Subgroup size, a multiple of 16. */
  SGS: number;
  /** Subgroups (warps) per workgroup, each taking a split of its own. */
  W: number;
  causal: boolean;
  cache: boolean;
  paged: boolean;
  split: boolean;
  /** The variants' flags (as DecodeParams.mods), only when the call has some. */
  mods?: string;
}

/** Query rows a workgroup owns. */
export const DECODE_MATRIX_ROWS = FRAGMENT;

/** How far a tile's max may exceed m before m moves (natural log units: P̃ ≤ e^6 ≈ 403, within f16). */
const TAU = 6;

/** f32 of F per warp: S [key][row] (and fragments on their way), then e^(m_old − m) per row. */
const F_WARP = FRAGMENT * FRAGMENT + FRAGMENT;

/** f16 of T: Q and the ones, shared, then per warp a tile's K and V and P̃. */
function tHalves(p: Pick<DecodeMatrixParams, 'D' | 'W'>): number {
  return FRAGMENT * p.D + FRAGMENT * FRAGMENT + p.W * (2 * FRAGMENT * p.D + FRAGMENT * FRAGMENT);
}

export function decodeMatrixWorkgroupBytes(p: Pick<DecodeMatrixParams, 'D' | 'W'>): number {
  return 2 * tHalves(p) + 4 * (p.W * (F_WARP + FRAGMENT) + 2);
}

export function decodeMatrixWGSL(p: DecodeMatrixParams, workgroupLimit: number): string {
  const { D, SGS, W, cache, split } = p;
  checkWorkgroupBytes('decodeMatrix', decodeMatrixWorkgroupBytes(p), workgroupLimit);
  const DF = D / FRAGMENT; // fragments along D
  const PARTS = SGS / FRAGMENT; // invocations per row in the softmax
  const KPP = FRAGMENT / PARTS; // keys each of them takes
  const D4 = D / 4;
  const WG = W * SGS;
  const mods = decodeModsWGSL({ dtype: 'f16', mods: p.mods });
  const { outputs, extra, rows } = decodeBindingsWGSL({ dtype: 'f16', cache: p.cache, paged: p.paged, split });
  // Each invocation's share of a tile's K and V rows (16 keys × D4 vec4s): LOADS vec4s of each.
  const LOADS = (FRAGMENT * D4) / SGS;
  const tileLoads = lines(
    LOADS,
    (i) => `  {
    let e = lane + ${i * SGS}u;
    let key = kb + e / ${D4}u;
    let at = key_base(min(key, max(keyEnd, 1u) - 1u)) / 4u + e % ${D4}u;
    kr${i} = select(vec4<f16>(0.0h), k[at], key < keyEnd);
    vr${i} = select(vec4<f16>(0.0h), v[at], key < keyEnd);
  }`,
  );
  const tileStore = lines(LOADS, (i) => {
    const at = `(lane + ${i * SGS}u) * 4u`;
    return `    T[KW + ${at}] = kr${i}.x; T[KW + ${at} + 1u] = kr${i}.y; T[KW + ${at} + 2u] = kr${i}.z; T[KW + ${at} + 3u] = kr${i}.w;
    T[VW + ${at}] = vr${i}.x; T[VW + ${at} + 1u] = vr${i}.y; T[VW + ${at} + 2u] = vr${i}.z; T[VW + ${at} + 3u] = vr${i}.w;`;
  });
  const visible = `key < keyEnd && valid${decodeKeepWGSL(p, 'r', 'key', '')}`;
  // Fragment `frag` through the warp's F ([col][row], stride 16): `body` runs on its elements.
  const throughF = (frag: string, body: string, reload: boolean) => `    workgroupBarrier();
    subgroupMatrixStore<col_major>(&F, FW, ${frag}, 16u);
    workgroupBarrier();
${body}${reload ? `\n    workgroupBarrier();\n    ${frag} = subgroupMatrixLoad<${RESULT}, col_major>(&F, FW, 16u);` : ''}`;
  const lseBits = `select(select(bitcast<u32>(m + log(l32)), ${NEG_INF_BITS}, l32 == 0.0), bitcast<u32>(nan()), poisoned)`;
  // Output: each invocation writes vec4s (row rr, columns 4·e4..) of fragment c held in the warp's F.
  const writeFragment = (c: number) =>
    `    for (var e = lane; e < ${FRAGMENT * 4}u; e += ${SGS}u) {
      let rr = e % 16u;
      let e4 = e / 16u;
      if (live && ok_row(rr)) {
        let Lr = Lrow[w * 16u + rr];
        let x = select(vec4<f32>(F[FW + (4u * e4) * 16u + rr], F[FW + (4u * e4 + 1u) * 16u + rr], F[FW + (4u * e4 + 2u) * 16u + rr], F[FW + (4u * e4 + 3u) * 16u + rr]) / Lr, vec4<f32>(0.0), Lr == 0.0);
        ${
          split
            ? `let part = lse_row(b, rr) * u.splits + s;
        opart[part * ${D4}u + ${c * 4}u + e4] = x;`
            : `let at = q_row(b, rr) + ${c * FRAGMENT}u + 4u * e4;
        o[at] = f16(x.x); o[at + 1u] = f16(x.y); o[at + 2u] = f16(x.z); o[at + 3u] = f16(x.w);`
        }
      }
    }`;
  const lseWrite = split
    ? `lpart[lse_row(b, r) * u.splits + s] = ${lseBits};`
    : `lse[lse_row(b, r)] = ${lseBits};`;
  return `${MATRIX_ENABLES}
diagnostic(off, chromium.subgroup_matrix_uniformity);
${DECODE_SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<f16>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f16>>;
${outputs}
${extra}
${mods.decls ? `${mods.decls}\n` : ''}
const D = ${D}u;
const TAU = ${TAU}.0;
// T: Q [row][d] and the ones, shared; then per warp a staged tile's K and V [key][d] and P̃ [key][row].
const QT = 0u;
const ONES = ${FRAGMENT * D}u;
const WARP_T = ${FRAGMENT * D + FRAGMENT * FRAGMENT}u;
const T_STRIDE = ${2 * FRAGMENT * D + FRAGMENT * FRAGMENT}u;
// F: per warp S [key][row] (and fragments on their way) and e^(m_old − m) per row; the rescale flag.
const F_STRIDE = ${F_WARP}u;
const FLAG = ${W * F_WARP}u;
${MASKED_WGSL}

var<workgroup> F: array<f32, ${W * F_WARP + 1}>;
var<workgroup> Lrow: array<f32, ${W * FRAGMENT}>;
var<workgroup> wlen: u32;
// The f16 array declared last: on an H100 a workgroup variable declared after an f16 array was seen to
// alias that array's first words (forward-matrix.ts); here on an H200 F did, until it came first.
var<workgroup> T: array<f16, ${tHalves(p)}>;

${NAN_WGSL}

var<private> lane: u32;
${rows}

${lines(LOADS, (i) => `var<private> kr${i}: vec4<f16>;\nvar<private> vr${i}: vec4<f16>;`)}

/** Issue this invocation's loads of its warp's tile at key kb (keys from keyEnd on: zeros). */
fn fetch(kb: u32, keyEnd: u32) {
${tileLoads}
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = lid / ${SGS}u; // this invocation's warp
  lane = lid % ${SGS}u;
  let s = wid.x * ${W}u + w; // the warp's split
  let live = s < u.splits;
  let b = wid.z;
  hk = wid.y / u.rowChunks;
  row0 = (wid.y % u.rowChunks) * 16u;
  let KW = WARP_T + w * T_STRIDE; // the warp's K, V and P̃ in T
  let VW = KW + ${FRAGMENT * D}u;
  let PW = VW + ${FRAGMENT * D}u;
  let FW = w * F_STRIDE;           // its S in F, and its alphas at FW + 256
  ${cache ? 'let info = seqs[b];\n  slot = info.x;\n  if (lid == 0u) { wlen = info.y; }' : 'slot = b;\n  if (lid == 0u) { wlen = u.Nk; }'}
  // Q's 16 rows (zeros past the group's) and the ones into T.
  for (var e = lid; e < ${FRAGMENT * D}u; e += ${WG}u) {
    let rr = e / D;
    var x = 0.0h;
    if (ok_row(rr)) {
      x = q[q_row(b, rr) + e % D];
    }
    T[QT + e] = x;
  }
  for (var e = lid; e < 256u; e += ${WG}u) {
    T[ONES + e] = 1.0h;
  }
  if (lid == 0u) { F[FLAG] = 0.0; }
  let len = workgroupUniformLoad(&wlen); // a barrier, and the loop bounds uniform
${lines(DF, (c) => `  let qf${c} = subgroupMatrixLoad<${LEFT}, row_major>(&T, QT + ${c * FRAGMENT}u, D);`)}
  let ones = subgroupMatrixLoad<${RIGHT}, row_major>(&T, ONES, 16u);
${lines(DF, (c) => `  var of${c} = ${RESULT}();`)}
  var lf = ${RESULT}();

  // The warp's keys [keyStart, keyEnd) (none for a warp past the last split); every warp runs the
  // same tiles (the longest split's), masked past its own keys, so that the barriers are uniform.
  let keyStart = ${mods.keyStart};
  let keyEnd = select(keyStart, min(len, keyStart + u.chunk), live);
  let tiles = (u.chunk + 15u) / 16u;
  let r = lane % 16u;    // this invocation's row in the softmax
  let part = lane / 16u; // and its share of the tile's keys: part·${KPP} ..
  let valid = ok_row(r);
  ${p.mods ? mods.rowOf('r', '', '  ') : ''}
  var m = MASKED;
  var l32 = 0.0; // Σ P̃ unrounded over this invocation's keys (L's sum; O is divided by lf's, of the f16 P̃)
  var poisoned = false;

  fetch(keyStart, keyEnd);
  for (var t = 0u; t < tiles; t++) {
    let kb = keyStart + 16u * t;
    workgroupBarrier(); // the previous tile's fragments are loaded from T and F
${tileStore}
    workgroupBarrier();
    fetch(kb + 16u, keyEnd); // in flight while this tile is computed
${lines(DF, (c) => `    let kf${c} = subgroupMatrixLoad<${RIGHT}, col_major>(&T, KW + ${c * FRAGMENT}u, D);
    let vf${c} = subgroupMatrixLoad<${RIGHT}, row_major>(&T, VW + ${c * FRAGMENT}u, D);`)}
    var sf = ${RESULT}();
${lines(DF, (c) => `    sf = subgroupMatrixMultiplyAccumulate(qf${c}, kf${c}, sf);`)}
    subgroupMatrixStore<col_major>(&F, FW, sf, 16u);
    workgroupBarrier();

    // Row r's scores of keys part·KPP.., scaled, modified and masked; the tile's row max.
${lines(
  KPP,
  (j) => `    var x${j} = MASKED;
    {
      let key = kb + part * ${KPP}u + ${j}u;
      let raw = F[FW + (part * ${KPP}u + ${j}u) * 16u + r] * u.scale;
      if (${visible}) {
        x${j} = ${decodeScoreWGSL(p, 'key', 'raw', '')};
        poisoned = poisoned || is_nan(x${j});
      }
    }`,
)}
    var mx = ${range(KPP)
      .slice(1)
      .reduce((a, j) => `max(${a}, x${j})`, 'x0')};
${lines(Math.log2(PARTS), (i) => `    mx = max(mx, subgroupShuffleXor(mx, ${16 << i}u));`)}
    var alpha = 1.0;
    if (mx != MASKED && (m == MASKED || mx > m + TAU)) {
      alpha = select(exp(m - mx), 0.0, m == MASKED);
      m = mx;
      F[FLAG] = 1.0;
    }
    if (part == 0u) { F[FW + 256u + r] = alpha; }
    l32 *= alpha;
${lines(KPP, (j) => `    {
      let pe = select(exp(x${j} - m), 0.0, x${j} == MASKED);
      T[PW + (part * ${KPP}u + ${j}u) * 16u + r] = f16(pe);
      l32 += pe;
    }`)}
    if (workgroupUniformLoad(&F[FLAG]) != 0.0) {
      // O = diag(alpha) O and l = alpha·l, one fragment at a time through F (every warp, each with its own alphas).
${[...range(DF).map((c) => `of${c}`), 'lf']
  .map((frag) => throughF(frag, `    for (var e = lane; e < 256u; e += ${SGS}u) { F[FW + e] *= F[FW + 256u + e % 16u]; }`, true))
  .join('\n')}
      workgroupBarrier();
      if (lid == 0u) { F[FLAG] = 0.0; }
    }
    let pf = subgroupMatrixLoad<${LEFT}, col_major>(&T, PW, 16u);
${lines(DF, (c) => `    of${c} = subgroupMatrixMultiplyAccumulate(pf, vf${c}, of${c});`)}
    lf = subgroupMatrixMultiplyAccumulate(pf, ones, lf);
  }

  // The split's O / l and L = m + log l.
${lines(Math.log2(PARTS), (i) => `  poisoned = subgroupShuffleXor(u32(poisoned), ${16 << i}u) != 0u || poisoned;\n  l32 += subgroupShuffleXor(l32, ${16 << i}u);`)}
${throughF(
  'lf',
  `  if (part == 0u) {
    Lrow[w * 16u + r] = select(F[FW + r], nan(), poisoned); // a poisoned row's out: x / NaN
    if (live && valid) { ${lseWrite} }
  }`,
  false,
)}
${range(DF)
  .map((c) => throughF(`of${c}`, writeFragment(c), false))
  .join('\n')}
}
`;
}
