/**
 * The safetensors format (Hugging Face's): an 8-byte little-endian header length n, n bytes of JSON
 * { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: { ... } }, then the tensors'
 * bytes, row-major and little-endian, each at data_offsets from the end of the header. Reading it is a
 * header parse and views into the file's bytes, so a file is never copied whole: no npm package
 * offered more than this (the format is that simple), so it is read here.
 * Tensors come out as f32 values (F32 as they are, F16 and BF16 widened exactly, F64 rounded).
 */
import { CheckpointError, describe } from '../errors.js';
import { decodeF16, encodeF16 } from '../f16.js';

/** The element types read here, with their bytes. */
const DTYPE_BYTES = { F64: 8, F32: 4, F16: 2, BF16: 2 } as const;
export type SafetensorsDType = keyof typeof DTYPE_BYTES;

export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** The tensor's bytes: a view into the file's. */
  bytes: Uint8Array;
}

export interface Safetensors {
  /** Tensors by name, in the header's order. */
  tensors: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
}

/** Parse a safetensors file's bytes; `file` names it in errors. */
export function parseSafetensors(bytes: Uint8Array, file = 'model.safetensors'): Safetensors {
  const fail = (what: string, expected: string, received: string): never => {
    throw new CheckpointError(what ? `${file}: ${what}` : file, expected, received);
  };
  if (!(bytes instanceof Uint8Array)) fail('', 'the bytes of a safetensors file (a Uint8Array)', describe(bytes));
  if (bytes.length < 8) fail('', 'a safetensors file (an 8-byte header length, a JSON header, the data)', `${bytes.length} bytes`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (n < 2 || 8 + n > bytes.length) fail('', `a header length that fits the file's ${bytes.length} bytes (a safetensors file)`, `${n}`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    fail('header', 'JSON (a safetensors file)', `text that does not parse (${e instanceof Error ? e.message : String(e)})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header', 'a JSON object of tensors', describe(header));
  const data = bytes.subarray(8 + n);
  const tensors = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== 'object' || e === null) fail(name, 'an entry { dtype, shape, data_offsets }', describe(e));
    const dtype = e.dtype as SafetensorsDType;
    if (!Object.hasOwn(DTYPE_BYTES, dtype as string)) fail(name, `dtype ${Object.keys(DTYPE_BYTES).join(', ')}`, describe(e.dtype));
    const shape = e.shape as number[];
    if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0)) fail(name, 'a shape of non-negative integers', describe(e.shape));
    const offsets = e.data_offsets as number[];
    const size = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[1] - offsets[0] !== size || offsets[1] > data.length) {
      fail(name, `data_offsets [begin, begin + ${size}] within the ${data.length} bytes of data (${dtype} [${shape.join(', ')}])`, describe(e.data_offsets));
    }
    tensors.set(name, { name, dtype, shape: [...shape], bytes: data.subarray(offsets[0], offsets[1]) });
  }
  return { tensors, metadata };
}

/** A tensor's values as f32. */
export function tensorValues(t: SafetensorsEntry): Float32Array {
  const { bytes, dtype } = t;
  const n = bytes.length / DTYPE_BYTES[dtype];
  // Copy into an aligned buffer first: a tensor's offset in the file need not be a multiple of its size.
  const aligned = new Uint8Array(bytes).buffer;
  switch (dtype) {
    case 'F32':
      return new Float32Array(aligned, 0, n);
    case 'F64':
      return Float32Array.from(new Float64Array(aligned, 0, n));
    case 'F16':
      return decodeF16(new Uint16Array(aligned, 0, n));
    case 'BF16': {
      // bf16 is the top half of an f32's bits.
      const bits = new Uint32Array(n);
      const half = new Uint16Array(aligned, 0, n);
      for (let i = 0; i < n; i++) bits[i] = half[i] << 16;
      return new Float32Array(bits.buffer);
    }
  }
}

/** A safetensors file of the given f32 tensors, stored as F32, F16 or BF16 (tests and tools). */
export function encodeSafetensors(tensors: Record<string, { shape: readonly number[]; values: Float32Array }>, dtype: 'F32' | 'F16' | 'BF16' = 'F32'): Uint8Array {
  const header: Record<string, unknown> = {};
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, { shape, values }] of Object.entries(tensors)) {
    let part: Uint8Array;
    if (dtype === 'F32') part = new Uint8Array(Float32Array.from(values).buffer);
    else if (dtype === 'F16') part = new Uint8Array(encodeF16(values).buffer);
    else part = new Uint8Array(Uint16Array.from(new Uint32Array(Float32Array.from(values).buffer), (b) => roundBF16(b)).buffer);
    header[name] = { dtype, shape: [...shape], data_offsets: [offset, offset + part.length] };
    parts.push(part);
    offset += part.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8; // the data starts 8-byte aligned, as the reference writer does
  json = Uint8Array.from({ length: padded }, (_, i) => (i < json.length ? json[i] : 0x20));
  const out = new Uint8Array(8 + padded + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  let at = 8 + padded;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** An f32's bits to bf16, rounded to nearest even (NaN kept a NaN). */
function roundBF16(bits: number): number {
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x7fffff) return (bits >>> 16) | 0x40;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}
