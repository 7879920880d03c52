/**
 * A small WebAssembly assembler: the cpu kernels are generated from TypeScript as bytes (as the WGSL
 * ones are generated as text), so no toolchain is needed to build them and a module can be specialised
 * at run time for a head dimension and tile sizes. It knows the few instructions the kernels use
 * (integer and float scalars, 128-bit SIMD and the fused multiply-add of relaxed SIMD), one memory the
 * module defines and exports, function imports and exports.
 */

export const i32 = 0x7f;
export const f32 = 0x7d;
export const f64 = 0x7c;
export const v128 = 0x7b;
export type ValType = typeof i32 | typeof f32 | typeof f64 | typeof v128;

function uleb(out: number[], n: number): void {
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
}

function sleb(out: number[], n: number): void {
  for (;;) {
    const b = n & 0x7f;
    n = Math.floor(n / 128); // arithmetic shift for negative numbers too
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return;
    }
    out.push(b | 0x80);
  }
}

function name(out: number[], s: string): void {
  const bytes = new TextEncoder().encode(s);
  uleb(out, bytes.length);
  out.push(...bytes);
}

/** A local (or parameter) of a function: its index. */
export type Local = { readonly index: number; readonly type: ValType };

/** The body of one function: instructions appended in order (the wasm stack machine's). */
export class Fn {
  readonly code: number[] = [];
  private readonly locals: ValType[] = [];
  readonly params: Local[];

  constructor(
    readonly exportName: string,
    readonly paramTypes: ValType[],
    readonly resultTypes: ValType[],
  ) {
    this.params = paramTypes.map((type, index) => ({ index, type }));
  }

  local(type: ValType): Local {
    this.locals.push(type);
    return { index: this.paramTypes.length + this.locals.length - 1, type };
  }

  /** Raw opcode bytes. */
  op(...bytes: number[]): this {
    this.code.push(...bytes);
    return this;
  }

  /** A SIMD instruction (prefix 0xfd, opcode as LEB128), then its immediates. */
  simd(opcode: number, ...imm: number[]): this {
    this.code.push(0xfd);
    uleb(this.code, opcode);
    this.code.push(...imm);
    return this;
  }

  get(l: Local): this {
    this.code.push(0x20);
    uleb(this.code, l.index);
    return this;
  }
  set(l: Local): this {
    this.code.push(0x21);
    uleb(this.code, l.index);
    return this;
  }
  tee(l: Local): this {
    this.code.push(0x22);
    uleb(this.code, l.index);
    return this;
  }
  i32(n: number): this {
    this.code.push(0x41);
    sleb(this.code, n | 0);
    return this;
  }
  f32(x: number): this {
    this.code.push(0x43);
    const b = new Uint8Array(new Float32Array([x]).buffer);
    this.code.push(...b);
    return this;
  }
  f64(x: number): this {
    this.code.push(0x44);
    const b = new Uint8Array(new Float64Array([x]).buffer);
    this.code.push(...b);
    return this;
  }

  /** Memory access with a constant byte offset (alignment hint `align` as log2). */
  mem(opcode: number, offset: number, align: number): this {
    this.code.push(opcode);
    uleb(this.code, align);
    uleb(this.code, offset);
    return this;
  }
  memSimd(opcode: number, offset: number, align: number): this {
    this.code.push(0xfd);
    uleb(this.code, opcode);
    uleb(this.code, align);
    uleb(this.code, offset);
    return this;
  }

  /** A counted loop: `for (i = from; i < to; i += step) body()`, where from/to push an i32. Runs body zero times when from >= to. */
  for(i: Local, from: () => void, to: () => void, step: number, body: () => void): this {
    from();
    this.set(i);
    this.op(0x02, 0x40); // block
    this.get(i);
    to();
    this.op(0x4e, 0x0d, 0); // i32.ge_s; br_if 0 (out of the block)
    this.op(0x03, 0x40); // loop
    body();
    this.get(i).i32(step).op(0x6a).tee(i); // i += step
    to();
    this.op(0x48, 0x0d, 0); // i32.lt_s; br_if 0 (again)
    this.op(0x0b, 0x0b); // end loop, end block
    return this;
  }

  /** if (cond pushed before) { then() } else { otherwise() } */
  if(then: () => void, otherwise?: () => void): this {
    this.op(0x04, 0x40);
    then();
    if (otherwise) {
      this.op(0x05);
      otherwise();
    }
    this.op(0x0b);
    return this;
  }

  /** The function's body as the code section holds it. */
  encode(): number[] {
    const body: number[] = [];
    const groups: [number, ValType][] = [];
    for (const t of this.locals) {
      const last = groups[groups.length - 1];
      if (last && last[1] === t) last[0]++;
      else groups.push([1, t]);
    }
    uleb(body, groups.length);
    for (const [n, t] of groups) {
      uleb(body, n);
      body.push(t);
    }
    body.push(...this.code, 0x0b);
    const out: number[] = [];
    uleb(out, body.length);
    out.push(...body);
    return out;
  }
}

export interface Import {
  module: string;
  field: string;
  params: ValType[];
  results: ValType[];
}

/**
 * A module of `imports` (functions 0..), then `fns` (exported by name), with one exported memory 'mem':
 * its own of `memoryPages` pages, or, with `memoryFrom`, the memory imported as memoryFrom.mem (at least
 * that many pages), so that two modules work on one memory.
 */
export function assemble(imports: Import[], fns: Fn[], memoryPages: number, memoryFrom?: string): Uint8Array {
  const types: string[] = [];
  const typeOf = (params: ValType[], results: ValType[]) => {
    const key = `${params.join(',')}>${results.join(',')}`;
    let i = types.indexOf(key);
    if (i < 0) i = types.push(key) - 1;
    return i;
  };
  const importTypes = imports.map((im) => typeOf(im.params, im.results));
  const fnTypes = fns.map((f) => typeOf(f.paramTypes, f.resultTypes));

  const out: number[] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  const section = (id: number, content: number[]) => {
    out.push(id);
    uleb(out, content.length);
    out.push(...content);
  };
  // type section
  const t: number[] = [];
  uleb(t, types.length);
  for (const key of types) {
    const [ps, rs] = key.split('>').map((s) => (s ? s.split(',').map(Number) : []));
    t.push(0x60);
    uleb(t, ps.length);
    t.push(...ps);
    uleb(t, rs.length);
    t.push(...rs);
  }
  section(1, t);
  // import section
  if (imports.length || memoryFrom !== undefined) {
    const im: number[] = [];
    uleb(im, imports.length + (memoryFrom === undefined ? 0 : 1));
    imports.forEach((x, i) => {
      name(im, x.module);
      name(im, x.field);
      im.push(0x00);
      uleb(im, importTypes[i]);
    });
    if (memoryFrom !== undefined) {
      name(im, memoryFrom);
      name(im, 'mem');
      im.push(0x02, 0x00);
      uleb(im, memoryPages);
    }
    section(2, im);
  }
  // function section
  const fs: number[] = [];
  uleb(fs, fns.length);
  for (const ti of fnTypes) uleb(fs, ti);
  section(3, fs);
  // memory section: one memory, min pages, no max
  if (memoryFrom === undefined) {
    const ms: number[] = [1, 0x00];
    uleb(ms, memoryPages);
    section(5, ms);
  }
  // export section
  const ex: number[] = [];
  uleb(ex, fns.length + 1);
  name(ex, 'mem');
  ex.push(0x02, 0x00);
  fns.forEach((f, i) => {
    name(ex, f.exportName);
    ex.push(0x00);
    uleb(ex, imports.length + i);
  });
  section(7, ex);
  // code section
  const cs: number[] = [];
  uleb(cs, fns.length);
  for (const f of fns) cs.push(...f.encode());
  section(10, cs);
  return new Uint8Array(out);
}

/** The opcodes the kernels use, by name. */
export const op = {
  // control and parametric
  call: 0x10,
  drop: 0x1a,
  select: 0x1b,
  // memory
  i32load: 0x28,
  f32load: 0x2a,
  f64load: 0x2b,
  i32store: 0x36,
  f32store: 0x38,
  f64store: 0x39,
  // i32
  i32eqz: 0x45,
  i32eq: 0x46,
  i32ne: 0x47,
  i32lt_s: 0x48,
  i32gt_s: 0x4a,
  i32le_s: 0x4c,
  i32ge_s: 0x4e,
  i32add: 0x6a,
  i32sub: 0x6b,
  i32mul: 0x6c,
  i32shl: 0x74,
  // f32 / f64
  f32eq: 0x5b,
  f64eq: 0x61,
  f32add: 0x92,
  f32max: 0x97,
  f64add: 0xa0,
  f64sub: 0xa1,
  f64mul: 0xa2,
  f64promote: 0xbb,
} as const;

/** SIMD opcodes (after the 0xfd prefix). */
export const simd = {
  load: 0x00,
  load16x4_u: 0x04,
  load32_splat: 0x09,
  load64_splat: 0x0a,
  store: 0x0b,
  shuffle: 0x0d,
  i32x4_splat: 0x11,
  f32x4_splat: 0x13,
  f64x2_splat: 0x14,
  f32x4_extract_lane: 0x1f,
  i32x4_replace_lane: 0x1c,
  f64x2_extract_lane: 0x21,
  i32x4_gt_s: 0x3b,
  f32x4_lt: 0x43,
  f32x4_gt: 0x44,
  v128_and: 0x4e,
  v128_andnot: 0x4f,
  v128_bitselect: 0x52,
  f32x4_demote_f64x2_zero: 0x5e,
  f64x2_promote_low_f32x4: 0x5f,
  f32x4_nearest: 0x6a,
  i32x4_shl: 0xab,
  i32x4_add: 0xae,
  f32x4_add: 0xe4,
  f32x4_sub: 0xe5,
  f32x4_mul: 0xe6,
  f32x4_div: 0xe7,
  f32x4_abs: 0xe0,
  f32x4_convert_i32x4_s: 0xfa,
  f32x4_max: 0xe9,
  f32x4_pmax: 0xeb,
  f32x4_ne: 0x42,
  v128_or: 0x50,
  i32x4_sub: 0xb1,
  f64x2_add: 0xf0,
  f64x2_sub: 0xf1,
  f64x2_mul: 0xf2,
  i32x4_trunc_sat_f32x4_s: 0xf8,
  f32x4_relaxed_madd: 0x105,
} as const;
