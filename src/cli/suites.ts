/**
 * What a bench run measures, decided before anything runs: the attention sweeps of a suite, with sizes
 * scaled to the backend, and the encoder experiment's sequence lengths.
 *
 * default suite: an N sweep at a base case, then sweeps over D, the causal flag and the dtype at one N.
 *   On the cpu (and on a software WebGPU adapter) B=1, H=2, D=64, f32, N = 256, 512, 1024 and the other
 *   sweeps at N=256, so that the whole run takes about a minute on 2 cores; on a GPU PRODUCT.md's
 *   shapes: B·N = 16384 tokens, H·D = 2048, N = 512 .. 16384, f16 where the adapter has shader-f16, and
 *   the other sweeps at N=4096.
 * product suite (issue 4): exactly PRODUCT.md's grid: D ∈ {64, 128}, N = 512 .. 16384, B = 16384/N,
 *   H = 2048/D, causal off and on, f16 (where the adapter has it) and f32.
 * decode suite: one new query per sequence (Nq = 1) against a long K/V, f16: on a GPU Nk = 1k .. 128k,
 *   B ∈ {1, 8, 32}, H = 32 with Hkv = 8 (GQA 4:1) and 32 (1:1), D ∈ {64, 128}, less the cases whose K and
 *   V pass 16 GiB or one device binding; on the cpu (and software adapters) B=1, H=8, Hkv=2, D=64,
 *   Nk = 1k .. 8k.
 */
import { caseKey, type BenchDType, type Case, type DecodeCase, type DroppedDecodeCase, type EncoderSettings, type Sweep, type SweepAxis } from './results.js';

export const SWEEP_AXES: readonly SweepAxis[] = ['N', 'D', 'causal', 'dtype'];

/** How big a run should be: 'small' for the cpu and software adapters, 'gpu' for a real GPU. */
export type Scale = 'small' | 'gpu';

export const DEFAULT_NS: Record<Scale, number[]> = { small: [256, 512, 1024], gpu: [512, 1024, 2048, 4096, 8192, 16384] };
/** The D sweep's values (the base D is added where it is not one of them). */
export const SWEEP_DIMS = [32, 64, 128];
export const PRODUCT_DIMS = [64, 128];
export const PRODUCT_NS = [512, 1024, 2048, 4096, 8192, 16384];
/** PRODUCT.md's shapes: B·N tokens and H·D. */
export const TOKENS = 16384;
export const MODEL_WIDTH = 2048;

/** The settings of the default suite that options may override (unset: the scale's default). */
export interface DefaultSuiteOptions {
  scale: Scale;
  ns?: number[];
  batch?: number;
  heads?: number;
  dim?: number;
  causal?: boolean;
  dtype?: BenchDType;
  axes: readonly SweepAxis[];
  /** Whether f16 can run (webgpu needs shader-f16). */
  f16: boolean;
}

/** B and H of a case: fixed where given, else 1 and 4 (small) or B·N = 16384 and H·D = 2048 (gpu). */
function shape(scale: Scale, N: number, D: number, batch?: number, heads?: number): { B: number; H: number } {
  if (scale === 'small') return { B: batch ?? 1, H: heads ?? 2 };
  return { B: batch ?? Math.max(1, Math.floor(TOKENS / N)), H: heads ?? Math.max(1, Math.floor(MODEL_WIDTH / D)) };
}

function describeCase(c: Pick<Case, 'B' | 'H' | 'D' | 'causal' | 'dtype'>, without: SweepAxis): string {
  const parts: string[] = [];
  if (without !== 'D') parts.push(`D=${c.D}`);
  if (without !== 'causal') parts.push(c.causal ? 'causal' : 'not causal');
  if (without !== 'dtype') parts.push(c.dtype);
  return parts.join(', ');
}

export function defaultSweeps(o: DefaultSuiteOptions): Sweep[] {
  const ns = o.ns ?? DEFAULT_NS[o.scale];
  const D = o.dim ?? 64;
  const causal = o.causal ?? false;
  const dtype = o.dtype ?? (o.scale === 'gpu' && o.f16 ? 'f16' : 'f32');
  const at = (N: number, d = D, c = causal, t: BenchDType = dtype): Case => ({ ...shape(o.scale, N, d, o.batch, o.heads), N, D: d, causal: c, dtype: t });
  // The D, causal and dtype sweeps run at one N: the smallest on a cpu (they are several cases), the middle on a GPU.
  const mid = o.scale === 'small' ? Math.min(...ns) : ns[Math.floor(ns.length / 2)];
  const fixedShape = o.scale === 'small' || o.batch !== undefined ? `B=${o.batch ?? 1}` : `B·N=${TOKENS}`;
  const heads = o.scale === 'small' || o.heads !== undefined ? `H=${o.heads ?? 2}` : `H·D=${MODEL_WIDTH}`;
  const base = at(mid);
  const sweeps: Sweep[] = [];
  for (const axis of o.axes) {
    if (axis === 'N') {
      sweeps.push({ id: 'n', axis, title: `N sweep (${fixedShape}, ${heads}, ${describeCase(base, 'N')})`, cases: ns.map((N) => at(N)) });
    } else if (axis === 'D') {
      const dims = [...new Set([...SWEEP_DIMS, D])].sort((a, b) => a - b);
      sweeps.push({ id: 'd', axis, title: `D sweep at N=${mid} (${heads}, ${describeCase(base, 'D')})`, cases: dims.map((d) => at(mid, d)) });
    } else if (axis === 'causal') {
      sweeps.push({ id: 'causal', axis, title: `causal off and on at N=${mid} (${describeCase(base, 'causal')})`, cases: [false, true].map((c) => at(mid, D, c)) });
    } else if (o.f16) {
      sweeps.push({ id: 'dtype', axis, title: `f32 and f16 at N=${mid} (${describeCase(base, 'dtype')})`, cases: (['f32', 'f16'] as const).map((t) => at(mid, D, causal, t)) });
    }
  }
  return sweeps;
}

/** PRODUCT.md's grid, one N sweep per (D, causal, dtype); `ns` may narrow N, `only` the dtypes. */
export function productSweeps(ns: readonly number[], f16: boolean, only?: BenchDType): Sweep[] {
  const sweeps: Sweep[] = [];
  const dtypes: BenchDType[] = f16 ? ['f16', 'f32'] : ['f32'];
  for (const dtype of dtypes.filter((t) => only === undefined || t === only)) {
    for (const D of PRODUCT_DIMS) {
      for (const causal of [false, true]) {
        const cases = ns.map((N) => ({ ...shape('gpu', N, D), N, D, causal, dtype }));
        sweeps.push({
          id: `product-${dtype}-d${D}-${causal ? 'causal' : 'full'}`,
          axis: 'N',
          title: `${dtype}, D=${D}, H=${MODEL_WIDTH / D}, B·N=${TOKENS}, ${causal ? 'causal' : 'not causal'}`,
          cases,
        });
      }
    }
  }
  return sweeps;
}

/** The cases of the sweeps, each once, in the order they first appear. */
export function uniqueCases(sweeps: readonly Sweep[]): Case[] {
  const seen = new Map<string, Case>();
  for (const s of sweeps) for (const c of s.cases) if (!seen.has(caseKey(c))) seen.set(caseKey(c), c);
  return [...seen.values()];
}

/** The seed notebook's encoder: 6 layers, d_model 512, 32 heads, ffn 2048, causal. */
export const ENCODER = { layers: 6, dModel: 512, heads: 32, ffn: 2048, causal: true } as const;
/**
 * Batch, first and largest N, and timed forwards by scale. The notebook: batch 32 from N=128, extended to
 * 8192 (PyTorch's math path runs out of 80 GB at N=4096; our standard attention holds every head's N×N
 * matrices as that path does, and runs out near there too, after which flash goes on alone;
 * --encoder-max-n goes further). On a cpu one forward of batch 1 at N=128 is about 5 GFLOP (the linear
 * layers), a second or two on 2 cores: three sizes and two timed forwards keep the default run near a minute.
 */
export const ENCODER_DEFAULTS: Record<Scale, { batch: number; firstN: number; maxN: number; repeats?: number }> = {
  small: { batch: 1, firstN: 64, maxN: 256, repeats: 2 },
  gpu: { batch: 32, firstN: 128, maxN: 8192 },
};

export function encoderSettings(scale: Scale, dtype: BenchDType, repeats: number, batch?: number, maxN?: number): EncoderSettings {
  const d = ENCODER_DEFAULTS[scale];
  const cap = maxN ?? d.maxN;
  const ns: number[] = [];
  for (let N = Math.min(d.firstN, cap); N <= cap; N *= 2) ns.push(N);
  return { ...ENCODER, batch: batch ?? d.batch, dtype, ns, repeats: Math.min(repeats, d.repeats ?? repeats) };
}

/** The decode suite's grid: sequence lengths, batches, (H, Hkv) pairs and head dims. */
export interface DecodeGrid {
  Nk: readonly number[];
  B: readonly number[];
  heads: readonly (readonly [number, number])[];
  D: readonly number[];
}

export const DECODE_GRIDS: Record<Scale, DecodeGrid> = {
  gpu: { Nk: [1024, 4096, 16384, 32768, 131072], B: [1, 8, 32], heads: [[32, 8], [32, 32]], D: [64, 128] },
  small: { Nk: [1024, 2048, 4096, 8192], B: [1], heads: [[8, 2]], D: [64] },
};
/** K and V together above this are left out of the decode grid (with a line that says so). */
export const DECODE_MAX_KV_BYTES = 16 * 2 ** 30;
/** Tokens per page of the decode suite's paged cache (vLLM's default). */
export const DECODE_PAGE_SIZE = 16;

const ELEMENT_BYTES: Record<BenchDType, number> = { f32: 4, f16: 2 };

/** Bytes of K and V a decode call reads: 2·B·Nk·Hkv·D elements. */
export function kvBytes(c: Pick<DecodeCase, 'B' | 'Nk' | 'Hkv' | 'D' | 'dtype'>): number {
  return 2 * c.B * c.Nk * c.Hkv * c.D * ELEMENT_BYTES[c.dtype];
}

/** "16 GiB", "512 MiB": a size for the reasons a case was dropped. */
export function fmtBytes(bytes: number): string {
  const gib = bytes / 2 ** 30;
  return gib >= 1 ? `${+gib.toFixed(2)} GiB` : `${+(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export interface DecodeGridOptions {
  scale: Scale;
  /** Narrow (or replace) the grid's sequence lengths, batches and head dims. */
  nks?: readonly number[];
  batches?: readonly number[];
  dims?: readonly number[];
  /** The most bytes one tensor (K or V) may have on this device (the binding limit), and its name. */
  maxTensor?: { bytes: number; source: string };
}

/**
 * The decode suite's cases, D, then (H, Hkv), then B, then Nk ascending, f16; and those left out: K and V
 * above DECODE_MAX_KV_BYTES together, or K above the device's largest binding (forward() and the cache
 * bind K and V whole).
 */
export function decodeGrid(o: DecodeGridOptions): { cases: DecodeCase[]; dropped: DroppedDecodeCase[] } {
  const g = DECODE_GRIDS[o.scale];
  const cases: DecodeCase[] = [];
  const dropped: DroppedDecodeCase[] = [];
  for (const D of o.dims ?? g.D) {
    for (const [H, Hkv] of g.heads) {
      for (const B of o.batches ?? g.B) {
        for (const Nk of o.nks ?? g.Nk) {
          const c: DecodeCase = { B, H, Hkv, Nk, D, dtype: 'f16' };
          const bytes = kvBytes(c);
          if (bytes > DECODE_MAX_KV_BYTES) {
            dropped.push({ ...c, reason: `K and V are ${fmtBytes(bytes)}, over the suite's ${fmtBytes(DECODE_MAX_KV_BYTES)}` });
          } else if (o.maxTensor && bytes / 2 > o.maxTensor.bytes) {
            dropped.push({ ...c, reason: `K is ${fmtBytes(bytes / 2)}, over this device's ${o.maxTensor.source} (${o.maxTensor.bytes} bytes): forward() and the KV cache bind K and V whole` });
          } else {
            cases.push(c);
          }
        }
      }
    }
  }
  return { cases, dropped };
}
