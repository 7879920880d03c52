/**
 * Tuning sweep for the subgroup-matrix forward (src/webgpu/kernels/forward-matrix.ts), run on the GPU
 * machine: `bash .gpu/enter.sh node dist/bench/variants/forward-matrix.js`.
 *
 * 1. Validates the kernel the library picks, on a few shapes with tails, against the float64 reference,
 *    beside the webgpu standard attention in the same dtype (the correctness rule: error ≤ 2× standard's).
 * 2. Times each variant (Bc, SG, pad) at B·N = 16384, H·D = 2048, f16, forward: R dispatches in one
 *    submission, wall clock until the queue is done, best of 3; TFLOP/s by PRODUCT.md's FLOP rule.
 * Results are kept in bench/results/ with the date and device.
 */
import { attentionFlops, forward, tensor } from '../../src/index.js';
import { checkForward } from '../../src/problem.js';
import { defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { forwardChoice, forwardKernel, forwardParams, sizesOf } from '../../src/webgpu/index.js';
import { sizesBytes } from '../../src/webgpu/kernels/common.js';
import { forwardMatrixProblem, forwardMatrixWorkgroupBytes, type ForwardMatrixParams } from '../../src/webgpu/kernels/forward-matrix.js';
import { dispatch } from '../../src/webgpu/pipelines.js';
import { maxErr, randomF16 } from './util.js';


async function validate(gpu: Gpu): Promise<boolean> {
  const cases = [
    { B: 2, H: 3, Nq: 113, Nk: 203, D: 64 },
    { B: 2, H: 3, Nq: 1023, Nk: 1024, D: 128 },
    { B: 2, H: 3, Nq: 108, Nk: 256, D: 40 },
    { B: 2, H: 3, Nq: 113, Nk: 211, D: 128 },
    { B: 2, H: 3, Nq: 512, Nk: 256, D: 64 },
    { B: 1, H: 2, Nq: 40, Nk: 70, D: 32 },
    { B: 1, H: 2, Nq: 256, Nk: 512, D: 256 },
    { B: 2, H: 3, Nq: 128, Nk: 217, D: 59 },
    { B: 2, H: 3, Nq: 512, Nk: 256, D: 8 },
    { B: 1, H: 2, Nq: 1, Nk: 1, D: 1 },
  ];
  let ok = true;
  for (const c of cases) {
    for (const causal of [false, true]) {
      const q = tensor(randomF16(c.B * c.Nq * c.H * c.D, 1), [c.B, c.Nq, c.H, c.D], 'f16');
      const k = tensor(randomF16(c.B * c.Nk * c.H * c.D, 2), [c.B, c.Nk, c.H, c.D], 'f16');
      const v = tensor(randomF16(c.B * c.Nk * c.H * c.D, 3), [c.B, c.Nk, c.H, c.D], 'f16');
      const ref = await forward(q, k, v, { backend: 'reference', causal });
      const fl = await forward(q, k, v, { backend: 'webgpu', causal }).catch((e: Error) => e);
      if (fl instanceof Error) {
        console.log(`FAIL ${JSON.stringify(c)} causal=${causal}: ${fl.message.slice(0, 600)}`);
        return false;
      }
      const st = await forward(q, k, v, { backend: 'webgpu', causal, algorithm: 'standard' });
      const kernel = forwardChoice(checkForward(q, k, v, { causal }), gpu).kernel;
      const [eo, so, el, sl] = [maxErr(fl.out, ref.out), maxErr(st.out, ref.out), maxErr(fl.lse, ref.lse), maxErr(st.lse, ref.lse)];
      const pass = eo <= 2 * so + 1e-6 && el <= 2 * sl + 1e-6;
      ok &&= pass;
      console.log(`${pass ? 'ok  ' : 'FAIL'} ${kernel} ${JSON.stringify(c)} causal=${causal} out ${eo.toExponential(2)} (std ${so.toExponential(2)}) lse ${el.toExponential(2)} (std ${sl.toExponential(2)})`);
    }
  }
  return ok;
}

interface Shape {
  B: number;
  H: number;
  N: number;
  D: number;
}

/** Device buffers for a shape, filled once (random f16 values; drawing them in JS is the slow part). */
function buffers(gpu: Gpu, { B, H, N, D }: Shape): GPUBuffer[] {
  const { device } = gpu;
  const bytes = B * N * H * D * 2;
  const data = randomF16(B * N * H * D, 1);
  const make = (usage: number, fill: boolean) => {
    const buf = device.createBuffer({ size: bytes, usage });
    if (fill) device.queue.writeBuffer(buf, 0, data);
    return buf;
  };
  const input = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const lse = device.createBuffer({ size: B * H * N * 4, usage: GPUBufferUsage.STORAGE });
  return [make(input, true), make(input, true), make(input, true), make(GPUBufferUsage.STORAGE, false), lse];
}

async function time(gpu: Gpu, shape: Shape & { causal: boolean }, bufs: GPUBuffer[], params: ForwardMatrixParams | undefined): Promise<number> {
  const { device } = gpu;
  const { B, H, N, D, causal } = shape;
  const [Q, K, V, out, lse] = bufs;
  const gt = (data: GPUBuffer) => ({ data, dtype: 'f16' as const, shape: [B, N, H, D] });
  const p = checkForward(gt(Q), gt(K), gt(V), { causal });
  const { pipe, Br } = await forwardKernel(gpu, params ? { kernel: 'forwardMatrix', params } : { kernel: 'forward', params: forwardParams(p, gpu) });
  const sizes = device.createBuffer({ size: 48, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(sizes, 0, sizesBytes(sizesOf(p)));
  const run = async (R: number) => {
    const enc = device.createCommandEncoder();
    for (let r = 0; r < R; r++) dispatch(enc, device, pipe, [sizes, Q, K, V, out, lse], [Math.ceil(N / Br), B * H]);
    const t0 = performance.now();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / R;
  };
  const once = await run(1); // warm-up, and the time that sets R (about 0.2 s per timed run)
  const R = Math.max(1, Math.min(50, Math.round(200 / once)));
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, await run(R));
  sizes.destroy();
  return best;
}

async function main(): Promise<void> {
  const gpu = await defaultGpu();
  console.log(`${new Date().toISOString()} ${gpu.description} matrixF16=${gpu.matrixF16} subgroupSize=${gpu.subgroupSize}`);
  const ok = process.argv[3] === 'novalidate' || (await validate(gpu));
  console.log(ok ? 'validation: all pass' : 'validation: FAILED');
  if (!gpu.matrixF16 || gpu.subgroupSize === undefined) return;
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const only = process.argv[2];
  const variants: Array<Pick<ForwardMatrixParams, 'Bc' | 'RF'>> = [
    { Bc: 16, RF: 2 },
    { Bc: 32, RF: 2 },
    ...(only === 'quick' ? [{ Bc: 64, RF: 2 }, { Bc: 32, RF: 1 }, { Bc: 64, RF: 1 }] : []),
  ];
  for (const D of [64, 128]) {
    for (const N of only === 'quick' ? [4096] : [1024, 4096, 16384]) {
      const bufs = buffers(gpu, { B: 16384 / N, H: 2048 / D, N, D });
      for (const causal of only === 'quick' ? [false] : [false, true]) {
        const shape = { B: 16384 / N, H: 2048 / D, N, D, causal };
        const flops = attentionFlops({ ...shape, Nq: N, Nk: N });
        const cells: string[] = [];
        for (const v of variants) {
          const params: ForwardMatrixParams = { D, ...v, SGS: gpu.subgroupSize, causal };
          if (forwardMatrixProblem(params) || forwardMatrixWorkgroupBytes(params) > limit) continue;
          const ms = await time(gpu, shape, bufs, params);
          cells.push(`Bc${v.Bc}/RF${v.RF} ${(flops / ms / 1e9).toFixed(1)}`);
          console.log(`  D=${D} N=${N} causal=${causal} ${cells[cells.length - 1]}`);
        }
        if (N === 4096 && only !== 'quick') cells.push(`portable ${(flops / (await time(gpu, shape, bufs, undefined)) / 1e9).toFixed(1)}`);
        console.log(`D=${D} N=${N} causal=${causal}: ${cells.join(' | ')} TFLOP/s`);
      }
      for (const b of bufs) b.destroy();
    }
  }
}

await main();
