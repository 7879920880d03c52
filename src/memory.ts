/**
 * Memory accounting: every buffer a backend allocates for a call (outputs, staging copies, per-thread
 * scratch, and for the standard algorithm S and P) is counted here, live and peak, in bytes.
 * Outputs are released from the count when they are handed to the caller, who owns them from then on.
 * What a backend keeps between calls is counted only while a call uses it: the cpu backend's workspace
 * (the largest call's arrays, dropped after 10 s without a call: cpu/pool.ts) and, on webgpu, the split
 * halves of precision 'high' and the decode schedule's partials.
 */
export class MemoryTracker {
  private liveBytes = 0;
  private peakBytes = 0;

  /** Bytes allocated by the library and not yet released. */
  get live(): number {
    return this.liveBytes;
  }

  /** The most bytes live at once since creation or the last resetPeak(). */
  get peak(): number {
    return this.peakBytes;
  }

  /** Count an allocation; returns the bytes, to be passed to release() later. */
  allocate(bytes: number): number {
    this.liveBytes += bytes;
    if (this.liveBytes > this.peakBytes) this.peakBytes = this.liveBytes;
    return bytes;
  }

  release(bytes: number): void {
    this.liveBytes -= bytes;
  }

  /** Start a new peak measurement from what is live now. */
  resetPeak(): void {
    this.peakBytes = this.liveBytes;
  }
}

/** The tracker used when a call names none. */
export const memory = new MemoryTracker();
