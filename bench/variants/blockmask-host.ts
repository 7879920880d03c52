/**
 * Host work per forward() call with a block mask (or a mask) on webgpu, for calls that repeat with the same
 * arrays (a training loop): `XDG_RUNTIME_DIR=/tmp node dist/bench/variants/blockmask-host.js [--n=4096]
 * [--h=16] [--d=16] [--block=64] [--calls=30]`.
 *
 * The block mask keeps only the diagonal blocks, so the kernel skips almost every tile and a call's time is
 * mostly the host's: the variants' bind group (modBuffers: tile table, bits, uploads) and the call's own
 * plumbing. Printed: the median over `calls` calls of (1) modBuffers alone for the forward kernel's tiles,
 * (2) the whole forward() on GPUBuffers, awaited one after the other, with a block mask, and with a mask
 * of the same (Nq, Nk) per head instead (bits of Nq·Nk elements).
 * Measured on lavapipe (2 cores shared), see the commit that added this file for the figures.
 */
import { forward, webgpuDevice, type AttentionOptions, type GpuTensor } from '../../src/index.js';
import { checkForward } from '../../src/problem.js';
import { GpuBuffers } from '../../src/webgpu/buffers.js';
import { defaultGpu } from '../../src/webgpu/device.js';
import { forwardChoice, forwardTiles } from '../../src/webgpu/index.js';
import { modBuffers } from '../../src/webgpu/modifiers.js';
import { MemoryTracker } from '../../src/memory.js';

const args = process.argv.slice(2);
const arg = (name: string, fallback: number) => Number(args.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback);
const [N, H, D, size, calls] = [arg('n', 4096), arg('h', 16), arg('d', 16), arg('block', 64), arg('calls', 30)];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const device = await webgpuDevice();
  const gpu = await defaultGpu();
  const buffer = (n: number): GpuTensor => {
    const data = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(data, 0, Float32Array.from({ length: n }, (_, e) => Math.sin(e)));
    return { data, dtype: 'f32', shape: [1, N, H, D] };
  };
  const [q, k, v] = [buffer(N * H * D), buffer(N * H * D), buffer(N * H * D)];
  const T = Math.ceil(N / size);
  const blocks = new Uint8Array(H * T * T);
  for (let e = 0; e < blocks.length; e++) blocks[e] = Math.floor(e / T) % T === e % T ? 1 : 0;
  const sets: [string, AttentionOptions][] = [
    [`block mask [1, ${H}, ${T}, ${T}] of ${size}×${size}, diagonal`, { blockMask: { data: blocks, shape: [1, H, T, T], blockSize: [size, size] } }],
    [`block mask as above + a key mask [1, 1, 1, ${N}]`, { blockMask: { data: blocks, shape: [1, H, T, T], blockSize: [size, size] }, mask: { data: new Uint8Array(N).fill(1), shape: [1, 1, 1, N] } }],
  ];
  console.log(`${gpu.description}: N = ${N}, H = ${H}, D = ${D}, f32, GPUBuffers; median of ${calls} calls`);
  for (const [name, options] of sets) {
    const p = checkForward(q, k, v, options);
    const choice = forwardChoice(p, gpu);
    const tiles = { Br: forwardTiles(choice).Br, Bc: forwardTiles(choice).Bc };
    const mods = choice.params.mods!;
    const host: number[] = [];
    for (let c = 0; c < calls; c++) {
      const buffers = new GpuBuffers(device, new MemoryTracker());
      const t0 = performance.now();
      modBuffers(checkForward(q, k, v, options), mods, buffers, tiles);
      host.push(performance.now() - t0);
      buffers.destroyAll();
    }
    const whole: number[] = [];
    for (let c = 0; c < calls + 2; c++) {
      const t0 = performance.now();
      const { out, lse } = await forward(q, k, v, options);
      if (c >= 2) whole.push(performance.now() - t0);
      out.data.destroy();
      lse.data.destroy();
    }
    console.log(`${name} (${choice.kernel} ${tiles.Br}×${tiles.Bc}): modBuffers ${median(host).toFixed(3)} ms, forward() ${median(whole).toFixed(3)} ms`);
  }
  [q, k, v].forEach((t) => t.data.destroy());
}

await main();
