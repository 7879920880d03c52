/**
 * The host side of the modifiers on webgpu (kernels/modifiers.ts is the WGSL): the flags a kernel is
 * compiled with, and bind group 1 of a call: the Mods uniform, ALiBi's slopes, the bias, the mask and the
 * block mask as bits, the kernel's tile table (computed for its Br × Bc tiles from src/modifiers.ts's
 * tileClass), and the dS buffer from which dbias is summed.
 */
import { EMPTY, PARTIAL, at, hasModifiers, keeps, tileClass, type Broadcast, type Modifiers } from '../modifiers.js';
import type { Problem } from '../problem.js';
import { isGpuBuffer } from '../tensor.js';
import { decodeF16 } from '../f16.js';
import type { GpuBuffers } from './buffers.js';
import { MODS_BYTES, modFlags } from './kernels/modifiers.js';

/**
 * The `mods` flags of a call's kernels ('' when the call has no variant beyond causal; kernels then take
 * no `mods` at all). `role` decides whether the bias gradient is written.
 */
export function modsOf(p: Problem, role: 'forward' | 'backward' = 'forward'): string {
  const m = p.mods;
  if (!hasModifiers(m, p.causal)) return '';
  let f = '';
  const onlyCausal = m.band === undefined || (p.causal && m.band.left < 0 && m.band.right === 0);
  if (!onlyCausal) f += 'w';
  if (m.alibi) f += 'a';
  if (m.softcap !== undefined) f += 's';
  if (m.bias) f += m.bias.dtype === 'f16' && isGpuBuffer(m.bias.data) ? 'h' : 'b';
  if (m.bias?.grad && role === 'backward') f += 'g';
  if (m.mask) f += 'm';
  if (m.blockMask) f += 't';
  if (m.dropout) f += 'd';
  return f;
}

/** `{ mods }` for a kernel's params, or {} (so that the plain kernels' params and WGSL stay as they were). */
export function modsParam(p: Problem, role: 'forward' | 'backward' = 'forward'): { mods?: string } {
  const mods = modsOf(p, role);
  return mods ? { mods } : {};
}

/** One bit per element, 32 to a word. */
function bits(data: Uint8Array): Uint32Array {
  const words = new Uint32Array(Math.max(1, Math.ceil(data.length / 32)));
  for (let e = 0; e < data.length; e++) if (data[e]) words[e >>> 5] |= 1 << (e & 31);
  return words;
}

function stridesOf(x: Broadcast | undefined): number[] {
  return x ? [...x.strides] : [0, 0, 0, 0];
}

/**
 * A host array of the variants (a block mask's or a mask's bytes) as calls after the first see it: what
 * was made from it, kept while the caller keeps the array and its contents. Every call compares the array
 * with a copy of the contents these were made from (once per call, 4 bytes at a time: a caller may change
 * its array in place between calls; then all of it is made again, the first call after the change paying as
 * a first call does). Kept: tile tables (host), and per device the bits and tables uploaded (from the
 * second call with the same contents on, so that an array used once keeps no device memory).
 */
interface Kept extends Reused {
  bytes: Uint8Array;
  tables: Map<string, Table>;
}

/** Something made for calls that repeat: how many calls found it (1: the call that made it), and its buffers per device. */
interface Reused {
  calls: number;
  buffers: WeakMap<GPUDevice, Map<string, GPUBuffer>>;
}

/** A kernel's tile table (see tileTable). */
interface Table extends Reused {
  words: Uint32Array;
  strides: number[];
  /** The mask's Kept it was made with, if the call had a mask. */
  mask?: Kept;
}

const KEPT = new WeakMap<Uint8Array, Kept>();

/** Per call (its Modifiers object), the Kept of each array already compared in it. */
const CHECKED = new WeakMap<Modifiers, Map<Uint8Array, Kept>>();

/** The Kept of `data` for the call of `m`: compared once per call, made anew where the contents changed. */
function kept(m: Modifiers, data: Uint8Array): Kept {
  let checked = CHECKED.get(m);
  if (!checked) CHECKED.set(m, (checked = new Map()));
  const known = checked.get(data);
  if (known) return known;
  let k = KEPT.get(data);
  if (k && sameBytes(k.bytes, data)) k.calls++;
  else KEPT.set(data, (k = { bytes: data.slice(), calls: 1, buffers: new WeakMap(), tables: new Map() }));
  checked.set(data, k);
  return k;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  const n = b.byteOffset % 4 === 0 ? a.length >>> 2 : 0; // `a` is our copy, aligned
  const [wa, wb] = [new Uint32Array(a.buffer, a.byteOffset, n), new Uint32Array(b.buffer, b.byteOffset, n)];
  for (let e = 0; e < n; e++) if (wa[e] !== wb[e]) return false;
  for (let e = 4 * n; e < a.length; e++) if (a[e] !== b[e]) return false;
  return true;
}

/**
 * A storage buffer of `what`, made by `made`: per call for what a call finds for the first time, else
 * kept on the device with `r` (made once per device), and counted in the call's buffers while it runs.
 */
function reusedUpload(buffers: GpuBuffers, r: Reused, key: string, made: () => Uint32Array, what: string, argument: string): GPUBuffer {
  if (r.calls < 2) return buffers.upload(made(), what, argument);
  let onDevice = r.buffers.get(buffers.device);
  if (!onDevice) r.buffers.set(buffers.device, (onDevice = new Map()));
  let buffer = onDevice.get(key);
  if (!buffer) {
    buffer = buffers.handOver(buffers.upload(made(), what, argument));
    onDevice.set(key, buffer);
  }
  return buffers.use(buffer);
}

/**
 * The tile table of a kernel with Br × Bc tiles: 2 bits per (b, h, query tile, key tile), over the axes
 * of B and H the block mask (and mask) do not broadcast; classes as src/modifiers.ts's tileClass (a
 * mask's tile with no kept element is EMPTY too). Each tile's count of kept blocks comes from prefix sums
 * of its (b, h) plane of the block mask, so a table costs O(tiles + blocks), not a scan per tile (with a
 * mask, each partial tile is scanned for a kept element); a call with the same block mask and mask (the
 * same arrays and contents), sizes and tiles as an earlier call (a training loop) takes the table it made then.
 */
export function tileTable(p: Problem, Br: number, Bc: number): Table {
  const m = p.mods;
  const bm = m.blockMask!;
  const k = kept(m, bm.data);
  // A table made with a mask holds only for the same mask contents: those of the mask's Kept then.
  const mask = m.mask ? kept(m, m.mask.data) : undefined;
  const key = JSON.stringify([Br, Bc, p.B, p.H, p.Nq, p.Nk, m.band ?? null, bm.rows, bm.cols, bm.index.strides, m.mask?.index.strides ?? null]);
  const cached = k.tables.get(key);
  if (cached && cached.mask === mask) {
    cached.calls++;
    return cached;
  }
  const table: Table = { ...makeTileTable(p, Br, Bc), mask, calls: 1, buffers: new WeakMap() };
  k.tables.set(key, table);
  return table;
}

function makeTileTable(p: Problem, Br: number, Bc: number): { words: Uint32Array; strides: number[] } {
  const m = p.mods;
  const bm = m.blockMask!;
  const { Nq, Nk } = p;
  const perB = bm.index.strides[0] !== 0 || (m.mask !== undefined && m.mask.index.strides[0] !== 0);
  const perH = bm.index.strides[1] !== 0 || (m.mask !== undefined && m.mask.index.strides[1] !== 0);
  const [nb, nh, Tr, Tc] = [perB ? p.B : 1, perH ? p.H : 1, Math.ceil(Nq / Br), Math.ceil(Nk / Bc)];
  const strides = [perB ? nh * Tr * Tc : 0, perH ? Tr * Tc : 0, Tc, 1];
  const words = new Uint32Array(Math.max(1, Math.ceil((nb * nh * Tr * Tc) / 16)));
  const band: Modifiers = m.band ? { band: m.band } : {};
  const [Tq, Tk] = [bm.index.shape[2], bm.index.shape[3]];
  const sums = new Int32Array((Tq + 1) * (Tk + 1)); // sums[(i+1)(Tk+1) + j+1]: kept blocks in [0, i] × [0, j]
  for (let b = 0; b < nb; b++) {
    for (let h = 0; h < nh; h++) {
      for (let i = 0; i < Tq; i++) {
        for (let j = 0; j < Tk; j++) {
          const kept = bm.data[at(bm.index, b, h, i, j)] ? 1 : 0;
          sums[(i + 1) * (Tk + 1) + j + 1] = kept + sums[i * (Tk + 1) + j + 1] + sums[(i + 1) * (Tk + 1) + j] - sums[i * (Tk + 1) + j];
        }
      }
      for (let i = 0; i < Tr; i++) {
        const [r0, r1] = [i * Br, Math.min(Nq, (i + 1) * Br)];
        const [bi0, bi1] = [Math.floor(r0 / bm.rows), Math.floor((r1 - 1) / bm.rows) + 1];
        for (let j = 0; j < Tc; j++) {
          const [c0, c1] = [j * Bc, Math.min(Nk, (j + 1) * Bc)];
          let c = tileClass(band, b, h, r0, r1, c0, c1, Nq, Nk);
          if (c !== EMPTY) {
            const [bj0, bj1] = [Math.floor(c0 / bm.cols), Math.floor((c1 - 1) / bm.cols) + 1];
            const count = sums[bi1 * (Tk + 1) + bj1] - sums[bi0 * (Tk + 1) + bj1] - sums[bi1 * (Tk + 1) + bj0] + sums[bi0 * (Tk + 1) + bj0];
            if (count === 0) c = EMPTY;
            else if (count < (bi1 - bi0) * (bj1 - bj0) || m.mask) c = PARTIAL;
          }
          if (c === PARTIAL && m.mask) c = anyKept(m, b, h, r0, r1, c0, c1, Nq, Nk) ? PARTIAL : EMPTY;
          const e = b * strides[0] + h * strides[1] + i * Tc + j;
          words[e >>> 4] |= c << ((e & 15) * 2);
        }
      }
    }
  }
  return { words, strides };
}

function anyKept(m: Modifiers, b: number, h: number, r0: number, r1: number, c0: number, c1: number, Nq: number, Nk: number): boolean {
  for (let i = r0; i < r1; i++) for (let j = c0; j < c1; j++) if (keeps(m, b, h, i, j, Nq, Nk)) return true;
  return false;
}

/** The Mods uniform's bytes (kernels/modifiers.ts's MODS_WGSL), with the tile table's tiles and strides. */
function modsBytes(p: Problem, tiles?: { Br: number; Bc: number; strides: number[] }): ArrayBuffer {
  const m = p.mods;
  const buf = new ArrayBuffer(MODS_BYTES);
  const i32 = new Int32Array(buf);
  const u32 = new Uint32Array(buf);
  const f32 = new Float32Array(buf);
  i32[0] = m.band?.left ?? -1;
  i32[1] = m.band?.right ?? -1;
  f32[2] = m.softcap ?? 1;
  f32[3] = m.dropout?.scale ?? 1;
  u32[4] = m.dropout?.seed ?? 0;
  u32[5] = m.dropout?.threshold ?? 0;
  u32[6] = tiles?.Br ?? 1;
  u32[7] = tiles?.Bc ?? 1;
  u32.set(stridesOf(m.bias?.index), 8);
  u32.set(stridesOf(m.mask?.index), 12);
  u32.set(tiles?.strides ?? [0, 0, 0, 0], 16);
  u32.set(stridesOf(m.blockMask?.index), 20);
  u32[24] = m.blockMask?.rows ?? 1;
  u32[25] = m.blockMask?.cols ?? 1;
  u32[26] = p.H;
  u32[27] = m.dropout?.headOffset ?? 0;
  return buf;
}

/**
 * Bind group 1's buffers for a kernel compiled with `mods` (binding → buffer), made in the call's
 * GpuBuffers. `tiles`: the kernel's Br × Bc when it has the block-mask flag and skips tiles (without:
 * no tile table). `dbias`: the (B, H, Nq, Nk) f32 dS buffer for a backward key/value kernel with the
 * gradient flag.
 */
export function modBuffers(
  p: Problem,
  mods: string,
  buffers: GpuBuffers,
  tiles?: { Br: number; Bc: number },
  dbias?: GPUBuffer,
): Map<number, GPUBuffer> {
  const f = modFlags(mods);
  const m = p.mods;
  const table = f.blocks && tiles ? tileTable(p, tiles.Br, tiles.Bc) : undefined;
  const out = new Map<number, GPUBuffer>();
  // A pipeline's automatic layout holds only the bindings its WGSL reads: ALiBi alone reads no field of
  // the uniform, and a kernel without `tiles` (standard attention) reads no tile table.
  if (f.window || f.softcap || f.bias || f.mask || f.blocks || f.dropout) {
    out.set(0, buffers.uniform(modsBytes(p, table && { ...tiles!, strides: table.strides }), 'modifiers'));
  }
  if (f.alibi) out.set(1, buffers.upload(m.alibi!.slopes, 'ALiBi slopes', 'options.alibiSlopes'));
  if (f.bias) {
    const b = m.bias!;
    if (isGpuBuffer(b.data)) out.set(2, b.data);
    else if (b.dtype === 'f32') out.set(2, buffers.upload(b.data as Float32Array, 'bias', 'options.bias'));
    else out.set(2, buffers.upload(decodeF16(b.data as Uint16Array), 'bias', 'options.bias')); // a host f16 bias is read as f32
  }
  if (f.mask) out.set(3, reusedUpload(buffers, kept(m, m.mask!.data), 'bits', () => bits(m.mask!.data), 'mask bits', 'options.mask'));
  if (f.blocks) {
    if (table) out.set(4, reusedUpload(buffers, table, 'tiles', () => table.words, 'tile table', 'options.blockMask'));
    out.set(5, reusedUpload(buffers, kept(m, m.blockMask!.data), 'bits', () => bits(m.blockMask!.data), 'block mask bits', 'options.blockMask'));
  }
  if (f.biasGrad && dbias) out.set(6, dbias);
  return out;
}

/** A bind group 1 for `pipe` from modBuffers' map. */
export function modBindGroup(device: GPUDevice, pipe: GPUComputePipeline, group: Map<number, GPUBuffer>): GPUBindGroup {
  return device.createBindGroup({
    layout: pipe.getBindGroupLayout(1),
    entries: [...group].map(([binding, buffer]) => ({ binding, resource: { buffer } })),
  });
}
