/**
 * The KV cache's append: n new tokens of k and v (B, n, Hkv, D) copied into the pools at each batch row's
 * slot and next positions, through the block table (a contiguous cache's table maps slot s to page s).
 * One invocation per element of the new k (and the same of v); nothing else of the pools is touched, so
 * what is cached is never copied. Uses the decode kernels' uniform block (B, Hkv, Nq = n, the pool's
 * kvPage / kvRow / kvHead strides, pageSize, maxPages). Dispatch (⌈B·n·Hkv·D / WG⌉ up to 65535, then y).
 */
import { enables, type StorageType } from './common.js';
import { DECODE_SIZES_WGSL } from './decode.js';

export interface AppendParams {
  D: number;
  dtype: StorageType;
  WG: number;
}

export function appendWGSL(p: AppendParams): string {
  const { D, dtype, WG } = p;
  return `${enables(dtype)}
${DECODE_SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> knew: array<${dtype}>;
@group(0) @binding(2) var<storage, read> vnew: array<${dtype}>;
@group(0) @binding(3) var<storage, read_write> kpool: array<${dtype}>;
@group(0) @binding(4) var<storage, read_write> vpool: array<${dtype}>;
@group(0) @binding(5) var<storage, read> seqs: array<vec2<u32>>; // (slot, first new position) of each batch row
@group(0) @binding(6) var<storage, read> table: array<i32>;

const D = ${D}u;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * 65535u + wid.x) * ${WG}u + lid;
  let width = u.Hkv * D;
  let perRow = u.Nq * width;
  if (e >= u.B * perRow) { return; }
  let b = e / perRow;
  let t = (e % perRow) / width;
  let inner = e % width; // hk·D + d
  let info = seqs[b];
  let pos = info.y + t;
  let page = u32(table[info.x * u.maxPages + pos / u.pageSize]);
  let at = page * u.kvPage + (pos % u.pageSize) * u.kvRow + inner;
  kpool[at] = knew[e];
  vpool[at] = vnew[e];
}
`;
}

/**
 * The chunked prefill's gather (webgpu/cache.ts, CacheStore.prefix): the cached rows of B slots, through
 * the block table, into k and v buffers of (B, L, Hkv, D), each slot's rows at the end of its row of L
 * (L = u.Nk, the longest slot; the positions before a shorter slot's rows are left as they are: zeros in a
 * new buffer). It copies 4-byte words, whatever the dtype: u.kvRow is a token's row in words (Hkv·D
 * elements of a row whose bytes are a multiple of 4) and u.kvPage a page's. One invocation per word of
 * the output, one dispatch for every page of every slot (a copyBufferToBuffer per page cost about 7 µs
 * of GPU time each on an H100). Dispatch (⌈B·L·words / WG⌉ up to 65535, then y).
 */
export function gatherWGSL(p: { WG: number }): string {
  const { WG } = p;
  return `${DECODE_SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> kpool: array<u32>;
@group(0) @binding(2) var<storage, read> vpool: array<u32>;
@group(0) @binding(3) var<storage, read_write> kout: array<u32>;
@group(0) @binding(4) var<storage, read_write> vout: array<u32>;
@group(0) @binding(5) var<storage, read> seqs: array<vec2<u32>>; // (slot, length) of each batch row
@group(0) @binding(6) var<storage, read> table: array<i32>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * 65535u + wid.x) * ${WG}u + lid;
  let words = u.kvRow;
  let perRow = u.Nk * words;
  if (e >= u.B * perRow) { return; }
  let b = e / perRow;
  let t = (e % perRow) / words;
  let info = seqs[b];
  let skip = u.Nk - info.y;
  if (t < skip) { return; }
  let pos = t - skip;
  let page = u32(table[info.x * u.maxPages + pos / u.pageSize]);
  let at = page * u.kvPage + (pos % u.pageSize) * words + e % words;
  kout[e] = kpool[at];
  vout[e] = vpool[at];
}
`;
}
