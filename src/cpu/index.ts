/**
 * The cpu backend: stages the inputs as f32 in buffers the worker threads share, runs the flash kernels
 * (or the standard baseline) over batch × head × block tasks, and returns outputs in the input dtype.
 * Flash forward calls with few queries (cpuDecodeFits) run the split-KV decode kernel instead (decode.ts,
 * through cpuDecode, which the KV cache runs too): K and V in their own dtype, read in place.
 * The variants (src/modifiers.ts) run on the tiled and standard kernels (decode runs those of decodeRuns):
 * the bias's values (f64) and the mask are staged in the workspace with the inputs, and with biasGrad the
 * backward's (B, H, Nq, Nk) dS is summed to the bias's shape here, in a fixed order.
 * Every array it uses is counted in the call's MemoryTracker; all are released when the call returns
 * (outputs are copied into arrays of the caller's own).
 */
import { OutOfMemoryError } from '../errors.js';
import { encodeF16, decodeF16, f16ToNumber } from '../f16.js';
import type { MemoryTracker } from '../memory.js';
import { at, keysSeen } from '../modifiers.js';
import { problemStrides, type Problem } from '../problem.js';
import { biasValues } from '../reference/standard.js';
import type { Tensor } from '../tensor.js';
import { DECODE_MAX_QUERIES, decodeModifiers, decodeRows, decodeRuns, decodeScratch, decodeSplits, decodeTasks, decodeTile, mergeDecode, type DecodeModifiers, type DecodeShape } from './decode.js';
import { backwardTasks, forwardTasks, reduceDq } from './flash.js';
import { counterBytes, cpuShape, scratchLength, type CpuShape, type Job, type Kernel, type Region } from './job.js';
import { Arena, runJob, threadsFor } from './pool.js';
import { cpuKernels } from './wasm/index.js';

/** The most bytes of one array: 2^32 f16 elements, the longest typed array Node 20's V8 makes. */
const MAX_ARRAY_BYTES = 2 ** 33;

/**
 * The arrays of one call: regions of the pool's workspace (pool.ts), planned by name and size before the
 * call starts, each counted in the call's MemoryTracker while the call runs. A region is zeroed when first
 * asked for (`region`), except those filled whole before anything reads them (`stage`, `filled`). Outputs
 * are copied out of the workspace into arrays of the caller's own.
 */
class Buffers {
  private counted = 0;
  private readonly regions = new Map<string, Region>();
  /** Regions taken from the workspace unzeroed and not yet zeroed, written or asked for as filled. */
  private readonly unzeroed = new Set<string>();
  private readonly arena: Arena;

  /** Regions for `plan` (name: [bytes, what it is for]), or an OutOfMemoryError naming the one at fault. */
  constructor(
    private readonly memory: MemoryTracker,
    plan: Record<string, [bytes: number, what: string]>,
  ) {
    const entries = Object.entries(plan);
    const over = entries.find(([, [bytes]]) => bytes > MAX_ARRAY_BYTES);
    if (over) throw new OutOfMemoryError('q', `at most ${MAX_ARRAY_BYTES} bytes per array (the longest typed array) for ${over[1][1]}`, `${over[1][0]} bytes`);
    try {
      this.arena = Arena.open(entries.map(([, [bytes]]) => bytes));
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      const [, [bytes, what]] = entries.reduce((a, b) => (b[1][0] > a[1][0] ? b : a));
      const total = entries.reduce((a, [, [b]]) => a + b, 0);
      throw new OutOfMemoryError('q', `an allocation this machine can make for the call's ${total} bytes (the largest: ${what}, ${bytes} bytes)`, `${e.message}`);
    }
    for (const [name, [bytes]] of entries) {
      this.regions.set(name, this.arena.take(bytes, false));
      this.unzeroed.add(name);
      this.counted += this.memory.allocate(bytes);
    }
  }

  /** The region `name`, zeroed the first time it is asked for (unless it was staged or asked for as `filled`). */
  region(name: string): Region {
    const zero = this.unzeroed.has(name);
    const r = this.filled(name);
    if (zero) this.arena.zero(r);
    return r;
  }

  /**
   * The region `name` as the workspace holds it, not zeroed: for a region that is written whole before
   * anything reads it (a staged input, an output every element of which the kernel writes).
   */
  filled(name: string): Region {
    const r = this.regions.get(name);
    if (!r) throw new Error(`cpu: no region '${name}' was planned`);
    this.unzeroed.delete(name);
    return r;
  }

  f32(name: string): Float32Array {
    return f32Of(this.region(name));
  }

  has(name: string): boolean {
    return this.regions.has(name);
  }

  /** Input `t` as f32 in the region `name` (f16 is widened), which it fills: the region is not zeroed first. */
  stage(t: Tensor, name: string): Region {
    const r = this.filled(name);
    const view = f32Of(r);
    if (view.length !== t.data.length) throw new Error(`cpu: '${name}' holds ${view.length} elements, not ${t.data.length}`);
    if (t.dtype === 'f16') decodeF16(t.data as Uint16Array, view);
    else view.set(t.data);
    return r;
  }

  /** The job's task counters: 4 bytes of the workspace, or one lane's (LANE_BYTES) for each of `lanes` threads. */
  counter(lanes = 1): Region {
    return this.arena.take(lanes > 1 ? counterBytes(lanes) : 4);
  }

  releaseAll(): void {
    this.memory.release(this.counted);
    this.counted = 0;
    this.arena.close();
  }
}

function f32Of({ buffer, byteOffset, byteLength }: Region): Float32Array {
  return new Float32Array(buffer, byteOffset, byteLength / 4);
}

/**
 * The arrays of the caller's own that a call's outputs are copied into, made while the workers run the
 * job (runJob's `meanwhile`), their pages touched: the system maps a new array's pages on first write, 1
 * to 2 ms for 2 MB on a 2-core VM (more under load), which the calling thread would otherwise spend
 * after the job, the workers idle. Each is counted in the call's MemoryTracker from then until the call
 * returns: the workspace is counted too, the real peak.
 */
class Outputs {
  private counted = 0;
  private readonly arrays = new Map<string, Float32Array | Uint16Array>();

  constructor(private readonly memory: MemoryTracker) {}

  /** An array of `length` elements, f16 (bits) or f32, its pages touched. */
  make(name: string, length: number, f16: boolean): void {
    this.counted += this.memory.allocate(length * (f16 ? 2 : 4));
    const a = f16 ? new Uint16Array(length) : new Float32Array(length);
    for (let i = 0; i < length; i += 1024) a[i] = 0; // a write a page (4 KiB or more)
    this.arrays.set(name, a);
  }

  /** `values` (f32 in the workspace) in the array `name`, made here if `make` did not run. */
  fill(name: string, values: Float32Array, f16: boolean): Float32Array | Uint16Array {
    if (!this.arrays.has(name)) this.make(name, values.length, f16);
    const a = this.arrays.get(name)!;
    // set, not slice: V8 slices a view of shared memory element by element (3.5× slower for 2 MB)
    if (a instanceof Uint16Array) encodeF16(values, a);
    else a.set(values);
    return a;
  }

  release(): void {
    this.memory.release(this.counted);
    this.counted = 0;
  }
}

/** A kernel's output (f32 in the workspace) as a tensor of the problem's dtype, in an array of its own. */
function result(p: Problem, outputs: Outputs, name: string, values: Float32Array, shape: readonly number[]): Tensor {
  const data = outputs.fill(name, values, p.dtype === 'f16');
  return data instanceof Uint16Array ? { data, dtype: 'f16', shape: [...shape] } : { data, dtype: 'f32', shape: [...shape] };
}

/** lse (f32 in the workspace) in an array of its own. */
function lseOf(p: Problem, outputs: Outputs, values: Float32Array): Tensor {
  return { data: outputs.fill('lse', values, false) as Float32Array, dtype: 'f32', shape: [p.B, p.H, p.Nq] };
}

/** Per-thread scratch entries of a plan: `scratch0`, `scratch1`, ... */
function scratchPlan(kernel: Kernel, shape: CpuShape, threads: number): Record<string, [number, string]> {
  const bytes = scratchLength(kernel, shape) * 8;
  return Object.fromEntries(Array.from({ length: threads }, (_, i) => [`scratch${i}`, [bytes, `thread ${i}'s scratch`]]));
}

function scratchOf(bufs: Buffers, threads: number): Region[] {
  return Array.from({ length: threads }, (_, i) => bufs.region(`scratch${i}`));
}

/** The variants' arrays of a plan: the bias's values as f64 and the mask (only when the shape has variants). */
function modsPlan(p: Problem, shape: CpuShape): Record<string, [number, string]> {
  const m = p.mods;
  if (!shape.mods) return {};
  const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
  return {
    ...(m.bias && { bias: [size(m.bias.index.shape) * 8, 'the bias (f64)'] }),
    ...(m.mask && { mask: [m.mask.data.byteLength, 'the mask'] }),
  };
}

/** The variants' arrays staged into the job's buffers ('bias.f64', 'mask.u8'). */
function stageMods(p: Problem, bufs: Buffers, buffers: Record<string, Region>): void {
  if (bufs.has('bias')) {
    const r = bufs.region('bias');
    new Float64Array(r.buffer, r.byteOffset, r.byteLength / 8).set(biasValues(p.mods)!);
    buffers['bias.f64'] = r;
  }
  if (bufs.has('mask')) {
    const r = bufs.region('mask');
    new Uint8Array(r.buffer, r.byteOffset, r.byteLength).set(p.mods.mask!.data);
    buffers['mask.u8'] = r;
  }
}

/**
 * dbias: dS (B, H, Nq, Nk; f32, or f16 bits where the standard kernel stored it so) summed over the axes
 * the bias broadcasts, in f64 and a fixed order, as an f32 tensor of the bias's shape.
 *
 * With `P` (the flash kernel's, of the same elements), each row is corrected first: dS_ij − P_ij·r_i,
 * where r_i = Σ_j dS_ij. The flash backward takes D = rowsum(dO ∘ O) from the rounded out (FlashAttention's
 * D), which differs from Σ_j P_ij·dP_ij, the D that makes every row of dS sum to zero, by a few ulp of out
 * (of f16 out: about 2⁻¹¹ of |dO|·|O|). r_i is that difference, and the correction puts the consistent D in
 * its place. Summed over many rows, the difference would otherwise dominate dbias's error.
 */
function reduceDbias(p: Problem, dS: Float32Array | Uint16Array, P?: Float32Array): Tensor {
  const index = p.mods.bias!.index;
  const { B, H, Nq, Nk } = p;
  const size = index.shape.reduce((a, b) => a * b, 1);
  // The f64 sums and the f32 result: counted while both are live.
  const bytes = p.memory.allocate(size * 12);
  try {
    const sum = new Float64Array(size);
    const value = dS instanceof Float32Array ? (e: number) => dS[e] : (e: number) => f16ToNumber(dS[e]);
    const sj = index.strides[3];
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < Nq; i++) {
          const o = at(index, b, h, i, 0);
          const e = ((b * H + h) * Nq + i) * Nk;
          let r = 0;
          if (P) for (let j = 0; j < Nk; j++) r += value(e + j);
          for (let j = 0; j < Nk; j++) sum[o + j * sj] += P ? value(e + j) - P[e + j] * r : value(e + j);
        }
      }
    }
    return { data: Float32Array.from(sum), dtype: 'f32', shape: [...index.shape] };
  } finally {
    p.memory.release(bytes);
  }
}

/** forward() on the cpu: the decode kernel where it fits (cpuDecodeFits), else the tiled kernels or the standard baseline. */
export function cpuForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
  return cpuDecodeFits(p) ? cpuDecodeForward(p, q, k, v) : cpuTiledForward(p, q, k, v);
}

/** forward() on the tiled flash kernel (flash.ts) or, for algorithm 'standard', the baseline (standard.ts), inputs staged as f32. */
export async function cpuTiledForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
  const work = p.B * p.H * p.Nq * p.Nk * p.D;
  const kernel: Kernel = p.algorithm === 'flash' ? 'flashForward' : 'standardForward';
  const threads = await threadsFor(work);
  const shape = cpuShape(p, threads, p.dtype === 'f16');
  const scores = p.B * p.H * p.Nq * p.Nk * (shape.f16Scores ? 2 : 4);
  const standard = p.algorithm === 'standard';
  const bufs = new Buffers(p.memory, {
    q: [q.data.length * 4, 'q'],
    k: [k.data.length * 4, 'k'],
    v: [v.data.length * 4, 'v'],
    out: [q.data.length * 4, 'out'],
    lse: [p.B * p.H * p.Nq * 4, 'lse'],
    ...(standard ? { S: [scores, 'S (Nq×Nk per head)'], P: [scores, 'P (Nq×Nk per head)'] } : {}),
    ...modsPlan(p, shape),
    ...scratchPlan(kernel, shape, threads),
  });
  const outputs = new Outputs(p.memory);
  try {
    // out and lse are not zeroed: every kernel writes each of their elements (each task its query rows, whole).
    const buffers: Record<string, Region> = { q: bufs.stage(q, 'q'), k: bufs.stage(k, 'k'), v: bufs.stage(v, 'v'), out: bufs.filled('out'), lse: bufs.filled('lse') };
    stageMods(p, bufs, buffers);
    const t = shape.f16Scores ? '.f16' : '';
    if (standard) Object.assign(buffers, { ['S' + t]: bufs.region('S'), ['P' + t]: bufs.region('P') });
    const tasks = standard ? p.B * p.H : forwardTasks(shape);
    // The flash forward in lanes: a thread runs the query blocks of a few heads, not of every head, and
    // copies fewer heads' K and V into its kernel's memory (wasm/forward.ts keeps those of the last head).
    const lanes = !standard && threads > 1;
    const job: Job = { kernel, shape, tasks, buffers, scratch: scratchOf(bufs, threads), counter: bufs.counter(lanes ? threads : 1), ...(lanes && { lanes }) };
    await runJob(job, () => {
      outputs.make('out', q.data.length, p.dtype === 'f16');
      outputs.make('lse', p.B * p.H * p.Nq, false);
    });
    return { out: result(p, outputs, 'out', bufs.f32('out'), q.shape), lse: lseOf(p, outputs, bufs.f32('lse')) };
  } finally {
    outputs.release();
    bufs.releaseAll();
  }
}

/**
 * One call of the decode kernel: q (any layout) against keys addressed through pages (DecodeShape's
 * `kvPage`, `kvRow`, `kvHead`, `pageSize`, `maxPages`), `table` (B × maxPages) and `lengths` (B).
 */
export interface DecodeCall {
  B: number;
  H: number;
  Hkv: number;
  Nq: number;
  D: number;
  causal: boolean;
  scale: number;
  q: Tensor & { dtype: 'f32' | 'f16' };
  qStrides: { batch: number; row: number; head: number };
  k: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
  keys: Pick<DecodeShape, 'kvPage' | 'kvRow' | 'kvHead' | 'pageSize' | 'maxPages'>;
  table: Int32Array;
  lengths: Int32Array;
  memory: MemoryTracker;
  /** The variants beyond causal (decodeModifiers), if any. */
  mods?: DecodeModifiers;
}

function onSharedMemory(a: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer === 'function' && a.buffer instanceof SharedArrayBuffer;
}

function regionOf(a: ArrayBufferView): Region {
  return { buffer: a.buffer, byteOffset: a.byteOffset, byteLength: a.byteLength };
}

/**
 * Attention of a decode call (decode.ts): out in q's layout and dtype, lse (B, H, Nq) f32. Inline, every
 * input is read where it is; on the workers, so are those on shared memory (the KV cache's pools), and
 * the others (a caller's typed arrays) are copied into the workspace first, in their own dtype.
 */
export async function cpuDecode(c: DecodeCall): Promise<{ out: Tensor; lse: Tensor }> {
  const { B, H, Hkv, Nq, D } = c;
  const f16 = c.q.dtype === 'f16';
  let longest = 0;
  let keys = 0;
  for (const len of c.lengths) {
    longest = Math.max(longest, len);
    keys += len;
  }
  const threads = await threadsFor(keys * H * Nq * D);
  const Bc = decodeTile(D);
  const { R, rowChunks } = decodeRows((H / Hkv) * Nq);
  const { splits, chunk } = decodeSplits(B * Hkv * rowChunks, keysSeen(c.mods, Nq, longest), Bc, threads);
  const s: DecodeShape = {
    B, H, Hkv, Nq, D, causal: c.causal, scale: c.scale,
    qBatch: c.qStrides.batch, qRow: c.qStrides.row, qHead: c.qStrides.head,
    ...c.keys, f16, Bc, R, rowChunks, splits, chunk, ...(c.mods && { mods: c.mods }),
    ...(cpuKernels() === 'js' && { js: true }),
  };
  const rows = B * H * Nq;
  const inputs = { q: c.q.data as Float32Array | Uint16Array, k: c.k, v: c.v, table: c.table, lengths: c.lengths };
  const copied = new Set(threads > 1 ? Object.keys(inputs).filter((name) => !onSharedMemory(inputs[name as keyof typeof inputs])) : []);
  const scratchBytes = decodeScratch(s) * 8;
  const bufs = new Buffers(c.memory, {
    ...Object.fromEntries([...copied].map((name) => [name, [inputs[name as keyof typeof inputs].byteLength, `a shared copy of ${name}`]])),
    opart: [rows * splits * D * 8, "the splits' partial O"],
    lpart: [rows * splits * 8, "the splits' partial log-sum-exp"],
    ...Object.fromEntries(Array.from({ length: threads }, (_, i) => [`scratch${i}`, [scratchBytes, `thread ${i}'s scratch`]])),
  });
  try {
    const region = (name: keyof typeof inputs): Region => {
      const a = inputs[name];
      if (!copied.has(name)) return regionOf(a);
      const r = bufs.filled(name);
      new (a.constructor as Uint16ArrayConstructor)(r.buffer, r.byteOffset, a.length).set(a as Uint16Array);
      return r;
    };
    const t = f16 ? '.f16' : '';
    const buffers: Record<string, Region> = {
      ['q' + t]: region('q'),
      ['k' + t]: region('k'),
      ['v' + t]: region('v'),
      'table.i32': region('table'),
      'lengths.i32': region('lengths'),
      'opart.f64': bufs.region('opart'),
      'lpart.f64': bufs.region('lpart'),
    };
    await runJob({ kernel: 'decode', shape: s, tasks: decodeTasks(s), buffers, scratch: scratchOf(bufs, threads), counter: bufs.counter() } satisfies Job);
    // The results, in arrays of the caller's own: counted while the partials they come from are.
    const counted = c.memory.allocate(c.q.data.length * (f16 ? 2 : 4) + rows * 4);
    try {
      const out = f16 ? new Uint16Array(c.q.data.length) : new Float32Array(c.q.data.length);
      const lse = new Float32Array(rows);
      const f64 = (r: Region) => new Float64Array(r.buffer, r.byteOffset, r.byteLength / 8);
      mergeDecode(s, f64(bufs.region('opart')), f64(bufs.region('lpart')), out, lse);
      return { out: { data: out, dtype: c.q.dtype, shape: [...c.q.shape] }, lse: { data: lse, dtype: 'f32', shape: [B, H, Nq] } };
    } finally {
      c.memory.release(counted);
    }
  } finally {
    bufs.releaseAll();
  }
}

/** Whether a forward call runs the decode kernel: flash with few queries (DECODE_MAX_QUERIES), variants it runs (decodeRuns). */
export function cpuDecodeFits(p: Problem): boolean {
  return p.algorithm === 'flash' && (p.dtype === 'f32' || p.dtype === 'f16') && p.Nq <= DECODE_MAX_QUERIES[p.dtype] && decodeRuns(p.mods);
}

/** forward() on the decode kernel: one page per batch row (the table the identity), every row Nk keys. */
export function cpuDecodeForward(p: Problem, q: Tensor, k: Tensor, v: Tensor): Promise<{ out: Tensor; lse: Tensor }> {
  const { q: sq, kv } = problemStrides(p);
  return cpuDecode({
    B: p.B,
    H: p.H,
    Hkv: p.Hkv,
    Nq: p.Nq,
    D: p.D,
    causal: p.causal,
    scale: p.scale,
    q: q as Tensor & { dtype: 'f32' | 'f16' },
    qStrides: sq,
    k: k.data as Float32Array | Uint16Array,
    v: v.data as Float32Array | Uint16Array,
    keys: { kvPage: kv.batch, kvRow: kv.row, kvHead: kv.head, pageSize: p.Nk, maxPages: 1 },
    table: Int32Array.from({ length: p.B }, (_, b) => b),
    lengths: new Int32Array(p.B).fill(p.Nk),
    memory: p.memory,
    mods: decodeModifiers(p.mods, p.causal),
  });
}

export async function cpuBackward(
  p: Problem,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
): Promise<{ dq: Tensor; dk: Tensor; dv: Tensor; dbias?: Tensor }> {
  const work = p.B * p.H * p.Nq * p.Nk * p.D;
  const flash = p.algorithm === 'flash';
  const biasGrad = p.mods.bias?.grad === true;
  const kernel: Kernel = flash ? 'flashBackward' : 'standardBackward';
  const threads = await threadsFor(work);
  const shape = cpuShape(p, threads, p.dtype === 'f16');
  const scores = p.B * p.H * p.Nq * p.Nk * (shape.f16Scores ? 2 : 4);
  const what = (m: string) => `${m} (Nq×Nk per head)`;
  const bufs = new Buffers(p.memory, {
    lse: [lse.data.length * 4, 'lse'],
    q: [q.data.length * 4, 'q'],
    k: [k.data.length * 4, 'k'],
    v: [v.data.length * 4, 'v'],
    out: [out.data.length * 4, 'out'],
    dout: [dout.data.length * 4, 'dout'],
    dq: [q.data.length * 4, 'dq'],
    dk: [k.data.length * 4, 'dk'],
    dv: [v.data.length * 4, 'dv'],
    ...(flash
      ? { dqPartial: [shape.chunks * p.B * p.H * p.Nq * p.D * 8, 'the dQ partial sums'] }
      : { P: [scores, what('P')], dP: [scores, what('dP')], dS: [scores, what('dS')] }),
    ...(flash && biasGrad && { dS: [p.B * p.H * p.Nq * p.Nk * 4, what('dS, for dbias')], dbiasP: [p.B * p.H * p.Nq * p.Nk * 4, what('P, for dbias')] }),
    ...modsPlan(p, shape),
    ...scratchPlan(kernel, shape, threads),
  });
  const outputs = new Outputs(p.memory);
  try {
    f32Of(bufs.filled('lse')).set(lse.data);
    const buffers: Record<string, Region> = {
      q: bufs.stage(q, 'q'),
      k: bufs.stage(k, 'k'),
      v: bufs.stage(v, 'v'),
      out: bufs.stage(out, 'out'),
      dout: bufs.stage(dout, 'dout'),
      lse: bufs.region('lse'),
      dq: bufs.region('dq'),
      dk: bufs.region('dk'),
      dv: bufs.region('dv'),
    };
    stageMods(p, bufs, buffers);
    const t = shape.f16Scores ? '.f16' : '';
    if (flash) buffers['dqPartial.f64'] = bufs.region('dqPartial');
    else Object.assign(buffers, { ['P' + t]: bufs.region('P'), ['dP' + t]: bufs.region('dP'), ['dS' + t]: bufs.region('dS') });
    if (flash && biasGrad) {
      // The flash kernel writes dS only where it visits a tile: the rest must read 0.
      bufs.f32('dS').fill(0);
      bufs.f32('dbiasP').fill(0);
      buffers.dS = bufs.region('dS');
      buffers.dbiasP = bufs.region('dbiasP');
    }
    const tasks = flash ? backwardTasks(shape) : p.B * p.Hkv;
    const f16 = p.dtype === 'f16';
    await runJob({ kernel, shape, tasks, buffers, scratch: scratchOf(bufs, threads), counter: bufs.counter() } satisfies Job, () => {
      outputs.make('dq', q.data.length, f16);
      outputs.make('dk', k.data.length, f16);
      outputs.make('dv', v.data.length, f16);
    });
    if (flash) {
      const r = bufs.region('dqPartial');
      reduceDq(shape, new Float64Array(r.buffer, r.byteOffset, r.byteLength / 8), bufs.f32('dq'));
    }
    const grads = {
      dq: result(p, outputs, 'dq', bufs.f32('dq'), q.shape),
      dk: result(p, outputs, 'dk', bufs.f32('dk'), k.shape),
      dv: result(p, outputs, 'dv', bufs.f32('dv'), v.shape),
    };
    if (!biasGrad) return grads;
    const r = bufs.region('dS');
    const dS = shape.f16Scores && !flash ? new Uint16Array(r.buffer, r.byteOffset, r.byteLength / 2) : bufs.f32('dS');
    return { ...grads, dbias: reduceDbias(p, dS, flash ? bufs.f32('dbiasP') : undefined) };
  } finally {
    outputs.release();
    bufs.releaseAll();
  }
}
