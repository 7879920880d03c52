/**
 * The cpu backend's KV cache store (see src/kvcache.ts): the k and v pools are typed arrays in the cache's
 * dtype on buffers the worker threads share, appended row by row through the block table; the attention
 * runs the decode kernel (decode.ts) over every batch row at once, the workers reading each slot's keys
 * in the pools through the block table, with no copy.
 *
 * A page holds its tokens head by head, (pages, Hkv, pageSize, D), where the webgpu pools keep
 * (pages, pageSize, Hkv, D): a head's keys in one page are contiguous, so the WebAssembly decode kernel
 * stages a tile of them into its memory with one copy instead of one per key (wasm/decode.ts).
 */
import type { CacheGeometry, CacheStep, CacheStore } from '../kvcache.js';
import { poolElements } from '../kvcache.js';
import type { MemoryTracker } from '../memory.js';
import type { AnyTensor, Tensor } from '../tensor.js';
import { decodeModifiers } from './decode.js';
import { cpuDecode } from './index.js';
import { sharedBuffer } from './pool.js';

type Pool = Float32Array | Uint16Array;

export class CpuCacheStore implements CacheStore {
  readonly backend = 'cpu' as const;
  private readonly k: Pool;
  private readonly v: Pool;
  private readonly counted: number;

  constructor(
    private readonly g: CacheGeometry,
    private readonly memory: MemoryTracker,
  ) {
    const elements = poolElements(g);
    const make = (): Pool => (g.dtype === 'f16' ? new Uint16Array(sharedBuffer(elements * 2)) : new Float32Array(sharedBuffer(elements * 4)));
    this.k = make();
    this.v = make();
    this.counted = memory.allocate(2 * this.k.byteLength);
  }

  /** Element offset of token `t` of a slot (head 0, d 0) in a pool; head h's row is h · pageSize · D further. */
  private row(table: Int32Array, slot: number, t: number): number {
    const { pageSize, maxPages, Hkv, D } = this.g;
    const page = table[slot * maxPages + Math.floor(t / pageSize)];
    return (page * Hkv * pageSize + (t % pageSize)) * D;
  }

  async step(s: CacheStep): Promise<{ out: AnyTensor; lse: AnyTensor } | undefined> {
    const { Hkv, D, pageSize } = this.g;
    const width = Hkv * D;
    const headStride = pageSize * D;
    if (s.k && s.v) {
      const [k, v] = [s.k.data as Pool, s.v.data as Pool];
      s.slots.forEach((slot, b) => {
        for (let t = 0; t < s.n; t++) {
          const at = this.row(s.table, slot, s.starts[b] + t);
          const from = (b * s.n + t) * width;
          for (let h = 0; h < Hkv; h++) {
            this.k.set(k.subarray(from + h * D, from + (h + 1) * D), at + h * headStride);
            this.v.set(v.subarray(from + h * D, from + (h + 1) * D), at + h * headStride);
          }
        }
      });
    }
    if (!s.q) return undefined;
    const { maxPages } = this.g;
    const B = s.slots.length;
    // The block table of the call's rows: row b's pages are those of its slot.
    const table = new Int32Array(B * maxPages);
    s.slots.forEach((slot, b) => table.set(s.table.subarray(slot * maxPages, (slot + 1) * maxPages), b * maxPages));
    return cpuDecode({
      B,
      H: s.H,
      Hkv,
      Nq: s.Nq,
      D,
      causal: s.causal,
      scale: s.scale,
      q: s.q as Tensor & { dtype: 'f32' | 'f16' },
      qStrides: { batch: s.Nq * s.H * D, row: s.H * D, head: D },
      k: this.k,
      v: this.v,
      keys: { kvPage: pageSize * width, kvRow: D, kvHead: headStride, pageSize, maxPages },
      table,
      lengths: s.lengths,
      memory: s.memory,
      mods: decodeModifiers(s.mods, s.causal),
    });
  }

  /** Each slot's first lengths[b] tokens as (B, L, Hkv, D) tensors (L the longest), at the end of its row (zeros before). */
  private gather(slots: ArrayLike<number>, lengths: ArrayLike<number>, table: Int32Array): { k: Tensor; v: Tensor } {
    const { Hkv, D, dtype, pageSize } = this.g;
    const width = Hkv * D;
    const B = slots.length;
    const L = Math.max(...Array.from(lengths));
    const k = dtype === 'f16' ? new Uint16Array(B * L * width) : new Float32Array(B * L * width);
    const v = dtype === 'f16' ? new Uint16Array(B * L * width) : new Float32Array(B * L * width);
    for (let b = 0; b < B; b++) {
      const pad = L - lengths[b];
      for (let t = 0; t < lengths[b]; t++) {
        const at = this.row(table, slots[b], t);
        for (let h = 0; h < Hkv; h++) {
          const from = at + h * pageSize * D;
          const to = (b * L + pad + t) * width + h * D;
          k.set(this.k.subarray(from, from + D), to);
          v.set(this.v.subarray(from, from + D), to);
        }
      }
    }
    const shape = [B, L, Hkv, D];
    return { k: { data: k, dtype, shape }, v: { data: v, dtype, shape } };
  }

  async read(slot: number, length: number, table: Int32Array): Promise<{ k: Tensor; v: Tensor }> {
    return this.gather([slot], [length], table);
  }

  async prefix(slots: Int32Array, lengths: Int32Array, table: Int32Array): Promise<{ k: AnyTensor; v: AnyTensor; done(): void }> {
    const { k, v } = this.gather(slots, lengths, table);
    const counted = this.memory.allocate(2 * k.data.byteLength);
    return { k, v, done: () => this.memory.release(counted) };
  }

  dispose(): void {
    this.memory.release(this.counted);
  }
}
