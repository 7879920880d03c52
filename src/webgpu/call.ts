/**
 * One webgpu call's plumbing: the device it runs on, the kernels' uniform sizes, and Call, which owns the
 * call's buffers and error scopes from the first allocation to the results.
 */
import { DTypeError, OutOfMemoryError, ValueError } from '../errors.js';
import { problemStrides, type Problem } from '../problem.js';
import { isGpuBuffer, type AnyTensor, type DType } from '../tensor.js';
import { freeDestroyed, GpuBuffers } from './buffers.js';
import { defaultGpu, deviceLostError, gpuOf, lossOf, type Gpu } from './device.js';
import type { Sizes } from './kernels/common.js';

/** The device a call runs on, checked against what the inputs need. */
export async function gpuFor(p: Problem): Promise<Gpu> {
  const gpu = p.device ? gpuOf(p.device) : await defaultGpu();
  if (p.dtype === 'f64') throw new DTypeError('q.dtype', "'f32' or 'f16' on the webgpu backend (f64 runs on 'reference')", "'f64'");
  if (p.dtype === 'f16' && !gpu.f16) {
    throw new DTypeError('q.dtype', "'f32' (this adapter lacks shader-f16, which f16 storage needs)", "'f16'");
  }
  return gpu;
}

/** Threads per workgroup: 128 where the device allows it. */
export function workgroupSize(gpu: Gpu): number {
  return Math.min(128, gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
}

/** Run-time sizes of a problem, for the kernels' uniform block. */
export function sizesOf(p: Problem): Sizes {
  const { q: sq, kv: sk } = problemStrides(p);
  return {
    B: p.B,
    H: p.H,
    Hkv: p.Hkv,
    Nq: p.Nq,
    Nk: p.Nk,
    qBatch: sq.batch,
    qRow: sq.row,
    qHead: sq.head,
    kvBatch: sk.batch,
    kvRow: sk.row,
    kvHead: sk.head,
    scale: p.scale,
  };
}

/** Bytes of one element of each dtype. */
export const ELEMENT_BYTES: Record<DType, number> = { f32: 4, f16: 2, f64: 8 };

/**
 * One call's device buffers: inputs (uploaded or the caller's), temporaries and outputs. The buffers are
 * made inside an 'out-of-memory' error scope, which submit closes: a device that cannot hold them gives an
 * OutOfMemoryError, not an invalid buffer that fails later as something else.
 */
export class Call {
  readonly buffers: GpuBuffers;
  private memoryScope: boolean;
  constructor(
    readonly p: Problem,
    readonly gpu: Gpu,
  ) {
    this.buffers = new GpuBuffers(gpu.device, p.memory);
    gpu.device.pushErrorScope('out-of-memory');
    this.memoryScope = true;
  }

  /** The tensor's data on the device: the caller's GPUBuffer, or an upload of its typed array. */
  input(t: AnyTensor, name: string): GPUBuffer {
    if (isGpuBuffer(t.data)) return t.data;
    return this.buffers.upload(t.data, name);
  }

  /**
   * forward()'s out or lse: the caller's buffer (options.out / options.lse, checked: problem.ts) or a
   * new one, as output() makes it.
   */
  forwardOutput(which: 'out' | 'lse', elements: number): GPUBuffer {
    return this.p.outputs?.[which] ?? (which === 'out' ? this.output(elements, 'out', 'q') : this.output(elements, 'lse', 'q', 'f32'));
  }

  /** An output buffer of `elements` in the problem's dtype (lse: f32), sized by the input `argument`. */
  output(elements: number, name: string, argument: 'q' | 'k', dtype: DType = this.p.dtype): GPUBuffer {
    return this.buffers.create(elements * ELEMENT_BYTES[dtype], name, argument);
  }

  /**
   * Submit the encoded work, then close both error scopes (validation, then out-of-memory) with one wait:
   * the work is on the GPU before the host waits for the scopes, so calls back to back keep the GPU busy
   * (a wait before submitting left it idle for a round trip per call). A buffer that could not be made
   * makes the submission invalid too; the out-of-memory error is the one reported. Device errors
   * (another device's buffer, say) become typed errors.
   */
  async submit(encode: (enc: GPUCommandEncoder) => Promise<void>): Promise<void> {
    const { device } = this.gpu;
    device.pushErrorScope('validation');
    try {
      const enc = device.createCommandEncoder();
      await encode(enc);
      device.queue.submit([enc.finish()]);
    } catch (e) {
      void device.popErrorScope().catch(() => undefined); // dispose() closes the out-of-memory scope
      throw e;
    }
    const validation = device.popErrorScope();
    this.memoryScope = false;
    const [error, oom] = await Promise.all([validation, device.popErrorScope()]);
    await this.throwIfLost(0); // a lost device reports no errors, and runs nothing
    if (oom) {
      await this.releaseMemory();
      const { B, H, Nq, Nk, D, dtype } = this.p;
      throw new OutOfMemoryError('q', `device memory for the buffers of attention over B=${B}, H=${H}, Nq=${Nq}, Nk=${Nk}, D=${D}, ${dtype}`, oom.message);
    }
    if (error) {
      throw new ValueError(this.p.onGpu ? 'q.data' : 'options.device', 'buffers and a device that belong together', error.message);
    }
  }

  /** An output as the caller gets it: a GpuTensor handed over, or a typed array read back. */
  async result(buffer: GPUBuffer, shape: readonly number[], argument: 'q' | 'k', dtype: 'f32' | 'f16' = this.p.dtype as 'f32' | 'f16'): Promise<AnyTensor> {
    if (this.p.onGpu) return { data: this.buffers.handOver(buffer), dtype, shape: [...shape] };
    const elements = shape.reduce((a, b) => a * b, 1);
    let bytes: ArrayBuffer;
    try {
      bytes = await this.buffers.read(buffer, elements * ELEMENT_BYTES[dtype], argument);
    } catch (e) {
      await this.throwIfLost(); // a readback on a lost device fails with an AbortError that says nothing
      throw e;
    }
    const data = dtype === 'f16' ? new Uint16Array(bytes) : new Float32Array(bytes);
    return { data, dtype, shape: [...shape] };
  }

  /** Destroy the call's buffers, and let the device free their memory before the call returns. */
  private async releaseMemory(): Promise<void> {
    this.buffers.destroyAll();
    await freeDestroyed(this.gpu.device);
  }

  /**
   * A DeviceLostError where the device is lost (waiting up to `ms` for its `lost` promise to settle);
   * the library's own device is then replaced on the next call (device.ts).
   */
  private async throwIfLost(ms?: number): Promise<void> {
    const info = await lossOf(this.gpu.device, ms);
    if (info) throw deviceLostError(info, this.p.device ? 'options.device' : this.p.onGpu ? 'q.data' : 'options.backend', Boolean(this.p.device || this.p.onGpu));
  }

  dispose(): void {
    if (this.memoryScope) {
      // The call failed before submitting: close its scope (what it caught no longer matters).
      this.memoryScope = false;
      void this.gpu.device.popErrorScope().catch(() => undefined);
    }
    this.buffers.destroyAll();
  }
}
