/**
 * dbias on webgpu: the backward's key/value kernel writes dS (the gradient of the modified scores,
 * (B, H, Nq, Nk), f32) where it computes it; this kernel sums it over the axes the bias broadcasts, one
 * invocation per element of the bias, in a fixed order (deterministic, no atomics). A bias of the full
 * shape needs no sum: dS is the gradient.
 */
import type { Problem } from '../problem.js';
import type { AnyTensor } from '../tensor.js';
import { Call, gpuFor } from './call.js';
import { dispatch, pipeline } from './pipelines.js';

const WG = 64;

const REDUCE_WGSL = `struct R {
  full: vec4<u32>, // B, H, Nq, Nk
  shape: vec4<u32>, // the bias's shape (each axis its size or 1)
  count: u32, // elements of the bias
  rowGroups: u32, // workgroups per row of the dispatch
}
@group(0) @binding(0) var<uniform> r: R;
@group(0) @binding(1) var<storage, read> ds: array<f32>;
@group(0) @binding(2) var<storage, read_write> dbias: array<f32>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * r.rowGroups + wid.x) * ${WG}u + lid;
  if (e >= r.count) { return; }
  let s = r.shape;
  let o = vec4<u32>(e / (s.y * s.z * s.w), (e / (s.z * s.w)) % s.y, (e / s.w) % s.z, e % s.w);
  // An axis of size 1 sums over all of the full axis; another takes its own index.
  let lo = select(o, vec4<u32>(0u), s == vec4<u32>(1u));
  let hi = select(o + vec4<u32>(1u), r.full, s == vec4<u32>(1u));
  var sum = 0.0;
  for (var b = lo.x; b < hi.x; b++) {
    for (var h = lo.y; h < hi.y; h++) {
      for (var i = lo.z; i < hi.z; i++) {
        let row = ((b * r.full.y + h) * r.full.z + i) * r.full.w;
        for (var j = lo.w; j < hi.w; j++) {
          sum += ds[row + j];
        }
      }
    }
  }
  dbias[e] = sum;
}`;

/** dbias from the dS buffer: dS itself for a full-shape bias, else a reduced buffer of the bias's shape. */
export async function reduceBiasGrad(call: Call, enc: GPUCommandEncoder, dS: GPUBuffer): Promise<GPUBuffer> {
  const p = call.p;
  const shape = p.mods.bias!.index.shape;
  const full = [p.B, p.H, p.Nq, p.Nk];
  if (shape.every((s, i) => s === full[i])) return dS;
  const count = shape.reduce((a, b) => a * b, 1);
  const groups = Math.ceil(count / WG);
  const rowGroups = Math.min(groups, call.gpu.limits.maxComputeWorkgroupsPerDimension);
  const bytes = new Uint32Array(12);
  bytes.set(full, 0);
  bytes.set(shape, 4);
  bytes[8] = count;
  bytes[9] = rowGroups;
  const uniform = call.buffers.uniform(bytes.buffer, 'dbias sizes');
  const out = call.output(count, 'dbias', 'q', 'f32');
  const pipe = await pipeline(call.gpu.device, 'biasGradReduce', { WG }, () => REDUCE_WGSL);
  dispatch(enc, call.gpu.device, pipe, [uniform, dS, out], [rowGroups, Math.ceil(groups / rowGroups)]);
  return out;
}

/**
 * dbias where it is zero by the algebra (biasGradIsZero, src/modifiers.ts), for GPUBuffer inputs: a new
 * buffer of the bias's shape (WebGPU zeroes it at creation), handed over as the other outputs are.
 */
export async function zeroBiasGrad(p: Problem): Promise<AnyTensor> {
  const call = new Call(p, await gpuFor(p));
  try {
    const shape = p.mods.bias!.index.shape;
    const dbias = call.output(shape.reduce((a, b) => a * b, 1), 'dbias', 'q', 'f32');
    await call.submit(async () => undefined);
    return await call.result(dbias, shape, 'q', 'f32');
  } finally {
    call.dispose();
  }
}
