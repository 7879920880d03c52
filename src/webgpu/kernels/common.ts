/**
 * What every attention kernel shares: the uniform block of run-time sizes, the storage types, the masked
 * score value, and the tile-size choice within a device's workgroup-memory budget.
 *
 * Compile-time parameters (head dim, tiles, dtype, causal) go into the WGSL and its cache key; run-time
 * sizes (B, H, N, strides, scale) go into the uniform block below, so one pipeline serves every N.
 */

export type StorageType = 'f32' | 'f16';

/** The uniform block, in declaration order: all u32 but `scale`. */
export const SIZE_FIELDS = ['B', 'H', 'Hkv', 'Nq', 'Nk', 'qBatch', 'qRow', 'qHead', 'kvBatch', 'kvRow', 'kvHead'] as const;
export type Sizes = Record<(typeof SIZE_FIELDS)[number], number> & { scale: number };

export const SIZES_WGSL = `struct Sizes {
${SIZE_FIELDS.map((f) => `  ${f}: u32,`).join('\n')}
  scale: f32,
}`;

/** The uniform block as bytes (12 four-byte fields, padded to 16-byte multiples). */
export function sizesBytes(s: Sizes): ArrayBuffer {
  const buf = new ArrayBuffer(48);
  const u = new Uint32Array(buf);
  SIZE_FIELDS.forEach((f, i) => (u[i] = s[f]));
  new Float32Array(buf)[SIZE_FIELDS.length] = s.scale;
  return buf;
}

/** `enable f16;` when the storage is f16. */
export function enables(t: StorageType): string {
  return t === 'f16' ? 'enable f16;\n' : '';
}

/**
 * Masked scores hold this instead of −∞: WGSL gives no guarantee for arithmetic on infinities, so the
 * kernels keep every value finite and test `m == MASKED` where the paper tests m = −∞.
 */
export const MASKED_WGSL = 'const MASKED = -3.0e38;';

/**
 * WGSL lines (indented for a kernel's body) for a workgroup of one query head, dispatch y = B·H: its
 * index bh, batch b and head h, and the head's offsets qo in the q-like tensors and ko in k and v (a
 * group of H/Hkv query heads shares one key/value head).
 */
export const QUERY_HEAD_WGSL = `  let bh = wid.y;
  let b = bh / u.H;
  let h = bh % u.H;
  let qo = b * u.qBatch + h * u.qHead;
  let ko = b * u.kvBatch + (h / (u.H / u.Hkv)) * u.kvHead;`;

/**
 * L is stored as f32 bits in an array<u32>: a WGSL constant cannot be infinite, but the bit pattern of
 * −∞ (a row that sees no key) can be written and compared.
 */
export const NEG_INF_BITS = '0xff800000u';

/**
 * `opaque(n)` is n, in a form the shader compiler cannot fold (B is never 0). Inner loops run to
 * opaque(D4) or opaque(Bc) so that lavapipe's LLVM does not unroll them completely: fully unrolled, one
 * pipeline took 8-14 s to compile there, against about 1 s; GPU drivers still unroll what pays.
 */
export const OPAQUE_WGSL = `fn opaque(n: u32) -> u32 {
  return select(n, 0u, u.B == 0u);
}`;

/**
 * NaN without relying on float comparisons (which WGSL leaves to the implementation): `is_nan` tests the
 * bits; `nan()` makes one at run time (a constant NaN is a WGSL compile error).
 */
export const NAN_WGSL = `fn is_nan(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}
fn nan() -> f32 {
  return bitcast<f32>(select(0x7fc00000u, 0u, u.B == 0u));
}`;

/**
 * Tests by bits where a NaN must pass (float comparisons with a NaN are left to the implementation, and
 * lavapipe answers NaN != x with false): `sees(L)`, a row's L is not MASKED (NaN included);
 * `nonzero(x)`, x is not ±0 (NaN included).
 */
export const NAN_TESTS_WGSL = `fn sees(L: f32) -> bool {
  return bitcast<u32>(L) != bitcast<u32>(f32(MASKED));
}
fn nonzero(x: f32) -> bool {
  return (bitcast<u32>(x) << 1u) != 0u;
}`;

/**
 * `mix32`: lowbias32 (Chris Wellons), a 32-bit integer hash with good avalanche, in u32 arithmetic that
 * wraps as src/modifiers.ts's mix32 (Math.imul) does: dropout's hash and the benchmarks' hashed inputs.
 */
export const MIX32_WGSL = `fn mix32(x0: u32) -> u32 {
  var x = x0;
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}`;

/** Causal visibility, bottom-right aligned: query `row` sees `key` iff key ≤ row + Nk − Nq. */
export const VISIBLE_WGSL = `fn visible(row: u32, key: u32) -> bool {
  return i32(key) <= i32(row) + i32(u.Nk) - i32(u.Nq);
}`;

/** A stable, key-order-independent serialisation: the pipeline cache key of a params object. */
export function cacheKey(kernel: string, params: object): string {
  const entries = Object.entries(params).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `${kernel}(${entries.map(([k, v]) => `${k}=${String(v)}`).join(',')})`;
}

/** Error for a kernel configuration the device cannot run, raised when the WGSL is generated. */
export class KernelConfigError extends Error {}

/** Check a kernel's workgroup memory against the device's limit; returns the bytes. */
export function checkWorkgroupBytes(kernel: string, bytes: number, limit: number): number {
  if (bytes > limit) throw new KernelConfigError(`${kernel}: needs ${bytes} bytes of workgroup memory, the device allows ${limit}`);
  return bytes;
}

/**
 * Tile sizes (rows, cols) for a kernel whose workgroup memory is `bytes(rows, cols)`: the largest
 * candidate that fits in `limit` and keeps the per-thread accumulator within `maxAccumulator` floats.
 */
export function chooseTiles(
  bytes: (rows: number, cols: number) => number,
  accumulator: (rows: number, cols: number) => number,
  limit: number,
  maxAccumulator: number,
): { rows: number; cols: number } {
  const candidates = [64, 32, 16, 8, 4, 2, 1].flatMap((r) => [64, 32, 16, 8, 4].map((c) => ({ rows: r, cols: c })));
  candidates.sort((a, b) => b.rows * b.cols - a.rows * a.cols || b.rows - a.rows);
  const fit = candidates.find((t) => bytes(t.rows, t.cols) <= limit && accumulator(t.rows, t.cols) <= maxAccumulator);
  if (!fit) throw new KernelConfigError(`no tile fits in ${limit} bytes of workgroup memory`);
  return fit;
}

/**
 * WGSL: `Tc`, the number of key blocks (Bc keys each) the query block starting at row r0 (Br rows) visits;
 * causal: the last key its last row sees bounds it, so blocks entirely above the diagonal are skipped.
 */
export function keyBlocksWGSL(causal: boolean): string {
  const count = 'var Tc = (u.Nk + Bc - 1u) / Bc;';
  if (!causal) return count;
  return `${count}
  let lastKey = i32(min(r0 + Br, u.Nq)) - 1 + i32(u.Nk) - i32(u.Nq);
  Tc = select(0u, min(Tc, u32(lastKey) / Bc + 1u), lastKey >= 0);`;
}

/**
 * WGSL: `iStart`, the first query block (of `rows` rows) that sees key c0 (Alg. 2 line 8, causal: the
 * blocks before it are entirely above the diagonal); 0 when not causal.
 */
export function firstQueryBlockWGSL(causal: boolean, rows: string): string {
  if (!causal) return 'let iStart = 0u;';
  return `let firstRow = i32(c0) - (i32(u.Nk) - i32(u.Nq));
  let iStart = select(0u, u32(firstRow) / ${rows}, firstRow > 0);`;
}

/**
 * WGSL (indented for a key-block loop's body): Alg. 1 line 9 for the workgroup's score tile S (`rows` ×
 * Bc, row-major) — thread r < rows updates row r's running max m and sum l (its own registers, with
 * `poisoned` for a NaN logit), leaves P̃ = exp(S − m) in S (0 for masked entries, and for a row that has
 * seen nothing yet) and the rescale factor e^(m_old − m) in alpha[r]. `bound`: the loops' bound over Bc.
 */
export function rowSoftmaxWGSL(rows: string, bound: string): string {
  return `if (lid < ${rows}) {
      var mx = m;
      for (var c = 0u; c < ${bound}; c++) {
        mx = max(mx, S[lid * Bc + c]);
        poisoned = poisoned || is_nan(S[lid * Bc + c]);
      }
      var a = 1.0;
      if (mx != MASKED) {
        a = exp(m - mx);
        var sum = 0.0;
        for (var c = 0u; c < ${bound}; c++) {
          let x = S[lid * Bc + c];
          let pe = select(exp(x - mx), 0.0, x == MASKED);
          S[lid * Bc + c] = pe;
          sum += pe;
        }
        l = a * l + sum;
        m = mx;
      } else {
        for (var c = 0u; c < ${bound}; c++) {
          S[lid * Bc + c] = 0.0; // nothing visible yet in this row
        }
      }
      alpha[lid] = a;
    }`;
}
