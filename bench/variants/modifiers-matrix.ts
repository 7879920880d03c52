/**
 * What the variants' block skipping buys on the subgroup-matrix forward (issue 15: a window ≥ 6× faster
 * than full causal, 10 % block-sparse ≥ 5× faster than dense), run on the GPU machine:
 * `bash .gpu/enter.sh node dist/bench/variants/modifiers-matrix.js`.
 * f16, B = 1, H = 16, D = 128, N = 16384, GPU-resident tensors; causal, window [1024, 0] + causal, dense,
 * and a block mask of 128 × 128 blocks at about 10 % density. Two times each, median of 7 after 2
 * warm-ups: the call (webgpuForward on the subgroup-matrix kernel, wall clock until the queue is done:
 * host work such as the tile table included), and the kernel alone (5 dispatches in one submission,
 * per dispatch).
 */
import { checkForward, type Problem } from '../../src/problem.js';
import { mix32 } from '../../src/modifiers.js';
import type { AttentionOptions, GpuTensor } from '../../src/index.js';
import { defaultGpu, type Gpu } from '../../src/webgpu/device.js';
import { Call, forwardKernel, forwardMatrixParams, forwardTiles, sizesOf, webgpuForward, type ForwardChoice } from '../../src/webgpu/index.js';
import { sizesBytes } from '../../src/webgpu/kernels/common.js';
import { modBindGroup, modBuffers } from '../../src/webgpu/modifiers.js';
import { dispatch } from '../../src/webgpu/pipelines.js';
import { randomF16 } from './util.js';

const [B, H, N, D] = [1, 16, 16384, 128];

function matrix(p: Problem, gpu: Gpu): ForwardChoice {
  const params = forwardMatrixParams(p, gpu);
  if (!params) throw new Error('the subgroup-matrix forward does not fit');
  return { kernel: 'forwardMatrix', params };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const gpu = await defaultGpu();
  const { device } = gpu;
  console.log(`${gpu.description} matrixF16=${gpu.matrixF16} subgroupSize=${gpu.subgroupSize}`);
  const make = (seed: number): GpuTensor => {
    const values = randomF16(B * N * H * D, seed);
    const data = device.createBuffer({ size: values.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(data, 0, values);
    return { data, dtype: 'f16', shape: [B, N, H, D] };
  };
  const [q, k, v] = [make(1), make(2), make(3)];
  const blocks = N / 128;
  const mask = Uint8Array.from({ length: blocks * blocks }, (_, e) => (mix32(e * 7919 + 5) / 2 ** 32 < 0.1 ? 1 : 0));
  const density = mask.reduce((a, x) => a + x, 0) / mask.length;
  const cases: [string, AttentionOptions][] = [
    ['causal', { causal: true }],
    ['window [1024, 0] + causal', { window: [1024, 0], causal: true }],
    ['dense', {}],
    [`block mask 128x128, density ${(100 * density).toFixed(1)} %`, { blockMask: { data: mask, shape: [1, 1, blocks, blocks], blockSize: [128, 128] } }],
  ];
  const times: Record<string, { call: number; kernel: number }> = {};
  for (const [name, options] of cases) {
    const p = checkForward(q, k, v, options);
    const callOnce = async () => {
      const t0 = performance.now();
      const f = await webgpuForward(p, q, k, v, matrix);
      await device.queue.onSubmittedWorkDone();
      const ms = performance.now() - t0;
      for (const t of [f.out, f.lse]) (t as GpuTensor).data.destroy();
      return ms;
    };
    const calls: number[] = [];
    for (let r = 0; r < 9; r++) calls.push(await callOnce());
    // The kernel alone: its pipeline and bind groups as webgpuForward makes them.
    const choice = matrix(p, gpu);
    const { pipe, Br } = await forwardKernel(gpu, choice);
    const call = new Call(p, gpu);
    const sizes = call.buffers.uniform(sizesBytes(sizesOf(p)), 'sizes');
    const mods = choice.params.mods;
    const group1 = mods ? modBindGroup(device, pipe, modBuffers(p, mods, call.buffers, { Br, Bc: forwardTiles(choice).Bc })) : undefined;
    const out = call.output(B * N * H * D, 'out', 'q');
    const lse = call.output(B * H * N, 'lse', 'q', 'f32');
    const kernels: number[] = [];
    for (let r = 0; r < 9; r++) {
      const enc = device.createCommandEncoder();
      for (let x = 0; x < 5; x++) dispatch(enc, device, pipe, [sizes, q.data, k.data, v.data, out, lse], [Math.ceil(N / Br), B * H], group1);
      const t0 = performance.now();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
      kernels.push((performance.now() - t0) / 5);
    }
    call.dispose();
    times[name] = { call: median(calls.slice(2)), kernel: median(kernels.slice(2)) };
    console.log(`${name}: call ${times[name].call.toFixed(2)} ms, kernel ${times[name].kernel.toFixed(2)} ms (mods '${mods ?? ''}', Br ${Br}, Bc ${forwardTiles(choice).Bc})`);
  }
  const [c, w, d, s] = cases.map(([name]) => times[name]);
  console.log(`window vs causal: ${(c.call / w.call).toFixed(2)}x (call), ${(c.kernel / w.kernel).toFixed(2)}x (kernel); issue 15 wants >= 6x`);
  console.log(`block-sparse vs dense: ${(d.call / s.call).toFixed(2)}x (call), ${(d.kernel / s.kernel).toFixed(2)}x (kernel); issue 15 wants >= 5x`);
}

await main();
