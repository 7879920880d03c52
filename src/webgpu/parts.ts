/**
 * One sequence's part of a bias in GPUBuffers, for packed sequences (src/varlen.ts): the bias is
 * broadcast over (S, H, max nq, max nk), and sequence s runs as a problem of its own with the dense
 * (1, H or 1, nq or 1, nk or 1) block of it that its rows and keys index. `gather` copies that block out
 * of the packed bias before the sequence runs; `add` adds the sequence's dbias (the block's shape, f32)
 * into the packed dbias after it (a bias broadcast over S sums every sequence's gradient: the sequences run
 * one after the other, so the sums are in a fixed order).
 * One invocation per element of the block (gather in f16: per pair of elements, one u32 word of two
 * halves, so that no shader-f16 is needed); element e is row r = e / cols (head r / nq, row r % nq),
 * column e % cols, at base + head·headStride + row·rowStride + column in the packed bias.
 */
import type { Call } from './call.js';
import { dispatch, pipeline } from './pipelines.js';

/** Sequence s's block of a broadcast tensor: its rows of `cols` elements in the packed tensor, in dense order. */
export interface Part {
  /** Offset of its first element: s times the packed tensor's sequence stride. */
  base: number;
  headStride: number;
  rowStride: number;
  /** Rows per head (nq, or 1 where the bias broadcasts over rows). */
  nq: number;
  /** Elements per row (nk, or 1). */
  cols: number;
  /** Elements of the block. */
  elements: number;
}

/** Offset in the packed tensor of row r of a part (rows in the dense order: head, then row). */
export function partRow(part: Part, r: number): number {
  return part.base + Math.floor(r / part.nq) * part.headStride + (r % part.nq) * part.rowStride;
}

type Mode = 'gather-f32' | 'gather-f16' | 'add';
const WG = 64;

function partWGSL({ mode }: { mode: Mode }): string {
  const [src, dst] = mode === 'gather-f16' ? ['u32', 'u32'] : ['f32', 'f32'];
  const body = {
    'gather-f32': 'dst[e] = src[at(e)];',
    'gather-f16': `let a = 2u * e; // two halves per word; the odd element past the end is 0
  let hi = select(0.0, half(at(a + 1u)), a + 1u < u.elements);
  dst[e] = pack2x16float(vec2<f32>(half(at(a)), hi));`,
    add: 'dst[at(e)] += src[e];',
  }[mode];
  return `struct U {
  base: u32,
  headStride: u32,
  rowStride: u32,
  nq: u32,
  cols: u32,
  elements: u32,
  count: u32, // invocations: elements (f16 gather: words)
  rowGroups: u32, // workgroups per row of the dispatch
}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> src: array<${src}>;
@group(0) @binding(2) var<storage, read_write> dst: array<${dst}>;

fn at(e: u32) -> u32 {
  let r = e / u.cols;
  return u.base + (r / u.nq) * u.headStride + (r % u.nq) * u.rowStride + e % u.cols;
}
${mode === 'gather-f16' ? '\nfn half(x: u32) -> f32 {\n  return unpack2x16float(src[x / 2u])[x % 2u];\n}\n' : ''}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * u.rowGroups + wid.x) * ${WG}u + lid;
  if (e >= u.count) { return; }
  ${body}
}`;
}

async function run(call: Call, enc: GPUCommandEncoder, mode: Mode, part: Part, src: GPUBuffer, dst: GPUBuffer): Promise<void> {
  const count = mode === 'gather-f16' ? Math.ceil(part.elements / 2) : part.elements;
  const groups = Math.ceil(count / WG);
  const rowGroups = Math.min(groups, call.gpu.limits.maxComputeWorkgroupsPerDimension);
  const words = Uint32Array.of(part.base, part.headStride, part.rowStride, part.nq, part.cols, part.elements, count, rowGroups);
  const uniform = call.buffers.uniform(words.buffer, 'sequence part sizes');
  const pipe = await pipeline(call.gpu.device, 'sequencePart', { mode, WG }, partWGSL);
  dispatch(enc, call.gpu.device, pipe, [uniform, src, dst], [rowGroups, Math.ceil(groups / rowGroups)]);
}

/** The part of `bias` (f32 or f16) as a dense buffer of the call's, in the bias's dtype. */
export async function gatherPart(call: Call, enc: GPUCommandEncoder, bias: GPUBuffer, dtype: 'f32' | 'f16', part: Part, what: string): Promise<GPUBuffer> {
  const out = call.buffers.create(part.elements * (dtype === 'f16' ? 2 : 4), what, 'options.bias');
  await run(call, enc, dtype === 'f16' ? 'gather-f16' : 'gather-f32', part, bias, out);
  return out;
}

/** dbias (f32) += a sequence's dbias, the part's dense block. */
export async function addPart(call: Call, enc: GPUCommandEncoder, dbias: GPUBuffer, part: Part, block: GPUBuffer): Promise<void> {
  await run(call, enc, 'add', part, block, dbias);
}
