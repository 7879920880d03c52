/**
 * Why do the portable and register-tiled f32 webgpu forwards break the 2× rule at large |scale| on
 * lavapipe (issue 15, section 3)? `XDG_RUNTIME_DIR=/tmp node dist/bench/variants/probe-scale.js
 * [--d=64] [--scales=3,-3,5] [--shapes=45x77,128x128,113x300]`.
 *
 * For each shape and scale (f32, B = 1, H = 2, unit-normal inputs from test/util.ts's seeds), the errors
 * of out and lse against the float64 oracle of: the webgpu portable forward ('forward'), the register-tiled
 * one ('forwardTiled'), the webgpu standard attention (the rule's yardstick), the cpu flash and standard;
 * and the ratio to the yardstick (the rule: ≤ 2). Then two models in f64 with f32 rounding (Math.fround) of
 * where S = scale·QKᵀ picks up its error: the scale folded into Q before the dot product (as the flash
 * kernels do) against the scale applied to the finished dot product (as the standard matmul does), and
 * exp() of lavapipe against Math.exp on the arguments the softmax sees. `--backward` adds the backward's
 * ratios (the library's choice of kernels) against the webgpu standard's.
 *
 * What it found (lavapipe, Mesa 25.0.7, 2026-12-04), D = 128, shapes 113×300, 255×256, 128×128, scales
 * 3, −3, 5, 8; "before": S summed as one running sum over D, s += dot(scale·q, k) per vec4:
 *   - out's error 2.8–3.0× the standard's at scale 3 (113×300, 255×256), 2.5× at scale 8; lse up to 2.2×;
 *     dk up to 3.6× (255×256, scale 5): the rule's 2× and 3× broken, the portable and tiled kernels alike
 *     (their errors agree to 3 digits), the cpu's errors 3× smaller than either webgpu's;
 *   - exp() is not it: lavapipe's exp is off by up to 31 ulp on [−40, 0] (about 1.5 ulp per unit of
 *     |x|: exp2 of a rounded x·log2e), but the kernels with an exp of reduced argument (n·ln2 split off
 *     with two fmas, ldexp; ≤ 3 ulp) in P̃ and in the rescale factors gave the same errors to 3 digits: at
 *     these scales the rows are nearly one-hot, and out's error comes from the scores of the runner-up keys;
 *   - the scale folded into Q is a small part: unfolded (s = scale·Σ q·k), out's ratio at scale 3 fell to
 *     1.2–1.4, but at scale 8 (a power of two: the fold is exact) stayed 2.5;
 *   - the order of the sum is it: the standard's matmul sums over K in blocks (a partial sum per block,
 *     then the blocks), a running sum over D = 128 rounds at the size of the whole sum 32 times. Summing
 *     S in chunks of 8 vec4s (common.ts's S_CHUNK4) in every forward and backward kernel (consistently:
 *     the backward's P = exp(S − L) must be the forward's, else dv's error grew to 5–9×): out 0.52–1.23×,
 *     lse 0.60–1.17×, dq ≤ 1.45×, dk ≤ 1.25×, dv ≤ 1.41× over the same 12 cases; D = 64: out ≤ 1.55×,
 *     lse ≤ 1.05×, dq, dk ≤ 1.69×, dv ≤ 1.08× (before: out up to 1.96×).
 * The chunked sum was then reverted: on an H200 it made the register-tiled f32 kernels 6–36 % slower
 * (bench/results/2026-12-04-h200-evening.md), and the plain kernels may not get slower. The kernels sum
 * S in one running sum again, and this probe measures that (the figures "before" above).
 */
import { backward, forward, type Tensor } from '../../src/index.js';
import { checkForward } from '../../src/problem.js';
import { standardBackward, standardForward } from '../../src/reference/index.js';
import { toF64 } from '../../src/tensor.js';
import { defaultGpu } from '../../src/webgpu/device.js';
import { forwardParams, forwardTiledParams, webgpuForward } from '../../src/webgpu/index.js';
import { inputs } from '../../test/util.js';

const args = process.argv.slice(2);
const opt = (name: string, fallback: string) => args.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback;
const D = Number(opt('d', '64'));
const scales = opt('scales', '3,-3,5').split(',').map(Number);
const shapes = opt('shapes', '45x77,128x128,113x300').split(',').map((s) => s.split('x').map(Number) as [number, number]);

const maxError = (x: Float64Array, ref: Float64Array) => x.reduce((e, v, i) => (v === ref[i] ? e : Math.max(e, Math.abs(v - ref[i]))), 0);

async function main(): Promise<void> {
  const gpu = await defaultGpu();
  console.log(`${gpu.description}; D = ${D}, f32, B = 1, H = 2`);
  console.log('Nq×Nk scale | out error: portable tiled standard(webgpu) cpu-flash cpu-std | ratio portable, tiled | lse ratio portable, tiled | S error model: folded / applied');
  for (const [Nq, Nk] of shapes) {
    const c = { B: 1, H: 2, Hkv: 2, Nq, Nk, D };
    const { q, k, v, dout } = inputs(c, 'f32', 'BNHD');
    for (const scale of scales) {
      const p = checkForward(q, k, v, { scale, backend: 'webgpu' });
      const oracle = standardForward(p, toF64(q), toF64(k), toF64(v));
      const portable = await webgpuForward(p, q, k, v, (p, g) => ({ kernel: 'forward', params: forwardParams(p, g) }));
      const tiledParams = forwardTiledParams(p, gpu);
      const tiled = tiledParams ? await webgpuForward(p, q, k, v, () => ({ kernel: 'forwardTiled', params: tiledParams })) : undefined;
      const std = await forward(q, k, v, { scale, backend: 'webgpu', algorithm: 'standard' });
      const cpuF = await forward(q, k, v, { scale, backend: 'cpu' });
      const cpuS = await forward(q, k, v, { scale, backend: 'cpu', algorithm: 'standard' });
      const e = (r: { out: unknown; lse: unknown } | undefined, what: 'out' | 'lse') => (r ? maxError(toF64(r[what] as Tensor), oracle[what]) : NaN);
      const [ep, et, es, ecf, ecs] = [portable, tiled, std, cpuF, cpuS].map((r) => e(r, 'out'));
      const [lp, lt, ls] = [portable, tiled, std].map((r) => e(r, 'lse'));
      const model = sErrors(toF64(q), toF64(k), c, scale);
      console.log(
        `${Nq}×${Nk} ${scale} | ${[ep, et, es, ecf, ecs].map((x) => x.toExponential(2)).join(' ')} | ${(ep / es).toFixed(2)}, ${(et / es).toFixed(2)} | ${(lp / ls).toFixed(2)}, ${(lt / ls).toFixed(2)} | ${model.folded.toExponential(2)} / ${model.applied.toExponential(2)}`,
      );
      if (args.includes('--backward')) {
        // The backward (the family the library picks) against the webgpu standard's, each from its own forward.
        const grads = await Promise.all((['flash', 'standard'] as const).map(async (algorithm) => {
          const o = { scale, backend: 'webgpu', algorithm } as const;
          const f = await forward(q, k, v, o);
          return backward(dout, q, k, v, f.out, f.lse, o);
        }));
        const ref = standardBackward(p, toF64(dout), toF64(q), toF64(k), toF64(v));
        const ratio = (g: 'dq' | 'dk' | 'dv') => maxError(toF64(grads[0][g]), ref[g]) / maxError(toF64(grads[1][g]), ref[g]);
        console.log(`  backward ratios (rule: ≤ 3): dq ${ratio('dq').toFixed(2)}, dk ${ratio('dk').toFixed(2)}, dv ${ratio('dv').toFixed(2)}`);
      }
    }
  }
  await expAccuracy();
}

/**
 * The mean |error| of S = scale·q·k in f32 arithmetic, two ways: the scale folded into q (fround(q·scale),
 * then a rounded running sum, 4 lanes as vec4 dots), and applied once to the rounded sum.
 */
function sErrors(Q: Float64Array, K: Float64Array, c: { H: number; Nq: number; Nk: number; D: number }, scale: number) {
  const f = Math.fround;
  let [folded, applied, n] = [0, 0, 0];
  for (let h = 0; h < c.H; h++) {
    for (let i = 0; i < c.Nq; i += 3) {
      for (let j = 0; j < c.Nk; j += 3) {
        let [exact, a, b] = [0, 0, 0];
        for (let d = 0; d < c.D; d++) {
          const [x, y] = [Q[(i * c.H + h) * c.D + d], K[(j * c.H + h) * c.D + d]];
          exact += x * y;
          a = f(a + f(f(x * scale) * y));
          b = f(b + f(x * y));
        }
        folded += Math.abs(a - scale * exact);
        applied += Math.abs(f(scale * b) - scale * exact);
        n++;
      }
    }
  }
  return { folded: folded / n, applied: applied / n };
}

/** lavapipe's exp() against Math.exp on f32 arguments in [−40, 0]: the largest error in units of the result's f32 spacing. */
async function expAccuracy(): Promise<void> {
  const { device } = await defaultGpu();
  const n = 1 << 16;
  const x = Float32Array.from({ length: n }, (_, e) => -40 * (e / n));
  const code = `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) { a[g.x] = exp(a[g.x]); }`;
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const buf = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(buf, 0, x);
  const read = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }] }));
  pass.dispatchWorkgroups(n / 64);
  pass.end();
  enc.copyBufferToBuffer(buf, 0, read, 0, n * 4);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const y = new Float32Array(read.getMappedRange().slice(0));
  let [worst, mean] = [0, 0];
  for (let e = 0; e < n; e++) {
    const exact = Math.exp(x[e]);
    const ulp = 2 ** (Math.floor(Math.log2(exact)) - 23);
    const err = Math.abs(y[e] - exact) / ulp;
    worst = Math.max(worst, err);
    mean += err / n;
  }
  console.log(`exp() on this adapter, f32 arguments in [−40, 0]: largest error ${worst.toFixed(2)} ulp, mean ${mean.toFixed(2)} ulp (correctly rounded: ≤ 0.5)`);
}

await main();
