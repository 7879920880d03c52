/**
 * The one allocator for every GPUBuffer the library makes: each is counted in a MemoryTracker (live and
 * peak bytes) from creation until it is destroyed or handed to the caller as an output.
 */
import { OutOfMemoryError } from '../errors.js';
import type { MemoryTracker } from '../memory.js';

export class GpuBuffers {
  private readonly owned = new Map<GPUBuffer, number>();
  /** Bytes of kept buffers this call uses (counted while it runs; never destroyed by it). */
  private borrowed = 0;

  constructor(
    readonly device: GPUDevice,
    private readonly memory: MemoryTracker,
  ) {}

  /**
   * A storage buffer of at least `bytes` (rounded up to 4), counted. `what` names it in errors, `argument`
   * the input whose size asked for it. A storage buffer is bound whole, so it is held to the binding limit
   * too, unless `bound` is false (a buffer only copied to, or bound in ranges).
   */
  create(bytes: number, what: string, argument: string, usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST, bound = true): GPUBuffer {
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const { maxBufferSize, maxStorageBufferBindingSize } = this.device.limits;
    const limit = usage & GPUBufferUsage.STORAGE && bound ? Math.min(maxBufferSize, maxStorageBufferBindingSize) : maxBufferSize;
    if (size > limit) {
      throw new OutOfMemoryError(argument, `at most ${limit} bytes per buffer on this device for ${what}`, `${size} bytes`);
    }
    const buffer = this.device.createBuffer({ size, usage, label: what });
    this.owned.set(buffer, this.memory.allocate(size));
    return buffer;
  }

  /** A storage buffer holding `data`, the input `argument` (or part of it). */
  upload(data: ArrayBufferView, what: string, argument = what): GPUBuffer {
    const buffer = this.create(data.byteLength, what, argument);
    // Dawn's writeBuffer takes neither a SharedArrayBuffer (a caller's array may be backed by one) nor a ragged length.
    const shared = typeof SharedArrayBuffer === 'function' && data.buffer instanceof SharedArrayBuffer;
    const padded = data.byteLength % 4 === 0 && !shared ? data : copyPadded(data);
    this.device.queue.writeBuffer(buffer, 0, padded.buffer, padded.byteOffset, Math.ceil(data.byteLength / 4) * 4);
    return buffer;
  }

  /** A uniform buffer holding `bytes` (a few words: no device refuses it for its size). */
  uniform(bytes: ArrayBuffer, what: string): GPUBuffer {
    const buffer = this.create(bytes.byteLength, what, what, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
    this.device.queue.writeBuffer(buffer, 0, bytes);
    return buffer;
  }

  /**
   * A uniform buffer holding `bytes`, kept on the device for later calls with the same bytes (as a decode
   * loop's calls of one shape): such a call makes no buffer for its sizes, and binds the same buffers
   * as the call before, so its bind groups are kept too (webgpu/decode.ts's DecodeScratch). Never
   * written after it is made, so calls in flight never see each other's sizes. At most KEPT_UNIFORMS
   * per device (a few words each, not counted); the oldest is dropped, not destroyed (queued work may
   * still read it).
   */
  keptUniform(bytes: ArrayBuffer, what: string): GPUBuffer {
    let kept = KEPT.get(this.device);
    if (!kept) KEPT.set(this.device, (kept = new Map()));
    const key = new Uint32Array(bytes).join(',');
    let buffer = kept.get(key);
    if (buffer) {
      kept.delete(key); // most recently used last
    } else {
      buffer = this.device.createBuffer({ size: Math.max(4, Math.ceil(bytes.byteLength / 4) * 4), usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, label: what });
      this.device.queue.writeBuffer(buffer, 0, bytes);
      if (kept.size >= KEPT_UNIFORMS) kept.delete(kept.keys().next().value!);
    }
    kept.set(key, buffer);
    return buffer;
  }

  /** Read `bytes` of a buffer back (through a counted staging buffer), the result `argument` asked for. */
  async read(buffer: GPUBuffer, bytes: number, argument: string): Promise<ArrayBuffer> {
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.create(size, 'readback', argument, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(buffer, 0, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange(0, size).slice(0, bytes);
    staging.unmap();
    this.destroy(staging);
    return out;
  }

  destroy(buffer: GPUBuffer): void {
    const bytes = this.owned.get(buffer);
    if (bytes === undefined) return;
    this.owned.delete(buffer);
    this.memory.release(bytes);
    buffer.destroy();
  }

  /** Stop counting a buffer that now belongs to the caller. */
  handOver(buffer: GPUBuffer): GPUBuffer {
    const bytes = this.owned.get(buffer);
    if (bytes !== undefined) {
      this.owned.delete(buffer);
      this.memory.release(bytes);
    }
    return buffer;
  }

  /** Count a buffer handed over by another call (an attention output, say) as this allocator's own. */
  adopt(buffer: GPUBuffer): GPUBuffer {
    if (!this.owned.has(buffer)) this.owned.set(buffer, this.memory.allocate(buffer.size));
    return buffer;
  }

  /**
   * A storage buffer of at least `bytes` that outlives the call, kept in `kept` under `key` (the device's
   * scratch: the same key in later calls gets the same buffer back, or a larger one in its place). It is
   * counted in this call's tracker until destroyAll, like the call's own temporaries, but not destroyed.
   */
  borrow(kept: Map<string, GPUBuffer>, key: string, bytes: number, what: string, argument: string): GPUBuffer {
    let buffer = kept.get(key);
    if (!buffer || buffer.size < bytes) {
      // A smaller one it replaces is left to the garbage collector, not destroyed: a concurrent call that
      // borrowed it may not have submitted its work yet.
      buffer = this.create(bytes, what, argument);
      this.handOver(buffer);
      kept.set(key, buffer);
    }
    return this.use(buffer);
  }

  /** Count a buffer kept between calls (not this call's to destroy) in this call's tracker while it runs. */
  use(buffer: GPUBuffer): GPUBuffer {
    this.borrowed += this.memory.allocate(buffer.size);
    return buffer;
  }

  /** Destroy everything still owned (the call's temporaries); stop counting what it borrowed. */
  destroyAll(): void {
    for (const b of [...this.owned.keys()]) this.destroy(b);
    this.memory.release(this.borrowed);
    this.borrowed = 0;
  }
}

/** Uniform buffers kept per device by their bytes (GpuBuffers.keptUniform). */
const KEPT = new WeakMap<GPUDevice, Map<string, GPUBuffer>>();
const KEPT_UNIFORMS = 64;

/**
 * Let the device free the memory of the buffers destroyed so far, before the caller goes on. Dawn frees a
 * destroyed buffer's memory only once a submission made after the destruction has completed. On an H200
 * the call made right after an out-of-memory (the encoder's standard attention at N = 8192, batch 32)
 * ran out of memory again, outside an allocation, which lost the device; with this after the failure it
 * ran. So a 4-byte clear is submitted and waited for (in a scope of its own: it may fail quietly).
 */
export async function freeDestroyed(device: GPUDevice): Promise<void> {
  device.pushErrorScope('out-of-memory');
  const flush = device.createBuffer({ size: 4, usage: GPUBufferUsage.COPY_DST, label: 'flush' });
  const enc = device.createCommandEncoder();
  enc.clearBuffer(flush);
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
  flush.destroy();
  await device.popErrorScope();
}

function copyPadded(data: ArrayBufferView): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return out;
}
