/**
 * Where the subgroup-matrix forward's time goes, on the GPU machine:
 * `bash .gpu/enter.sh node dist/bench/variants/probe-ablate.js [Ds: 128,64] [cuts: name|name…] [tiles: JSON array]`
 * (by default every cut, with the library's tiles).
 *
 * The shipped kernel (forwardMatrixWGSL with the library's tiles) is timed whole, then with one part of
 * its key-block loop cut out of the generated WGSL at a time: its results are then wrong (these variants
 * are never validated and never used; they only say what each part costs). The whole kernel is the
 * library's, validated by the tests and the forward sweep. Timing as the forward sweep (util.ts
 * timeForward): 300 ms of dispatches, then R dispatches per submission, best of 3; f16, non-causal,
 * B·N = 16384, H·D = 2048; TFLOP/s by PRODUCT.md's FLOP rule, so a cut that leaves less work still reads
 * as the same FLOPs in less time.
 */
import { attentionFlops } from '../../src/index.js';
import { FORWARD_MATRIX_TILES } from '../../src/webgpu/index.js';
import { forwardMatrixRows, forwardMatrixWGSL, type ForwardMatrixParams } from '../../src/webgpu/kernels/forward-matrix.js';
import { pipeline } from '../../src/webgpu/pipelines.js';
import { forwardBuffers, gpuWithExtraToggles, timeForward } from './util.js';

/** Each cut: the WGSL lines it drops (or rewrites). */
const CUTS: Record<string, (wgsl: string) => string> = {
  whole: (s) => s,
  // K_j, V_j never written to workgroup memory (so their global loads are dead too).
  'no staging': (s) => s.replace(/^.*T\[(KT|VT) \+ at\].*$/gm, ''),
  // Written, but every register loads element 0 from storage (one cached address; the bindings stay).
  'no K/V global loads': (s) => s.replace(/^(\s*[kv]x\d+ = [kv])\[g\];$/gm, '$1[0];'),
  // S = Q_i K_jᵀ left at zero (K_j's fragment loads become dead).
  'no QK products': (s) => s.replace(/^\s*s\d+ = subgroupMatrixMultiplyAccumulate\(q.*$/gm, ''),
  // O_i += P̃V_j and l += P̃·1 cut (V_j's and P̃'s fragment loads become dead).
  'no PV products': (s) => s.replace(/^\s*[ol]\d+(_\d+)? = subgroupMatrixMultiplyAccumulate\(p.*$/gm, ''),
  // P̃ = S − m instead of exp2: the softmax's exponentials.
  'no exp': (s) => s.replace(/exp2\(\((sc\d+) - sm\) \* scale2\)/g, '($1 - sm)'),
  // The scores not read back, P̃ not written (S is still stored by the tensor cores).
  'no softmax memory': (s) =>
    s.replace(/let (sc\d+) = S\[sr \+ \d+u\];/g, 'let $1 = f32(lid);').replace(/^\s*T\[PT \+ sr.*$/gm, ''),
  // Not a cut (the result stays right): Q_i's fragments loaded from storage in every key block, before
  // S = Q_i K_jᵀ, instead of held in registers for the whole loop (fewer registers through the softmax
  // and P̃V_j).
  'Q loaded per block': (s) => {
    const load = /^\s*let q\d+_\d+ = subgroupMatrixLoad.*$/gm;
    const loads = (s.match(load) ?? []).map((line) => `    ${line.trim()}`);
    return s.replace(load, '').replace(/^(\s*\/\/ Alg\. 1 line 8:.*)$/m, `$1\n${loads.join('\n')}`);
  },
  // No workgroupBarrier in the key-block loop, and the rescale never taken (the flag's load is a barrier).
  'no loop barriers': (s) => {
    const start = s.indexOf('for (var j = 0u; j < Tc; j++)');
    const end = s.indexOf('// Alg. 1 lines 12-15');
    const loop = s.slice(start, end).replace(/^\s*workgroupBarrier\(\);$/gm, '').replace('if (workgroupUniformLoad(&S[FLAG]) != 0.0)', 'if (false)');
    return s.slice(0, start) + loop + s.slice(end);
  },
};

// DAWN_EXTRA=toggle,toggle: more Dawn toggles for this run (gpuWithExtraToggles).
const gpu = await gpuWithExtraToggles();
console.log(`${new Date().toISOString()} ${gpu.description} matrixF16=${gpu.matrixF16} subgroupSize=${gpu.subgroupSize}`);
if (gpu.matrixF16 && gpu.subgroupSize !== undefined) {
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const Ds = (process.argv[2] ?? '128,64').split(',').map(Number);
  for (const D of Ds) {
    const tilings = process.argv[4] ? (JSON.parse(process.argv[4]) as Array<Partial<(typeof FORWARD_MATRIX_TILES)[number]>>).map((t) => ({ ...FORWARD_MATRIX_TILES[D], ...t })) : [FORWARD_MATRIX_TILES[D]];
    const cuts = process.argv[3] ? process.argv[3].split('|') : Object.keys(CUTS);
    // OCCUPANCY=1: one head of N = 16384 (Tr workgroups, fewer than the SMs), then 2 and 4 heads: a time
    // that grows less than the workgroups do says that more than one workgroup fits an SM.
    const shapes = process.env.OCCUPANCY
      ? [1, 2, 4].map((H) => ({ B: 1, H, N: 16384, D, causal: false }))
      : [4096, 16384].map((N) => ({ B: 16384 / N, H: 2048 / D, N, D, causal: false }));
    for (const shape of shapes) {
      const { N } = shape;
      const bufs = forwardBuffers(gpu, shape);
      const flops = attentionFlops({ ...shape, Nq: N, Nk: N });
      for (const [tiles, name] of tilings.flatMap((t) => cuts.map((c) => [t, c] as const))) {
        const params: ForwardMatrixParams = { D, ...tiles, SGS: gpu.subgroupSize!, causal: false };
        const cut = CUTS[name];
        if (!cut) throw new Error(`no cut named "${name}": ${Object.keys(CUTS).join(', ')}`);
        const whole = forwardMatrixWGSL(params, limit);
        const code = cut(whole);
        if (name !== 'whole' && code === whole) throw new Error(`cut "${name}" changed nothing`);
        const pipe = await pipeline(gpu.device, `ablate ${name}`, params, () => code).catch((e: Error) => e);
        if (pipe instanceof Error) {
          console.log(`D=${D} N=${N} ${name}: did not compile: ${pipe.message.slice(0, 400)}`);
          continue;
        }
        const ms = await timeForward(gpu, shape, bufs, pipe, forwardMatrixRows(params));
        console.log(`D=${D} N=${N} B=${shape.B} H=${shape.H} ${JSON.stringify(tiles)} ${name}: ${ms.toFixed(3)} ms, ${(flops / ms / 1e9).toFixed(1)} TFLOP/s`);
      }
      for (const b of bufs) b.destroy();
    }
  }
}
