/** `flashattn info`: what this machine offers each backend (the WebGPU adapter in detail). */
import { availableParallelism, cpus } from 'node:os';
import { describeAdapter, gpuEntry, gpuEntryMissing, type MatrixConfig } from '../webgpu/device.js';

/** The limits the kernels care about, in the order printed. */
const LIMITS = [
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxStorageBuffersPerShaderStage',
] as const;

export async function info(): Promise<string> {
  const lines = [`cpu: ${cpus()[0]?.model ?? 'unknown'}, ${availableParallelism()} threads for the cpu backend`];
  const entry = await gpuEntry();
  if (!entry) return [...lines, `webgpu: no WebGPU implementation (navigator.gpu, or the \`webgpu\` package in Node): ${gpuEntryMissing()}`].join('\n');
  const adapter = await entry.gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return [...lines, `webgpu: ${entry.source} offers no adapter (in Node on Linux: is a Vulkan driver installed?)`].join('\n');
  const i = adapter.info as GPUAdapterInfo & { subgroupMatrixConfigs?: MatrixConfig[] };
  // Fields are read by name: a config object prints as {} in this Dawn.
  const configs = (i.subgroupMatrixConfigs ?? []).map((c) => `${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`);
  lines.push(
    `webgpu: ${describeAdapter(adapter)} (via ${entry.source})`,
    `  features: ${[...adapter.features].sort().join(', ')}`,
    `  subgroup sizes: ${i.subgroupMinSize ?? '?'}..${i.subgroupMaxSize ?? '?'}`,
    `  subgroup-matrix configs: ${configs.length ? configs.join(', ') : 'none'}`,
    ...LIMITS.map((l) => `  ${l}: ${adapter.limits[l]}`),
  );
  return lines.join('\n');
}
