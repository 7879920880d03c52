/**
 * The public entry points. One path for data: arguments are checked (nothing runs on bad input), the
 * backend is chosen once, and the backend's forward or backward runs. Inputs are never modified.
 */
import { cpuBackward, cpuForward } from './cpu/index.js';
import { DTypeError, NotSupportedError } from './errors.js';
import type { AttentionOptions } from './options.js';
import { checkBackward, checkForward, type Problem } from './problem.js';
import { referenceBackward, referenceForward } from './reference/index.js';
import type { Tensor } from './tensor.js';

/** The backends that run computations ('auto' resolves to one of them). */
export type ResolvedBackend = 'cpu' | 'reference';

export interface ForwardResult {
  /** Like q: (B, Nq, H, D) or (B, H, Nq, D) per the layout, in q's dtype. */
  out: Tensor;
  /** (B, H, Nq) log-sum-exp of each query row's scaled logits, natural log; f32 (f64 for f64 inputs). −∞ for a row that sees no key. */
  lse: Tensor;
  backend: ResolvedBackend;
}

export interface BackwardResult {
  /** Gradients of sum(out ∘ dout), shaped and typed like q, k and v. */
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
  backend: ResolvedBackend;
}

function resolveBackend(p: Problem): ResolvedBackend {
  switch (p.backend) {
    case 'auto':
      return p.dtype === 'f64' ? 'reference' : 'cpu';
    case 'webgpu':
      throw new NotSupportedError('options.backend', 'the webgpu backend', "'auto', 'cpu' or 'reference'", "'webgpu'");
    case 'cpu':
      if (p.dtype === 'f64') throw new DTypeError('q.dtype', "'f32' or 'f16' on the cpu backend (f64 runs on 'reference')", "'f64'");
      return 'cpu';
    case 'reference':
      return 'reference';
  }
}

/**
 * Attention forward: out = softmax(scale · q kᵀ [causal mask]) v, and the log-sum-exp per row.
 * q: (B, Nq, H, D), k and v: (B, Nk, Hkv, D) with H % Hkv == 0 (axes per options.layout).
 */
export async function forward(q: Tensor, k: Tensor, v: Tensor, options?: AttentionOptions): Promise<ForwardResult> {
  const p = checkForward(q, k, v, options);
  const backend = resolveBackend(p);
  const r = backend === 'cpu' ? await cpuForward(p, q, k, v) : referenceForward(p, q, k, v);
  return { ...r, backend };
}

/**
 * Attention backward with recomputation: from dout and the forward's out and lse (nothing else is saved),
 * the gradients dq, dk, dv. Options must be those of the forward call.
 */
export async function backward(
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
  options?: AttentionOptions,
): Promise<BackwardResult> {
  const p = checkBackward(dout, q, k, v, out, lse, options);
  const backend = resolveBackend(p);
  const r = backend === 'cpu' ? await cpuBackward(p, dout, q, k, v, out, lse) : referenceBackward(p, dout, q, k, v, out, lse);
  return { ...r, backend };
}
