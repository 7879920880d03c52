/**
 * Typed errors. Every error the library throws on bad input is a FlashAttnError that names the argument,
 * what was expected and what came, so a caller can both read it and branch on it.
 */

/** Base class: `argument` names the offending argument ('q', 'options.scale', ...). */
export class FlashAttnError extends Error {
  readonly argument: string;
  readonly expected: string;
  readonly received: string;

  constructor(argument: string, expected: string, received: string, message?: string) {
    super(message ?? `${argument}: expected ${expected}, got ${received}`);
    this.name = new.target.name;
    this.argument = argument;
    this.expected = expected;
    this.received = received;
  }
}

/** A tensor's shape does not fit the others (or is not a valid shape at all). */
export class ShapeError extends FlashAttnError {}

/** A tensor's data type is wrong or differs from the other tensors'. */
export class DTypeError extends FlashAttnError {}

/** A scalar or option has a wrong value (a non-finite scale, an unknown backend, ...). */
export class ValueError extends FlashAttnError {}

/** A valid request for a feature this version or this backend does not implement yet. */
export class NotSupportedError extends FlashAttnError {
  constructor(argument: string, feature: string, expected: string, received: string) {
    super(argument, expected, received, `${argument}: ${feature} is not supported yet; expected ${expected}, got ${received}`);
  }
}

/** The requested backend cannot run here (no adapter, no worker threads, ...). */
export class BackendUnavailableError extends FlashAttnError {}

/** Short, safe description of any value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'number') return Number.isNaN(value) ? 'NaN' : String(value);
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Array.isArray(value)) return `[${value.slice(0, 8).map(describe).join(', ')}${value.length > 8 ? ', ...' : ''}]`;
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${(value as unknown as { length?: number }).length ?? value.byteLength})`;
  if (typeof value === 'function') return 'a function';
  const name = (value as object).constructor?.name;
  return name && name !== 'Object' ? `a ${name}` : 'an object';
}

/** An allocation the call needs does not fit (the standard algorithm's Nq×Nk matrices, say). */
export class OutOfMemoryError extends FlashAttnError {}

/**
 * The WebGPU device was lost while the call ran or before it (a driver that ran out of memory outside an
 * allocation, a reset, destroy()): nothing on it survives. The library's own device is replaced by a new
 * one on the next call; a device of the caller's (options.device, GPUBuffer tensors) must be replaced by
 * the caller, with everything made on it.
 */
export class DeviceLostError extends FlashAttnError {}

/**
 * A model's files do not hold what the model needs: a safetensors file that is not one, a tensor that is
 * missing or of the wrong shape or dtype, a config.json without a field. `argument` names the file and,
 * where there is one, the tensor or field ('model.safetensors: h.0.attn.c_attn.weight').
 */
export class CheckpointError extends FlashAttnError {}
