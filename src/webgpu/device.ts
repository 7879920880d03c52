/**
 * Getting a GPUDevice: navigator.gpu in a browser, the `webgpu` package (Dawn) in Node. The device is
 * asked for the adapter's own limits where kernels need more than the defaults (workgroup memory,
 * binding and buffer sizes) and for the features the fast paths use (shader-f16, subgroups,
 * timestamp-query). Callers may bring their own device instead (options.device).
 */
import { BackendUnavailableError } from '../errors.js';

/** Dawn toggles for Node: f16 on NVIDIA's Vulkan driver, the Vulkan memory model, experimental features. */
export const DAWN_TOGGLES = ['enable-dawn-features=allow_unsafe_apis,use_vulkan_memory_model,vulkan_enable_f16_on_nvidia'];

const WANTED_FEATURES = ['shader-f16', 'subgroups', 'timestamp-query', 'chromium-experimental-subgroup-matrix'] as const;
const WANTED_LIMITS = [
  'maxComputeWorkgroupStorageSize',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

/** What the kernels need to know about a device. */
export interface Gpu {
  device: GPUDevice;
  /** Adapter description for reports ('' where the device was passed in without its adapter). */
  description: string;
  f16: boolean;
  subgroups: boolean;
  timestamps: boolean;
  /** A CPU implementation of WebGPU (lavapipe, SwiftShader): correct, but slower than the cpu backend. */
  software: boolean;
  /** The subgroup size where the adapter has one fixed size (NVIDIA: 32), else undefined. */
  subgroupSize: number | undefined;
  /** Subgroup matrices with f16 inputs, f32 results, 16×16×16 (tensor cores): the fast kernels' needs. */
  matrixF16: boolean;
  limits: GPUSupportedLimits;
}

/** One entry of adapter.info.subgroupMatrixConfigs (read by field: such an object prints as {} in Dawn). */
export interface MatrixConfig {
  M: number;
  N: number;
  K: number;
  componentType: string;
  resultComponentType: string;
}

const known = new WeakMap<GPUDevice, Gpu>();

/** The Gpu record of a device, for a device the caller brought. */
export function gpuOf(device: GPUDevice, description = '', software = false, adapterInfo: GPUAdapterInfo | undefined = device.adapterInfo): Gpu {
  let gpu = known.get(device);
  if (!gpu) {
    // The adapter's own info where we have it: this Dawn leaves subgroupMatrixConfigs out of device.adapterInfo.
    const info = adapterInfo as (GPUAdapterInfo & { subgroupMatrixConfigs?: MatrixConfig[] }) | undefined;
    const fixed = info?.subgroupMinSize !== undefined && info.subgroupMinSize === info.subgroupMaxSize;
    gpu = {
      device,
      description,
      f16: device.features.has('shader-f16'),
      subgroups: device.features.has('subgroups'),
      timestamps: device.features.has('timestamp-query'),
      software,
      subgroupSize: fixed ? info.subgroupMinSize : undefined,
      matrixF16:
        device.features.has('chromium-experimental-subgroup-matrix') &&
        device.features.has('subgroups') &&
        device.features.has('shader-f16') &&
        (info?.subgroupMatrixConfigs ?? []).some(
          (c) => c.componentType === 'f16' && c.resultComponentType === 'f32' && c.M === 16 && c.N === 16 && c.K === 16,
        ),
      limits: device.limits,
    };
    known.set(device, gpu);
  }
  return gpu;
}

let entry: Promise<{ gpu: GPU; source: string } | undefined> | undefined;

/**
 * navigator.gpu where it exists, else Dawn through the `webgpu` package (undefined if neither). One Dawn
 * instance per process: a second one aborts in dawn.node.
 */
export function gpuEntry(): Promise<{ gpu: GPU; source: string } | undefined> {
  entry ??= (async () => {
    const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
    if (nav?.gpu) return { gpu: nav.gpu, source: 'navigator.gpu' };
    try {
      const dawn = (await import('webgpu')) as unknown as { create(toggles: string[]): GPU; globals: object };
      Object.assign(globalThis, dawn.globals); // GPUBufferUsage and friends, as in a browser
      return { gpu: dawn.create(DAWN_TOGGLES), source: 'webgpu (Dawn)' };
    } catch {
      return undefined;
    }
  })();
  return entry;
}

/** lavapipe, llvmpipe, SwiftShader and other adapters that run on the CPU. */
export function isSoftware(adapter: GPUAdapter): boolean {
  const i = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean; adapterType?: string };
  const text = `${i.vendor} ${i.architecture} ${i.device} ${i.description}`.toLowerCase();
  return Boolean(i.isFallbackAdapter) || i.adapterType === 'cpu' || /llvmpipe|lavapipe|swiftshader/.test(text);
}

export function describeAdapter(adapter: GPUAdapter): string {
  const i = adapter.info;
  return [i.vendor, i.architecture, i.device, i.description].filter((s) => s).join(' / ') || 'unknown adapter';
}

let shared: Promise<Gpu> | undefined;

/** The library's own device, created on first use and shared by later calls. */
export function defaultGpu(): Promise<Gpu> {
  shared ??= (async () => {
    // The module keeps the GPU object (gpuEntry): dawn.node stops serving devices whose GPU object was collected.
    const entry = await gpuEntry();
    if (!entry) {
      throw new BackendUnavailableError('options.backend', 'a WebGPU implementation (navigator.gpu, or the `webgpu` package in Node)', 'none');
    }
    const adapter = await entry.gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) throw new BackendUnavailableError('options.backend', 'a WebGPU adapter', `none from ${entry.source}`);
    const requiredFeatures = WANTED_FEATURES.filter((f) => adapter.features.has(f)) as GPUFeatureName[];
    const requiredLimits: Record<string, number> = {};
    for (const l of WANTED_LIMITS) requiredLimits[l] = adapter.limits[l];
    const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
    device.lost.then(() => {
      shared = undefined; // the next call asks for a new device
    });
    return gpuOf(device, describeAdapter(adapter), isSoftware(adapter), adapter.info);
  })();
  shared.catch(() => {
    shared = undefined;
  });
  return shared;
}

/** Whether a WebGPU adapter can be had here, and if not, why (for 'auto', the tests and `flashattn info`). */
export async function webgpuStatus(): Promise<{ ok: true; gpu: Gpu } | { ok: false; reason: string }> {
  try {
    return { ok: true, gpu: await defaultGpu() };
  } catch (e) {
    return { ok: false, reason: e instanceof Error ? e.message : String(e) };
  }
}

/**
 * Whether 'auto' should pick webgpu for host tensors of this dtype: an adapter that is a real GPU (not a
 * software rasteriser such as lavapipe or SwiftShader, where the cpu backend is faster) with what the
 * dtype needs.
 */
export async function preferWebgpu(dtype: 'f32' | 'f16'): Promise<boolean> {
  try {
    const gpu = await defaultGpu();
    return !gpu.software && (dtype === 'f32' || gpu.f16);
  } catch {
    return false;
  }
}

/** The library's own GPUDevice (created on first use): make GPUBuffers on it for zero-copy calls. */
export async function webgpuDevice(): Promise<GPUDevice> {
  return (await defaultGpu()).device;
}
