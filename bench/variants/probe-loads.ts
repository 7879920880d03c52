/**
 * Probe: what a subgroup-matrix load from workgroup memory costs beside the product it feeds, on the GPU
 * machine (`bash .gpu/enter.sh node dist/bench/variants/probe-loads.js`). Workgroups of 4 warps run a
 * loop of 16 16×16×16 products (8 accumulators) per iteration, each iteration after a workgroupBarrier
 * (as the kernels' key-block loops: without it the loads were hoisted out of the loop); one operand is
 * held in registers and the other is either held too (`registers`, the ceiling) or loaded from workgroup memory in every iteration, as
 * left or right operand, row_major or col_major, at an offset that is a constant of the iteration
 * (`const`) or also depends on the warp's index (`warp`, as the kernels' S and P regions do). Wall clock
 * of one dispatch after a warm-up, best of 3; TFLOP/s counts the products only. The results are stored,
 * so nothing is optimised away; they are not checked (the probe measures cost, not values).
 */
import { compilePipeline, gpuWithExtraToggles } from './util.js';

const { device, description } = await gpuWithExtraToggles(); // DAWN_EXTRA=toggle,…: more Dawn toggles
console.log(`${new Date().toISOString()} ${description}`);
const W = 4;
const ITERS = 1024;
const FRAGS = 16;
const STRIDE = 136; // f16 per row, as the kernels' K_j, V_j tiles (D = 128, PAD = 8)
const WOFF = 2 * 16 * STRIDE; // one warp's region: two row blocks of 16, fragments side by side
const GROUPS = 132 * 16;
const LEFT = 'subgroup_matrix_left<f16, 16, 16>';
const RIGHT = 'subgroup_matrix_right<f16, 16, 16>';
const RESULT = 'subgroup_matrix_result<f32, 16, 16>';

function kernel(role: 'left' | 'right' | 'registers', layout: string, offset: 'const' | 'warp'): string {
  const type = role === 'left' ? LEFT : RIGHT;
  const at = (n: number) => `${offset === 'warp' ? 'w * WOFF + ' : ''}${(n % 2) * 16 * STRIDE + ((n >> 1) % 8) * 16}u`;
  const body = Array.from({ length: FRAGS }, (_, n) =>
    role === 'registers'
      ? `    acc${n % 8} = subgroupMatrixMultiplyAccumulate(a, b, acc${n % 8});`
      : `    let x${n} = subgroupMatrixLoad<${type}, ${layout}>(&T, ${at(n)}, STRIDE);
    acc${n % 8} = subgroupMatrixMultiplyAccumulate(${role === 'left' ? `x${n}, b` : `a, x${n}`}, acc${n % 8});`,
  ).join('\n');
  return `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
@group(0) @binding(0) var<storage, read> src: array<f16>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
const STRIDE = ${STRIDE}u;
const WOFF = ${WOFF}u;
var<workgroup> T: array<f16, ${W * WOFF + 32}>;
@compute @workgroup_size(${32 * W})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let w = lid / 32u;
  for (var e = lid; e < ${W * WOFF + 32}u; e += ${32 * W}u) { T[e] = src[e % 4096u]; }
  workgroupBarrier();
  let a = subgroupMatrixLoad<${LEFT}, row_major>(&src, 0u, 16u);
  let b = subgroupMatrixLoad<${RIGHT}, row_major>(&src, 256u, 16u);
${Array.from({ length: 8 }, (_, n) => `  var acc${n} = ${RESULT}();`).join('\n')}
  for (var i = 0u; i < ${ITERS}u; i++) {
    workgroupBarrier(); // the loads cannot be hoisted out of the loop
${body}
  }
${Array.from({ length: 8 }, (_, n) => `  subgroupMatrixStore<row_major>(&dst, (wid.x * ${W}u + w) * 16u * 16u, acc${n}, 16u);`).join('\n')}
}`;
}

const src = device.createBuffer({ size: 4096 * 2, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
device.queue.writeBuffer(src, 0, new Uint16Array(4096).fill(0x2c00)); // 1/16 in f16
const dst = device.createBuffer({ size: GROUPS * W * 256 * 4, usage: GPUBufferUsage.STORAGE });
const flops = GROUPS * W * ITERS * FRAGS * 2 * 16 * 16 * 16;
const cases: Array<[role: 'left' | 'right' | 'registers', layout: string, offset: 'const' | 'warp']> = [['registers', '', 'const']];
for (const role of ['left', 'right'] as const) for (const layout of ['row_major', 'col_major']) for (const offset of ['const', 'warp'] as const) cases.push([role, layout, offset]);
for (const [role, layout, offset] of cases) {
  const pipe = await compilePipeline(device, kernel(role, layout, offset)).catch((e: Error) => e);
  if (pipe instanceof Error) {
    console.log(`${role} ${layout} ${offset}: ${pipe.message.slice(0, 400)}`);
    continue;
  }
  const bind = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: dst } }] });
  const run = async () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(GROUPS);
    pass.end();
    const t0 = performance.now();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    return performance.now() - t0;
  };
  await run();
  const ms = Math.min(await run(), await run(), await run());
  console.log(`${role.padEnd(9)} ${layout.padEnd(9)} ${offset.padEnd(5)} ${ms.toFixed(2)} ms ${(flops / ms / 1e9).toFixed(1)} TFLOP/s`);
}
