/**
 * Packed variable-length sequences (options.cuSeqlensQ / cuSeqlensK, the semantics of FlashAttention's
 * flash_attn_varlen_func). q is (1, totalQ, H, D) in 'BNHD' or (1, H, totalQ, D) in 'BHND', k and v
 * likewise with totalK rows and Hkv heads; sequence s owns query rows cuSeqlensQ[s] .. cuSeqlensQ[s+1]−1
 * and key rows cuSeqlensK[s] .. cuSeqlensK[s+1]−1, its queries see only its keys, and causal is per
 * sequence, bottom-right aligned.
 * The variants that packed sequences take (problem.ts refuses bias, mask and block mask) hold per sequence
 * as they do per batch row: window and ALiBi distances are the sequence's own (bottom-right aligned), and
 * dropout's hash takes sequence s as batch row s (Modifiers' dropout.headOffset), so sequences draw
 * different masks.
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
import type { Problem } from './problem.js';
import { BYTES_PER_ELEMENT, type AnyTensor, type DType, type GpuTensor, type Tensor, type TensorData } from './tensor.js';
import { Call, gpuFor } from './webgpu/index.js';

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
) => Promise<{ dq: AnyTensor; dk: AnyTensor; dv: AnyTensor }>;

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

/** A backend's call on one sequence's slices (in the order of the inputs), giving its results (in the order of the outputs). */
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
  const [out, lse] = await perSequence(p, [q, k, v], inputs, outputs, async (sub, [qs, ks, vs]) => {
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
): Promise<{ dq: AnyTensor; dk: AnyTensor; dv: AnyTensor }> {
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
  const [dq, dk, dv] = await perSequence(p, [dout, q, k, v, out, lse], inputs, outputs, async (sub, [dO, qs, ks, vs, O, L]) => {
    const r = await run(sub, dO, qs, ks, vs, O, L);
    return [r.dq, r.dk, r.dv];
  });
  return { dq, dk, dv };
}

function lseType(p: Problem): DType {
  return p.dtype === 'f64' ? 'f64' : 'f32';
}

function perSequence(p: Problem, tensors: AnyTensor[], inputs: Packed[], outputs: Packed[], step: Step<AnyTensor>): Promise<AnyTensor[]> {
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

/** The problem of one sequence: batch 1, its own Nq and Nk, nothing packed; dropout's heads those of batch row s. */
function subProblem(p: Problem, seq: Sequence): Problem {
  const d = p.mods.dropout;
  const mods = d ? { ...p.mods, dropout: { ...d, headOffset: seq.s * p.H } } : p.mods;
  return { ...p, cuSeqlens: undefined, B: 1, Nq: seq.q1 - seq.q0, Nk: seq.k1 - seq.k0, mods };
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
 * its rows are one run per head), and its results are copied in. Counted in the call's tracker: the
 * outputs until they are the caller's, copies and each sequence's results while they live.
 */
async function onHost(p: Problem, tensors: Tensor[], inputs: Packed[], outputs: Packed[], step: Step<Tensor>): Promise<Tensor[]> {
  let counted = 0;
  try {
    const packed = outputs.map((o): Tensor => {
      const n = elementsOf(p, o.kind);
      counted += p.memory.allocate(n * BYTES_PER_ELEMENT[o.dtype]);
      const data = zeros(o.dtype, n);
      if (o.kind === 'lse') data.fill(-Infinity);
      return { data, dtype: o.dtype, shape: shapeOf(p, o.kind) };
    });
    for (const seq of sequences(p).filter(hasWork)) {
      const sub = subProblem(p, seq);
      let live = 0;
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
    return packed;
  } finally {
    p.memory.release(counted); // the outputs are the caller's from here on
  }
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
 * copies its slices out of the packed inputs, the backend runs on them, and one submission copies its
 * results into the packed outputs; each is a Call, so its buffers are counted and device errors become
 * typed ones. One sequence's slices and results are live at a time.
 */
async function onDevice(p: Problem, tensors: GpuTensor[], inputs: Packed[], outputs: Packed[], step: Step<GpuTensor>): Promise<GpuTensor[]> {
  const gpu = await gpuFor(p);
  const all = sequences(p);
  const call = new Call(p, gpu);
  try {
    const packed = outputs.map((o) => call.output(elementsOf(p, o.kind), o.name, argumentOf(o.kind), o.dtype));
    await call.submit(async () => {
      outputs.forEach((o, j) => {
        if (o.kind !== 'lse') return;
        for (const seq of all.filter((x) => x.q1 > x.q0 && x.k1 === x.k0)) {
          for (const r of runs(p, o.kind, rowsOf(seq, o.kind))) gpu.device.queue.writeBuffer(packed[j], r.at * 4, new Float32Array(r.length).fill(-Infinity));
        }
      });
    });
    for (const seq of all.filter(hasWork)) {
      const sub = subProblem(p, seq);
      const cut = new Call(sub, gpu);
      let collect: Call | undefined;
      try {
        const slices = tensors.map((t, i) => {
          const { kind, name } = inputs[i];
          const data = cut.buffers.create(elementsOf(sub, kind) * BYTES_PER_ELEMENT[t.dtype], `${name} of sequence ${seq.s}`, argumentOf(kind));
          return { data, dtype: t.dtype, shape: shapeOf(sub, kind) };
        });
        await cut.submit(async (enc) => {
          tensors.forEach((t, i) => copyRuns(enc, 'gather', t.data, slices[i].data, runs(p, inputs[i].kind, rowsOf(seq, inputs[i].kind)), BYTES_PER_ELEMENT[t.dtype]));
        });
        const results = await step(sub, slices);
        collect = new Call(sub, gpu);
        for (const r of results) collect.buffers.adopt(r.data);
        await collect.submit(async (enc) => {
          results.forEach((r, j) => copyRuns(enc, 'scatter', packed[j], r.data, runs(p, outputs[j].kind, rowsOf(seq, outputs[j].kind)), BYTES_PER_ELEMENT[r.dtype]));
        });
      } finally {
        collect?.dispose();
        cut.dispose();
      }
    }
    return packed.map((data, j) => ({ data: call.buffers.handOver(data), dtype: outputs[j].dtype as GpuTensor['dtype'], shape: shapeOf(p, outputs[j].kind) }));
  } finally {
    call.dispose();
  }
}
