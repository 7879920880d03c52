/**
 * Split-KV decode on subgroups: the same schedule as decode.ts (one workgroup per key/value head of a
 * batch row, its R query rows and one split of the keys; partials merged by mergeWGSL), with the keys
 * mapped to registers instead of workgroup tiles, for GPUs whose subgroups make a dot product a few
 * shuffles: no workgroup memory and no barrier in the key loop, so every thread keeps loads in flight.
 *
 * The WG threads form NG groups of T lanes (T divides the subgroup size, so a group never straddles two
 * subgroups); lane t of a group owns VPT vec4s of D (D4 = T·VPT). Group g takes keys g·U, g·U + NG·U, …
 * of the split, U at a time: each lane loads its VPT vec4s of the U keys' K and V rows (a group reads
 * whole rows, coalesced), forms its part of q_r·k for every row r and key, and T lanes sum their parts
 * with subgroupShuffleXor (log2 T steps); then each group runs the online softmax for its own keys with
 * its own m, l and O (registers, every lane the same m and l, its own vec4s of O). At the end the NG
 * groups' (m, l, O) are combined through workgroup memory (NG·R·(D4·16 + 8) bytes), once.
 * The variants (`mods`: window, ALiBi, soft-cap) as in decode.ts.
 *
 * `scatter` (U keys a group at a time, U a power of two dividing T): lane t, with j = t mod U, loads key
 * u ^ j into its slot u, so that the lanes' partial dot products are summed by a reduce-scatter instead of
 * an all-reduce: at step m (U/2, …, 1) lane t adds slot u + m of lane t ^ m to its slot u (both hold key
 * u ^ j), and after log2 U steps lane t holds key j's sum over the U lanes that differ from it in the low
 * bits; log2(T/U) all-reduce steps (m = T/2, …, U) add the other lanes' D slices. Then lane t holds the
 * whole score of key j: U − 1 + log2(T/U) shuffles a row instead of U·log2 T, and each lane runs the
 * softmax for one key (the T/U lanes of a key alike) instead of every lane for all U. The row max is a
 * max over U lanes; l is summed per lane and over U lanes once at the end; for O each lane takes the P̃
 * of the key in its slot u from lane t ^ u (U − 1 shuffles a row). U < T holds fewer K/V rows a lane
 * (fewer registers) for a few more shuffles a key.
 * Requires D % 4 == 0 and K/V rows at multiples of 4 elements (vec4 loads); `wide` (f16): 16-byte loads
 * (vec4<u32>, unpacked), rows at multiples of 8 halves.
 */
import { MASKED_WGSL, NAN_WGSL, NEG_INF_BITS, OPAQUE_WGSL, checkWorkgroupBytes, enables, type StorageType } from './common.js';
import { DECODE_SIZES_WGSL, decodeBindingsWGSL, decodeKeepWGSL, decodeModsWGSL, decodeScoreWGSL } from './decode.js';

export interface DecodeSubgroupParams {
  D: number;
  dtype: StorageType;
  /** Lanes per key (a power of two dividing the subgroup size and D / 4). */
  T: number;
  /** Groups of T lanes per workgroup. */
  NG: number;
  /** Query rows per workgroup. */
  R: number;
  /** Keys a group loads at once. */
  U: number;
  causal: boolean;
  cache: boolean;
  paged: boolean;
  split: boolean;
  /** The variants' flags, only when the call has some (as DecodeParams.mods). */
  mods?: string;
  /** Lane t loads key u ^ (t mod U) into slot u and the scores are reduce-scattered (requires U a power of two dividing T). */
  scatter?: boolean;
  /** f16 K/V loaded 16 bytes at a time (requires an even number of vec4s a lane and rows at multiples of 8 halves). */
  wide?: boolean;
  /**
   * Paged: a group's U keys lie in one page (the page size a multiple of U, and every split starting at a
   * multiple of U: no window), so one block-table lookup serves them all.
   */
  pageRun?: boolean;
}

export function decodeSubgroupWorkgroupBytes(p: Pick<DecodeSubgroupParams, 'D' | 'NG' | 'R'>): number {
  return p.NG * p.R * ((p.D / 4) * 16 + 8);
}

export function decodeSubgroupWGSL(p: DecodeSubgroupParams, workgroupLimit: number): string {
  const { D, dtype, T, NG, R, U, cache, split } = p;
  checkWorkgroupBytes('decodeSubgroup', decodeSubgroupWorkgroupBytes(p), workgroupLimit);
  const wide = p.wide === true;
  if (wide && (dtype !== 'f16' || (D / 4 / T) % 2 !== 0)) throw new Error(`decodeSubgroup: wide loads need f16 and an even number of vec4s a lane (D = ${D}, T = ${T})`);
  // f16 K/V rows 16 bytes a load (8 halves as vec4<u32>) where wide, else a vec4 of the storage type.
  const kvType = wide ? 'vec4<u32>' : `vec4<${dtype}>`;
  if (p.scatter && (U > T || T % U !== 0 || (U & (U - 1)) !== 0)) throw new Error(`decodeSubgroup: scatter needs U, the keys a group takes at a time, a power of two dividing T (U = ${U}, T = ${T})`);
  const D4 = D / 4;
  const VPT = D4 / T;
  const WG = T * NG;
  const rows = Array.from({ length: R }, (_, r) => r);
  const vs = Array.from({ length: VPT }, (_, v) => v);
  const us = Array.from({ length: U }, (_, u) => u);
  // WGSL lines, one for each step m = top/2, …, 1 of a butterfly over `top` lanes (T: a group's, U: a scatter's), down to `low`.
  const xorSteps = (f: (m: number) => string, top = T, low = 1) => {
    const steps: string[] = [];
    for (let m = top / 2; m >= low; m /= 2) steps.push(f(m));
    return steps;
  };
  const shuffles = (x: string) => xorSteps((m) => `${x} += subgroupShuffleXor(${x}, ${m}u);`).join(' ');
  const decl = [
    ...rows.flatMap((r) => vs.map((v) => `var q${r}_${v}: vec4<f32>;\n  var o${r}_${v} = vec4<f32>(0.0);`)),
    ...rows.map((r) => `var m${r} = MASKED;\n  var l${r} = 0.0;`),
  ].join('\n  ');
  const loadQ = rows
    .map((r) => vs.map((v) => `q${r}_${v} = select(vec4<f32>(0.0), load_q(${r}u, lane * ${VPT}u + ${v}u), ok_row(${r}u)) * u.scale;`).join('\n  '))
    .join('\n  ');
  if (p.pageRun && !p.paged) throw new Error('decodeSubgroup: pageRun is for paged caches');
  // The element offset of key `key` (clamped to the split's last: no key outside it is read, so a NaN there
  // cannot reach O through 0·NaN); with pageRun, from the group's page (run_base: kb's page, or the last
  // key's where kb is past it, which is where every key of the group is clamped to then).
  const keyBase = (key: string) => (p.pageRun ? `run_base + (min(${key}, keyEnd - 1u) - kc) * u.kvRow` : `key_base(min(${key}, keyEnd - 1u))`);
  const pageRun = p.pageRun
    ? `let kc = min(kb, keyEnd - 1u);
      let run_base = key_base(kc);
      `
    : '';
  const loads = us
    .map((u) => {
      const key = `key${u}`;
      return [
        `let ${key} = kb + ${p.scatter ? `(${u}u ^ j)` : `${u}u`};`,
        ...(wide
          ? [
              `let base${u} = (${keyBase(key)}) / 8u + lane * ${VPT / 2}u;`,
              ...vs
                .filter((v) => v % 2 === 0)
                .map((v) =>
                  ['k', 'v']
                    .map((x) => {
                      const w = `${x}w${u}_${v / 2}`;
                      return `let ${w} = ${x === 'k' ? 'k' : 'vv'}[base${u} + ${v / 2}u];\n      let ${x}${u}_${v} = vec4<f32>(unpack2x16float(${w}.x), unpack2x16float(${w}.y));\n      let ${x}${u}_${v + 1} = vec4<f32>(unpack2x16float(${w}.z), unpack2x16float(${w}.w));`;
                    })
                    .join('\n      '),
                ),
            ]
          : [
              `let base${u} = (${keyBase(key)}) / 4u + lane * ${VPT}u;`,
              ...vs.map((v) => `let k${u}_${v} = vec4<f32>(k[base${u} + ${v}u]);\n      let v${u}_${v} = vec4<f32>(vv[base${u} + ${v}u]);`),
            ]),
      ].join('\n      ');
    })
    .join('\n      ');
  const mods = decodeModsWGSL(p);
  const visible = (r: number, u: number) => `key${u} < keyEnd${decodeKeepWGSL(p, `${r}u`, `key${u}`, `_${r}`)}`;
  const perRow = rows
    .map((r) => {
      const scores = us
        .map((u) => `var s${r}_${u} = ${vs.map((v) => `dot(q${r}_${v}, k${u}_${v})`).join(' + ')}; ${shuffles(`s${r}_${u}`)}
        s${r}_${u} = select(MASKED, ${decodeScoreWGSL(p, `key${u}`, `s${r}_${u}`, `_${r}`)}, ${visible(r, u)});
        poisoned${r} = poisoned${r} || is_nan(s${r}_${u});`)
        .join('\n        ');
      return `{
        ${scores}
        let mx = max(m${r}, ${us.length === 1 ? `s${r}_0` : us.slice(1).reduce((a, u) => `max(${a}, s${r}_${u})`, `s${r}_0`)});
        if (mx != MASKED) {
          let a = exp(m${r} - mx);
          ${us.map((u) => `let p${u} = select(exp(s${r}_${u} - mx), 0.0, s${r}_${u} == MASKED);`).join('\n          ')}
          l${r} = a * l${r} + ${us.map((u) => `p${u}`).join(' + ')};
          ${vs.map((v) => `o${r}_${v} = a * o${r}_${v} + ${us.map((u) => `p${u} * v${u}_${v}`).join(' + ')};`).join('\n          ')}
          m${r} = mx;
        }
      }`;
    })
    .join('\n      ');
  // scatter: the rows' partial dots, reduce-scattered over U lanes (slot 0 of lane t: key kb + t mod U) and
  // all-reduced over the T / U lanes of a key, then one key a lane.
  const perRowScatter = rows
    .map((r) => {
      const partials = us.map((u) => `var s${r}_${u} = ${vs.map((v) => `dot(q${r}_${v}, k${u}_${v})`).join(' + ')};`).join('\n        ');
      const scatter = [
        ...xorSteps((m) => Array.from({ length: m }, (_, u) => `s${r}_${u} += subgroupShuffleXor(s${r}_${u + m}, ${m}u);`).join(' '), U),
        ...xorSteps((m) => `s${r}_0 += subgroupShuffleXor(s${r}_0, ${m}u);`, T, U),
      ].join('\n        ');
      return `{
        ${partials}
        ${scatter}
        let s = select(MASKED, ${decodeScoreWGSL(p, 'mine', `s${r}_0`, `_${r}`)}, mine < keyEnd${decodeKeepWGSL(p, `${r}u`, 'mine', `_${r}`)});
        poisoned${r} = poisoned${r} || is_nan(s);
        var mx = max(m${r}, s);
        ${xorSteps((m) => `mx = max(mx, subgroupShuffleXor(mx, ${m}u));`, U).join(' ')}
        let a = exp(m${r} - mx);
        let p = select(exp(s - mx), 0.0, s == MASKED);
        l${r} = a * l${r} + p;
        ${us.slice(1).map((u) => `let p${u} = subgroupShuffleXor(p, ${u}u);`).join(' ')}
        ${vs.map((v) => `o${r}_${v} = a * o${r}_${v} + ${us.map((u) => `${u === 0 ? 'p' : `p${u}`} * v${u}_${v}`).join(' + ')};`).join('\n        ')}
        m${r} = mx;
      }`;
    })
    .join('\n      ');
  // scatter: each lane summed l over its own keys (the T / U lanes of a key alike), and saw NaNs only in them.
  const gatherLanes = p.scatter
    ? rows
        .map((r) => [`var poison${r} = select(0u, 1u, poisoned${r});`, ...xorSteps((m) => `l${r} += subgroupShuffleXor(l${r}, ${m}u); poison${r} |= subgroupShuffleXor(poison${r}, ${m}u);`, U), `poisoned${r} = poison${r} != 0u;`].join('\n  '))
        .join('\n  ')
    : '';
  const stashGroup = rows
    .map((r) => [`if (lane == 0u) { Ml[(grp * R + ${r}u) * 2u] = m${r}; Ml[(grp * R + ${r}u) * 2u + 1u] = select(l${r}, nan(), poisoned${r}); }`, ...vs.map((v) => `Og[(grp * R + ${r}u) * D4 + lane * ${VPT}u + ${v}u] = o${r}_${v};`)].join('\n  '))
    .join('\n  ');
  const { outputs, extra, rows: rowsWGSL } = decodeBindingsWGSL(p);
  const lseBits = `select(select(bitcast<u32>(M + log(L)), ${NEG_INF_BITS}, L == 0.0), bitcast<u32>(nan()), poisoned)`;
  const write = split
    ? `let part = lse_row(b, r) * u.splits + s;
      if (d4 == 0u) { lpart[part] = ${lseBits}; }
      opart[part * D4 + d4] = x;`
    : `if (d4 == 0u) { lse[lse_row(b, r)] = ${lseBits}; }
      let at = q_row(b, r) + 4u * d4;
      o[at] = ${dtype}(x.x); o[at + 1u] = ${dtype}(x.y); o[at + 2u] = ${dtype}(x.z); o[at + 3u] = ${dtype}(x.w);`;
  return `${enables(dtype)}enable subgroups;
${DECODE_SIZES_WGSL}
@group(0) @binding(0) var<uniform> u: Sizes;
@group(0) @binding(1) var<storage, read> q: array<${dtype}>;
@group(0) @binding(2) var<storage, read> k: array<${kvType}>;
@group(0) @binding(3) var<storage, read> vv: array<${kvType}>;
${outputs}
${extra}
${mods.decls ? `${mods.decls}\n` : ''}
const D4 = ${D4}u;
const R = ${R}u;
const NG = ${NG}u;
${MASKED_WGSL}

var<workgroup> Ml: array<f32, ${NG * R * 2}>; // (group, row): m, l
var<workgroup> Og: array<vec4<f32>, ${NG * R * D4}>; // (group, row, D4): the group's O

${OPAQUE_WGSL}
${NAN_WGSL}

${rowsWGSL}
/** vec4 d4 of query row r (the rows of this workgroup), as f32. */
fn load_q(r: u32, d4: u32) -> vec4<f32> {
  let at = q_row(bIndex, r) + 4u * d4;
  let last = arrayLength(&q) - 1u;
  return vec4<f32>(f32(q[min(at, last)]), f32(q[min(at + 1u, last)]), f32(q[min(at + 2u, last)]), f32(q[min(at + 3u, last)]));
}
var<private> bIndex: u32;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let s = wid.x; // this workgroup's split
  let b = wid.z;
  bIndex = b;
  hk = wid.y / u.rowChunks;
  row0 = (wid.y % u.rowChunks) * R;
  ${cache ? 'let info = seqs[b];\n  slot = info.x;\n  let len = info.y;' : 'slot = b;\n  let len = u.Nk;'}
  let keyStart = ${mods.keyStart};
  let keyEnd = min(len, keyStart + u.chunk);
  let lane = lid % ${T}u;
  let grp = lid / ${T}u;${p.scatter ? `\n  let j = lane % ${U}u; // the key of the group's U this lane takes the softmax of` : ''}
  ${decl}
  ${rows.map((r) => `var poisoned${r} = false;`).join(' ')}
  ${loadQ}${p.mods ? `\n  ${rows.map((r) => mods.rowOf(`${r}u`, `_${r}`, '  ')).join('\n  ')}` : ''}

  // Every group runs the same iterations (keys past the end are masked), so the loop is uniform.
  for (var k0 = keyStart; k0 < keyEnd; k0 += ${NG * U}u) {
      let kb = k0 + grp * ${U}u;${p.scatter ? '\n      let mine = kb + j;' : ''}
      ${pageRun}${loads}
      ${p.scatter ? perRowScatter : perRow}
  }

  // Combine the NG groups: M = max m_g, L = Σ e^(m_g − M) l_g, O = Σ e^(m_g − M) O_g / L.
  ${gatherLanes ? `${gatherLanes}\n  ` : ''}${stashGroup}
  workgroupBarrier();
  for (var e = lid; e < R * D4; e += ${WG}u) {
    let r = e / D4;
    let d4 = e % D4;
    if (ok_row(r)) {
      var M = MASKED;
      var poisoned = false;
      for (var g = 0u; g < NG; g++) {
        M = max(M, Ml[(g * R + r) * 2u]);
        poisoned = poisoned || is_nan(Ml[(g * R + r) * 2u + 1u]);
      }
      var L = 0.0;
      var acc = vec4<f32>(0.0);
      if (M != MASKED) {
        for (var g = 0u; g < NG; g++) {
          let mg = Ml[(g * R + r) * 2u];
          if (mg != MASKED) {
            let w = exp(mg - M);
            L += w * Ml[(g * R + r) * 2u + 1u];
            acc += w * Og[(g * R + r) * D4 + d4];
          }
        }
      }
      var x = select(acc / L, vec4<f32>(0.0), L == 0.0);
      if (poisoned) { x = vec4<f32>(nan()); }
      ${write}
    }
  }
}
`;
}
