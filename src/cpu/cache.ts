/**
 * The cpu backend's KV cache store (see src/kvcache.ts): the k and v pools are typed arrays in the cache's
 * dtype on buffers the worker threads share, appended row by row through the block table; the attention
 * of each batch row runs the cpu flash forward over that slot's keys, read through the table.
 */
import type { CacheGeometry, CacheStep, CacheStore } from '../kvcache.js';
import { poolElements } from '../kvcache.js';
import type { MemoryTracker } from '../memory.js';
import { checkForward } from '../problem.js';
import type { AnyTensor, Tensor } from '../tensor.js';
import { cpuForward } from './index.js';
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

  /** Element offset of token `t` of a slot (head 0, d 0) in a pool. */
  private row(table: Int32Array, slot: number, t: number): number {
    const { pageSize, maxPages, Hkv, D } = this.g;
    const page = table[slot * maxPages + Math.floor(t / pageSize)];
    return (page * pageSize + (t % pageSize)) * Hkv * D;
  }

  async step(s: CacheStep): Promise<{ out: AnyTensor; lse: AnyTensor } | undefined> {
    const { Hkv, D, dtype } = this.g;
    const width = Hkv * D;
    if (s.k && s.v) {
      const [k, v] = [s.k.data as Pool, s.v.data as Pool];
      s.slots.forEach((slot, b) => {
        for (let t = 0; t < s.n; t++) {
          const at = this.row(s.table, slot, s.starts[b] + t);
          const from = (b * s.n + t) * width;
          this.k.set(k.subarray(from, from + width), at);
          this.v.set(v.subarray(from, from + width), at);
        }
      });
    }
    if (!s.q) return undefined;
    const q = s.q as Tensor;
    const { H, Nq } = s;
    const B = s.slots.length;
    const out = dtype === 'f16' ? new Uint16Array(q.data.length) : new Float32Array(q.data.length);
    const lse = new Float32Array(B * H * Nq).fill(-Infinity);
    for (let b = 0; b < B; b++) {
      const len = s.lengths[b];
      if (len === 0) continue; // sees no key: out 0, lse −∞
      const { k, v } = this.gather(s.slots[b], len, s.table);
      const rows = Nq * H * D;
      const qb: Tensor = { data: q.data.subarray(b * rows, (b + 1) * rows) as Pool, dtype, shape: [1, Nq, H, D] };
      const p = checkForward(qb, k, v, { causal: s.causal, scale: s.scale, memory: s.memory });
      const r = await cpuForward(p, qb, k, v);
      out.set(r.out.data as Pool, b * rows);
      lse.set(r.lse.data as Float32Array, b * H * Nq);
    }
    return { out: { data: out, dtype, shape: [...q.shape] }, lse: { data: lse, dtype: 'f32', shape: [B, H, Nq] } };
  }

  /** A slot's first `length` tokens as contiguous (1, length, Hkv, D) tensors. */
  private gather(slot: number, length: number, table: Int32Array): { k: Tensor; v: Tensor } {
    const { Hkv, D, dtype } = this.g;
    const width = Hkv * D;
    const k = dtype === 'f16' ? new Uint16Array(length * width) : new Float32Array(length * width);
    const v = dtype === 'f16' ? new Uint16Array(length * width) : new Float32Array(length * width);
    for (let t = 0; t < length; t++) {
      const at = this.row(table, slot, t);
      k.set(this.k.subarray(at, at + width), t * width);
      v.set(this.v.subarray(at, at + width), t * width);
    }
    const shape = [1, length, Hkv, D];
    return { k: { data: k, dtype, shape }, v: { data: v, dtype, shape } };
  }

  async read(slot: number, length: number, table: Int32Array): Promise<{ k: Tensor; v: Tensor }> {
    return this.gather(slot, length, table);
  }

  dispose(): void {
    this.memory.release(this.counted);
  }
}
