/**
 * Compile probes for subgroup-matrix WGSL on the GPU machine: which forms this Dawn accepts (per-subgroup
 * offsets under the uniformity analysis, row_major loads, result-matrix loads). Prints each compile result.
 */
import { defaultGpu } from '../../src/webgpu/device.js';

const HEAD = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
var<workgroup> A: array<f16, 4096>;
var<workgroup> F: array<f32, 4096>;
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
`;
const BODY = (offset: string, layout = 'col_major') => `@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
  let sg = ${offset};
  let l = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, ${layout}>(&A, sg * 256u, 16u);
  let r = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, ${layout}>(&A, sg * 256u, 16u);
  var acc = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, col_major>(&F, sg * 256u, 16u);
  acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  subgroupMatrixStore<col_major>(&F, sg * 256u, acc, 16u);
  workgroupBarrier();
  out[lid] = F[lid];
}`;
const NESTED = `@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32) {
  let sg = lid / 32u;
  let l = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, col_major>(&A2[sg], 0u, 16u);
  let r = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&A2[sg], 0u, 16u);
  var acc = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, col_major>(&F2[sg], 0u, 16u);
  acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  subgroupMatrixStore<col_major>(&F2[sg], 0u, acc, 16u);
  workgroupBarrier();
  out[lid] = F2[sg][lid % 256u];
}`;
const LOADONLY = `@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32) {
  let sg = lid / 32u;
  let l = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, col_major>(&A, sg * 256u, 16u);
  let r = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&A, sg * 256u, 16u);
  var acc = subgroup_matrix_result<f32, 16, 16>();
  acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  subgroupMatrixStore<col_major>(&F, 0u, acc, 16u);
  workgroupBarrier();
  out[lid] = F[lid];
}`;
const SWITCHED = `@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32) {
  let sg = lid / 32u;
  var acc = subgroup_matrix_result<f32, 16, 16>();
  switch (sg) {
    case 0u: { subgroupMatrixStore<col_major>(&F, 0u, acc, 16u); }
    case 1u: { subgroupMatrixStore<col_major>(&F, 256u, acc, 16u); }
    default: { subgroupMatrixStore<col_major>(&F, 512u, acc, 16u); }
  }
  workgroupBarrier();
  out[lid] = F[lid];
}`;
const NESTED_HEAD = HEAD + `var<workgroup> A2: array<array<f16, 256>, 4>;
var<workgroup> F2: array<array<f32, 256>, 4>;
`;
const probes: Record<string, string> = {
  'chromium.subgroup_matrix_uniformity off, lid / 32': 'diagnostic(off, chromium.subgroup_matrix_uniformity);\n' + HEAD + BODY('lid / 32u'),
  'chromium.subgroup_matrix_uniformity off, nested': 'diagnostic(off, chromium.subgroup_matrix_uniformity);\n' + NESTED_HEAD + NESTED,
  'nested array pointer &F2[sg]': NESTED_HEAD + NESTED,
  'load offsets per subgroup, store uniform': HEAD + LOADONLY,
  'switch on subgroup, uniform offsets': HEAD + SWITCHED,
  'switch + diagnostic off': 'diagnostic(off, subgroup_uniformity);\n' + HEAD + SWITCHED,
  'lid / 32 (plain)': HEAD + BODY('lid / 32u'),
  'diagnostic off subgroup_uniformity': 'diagnostic(off, subgroup_uniformity);\n' + HEAD + BODY('lid / 32u'),
  'subgroupBroadcastFirst(lid / 32)': HEAD + BODY('subgroupBroadcastFirst(lid / 32u)'),
  'diag off + broadcastFirst': 'diagnostic(off, subgroup_uniformity);\n' + HEAD + BODY('subgroupBroadcastFirst(lid / 32u)'),
  'row_major (uniform offset)': HEAD + BODY('0u', 'row_major'),
};
const { device } = await defaultGpu();
for (const [name, code] of Object.entries(probes)) {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code });
  device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const err = await device.popErrorScope();
  const info = await module.getCompilationInfo();
  console.log(`${err ? 'FAIL' : 'ok  '} ${name}${err ? ': ' + info.messages.map((m) => m.message).join(' | ').slice(0, 300) : ''}`);
}
