/**
 * The KV cache of one attention layer, for inference: K and V of every token so far, held where the
 * attention runs (GPUBuffers on webgpu, typed arrays on the cpu), appended in place as tokens come, and
 * the attention of new queries against everything cached.
 *
 * Storage is a pool of pages, each `pageSize` tokens of (Hkv, D) keys and as many values:
 *   k pool, v pool: (pages, pageSize, Hkv, D) in the cache's dtype on webgpu (as vLLM's and
 *   FlashAttention's paged caches), (pages, Hkv, pageSize, D) on the cpu (a head's keys of a page
 *   contiguous: cpu/cache.ts); a block table maps page p of sequence s to its page in the pool.
 * A contiguous cache is the same thing with one page per sequence (pageSize = maxLength, page s of
 * sequence s), so one attention schedule serves both; a paged cache (config.pageSize) hands pages out
 * from a shared pool as sequences grow and takes them back on release(), so sequences of very different
 * lengths share the memory without any reallocation or copy of what is cached.
 *
 * Each of the `batch` sequence slots has its own length. A call names the slots it works on
 * (options.sequences; default all, in order): row b of q, k and v belongs to slot sequences[b].
 * forward(q, k, v) appends k and v (n new tokens to each named slot), then attends: query i of the Nq new
 * queries of slot s sees cached keys j < length(s), and with `causal` only j ≤ i + length(s) − Nq
 * (bottom-right aligned, as forward()'s causal: the new queries are the last Nq positions).
 * The variants of a decode step (options.window, softcap, alibiSlopes) are forward()'s, each slot's
 * diagonal at its own length − Nq: with a window a step reads only the left + Nq keys its queries see.
 * A slot that holds no key gives out = 0 and lse = −∞.
 *
 * The host keeps the lengths and the block table, so a call never waits for the device to learn them;
 * on webgpu the append and the attention are one submission, and a call on GPUBuffer tensors returns as
 * soon as its work is queued (see webgpu/cache.ts).
 *
 * A prompt into empty slots (every slot of the call empty, Nq = n new tokens, more than PREFILL_QUERIES,
 * no options.encoder) sees only its own keys: its attention is forward() over the call's own q, k and v
 * (the prefill kernels, which read K and V once per query tile rather than once per few query rows as
 * the decode schedule does), and k and v are appended beside it (createKVCache's caches; `prefill`). A
 * 512- and a 2048-token prompt (H = 8, Hkv = 2, D = 64, f32, causal) took 66 and 926 ms so on lavapipe,
 * against 230 and 3720 ms on the decode schedule, and 9–11 and 109–111 ms on the cpu backend against
 * 11–15 and 130–136 (the 2-core VM). A prompt after cached tokens (chunked prefill; on the cpu, slots of
 * one length; on webgpu typed arrays too, q uploaded for it) is appended first and then attends on
 * forward() over the slots' keys as the store copies them out (CacheStore.prefix; slots of different
 * lengths left-padded and masked): 512 tokens after 1536 took 0.58 s on lavapipe against 1.4 s on the
 * decode schedule.
 */
import { DTypeError, OutOfMemoryError, ShapeError, ValueError, describe } from './errors.js';
import { MemoryTracker } from './memory.js';
import type { Modifiers } from './modifiers.js';
import type { AttentionOptions } from './options.js';
import { checkModifiers, checkOutputs, checkTensor } from './problem.js';
import { BYTES_PER_ELEMENT, isGpuBuffer, type AnyTensor, type GpuTensor, type Tensor } from './tensor.js';

export interface KVCacheConfig {
  /** Sequence slots (the largest batch a call can attend over). */
  batch: number;
  /** Key/value heads Hkv (queries may have any multiple of them: GQA / MQA). */
  kvHeads: number;
  /** Head dimension D. */
  headDim: number;
  /** Most tokens one sequence can hold. */
  maxLength: number;
  /** Storage type of the cache (and of q, k, v, out); default 'f32'. f16 is 16-bit storage, f32 arithmetic. */
  dtype?: 'f32' | 'f16';
  /** Where the cache lives and the attention runs; 'auto' (default): webgpu on a real GPU, else cpu. */
  backend?: 'auto' | 'cpu' | 'webgpu';
  /** Paged: tokens per page (any positive integer; 16 as vLLM, or more). Unset: one contiguous page per sequence. */
  pageSize?: number;
  /** Paged: pages in the shared pool; default enough for every slot at maxLength. */
  pages?: number;
  /** webgpu: keep the cache on this device (the caller's) instead of the library's own. */
  device?: GPUDevice;
  /** Where the cache's storage (and each call's allocations) are counted; default the shared `memory`. */
  memory?: MemoryTracker;
}

export interface CacheCallOptions {
  /** The slots rows of q, k, v belong to, distinct; default [0, 1, …, batch − 1]. */
  sequences?: readonly number[];
  /** Causal among the new queries, bottom-right aligned; default false (as forward()). Prefill needs true. */
  causal?: boolean;
  /** Softmax scale; default 1/sqrt(D). */
  scale?: number;
  /** Sliding window [left, right] of forward() (options.ts), each slot's diagonal at its length − Nq. */
  window?: AttentionOptions['window'];
  /** Soft-capping of the scores, as forward()'s. */
  softcap?: AttentionOptions['softcap'];
  /** ALiBi slopes, H (or B·H: per row of the call, and head), as forward()'s; distances to each slot's diagonal. */
  alibiSlopes?: AttentionOptions['alibiSlopes'];
  /** webgpu with GPUBuffer q: write out here (shape and dtype as q) instead of a new buffer. */
  out?: GpuTensor;
  /** webgpu with GPUBuffer q: write lse here ((B, H, Nq) f32) instead of a new buffer. */
  lse?: GpuTensor;
  /**
   * webgpu with GPUBuffer tensors: record the call's append and attention into this command encoder
   * instead of submitting them, for the caller to submit with work of its own (a model's whole decode
   * step as one submission). The caller submits it before the next call on this cache (whose sizes,
   * written to the device at once, would be read by this call's work otherwise), and checks the device's
   * errors itself: such a call reports none.
   */
  encoder?: GPUCommandEncoder;
}

/** The geometry of a cache, fixed at creation. */
export interface CacheGeometry {
  batch: number;
  Hkv: number;
  D: number;
  maxLength: number;
  dtype: 'f32' | 'f16';
  /** Tokens per page (maxLength for a contiguous cache). */
  pageSize: number;
  /** Pages in the pool (batch for a contiguous cache). */
  pages: number;
  /** Entries of each slot's block table: ⌈maxLength / pageSize⌉. */
  maxPages: number;
  paged: boolean;
}

/**
 * One call as the backend's store sees it, all checked: `slots[b]` is the slot of batch row b, `starts[b]`
 * its length before the call (new rows go to positions starts[b] .. starts[b] + n − 1), `lengths[b]` after.
 * `table` is the whole block table (batch × maxPages entries; −1 where no page is assigned).
 */
export interface CacheStep {
  q?: AnyTensor;
  k?: AnyTensor;
  v?: AnyTensor;
  /** New tokens per slot (k's second axis; 0 without k). */
  n: number;
  slots: Int32Array;
  starts: Int32Array;
  lengths: Int32Array;
  table: Int32Array;
  /** Whether the table changed since the last step (webgpu uploads it then). */
  tableChanged: boolean;
  causal: boolean;
  scale: number;
  /** The variants (causal folded into the band), checked as forward()'s. */
  mods: Modifiers;
  H: number;
  Nq: number;
  out?: GpuTensor;
  lse?: GpuTensor;
  /** Record into this encoder rather than submit (CacheCallOptions.encoder). */
  encoder?: GPUCommandEncoder;
  memory: MemoryTracker;
}

/** What a backend provides: the pool, the append and the attention over it. */
export interface CacheStore {
  readonly backend: 'cpu' | 'webgpu';
  /** Append the step's k and v (if any), then attend its q (if any). */
  step(s: CacheStep): Promise<{ out: AnyTensor; lse: AnyTensor } | undefined>;
  /** K and V of a slot's first `length` tokens as (1, length, Hkv, D) typed-array tensors. */
  read(slot: number, length: number, table: Int32Array): Promise<{ k: Tensor; v: Tensor }>;
  /**
   * K and V of each slot's first lengths[b] tokens as (B, L, Hkv, D) tensors, L the longest, each slot's
   * tokens at the end of its row (the rows before them zero), where forward()'s kernels take them (typed
   * arrays on the cpu, GPUBuffers on the cache's device; copies, queued after the steps before), for a
   * prompt's attention on the prefill kernels; `done` frees them once that attention is queued. Absent
   * where the store cannot copy its rows so (webgpu: f16 rows of an odd Hkv·D, which the gather's 4-byte
   * words cannot cut).
   */
  prefix?(slots: Int32Array, lengths: Int32Array, table: Int32Array): Promise<{ k: AnyTensor; v: AnyTensor; done(): void }>;
  /** The most bytes prefix() can copy into one tensor (a device's buffer limit); none where absent. */
  readonly prefixBytes?: number;
  dispose(): void;
}

function positiveInt(name: string, x: unknown): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 1) throw new ValueError(name, 'a positive integer', describe(x));
  return x;
}

/** The geometry a config asks for, checked. */
export function cacheGeometry(config: KVCacheConfig): CacheGeometry {
  if (typeof config !== 'object' || config === null) throw new ValueError('config', 'a KVCacheConfig object', describe(config));
  const batch = positiveInt('config.batch', config.batch);
  const Hkv = positiveInt('config.kvHeads', config.kvHeads);
  const D = positiveInt('config.headDim', config.headDim);
  const maxLength = positiveInt('config.maxLength', config.maxLength);
  const dtype = config.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'f16') throw new DTypeError('config.dtype', "'f32' or 'f16'", describe(dtype));
  if (config.memory !== undefined && !(config.memory instanceof MemoryTracker)) throw new ValueError('config.memory', 'a MemoryTracker', describe(config.memory));
  const paged = config.pageSize !== undefined;
  if (!paged && config.pages !== undefined) throw new ValueError('config.pages', 'undefined without config.pageSize (a contiguous cache has one page per slot)', describe(config.pages));
  const pageSize = paged ? positiveInt('config.pageSize', config.pageSize) : maxLength;
  const maxPages = Math.ceil(maxLength / pageSize);
  const pages = paged ? (config.pages === undefined ? batch * maxPages : positiveInt('config.pages', config.pages)) : batch;
  return { batch, Hkv, D, maxLength, dtype, pageSize, pages, maxPages, paged };
}

/** Elements of one pool (k or v): pages × pageSize × Hkv × D. */
export function poolElements(g: CacheGeometry): number {
  return g.pages * g.pageSize * g.Hkv * g.D;
}

/** Queries above which a prompt into empty slots runs on forward() (as forward() leaves the decode schedule above 16). */
export const PREFILL_QUERIES = 16;

/** forward() with the cache's backend and device: a prompt's attention over its own q, k, v. */
export type CachePrefill = (q: AnyTensor, k: AnyTensor, v: AnyTensor, options: AttentionOptions) => Promise<{ out: AnyTensor; lse: AnyTensor }>;

export class KVCache {
  readonly geometry: CacheGeometry;
  private readonly lens: Int32Array;
  private readonly table: Int32Array;
  private readonly free: number[];
  private tableChanged = true;
  private disposed = false;
  /** Calls run one after another (the lengths and table of one are the starting point of the next). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    geometry: CacheGeometry,
    private readonly store: CacheStore,
    readonly memory: MemoryTracker,
    private readonly prefill?: CachePrefill,
  ) {
    this.geometry = geometry;
    this.lens = new Int32Array(geometry.batch);
    this.table = new Int32Array(geometry.batch * geometry.maxPages).fill(-1);
    if (geometry.paged) {
      this.free = Array.from({ length: geometry.pages }, (_, i) => geometry.pages - 1 - i); // page 0 first
    } else {
      this.free = [];
      for (let s = 0; s < geometry.batch; s++) this.table[s * geometry.maxPages] = s;
    }
  }

  /** 'cpu' or 'webgpu': where the cache lives. */
  get backend(): 'cpu' | 'webgpu' {
    return this.store.backend;
  }

  /** Tokens cached in each slot. */
  get lengths(): number[] {
    return Array.from(this.lens);
  }

  /** Pages of the pool not assigned to any sequence (paged caches; 0 for a contiguous one). */
  get freePages(): number {
    return this.free.length;
  }

  /**
   * Append k and v (B, n, Hkv, D) to the named slots, then attention of q (B, Nq, H, D) against everything
   * cached (the new tokens included). Returns out (like q) and lse (B, H, Nq), f32.
   */
  async forward(q: AnyTensor, k?: AnyTensor, v?: AnyTensor, options?: CacheCallOptions): Promise<{ out: AnyTensor; lse: AnyTensor }> {
    const r = await this.enqueue(() => this.run(q, k, v, options, true));
    return r!;
  }

  /** Append k and v (B, n, Hkv, D) to the named slots (prefill without attention, or a model's own attention). */
  async append(k: AnyTensor, v: AnyTensor, options?: Pick<CacheCallOptions, 'sequences'>): Promise<void> {
    await this.enqueue(() => this.run(undefined, k, v, options, false));
  }

  /** Forget a slot's tokens (its pages go back to the pool). */
  release(sequence: number): void {
    this.checkAlive();
    const s = this.slot('sequence', sequence);
    const g = this.geometry;
    this.lens[s] = 0;
    if (g.paged) {
      for (let p = 0; p < g.maxPages; p++) {
        const page = this.table[s * g.maxPages + p];
        if (page >= 0) this.free.push(page);
        this.table[s * g.maxPages + p] = -1;
      }
      this.tableChanged = true;
    }
  }

  /** Forget every slot's tokens. */
  reset(): void {
    for (let s = 0; s < this.geometry.batch; s++) this.release(s);
  }

  /** K and V cached in a slot, (1, length, Hkv, D) typed arrays in the cache's dtype (a copy; for checks and debugging). */
  async read(sequence: number): Promise<{ k: Tensor; v: Tensor }> {
    this.checkAlive();
    const s = this.slot('sequence', sequence);
    return this.enqueue(() => this.store.read(s, this.lens[s], this.table));
  }

  /** Free the cache's storage. Later calls throw. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.store.dispose();
  }

  private enqueue<T>(f: () => Promise<T>): Promise<T> {
    const next = this.queue.then(f);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private checkAlive(): void {
    if (this.disposed) throw new ValueError('cache', 'a cache that has not been disposed', 'a disposed cache');
  }

  private slot(name: string, x: unknown): number {
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0 || x >= this.geometry.batch) {
      throw new ValueError(name, `a slot index in 0..${this.geometry.batch - 1}`, describe(x));
    }
    return x;
  }

  private async run(q: AnyTensor | undefined, k: AnyTensor | undefined, v: AnyTensor | undefined, options: CacheCallOptions | undefined, attend: boolean) {
    this.checkAlive();
    const g = this.geometry;
    const o = checkCallOptions(options);
    const slots = Int32Array.from(o.sequences ?? Array.from({ length: g.batch }, (_, i) => i), (s, i) => this.slot(`options.sequences[${i}]`, s));
    if (new Set(slots).size !== slots.length) throw new ValueError('options.sequences', 'distinct slots', describe(o.sequences));
    const B = slots.length;
    const onGpu = this.store.backend === 'webgpu';
    let H = 0;
    let Nq = 0;
    if (attend) {
      const Q = checkCacheTensor('q', q, g, B, onGpu);
      [, Nq, H] = Q.shape;
      if (H % g.Hkv !== 0) throw new ShapeError('q.shape', `a head count that is a multiple of the cache's ${g.Hkv} kv heads (axes B, Nq, H, D)`, `[${Q.shape.join(', ')}]`);
    }
    if ((k === undefined) !== (v === undefined)) throw new ValueError(k === undefined ? 'k' : 'v', 'k and v together, or neither', 'only one of them');
    let n = 0;
    if (k !== undefined && v !== undefined) {
      const K = checkCacheTensor('k', k, g, B, onGpu);
      if (K.shape[2] !== g.Hkv) throw new ShapeError('k.shape', `${g.Hkv} kv heads as the cache (axes B, n, Hkv, D)`, `[${K.shape.join(', ')}]`);
      const V = checkCacheTensor('v', v, g, B, onGpu);
      if (V.shape.some((x, i) => x !== K.shape[i])) throw new ShapeError('v.shape', `[${K.shape.join(', ')}] (the shape of k)`, `[${V.shape.join(', ')}]`);
      n = K.shape[1];
    }
    if (q !== undefined && k !== undefined && isGpuBuffer(q.data) !== isGpuBuffer(k.data)) {
      throw new ValueError('k.data', isGpuBuffer(q.data) ? 'a GPUBuffer, as q.data is' : 'a typed array, as q.data is', isGpuBuffer(k.data) ? 'a GPUBuffer' : 'a typed array');
    }
    const starts = Int32Array.from(slots, (s) => this.lens[s]);
    const lengths = Int32Array.from(starts, (x) => x + n);
    lengths.forEach((len, b) => {
      if (len > g.maxLength) {
        throw new ValueError('k.shape', `at most ${g.maxLength - starts[b]} new tokens for slot ${slots[b]} (it holds ${starts[b]} of config.maxLength ${g.maxLength})`, `${n}`);
      }
    });
    const variants = { window: o.window, softcap: o.softcap, alibiSlopes: o.alibiSlopes };
    const mods = attend ? checkModifiers(variants, { B, H, Nq, Nk: Math.max(...lengths) }, o.causal ?? false, onGpu, g.dtype, false) : {};
    if (attend) checkOutputs(o, q!, [k, v].filter((t): t is AnyTensor => t !== undefined), { B, H, Nq }, false);
    if (o.encoder !== undefined) {
      if (!onGpu || (q !== undefined && !isGpuBuffer(q.data)) || (k !== undefined && !isGpuBuffer(k.data))) {
        throw new ValueError('options.encoder', 'undefined except on webgpu with GPUBuffer tensors', 'a command encoder');
      }
      if (typeof o.encoder !== 'object' || o.encoder === null || typeof o.encoder.beginComputePass !== 'function') throw new ValueError('options.encoder', 'a GPUCommandEncoder', describe(o.encoder));
    }
    if (g.paged) this.assignPages(slots, lengths);
    const scale = o.scale ?? 1 / Math.sqrt(g.D);
    // A prompt (more than PREFILL_QUERIES new tokens, each a query) runs on forward()'s prefill kernels
    // rather than the decode schedule, whose workgroups would each read all the keys for a few query rows:
    // into empty slots, over its own q, k, v, the store then only appending k and v; after cached tokens
    // (chunked prefill), over the slots' keys as the store copies them out once it has appended (on webgpu
    // typed arrays too: webgpu/cache.ts's typedPrompt uploads q). Bottom-right causal, the window and
    // ALiBi's distances are the cache's own there: each slot's diagonal at its length − Nq. On webgpu,
    // slots of different lengths are copied each to the end of a row of the longest's length, and a key
    // mask leaves out the zeros before them (512 tokens after 1536 and 1024 on lavapipe: 1.2–1.4 s against
    // 2.5–2.7 on the decode schedule); the cpu's decode kernel handles many rows well and was faster there
    // (89–157 ms against 167–253 masked).
    const prompt = attend && this.prefill !== undefined && k !== undefined && v !== undefined && o.encoder === undefined && Nq === n && Nq > PREFILL_QUERIES;
    const empty = prompt && starts.every((x) => x === 0);
    const longest = prompt ? Math.max(...lengths) : 0;
    const sameLength = prompt && lengths.every((x) => x === longest);
    const chunked =
      prompt &&
      !empty &&
      this.store.prefix !== undefined &&
      (onGpu || sameLength) &&
      B * longest * g.Hkv * g.D * BYTES_PER_ELEMENT[g.dtype] <= (this.store.prefixBytes ?? Infinity); // checked before the append: a refused call changes nothing
    const prefillOptions: AttentionOptions | undefined = prompt
      ? { causal: o.causal ?? false, scale, window: o.window, softcap: o.softcap, alibiSlopes: o.alibiSlopes, out: o.out, lse: o.lse, memory: this.memory }
      : undefined;
    const prefilled = empty ? await this.prefill!(q!, k!, v!, prefillOptions!) : undefined;
    const step: CacheStep = {
      q: attend && !prefilled && !chunked ? q : undefined,
      k,
      v,
      n,
      slots,
      starts,
      lengths,
      table: this.table,
      tableChanged: this.tableChanged,
      causal: o.causal ?? false,
      scale,
      mods,
      H,
      Nq,
      out: o.out,
      lse: o.lse,
      encoder: o.encoder,
      memory: this.memory,
    };
    // The new lengths count from here: the store queues its work in order, so a later call sees it.
    const result = await this.store.step(step);
    this.tableChanged = false;
    slots.forEach((s, b) => (this.lens[s] = lengths[b]));
    if (chunked) {
      const keys = await this.store.prefix!(slots, lengths, this.table);
      // Slots shorter than the longest: the first longest − length keys of their rows are zeros, masked out.
      const mask = sameLength
        ? undefined
        : { data: Uint8Array.from({ length: B * longest }, (_, e) => (e % longest >= longest - lengths[Math.floor(e / longest)] ? 1 : 0)), shape: [B, 1, 1, longest] };
      try {
        return await this.prefill!(q!, keys.k, keys.v, { ...prefillOptions, ...(mask && { mask }) });
      } finally {
        keys.done();
      }
    }
    return prefilled ? { out: prefilled.out, lse: prefilled.lse } : result;
  }

  /** Pages for every slot up to its new length, from the free pool (all or none). */
  private assignPages(slots: Int32Array, lengths: Int32Array): void {
    const g = this.geometry;
    const wanted: [number, number][] = [];
    slots.forEach((s, b) => {
      for (let p = 0; p < Math.ceil(lengths[b] / g.pageSize); p++) if (this.table[s * g.maxPages + p] < 0) wanted.push([s, p]);
    });
    if (wanted.length > this.free.length) {
      throw new OutOfMemoryError('k', `at most ${this.free.length} free pages of ${g.pageSize} tokens in the cache's pool (config.pages = ${g.pages})`, `${wanted.length} pages needed`);
    }
    for (const [s, p] of wanted) this.table[s * g.maxPages + p] = this.free.pop()!;
    if (wanted.length > 0) this.tableChanged = true;
  }
}

function checkCallOptions(options: unknown): CacheCallOptions {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new ValueError('options', 'an options object or undefined', describe(options));
  const o = options as CacheCallOptions & Record<string, unknown>;
  const known = new Set(['sequences', 'causal', 'scale', 'window', 'softcap', 'alibiSlopes', 'out', 'lse', 'encoder']);
  for (const key of Object.keys(o)) if (!known.has(key)) throw new ValueError(`options.${key}`, `one of the known options (${[...known].join(', ')})`, 'an unknown option');
  if (o.sequences !== undefined && !Array.isArray(o.sequences)) throw new ValueError('options.sequences', 'an array of slot indices', describe(o.sequences));
  if (o.causal !== undefined && typeof o.causal !== 'boolean') throw new ValueError('options.causal', 'a boolean', describe(o.causal));
  if (o.scale !== undefined && (typeof o.scale !== 'number' || !Number.isFinite(o.scale))) throw new ValueError('options.scale', 'a finite number', describe(o.scale));
  return o;
}

/** A q, k or v of a cache call: (B, n, heads, D) BNHD, the cache's dtype, typed array or (webgpu) GPUBuffer. */
function checkCacheTensor(name: string, t: unknown, g: CacheGeometry, B: number, onGpu: boolean): AnyTensor {
  const { data, dtype, shape } = checkTensor(name, t, 4); // a tensor, its data of its dtype, positive sizes, its length
  if (dtype !== g.dtype) throw new DTypeError(`${name}.dtype`, `'${g.dtype}' (the cache's dtype)`, describe(dtype));
  if (isGpuBuffer(data) && !onGpu) throw new ValueError(`${name}.data`, 'a typed array (the cache lives on the cpu)', 'a GPUBuffer');
  if (shape[0] !== B) throw new ShapeError(`${name}.shape`, `batch ${B} (one row per slot of options.sequences)`, `[${shape.join(', ')}]`);
  if (shape[3] !== g.D) throw new ShapeError(`${name}.shape`, `head dim ${g.D} as the cache (axes B, N, heads, D)`, `[${shape.join(', ')}]`);
  return t as AnyTensor;
}
