/**
 * Standard-attention kernels: the webgpu baseline that materialises the Nq×Nk matrices (S, P; dP, dS) in
 * device buffers, as PyTorch's math path does, in the input dtype: f32, or f16 for f16 inputs (as the cpu
 * baseline and FlashAttention's upcast=False reference store them). One dense Nq×Nk block per head of a
 * chunk of heads, chunk-local head z at z·Nq·Nk; a buffer is heads·Nq·Nk·4 bytes (f32) or ·2 (f16) and
 * fits one storage binding (the host chunks the heads so that it does). The forward holds S and P, the
 * backward P, dP and dS. A value is rounded to the storage type where it is stored and nowhere else:
 * loads widen to f32, and all arithmetic and accumulation is f32 (workgroup memory too). Four kernels:
 *
 * matmul: C = alpha·op(A)·op(B) (+ C when `accumulate`), per head. One workgroup (WG threads, TY×TX with
 *   TX = 8) owns one BM×BN tile of C of one head (dispatch x: tiles along N, y: tiles along M, z: heads,
 *   grid-strided where a size exceeds the dispatch limit); each invocation owns RM×RN entries of it
 *   (tuning.ts: 8×8 on lavapipe, 2×4 elsewhere), rows ty + r·TY and columns tx + c·TX, held in
 *   2·RM·RN named scalars (no private array: lavapipe's LLVM compiles those slowly). RM and RN change
 *   which invocation sums an entry, not how: every entry is summed in the same order whatever they are. The contraction runs in BK-deep steps: A's BM×BK and B's BK×BN slices
 *   are loaded (widened to f32, zero past the edges) into f32 workgroup tiles, then each invocation does
 *   RM·RN·BK multiply-adds from them into per-step partial sums, which are then added to the entries'
 *   sums (two-level summation: the f32 rounding error grows with BK + K/BK, not K, which matters for
 *   dK and dV, contracted over a whole group's G·Nq rows). Workgroup memory: 4·BK·(BM + BN) bytes
 *   (4 KiB at WG = 128, BK = 16 and 2×4: BM = BN = 32; 12 KiB with 8×8: BM = 128, BN = 64).
 *   A, B and C are addressed through run-time offsets (the `Step` block): head z has a batch index b, a
 *   query head hq and a key/value head hk (see `head()`), and an operand's base is b·batch + hq·qHead +
 *   hk·kHead + z·local; stored row r is at (r / split)·splitStride + (r % split)·ld. So q, k, v, out and
 *   the gradients are read and written in either layout where they lie, the N×N matrices densely, and
 *   dK, dV contract over all query heads of a kv head's group (row t = g·Nq + i) in one dispatch,
 *   deterministically (no atomics). C is rounded to its type once, as it is stored.
 * softmax: one workgroup owns one row of S (dispatch x: rows, grid-strided; y: heads). Three passes over
 *   the row with WG invocations striding over keys and a tree reduction in workgroup memory (4·WG bytes,
 *   512 at WG = 128): the row max m over the visible entries; l = Σ exp(S − m); P = exp(S − m)/l, stored
 *   (rounded) in P, and lse = m + log l in f32 (−∞ bits and P = 0 for a row that sees no key). Masking
 *   stays out of the stored values: each pass tests causal visibility itself and the running max starts
 *   at MASKED, an f32 register constant, so no sentinel has to be stored in f16 (−3e38 is not
 *   representable there, and any finite f16 sentinel, −65504 say, is also a score a row can really hold).
 *   S keeps scale·QKᵀ as rounded on store; P is 0 where masked.
 * dS: one workgroup owns one row (as softmax): Dvec = rowsum(dO ∘ O) by reduction, then elementwise
 *   P = exp(S − lse), rounded as stored (written over S; 0 where masked or lse = −∞), and
 *   dS = P ∘ (dP − Dvec) from the stored P and dP, rounded as stored.
 * cast: one invocation per element, f32 → f16 (dK, dV accumulated in f32 when a group spans chunks).
 * The variants (kernels/modifiers.ts; only where the params carry `mods`) enter the two row kernels, as the
 * oracle writes them: softmax takes the element rule for `visible` and the modified score of S, and stores
 * P ∘ Z with dropout (so that O = (P ∘ Z) V); dS recomputes both, stores P ∘ Z over S (dV = (P ∘ Z)ᵀ dO)
 * and dS = P ∘ (dP ∘ Z − D) times the soft-cap's derivative (dQ, dK), and writes dS before that
 * derivative, in f32, to dbias where the bias's gradient is asked for.
 */
import { MASKED_WGSL, NAN_WGSL, NEG_INF_BITS, SIZES_WGSL, VISIBLE_WGSL, checkWorkgroupBytes, type StorageType } from './common.js';
import { keepWGSL, modFlags, modifiersWGSL, scoreWGSL } from './modifiers.js';

/** The per-dispatch uniform block: geometry, the chunk's head mapping, and the three operands' addressing. */
const OPERAND_FIELDS = ['Batch', 'QHead', 'KHead', 'Local', 'Ld', 'Split', 'SplitStride'] as const;
const STEP_FIELDS = ['M', 'N', 'K', 'alpha', 'kv0', 'cz', 'g0', 'pad', ...['a', 'b', 'c'].flatMap((x) => OPERAND_FIELDS.map((f) => `${x}${f}`))];

/** How an operand's rows are found (elements); `split` = 0 means rows are not split. */
export interface Operand {
  batch: number;
  qHead: number;
  kHead: number;
  local: number;
  ld: number;
  split?: number;
  splitStride?: number;
}

export interface Step {
  M: number;
  N: number;
  K: number;
  alpha: number;
  /** Head z of the dispatch is query head g0 + z % cz of global kv head kv0 + ⌊z / cz⌋ (b·Hkv + hk). */
  kv0: number;
  cz: number;
  g0: number;
  a?: Operand;
  b?: Operand;
  c?: Operand;
}

const STEP_WGSL = `struct Step {
${STEP_FIELDS.map((f) => `  ${f}: ${f === 'alpha' ? 'f32' : 'u32'},`).join('\n')}
}`;

/** The Step block as bytes (29 four-byte fields, padded to 128). */
export function stepBytes(s: Step): ArrayBuffer {
  const buf = new ArrayBuffer(128);
  const u = new Uint32Array(buf);
  u.set([s.M, s.N, s.K, 0, s.kv0, s.cz, s.g0, 0]);
  new Float32Array(buf)[3] = s.alpha;
  [s.a, s.b, s.c].forEach((o, i) => {
    if (!o) return;
    const split = o.split ?? 0;
    u.set([o.batch, o.qHead, o.kHead, o.local, o.ld, split === 0 ? 0xffffffff : split, o.splitStride ?? 0], 8 + 7 * i);
  });
  return buf;
}

/** The head (b, hq, hk) that dispatch head z stands for. */
const HEAD_WGSL = `fn head(z: u32) -> vec3u {
  let kv = s.kv0 + z / s.cz;
  let hk = kv % u.Hkv;
  return vec3u(kv / u.Hkv, hk * (u.H / u.Hkv) + s.g0 + z % s.cz, hk);
}`;

/**
 * A workgroup-wide reduction over WG values (call from uniform control flow); the shader declares the
 * constant WG and `var<workgroup> red: array<f32, WG>`.
 */
export function reduceWGSL(name: string, op: (a: string, b: string) => string): string {
  return `fn ${name}(x: f32, lid: u32) -> f32 {
  red[lid] = x;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w /= 2u) {
    if (lid < w) {
      red[lid] = ${op('red[lid]', 'red[lid + w]')};
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;
}

function enableIf(...types: StorageType[]): string {
  return types.includes('f16') ? 'enable f16;\n' : '';
}

export interface MatmulParams {
  /** Threads per workgroup (a multiple of 8). */
  WG: number;
  BK: number;
  /** Rows and columns of C an invocation owns. */
  RM: number;
  RN: number;
  tA: StorageType;
  tB: StorageType;
  tC: StorageType;
  transA: boolean;
  transB: boolean;
  /** C = C + alpha·op(A)·op(B) (C read back in C's type). */
  accumulate: boolean;
}

/** Tile of C a workgroup owns: TY·RM rows by TX·RN columns. */
export function matmulTile(p: Pick<MatmulParams, 'WG' | 'RM' | 'RN'>): { BM: number; BN: number; TX: number; TY: number; RM: number; RN: number } {
  const TX = 8;
  const TY = p.WG / TX;
  return { BM: TY * p.RM, BN: TX * p.RN, TX, TY, RM: p.RM, RN: p.RN };
}

export function matmulWorkgroupBytes(p: Pick<MatmulParams, 'WG' | 'BK' | 'RM' | 'RN'>): number {
  const { BM, BN } = matmulTile(p);
  return 4 * p.BK * (BM + BN);
}

export function matmulWGSL(p: MatmulParams, workgroupLimit: number): string {
  const { WG, BK, tA, tB, tC, transA, transB, accumulate } = p;
  const { BM, BN, TX, TY, RM, RN } = matmulTile(p);
  checkWorkgroupBytes('standard matmul', matmulWorkgroupBytes(p), workgroupLimit);
  const acc: [number, number][] = [];
  for (let r = 0; r < RM; r++) for (let c = 0; c < RN; c++) acc.push([r, c]);
  const at = (x: 'a' | 'b' | 'c', row: string) =>
    `(${row} / s.${x}Split) * s.${x}SplitStride + (${row} % s.${x}Split) * s.${x}Ld`;
  const base = (x: 'a' | 'b' | 'c') => `hd.x * s.${x}Batch + hd.y * s.${x}QHead + hd.z * s.${x}KHead + z * s.${x}Local`;
  // op(A)[m][kk]: A stored M×K (row m), or K×M when transposed (row kk); consecutive invocations take
  // consecutive stored columns.
  const loadA = transA
    ? `let kk = e / BM;
      let m = e % BM;
      let row = k0 + kk;
      let col = m0 + m;
      let ok = row < s.K && col < s.M;`
    : `let m = e / BK;
      let kk = e % BK;
      let row = m0 + m;
      let col = k0 + kk;
      let ok = row < s.M && col < s.K;`;
  const loadB = transB
    ? `let n = e / BK;
      let kk = e % BK;
      let row = n0 + n;
      let col = k0 + kk;
      let ok = row < s.N && col < s.K;`
    : `let kk = e / BN;
      let n = e % BN;
      let row = k0 + kk;
      let col = n0 + n;
      let ok = row < s.K && col < s.N;`;
  return `${enableIf(tA, tB, tC)}
${SIZES_WGSL}
${STEP_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<uniform> s: Step;
@group(0) @binding(2) var<storage, read> a: array<${tA}>;
@group(0) @binding(3) var<storage, read> b: array<${tB}>;
@group(0) @binding(4) var<storage, read_write> c: array<${tC}>;

const WG = ${WG}u;
const BM = ${BM}u;
const BN = ${BN}u;
const BK = ${BK}u;
const TX = ${TX}u;
const TY = ${TY}u;

var<workgroup> As: array<f32, ${BK * BM}>; // As[kk·BM + m] = op(A)[m0 + m][k0 + kk]
var<workgroup> Bs: array<f32, ${BK * BN}>; // Bs[kk·BN + n] = op(B)[k0 + kk][n0 + n]

${HEAD_WGSL}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let z = wid.z;
  let hd = head(z);
  let ao = ${base('a')};
  let bo = ${base('b')};
  let co = ${base('c')};
  let tx = lid % TX;
  let ty = lid / TX;
  let tilesM = (s.M + BM - 1u) / BM;
  let tilesN = (s.N + BN - 1u) / BN;
  for (var tm = wid.y; tm < tilesM; tm += nwg.y) {
    for (var tn = wid.x; tn < tilesN; tn += nwg.x) {
      let m0 = tm * BM;
      let n0 = tn * BN;
${acc.map(([r, c]) => `      var c${r}${c} = 0.0;`).join('\n')}
      for (var k0 = 0u; k0 < s.K; k0 += BK) {
        for (var e = lid; e < BM * BK; e += WG) {
          ${loadA}
          var x = 0.0;
          if (ok) {
            x = f32(a[ao + ${at('a', 'row')} + col]);
          }
          As[kk * BM + m] = x;
        }
        for (var e = lid; e < BK * BN; e += WG) {
          ${loadB}
          var x = 0.0;
          if (ok) {
            x = f32(b[bo + ${at('b', 'row')} + col]);
          }
          Bs[kk * BN + n] = x;
        }
        workgroupBarrier();
${acc.map(([r, c]) => `        var p${r}${c} = 0.0;`).join('\n')}
        for (var kk = 0u; kk < BK; kk++) {
${Array.from({ length: RM }, (_, r) => `          let a${r} = As[kk * BM + ty + ${r * TY}u];`).join('\n')}
${Array.from({ length: RN }, (_, c) => `          let b${c} = Bs[kk * BN + tx + ${c * TX}u];`).join('\n')}
${acc.map(([r, c]) => `          p${r}${c} += a${r} * b${c};`).join('\n')}
        }
${acc.map(([r, c]) => `        c${r}${c} += p${r}${c};`).join('\n')}
        workgroupBarrier();
      }
${acc
  .map(
    ([r, c]) => `      {
        let row = m0 + ty + ${r * TY}u;
        let col = n0 + tx + ${c * TX}u;
        if (row < s.M && col < s.N) {
          let i = co + ${at('c', 'row')} + col;
          c[i] = ${tC}(${accumulate ? 'f32(c[i]) + ' : ''}s.alpha * c${r}${c});
        }
      }`,
  )
  .join('\n')}
    }
  }
}
`;
}

export interface RowParams {
  WG: number;
  causal: boolean;
  /** The input dtype, which the Nq×Nk matrices are stored in. */
  dtype: StorageType;
  /** The variants beyond causal (kernels/modifiers.ts's flags); absent for plain and causal calls. */
  mods?: string;
}

/** The element rule of a row kernel's entry (row, j) of head bh: kept or not (band, mask, block mask). */
function seenWGSL(p: RowParams): string {
  if (!p.mods) return p.causal ? 'visible(row, j)' : 'true';
  return keepWGSL(p, 'bh', 'row', 'j').replace(/^ && /, '') || 'true';
}

/** Row softmax: S (Nq×Nk per head; masked entries skipped, not overwritten) → P and lse. Step: M = Nq, N = Nk. */
export function softmaxWGSL(p: RowParams): string {
  const { WG, dtype, mods } = p;
  const seen = seenWGSL(p);
  const score = (x: string) => scoreWGSL(p, 'bh', 'row', 'j', x);
  return `${enableIf(dtype)}
${mods ? `${modifiersWGSL(mods, dtype, 'forward')}\n` : ''}${SIZES_WGSL}
${STEP_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<uniform> s: Step;
@group(0) @binding(2) var<storage, read> S: array<${dtype}>;
@group(0) @binding(3) var<storage, read_write> P: array<${dtype}>;
@group(0) @binding(4) var<storage, read_write> lse: array<u32>; // f32 bits

const WG = ${WG}u;
${MASKED_WGSL}

var<workgroup> red: array<f32, ${WG}>;

${HEAD_WGSL}
${VISIBLE_WGSL}
${reduceWGSL('rowMax', (x, y) => `max(${x}, ${y})`)}
${reduceWGSL('rowSum', (x, y) => `${x} + ${y}`)}
${NAN_WGSL}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let z = wid.y;
  let hd = head(z);${mods ? `
  let bh = hd.x * u.H + hd.y;` : ''}
  for (var row = wid.x; row < s.M; row += nwg.x) {
    let o = (z * s.M + row) * s.N;
    var mx = MASKED;
    var bad = 0.0; // 1 where this invocation saw a NaN: max() may drop NaNs, so they are tested by their bits
    for (var j = lid; j < s.N; j += WG) {
      if (${seen}) {
        let x = ${score('f32(S[o + j])')};
        mx = max(mx, x);
        bad = max(bad, select(0.0, 1.0, is_nan(x)));
      }
    }
    let m = rowMax(mx, lid);
    let poisoned = rowMax(bad, lid) != 0.0; // a NaN logit makes the row's P and L NaN, and no other row's
    var sum = 0.0;
    if (m != MASKED) {
      for (var j = lid; j < s.N; j += WG) {
        if (${seen}) {
          sum += exp(${score('f32(S[o + j])')} - m);
        }
      }
    }
    let l = rowSum(sum, lid);
    for (var j = lid; j < s.N; j += WG) {
      var pj = 0.0;
      if (${seen} && l != 0.0) {
        pj = exp(${score('f32(S[o + j])')} - m) / l;${modFlags(mods).dropout ? `
        pj *= mod_drop(bh, row, j); // P ∘ Z, which O = (P ∘ Z) V takes` : ''}
      }
      P[o + j] = ${dtype}(select(pj, nan(), poisoned && ${seen}));
    }
    if (lid == 0u) {
      lse[(hd.x * u.H + hd.y) * s.M + row] = select(select(bitcast<u32>(m + log(l)), ${NEG_INF_BITS}, l == 0.0), bitcast<u32>(nan()), poisoned);
    }
  }
}
`;
}

/** dS = P ∘ (dP − rowsum(dO ∘ O)) with P = exp(S − lse) written over S. Step: M = Nq, N = Nk, K = D. */
export function dsWGSL(p: RowParams): string {
  const { WG, causal, dtype, mods } = p;
  const f = modFlags(mods);
  const scores = f.softcap || f.alibi || f.bias !== undefined;
  return `${enableIf(dtype)}
${mods ? `${modifiersWGSL(mods, dtype, 'backward-kv')}\n` : ''}${SIZES_WGSL}
${STEP_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<uniform> s: Step;
@group(0) @binding(2) var<storage, read_write> SP: array<${dtype}>; // scale·QKᵀ in, P out
@group(0) @binding(3) var<storage, read> dP: array<${dtype}>;
@group(0) @binding(4) var<storage, read_write> dS: array<${dtype}>;
@group(0) @binding(5) var<storage, read> lse: array<u32>; // f32 bits
@group(0) @binding(6) var<storage, read> dout: array<${dtype}>;
@group(0) @binding(7) var<storage, read> out: array<${dtype}>;

const WG = ${WG}u;

var<workgroup> red: array<f32, ${WG}>;

${HEAD_WGSL}
${VISIBLE_WGSL}
${reduceWGSL('rowSum', (x, y) => `${x} + ${y}`)}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let z = wid.y;
  let hd = head(z);
  let qo = hd.x * u.qBatch + hd.y * u.qHead;${mods ? `
  let bh = hd.x * u.H + hd.y;` : ''}
  for (var row = wid.x; row < s.M; row += nwg.x) {
    let qi = qo + row * u.qRow;
    var dot = 0.0;
    for (var d = lid; d < s.K; d += WG) {
      dot += f32(dout[qi + d]) * f32(out[qi + d]);
    }
    let Di = rowSum(dot, lid);
    let bits = lse[(hd.x * u.H + hd.y) * s.M + row];
    let L = bitcast<f32>(bits);
    let dead = bits == ${NEG_INF_BITS};
    let o = (z * s.M + row) * s.N;
    for (var j = lid; j < s.N; j += WG) {
      var pj = ${dtype}(0.0);
      ${mods ? `var sg = vec2<f32>(0.0, 1.0); // (modified score, soft-cap derivative)
      if (!dead && ${seenWGSL(p)}) {
        sg = ${scores ? 'mod_score2(bh, row, j, f32(SP[o + j]))' : 'vec2<f32>(f32(SP[o + j]), 1.0)'};
        pj = ${dtype}(exp(sg.x - L));
      }${f.dropout ? `
      let zj = mod_drop(bh, row, j);
      SP[o + j] = ${dtype}(f32(pj) * zj); // P ∘ Z, which dV = (P ∘ Z)ᵀ dO takes
      // dS from P and dP as stored, as the cpu baseline computes it; dP ∘ Z.
      let dsj = f32(pj) * (f32(dP[o + j]) * zj - Di);` : `
      SP[o + j] = pj;
      // dS from P and dP as stored, as the cpu baseline computes it.
      let dsj = f32(pj) * (f32(dP[o + j]) - Di);`}${f.biasGrad ? `
      dbias[(bh * s.M + row) * s.N + j] = dsj;` : ''}
      dS[o + j] = ${dtype}(dsj * sg.y);` : `if (!dead${causal ? ' && visible(row, j)' : ''}) {
        pj = ${dtype}(exp(f32(SP[o + j]) - L));
      }
      SP[o + j] = pj;
      // dS from P and dP as stored, as the cpu baseline computes it.
      dS[o + j] = ${dtype}(f32(pj) * (f32(dP[o + j]) - Di));`}
    }
  }
}
`;
}

export interface CastParams {
  WG: number;
}

/** dst = f16(src), Step.M elements (f16 storage only). */
export function castWGSL(p: CastParams): string {
  return `enable f16;
${STEP_WGSL}
@group(0) @binding(0) var<uniform> s: Step;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f16>;

@compute @workgroup_size(${p.WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  for (var i = gid.x; i < s.M; i += nwg.x * ${p.WG}u) {
    dst[i] = f16(src[i]);
  }
}
`;
}
