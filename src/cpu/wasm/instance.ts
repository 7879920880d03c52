/**
 * What the WebAssembly kernels of forward.ts, backward.ts and decode.ts share on the host side: which
 * instruction set this runtime runs (probed once), one instance per thread of each module a kernel asks
 * for (cached by the module's name and compile-time parameters), its memory grown on demand, rows copied
 * into it, and modules that work on another's memory (companion).
 */
import { relaxedProbe, simdProbe } from './forward-module.js';

interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}

const wasm = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

/** What this runtime runs: 'relaxed' (SIMD with fused multiply-add), 'simd', or 'none'. */
let support: 'relaxed' | 'simd' | 'none' | undefined;

export function wasmSupport(): 'relaxed' | 'simd' | 'none' {
  if (support === undefined) {
    try {
      support = !wasm ? 'none' : wasm.validate(relaxedProbe()) ? 'relaxed' : wasm.validate(simdProbe()) ? 'simd' : 'none';
    } catch {
      support = 'none';
    }
  }
  return support;
}

/** Which instruction set the kernels use: the best the runtime has, or a lower one (tests compare them). */
let wanted: 'relaxed' | 'simd' | undefined;

/** Use plain SIMD even where relaxed SIMD is available (for tests and measurements); undefined: the best. */
export function setWasmVariant(v: 'relaxed' | 'simd' | undefined): void {
  wanted = v;
  instances.clear();
}

/** One module's instance on this thread: its exports, memory, and typed views of the memory. */
export interface Instance {
  exports: Record<string, unknown>;
  mem: { buffer: ArrayBuffer; grow(pages: number): number };
  f32: Float32Array;
  f64: Float64Array;
  i32: Int32Array;
  /** The job whose rows the memory holds now (the kernels keep a head's rows from task to task). */
  owner?: object;
}

const instances = new Map<string, Instance | null>();

/**
 * This thread's instance of the module `build(relaxed)` makes, cached under `key` (the module's name and
 * compile-time parameters), or null where none can be made here (e.g. a browser's main thread, which
 * compiles only small modules synchronously).
 */
export function instance(key: string, build: (relaxed: boolean) => Uint8Array): Instance | null {
  const relaxed = wasmSupport() === 'relaxed' && wanted !== 'simd';
  const k = `${key} ${relaxed}`;
  let inst = instances.get(k);
  if (inst !== undefined) return inst;
  try {
    const module = new wasm!.Module(build(relaxed));
    const { exports } = new wasm!.Instance(module, { m: { exp: Math.exp } });
    const mem = exports.mem as Instance['mem'];
    inst = { exports, mem, f32: new Float32Array(mem.buffer), f64: new Float64Array(mem.buffer), i32: new Int32Array(mem.buffer) };
  } catch {
    inst = null;
  }
  instances.set(k, inst);
  return inst;
}

/** Grow the instance's memory to at least `bytes` (views renewed); false where it cannot grow. */
export function reserve(w: Instance, bytes: number): boolean {
  const have = w.mem.buffer.byteLength;
  if (have >= bytes) return true;
  try {
    w.mem.grow(Math.ceil((bytes - have) / 65536));
  } catch {
    return false;
  }
  w.f32 = new Float32Array(w.mem.buffer);
  w.f64 = new Float64Array(w.mem.buffer);
  w.i32 = new Int32Array(w.mem.buffer);
  return true;
}

/** The most bytes of a head's rows a thread keeps in a module's memory: past that, one block at a time. */
export const HEAD_BYTES = 64 * 2 ** 20;

/** Copy `rows` rows of D elements from `src` (row stride `stride`) into `dst` at `at` with row stride ld. */
export function copyRows(dst: Float32Array | Float64Array, at: number, ld: number, src: Float32Array, o: number, stride: number, rows: number, D: number): void {
  if (stride === D && D === ld) {
    dst.set(src.subarray(o, o + rows * D), at);
    return;
  }
  // a subarray and a set per row: 4× faster than an element loop from shared memory (V8, Node 20)
  for (let r = 0; r < rows; r++) dst.set(src.subarray(o + r * stride, o + r * stride + D), at + r * ld);
}

const companions = new WeakMap<Instance, Map<string, Record<string, unknown> | null>>();

/**
 * The exports of this thread's instance of the module `build()` makes to work on w's memory (it imports
 * it as m.mem: assemble's memoryFrom 'm'), cached with w under `key`; null where none can be made.
 */
export function companion(w: Instance, key: string, build: () => Uint8Array): Record<string, unknown> | null {
  let made = companions.get(w);
  if (!made) companions.set(w, (made = new Map()));
  let e = made.get(key);
  if (e !== undefined) return e;
  try {
    e = new wasm!.Instance(new wasm!.Module(build()), { m: { mem: w.mem } }).exports;
  } catch {
    e = null;
  }
  made.set(key, e);
  return e;
}
