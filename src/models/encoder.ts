/**
 * The seed experiment's model: a stack of post-norm transformer encoder layers, as
 * torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, activation=relu, batch_first=True,
 * norm_first=False) in inference (dropout off), built from the nn ops. One layer, x (B, N, dModel):
 *   q, k, v = x·Wqᵀ + bq, x·Wkᵀ + bk, x·Wvᵀ + bv         (B, N, dModel) each = (B, N, H, dModel/H)
 *   a = attention(q, k, v), `heads` heads, flash or standard  (B, N, dModel)
 *   x = LN1(x + a·Woᵀ + bo)                                 (B, N, dModel)
 *   x = LN2(x + relu(x·W1ᵀ + b1)·W2ᵀ + b2)                  (B, N, ffn) inside
 * torch's in_proj (3·dModel, dModel) is held as its three blocks Wq, Wk, Wv, so that q, k and v are
 * dense tensors the attention reads in place. Each intermediate is freed as soon as it is dead, so the
 * memory tracker's peak is what the model needs: the weights plus the larger of x, q, k, v with the
 * attention's own buffers and output, and LN1's output with the (B, N, ffn) hidden layer and its
 * projection back to (B, N, dModel).
 *
 * Batch slices. Every op of a layer is independent per sequence (attention within one, linear and layer
 * norm per row), so a batch whose largest buffer would exceed the ops' per-buffer limit (on webgpu the
 * device's maxStorageBufferBindingSize: 2^31 − 4 bytes on an H100, which the (32, 16384, 2048) f16
 * hidden layer, 2^31 bytes, exceeds) runs in slices of sequences: the fewest slices whose largest buffer fits, B_s·N·max(ffn, dModel)
 * elements or attention's own (Ops.attentionBytesPerSequence), of as even sizes as possible. Each slice
 * is cut from x (ops.slice), run through every layer, and written into the (B, N, dModel) output
 * (ops.write), bit for bit what the whole batch gives, with the output and one slice's intermediates
 * live at once. A sequence that alone is over the limit fails, in its first slice, with the
 * OutOfMemoryError of the first op whose buffer it is. `batchSlices` is the rule.
 *
 * Weights are drawn as torch initialises them, from one seeded mulberry32 stream, layer after layer, in
 * the order of LAYER_PARTS, weight before bias: Wq, Wk, Wv ~ U(±√(6 / 4·dModel)) (xavier_uniform_ of
 * in_proj) with zero biases; Wo ~ U(±1/√dModel) (nn.Linear's default) with a zero bias; W1, b1 ~
 * U(±1/√dModel) and W2, b2 ~ U(±1/√ffn) (nn.Linear's default); layer norms weight 1, bias 0.
 * `encoderWeights` gives the same values as f32 arrays, for references and checks.
 */
import { ShapeError, ValueError, describe } from '../errors.js';
import type { MemoryTracker } from '../memory.js';
import { mulberry32 } from '../random.js';
import { createOps } from '../nn/index.js';
import { Live } from '../nn/live.js';
import { preferWebgpu } from '../webgpu/device.js';
import type { Ops } from '../nn/ops.js';
import { BYTES_PER_ELEMENT, isGpuBuffer, type AnyTensor, type GpuTensor, type Tensor } from '../tensor.js';

export interface EncoderConfig {
  /** 6 in the seed experiment. */
  layers: number;
  /** 512 */
  dModel: number;
  /** 32 */
  heads: number;
  /** 2048 */
  ffn: number;
  causal: boolean;
  attention: 'flash' | 'standard';
  /**
   * 'auto' (the default): webgpu on a real GPU adapter that has what dtype needs (shader-f16 for f16) or
   * where `device` is given, else the cpu; the encoder's config says which it chose.
   */
  backend?: 'auto' | 'cpu' | 'webgpu';
  dtype: 'f32' | 'f16';
  /** Weights are drawn from a generator with this seed (default 0). */
  seed?: number;
  /** Counts every buffer the model and its ops allocate, weights included; default: the shared `memory`. */
  memory?: MemoryTracker;
  /** webgpu: the caller's device; default: the library's own. */
  device?: GPUDevice;
  /**
   * Internal, for tests: a per-tensor limit in bytes below the backend's own, which the ops enforce and
   * the batch slices are chosen for (see OpsConfig.maxBufferBytes); default: the backend's.
   */
  maxBufferBytes?: number;
}

export interface Encoder {
  readonly config: EncoderConfig;
  /**
   * x: (B, N, dModel) in config.dtype (f16 as Uint16Array bits) -> (B, N, dModel). A typed-array tensor
   * gives a typed-array result; on webgpu a GpuTensor gives a GpuTensor, handed over to the caller (who
   * destroys it). On webgpu, resolves when the GPU work is done (onSubmittedWorkDone) so it can be timed.
   * x is never modified. A batch whose activations exceed the per-buffer limit runs in slices of
   * sequences (see the file's comment); the result is the same, bit for bit.
   */
  forward(x: Tensor | GpuTensor): Promise<Tensor | GpuTensor>;
  /** Free the weights; the encoder cannot be used afterwards. */
  dispose(): void;
}

/** The parts of one layer, as torch.nn.TransformerEncoderLayer names them (in_proj split into q, k, v). */
export const LAYER_PARTS = ['q', 'k', 'v', 'out', 'linear1', 'linear2', 'norm1', 'norm2'] as const;
export type LayerPart = (typeof LAYER_PARTS)[number];
export type LayerWeights<T> = Record<LayerPart, { weight: T; bias: T }>;

/** How a parameter is initialised: U(−bound, bound), or a constant. */
type Init = { uniform: number } | { constant: number };

interface ParamSpec {
  shape: number[];
  init: Init;
}

/** Shape and initialisation of every parameter of one layer. */
function layerSpec(c: EncoderConfig): LayerWeights<ParamSpec> {
  const d = c.dModel;
  const linear = (out: number, inp: number, weight: Init, bias: Init) => ({ weight: { shape: [out, inp], init: weight }, bias: { shape: [out], init: bias } });
  const inProj = { uniform: Math.sqrt(6 / (d + 3 * d)) };
  const zero = { constant: 0 };
  const norm = { weight: { shape: [d], init: { constant: 1 } }, bias: { shape: [d], init: zero } };
  return {
    q: linear(d, d, inProj, zero),
    k: linear(d, d, inProj, zero),
    v: linear(d, d, inProj, zero),
    out: linear(d, d, { uniform: 1 / Math.sqrt(d) }, zero),
    linear1: linear(c.ffn, d, { uniform: 1 / Math.sqrt(d) }, { uniform: 1 / Math.sqrt(d) }),
    linear2: linear(d, c.ffn, { uniform: 1 / Math.sqrt(c.ffn) }, { uniform: 1 / Math.sqrt(c.ffn) }),
    norm1: norm,
    norm2: norm,
  };
}

function draw(uniform: () => number, init: Init, values: Float32Array): void {
  if ('constant' in init) values.fill(init.constant);
  else for (let i = 0; i < values.length; i++) values[i] = (2 * uniform() - 1) * init.uniform;
}

/** The parameters of every layer in drawing order: (layer, part, weight or bias, spec). */
function* params(c: EncoderConfig) {
  const spec = layerSpec(c);
  for (let layer = 0; layer < c.layers; layer++) {
    for (const part of LAYER_PARTS) for (const kind of ['weight', 'bias'] as const) yield { layer, part, kind, spec: spec[part][kind] };
  }
}

/** The weights `createEncoder(config)` draws, as f32 values (the f16 model rounds them to f16). */
export function encoderWeights(config: EncoderConfig): LayerWeights<Float32Array>[] {
  checkConfig(config);
  const uniform = mulberry32(config.seed ?? 0);
  const layers: LayerWeights<Float32Array>[] = [];
  for (const { layer, part, kind, spec } of params(config)) {
    const values = new Float32Array(spec.shape.reduce((a, b) => a * b, 1));
    draw(uniform, spec.init, values);
    ((layers[layer] ??= {} as LayerWeights<Float32Array>)[part] ??= {} as { weight: Float32Array; bias: Float32Array })[kind] = values;
  }
  return layers;
}

function checkConfig(c: EncoderConfig): void {
  if (typeof c !== 'object' || c === null) throw new ValueError('config', 'an EncoderConfig object', describe(c));
  for (const key of ['layers', 'dModel', 'heads', 'ffn'] as const) {
    if (!Number.isSafeInteger(c[key]) || c[key] < 1) throw new ValueError(`config.${key}`, 'a positive integer', describe(c[key]));
  }
  if (c.dModel % c.heads !== 0) throw new ValueError('config.heads', `a divisor of config.dModel (${c.dModel})`, describe(c.heads));
  if (typeof c.causal !== 'boolean') throw new ValueError('config.causal', 'a boolean', describe(c.causal));
  if (c.attention !== 'flash' && c.attention !== 'standard') throw new ValueError('config.attention', "'flash' or 'standard'", describe(c.attention));
  if (c.backend !== undefined && c.backend !== 'auto' && c.backend !== 'cpu' && c.backend !== 'webgpu') {
    throw new ValueError('config.backend', "'auto', 'cpu' or 'webgpu'", describe(c.backend));
  }
  if (c.seed !== undefined && !Number.isSafeInteger(c.seed)) throw new ValueError('config.seed', 'an integer', describe(c.seed));
}

/** One post-norm layer, x (B, N, dModel) -> (B, N, dModel); x is freed once dead if `live` tracks it. */
async function layerForward(ops: Ops, c: EncoderConfig, w: LayerWeights<AnyTensor>, x: AnyTensor, live: Live): Promise<AnyTensor> {
  const linear = async (t: AnyTensor, part: LayerPart, relu = false) => live.add(await ops.linear(t, w[part].weight, w[part].bias, relu ? { activation: 'relu' } : {}));
  const q = await linear(x, 'q');
  const k = await linear(x, 'k');
  const v = await linear(x, 'v');
  const a = live.add(await ops.attention(q, k, v, { heads: c.heads, causal: c.causal, algorithm: c.attention }));
  live.free(q, k, v);
  const o = await linear(a, 'out');
  live.free(a);
  const h = live.add(await ops.layerNorm(o, w.norm1.weight, w.norm1.bias, x));
  live.free(o, x);
  const f = await linear(h, 'linear1', true);
  const g = await linear(f, 'linear2');
  live.free(f);
  const y = live.add(await ops.layerNorm(g, w.norm2.weight, w.norm2.bias, h));
  live.free(g, h);
  return y;
}

/**
 * Bytes of the largest buffer a layer makes per sequence of N tokens: the (N, ffn) hidden layer or an
 * (N, dModel) activation, or attention's own.
 */
function sequenceBytes(ops: Ops, c: EncoderConfig, N: number): number {
  const attention = ops.attentionBytesPerSequence(N, c.dModel, { heads: c.heads, causal: c.causal, algorithm: c.attention });
  return Math.max(N * Math.max(c.ffn, c.dModel) * BYTES_PER_ELEMENT[c.dtype], attention);
}

/**
 * The slices of a batch of B sequences, as [start, count) pairs: the fewest whose count·perSequence bytes
 * are at most `limit` (slices of one where even one sequence is over it), as even as possible, the first
 * B mod S one sequence longer than the rest. One slice, [0, B), where the whole batch fits.
 */
export function batchSlices(B: number, perSequence: number, limit: number): { start: number; count: number }[] {
  const most = Math.max(1, Math.floor(limit / perSequence));
  const S = Math.ceil(B / most);
  const [base, longer] = [Math.floor(B / S), B % S];
  const slices: { start: number; count: number }[] = [];
  for (let i = 0, start = 0; i < S; i++) {
    const count = base + (i < longer ? 1 : 0);
    slices.push({ start, count });
    start += count;
  }
  return slices;
}

export async function createEncoder(config: EncoderConfig): Promise<Encoder> {
  checkConfig(config);
  const c: EncoderConfig = { ...config };
  if ((c.backend ?? 'auto') === 'auto') c.backend = c.device !== undefined || (await preferWebgpu(c.dtype)) ? 'webgpu' : 'cpu';
  const ops = await createOps({ ...c, backend: c.backend as 'cpu' | 'webgpu' });
  const weights: LayerWeights<AnyTensor>[] = [];
  const made: AnyTensor[] = [];
  try {
    const uniform = mulberry32(c.seed ?? 0);
    for (const { layer, part, kind, spec } of params(c)) {
      const what = `layer ${layer} ${part}.${kind} [${spec.shape.join(', ')}]`;
      const t = await ops.create(spec.shape, (values) => draw(uniform, spec.init, values), what, part === 'linear1' || part === 'linear2' ? 'config.ffn' : 'config.dModel');
      made.push(t);
      ((weights[layer] ??= {} as LayerWeights<AnyTensor>)[part] ??= {} as { weight: AnyTensor; bias: AnyTensor })[kind] = t;
    }
  } catch (e) {
    made.forEach((t) => ops.free(t));
    throw e;
  }
  let disposed = false;
  return {
    config: c,
    async forward(x: Tensor | GpuTensor): Promise<Tensor | GpuTensor> {
      if (disposed) throw new ValueError('encoder', 'an encoder not yet disposed', 'a disposed one');
      if (typeof x !== 'object' || x === null) throw new ValueError('x', 'a tensor { data, dtype, shape }', describe(x));
      if (!Array.isArray(x.shape) || x.shape.length !== 3 || x.shape[2] !== c.dModel || !x.shape.every((s) => Number.isSafeInteger(s) && s >= 1)) {
        throw new ShapeError('x.shape', `(B, N, ${c.dModel}), B and N positive integers`, describe(x.shape));
      }
      const [B, N] = x.shape;
      const slices = batchSlices(B, sequenceBytes(ops, c, N), ops.maxBufferBytes);
      const live = new Live(ops);
      const layers = async (h: AnyTensor) => {
        for (const w of weights) h = await layerForward(ops, c, w, h, live);
        return h;
      };
      try {
        let y: AnyTensor;
        if (slices.length === 1) {
          y = await layers(live.add(await ops.input(x, 'x')));
        } else {
          y = live.add(await ops.empty([B, N, c.dModel], `the encoder output [${B}, ${N}, ${c.dModel}]`, 'x'));
          for (const { start, count } of slices) {
            const h = await layers(live.add(await ops.slice(x, start, count, 'x')));
            await ops.write(y, start, h);
            live.free(h);
          }
        }
        const out = await ops.output(y, !isGpuBuffer(x.data));
        live.release(y);
        return out as Tensor | GpuTensor;
      } finally {
        live.freeAll();
      }
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      made.forEach((t) => ops.free(t));
    },
  };
}
