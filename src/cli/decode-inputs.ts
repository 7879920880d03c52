/**
 * K and V of the decode suite, made where they are used. A decode case holds up to 16 GiB of K and V:
 * drawing that many values on the host and uploading them would take minutes, so each element is a hash
 * of its index instead, computed by a WGSL kernel on the device (or by the same function on the host for
 * the cpu backend), and the validation recomputes on the host the few rows it compares.
 *
 * Element i of the tensor with seed s: h = lowbias32(i + s·0x9e3779b9 mod 2^32) (Chris Wellons' integer
 * hash), value = (h >> 21) / 1024 − 1, a multiple of 1/1024 in [−1, 1): 11 significant bits, so exact in
 * f16 and in f32, and the device's pack2x16float writes the same bits as the host's numberToF16.
 */
import { numberToF16 } from '../f16.js';
import { mix32 } from '../modifiers.js';
import { MIX32_WGSL } from '../webgpu/kernels/common.js';
import { flatGroups } from '../webgpu/decode.js';

/** What results.json says about the inputs. */
export const HASHED_INPUTS = 'K and V: element i of a tensor with seed s is (lowbias32(i + s·0x9e3779b9) >> 21) / 1024 − 1, uniform on [−1, 1) in steps of 1/1024; q: seeded normal values';

/** The seed's offset added to every index (mod 2^32). */
export function seedOffset(seed: number): number {
  return Math.imul(seed >>> 0, 0x9e3779b9) >>> 0;
}

/** The value of element `i` of the tensor with seed `seed`: a multiple of 1/1024 in [−1, 1). */
export function hashedValue(seed: number, i: number): number {
  return (mix32((i + seedOffset(seed)) >>> 0) >>> 21) / 1024 - 1;
}

/** Elements `count` of the tensor `seed` as f16 bits, element j of the result being element `index(j)`. */
export function hashedF16(seed: number, count: number, index: (j: number) => number = (j) => j): Uint16Array {
  const out = new Uint16Array(count);
  const offset = seedOffset(seed);
  for (let j = 0; j < count; j++) out[j] = numberToF16((mix32((index(j) + offset) >>> 0) >>> 21) / 1024 - 1);
  return out;
}

const WG = 256;

/** One invocation writes one u32: elements 2w and 2w + 1 (low half first, as a Uint16Array reads them). */
export const FILL_WGSL = /* wgsl */ `
struct Params { words: u32, offset: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

${MIX32_WGSL}

fn value(i: u32) -> f32 {
  return f32(i32(mix32(i + params.offset) >> 21u) - 1024) / 1024.0;
}

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let w = gid.x + gid.y * groups.x * ${WG}u;
  if (w >= params.words) { return; }
  out[w] = pack2x16float(vec2<f32>(value(2u * w), value(2u * w + 1u)));
}
`;

const pipelines = new WeakMap<GPUDevice, GPUComputePipeline>();

/**
 * Fill `elements` f16 values of `buffer` (its size a multiple of 4, at least 2·elements bytes; bound
 * whole) with the tensor `seed`. Queued, not waited for.
 */
export function fillHashedF16(device: GPUDevice, buffer: GPUBuffer, seed: number, elements: number): void {
  let pipeline = pipelines.get(device);
  if (!pipeline) {
    pipeline = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: FILL_WGSL, label: 'bench fill' }), entryPoint: 'main' }, label: 'bench fill' });
    pipelines.set(device, pipeline);
  }
  const words = Math.ceil(elements / 2);
  const uniform = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, label: 'bench fill params' });
  device.queue.writeBuffer(uniform, 0, new Uint32Array([words, seedOffset(seed), 0, 0]));
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: uniform } }, { binding: 1, resource: { buffer } }] }));
  pass.dispatchWorkgroups(...flatGroups(words, WG));
  pass.end();
  device.queue.submit([enc.finish()]);
  uniform.destroy();
}
