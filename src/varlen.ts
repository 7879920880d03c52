/**
 * Packed variable-length sequences (options.cuSeqlensQ / cuSeqlensK, the semantics of FlashAttention's
 * flash_attn_varlen_func). q is (1, totalQ, H, D) in 'BNHD' or (1, H, totalQ, D) in 'BHND', k and v
 * likewise with totalK rows and Hkv heads; sequence s owns query rows cuSeqlensQ[s] .. cuSeqlensQ[s+1]−1
 * and key rows cuSeqlensK[s] .. cuSeqlensK[s+1]−1, its queries see only its keys, and causal is per
 * sequence, bottom-right aligned.
 * The variants hold per sequence as they do per batch row, as if the sequences were a batch padded to the
 * longest one: window and ALiBi distances are the sequence's own (bottom-right aligned); alibiSlopes are H
 * or S·H (sequence s's H at s·H); bias, mask and block mask are broadcast over (S, H, max nq, max nk) (the
 * block mask over blocks of that), indexed by (sequence, head, row within the sequence, key within the
 * sequence), so sequence s reads the (1, H, nq, nk) corner of batch row s and nothing past its own lengths;
 * dbias is summed in the same shape (0 where no sequence reads); dropout's hash takes sequence s as batch
 * row s (Modifiers' dropout.headOffset), so sequences draw different masks.
 *
 * How it runs today: one sub-problem per sequence on the backend's own forward or backward, above the
 * backends. A sequence's rows are one run of elements in 'BNHD' and one run per head in 'BHND' (lse,
 * (1, H, totalQ), is 'BHND' with D = 1), so its slices are cut out of the packed inputs (typed arrays on
 * the host, a view where the run is one; GPUBuffers on the device with copyBufferToBuffer), the backend
 * runs them as a batch-1 problem of nq queries and nk keys, and its results are copied into the packed
 * outputs. Rows no sub-problem writes hold what a row that sees no key holds: 0 in out, dq, dk and dv,
 * −∞ in lse. Future work: a fused kernel (one dispatch over all sequences, each workgroup finding its
 * sequence and rows in cuSeqlens, as FlashAttention's varlen kernels do) would be faster: no copies, one
 * submission instead of three per sequence (each waited for), and short sequences filling the device
 * together instead of one after the other.
 */
import { NotSupportedError, ValueError } from './errors.js';
import { broadcastIndex, type Broadcast, type Modifiers } from './modifiers.js';
import type { Problem } from './problem.js';
import { BYTES_PER_ELEMENT, isGpuBuffer, type AnyTensor, type DType, type GpuTensor, type Tensor, type TensorData } from './tensor.js';
import { Call, gpuFor } from './webgpu/index.js';
import { addPart, gatherPart, partRow, type Part } from './webgpu/parts.js';

/** A backend's forward on one problem, as api.ts runs it. */
export type RunForward = (p: Problem, q: AnyTensor, k: AnyTensor, v: AnyTensor) => Promise<{ out: AnyTensor; lse: AnyTensor }>;

/** A backend's backward on one problem, as api.ts runs it. */
export type RunBackward = (
  p: Problem,
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
) => Promise<{ dq: AnyTensor; dk: AnyTensor; dv: AnyTensor; dbias?: AnyTensor }>;

/** Whose rows a packed tensor holds: the queries' (q, out, dout, dq), the keys' (k, v, dk, dv), or lse's (1, H, totalQ). */
type Kind = 'q' | 'k' | 'lse';

/** A packed tensor of a call: its rows, its dtype, its name in errors. */
interface Packed {
  kind: Kind;
  dtype: DType;
  name: string;
}

/** One sequence: query rows [q0, q1), key rows [k0, k1). */
interface Sequence {
  s: number;
  q0: number;
  q1: number;
  k0: number;
  k1: number;
}

/**
 * A backend's call on one sequence's slices (in the order of the inputs), giving its results (in the order
 * of the outputs, then the sequence's dbias when the call asks for it).
 */
type Step<T extends AnyTensor> = (sub: Problem, slices: T[]) => Promise<T[]>;

/** forward() over packed sequences: out like q, lse (1, H, totalQ); `run` is the backend's forward. */
export async function varlenForward(p: Problem, q: AnyTensor, k: AnyTensor, v: AnyTensor, run: RunForward): Promise<{ out: AnyTensor; lse: AnyTensor }> {
  const inputs: Packed[] = [
    { kind: 'q', dtype: p.dtype, name: 'q' },
    { kind: 'k', dtype: p.dtype, name: 'k' },
    { kind: 'k', dtype: p.dtype, name: 'v' },
  ];
  const outputs: Packed[] = [
    { kind: 'q', dtype: p.dtype, name: 'out' },
    { kind: 'lse', dtype: lseType(p), name: 'lse' },
  ];
  const { packed: [out, lse] } = await perSequence(p, [q, k, v], inputs, outputs, async (sub, [qs, ks, vs]) => {
    const r = await run(sub, qs, ks, vs);
    return [r.out, r.lse];
  });
  return { out, lse };
}

/** backward() over packed sequences: dq, dk, dv packed like q, k, v; `run` is the backend's backward. */
export async function varlenBackward(
  p: Problem,
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
  run: RunBackward,
): Promise<{ dq: AnyTensor; dk: AnyTensor; dv: AnyTensor; dbias?: AnyTensor }> {
  const inputs: Packed[] = [
    { kind: 'q', dtype: p.dtype, name: 'dout' },
    { kind: 'q', dtype: p.dtype, name: 'q' },
    { kind: 'k', dtype: p.dtype, name: 'k' },
    { kind: 'k', dtype: p.dtype, name: 'v' },
    { kind: 'q', dtype: p.dtype, name: 'out' },
    { kind: 'lse', dtype: lseType(p), name: 'lse' },
  ];
  const outputs: Packed[] = [
    { kind: 'q', dtype: p.dtype, name: 'dq' },
    { kind: 'k', dtype: p.dtype, name: 'dk' },
    { kind: 'k', dtype: p.dtype, name: 'dv' },
  ];
  const { packed: [dq, dk, dv], dbias } = await perSequence(p, [dout, q, k, v, out, lse], inputs, outputs, async (sub, [dO, qs, ks, vs, O, L]) => {
    const r = await run(sub, dO, qs, ks, vs, O, L);
    return r.dbias ? [r.dq, r.dk, r.dv, r.dbias] : [r.dq, r.dk, r.dv];
  });
  return { dq, dk, dv, ...(dbias && { dbias }) };
}

function lseType(p: Problem): DType {
  return p.dtype === 'f64' ? 'f64' : 'f32';
}

/** The packed outputs, and dbias (the bias's shape) where the backward asks for it. */
interface Results<T extends AnyTensor> {
  packed: T[];
  dbias?: T;
}

function perSequence(p: Problem, tensors: AnyTensor[], inputs: Packed[], outputs: Packed[], step: Step<AnyTensor>): Promise<Results<AnyTensor>> {
  if (p.onGpu) {
    checkDeviceTensors(p, tensors as GpuTensor[], inputs);
    return onDevice(p, tensors as GpuTensor[], inputs, outputs, step as Step<GpuTensor>);
  }
  return onHost(p, tensors as Tensor[], inputs, outputs, step as Step<Tensor>);
}

function sequences(p: Problem): Sequence[] {
  const { q, k } = p.cuSeqlens!;
  return Array.from({ length: q.length - 1 }, (_, s) => ({ s, q0: q[s], q1: q[s + 1], k0: k[s], k1: k[s + 1] }));
}

/** A sequence without queries or without keys runs nothing: its rows keep the outputs' initial values. */
function hasWork(seq: Sequence): boolean {
  return seq.q1 > seq.q0 && seq.k1 > seq.k0;
}

/**
 * The problem of one sequence: batch 1, its own Nq and Nk, nothing packed; its variants those of batch row
 * s (dropout's heads s·H + h, ALiBi's slopes, and its parts of bias, mask and block mask: copies on the
 * host; a GPUBuffer bias keeps the packed buffer here, and onDevice puts its part in its place).
 */
function subProblem(p: Problem, seq: Sequence): Problem {
  const m = p.mods;
  const [nq, nk] = [seq.q1 - seq.q0, seq.k1 - seq.k0];
  const mods: Modifiers = { ...m };
  if (m.dropout) mods.dropout = { ...m.dropout, headOffset: seq.s * p.H };
  if (m.alibi) mods.alibi = { H: m.alibi.H, slopes: m.alibi.slopes.subarray(seq.s * p.H, (seq.s + 1) * p.H) };
  if (m.bias) {
    const { index, part } = partOf(m.bias.index, seq.s, nq, nk);
    const data = isGpuBuffer(m.bias.data) ? m.bias.data : cut(m.bias.data, part);
    mods.bias = { ...m.bias, data, index };
  }
  if (m.mask) {
    const { index, part } = partOf(m.mask.index, seq.s, nq, nk);
    mods.mask = { data: cut(m.mask.data, part), index };
  }
  if (m.blockMask) {
    const bm = m.blockMask;
    const { index, part } = partOf(bm.index, seq.s, Math.ceil(nq / bm.rows), Math.ceil(nk / bm.cols));
    mods.blockMask = { ...bm, data: cut(bm.data, part), index };
  }
  return { ...p, cuSeqlens: undefined, outputs: undefined, B: 1, Nq: nq, Nk: nk, mods };
}

/**
 * Sequence s's part of a tensor broadcast over (S, H, rows, cols) (each axis its size or 1): the dense
 * (1, H or 1, nq or 1, nk or 1) block of batch row s (row 0 where it broadcasts over S) that its first nq
 * rows and nk columns index, and where its rows lie in the packed tensor.
 */
function partOf(index: Broadcast, s: number, nq: number, nk: number): { index: Broadcast; part: Part } {
  const [, Hs, rows, cols] = index.shape;
  const shape = [1, Hs, rows === 1 ? 1 : nq, cols === 1 ? 1 : nk] as const;
  const [sb, sh, si] = index.strides;
  return { index: broadcastIndex(shape), part: { base: s * sb, headStride: sh, rowStride: si, nq: shape[2], cols: shape[3], elements: Hs * shape[2] * shape[3] } };
}

/** A part of a host array, copied out dense. */
function cut<T extends TensorData | Uint8Array>(data: T, part: Part): T {
  const out = new (data.constructor as new (n: number) => T)(part.elements);
  for (let r = 0; r < part.elements / part.cols; r++) {
    const from = partRow(part, r);
    out.set(data.subarray(from, from + part.cols) as never, r * part.cols);
  }
  return out;
}

/** dbias (host) += a sequence's dbias, its part's dense block. */
function addCut(dbias: Float32Array | Float64Array, part: Part, block: TensorData): void {
  for (let r = 0; r < part.elements / part.cols; r++) {
    const to = partRow(part, r);
    for (let c = 0; c < part.cols; c++) dbias[to + c] += block[r * part.cols + c];
  }
}

/** Bytes of a sequence's host copies of bias, mask and block mask (counted while it runs). */
function cutBytes(p: Problem, sub: Problem): number {
  const datas = [sub.mods.bias?.data, sub.mods.mask?.data, sub.mods.blockMask?.data];
  const own = [p.mods.bias?.data, p.mods.mask?.data, p.mods.blockMask?.data];
  return datas.reduce((n: number, d, i) => n + (d && d !== own[i] && !isGpuBuffer(d) ? d.byteLength : 0), 0);
}

/** The part of the bias sequence `seq` reads. */
function biasPart(p: Problem, seq: Sequence): Part {
  return partOf(p.mods.bias!.index, seq.s, seq.q1 - seq.q0, seq.k1 - seq.k0).part;
}

/** A sequence's rows [a, b) in a tensor of `kind`. */
function rowsOf(seq: Sequence, kind: Kind): [number, number] {
  return kind === 'k' ? [seq.k0, seq.k1] : [seq.q0, seq.q1];
}

/** Rows N, heads H and head dim D of a tensor of `kind` in problem p (packed or a sequence's). */
function geometry(p: Problem, kind: Kind): { N: number; H: number; D: number } {
  if (kind === 'k') return { N: p.Nk, H: p.Hkv, D: p.D };
  return { N: p.Nq, H: p.H, D: kind === 'lse' ? 1 : p.D };
}

/** The shape of a tensor of `kind` in problem p: (1, N, H, D) or (1, H, N, D) per the layout; lse (1, H, Nq). */
function shapeOf(p: Problem, kind: Kind): number[] {
  const { N, H, D } = geometry(p, kind);
  if (kind === 'lse') return [1, H, N];
  return p.layout === 'BNHD' ? [1, N, H, D] : [1, H, N, D];
}

function elementsOf(p: Problem, kind: Kind): number {
  const { N, H, D } = geometry(p, kind);
  return N * H * D;
}

/**
 * The runs of consecutive elements that hold rows [a, b) of a packed tensor of `kind`, in the order of the
 * dense (1, ·, b − a, ·) tensor they make: one run in 'BNHD', one per head in 'BHND' and in lse.
 */
function runs(p: Problem, kind: Kind, [a, b]: [number, number]): { at: number; length: number }[] {
  const { N, H, D } = geometry(p, kind);
  if (kind !== 'lse' && p.layout === 'BNHD') return [{ at: a * H * D, length: (b - a) * H * D }];
  return Array.from({ length: H }, (_, h) => ({ at: (h * N + a) * D, length: (b - a) * D }));
}

/** The argument whose size a buffer of `kind` follows (named in an OutOfMemoryError). */
function argumentOf(kind: Kind): 'q' | 'k' {
  return kind === 'k' ? 'k' : 'q';
}

function zeros(dtype: DType, n: number): TensorData {
  return dtype === 'f16' ? new Uint16Array(n) : dtype === 'f32' ? new Float32Array(n) : new Float64Array(n);
}

/**
 * Typed arrays: the packed outputs are made on the host, each sequence's slices are views (a copy where
 * its rows are one run per head; its parts of bias, mask and block mask copies), and its results are
 * copied in (its dbias added in). Counted in the call's tracker: the
 * outputs until they are the caller's, copies and each sequence's results while they live.
 */
async function onHost(p: Problem, tensors: Tensor[], inputs: Packed[], outputs: Packed[], step: Step<Tensor>): Promise<Results<Tensor>> {
  let counted = 0;
  try {
    const packed = outputs.map((o): Tensor => {
      const n = elementsOf(p, o.kind);
      counted += p.memory.allocate(n * BYTES_PER_ELEMENT[o.dtype]);
      const data = zeros(o.dtype, n);
      if (o.kind === 'lse') data.fill(-Infinity);
      return { data, dtype: o.dtype, shape: shapeOf(p, o.kind) };
    });
    const dbias = wantsBiasGrad(p, outputs) ? biasGradOutput(p) : undefined;
    if (dbias) counted += p.memory.allocate(dbias.data.byteLength);
    for (const seq of sequences(p).filter(hasWork)) {
      const sub = subProblem(p, seq);
      let live = p.memory.allocate(cutBytes(p, sub));
      try {
        const slices = tensors.map((t, i): Tensor => {
          const r = runs(p, inputs[i].kind, rowsOf(seq, inputs[i].kind));
          const shape = shapeOf(sub, inputs[i].kind);
          if (r.length === 1) return { data: t.data.subarray(r[0].at, r[0].at + r[0].length), dtype: t.dtype, shape };
          const data = zeros(t.dtype, elementsOf(sub, inputs[i].kind));
          live += p.memory.allocate(data.byteLength);
          let at = 0;
          for (const { at: from, length } of r) {
            data.set(t.data.subarray(from, from + length), at);
            at += length;
          }
          return { data, dtype: t.dtype, shape };
        });
        const results = await step(sub, slices);
        results.forEach((result, j) => {
          live += p.memory.allocate(result.data.byteLength); // the sequence's results, ours until copied
          if (j === outputs.length) return addCut(dbias!.data as Float32Array | Float64Array, biasPart(p, seq), result.data);
          let at = 0;
          for (const { at: to, length } of runs(p, outputs[j].kind, rowsOf(seq, outputs[j].kind))) {
            packed[j].data.set(result.data.subarray(at, at + length), to);
            at += length;
          }
        });
      } finally {
        p.memory.release(live);
      }
    }
    return { packed, ...(dbias && { dbias }) };
  } finally {
    p.memory.release(counted); // the outputs are the caller's from here on
  }
}

/** Does this call (a backward's: outputs dq, dk, dv) return dbias? */
function wantsBiasGrad(p: Problem, outputs: Packed[]): boolean {
  return p.mods.bias?.grad === true && outputs[0].name === 'dq';
}

/** dbias on the host, zeros of the bias's shape, f32 (f64 for f64 inputs): the packed one before sequences add in, and api.ts's where it is zero (biasGradIsZero). */
export function biasGradOutput(p: Problem): Tensor {
  const shape = [...p.mods.bias!.index.shape];
  const dtype = lseType(p);
  return { data: zeros(dtype, shape.reduce((a, b) => a * b, 1)), dtype, shape };
}

/**
 * GPUBuffer tensors must be copy sources, and in f16 a sequence's runs must be whole 4-byte words
 * (copyBufferToBuffer moves words): H·D even in 'BNHD' (Hkv·D for k and v), D even in 'BHND'. Rows
 * that are not could be moved by a small copy kernel; that is not written yet.
 */
function checkDeviceTensors(p: Problem, tensors: GpuTensor[], inputs: Packed[]): void {
  tensors.forEach((t, i) => {
    if (!(t.data.usage & 0x04)) { // GPUBufferUsage.COPY_SRC
      throw new ValueError(`${inputs[i].name}.data`, 'a GPUBuffer with COPY_SRC usage (each sequence is copied out of the packed buffer)', `usage ${t.data.usage}`);
    }
  });
  if (p.dtype !== 'f16') return;
  for (const kind of ['q', 'k'] as const) {
    const { H, D } = geometry(p, kind);
    const run = p.layout === 'BNHD' ? H * D : D;
    if (run % 2 !== 0) {
      const shape = tensors[inputs.findIndex((x) => x.name === kind)].shape;
      throw new NotSupportedError(
        `${kind}.shape`,
        'packed sequences in f16 GPUBuffers whose rows are not whole 4-byte words',
        `${p.layout === 'BNHD' ? (kind === 'q' ? 'H·D' : 'Hkv·D') : 'D'} even (a sequence is copied between buffers in 4-byte words)`,
        `[${shape.join(', ')}] (${run} f16 values per row run)`,
      );
    }
  }
}

/** Record copies between a packed buffer's runs and a dense buffer that holds them back to back. */
function copyRuns(enc: GPUCommandEncoder, direction: 'gather' | 'scatter', packed: GPUBuffer, dense: GPUBuffer, r: { at: number; length: number }[], bytes: number): void {
  let at = 0;
  for (const { at: packedAt, length } of r) {
    if (direction === 'gather') enc.copyBufferToBuffer(packed, packedAt * bytes, dense, at * bytes, length * bytes);
    else enc.copyBufferToBuffer(dense, at * bytes, packed, packedAt * bytes, length * bytes);
    at += length;
  }
}

/**
 * GPUBuffers (webgpu, zero-copy): the packed outputs are made on the device (new buffers hold zeros; lse's
 * rows of sequences without keys are written −∞) and handed to the caller. Per sequence, one submission
 * copies its slices (and its part of a bias, webgpu/parts.ts) out of the packed inputs, the backend runs on
 * them, and one submission copies its results into the packed outputs (and adds its dbias into the
 * packed dbias); each is a Call, so its buffers are counted and device errors become
 * typed ones. One sequence's slices and results are live at a time.
 */
async function onDevice(p: Problem, tensors: GpuTensor[], inputs: Packed[], outputs: Packed[], step: Step<GpuTensor>): Promise<Results<GpuTensor>> {
  const gpu = await gpuFor(p);
  const all = sequences(p);
  const call = new Call(p, gpu);
  const bias = p.mods.bias;
  try {
    const packed = outputs.map((o) => call.output(elementsOf(p, o.kind), o.name, argumentOf(o.kind), o.dtype));
    const biasShape = bias ? [...bias.index.shape] : [];
    const dbias = wantsBiasGrad(p, outputs) ? call.output(biasShape.reduce((a, b) => a * b, 1), 'dbias', 'q', 'f32') : undefined;
    await call.submit(async () => {
      outputs.forEach((o, j) => {
        if (o.kind !== 'lse') return;
        for (const seq of all.filter((x) => x.q1 > x.q0 && x.k1 === x.k0)) {
          for (const r of runs(p, o.kind, rowsOf(seq, o.kind))) gpu.device.queue.writeBuffer(packed[j], r.at * 4, new Float32Array(r.length).fill(-Infinity));
        }
      });
    });
    for (const seq of all.filter(hasWork)) {
      const plain = subProblem(p, seq);
      const cut = new Call(plain, gpu);
      let collect: Call | undefined;
      try {
        const live = p.memory.allocate(cutBytes(p, plain));
        let sub = plain;
        try {
          const slices = tensors.map((t, i) => {
            const { kind, name } = inputs[i];
            const data = cut.buffers.create(elementsOf(sub, kind) * BYTES_PER_ELEMENT[t.dtype], `${name} of sequence ${seq.s}`, argumentOf(kind));
            return { data, dtype: t.dtype, shape: shapeOf(sub, kind) };
          });
          await cut.submit(async (enc) => {
            tensors.forEach((t, i) => copyRuns(enc, 'gather', t.data, slices[i].data, runs(p, inputs[i].kind, rowsOf(seq, inputs[i].kind)), BYTES_PER_ELEMENT[t.dtype]));
            if (!bias) return;
            const part = await gatherPart(cut, enc, bias.data as GPUBuffer, bias.dtype as 'f32' | 'f16', biasPart(p, seq), `bias of sequence ${seq.s}`);
            sub = { ...plain, mods: { ...plain.mods, bias: { ...plain.mods.bias!, data: part } } };
          });
          const results = await step(sub, slices);
          collect = new Call(sub, gpu);
          for (const r of results) collect.buffers.adopt(r.data);
          await collect.submit(async (enc) => {
            for (const [j, r] of results.entries()) {
              if (j === outputs.length) await addPart(collect!, enc, dbias!, biasPart(p, seq), r.data);
              else copyRuns(enc, 'scatter', packed[j], r.data, runs(p, outputs[j].kind, rowsOf(seq, outputs[j].kind)), BYTES_PER_ELEMENT[r.dtype]);
            }
          });
        } finally {
          p.memory.release(live);
        }
      } finally {
        collect?.dispose();
        cut.dispose();
      }
    }
    // forward()'s options.out / options.lse: the packed results copied there (the caller's buffers may hold anything).
    const theirs = outputs.map((o) => (o.name === 'out' || o.name === 'lse' ? p.outputs?.[o.name] : undefined));
    if (theirs.some((b) => b !== undefined)) {
      const copy = new Call({ ...p, outputs: undefined }, gpu);
      try {
        await copy.submit(async (enc) => theirs.forEach((b, j) => b && enc.copyBufferToBuffer(packed[j], 0, b, 0, elementsOf(p, outputs[j].kind) * BYTES_PER_ELEMENT[outputs[j].dtype])));
      } finally {
        copy.dispose();
      }
    }
    const handOver = (data: GPUBuffer, dtype: DType, shape: number[]): GpuTensor => ({ data: call.buffers.handOver(data), dtype: dtype as GpuTensor['dtype'], shape });
    return {
      packed: packed.map((data, j) => handOver(theirs[j] ?? data, outputs[j].dtype, shapeOf(p, outputs[j].kind))),
      ...(dbias && { dbias: handOver(dbias, 'f32', biasShape) }),
    };
  } finally {
    call.dispose();
  }
}
