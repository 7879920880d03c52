/**
 * What the subgroup-matrix (tensor core) kernels share: the 16×16×16 f16→f32 fragment types, the WGSL
 * enables, and the helpers that unroll their loops at generation time (these kernels never run on
 * lavapipe, so unrolling costs no compile time there).
 */
import { QUERY_HEAD_WGSL } from './common.js';
import { keepWGSL, modFlags } from './modifiers.js';

/** The M = N = K of every matrix operation. */
export const FRAGMENT = 16;

export const LEFT = 'subgroup_matrix_left<f16, 16, 16>';
export const RIGHT = 'subgroup_matrix_right<f16, 16, 16>';
export const RESULT = 'subgroup_matrix_result<f32, 16, 16>';

export const MATRIX_ENABLES = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;`;

export const LOG2E_WGSL = 'const LOG2E = 1.4426950408889634;';

/** [0, n). */
export const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);
/** Every (i, j) with i < a, j < b, i major. */
export const grid = (a: number, b: number): Array<readonly [number, number]> => range(a).flatMap((i) => range(b).map((j) => [i, j] as const));
/** The lines `f(i)` for i < n, joined by newlines. */
export const lines = (n: number, f: (i: number) => string): string => range(n).map(f).join('\n');

/**
 * `x = op(x, shuffled x)` over the invocations that share a row: lanes `stride` apart, for SHARES =
 * SGS / stride lanes per row (no shuffle when one lane owns a row).
 */
export function combine(x: string, op: (a: string, b: string) => string, stride: number, shares: number): string {
  return range(Math.log2(shares))
    .map((i) => `${x} = ${op(x, `subgroupShuffleXor(${x}, ${stride << i}u)`)};`)
    .join('\n    ');
}

/**
 * Tiles of `rows` rows of D f16 (each read from a binding as array<vec4<f16>>: K_j and V_j, or Q_i and
 * dO_i, or the hi and lo halves of split f32 ones) staged into the f16 workgroup array T (row stride DS)
 * by the WG invocations (`lid`) of a workgroup, through registers: `declare` makes them, `fetch(j)` issues
 * block j's loads (the last block moved back to end at n, as the kernels' tails are), `store` writes them
 * to T. Fetching block j + 1 right after storing block j lets its loads arrive while block j is computed.
 * The WGSL names: `base`, the head's offset in the bindings; `n`, their rows; `stride`, their row stride
 * (a multiple of 4: D is a multiple of 16); `block`, the constant rows per block.
 */
export interface Staging {
  D: number;
  rows: number;
  WG: number;
  /** Each tile: the binding it is read from (at `offset` vec4s, if given), its registers' prefix, its offset in T. */
  tiles: Array<{ from: string; reg: string; at: string; offset?: string }>;
  base: string;
  n: string;
  stride: string;
  block: string;
}

export function tileStaging(p: Staging): { declare: string; fetch: (j: string) => string; store: string } {
  const { D, rows, WG, tiles } = p;
  const D4 = D / 4; // vec4s of a row
  const LOADS = Math.ceil((rows * D4) / WG); // vec4s of each tile each invocation moves
  const guard = (n: number, body: string) => ((n + 1) * WG <= rows * D4 ? body : `\n      if (e < ${rows * D4}u) {${body}\n      }`);
  const each = (body: (n: number) => string) =>
    range(LOADS)
      .map((n) => `    {\n      let e = lid + ${n * WG}u;${guard(n, body(n))}\n    }`)
      .join('\n');
  const first = `${[...new Set(tiles.map((t) => t.from))].join('')}4`; // the block's first vec4
  return {
    declare: lines(LOADS, (n) => tiles.map((t) => `  var ${t.reg}x${n}: vec4<f16>;`).join('\n')),
    fetch: (j) => `    let ${first} = (${p.base} + min((${j}) * ${p.block}, ${p.n} - ${p.block}) * ${p.stride}) / 4u;
${each(
  (n) => `
      let g = ${first} + (e / ${D4}u) * (${p.stride} / 4u) + e % ${D4}u;
${tiles.map((t) => `      ${t.reg}x${n} = ${t.from}[g${t.offset ? ` + ${t.offset}` : ''}];`).join('\n')}`,
)}`,
    store: each(
      (n) => `
      let at = (e / ${D4}u) * DS + 4u * (e % ${D4}u);
${tiles.map(({ reg, at }) => `      T[${at} + at] = ${reg}x${n}.x; T[${at} + at + 1u] = ${reg}x${n}.y; T[${at} + at + 2u] = ${reg}x${n}.z; T[${at} + at + 3u] = ${reg}x${n}.w;`).join('\n')}`,
    ),
  };
}

/**
 * K_j and V_j of Bc keys (bindings k, v; offset ko) into T at KT and VT: the forward's and dQ's staging.
 * `split`: f32 inputs split into f16 hi and lo halves (kernels/split.ts): also their lo halves, kLo4 and
 * vLo4 vec4s further on, into T at KLT and VLT.
 */
export function kvStaging(p: { D: number; Bc: number; WG: number; split?: boolean }): { declare: string; fetch: (j: string) => string; store: string } {
  const tiles = p.split
    ? [
        { from: 'k', reg: 'k', at: 'KT' },
        { from: 'k', reg: 'kl', at: 'KLT', offset: 'kLo4' },
        { from: 'v', reg: 'v', at: 'VT' },
        { from: 'v', reg: 'vl', at: 'VLT', offset: 'vLo4' },
      ]
    : [
        { from: 'k', reg: 'k', at: 'KT' },
        { from: 'v', reg: 'v', at: 'VT' },
      ];
  return tileStaging({ D: p.D, rows: p.Bc, WG: p.WG, tiles, base: 'ko', n: 'u.Nk', stride: 'u.kvRow', block: 'Bc' });
}

/**
 * The entry point and opening lines of a kernel whose workgroup is W warps of SGS invocations owning Br
 * query rows of one head, BrW = Br/W per warp (the forward and dQ kernels; WGSL constants Br, BrW, Bc):
 * this invocation's warp w, its row r of the warp's rows and its share `part` of that row, sw the warp's
 * region (BrW·Bc: `region` says of what), the head's offsets qo (q-like tensors) and ko (k, v), the
 * block's first row r0 (the last block moved back to end at Nq; causal: blocks in reverse order, the
 * heaviest first), the warp's first row w0 and this invocation's row.
 */
export function warpRowsWGSL(p: { W: number; SGS: number; causal: boolean }, region: string): string {
  return `@compute @workgroup_size(${p.W * p.SGS})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
  let w = lid / ${p.SGS}u;  // this invocation's warp
  let r = lane % BrW;      // its row of the warp's rows
  let part = lane / BrW;   // its share of the row's keys
  let sw = w * BrW * Bc;   // the warp's ${region}
${QUERY_HEAD_WGSL}
  let Tr = (u.Nq + Br - 1u) / Br;
  let i = ${p.causal ? 'Tr - 1u - wid.x' : 'wid.x'};
  let r0 = min(i * Br, u.Nq - Br); // the last block overlaps the one before
  let w0 = r0 + w * BrW;           // the warp's first row
  let row = w0 + r;`;
}

/**
 * The element rule of a kernel with `mods` for (row, key) of head bh, as a WGSL boolean (keepWGSL's
 * rule: the band, the mask and the block mask; `true` where there is none).
 */
export function matrixKeepWGSL(p: { causal: boolean; mods?: string }, bh: string, row: string, key: string): string {
  return keepWGSL(p, bh, row, key).replace(/^ && /, '') || 'true';
}

/**
 * WGSL for walking one axis of a kernel's blocks through the tile table (the block-mask flag), the other
 * axis fixed. A block of this kernel is tile x of the table along the walked axis ('keys': the forward's
 * and dQ's key blocks, 'rows': dK/dV's query blocks), but along the fixed axis it may span two tiles, a0
 * and a1: the tail block is moved back to end at N, over the tile before it, and writes every row (or key)
 * it holds. `block_class`: its class, EMPTY (0) only where both tiles are, FULL (1) where both are;
 * `next_block`: the first block from x on (up to n) that is not empty.
 */
export function tileWalkWGSL(axis: 'keys' | 'rows'): string {
  const tile = (a: string) => (axis === 'keys' ? `mod_tile(bh, ${a}, x)` : `mod_tile(bh, x, ${a})`);
  return `fn block_class(bh: u32, a0: u32, a1: u32, x: u32) -> u32 {
  let c0 = ${tile('a0')};
  let c1 = ${tile('a1')};
  return select(2u, c0, c0 == c1);
}
fn next_block(bh: u32, a0: u32, a1: u32, x0: u32, n: u32) -> u32 {
  var x = x0;
  while (x < n && (${tile('a0')} | ${tile('a1')}) == 0u) {
    x++;
  }
  return x;
}`;
}

/**
 * The loop over a kernel's blocks x in [first, end) (key blocks j, or dK/dV's query blocks i) with the
 * staging's loads of the next block in flight: `open` issues the first block's loads and opens the loop,
 * `next` (inside it, once the block is stored) issues the next block's. With the block-mask flag
 * (`tiles`: the tile table's two tiles a0, a1 along the other axis, see tileWalkWGSL) the loop visits
 * only blocks that are not empty, and `full` says the element rule can be skipped. `indent`: open's;
 * next's is two spaces deeper.
 */
export function blockLoopWGSL(o: {
  x: string;
  first: string;
  end: string;
  fetch: (x: string) => string;
  indent: string;
  tiles?: { a0: string; a1: string };
}): { open: string; next: string } {
  const { x, first, end, fetch, indent: i } = o;
  const n = `${i}  `;
  if (!o.tiles) {
    return {
      open: `${i}if (${first === '0u' ? `${end} > 0u` : `${first} < ${end}`}) {
${fetch(first)}
${i}}
${i}for (var ${x} = ${first}; ${x} < ${end}; ${x}++) {`,
      next: `${n}if (${x} + 1u < ${end}) {
${fetch(`${x} + 1u`)}
${n}}`,
    };
  }
  const { a0, a1 } = o.tiles;
  const xn = `${x}Next`;
  return {
    open: `${i}var ${xn} = next_block(bh, ${a0}, ${a1}, ${first}, ${end});
${i}if (${xn} < ${end}) {
${fetch(xn)}
${i}}
${i}for (var ${x} = ${xn}; ${x} < ${end}; ${x} = ${xn}) {
${n}let full = block_class(bh, ${a0}, ${a1}, ${x}) == 1u; // every element kept: the element rule is skipped`,
    next: `${n}${xn} = next_block(bh, ${a0}, ${a1}, ${x} + 1u, ${end});
${n}if (${xn} < ${end}) {
${fetch(xn)}
${n}}`,
  };
}

/**
 * Whether a kernel with `mods` has a block-uniform `full` (every element of the block kept, so the element
 * rule is skipped): from the tile table with the block-mask flag, else from the band with the window flag
 * (band_full, BAND_FULL_WGSL) where no mask needs testing per element.
 */
export function hasFullBlocks(mods: string | undefined): boolean {
  const f = modFlags(mods);
  return f.blocks || (f.window && !f.mask);
}

/**
 * `band_full(r0, r1, k0, k1)`: every key of k0 ..= k1 lies in the band of every row of r0 ..= r1 (the
 * first row's right edge bounds the last key, the last row's left edge the first key). Most blocks of a
 * window are inside it, and skipping the per-element rule there keeps the window's blocks as cheap as a
 * causal call's.
 */
export const BAND_FULL_WGSL = `fn band_full(r0: u32, r1: u32, k0: u32, k1: u32) -> bool {
  let off = i32(u.Nk) - i32(u.Nq);
  return (mu.left < 0 || i32(k0) - i32(r1) - off >= -mu.left) && (mu.right < 0 || i32(k1) - i32(r0) - off <= mu.right);
}`;
