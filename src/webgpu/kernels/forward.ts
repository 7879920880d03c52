/**
 * Forward kernel, FlashAttention-2 order (portable: no subgroups needed, any subgroup size): the fallback
 * where the register-tiled kernel (forward-tiled.ts, which the webgpu backend prefers) fits no tile set:
 * head dims past 512, whose O_i rows no longer fit an invocation's registers there, or large D on a
 * device with little workgroup memory (1.4–1.6 TFLOP/s on an H100 at D = 64, 128 and N = 4096).
 *
 * One workgroup owns query block Q_i (Br rows) of one head (b, h); dispatch (Tr, B·H). K_j and then V_j
 * (Bc rows each) stream through one workgroup-memory tile. Per key block:
 *   1. all threads load K_j; S = Q_i K_jᵀ (Br×Bc) is computed one entry per thread at a time;
 *   2. thread r < Br updates row r's running max m and sum l and leaves P̃ = exp(S − m) in S and the
 *      rescale factor e^(m_old − m) in `alpha`;
 *   3. all threads load V_j; each owns OPT entries of the unnormalised O_i (Br×D, in registers) and does
 *      O = diag(alpha) O + P̃ V_j.
 * O_i = O_i / l and L_i = m + log l are written once. Causal: key blocks entirely above the diagonal are
 * never loaded; the others are masked entry by entry (cheap next to the dot products).
 * Rows of Q_i, O_i, K_j and V_j sit in workgroup memory as vec4<f32> (D padded with zeros to D4 = ⌈D/4⌉ vec4s):
 * one load and one dot() do four multiply-adds, on GPUs and on lavapipe alike.
 * Workgroup memory: 16·D4·(2·Br + Bc) + 4·(Br·Bc + 2·Br) bytes (Q_i, O_i, K_j/V_j, S, alpha, l).
 * No private arrays: O_i lives in workgroup memory, each vec4 owned by one thread (private arrays indexed
 * in loops make lavapipe's LLVM compile take minutes).
 * The variants (kernels/modifiers.ts; only where the params carry `mods`): a window narrows the key blocks
 * to the band's, the block mask's empty tiles are skipped, the element rule and the score modifier apply
 * where S is computed, and dropout multiplies P̃ by its 0 or 1/(1 − p) where P̃ meets V_j (l sums P̃ itself).
 */
import { MASKED_WGSL, rowSoftmaxWGSL, QUERY_HEAD_WGSL, NAN_WGSL, NEG_INF_BITS, OPAQUE_WGSL, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, enables, type StorageType } from './common.js';
import { keepWGSL, keyBlockLoopWGSL, modFlags, modifiersWGSL, scoreWGSL } from './modifiers.js';

export interface ForwardParams {
  D: number;
  Br: number;
  Bc: number;
  /** Threads per workgroup. */
  WG: number;
  dtype: StorageType;
  causal: boolean;
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
}

export function forwardWorkgroupBytes(p: Pick<ForwardParams, 'D' | 'Br' | 'Bc'>): number {
  const D4 = Math.ceil(p.D / 4);
  return 16 * D4 * (2 * p.Br + p.Bc) + 4 * (p.Br * p.Bc + 2 * p.Br);
}

/** vec4s of O_i each thread owns (bounded so that threads stay busy enough per tile). */
export function forwardAccumulator(p: Pick<ForwardParams, 'D' | 'Br' | 'WG'>): number {
  return Math.ceil((p.Br * Math.ceil(p.D / 4)) / p.WG);
}

/**
 * WGSL: elements d0..d0+3 of the row at `base` of a storage array as a vec4 (0 past D, or when !ok).
 * Written out lane by lane: a loop over a vec4's lanes becomes a private array, which lavapipe's LLVM
 * compiles very slowly.
 */
export function loadVec4(name: string): string {
  const lane = (t: number) => `select(0.0, f32(${name}[min(base + d0 + ${t}u, last)]), ok && d0 + ${t}u < D)`;
  return `fn load_${name}(base: u32, d0: u32, ok: bool) -> vec4<f32> {
  let last = arrayLength(&${name}) - 1u;
  return vec4<f32>(${[0, 1, 2, 3].map(lane).join(', ')});
}`;
}

export function forwardWGSL(p: ForwardParams, workgroupLimit: number): string {
  const { D, Br, Bc, WG, dtype, causal, mods } = p;
  checkWorkgroupBytes('forward', forwardWorkgroupBytes(p), workgroupLimit);
  const D4 = Math.ceil(D / 4);
  const f = modFlags(mods);
  return `${enables(dtype)}
${mods ? `${modifiersWGSL(mods, dtype, 'forward')}\n` : ''}${SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<${dtype}>;
@group(0) @binding(2) var<storage, read> k: array<${dtype}>;
@group(0) @binding(3) var<storage, read> v: array<${dtype}>;
@group(0) @binding(4) var<storage, read_write> o: array<${dtype}>;
@group(0) @binding(5) var<storage, read_write> lse: array<u32>; // f32 bits

const D = ${D}u;
const D4 = ${D4}u;
const Br = ${Br}u;
const Bc = ${Bc}u;
const WG = ${WG}u;
${MASKED_WGSL}

var<workgroup> Qi: array<vec4<f32>, ${Br * D4}>;
var<workgroup> Oi: array<vec4<f32>, ${Br * D4}>;
var<workgroup> KV: array<vec4<f32>, ${Bc * D4}>;
var<workgroup> S: array<f32, ${Br * Bc}>;
var<workgroup> alpha: array<f32, ${Br}>;
var<workgroup> lrow: array<f32, ${Br}>;

${VISIBLE_WGSL}
${OPAQUE_WGSL}
${NAN_WGSL}
${loadVec4('q')}
${loadVec4('k')}
${loadVec4('v')}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
${QUERY_HEAD_WGSL}
  let r0 = wid.x * Br;
  let d4 = opaque(D4); // loop bounds the compiler does not unroll (see OPAQUE_WGSL)
  let bc = opaque(Bc);

  // Alg. 1 line 4: Q_i, with the softmax scale folded in; rows past Nq read as 0.
  // Alg. 1 line 5: O_i = 0; m = −∞ (MASKED) and l = 0 for row r live in thread r.
  for (var e = lid; e < Br * D4; e += WG) {
    let row = r0 + e / D4;
    Qi[e] = load_q(qo + min(row, u.Nq - 1u) * u.qRow, 4u * (e % D4), row < u.Nq) * u.scale;
    Oi[e] = vec4<f32>(0.0);
  }
  var m = MASKED;
  var l = 0.0;
  var poisoned = false; // a NaN logit makes the row's out and L NaN, and no other row's

  ${keyBlockLoopWGSL(p, 'wid.x')}
    workgroupBarrier(); // the previous block's V_j is no longer read
    // Alg. 1 line 7: K_j
    for (var e = lid; e < Bc * D4; e += WG) {
      let key = c0 + e / D4;
      KV[e] = load_k(ko + min(key, u.Nk - 1u) * u.kvRow, 4u * (e % D4), key < u.Nk);
    }
    workgroupBarrier();
    // Alg. 1 line 8: S = Q_i K_jᵀ, masked entries MASKED.
    for (var e = lid; e < Br * Bc; e += WG) {
      let r = e / Bc;
      let c = e % Bc;
      var s = 0.0;
      for (var d = 0u; d < d4; d++) {
        s += dot(Qi[r * D4 + d], KV[c * D4 + d]);
      }
      let key = c0 + c;
      ${mods ? `let row = r0 + r;
      var x = MASKED;
      if (key < u.Nk && row < u.Nq${keepWGSL(p, 'bh', 'row', 'key')}) {
        x = ${scoreWGSL(p, 'bh', 'row', 'key', 's')};
      }
      S[e] = x;` : `S[e] = select(MASKED, s, key < u.Nk${causal ? ' && visible(r0 + r, key)' : ''});`}
    }
    workgroupBarrier();
    // Alg. 1 line 9: running max, P̃ = exp(S − m), l = e^(m_old − m) l + rowsum(P̃).
    ${rowSoftmaxWGSL('Br', 'bc')}
    workgroupBarrier();${f.dropout ? `
    // Dropout: P̃ ∘ Z for P̃ V_j (l summed P̃ itself).
    for (var e = lid; e < Br * Bc; e += WG) {
      S[e] *= mod_drop(bh, r0 + e / Bc, c0 + e % Bc);
    }` : ''}
    // Alg. 1 line 7 (second half): V_j, into the tile K_j used.
    for (var e = lid; e < Bc * D4; e += WG) {
      let key = c0 + e / D4;
      KV[e] = load_v(ko + min(key, u.Nk - 1u) * u.kvRow, 4u * (e % D4), key < u.Nk);
    }
    workgroupBarrier();
    // Alg. 1 line 10: O_i = diag(alpha) O_i + P̃ V_j.
    for (var e = lid; e < Br * D4; e += WG) {
      let r = e / D4;
      let d = e % D4;
      var pv = vec4<f32>(0.0);
      for (var c = 0u; c < bc; c++) {
        pv += S[r * Bc + c] * KV[c * D4 + d];
      }
      Oi[e] = alpha[r] * Oi[e] + pv;
    }
  }

  // Alg. 1 lines 12-15: O_i = O_i / l, L_i = m + log l; a row that saw no key: O = 0, L = −∞.
  if (lid < Br) {
    lrow[lid] = select(l, nan(), poisoned);
    let row = r0 + lid;
    if (row < u.Nq) {
      lse[bh * u.Nq + row] = select(select(bitcast<u32>(m + log(l)), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
    }
  }
  workgroupBarrier();
  for (var e = lid; e < Br * D4; e += WG) {
    let row = r0 + e / D4;
    if (row < u.Nq) {
      let lr = lrow[e / D4];
      let x = select(Oi[e] / lr, vec4<f32>(0.0), lr == 0.0 && !is_nan(lr));
      let at = qo + row * u.qRow + 4u * (e % D4);
      ${['x', 'y', 'z', 'w'].map((c, t) => (t === 0 ? `o[at] = ${dtype}(x.x);` : `if (4u * (e % D4) + ${t}u < D) { o[at + ${t}u] = ${dtype}(x.${c}); }`)).join('\n      ')}
    }
  }
}
`;
}
