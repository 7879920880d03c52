/**
 * The encoder experiment (docs/encoder-experiment.md): a transformer encoder (6 layers, d_model 512,
 * 32 heads, ffn 2048, causal) run forward at N = 128, 256, 512, ... with flash attention and with
 * standard attention; time per forward (the GPU synchronised: forward resolves when the work is done)
 * and the MemoryTracker's peak during it. Where the standard variant runs out of memory it stops and the
 * flash variant goes on to the largest N that fits or the cap. Each variant's model is made once and
 * warmed up at its first N until its times are steady (warmup.ts; N is a run-time size: nothing
 * compiles again for a new N).
 *
 * The model comes from src/models/encoder.ts (createEncoder); the driver takes it as an EncoderFactory
 * so that tests can run it on a stand-in model.
 */
import { MemoryTracker, type GpuTensor, type Tensor } from '../index.js';
import { isGpuBuffer } from '../tensor.js';
import { errorMessage, isOutOfMemory, summarize } from './bench.js';
import type { Clock } from './clock.js';
import type { Progress } from './progress.js';
import { warmUp } from './warmup.js';
import { mulberry32, randomTensor } from './random.js';
import type { EncoderPoint, EncoderResult, EncoderSettings } from './results.js';
import type { Encoder, EncoderConfig } from '../models/encoder.js';

/** What the driver uses of src/models/encoder.ts's Encoder. */
export type EncoderModel = Pick<Encoder, 'forward' | 'dispose'>;

/** createEncoder of src/models/encoder.ts (out of memory: OutOfMemoryError). */
export type EncoderFactory = (config: EncoderConfig) => Promise<EncoderModel>;

export interface EncoderContext {
  backend: 'cpu' | 'webgpu';
  seed: number;
  clock: Clock;
  device?: GPUDevice;
  progress: Progress;
  /** Called with each point as it is final (so a run that is stopped keeps what it measured). */
  record?: (p: EncoderPoint) => void;
}

const VARIANTS = ['standard', 'flash'] as const;

/** A variant's model, its tracker, and whether it has been warmed up (at the first N only). */
interface Variant {
  model: EncoderModel;
  memory: MemoryTracker;
  warm: boolean;
}

function input(s: EncoderSettings, N: number, seed: number, device: GPUDevice | undefined): Tensor | GpuTensor {
  const t = randomTensor([s.batch, N, s.dModel], s.dtype, mulberry32(seed));
  if (!device) return t;
  const bytes = Math.ceil(t.data.byteLength / 4) * 4;
  const data = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  const padded = new Uint8Array(bytes);
  padded.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  device.queue.writeBuffer(data, 0, padded);
  return { data, dtype: s.dtype, shape: t.shape };
}

function release(t: Tensor | GpuTensor): void {
  if (isGpuBuffer(t.data)) t.data.destroy();
}

function point(attention: 'flash' | 'standard', N: number, status: EncoderPoint['status'], message?: string): EncoderPoint {
  const p: EncoderPoint = { attention, N, status, timesMs: [], medianMs: null, minMs: null, maxMs: null, peakBytes: null };
  if (message !== undefined) p.message = message;
  return p;
}

/** The progress units runEncoder reports done: one per N and variant. */
export function encoderUnits(settings: Pick<EncoderSettings, 'ns'>): number {
  return settings.ns.length * VARIANTS.length;
}

/** Run the experiment with the models `factory` builds (src/models/encoder.ts's createEncoder); the caller plans encoderUnits() of progress. */
export async function runEncoder(settings: EncoderSettings, factory: EncoderFactory, ctx: EncoderContext): Promise<EncoderResult> {
  const say = ctx.progress;
  const models = new Map<'flash' | 'standard', Variant>();
  const stopped = new Map<'flash' | 'standard', string>();
  const points: EncoderPoint[] = [];
  /** A point is final: kept, and recorded. */
  const add = (p: EncoderPoint): void => {
    points.push(p);
    ctx.record?.(p);
  };
  try {
    for (const N of settings.ns) {
      for (const attention of VARIANTS) {
        const why = stopped.get(attention);
        if (why) {
          add(point(attention, N, 'not-run', why));
          say.done(1);
          continue;
        }
        say.step(`encoder ${attention} N=${N} (batch ${settings.batch})`);
        const p = await measure(settings, factory, ctx, models, attention, N);
        add(p);
        if (p.status !== 'ok') {
          stopped.set(attention, `not run: N=${N} ${p.status === 'out-of-memory' ? 'ran out of memory' : 'failed'}`);
          say.note(`encoder ${attention} N=${N}: ${p.status === 'out-of-memory' ? 'out of memory' : 'error'}: ${p.message ?? ''}`);
        }
        say.done(1);
      }
    }
  } finally {
    for (const { model } of models.values()) model.dispose();
  }
  return { settings, points };
}

/** One point: forwards until their times are steady where the variant has had none (warmup.ts), then the timed forwards, each with the peak reset before it. */
async function measure(
  s: EncoderSettings,
  factory: EncoderFactory,
  ctx: EncoderContext,
  models: Map<'flash' | 'standard', Variant>,
  attention: 'flash' | 'standard',
  N: number,
): Promise<EncoderPoint> {
  let x: Tensor | GpuTensor | undefined;
  try {
    let entry = models.get(attention);
    if (!entry) {
      const memory = new MemoryTracker();
      const { layers, dModel, heads, ffn, causal, dtype } = s;
      const model = await factory({ layers, dModel, heads, ffn, causal, dtype, attention, backend: ctx.backend, seed: ctx.seed, memory, device: ctx.device });
      entry = { model, memory, warm: false };
      models.set(attention, entry);
    }
    const { model, memory } = entry;
    x = input(s, N, ctx.seed + N, ctx.device);
    if (!entry.warm) {
      const input = x;
      await warmUp(async () => release(await model.forward(input)));
      entry.warm = true;
    }
    const timesMs: number[] = [];
    let peak = 0;
    let weights = 0;
    for (let r = 0; r < s.repeats; r++) {
      weights = Math.max(weights, memory.live);
      memory.resetPeak();
      await ctx.clock.start();
      const y = await model.forward(x);
      await ctx.clock.mark();
      const [ms] = await ctx.clock.finish();
      release(y);
      timesMs.push(ms);
      peak = Math.max(peak, memory.peak);
    }
    return { ...point(attention, N, 'ok'), timesMs, ...summarize(timesMs), peakBytes: peak || null, weightsBytes: peak ? weights : null };
  } catch (e) {
    return point(attention, N, isOutOfMemory(e) ? 'out-of-memory' : 'error', errorMessage(e));
  } finally {
    if (x) release(x);
  }
}
