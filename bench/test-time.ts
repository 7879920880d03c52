/**
 * Where a grid test file's time goes (test/spec.ts's registerGrid), part by part, in CPU seconds of the
 * whole process (process.cpuUsage: the main thread, the cpu backend's worker threads and lavapipe's
 * threads), which a loaded machine changes far less than wall time. It runs what a grid file runs, in the
 * same order (largest case first; per case: inputs, the oracle, then per backend its standard in BNHD and
 * its flash in BNHD and BHND), timing each part, and checks each result by the error rule as the test does.
 * A webgpu call whose pipelines this process has not compiled yet is run a second time, and the
 * difference is counted as compiling.
 *
 *   node dist/bench/test-time.js f32 full [cpu,webgpu] [Nq,Nk,D]     (XDG_RUNTIME_DIR and LP_* as CI sets them)
 * The last argument narrows the run to one case of the grid.
 */
import { backward, forward, type DType, type Layout, type Tensor } from '../src/index.js';
import { checkForward } from '../src/problem.js';
import { standardForwardBackward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { webgpuStatus } from '../src/webgpu/device.js';
import { bnhd, GRID_D, GRID_SHAPES, SOFTWARE_ADAPTER_WORK } from '../test/spec.js';
import { assertWithinRule, inputs, maxError, relayout, type Case } from '../test/util.js';

const [dtype, mode, list, only] = [process.argv[2] as DType, process.argv[3], process.argv[4] ?? 'cpu,webgpu', process.argv[5]];
const causal = mode === 'causal';
const backends = list.split(',') as ('cpu' | 'webgpu')[];
const status = await webgpuStatus();
const software = status.ok && status.gpu.software;

const totals = new Map<string, number>();
function cpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}
async function timed<T>(part: string, f: () => Promise<T> | T): Promise<T> {
  const t0 = cpu();
  const r = await f();
  totals.set(part, (totals.get(part) ?? 0) + cpu() - t0);
  return r;
}

type Results = Record<'out' | 'lse' | 'dq' | 'dk' | 'dv', Float64Array>;
const seen = new Set<string>();

async function run(backend: string, algorithm: 'flash' | 'standard', t: ReturnType<typeof inputs>, layout: Layout, c: Case): Promise<Results> {
  const options = { causal, layout, backend: backend as 'cpu', algorithm };
  const once = async () => {
    const f = await forward(t.q, t.k, t.v, options);
    const g = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, options);
    return { f, g };
  };
  const part = `${backend} ${algorithm}`;
  // Pipelines depend on D, dtype, causal, the algorithm and (for flash) the tile choice by shape; a first
  // call of a (D, shape) pair on webgpu is run twice so that compiling is measured apart.
  const key = `${algorithm} ${c.D} ${c.Nq} ${c.Nk} ${layout}`;
  if (backend === 'webgpu' && !seen.has(key)) {
    seen.add(key);
    const t0 = cpu();
    await once();
    const first = cpu() - t0;
    const t1 = cpu();
    await once();
    const second = cpu() - t1;
    totals.set(`${part} compile`, (totals.get(`${part} compile`) ?? 0) + Math.max(0, first - second));
    totals.set(part, (totals.get(part) ?? 0) + second);
  }
  const { f, g } = await timed(part, once);
  return timed('convert+compare', () => ({
    out: bnhd(f.out as Tensor, layout),
    lse: toF64(f.lse as Tensor),
    dq: bnhd(g.dq as Tensor, layout),
    dk: bnhd(g.dk as Tensor, layout),
    dv: bnhd(g.dv as Tensor, layout),
  }));
}

function check(label: string, got: Results, standard: Results, oracle: Results): void {
  assertWithinRule(`${label} out`, maxError(got.out, oracle.out), maxError(standard.out, oracle.out), 2);
  assertWithinRule(`${label} lse`, maxError(got.lse, oracle.lse), maxError(standard.lse, oracle.lse), 2);
  for (const g of ['dq', 'dk', 'dv'] as const) assertWithinRule(`${label} ${g}`, maxError(got[g], oracle[g]), maxError(standard[g], oracle[g]), 3);
}

const cases = GRID_SHAPES.flatMap(([Nq, Nk]) => GRID_D.map((D) => ({ B: 2, H: 3, Hkv: 3, Nq, Nk, D })));
cases.sort((a, b) => b.Nq * b.Nk * b.D - a.Nq * a.Nk * a.D);
if (only) cases.splice(0, cases.length, ...cases.filter((c) => `${c.Nq},${c.Nk},${c.D}` === only));
const perCase: [string, number][] = [];
const start = cpu();
const wall = performance.now();
for (const c of cases) {
  const c0 = cpu();
  const t = await timed('inputs', () => {
    const x = inputs(c, dtype, 'BNHD');
    return { BNHD: x, BHND: { q: relayout(x.q, 'BHND'), k: relayout(x.k, 'BHND'), v: relayout(x.v, 'BHND'), dout: relayout(x.dout, 'BHND') } };
  });
  const oracle = await timed('oracle', () => {
    const { q, k, v, dout } = t.BNHD;
    const p = checkForward(q, k, v, { causal });
    return standardForwardBackward(p, toF64(dout), toF64(q), toF64(k), toF64(v));
  });
  for (const backend of backends) {
    if (backend === 'webgpu' && software && c.Nq * c.Nk * c.D > SOFTWARE_ADAPTER_WORK) continue;
    const standard = await run(backend, 'standard', t.BNHD, 'BNHD', c);
    for (const layout of ['BNHD', 'BHND'] as const) {
      const got = await run(backend, 'flash', t[layout], layout, c);
      await timed('convert+compare', () => check(`${backend} ${layout} ${JSON.stringify(c)}`, got, standard, oracle));
    }
  }
  perCase.push([`Nq=${c.Nq} Nk=${c.Nk} D=${c.D}`, cpu() - c0]);
}
const total = cpu() - start;
const parts = [...totals.values()].reduce((a, b) => a + b, 0);
const lines = [
  `grid ${dtype} causal=${causal} (${backends.join(', ')}): ${parts.toFixed(1)} CPU s as the test runs it (${total.toFixed(1)} with the repeated first calls), ${((performance.now() - wall) / 1000).toFixed(1)} s wall`,
];
for (const [part, s] of [...totals].sort((a, b) => b[1] - a[1])) lines.push(`  ${part.padEnd(24)} ${s.toFixed(1).padStart(7)} s  ${((100 * s) / parts).toFixed(0).padStart(3)} %`);
lines.push('  largest cases:');
for (const [c, s] of perCase.sort((a, b) => b[1] - a[1]).slice(0, 8)) lines.push(`    ${c.padEnd(24)} ${s.toFixed(1).padStart(7)} s`);
process.stdout.write(lines.join('\n') + '\n');
process.exit(0);
