/** Bookkeeping for a model's forward over the nn ops. */
import type { AnyTensor } from '../tensor.js';
import type { Ops } from './ops.js';

/**
 * The intermediates of one forward: each is freed as soon as it is dead, and all that are left if the
 * forward fails.
 */
export class Live {
  private readonly tensors = new Set<AnyTensor>();
  constructor(private readonly ops: Ops) {}

  add(t: AnyTensor): AnyTensor {
    this.tensors.add(t);
    return t;
  }

  free(...ts: AnyTensor[]): void {
    for (const t of ts) if (this.tensors.delete(t)) this.ops.free(t);
  }

  /** Stop tracking a result that is handed to the caller. */
  release(t: AnyTensor): void {
    this.tensors.delete(t);
  }

  freeAll(): void {
    this.free(...this.tensors);
  }
}
