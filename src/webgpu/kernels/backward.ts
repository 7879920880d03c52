/**
 * Backward kernels, FlashAttention-2 order (Dao 2023, Algorithm 2), split in three dispatches so that no
 * two workgroups ever write the same element: deterministic, and no float atomics (WGSL has none).
 *
 * 1. preprocess (Alg. 2 line 4): one invocation owns one query row of one head (b, h); dispatch
 *    (⌈Nq/WG⌉, B·H). It writes Dvec[(b·H + h)·Nq + i] = rowsum(dO ∘ O) in f32 (summed in dP's order).
 *    No workgroup memory.
 * 2. dK/dV: one workgroup owns key block K_j (Bc rows) of one key/value head (b, hkv); dispatch
 *    (Tc, B·Hkv). K_j, V_j (lines 6-7) and the accumulators dK_j, dV_j stay in workgroup memory. Loop
 *    order: for each query head h of the group, for each query block i (line 8; causal: blocks entirely
 *    above the diagonal are skipped):
 *      a. all threads load Q_i (times the scale) and dO_i, and L_i, D_i (line 9);
 *      b. P = exp(S − L) one entry per thread at a time, into the Br×Bc tile T (lines 10-11);
 *      c. each thread owns vec4s of dV_j: dV_j += Pᵀ dO_i (line 12);
 *      d. dS = P ∘ (dO_i V_jᵀ − D_i) in place in T (lines 13-14);
 *      e. each thread owns vec4s of dK_j: dK_j += dSᵀ (scale·Q_i) (line 16).
 *    dK_j, dV_j are written once at the end (line 18), summed over the group's query heads.
 *    Workgroup memory: 16·D4·(4·Bc + 2·Br) + 4·(Br·Bc + 2·Br) bytes (K_j, V_j, dK_j, dV_j, Q_i, dO_i; T,
 *    L, D).
 * 3. dQ: one workgroup owns query block Q_i (Br rows) of one head (b, h); dispatch (Tr, B·H). Q_i (times
 *    the scale), dO_i, L_i, D_i and the accumulator dQ_i stay in workgroup memory; V_j and then K_j
 *    stream through one tile. Per key block j (causal: blocks entirely above the diagonal are skipped):
 *      a. all threads load V_j; dP = dO_i V_jᵀ into T (line 13);
 *      b. all threads load K_j into the same tile; P = exp(S − L), dS = P ∘ (dP − D) in place (11, 14);
 *      c. each thread owns vec4s of dQ_i: dQ_i += dS K_j (line 15).
 *    dQ_i = scale·dQ_i is written once.
 *    Workgroup memory: 16·D4·(3·Br + Bc) + 4·(Br·Bc + 2·Br) bytes (Q_i, dO_i, dQ_i, K_j/V_j; T, L, D).
 * Rows sit in workgroup memory as vec4<f32> (D padded with zeros to D4 = ⌈D/4⌉ vec4s), as in the forward.
 * Every accumulator lives in workgroup memory, each vec4 owned by one thread (`e = lid; e += WG`), and
 * inner loops run to opaque() bounds: per-thread private arrays and fully unrolled loops make lavapipe's
 * LLVM first compile take minutes. Sums are two-level: a tile's partial sum, then added to the accumulator.
 * Rows past Nq and keys past Nk load as 0 and are masked; rows that see no key (L = −∞) have P = dS = 0.
 * Entries of T that are 0 (masked) add nothing to dK_j and dV_j, also where that row's Q_i or dO_i holds a
 * NaN: a NaN stays in its row's dq and in dk, dv of the keys that row sees (causal and the variants).
 * The variants (kernels/modifiers.ts; only where the params carry `mods`): both kernels visit the band's
 * blocks only and skip the block mask's empty tiles (each with its own Br × Bc tile table), recompute the
 * modified score with the element rule, and take dS times the soft-cap's derivative for dK and dQ. Dropout:
 * dV_j += (P ∘ Z)ᵀ dO_i and dP = (dO_i V_jᵀ) ∘ Z; the dK/dV kernel keeps a dropped P as −P in T (dV_j
 * skips it, dS needs it) and scales dV_j by 1/(1 − p) once, at the write. The dK/dV kernel writes dS
 * (before the soft-cap's derivative) to dbias where the bias's gradient is asked for.
 */
import { MASKED_WGSL, NAN_TESTS_WGSL, QUERY_HEAD_WGSL, NEG_INF_BITS, OPAQUE_WGSL, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, enables, type StorageType, firstQueryBlockWGSL } from './common.js';
import { loadVec4 } from './forward.js';
import { keepWGSL, keyBlockLoopWGSL, modFlags, modifiersWGSL, type ModFlags, scoreWGSL, windowQueryBlocksWGSL } from './modifiers.js';

export interface PreprocessParams {
  D: number;
  /** Threads per workgroup. */
  WG: number;
  dtype: StorageType;
}

/** The dK/dV and dQ kernels' compile-time configuration (each with its own tiles). */
export interface BackwardParams {
  D: number;
  /** Query rows per block. */
  Br: number;
  /** Keys per block. */
  Bc: number;
  /** Threads per workgroup. */
  WG: number;
  dtype: StorageType;
  causal: boolean;
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
}

export function backwardKVWorkgroupBytes(p: Pick<BackwardParams, 'D' | 'Br' | 'Bc'>): number {
  const D4 = Math.ceil(p.D / 4);
  return 16 * D4 * (4 * p.Bc + 2 * p.Br) + 4 * (p.Br * p.Bc + 2 * p.Br);
}

export function backwardQWorkgroupBytes(p: Pick<BackwardParams, 'D' | 'Br' | 'Bc'>): number {
  const D4 = Math.ceil(p.D / 4);
  return 16 * D4 * (3 * p.Br + p.Bc) + 4 * (p.Br * p.Bc + 2 * p.Br);
}

/** vec4s of each of dK_j, dV_j (workgroup memory) each thread owns. */
export function backwardKVAccumulator(p: Pick<BackwardParams, 'D' | 'Bc' | 'WG'>): number {
  return Math.ceil((p.Bc * Math.ceil(p.D / 4)) / p.WG);
}

/** vec4s of dQ_i (workgroup memory) each thread owns. */
export function backwardQAccumulator(p: Pick<BackwardParams, 'D' | 'Br' | 'WG'>): number {
  return Math.ceil((p.Br * Math.ceil(p.D / 4)) / p.WG);
}

/** WGSL: store vec4 `x` as elements d0..d0+3 of the row at `at` of storage array `name` (lanes past D dropped). */
function storeVec4(name: string, dtype: StorageType, at: string, d0: string, x: string): string {
  return ['x', 'y', 'z', 'w']
    .map((c, t) => (t === 0 ? `${name}[${at}] = ${dtype}(${x}.x);` : `if (${d0} + ${t}u < D) { ${name}[${at} + ${t}u] = ${dtype}(${x}.${c}); }`))
    .join('\n      ');
}

/**
 * Alg. 2 line 4: D = rowsum(dO ∘ O), one query row per invocation, summed vec4 by vec4 in the order the
 * other kernels sum dP = dO_i V_jᵀ: where O_i = V_j exactly (one key), dP − D is exactly 0, as it should be.
 */
export function preprocessWGSL(p: PreprocessParams): string {
  const { D, WG, dtype } = p;
  return `${enables(dtype)}
${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> dout: array<${dtype}>;
@group(0) @binding(2) var<storage, read> o: array<${dtype}>;
@group(0) @binding(3) var<storage, read_write> Dvec: array<f32>;

const D = ${D}u;
const D4 = ${Math.ceil(D / 4)}u;

${OPAQUE_WGSL}
${loadVec4('dout')}
${loadVec4('o')}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let bh = wid.y;
  let b = bh / u.H;
  let h = bh % u.H;
  let row = wid.x * ${WG}u + lid;
  let d4 = opaque(D4); // a loop bound the compiler does not unroll (see OPAQUE_WGSL)
  if (row < u.Nq) {
    let base = b * u.qBatch + h * u.qHead + row * u.qRow;
    var s = 0.0;
    for (var d = 0u; d < d4; d++) {
      s += dot(load_dout(base, 4u * d, true), load_o(base, 4u * d, true));
    }
    Dvec[bh * u.Nq + row] = s;
  }
}
`;
}

/**
 * Tests by bits where a NaN must pass, not float comparisons (which WGSL leaves to the implementation:
 * lavapipe answers NaN != MASKED with false, which dropped a NaN row's dq): `sees(L)`, a row's L from
 * Lrow is not MASKED (NaN included); `nonzero(x)`, x is not ±0 (NaN included); `adds(t)` (dropout), an
 * entry of T that adds to dV_j: not 0 and not a dropped −P (NaN included).
 */
function bitTestsWGSL(dropout: boolean): string {
  const tests = NAN_TESTS_WGSL;
  if (!dropout) return tests;
  return `${tests}
fn adds(t: f32) -> bool {
  let b = bitcast<u32>(t);
  return nonzero(t) && (b < 0x80000000u || (b & 0x7fffffffu) > 0x7f800000u);
}`;
}

/** Load L_i (f32 bits; −∞ and rows past Nq become MASKED) and D_i into Lrow, Drow. */
export function rowStatsWGSL(): string {
  return `for (var r = lid; r < Br; r += WG) {
      let row = r0 + r;
      var L = MASKED;
      var Dr = 0.0;
      if (row < u.Nq) {
        let bits = lse[Lo + row];
        if (bits != ${NEG_INF_BITS}) {
          L = bitcast<f32>(bits);
        }
        Dr = Dvec[Lo + row];
      }
      Lrow[r] = L;
      Drow[r] = Dr;
    }`;
}

/**
 * WGSL (the body of the dK/dV kernel's dS loop over entries e of T, with variants): dP = dO_i V_jᵀ (∘ Z),
 * dS = P ∘ (dP − D_i), written to dbias where asked, then times the soft-cap's derivative (from the score,
 * recomputed as the P step computed it).
 */
function kvDsWGSL(f: ModFlags): string {
  return `let t = T[e];
        if (nonzero(t)) {
          let r = e / Bc;
          let c = e % Bc;
          let row = r0 + r;
          let key = c0 + c;
          var dp = 0.0;
          for (var d = 0u; d < d4; d++) {
            dp += dot(dOi[r * D4 + d], Vj[c * D4 + d]);
          }
          ${f.dropout ? `let pe = abs(t); // a dropped P is kept as −P
          var ds = pe * (select(0.0, mu.dropScale, t > 0.0) * dp - Drow[r]);` : `var ds = t * (dp - Drow[r]);`}${f.biasGrad ? `
          dbias[(bh * u.Nq + row) * u.Nk + key] = ds;` : ''}${f.softcap ? `
          var s = 0.0;
          for (var d = 0u; d < d4; d++) {
            s += dot(Qi[r * D4 + d], Kj[c * D4 + d]);
          }
          ds *= mod_score2(bh, row, key, s).y;` : ''}
          T[e] = ds;
        }`;
}

/** Alg. 2 lines 5-18 for one key block: dK_j and dV_j, summed over the group's query heads. */
export function backwardKVWGSL(p: BackwardParams, workgroupLimit: number): string {
  const { D, Br, Bc, WG, dtype, causal, mods } = p;
  checkWorkgroupBytes('backward dK/dV', backwardKVWorkgroupBytes(p), workgroupLimit);
  const D4 = Math.ceil(D / 4);
  const f = modFlags(mods);
  // A masked entry's 0 times a NaN in its row's Q_i or dO_i must add nothing (only causal and the variants mask).
  const guard = causal || mods !== undefined;
  return `${enables(dtype)}
${mods ? `${modifiersWGSL(mods, dtype, 'backward-kv')}\n` : ''}${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<${dtype}>;
@group(0) @binding(2) var<storage, read> k: array<${dtype}>;
@group(0) @binding(3) var<storage, read> v: array<${dtype}>;
@group(0) @binding(4) var<storage, read> dout: array<${dtype}>;
@group(0) @binding(5) var<storage, read> lse: array<u32>; // f32 bits
@group(0) @binding(6) var<storage, read> Dvec: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<${dtype}>;
@group(0) @binding(8) var<storage, read_write> dv: array<${dtype}>;

const D = ${D}u;
const D4 = ${D4}u;
const Br = ${Br}u;
const Bc = ${Bc}u;
const WG = ${WG}u;
${MASKED_WGSL}

var<workgroup> Kj: array<vec4<f32>, ${Bc * D4}>;
var<workgroup> Vj: array<vec4<f32>, ${Bc * D4}>;
var<workgroup> dKj: array<vec4<f32>, ${Bc * D4}>;
var<workgroup> dVj: array<vec4<f32>, ${Bc * D4}>;
var<workgroup> Qi: array<vec4<f32>, ${Br * D4}>;
var<workgroup> dOi: array<vec4<f32>, ${Br * D4}>;
var<workgroup> T: array<f32, ${Br * Bc}>; // P, then dS
var<workgroup> Lrow: array<f32, ${Br}>;
var<workgroup> Drow: array<f32, ${Br}>;

${VISIBLE_WGSL}
${OPAQUE_WGSL}
${bitTestsWGSL(f.dropout)}
${loadVec4('q')}
${loadVec4('k')}
${loadVec4('v')}
${loadVec4('dout')}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let bk = wid.y;
  let b = bk / u.Hkv;
  let hkv = bk % u.Hkv;
  let G = u.H / u.Hkv;
  let ko = b * u.kvBatch + hkv * u.kvHead;
  let c0 = wid.x * Bc;
  let d4 = opaque(D4); // loop bounds the compiler does not unroll (see OPAQUE_WGSL)
  let br = opaque(Br);

  // Alg. 2 lines 6-7: K_j, V_j (keys past Nk read as 0); dK_j = 0, dV_j = 0.
  for (var e = lid; e < Bc * D4; e += WG) {
    let key = c0 + e / D4;
    let base = ko + min(key, u.Nk - 1u) * u.kvRow;
    Kj[e] = load_k(base, 4u * (e % D4), key < u.Nk);
    Vj[e] = load_v(base, 4u * (e % D4), key < u.Nk);
    dKj[e] = vec4<f32>(0.0);
    dVj[e] = vec4<f32>(0.0);
  }

  let Tr = (u.Nq + Br - 1u) / Br;
  // Alg. 2 line 8, causal: the first query block that sees key c0${f.window ? '; a window: the blocks that see any of K_j' : ''}.
  ${f.window ? windowQueryBlocksWGSL('Br', 'Bc') : firstQueryBlockWGSL(causal, 'Br')}
  for (var g = 0u; g < G; g++) {
    let h = hkv * G + g;
    let qo = b * u.qBatch + h * u.qHead;
    let Lo = (b * u.H + h) * u.Nq;${mods ? `
    let bh = b * u.H + h; // the query head, as the hooks take it` : ''}
    for (var i = iStart; i < ${f.window ? 'iEnd' : 'Tr'}; i++) {
      let r0 = i * Br;${f.blocks ? `
      if (mod_tile(bh, i, wid.x) == 0u) {
        continue; // the block mask leaves the tile empty (uniform: the table is read-only)
      }` : ''}
      workgroupBarrier(); // the previous block's Q_i, dO_i and T are no longer read
      // Alg. 2 line 9: Q_i (with the softmax scale folded in), dO_i, L_i, D_i; rows past Nq read as 0.
      for (var e = lid; e < Br * D4; e += WG) {
        let row = r0 + e / D4;
        let base = qo + min(row, u.Nq - 1u) * u.qRow;
        Qi[e] = load_q(base, 4u * (e % D4), row < u.Nq) * u.scale;
        dOi[e] = load_dout(base, 4u * (e % D4), row < u.Nq);
      }
      ${rowStatsWGSL()}
      workgroupBarrier();
      // Alg. 2 lines 10-11: S = scale·Q_i K_jᵀ, P = exp(S − L); 0 where masked or L = −∞.
      for (var e = lid; e < Br * Bc; e += WG) {
        let r = e / Bc;
        let c = e % Bc;
        let key = c0 + c;
        let L = Lrow[r];
        var pe = 0.0;${mods ? `
        let row = r0 + r;` : ''}
        if (key < u.Nk && sees(L)${mods ? keepWGSL(p, 'bh', 'row', 'key') : causal ? ' && visible(r0 + r, key)' : ''}) {
          var s = 0.0;
          for (var d = 0u; d < d4; d++) {
            s += dot(Qi[r * D4 + d], Kj[c * D4 + d]);
          }
          pe = exp(${mods ? scoreWGSL(p, 'bh', 'row', 'key', 's') : 's'} - L);${f.dropout ? `
          pe = select(-pe, pe, mod_drop(bh, row, key) != 0.0); // dropped: −P` : ''}
        }
        T[e] = pe;
      }
      workgroupBarrier();
      // Alg. 2 line 12: dV_j += Pᵀ dO_i.
      for (var e = lid; e < Bc * D4; e += WG) {
        let c = e / D4;
        let d = e % D4;
        var acc = vec4<f32>(0.0);
        for (var r = 0u; r < br; r++) {
          ${guard ? `let t = T[r * Bc + c];
          acc += select(vec4<f32>(0.0), t * dOi[r * D4 + d], ${f.dropout ? 'adds(t)' : 'nonzero(t)'});` : 'acc += T[r * Bc + c] * dOi[r * D4 + d];'}
        }
        dVj[e] += acc;
      }
      workgroupBarrier();
      // Alg. 2 lines 13-14: dP = dO_i V_jᵀ, dS = P ∘ (dP − D), in place.
      for (var e = lid; e < Br * Bc; e += WG) {
        ${mods ? kvDsWGSL(f) : `let pe = T[e];
        if (nonzero(pe)) {
          let r = e / Bc;
          let c = e % Bc;
          var dp = 0.0;
          for (var d = 0u; d < d4; d++) {
            dp += dot(dOi[r * D4 + d], Vj[c * D4 + d]);
          }
          T[e] = pe * (dp - Drow[r]);
        }`}
      }
      workgroupBarrier();
      // Alg. 2 line 16: dK_j += scale·dSᵀ Q_i (Q_i carries the scale).
      for (var e = lid; e < Bc * D4; e += WG) {
        let c = e / D4;
        let d = e % D4;
        var acc = vec4<f32>(0.0);
        for (var r = 0u; r < br; r++) {
          ${guard ? `let t = T[r * Bc + c];
          acc += select(vec4<f32>(0.0), t * Qi[r * D4 + d], nonzero(t));` : 'acc += T[r * Bc + c] * Qi[r * D4 + d];'}
        }
        dKj[e] += acc;
      }
    }
  }

  // Alg. 2 line 18: write dK_j, dV_j once (each thread the vec4s it accumulated).
  for (var e = lid; e < Bc * D4; e += WG) {
    let key = c0 + e / D4;
    if (key < u.Nk) {
      let at = ko + key * u.kvRow + 4u * (e % D4);
      let xk = dKj[e];
      let xv = dVj[e]${f.dropout ? ' * mu.dropScale' : ''};
      ${storeVec4('dk', dtype, 'at', '4u * (e % D4)', 'xk')}
      ${storeVec4('dv', dtype, 'at', '4u * (e % D4)', 'xv')}
    }
  }
}
`;
}

/** Alg. 2 line 15, reordered FlashAttention-2 style: dQ_i over all key blocks, written once. */
export function backwardQWGSL(p: BackwardParams, workgroupLimit: number): string {
  const { D, Br, Bc, WG, dtype, causal, mods } = p;
  checkWorkgroupBytes('backward dQ', backwardQWorkgroupBytes(p), workgroupLimit);
  const D4 = Math.ceil(D / 4);
  const f = modFlags(mods);
  const scores = f.softcap || f.alibi || f.bias !== undefined;
  return `${enables(dtype)}
${mods ? `${modifiersWGSL(mods, dtype, 'backward-q')}\n` : ''}${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<${dtype}>;
@group(0) @binding(2) var<storage, read> k: array<${dtype}>;
@group(0) @binding(3) var<storage, read> v: array<${dtype}>;
@group(0) @binding(4) var<storage, read> dout: array<${dtype}>;
@group(0) @binding(5) var<storage, read> lse: array<u32>; // f32 bits
@group(0) @binding(6) var<storage, read> Dvec: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<${dtype}>;

const D = ${D}u;
const D4 = ${D4}u;
const Br = ${Br}u;
const Bc = ${Bc}u;
const WG = ${WG}u;
${MASKED_WGSL}

var<workgroup> Qi: array<vec4<f32>, ${Br * D4}>;
var<workgroup> dOi: array<vec4<f32>, ${Br * D4}>;
var<workgroup> dQi: array<vec4<f32>, ${Br * D4}>;
var<workgroup> KV: array<vec4<f32>, ${Bc * D4}>;
var<workgroup> T: array<f32, ${Br * Bc}>; // dP, then dS
var<workgroup> Lrow: array<f32, ${Br}>;
var<workgroup> Drow: array<f32, ${Br}>;

${VISIBLE_WGSL}
${OPAQUE_WGSL}
${bitTestsWGSL(false)}
${loadVec4('q')}
${loadVec4('k')}
${loadVec4('v')}
${loadVec4('dout')}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
${QUERY_HEAD_WGSL}
  let Lo = bh * u.Nq;
  let r0 = wid.x * Br;
  let d4 = opaque(D4); // loop bounds the compiler does not unroll (see OPAQUE_WGSL)
  let bc = opaque(Bc);

  // Q_i (with the softmax scale folded in), dO_i, L_i, D_i; rows past Nq read as 0; dQ_i = 0.
  for (var e = lid; e < Br * D4; e += WG) {
    let row = r0 + e / D4;
    let base = qo + min(row, u.Nq - 1u) * u.qRow;
    Qi[e] = load_q(base, 4u * (e % D4), row < u.Nq) * u.scale;
    dOi[e] = load_dout(base, 4u * (e % D4), row < u.Nq);
    dQi[e] = vec4<f32>(0.0);
  }
  ${rowStatsWGSL()}

  ${keyBlockLoopWGSL(p, 'wid.x')}
    workgroupBarrier(); // the previous block's K_j and dS are no longer read
    // Alg. 2 line 6 (V_j), keys past Nk read as 0.
    for (var e = lid; e < Bc * D4; e += WG) {
      let key = c0 + e / D4;
      KV[e] = load_v(ko + min(key, u.Nk - 1u) * u.kvRow, 4u * (e % D4), key < u.Nk);
    }
    workgroupBarrier();
    // Alg. 2 line 13: dP = dO_i V_jᵀ.
    for (var e = lid; e < Br * Bc; e += WG) {
      let r = e / Bc;
      let c = e % Bc;
      var dp = 0.0;
      for (var d = 0u; d < d4; d++) {
        dp += dot(dOi[r * D4 + d], KV[c * D4 + d]);
      }
      T[e] = dp;
    }
    workgroupBarrier();
    // Alg. 2 line 6 (K_j), into the tile V_j used.
    for (var e = lid; e < Bc * D4; e += WG) {
      let key = c0 + e / D4;
      KV[e] = load_k(ko + min(key, u.Nk - 1u) * u.kvRow, 4u * (e % D4), key < u.Nk);
    }
    workgroupBarrier();
    // Alg. 2 lines 10-11 and 14: P = exp(scale·Q_i K_jᵀ − L) (0 where masked or L = −∞), dS = P ∘ (dP − D).
    for (var e = lid; e < Br * Bc; e += WG) {
      let r = e / Bc;
      let c = e % Bc;
      let key = c0 + c;
      let L = Lrow[r];
      var ds = 0.0;${mods ? `
      let row = r0 + r;` : ''}
      if (key < u.Nk && sees(L)${mods ? keepWGSL(p, 'bh', 'row', 'key') : causal ? ' && visible(r0 + r, key)' : ''}) {
        var s = 0.0;
        for (var d = 0u; d < d4; d++) {
          s += dot(Qi[r * D4 + d], KV[c * D4 + d]);
        }
        ${mods ? `let sg = ${scores ? 'mod_score2(bh, row, key, s)' : 'vec2<f32>(s, 1.0)'}; // (modified score, soft-cap derivative)
        ds = exp(sg.x - L) * (T[e]${f.dropout ? ' * mod_drop(bh, row, key)' : ''} - Drow[r]) * sg.y;` : 'ds = exp(s - L) * (T[e] - Drow[r]);'}
      }
      T[e] = ds;
    }
    workgroupBarrier();
    // Alg. 2 line 15: dQ_i += dS K_j (the scale is applied once, at the write).
    for (var e = lid; e < Br * D4; e += WG) {
      let r = e / D4;
      let d = e % D4;
      var acc = vec4<f32>(0.0);
      for (var c = 0u; c < bc; c++) {
        acc += T[r * Bc + c] * KV[c * D4 + d];
      }
      dQi[e] += acc;
    }
  }

  // dQ_i = scale·dQ_i, written once (rows that see no key: 0).
  for (var e = lid; e < Br * D4; e += WG) {
    let row = r0 + e / D4;
    if (row < u.Nq) {
      let at = qo + row * u.qRow + 4u * (e % D4);
      let x = dQi[e] * u.scale;
      ${storeVec4('dq', dtype, 'at', '4u * (e % D4)', 'x')}
    }
  }
}
`;
}
