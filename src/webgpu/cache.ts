/**
 * The webgpu backend's KV cache store (see src/kvcache.ts): the k and v pools are GPUBuffers of
 * (pages, pageSize, Hkv, D) in the cache's dtype; a step appends the new tokens with the append kernel
 * (kernels/append.ts) and attends with the split-KV decode schedule (webgpu/decode.ts), reading keys
 * through the block table when paged, all in one submission.
 *
 * Host cost: what one step needs is kept between steps (the pipelines, uniform and slot buffers rewritten
 * with queue.writeBuffer, bind groups by the buffers they bind, the splits' partials, and the variants'
 * buffers, made again only when a step's window, soft-cap or slopes differ from the last), so a warmed-up step
 * on GPUBuffer tensors with the caller's `out` and `lse` creates nothing and returns once its work is
 * queued: it never waits for the GPU. The queue runs writes and submissions in order, so each step reads
 * the sizes written for it. A device error of such a step (a GPUBuffer of another device, say) is
 * reported by the next call on the cache. With the caller's encoder (CacheCallOptions.encoder) the step
 * is recorded there and neither submitted nor checked: the caller does both (a model's decode step).
 */
import { keysSeen } from '../modifiers.js';
import { NotSupportedError, ValueError } from '../errors.js';
import type { CacheGeometry, CachePrefill, CacheStep, CacheStore } from '../kvcache.js';
import { poolElements } from '../kvcache.js';
import type { MemoryTracker } from '../memory.js';
import { isGpuBuffer, type AnyTensor, type GpuTensor, type Tensor } from '../tensor.js';
import { GpuBuffers } from './buffers.js';
import { decodeChoice, decodePipelines, decodePlan, decodeScratch, decodeSizes, encodeDecode, flatGroups, type DecodeKernels, type DecodeScratch } from './decode.js';
import type { Gpu } from './device.js';
import { appendWGSL, gatherWGSL } from './kernels/append.js';
import { decodeSizesBytes, type DecodeSizes } from './kernels/decode.js';
import { dispatch, pipeline } from './pipelines.js';
import { modBuffers, modsOf } from './modifiers.js';
import type { Problem } from '../problem.js';

const BYTES = { f32: 4, f16: 2 } as const;

export class WebgpuCacheStore implements CacheStore {
  readonly backend = 'webgpu' as const;
  private readonly own: GpuBuffers;
  private readonly k: GPUBuffer;
  private readonly v: GPUBuffer;
  private readonly table: GPUBuffer;
  /** (slot, first new position) per batch row for the append; (slot, length) for the attention. */
  private readonly appendSeqs: GPUBuffer;
  private readonly attendSeqs: GPUBuffer;
  private readonly appendUniform: GPUBuffer;
  private readonly attendUniform: GPUBuffer;
  private readonly scratch: DecodeScratch;
  /** A device error of an earlier step that did not wait for it, reported by the next call. */
  private failure?: string;
  /** Bind group 1's buffers of the last step with variants, and the values they hold. */
  private modGroup?: { key: string; slopes?: Float32Array; group: Map<number, GPUBuffer> };

  constructor(
    private readonly g: CacheGeometry,
    private readonly gpu: Gpu,
    private readonly memory: MemoryTracker,
    /** Which decode kernels may run (tests force each one). */
    private readonly kernels: DecodeKernels = 'auto',
  ) {
    if (!decodeChoice({ D: g.D, dtype: g.dtype, G: 1, Nq: 1, causal: false, cache: true, paged: g.paged, aligned: true }, gpu)) {
      throw new NotSupportedError('config.headDim', `a KV cache of head dim ${g.D} on this device (no decode tile fits its workgroup memory)`, 'a smaller head dim', String(g.D));
    }
    this.own = new GpuBuffers(gpu.device, memory);
    const bytes = poolElements(g) * BYTES[g.dtype];
    this.k = this.own.create(bytes, 'the KV cache k pool', 'config.maxLength');
    this.v = this.own.create(bytes, 'the KV cache v pool', 'config.maxLength');
    const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    this.table = this.own.create(g.batch * g.maxPages * 4, 'the block table', 'config.batch', storage);
    this.appendSeqs = this.own.create(g.batch * 8, 'slots of a step', 'config.batch', storage);
    this.attendSeqs = this.own.create(g.batch * 8, 'slots of a step', 'config.batch', storage);
    const uniform = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
    this.appendUniform = this.own.create(80, 'append sizes', 'config', uniform);
    this.attendUniform = this.own.create(80, 'decode sizes', 'config', uniform);
    this.scratch = decodeScratch(gpu.device);
    if ((g.Hkv * g.D * BYTES[g.dtype]) % 4 === 0) this.prefix = (slots, lengths) => this.copyPrefix(slots, lengths);
    this.prefixBytes = Math.min(gpu.device.limits.maxBufferSize, gpu.device.limits.maxStorageBufferBindingSize);
  }

  /** The pool's strides: page, row (token), head. */
  private keys() {
    const { Hkv, D, pageSize, maxPages } = this.g;
    return { kvPage: pageSize * Hkv * D, kvRow: Hkv * D, kvHead: D, pageSize, maxPages };
  }

  async step(s: CacheStep): Promise<{ out: AnyTensor; lse: AnyTensor } | undefined> {
    if (this.failure) {
      const message = this.failure;
      this.failure = undefined;
      throw new ValueError('q.data', 'buffers of the cache’s device (an earlier call on this cache failed on the device)', message);
    }
    const { device } = this.gpu;
    const { Hkv, D, dtype } = this.g;
    const B = s.slots.length;
    const call = new GpuBuffers(device, s.memory);
    const input = (t: AnyTensor, name: string) => (isGpuBuffer(t.data) ? t.data : call.upload(t.data, name));
    const onGpu = s.q ? isGpuBuffer(s.q.data) : true;
    try {
      const enc = s.encoder ?? device.createCommandEncoder();
      if (s.tableChanged) device.queue.writeBuffer(this.table, 0, s.table.buffer, s.table.byteOffset, s.table.byteLength);
      if (s.k && s.v && s.n > 0) {
        const pipe = await pipeline(device, 'cacheAppend', { D, dtype, WG: 64 }, appendWGSL);
        const sizes: DecodeSizes = { B, H: Hkv, Hkv, Nq: s.n, Nk: 0, qBatch: 0, qRow: 0, qHead: 0, ...this.keys(), rowChunks: 1, splits: 1, chunk: 0, scale: 0 };
        device.queue.writeBuffer(this.appendUniform, 0, decodeSizesBytes(sizes));
        device.queue.writeBuffer(this.appendSeqs, 0, pairs(s.slots, s.starts));
        const pass = enc.beginComputePass();
        pass.setPipeline(pipe);
        pass.setBindGroup(0, this.scratch.bindGroup(pipe, [this.appendUniform, input(s.k, 'k'), input(s.v, 'v'), this.k, this.v, this.appendSeqs, this.table], onGpu));
        pass.dispatchWorkgroups(...flatGroups(B * s.n * Hkv * D, 64));
        pass.end();
      }
      let result: { out: GPUBuffer; lse: GPUBuffer } | undefined;
      if (s.q) {
        const { H, Nq } = s;
        const longest = Math.max(1, ...s.lengths);
        const problem = this.problem(s, longest);
        const mods = modsOf(problem);
        const shape = { D, dtype, G: H / Hkv, Nq, causal: s.causal, cache: true, paged: this.g.paged, aligned: true, aligned8: D % 8 === 0, ...(mods && { mods }), ...(this.g.paged && { pageSize: this.g.pageSize }) };
        const choice = decodeChoice(shape, this.gpu, this.kernels)!;
        const plan = decodePlan(choice, B, Hkv, (H / Hkv) * Nq, keysSeen(s.mods, Nq, longest));
        const { R } = plan;
        const q = { batch: Nq * H * D, row: H * D, head: D };
        const sizes = decodeSizes({ B, H, Hkv, Nq, Nk: longest, q, keys: this.keys(), scale: s.scale }, R, plan);
        const pipes = await decodePipelines(this.gpu, choice, plan.splits > 1);
        device.queue.writeBuffer(this.attendUniform, 0, decodeSizesBytes(sizes));
        device.queue.writeBuffer(this.attendSeqs, 0, pairs(s.slots, s.lengths));
        const out = s.out?.data ?? call.create(B * Nq * H * D * BYTES[dtype], 'out', 'q');
        const lse = s.lse?.data ?? call.create(B * H * Nq * 4, 'lse', 'q');
        const extra = this.g.paged ? { seqs: this.attendSeqs, table: this.table } : { seqs: this.attendSeqs };
        const group1 = mods ? { group: this.modBuffers(problem, mods), keep: true } : undefined;
        encodeDecode(enc, this.scratch, pipes, D, sizes, this.attendUniform, { q: input(s.q, 'q'), k: this.k, v: this.v, out, lse, ...extra }, onGpu, group1);
        result = { out, lse };
      }
      if (s.encoder) {
        // The caller submits the encoder and checks the device's errors (CacheCallOptions.encoder).
      } else if (onGpu) {
        device.pushErrorScope('validation');
        device.queue.submit([enc.finish()]);
        const scope = device.popErrorScope();
        scope.then((e) => (this.failure ??= e?.message)).catch(() => undefined);
      } else {
        device.pushErrorScope('validation');
        device.queue.submit([enc.finish()]);
        const e = await device.popErrorScope();
        if (e) throw new ValueError('options.device', 'buffers and a device that belong together', e.message);
      }
      if (!result || !s.q) return undefined;
      const lseShape = [B, s.H, s.Nq];
      if (onGpu) {
        return {
          out: s.out ?? ({ data: call.handOver(result.out), dtype, shape: [...s.q.shape] } satisfies GpuTensor),
          lse: s.lse ?? ({ data: call.handOver(result.lse), dtype: 'f32', shape: lseShape } satisfies GpuTensor),
        };
      }
      const outBytes = await call.read(result.out, B * s.Nq * s.H * D * BYTES[dtype], 'q');
      const lseBytes = await call.read(result.lse, B * s.H * s.Nq * 4, 'q');
      return {
        out: { data: dtype === 'f16' ? new Uint16Array(outBytes) : new Float32Array(outBytes), dtype, shape: [...s.q.shape] },
        lse: { data: new Float32Array(lseBytes), dtype: 'f32', shape: lseShape },
      };
    } finally {
      call.destroyAll();
    }
  }

  /** A step's attention as a Problem (Nk: its longest slot's length), for the variants' flags and buffers. */
  private problem(s: CacheStep, longest: number): Problem {
    const { Hkv, D, dtype } = this.g;
    const onGpu = s.q !== undefined && isGpuBuffer(s.q.data);
    return { B: s.slots.length, H: s.H, Hkv, Nq: s.Nq, Nk: longest, D, dtype, layout: 'BNHD', causal: s.causal, scale: s.scale, backend: 'webgpu', algorithm: 'flash', precision: 'highest', memory: s.memory, onGpu, mods: s.mods };
  }

  /**
   * Bind group 1's buffers for a step with variants `mods`: the last step's while its values are the same
   * (a decode loop's window, soft-cap and slopes stay put), else made anew in the cache's own buffers.
   */
  private modBuffers(p: Problem, mods: string): Map<number, GPUBuffer> {
    const m = p.mods;
    const key = JSON.stringify([mods, m.band, m.softcap, p.H]);
    const slopes = m.alibi?.slopes;
    const last = this.modGroup;
    const same = (a?: Float32Array, b?: Float32Array) => a === b || (a !== undefined && b !== undefined && a.length === b.length && a.every((x, i) => x === b[i]));
    if (last && last.key === key && same(last.slopes, slopes)) return last.group;
    // Work queued before still reads the old buffers: destroy() leaves them to it.
    if (last) for (const buffer of last.group.values()) this.own.destroy(buffer);
    const group = modBuffers(p, mods, this.own);
    this.modGroup = { key, slopes, group };
    return group;
  }

  /**
   * CacheStore.prefix: copies of the slots' rows into fresh buffers, gathered through the block table by
   * one dispatch (kernels/append.ts's gather), queued after the steps before; absent where a token's row
   * (Hkv·D elements) is not a multiple of 4 bytes (f16 with Hkv·D odd).
   */
  readonly prefix?: (slots: Int32Array, lengths: Int32Array, table: Int32Array) => Promise<{ k: AnyTensor; v: AnyTensor; done(): void }>;
  readonly prefixBytes: number;

  private async copyPrefix(slots: Int32Array, lengths: Int32Array): Promise<{ k: GpuTensor; v: GpuTensor; done(): void }> {
    const { device } = this.gpu;
    const { Hkv, D, dtype } = this.g;
    const B = slots.length;
    const words = (Hkv * D * BYTES[dtype]) / 4;
    const L = Math.max(...lengths);
    const call = new GpuBuffers(device, this.memory);
    try {
      // New buffers are zero: a shorter slot's row keeps zeros before its tokens.
      const [k, v] = ['k', 'v'].map((name) => call.create(B * L * words * 4, `a prompt's cached ${name}`, name));
      const keys = this.keys();
      const sizes: DecodeSizes = { B, H: Hkv, Hkv, Nq: 0, Nk: L, qBatch: 0, qRow: 0, qHead: 0, ...keys, kvPage: keys.pageSize * words, kvRow: words, rowChunks: 1, splits: 1, chunk: 0, scale: 0 };
      const uniform = call.uniform(decodeSizesBytes(sizes), 'gather sizes');
      const seqs = call.upload(pairs(slots, lengths), 'slots of a prompt', 'sequence');
      const pipe = await pipeline(device, 'cacheGather', { WG: 64 }, gatherWGSL);
      const enc = device.createCommandEncoder();
      dispatch(enc, device, pipe, [uniform, this.k, this.v, k, v, seqs, this.table], flatGroups(B * L * words, 64));
      device.queue.submit([enc.finish()]);
      const shape = [B, L, Hkv, D];
      return { k: { data: k, dtype, shape }, v: { data: v, dtype, shape }, done: () => call.destroyAll() };
    } catch (e) {
      call.destroyAll();
      throw e;
    }
  }

  async read(slot: number, length: number, table: Int32Array): Promise<{ k: Tensor; v: Tensor }> {
    const { Hkv, D, dtype, pageSize, maxPages } = this.g;
    const width = Hkv * D * BYTES[dtype];
    const shape = [1, length, Hkv, D];
    const typed = (b: Uint8Array) => (dtype === 'f16' ? new Uint16Array(b.buffer) : new Float32Array(b.buffer));
    if (this.prefix) {
      // The slot's rows gathered on the device (one dispatch), then read back once for k and once for v.
      const keys = await this.copyPrefix(Int32Array.of(slot), Int32Array.of(length));
      const call = new GpuBuffers(this.gpu.device, this.memory);
      try {
        const [k, v] = await Promise.all([keys.k, keys.v].map(async (t) => new Uint8Array(await call.read(t.data, length * width, 'sequence'))));
        return { k: { data: typed(k), dtype, shape }, v: { data: typed(v), dtype, shape } };
      } finally {
        call.destroyAll();
        keys.done();
      }
    }
    // Rows not in whole 4-byte words (f16, Hkv·D odd): page by page, each read from the word boundaries around it.
    const k = new Uint8Array(length * width);
    const v = new Uint8Array(length * width);
    const call = new GpuBuffers(this.gpu.device, this.memory);
    try {
      for (let t0 = 0; t0 < length; t0 += pageSize) {
        const tokens = Math.min(pageSize, length - t0);
        const page = table[slot * maxPages + t0 / pageSize];
        const start = page * pageSize * width;
        const [from, to] = [Math.floor(start / 4) * 4, Math.ceil((start + tokens * width) / 4) * 4];
        for (const [pool, into] of [[this.k, k], [this.v, v]] as const) {
          const staging = call.create(to - from, 'readback', 'sequence', GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC, false);
          const enc = this.gpu.device.createCommandEncoder();
          enc.copyBufferToBuffer(pool, from, staging, 0, to - from);
          this.gpu.device.queue.submit([enc.finish()]);
          const bytes = new Uint8Array(await call.read(staging, to - from, 'sequence'));
          into.set(bytes.subarray(start - from, start - from + tokens * width), t0 * width);
          call.destroy(staging);
        }
      }
    } finally {
      call.destroyAll();
    }
    return { k: { data: typed(k), dtype, shape }, v: { data: typed(v), dtype, shape } };
  }

  dispose(): void {
    this.own.destroyAll();
  }
}

/**
 * `prefill` (forward() on the device) for a chunked prompt of typed arrays: q goes up, the keys are the
 * GPU tensors the store copied out (CacheStore.prefix), and out and lse come back as typed arrays (a
 * typed-array call has no options.out or options.lse). It costs the host what the decode schedule's
 * typed-array step does, which uploads q and reads its results back too.
 */
export function typedPrompt(gpu: Gpu, memory: MemoryTracker, prefill: CachePrefill): CachePrefill {
  return async (q, k, v, options) => {
    if (isGpuBuffer(q.data) || !isGpuBuffer(k.data)) return prefill(q, k, v, options);
    const t = q as Tensor;
    const call = new GpuBuffers(gpu.device, memory);
    try {
      const up: GpuTensor = { data: call.upload(t.data, 'q'), dtype: t.dtype as GpuTensor['dtype'], shape: t.shape }; // the cache's dtype
      const r = (await prefill(up, k, v, options)) as { out: GpuTensor; lse: GpuTensor };
      const [o, l] = [call.adopt(r.out.data), call.adopt(r.lse.data)];
      const lseLength = r.lse.shape.reduce((a, b) => a * b, 1);
      const [ob, lb] = [await call.read(o, t.data.byteLength, 'q'), await call.read(l, lseLength * 4, 'q')];
      return {
        out: { data: t.dtype === 'f16' ? new Uint16Array(ob) : new Float32Array(ob), dtype: t.dtype, shape: [...t.shape] } as Tensor,
        lse: { data: new Float32Array(lb), dtype: 'f32', shape: [...r.lse.shape] } satisfies Tensor,
      };
    } finally {
      call.destroyAll();
    }
  };
}

/** (a[b], c[b]) pairs as u32s. */
function pairs(a: Int32Array, c: Int32Array): Uint32Array {
  const out = new Uint32Array(2 * a.length);
  a.forEach((x, b) => {
    out[2 * b] = x;
    out[2 * b + 1] = c[b];
  });
  return out;
}
