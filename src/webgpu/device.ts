/**
 * Getting a GPUDevice: navigator.gpu in a browser, the `webgpu` package (Dawn) in Node. The device is
 * asked for the adapter's own limits where kernels need more than the defaults (workgroup memory,
 * binding and buffer sizes) and for the features the fast paths use (shader-f16, subgroups,
 * timestamp-query). Callers may bring their own device instead (options.device).
 */
import { BackendUnavailableError, DeviceLostError } from '../errors.js';

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
/** Devices whose `lost` promise has resolved, with why. */
const lostDevices = new WeakMap<GPUDevice, GPUDeviceLostInfo>();

/** Note when a device is lost (once per device). */
function watchLoss(device: GPUDevice): void {
  void device.lost?.then((info) => {
    lostDevices.set(device, info);
    if (sharedDevice === device) shared = sharedDevice = undefined; // the next call asks for a new device
  });
}

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
    watchLoss(device);
  }
  return gpu;
}

let entry: Promise<{ gpu: GPU; source: string } | undefined> | undefined;
/** Why gpuEntry found no WebGPU implementation (for the error that says so). */
let entryMissing = 'none';

/**
 * navigator.gpu where it exists, else Dawn through the `webgpu` package (undefined if neither). One Dawn
 * instance per process: a second one aborts in dawn.node. On Linux, Dawn is not loaded where no Vulkan
 * loader can be found: it would find no adapter, and say so on stderr (see "Keeping Dawn quiet" below).
 */
export function gpuEntry(): Promise<{ gpu: GPU; source: string } | undefined> {
  entry ??= (async () => {
    const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
    if (nav?.gpu) return { gpu: nav.gpu, source: 'navigator.gpu' };
    const missing = await vulkanLoaderMissing();
    if (missing) {
      entryMissing = missing;
      return undefined;
    }
    try {
      const dawn = (await import('webgpu')) as unknown as { create(toggles: string[]): GPU; globals: object };
      Object.assign(globalThis, dawn.globals); // GPUBufferUsage and friends, as in a browser
      return { gpu: dawn.create(DAWN_TOGGLES), source: 'webgpu (Dawn)' };
    } catch (e) {
      entryMissing = `none: the \`webgpu\` package cannot be loaded (${e instanceof Error ? e.message.split('\n')[0] : String(e)})`;
      return undefined;
    }
  })();
  return entry;
}

/** Why there is no WebGPU implementation here, once gpuEntry has found none. */
export function gpuEntryMissing(): string {
  return entryMissing;
}

/*
 * Keeping Dawn quiet. Dawn writes some warnings straight to the process's stderr from native code
 * (fprintf in dawn::WarningLog, src/dawn/common/Log.cpp): "Couldn't load Vulkan: libvulkan.so.1 ..." when
 * there is no Vulkan loader, "vkCreateInstance: Found no drivers!" when there is no driver, and
 * "maxDynamicUniformBuffersPerPipelineLayout artificially reduced ..." (and the storage-buffer twin) while
 * it lists the adapters of a driver that reports more dynamic buffers than Dawn supports (lavapipe, RADV,
 * some NVIDIA drivers). No toggle, instance option or logging callback of the `webgpu` package reaches
 * them, and JavaScript cannot redirect a native file descriptor for a moment, so the library avoids
 * loading Dawn where it cannot help: with no Vulkan loader (any backend), and for `backend: 'auto'` on a
 * Linux machine with no GPU device (where the only adapter could be a software one, which 'auto' does not
 * pick). Where Dawn does load it may still print them, once per process.
 */

/** The file-system calls the checks below make: node:fs's (a stand-in in tests). */
export interface FileChecks {
  existsSync(path: string): boolean;
  readFileSync(path: string): { includes(value: string): boolean };
  readdirSync(path: string): string[];
}

/** Node's fs where this is Node (undefined in a browser). */
async function nodeFs(): Promise<FileChecks | undefined> {
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  if (!proc?.versions?.node) return undefined;
  return import('node:fs');
}

/** Where dlopen looks for a library besides LD_LIBRARY_PATH and /etc/ld.so.cache. */
const LIBRARY_DIRS = ['/lib', '/lib64', '/usr/lib', '/usr/lib64', '/usr/local/lib'];

/**
 * On Linux in Node, a sentence saying that no Vulkan loader (libvulkan.so.1) can be found where dlopen
 * looks for it (LD_LIBRARY_PATH, /etc/ld.so.cache, the default directories), so Dawn could find no
 * adapter; undefined where one may be found, and on other systems.
 */
export async function vulkanLoaderMissing(
  platform: string = (globalThis as { process?: { platform?: string } }).process?.platform ?? '',
  env: Record<string, string | undefined> = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env ?? {},
  fs?: Pick<FileChecks, 'existsSync' | 'readFileSync'>,
): Promise<string | undefined> {
  if (platform !== 'linux') return undefined;
  fs ??= await nodeFs();
  if (!fs) return undefined;
  const LIB = 'libvulkan.so.1';
  const dirs = [...(env.LD_LIBRARY_PATH ?? '').split(':').filter((d) => d), ...LIBRARY_DIRS];
  if (dirs.some((d) => fs.existsSync(`${d}/${LIB}`))) return undefined;
  try {
    if (fs.readFileSync('/etc/ld.so.cache').includes(LIB)) return undefined;
  } catch {
    // no cache (musl, NixOS): the directories above are all dlopen has
  }
  return `none: no Vulkan loader (${LIB}) on this machine, which Dawn needs for WebGPU in Node on Linux (install libvulkan1 and a Vulkan driver; scripts/install-lavapipe.sh installs Mesa's CPU driver)`;
}

/**
 * Whether a Linux machine has a device a GPU driver serves: a DRM render node (/dev/dri/renderD*: Mesa's
 * drivers, virtio-gpu), an NVIDIA device (/dev/nvidia0...) or WSL's /dev/dxg. Without one, the only
 * Vulkan adapter there could be is a software one (lavapipe). True elsewhere, and where it cannot tell.
 */
export async function mayHaveGpu(
  platform: string = (globalThis as { process?: { platform?: string } }).process?.platform ?? '',
  fs?: Pick<FileChecks, 'existsSync' | 'readdirSync'>,
): Promise<boolean> {
  if (platform !== 'linux') return true;
  fs ??= await nodeFs();
  if (!fs) return true;
  const list = (dir: string): string[] => {
    try {
      return fs.readdirSync(dir);
    } catch {
      return [];
    }
  };
  return list('/dev/dri').some((f) => f.startsWith('renderD')) || list('/dev').some((f) => /^nvidia\d+$/.test(f)) || fs.existsSync('/dev/dxg');
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
/** The device `shared` resolved to. */
let sharedDevice: GPUDevice | undefined;

/** The library's own device, created on first use and shared by later calls (a new one after a loss). */
export function defaultGpu(): Promise<Gpu> {
  if (sharedDevice && lostDevices.has(sharedDevice)) shared = sharedDevice = undefined;
  shared ??= (async () => {
    // The module keeps the GPU object (gpuEntry): dawn.node stops serving devices whose GPU object was collected.
    const entry = await gpuEntry();
    if (!entry) {
      throw new BackendUnavailableError('options.backend', 'a WebGPU implementation (navigator.gpu, or the `webgpu` package in Node)', entryMissing);
    }
    const adapter = await entry.gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) throw new BackendUnavailableError('options.backend', 'a WebGPU adapter', `none from ${entry.source}`);
    const requiredFeatures = WANTED_FEATURES.filter((f) => adapter.features.has(f)) as GPUFeatureName[];
    const requiredLimits: Record<string, number> = {};
    for (const l of WANTED_LIMITS) requiredLimits[l] = adapter.limits[l];
    const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
    sharedDevice = device;
    return gpuOf(device, describeAdapter(adapter), isSoftware(adapter), adapter.info); // watches for its loss
  })();
  shared.catch(() => {
    shared = undefined;
  });
  return shared;
}

/**
 * Why the device was lost, waiting up to `ms` for its `lost` promise (an operation that failed on a lost
 * device, a readback say, may fail before the promise has settled; 0: what is known now, no wait);
 * undefined where it was not.
 */
export async function lossOf(device: GPUDevice, ms = 100): Promise<GPUDeviceLostInfo | undefined> {
  const known = lostDevices.get(device);
  if (known || !device.lost || ms <= 0) return known;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const info = await Promise.race([device.lost, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  clearTimeout(timer);
  if (info) {
    lostDevices.set(device, info);
    if (sharedDevice === device) shared = sharedDevice = undefined;
  }
  return info;
}

/**
 * The typed error for a call whose device was lost: `argument` names the caller's device where the
 * call ran on one (options.device, or the device of its GPUBuffers), which the caller must replace.
 */
export function deviceLostError(info: GPUDeviceLostInfo, argument: string, callersDevice: boolean): DeviceLostError {
  const why = `${info.reason}${info.message ? `: ${info.message}` : ''}`;
  const next = callersDevice ? 'make a new GPUDevice, and the buffers on it, for the next call' : "the library's own device is replaced by a new one on the next call";
  return new DeviceLostError(argument, 'a WebGPU device that is not lost', `a lost device (${why})`, `${argument}: the WebGPU device was lost (${why}); ${next}`);
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
 * dtype needs. In Node on a Linux machine without a GPU device, Dawn is not even loaded (see mayHaveGpu).
 */
export async function preferWebgpu(dtype: 'f32' | 'f16'): Promise<boolean> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (!nav?.gpu && shared === undefined && !(await mayHaveGpu())) return false;
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
