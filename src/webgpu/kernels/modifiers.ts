/**
 * The modifiers of src/modifiers.ts in WGSL: the hooks every kernel family calls. A kernel's params carry
 * `causal` as before and, only when the call has a variant beyond causal, `mods`: a short string of flags
 * (part of the pipeline cache key), so that the plain and causal kernels' WGSL stays byte for byte what it
 * was. The variants' run-time values and arrays live in bind group 1 (group 0 stays each kernel's own):
 *
 *   @group(1) @binding(0) var<uniform> mu: Mods;             band, soft-cap, dropout, strides
 *   @group(1) @binding(1) alibi: array<f32>                    'a': B·H slopes
 *   @group(1) @binding(2) bias: array<f32 | f16>               'b' / 'h' (f16): the bias, broadcast strides in mu
 *   @group(1) @binding(3) mask: array<u32>                     'm': the mask, one bit per element
 *   @group(1) @binding(4) tiles: array<u32>                    't': the kernel's tile classes, 2 bits per tile
 *   @group(1) @binding(5) blocks: array<u32>                   't': the block mask, one bit per block
 *   @group(1) @binding(6) dbias: array<f32>                    'g' (backward key/value kernels only): dS, (B, H, Nq, Nk)
 *
 * Flags: 'w' window (the band replaces `visible`), 'a' ALiBi, 's' soft-cap, 'b' f32 bias, 'h' f16 bias,
 * 'g' bias gradient, 'm' mask, 't' block mask (tile table), 'd' dropout. The host side (bindings, tile
 * tables, the dbias reduction) is src/webgpu/modifiers.ts.
 */
import { MIX32_WGSL, keyBlocksWGSL, type StorageType } from './common.js';

export interface ModFlags {
  window: boolean;
  alibi: boolean;
  softcap: boolean;
  bias?: 'f32' | 'f16';
  biasGrad: boolean;
  mask: boolean;
  blocks: boolean;
  dropout: boolean;
}

export function modFlags(mods: string | undefined): ModFlags {
  const f = mods ?? '';
  return {
    window: f.includes('w'),
    alibi: f.includes('a'),
    softcap: f.includes('s'),
    bias: f.includes('b') ? 'f32' : f.includes('h') ? 'f16' : undefined,
    biasGrad: f.includes('g'),
    mask: f.includes('m'),
    blocks: f.includes('t'),
    dropout: f.includes('d'),
  };
}

/** The uniform block of group 1 (all fields 4 bytes; vec4s 16-aligned). */
export const MODS_WGSL = `struct Mods {
  left: i32, // band: keys left of the diagonal a row sees (-1: unbounded); causal is folded into right
  right: i32,
  softcap: f32,
  dropScale: f32, // 1 / (1 - p)
  seed: u32,
  threshold: u32, // round(p * 2^24)
  tileRows: u32, // the tile table's tiles (the kernel's Br x Bc)
  tileCols: u32,
  biasStride: vec4<u32>, // (b, h, i, j) element strides, 0 on a broadcast axis
  maskStride: vec4<u32>,
  tileStride: vec4<u32>, // of the tile table, in tiles
  blockStride: vec4<u32>, // of the block mask, in blocks
  blockRows: u32,
  blockCols: u32,
  H: u32,
  dropHeads: u32, // dropout's head offset: packed sequence s hashes heads s·H + h, as batch row s would
}`;

/** Bytes of the Mods uniform block. */
export const MODS_BYTES = 128;

/**
 * WGSL for group 1 and the hook functions, for a kernel whose params carry `mods`; '' without. `role`:
 * 'backward-kv' may write dbias (flag 'g'); other kernels never declare it. Every function takes the
 * head index bh = b·H + h and row/key indices of that head.
 */
export function modifiersWGSL(mods: string | undefined, storage: StorageType, role: 'forward' | 'backward-kv' | 'backward-q'): string {
  if (!mods) return '';
  const f = modFlags(mods);
  const lines: string[] = [];
  if (f.bias === 'f16' && storage !== 'f16') lines.push('enable f16;');
  lines.push(MODS_WGSL, '@group(1) @binding(0) var<uniform> mu: Mods;');
  if (f.alibi) lines.push('@group(1) @binding(1) var<storage, read> alibi: array<f32>;');
  if (f.bias) lines.push(`@group(1) @binding(2) var<storage, read> bias: array<${f.bias}>;`);
  if (f.mask) lines.push('@group(1) @binding(3) var<storage, read> mask: array<u32>;');
  if (f.blocks) lines.push('@group(1) @binding(4) var<storage, read> tiles: array<u32>;', '@group(1) @binding(5) var<storage, read> blocks: array<u32>;');
  if (f.biasGrad && role === 'backward-kv') lines.push('@group(1) @binding(6) var<storage, read_write> dbias: array<f32>;');

  // The element rule: band (window, causal folded in), mask, block mask.
  const keep: string[] = [];
  if (f.window) {
    keep.push(`let d = i32(key) - (i32(row) + i32(u.Nk) - i32(u.Nq));
  if ((mu.left >= 0 && d < -mu.left) || (mu.right >= 0 && d > mu.right)) { return false; }`);
  }
  if (f.mask) {
    keep.push(`let e = (bh / mu.H) * mu.maskStride.x + (bh % mu.H) * mu.maskStride.y + row * mu.maskStride.z + key * mu.maskStride.w;
  if (((mask[e >> 5u] >> (e & 31u)) & 1u) == 0u) { return false; }`);
  }
  if (f.blocks) {
    keep.push(`let eb = (bh / mu.H) * mu.blockStride.x + (bh % mu.H) * mu.blockStride.y + (row / mu.blockRows) * mu.blockStride.z + (key / mu.blockCols) * mu.blockStride.w;
  if (((blocks[eb >> 5u] >> (eb & 31u)) & 1u) == 0u) { return false; }`);
  }
  lines.push(`fn mod_keep(bh: u32, row: u32, key: u32) -> bool {
  ${keep.join('\n  ')}
  return true;
}`);

  // The score modifier: soft-cap, then ALiBi and bias. Returns (modified score, soft-cap derivative).
  const score: string[] = ['var x = s;', 'var g = 1.0;'];
  if (f.softcap) score.push('let t = tanh(s / mu.softcap);', 'x = mu.softcap * t;', 'g = 1.0 - t * t;');
  if (f.alibi) score.push('x -= alibi[bh] * abs(f32(i32(row) + i32(u.Nk) - i32(u.Nq) - i32(key)));');
  if (f.bias) {
    score.push('let eb = (bh / mu.H) * mu.biasStride.x + (bh % mu.H) * mu.biasStride.y + row * mu.biasStride.z + key * mu.biasStride.w;', 'x += f32(bias[eb]);');
  }
  lines.push(`fn mod_score2(bh: u32, row: u32, key: u32, s: f32) -> vec2<f32> {
  ${score.join('\n  ')}
  return vec2<f32>(x, g);
}
fn mod_score(bh: u32, row: u32, key: u32, s: f32) -> f32 {
  return mod_score2(bh, row, key, s).x;
}`);

  if (f.blocks) {
    lines.push(`/** The class of the kernel's tile (query tile ti, key tile tj) of head bh: 0 empty, 1 full, 2 partial. */
fn mod_tile(bh: u32, ti: u32, tj: u32) -> u32 {
  let e = (bh / mu.H) * mu.tileStride.x + (bh % mu.H) * mu.tileStride.y + ti * mu.tileStride.z + tj * mu.tileStride.w;
  return (tiles[e >> 4u] >> ((e & 15u) * 2u)) & 3u;
}`);
  }
  if (f.dropout) {
    lines.push(`${MIX32_WGSL}
/** Dropout's multiplier of element (row, key) of head bh: 0 (dropped) or 1 / (1 - p); src/modifiers.ts's hash. */
fn mod_drop(bh: u32, row: u32, key: u32) -> f32 {
  let k = mix32(mix32(mu.seed ^ 0x3c6ef372u) ^ (bh + mu.dropHeads));
  let r = mix32(k + row * 0x85ebca6bu);
  return select(0.0, mu.dropScale, (mix32(r + key * 0x9e3779b9u) >> 8u) >= mu.threshold);
}`);
  }
  return lines.join('\n');
}

/**
 * ` && <element rule>` for a kernel's masking select, or '' when every key of the band's range is kept.
 * mod_keep tests the band only with the window flag: a causal band alone stays `visible` (the kernel
 * declares it for causal calls), also beside a mask or a block mask.
 */
export function keepWGSL(p: { causal: boolean; mods?: string }, bh: string, row: string, key: string): string {
  const f = modFlags(p.mods);
  const band = p.causal && !f.window ? ` && visible(${row}, ${key})` : '';
  return f.window || f.mask || f.blocks ? `${band} && mod_keep(${bh}, ${row}, ${key})` : band;
}

/** The modified score expression for a scaled score `s` (the score itself without a score modifier). */
export function scoreWGSL(p: { mods?: string }, bh: string, row: string, key: string, s: string): string {
  const f = modFlags(p.mods);
  return f.softcap || f.alibi || f.bias ? `mod_score(${bh}, ${row}, ${key}, ${s})` : s;
}

/**
 * WGSL: `jStart` and `Tc`, the key blocks [jStart, Tc) (Bc keys each) that the query rows [r0, r0 + Br)
 * see under the band; with the window flag from mu, else as keyBlocksWGSL (causal or every block).
 * Kernels with the window flag loop `for (var j = jStart; j < Tc; j++)`.
 */
export function windowKeyBlocksWGSL(): string {
  return `var Tc = (u.Nk + Bc - 1u) / Bc;
  var jStart = 0u;
  {
    let off = i32(u.Nk) - i32(u.Nq);
    let lastRow = i32(min(r0 + Br, u.Nq)) - 1;
    if (mu.right >= 0) {
      let hi = lastRow + off + mu.right; // the last key the block's last row sees
      Tc = select(0u, min(Tc, u32(hi) / Bc + 1u), hi >= 0);
    }
    if (mu.left >= 0) {
      let lo = i32(r0) + off - mu.left; // the first key the block's first row sees
      jStart = select(0u, u32(lo) / Bc, lo > 0);
    }
  }`;
}

/**
 * WGSL: `iStart` and `iEnd`, the query blocks [iStart, iEnd) (of `rows` rows; Tr in all) that see any key
 * of the keys [c0, c0 + cols) under the band (window flag).
 */
export function windowQueryBlocksWGSL(rows: string, cols: string): string {
  return `var iStart = 0u;
  var iEnd = Tr;
  {
    let off = i32(u.Nk) - i32(u.Nq);
    if (mu.right >= 0) {
      let first = i32(c0) - off - mu.right; // the first row that sees key c0
      iStart = select(0u, u32(first) / ${rows}, first > 0);
    }
    if (mu.left >= 0) {
      let last = i32(min(c0 + ${cols}, u.Nk)) - 1 - off + mu.left; // the last row that sees the last key
      iEnd = select(0u, min(Tr, u32(last) / ${rows} + 1u), last >= 0);
    }
  }`;
}

/**
 * WGSL (indented for a kernel's body) that opens the key-block loop of a workgroup owning query rows
 * [r0, r0 + Br), tile `ti` of its tile table: the key blocks the band leaves (causal: those up to the
 * diagonal; with the window flag [jStart, Tc)), `c0` the block's first key, and with the block-mask flag
 * the empty tiles skipped (uniform control flow: the table is read-only). The caller closes the loop.
 */
export function keyBlockLoopWGSL(p: { causal: boolean; mods?: string }, ti: string): string {
  const f = modFlags(p.mods);
  return `// Causal: key blocks entirely above the diagonal are skipped${f.window ? '; a window: those outside the band' : ''}.
  ${f.window ? windowKeyBlocksWGSL() : keyBlocksWGSL(p.causal)}
  for (var j = ${f.window ? 'jStart' : '0u'}; j < Tc; j++) {
    let c0 = j * Bc;${f.blocks ? `
    if (mod_tile(bh, ${ti}, j) == 0u) {
      continue; // the block mask leaves the tile empty (uniform: the table is read-only)
    }` : ''}`;
}
