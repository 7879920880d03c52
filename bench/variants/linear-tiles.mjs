// The nn linear kernel's tile variants (src/nn/webgpu/kernels.ts), timed on the webgpu backend at the seed
// encoder's shapes (M = B·N tokens, K → N features), so that linearTileFor's rule (128×128 tiles, 8×8 per
// invocation, once they give ≥ 256 workgroups; else 64×64, 4×4) can be checked on a real GPU.
// Not yet measured on a GPU: on lavapipe (2 shared cores) every variant runs at a few GFLOP/s.
// Run after `npm run build`:  node bench/variants/linear-tiles.mjs [f16|f32]
// (on the GPU machine: bash .gpu/enter.sh node bench/variants/linear-tiles.mjs f16)
import { linearDims, linearTile, linearWGSL } from '../../dist/src/nn/webgpu/kernels.js';
import { defaultGpu } from '../../dist/src/webgpu/device.js';
import { dispatch, pipeline } from '../../dist/src/webgpu/pipelines.js';

const dtype = process.argv[2] ?? 'f16';
const TILES = [
  { RM: 4, CN: 1, BK: 16 },
  { RM: 8, CN: 1, BK: 16 },
  { RM: 4, CN: 2, BK: 16 },
  { RM: 8, CN: 2, BK: 8 },
  { RM: 8, CN: 2, BK: 16 },
];
const SHAPES = [[4096, 512, 512], [4096, 512, 2048], [4096, 2048, 512], [32768, 512, 512], [32768, 512, 2048], [32768, 2048, 512]];

const gpu = await defaultGpu();
const { device } = gpu;
console.log(`${gpu.description} ${dtype}; GFLOP/s = 2·M·N·K / time, mean of 20 dispatches after 3`);
const bytes = dtype === 'f16' ? 2 : 4;
for (const [M, K, N] of SHAPES) {
  const buffer = (n) => device.createBuffer({ size: Math.ceil((n * bytes) / 4) * 4, usage: GPUBufferUsage.STORAGE });
  const [x, w, b, y] = [buffer(M * K), buffer(N * K), buffer(N), buffer(M * N)];
  const dims = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(dims, 0, linearDims(M, N, K));
  const row = [];
  for (const tile of TILES) {
    const params = { dtype, relu: false, ...tile };
    const pipe = await pipeline(device, 'linear', params, (p) => linearWGSL(p, gpu.limits.maxComputeWorkgroupStorageSize));
    const { BM, BN } = linearTile(params);
    const run = (reps) => {
      const enc = device.createCommandEncoder();
      for (let r = 0; r < reps; r++) dispatch(enc, device, pipe, [dims, x, w, b, y], [Math.ceil(N / BN), Math.ceil(M / BM)]);
      device.queue.submit([enc.finish()]);
      return device.queue.onSubmittedWorkDone();
    };
    await run(3);
    const t = performance.now();
    await run(20);
    const ms = (performance.now() - t) / 20;
    row.push(`${tile.RM}×${4 * tile.CN} BK${tile.BK} ${((2 * M * N * K) / ms / 1e6).toFixed(1)}`);
  }
  console.log(`M ${M} K ${K} N ${N}: ${row.join(' | ')}`);
  [x, w, b, y, dims].forEach((t) => t.destroy());
}
process.exit(0);
