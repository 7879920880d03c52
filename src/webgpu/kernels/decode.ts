/**
 * Split-KV decode (Flash-Decoding): the schedule for few queries per sequence (Nq ≤ 16: single-token
 * decode, speculative decoding) against many keys, where the work is reading K and V once, at the speed
 * of the memory, and there are too few query blocks to fill the GPU.
 *
 * One workgroup owns one key/value head hk of one batch row b, up to R of the G·Nq query rows that share
 * it (G = H / Hkv query heads, Nq queries each: every K/V element is read once per group, not once per
 * query head), and one split: the keys [s·chunk, min((s+1)·chunk, length)) (from the window's start, with
 * a window). Dispatch (splits, Hkv·rowChunks, B).
 * Per key block (Bc keys):
 *   1. the block's K_j and V_j, loaded into registers while the block before was being computed (each
 *      thread issues all its loads of a block at once: coalesced, consecutive threads read consecutive
 *      vec4s of a row; f16 rows as vec4<f16>, 8 bytes a load), are stored into workgroup memory as f32,
 *      rows padded by one vec4 so that step 2's column reads hit distinct banks; then the next block's
 *      loads are issued;
 *   2. S = Q K_jᵀ (R×Bc), one entry per thread at a time, masked past the sequence's length (and, causal,
 *      above the diagonal: query i sees key j ≤ i + length − Nq);
 *   3. thread r < R updates row r's running max m and sum l (in registers) and leaves P̃ = exp(S − m) in S
 *      and e^(m_old − m) in alpha;
 *   4. each thread owns vec4s of O (R×D, in workgroup memory) and does O = diag(alpha) O + P̃ V_j.
 * The split's O / l and L = m + log l are written as a partial (splits > 1), which the merge kernel below
 * combines with the log-sum-exp rule, or as the final out and lse (one split).
 * Keys are addressed through `kvRow`, `kvHead` and a page: the batch row's own (`kvPage` = its batch stride)
 * for contiguous K and V in either layout, the sequence's slot in a contiguous KV cache (`cache`: each
 * batch row's slot and length come from a buffer), or the page the block table names (`paged`).
 * The variants a decode step needs (Mistral's sliding window, Gemma's soft-cap, ALiBi) come with `mods`
 * (decodeModsWGSL): scores go through the modifiers' hooks, and with a window each split covers only the
 * keys some query sees, [length − Nq − left, length): a decode step reads left + Nq keys however long
 * the sequence. Bias, mask, block mask and dropout stay with the prefill kernels.
 * Workgroup memory: 16·(2·Bc·(D4+1) + 2·R·D4) + 4·(R·Bc + 2·R) bytes (K_j, V_j, Q, O, S, alpha, l).
 * No private arrays (O lives in workgroup memory): lavapipe's LLVM compiles those very slowly.
 */
import { MASKED_WGSL, rowSoftmaxWGSL, NAN_WGSL, NEG_INF_BITS, OPAQUE_WGSL, checkWorkgroupBytes, enables, type StorageType } from './common.js';
import { modFlags, modifiersWGSL } from './modifiers.js';

export interface DecodeParams {
  D: number;
  dtype: StorageType;
  /** Keys per block. */
  Bc: number;
  /** Query rows (of the G·Nq sharing a key/value head) per workgroup. */
  R: number;
  /** Threads per workgroup. */
  WG: number;
  /** K and V rows start at multiples of 4 elements and D % 4 == 0: vec4 loads. */
  vec: boolean;
  causal: boolean;
  /** Batch row b reads its slot and length from `seqs` (a KV cache) instead of slot b, length Nk. */
  cache: boolean;
  /** Keys go through the block table (a paged KV cache). */
  paged: boolean;
  /** Write partials for the merge kernel (splits > 1) instead of the final out and lse. */
  split: boolean;
  /**
   * The variants' flags (kernels/modifiers.ts), only when the call has some: 'w' window, 'a' ALiBi,
   * 's' soft-cap (DECODE_MOD_FLAGS); absent, the kernel is the plain (or causal) one.
   */
  mods?: string;
  /**
   * Loops over D4 and Bc with constant bounds, which GPU compilers unroll (on software adapters they run
   * to opaque() bounds instead: lavapipe's LLVM compiles unrolled loops very slowly).
   */
  unroll: boolean;
}

/** The uniform block of the decode and merge kernels, in declaration order: all u32 but `scale`. */
export const DECODE_SIZE_FIELDS = [
  'B',
  'H',
  'Hkv',
  'Nq',
  'Nk',
  'qBatch',
  'qRow',
  'qHead',
  'kvPage',
  'kvRow',
  'kvHead',
  'pageSize',
  'maxPages',
  'rowChunks',
  'splits',
  'chunk',
] as const;
export type DecodeSizes = Record<(typeof DECODE_SIZE_FIELDS)[number], number> & { scale: number };

export const DECODE_SIZES_WGSL = `struct Sizes {
${DECODE_SIZE_FIELDS.map((f) => `  ${f}: u32,`).join('\n')}
  scale: f32,
}`;

/** The uniform block as bytes (17 four-byte fields, padded to a multiple of 16). */
export function decodeSizesBytes(s: DecodeSizes): ArrayBuffer {
  const into = new ArrayBuffer(80);
  const u = new Uint32Array(into);
  DECODE_SIZE_FIELDS.forEach((f, i) => (u[i] = s[f]));
  new Float32Array(into)[DECODE_SIZE_FIELDS.length] = s.scale;
  return into;
}

export function decodeWorkgroupBytes(p: Pick<DecodeParams, 'D' | 'Bc' | 'R'>): number {
  const D4 = Math.ceil(p.D / 4);
  return 16 * (2 * p.Bc * (D4 + 1) + 2 * p.R * D4) + 4 * (p.R * p.Bc + 2 * p.R);
}

/** WGSL: `load_<name>(base, d4, ok)`: elements 4·d4 .. 4·d4+3 of the row at element `base`, as f32 (0 past D or when !ok). */
function loadRow(name: string, vec: boolean): string {
  if (vec) {
    return `fn load_${name}(base: u32, d4: u32, ok: bool) -> vec4<f32> {
  return select(vec4<f32>(0.0), vec4<f32>(${name}[base / 4u + d4]), ok);
}`;
  }
  const lane = (t: number) => `select(0.0, f32(${name}[min(base + 4u * d4 + ${t}u, last)]), ok && 4u * d4 + ${t}u < D)`;
  return `fn load_${name}(base: u32, d4: u32, ok: bool) -> vec4<f32> {
  let last = arrayLength(&${name}) - 1u;
  return vec4<f32>(${[0, 1, 2, 3].map(lane).join(', ')});
}`;
}

/**
 * What the decode kernels declare alike: the outputs (partials, or out and lse), the cache's bindings
 * (each batch row's slot and length; the block table), and `rows`: the workgroup's slot, key/value head
 * hk and first row row0 (private variables each kernel sets), its rows' heads and queries, and
 * key_base(key), the element offset of key `key` of kv head hk in the current slot.
 */
export function decodeBindingsWGSL(p: Pick<DecodeParams, 'dtype' | 'cache' | 'paged' | 'split'>): { outputs: string; extra: string; rows: string } {
  const { dtype, cache, paged, split } = p;
  const outputs = split
    ? `@group(0) @binding(4) var<storage, read_write> opart: array<vec4<f32>>; // (B·H·Nq, splits, D4)
@group(0) @binding(5) var<storage, read_write> lpart: array<u32>; // (B·H·Nq, splits), f32 bits`
    : `@group(0) @binding(4) var<storage, read_write> o: array<${dtype}>;
@group(0) @binding(5) var<storage, read_write> lse: array<u32>; // f32 bits`;
  const extra = [
    cache ? `@group(0) @binding(6) var<storage, read> seqs: array<vec2<u32>>; // (slot, length) of each batch row` : '',
    paged ? `@group(0) @binding(${cache ? 7 : 6}) var<storage, read> table: array<i32>; // page of (slot, page index)` : '',
  ].filter((s) => s).join('\n');
  const keyBase = paged
    ? `let page = u32(table[slot * u.maxPages + key / u.pageSize]);
  return page * u.kvPage + (key % u.pageSize) * u.kvRow + hk * u.kvHead;`
    : `return slot * u.kvPage + key * u.kvRow + hk * u.kvHead;`;
  const rows = `var<private> slot: u32;
var<private> hk: u32;
var<private> row0: u32; // the first of the G·Nq rows of (b, hk) this workgroup owns

/** Row r of the workgroup is query row row0 + r of the group: head hk·G + (row0 + r) / Nq, query (row0 + r) % Nq. */
fn ok_row(r: u32) -> bool { return row0 + r < (u.H / u.Hkv) * u.Nq; }
fn head_of(r: u32) -> u32 { return hk * (u.H / u.Hkv) + (row0 + r) / u.Nq; }
fn query_of(r: u32) -> u32 { return (row0 + r) % u.Nq; }
/** Row r's index in lse (B, H, Nq) of batch row b; times u.splits, its first partial. */
fn lse_row(b: u32, r: u32) -> u32 { return (b * u.H + head_of(r)) * u.Nq + query_of(r); }
/** Element offset of row r's query in q of batch row b (out has q's layout). */
fn q_row(b: u32, r: u32) -> u32 { return b * u.qBatch + query_of(r) * u.qRow + head_of(r) * u.qHead; }

/** Element offset of key \`key\` (head hk) of the current slot. */
fn key_base(key: u32) -> u32 {
  ${keyBase}
}`;
  return { outputs, extra, rows };
}

/** The variants' flags the decode kernels run (the others go to the prefill kernels). */
export const DECODE_MOD_FLAGS = 'was';

/**
 * What both decode kernels add for `mods` (all '' without): bind group 1 and the hooks
 * (kernels/modifiers.ts); with a window, `first_key(len)`, the first key any query of a sequence of `len`
 * keys sees (the window's start: splits begin there); and rowOf, the lines that set, for workgroup row r,
 * `bh` (its head b·H + h) and `row`, the row to pass to the hooks. The hooks align the diagonal at
 * u.Nk − u.Nq; a cache's sequence of `len` keys (u.Nk: the longest) aligns it at len − u.Nq, so the hooks
 * take the query shifted by len − u.Nk. That shift wraps below 0 as a u32, and the hooks' i32 arithmetic
 * (row + Nk − Nq) undoes the wrap exactly.
 */
export function decodeModsWGSL(p: Pick<DecodeParams, 'dtype' | 'mods'>): { decls: string; keyStart: string; rowOf: (r: string, suffix: string, indent: string) => string } {
  if (!p.mods) return { decls: '', keyStart: 's * u.chunk', rowOf: () => '' };
  const f = modFlags(p.mods);
  const firstKey = `/** The first key a query of a sequence of len keys sees: the window's start (0 without a left bound). */
fn first_key(len: u32) -> u32 {
  return select(0u, u32(max(0, i32(len) - i32(u.Nq) - mu.left)), mu.left >= 0);
}`;
  return {
    decls: [modifiersWGSL(p.mods, p.dtype, 'forward'), ...(f.window ? [firstKey] : [])].join('\n'),
    keyStart: f.window ? 'first_key(len) + s * u.chunk' : 's * u.chunk',
    rowOf: (r, suffix, indent) => `let bh${suffix} = b * u.H + head_of(${r});\n${indent}let row${suffix} = query_of(${r}) + len - u.Nk;`,
  };
}

/** ` && <the band's test>` for key `key` of row r: the window's (mod_keep), or causal's, or ''. */
export function decodeKeepWGSL(p: Pick<DecodeParams, 'causal' | 'mods'>, r: string, key: string, suffix: string): string {
  if (modFlags(p.mods).window) return ` && mod_keep(bh${suffix}, row${suffix}, ${key})`;
  return p.causal ? ` && ${key} + u.Nq <= query_of(${r}) + len` : '';
}

/** The modified score of scaled score `x` (mod_score with ALiBi or the soft-cap), else `x`. */
export function decodeScoreWGSL(p: Pick<DecodeParams, 'mods'>, key: string, x: string, suffix: string): string {
  const f = modFlags(p.mods);
  return f.alibi || f.softcap ? `mod_score(bh${suffix}, row${suffix}, ${key}, ${x})` : x;
}

export function decodeWGSL(p: DecodeParams, workgroupLimit: number): string {
  const { D, dtype, Bc, R, WG, vec, cache, split, unroll } = p;
  checkWorkgroupBytes('decode', decodeWorkgroupBytes(p), workgroupLimit);
  const D4 = Math.ceil(D / 4);
  const KS = D4 + 1;
  // Loads per thread per block, one register pair (K, V) each: the block's Bc·D4 vec4s over WG threads.
  const LPT = Math.ceil((Bc * D4) / WG);
  const slots = Array.from({ length: LPT }, (_, i) => i);
  const guard = (i: number) => ((i + 1) * WG > Bc * D4 ? ` && e < ${Bc * D4}u` : '');
  const registers = slots.map((i) => `var<private> kr${i}: vec4<f32>;\nvar<private> vr${i}: vec4<f32>;`).join('\n');
  const fetch = slots
    .map(
      (i) => `  {
    let e = me + ${i * WG}u;
    let key = c0 + e / D4;
    let base = key_base(min(key, keyEnd - 1u));
    let ok = key < keyEnd${guard(i)};
    kr${i} = load_k(base, e % D4, ok);
    vr${i} = load_v(base, e % D4, ok);
  }`,
    )
    .join('\n');
  const stash = slots
    .map((i) => {
      const store = `Ks[(e / D4) * KS + e % D4] = kr${i};\n    Vs[(e / D4) * KS + e % D4] = vr${i};`;
      return `  {
    let e = me + ${i * WG}u;
    ${guard(i) ? `if (e < ${Bc * D4}u) {\n    ${store}\n    }` : store}
  }`;
    })
    .join('\n');
  const d4Bound = unroll ? 'D4' : 'd4n';
  const bcBound = unroll ? 'Bc' : 'bc';
  const kvType = vec ? `vec4<${dtype}>` : dtype;
  const { outputs, extra, rows } = decodeBindingsWGSL(p);
  const mods = decodeModsWGSL(p);
  const write = split
    ? `  // The split's partial: O / l and L (−∞ for a split that saw no key: its weight in the merge is 0).
  if (lid < R && ok_row(lid)) {
    let part = lse_row(b, lid) * u.splits + s;
    lpart[part] = select(select(bitcast<u32>(m + log(l)), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
  }
  for (var e = lid; e < R * D4; e += WG) {
    let r = e / D4;
    if (ok_row(r)) {
      let lr = lrow[r];
      let part = lse_row(b, r) * u.splits + s;
      opart[part * D4 + e % D4] = select(Os[e] / lr, vec4<f32>(0.0), lr == 0.0 && !is_nan(lr));
    }
  }`
    : `  if (lid < R && ok_row(lid)) {
    lse[lse_row(b, lid)] = select(select(bitcast<u32>(m + log(l)), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
  }
  for (var e = lid; e < R * D4; e += WG) {
    let r = e / D4;
    if (ok_row(r)) {
      let lr = lrow[r];
      let x = select(Os[e] / lr, vec4<f32>(0.0), lr == 0.0 && !is_nan(lr));
      let at = q_row(b, r) + 4u * (e % D4);
      ${['x', 'y', 'z', 'w'].map((c, t) => (t === 0 ? `o[at] = ${dtype}(x.x);` : `if (4u * (e % D4) + ${t}u < D) { o[at + ${t}u] = ${dtype}(x.${c}); }`)).join('\n      ')}
    }
  }`;
  return `${enables(dtype)}
${DECODE_SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<${dtype}>;
@group(0) @binding(2) var<storage, read> k: array<${kvType}>;
@group(0) @binding(3) var<storage, read> v: array<${kvType}>;
${outputs}
${extra}
${mods.decls ? `${mods.decls}\n` : ''}
const D = ${D}u;
const D4 = ${D4}u;
const KS = ${KS}u; // row stride of the K_j and V_j tiles, in vec4s (one of padding)
const Bc = ${Bc}u;
const R = ${R}u;
const WG = ${WG}u;
${MASKED_WGSL}

var<workgroup> Ks: array<vec4<f32>, ${Bc * KS}>;
var<workgroup> Vs: array<vec4<f32>, ${Bc * KS}>;
var<workgroup> Qs: array<vec4<f32>, ${R * D4}>;
var<workgroup> Os: array<vec4<f32>, ${R * D4}>;
var<workgroup> S: array<f32, ${R * Bc}>;
var<workgroup> alpha: array<f32, ${R}>;
var<workgroup> lrow: array<f32, ${R}>;

${OPAQUE_WGSL}
${NAN_WGSL}
${loadRow('k', vec)}
${loadRow('v', vec)}

${registers}
var<private> me: u32; // local_invocation_index
${rows}

/** Issue this thread's loads of the block at key c0 (K_j and V_j into registers). */
fn fetch(c0: u32, keyEnd: u32) {
${fetch}
}

/** Store the registers of fetch() into the K_j and V_j tiles. */
fn stash() {
${stash}
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  me = lid;
  let s = wid.x;
  let b = wid.z;
  hk = wid.y / u.rowChunks;
  row0 = (wid.y % u.rowChunks) * R;
  ${cache ? 'let info = seqs[b];\n  slot = info.x;\n  let len = info.y;' : 'slot = b;\n  let len = u.Nk;'}
  let keyStart = ${mods.keyStart};
  let keyEnd = min(len, keyStart + u.chunk);
  let d4n = opaque(D4); // loop bounds the compiler does not unroll (see OPAQUE_WGSL)
  let bc = opaque(Bc);

  // Q (R rows, the scale folded in; rows past the group read as 0) and O = 0.
  for (var e = lid; e < R * D4; e += WG) {
    let r = e / D4;
    let d4 = e % D4;
    var x = vec4<f32>(0.0);
    if (ok_row(r)) {
      let at = q_row(b, r) + 4u * d4;
      x = vec4<f32>(${[0, 1, 2, 3].map((t) => `select(0.0, f32(q[min(at + ${t}u, arrayLength(&q) - 1u)]), 4u * d4 + ${t}u < D)`).join(', ')});
    }
    Qs[e] = x * u.scale;
    Os[e] = vec4<f32>(0.0);
  }
  var m = MASKED;
  var l = 0.0;
  var poisoned = false; // a NaN logit makes the row's out and L NaN, and no other row's

  if (keyStart < keyEnd) {
    fetch(keyStart, keyEnd);
  }
  for (var c0 = keyStart; c0 < keyEnd; c0 += Bc) {
    workgroupBarrier(); // the previous block's K_j, V_j and P̃ are no longer read
    stash();
    workgroupBarrier();
    if (c0 + Bc < keyEnd) {
      fetch(c0 + Bc, keyEnd); // in flight while this block is computed
    }
    // S = Q K_jᵀ, masked past the length and (causal) above the diagonal.
    for (var e = lid; e < R * Bc; e += WG) {
      let r = e / Bc;
      let j = e % Bc;
      var x = 0.0;
      for (var d = 0u; d < ${d4Bound}; d++) {
        x += dot(Qs[r * D4 + d], Ks[j * KS + d]);
      }
      let key = c0 + j;
      ${p.mods ? `${mods.rowOf('r', '', '      ')}\n      ` : ''}S[e] = select(MASKED, ${decodeScoreWGSL(p, 'key', 'x', '')}, key < keyEnd${decodeKeepWGSL(p, 'r', 'key', '')});
    }
    workgroupBarrier();
    // Running max, P̃ = exp(S − m), l = e^(m_old − m) l + rowsum(P̃).
    ${rowSoftmaxWGSL('R', bcBound)}
    workgroupBarrier();
    // O = diag(alpha) O + P̃ V_j.
    for (var e = lid; e < R * D4; e += WG) {
      let r = e / D4;
      let d = e % D4;
      var pv = vec4<f32>(0.0);
      for (var c = 0u; c < ${bcBound}; c++) {
        pv += S[r * Bc + c] * Vs[c * KS + d];
      }
      Os[e] = alpha[r] * Os[e] + pv;
    }
  }

  if (lid < R) {
    lrow[lid] = select(l, nan(), poisoned);
  }
  workgroupBarrier();
${write}
}
`;
}

export interface MergeParams {
  D: number;
  dtype: StorageType;
  WG: number;
}

/**
 * The merge of Flash-Decoding: one invocation per (query row, vec4 of D) combines the splits' partials
 * (O_s, L_s) as L = log Σ_s e^(L_s), O = Σ_s e^(L_s − L) O_s, and writes out in q's layout and lse.
 * Splits that saw no key (L_s = −∞) weigh 0; a row with none gives out = 0 and L = −∞; a NaN stays NaN.
 * Dispatch (⌈rows·D4 / WG⌉ up to 65535, then y). No workgroup memory.
 */
export function mergeWGSL(p: MergeParams): string {
  const { D, dtype, WG } = p;
  const D4 = Math.ceil(D / 4);
  return `${enables(dtype)}
${DECODE_SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> opart: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> lpart: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<${dtype}>;
@group(0) @binding(4) var<storage, read_write> lse: array<u32>; // f32 bits

const D = ${D}u;
const D4 = ${D4}u;
${OPAQUE_WGSL}
${NAN_WGSL}

fn is_neg_inf(bits: u32) -> bool { return bits == ${NEG_INF_BITS}; }

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * 65535u + wid.x) * ${WG}u + lid;
  let rows = u.B * u.H * u.Nq;
  if (e >= rows * D4) { return; }
  let row = e / D4;
  let d4 = e % D4;
  let splits = opaque(u.splits);
  var mx = -3.0e38;
  var seen = false;
  var poisoned = false;
  for (var s = 0u; s < splits; s++) {
    let bits = lpart[row * u.splits + s];
    let x = bitcast<f32>(bits);
    poisoned = poisoned || is_nan(x);
    if (!is_neg_inf(bits) && !is_nan(x)) {
      mx = max(mx, x);
      seen = true;
    }
  }
  var sum = 0.0;
  var acc = vec4<f32>(0.0);
  if (seen) {
    for (var s = 0u; s < splits; s++) {
      let bits = lpart[row * u.splits + s];
      if (!is_neg_inf(bits)) {
        let w = exp(bitcast<f32>(bits) - mx);
        sum += w;
        acc += w * opart[(row * u.splits + s) * D4 + d4];
      }
    }
  }
  var x = select(vec4<f32>(0.0), acc / sum, seen);
  var L = select(${NEG_INF_BITS}, bitcast<u32>(mx + log(sum)), seen);
  if (poisoned) {
    x = vec4<f32>(nan());
    L = bitcast<u32>(nan());
  }
  // row = (b·H + h)·Nq + i
  let i = row % u.Nq;
  let h = (row / u.Nq) % u.H;
  let b = row / (u.Nq * u.H);
  if (d4 == 0u) {
    lse[row] = L;
  }
  let at = b * u.qBatch + i * u.qRow + h * u.qHead + 4u * d4;
  ${['x', 'y', 'z', 'w'].map((c, t) => (t === 0 ? `o[at] = ${dtype}(x.x);` : `if (4u * d4 + ${t}u < D) { o[at + ${t}u] = ${dtype}(x.${c}); }`)).join('\n  ')}
}
`;
}
