/**
 * The pipeline cache: one compute pipeline per (device, kernel, params), the key derived from the params
 * object itself (cacheKey), so it can never drift from what the WGSL was generated from.
 */
import { cacheKey } from './kernels/common.js';

const caches = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** The pipeline for `wgsl(params)`; WGSL compile errors surface as an Error with the compiler's messages. */
export async function pipeline<P extends object>(device: GPUDevice, kernel: string, params: P, wgsl: (p: P) => string): Promise<GPUComputePipeline> {
  let cache = caches.get(device);
  if (!cache) caches.set(device, (cache = new Map()));
  const key = cacheKey(kernel, params);
  const hit = cache.get(key);
  if (hit) return hit;
  const code = wgsl(params);
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code, label: key });
  const made = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: key });
  const error = await device.popErrorScope();
  if (error) {
    const info = await module.getCompilationInfo();
    const messages = info.messages.map((m) => `${m.type} ${m.lineNum}:${m.linePos} ${m.message}`).join('\n');
    throw new Error(`${key}: ${error.message}\n${messages}`);
  }
  cache.set(key, made);
  return made;
}

/**
 * Encode one dispatch of `pipe` with the buffers bound in order (binding i = buffers[i]): a buffer whole,
 * or a range of one ({ buffer, offset, size }); `group1`: the modifiers' bind group of a kernel compiled with them.
 */
export function dispatch(
  enc: GPUCommandEncoder,
  device: GPUDevice,
  pipe: GPUComputePipeline,
  buffers: (GPUBuffer | GPUBufferBinding)[],
  groups: [number, number, number?],
  group1?: GPUBindGroup,
): void {
  const bind = device.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: buffers.map((b, binding) => ({ binding, resource: 'buffer' in b ? b : { buffer: b } })),
  });
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, bind);
  if (group1) pass.setBindGroup(1, group1); // the modifiers' bindings (webgpu/modifiers.ts)
  pass.dispatchWorkgroups(groups[0], groups[1], groups[2] ?? 1);
  pass.end();
}
