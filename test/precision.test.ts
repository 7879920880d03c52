// options.precision: 'high' runs f32 on the tensor cores, split into f16 halves, where the adapter has f16
// subgroup matrices (an H100: bench/gpu.sh tests); elsewhere it runs as 'highest'. Both are held to the
// correctness rule against the float64 oracle, on shapes of the grid whose D suits the split kernel.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ValueError, forward, tensor } from '../src/index.js';
import { toF64 } from '../src/tensor.js';
import { webgpuStatus } from '../src/webgpu/device.js';
import { SOFTWARE_ADAPTER_WORK, WEBGPU_SKIPPED, checkInputs, reportWebgpuSkip } from './spec.js';
import { inputs, randomTensor, type Case } from './util.js';

const status = await webgpuStatus();
const software = status.ok && status.gpu.software;
const target = { backend: 'webgpu' as const };
const options = { precision: 'high' as const };

test('options.precision must be highest or high', async () => {
  const x = randomTensor('f32', [1, 4, 1, 8], 1);
  await assert.rejects(forward(x, x, x, { precision: 'medium' as 'high' }), (e: Error) => e instanceof ValueError && /options\.precision/.test(e.message));
});

describe('precision high: f32 on the webgpu backend', () => {
  reportWebgpuSkip();
  const shapes: Array<[number, number]> = [
    [113, 203],
    [256, 512],
    [1023, 1024],
  ];
  for (const [Nq, Nk] of shapes) {
    for (const D of [16, 64, 128]) {
      const c: Case = { B: 2, H: 3, Hkv: 3, Nq, Nk, D };
      const large = software && Nq * Nk * D > SOFTWARE_ADAPTER_WORK;
      const skip = WEBGPU_SKIPPED ?? (large ? 'too large for a software WebGPU adapter; runs on a GPU adapter' : undefined);
      test(`Nq=${Nq} Nk=${Nk} D=${D}, causal off and on, both layouts`, { skip }, async () => {
        for (const causal of [false, true]) {
          for (const layout of ['BNHD', 'BHND'] as const) {
            await checkInputs(`high ${layout} causal=${causal} Nq=${Nq} Nk=${Nk} D=${D}`, inputs(c, 'f32', layout), { ...options, causal, layout }, target);
          }
        }
      });
    }
  }

  test('logits of ±1e4 (a one-hot row: P = 1 in the backward, from L)', { skip: WEBGPU_SKIPPED }, async () => {
    const c: Case = { B: 1, H: 2, Hkv: 2, Nq: 67, Nk: 131, D: 16 };
    const t = inputs(c, 'f32', 'BNHD');
    const big = { ...t, q: randomTensor('f32', [1, 67, 2, 16], 11, 100), k: randomTensor('f32', [1, 131, 2, 16], 12, 100) };
    const got = await checkInputs('high ±1e4', big, options, target);
    assert.ok(toF64(got.lse).some((l) => Math.abs(l) > 1000), 'lse carries the large logits');
  });

  test('a NaN in one query row stays in that row, and the others do not move', { skip: WEBGPU_SKIPPED }, async () => {
    const c: Case = { B: 2, H: 3, Hkv: 3, Nq: 130, Nk: 140, D: 32 };
    const { q, k, v } = inputs(c, 'f32', 'BNHD');
    const clean = await forward(q, k, v, { ...target, ...options });
    const poisoned = (q.data as Float32Array).slice();
    const at = ((1 * c.Nq + 77) * c.H + 2) * c.D + 5;
    poisoned[at] = NaN;
    const got = await forward(tensor(poisoned, q.shape), k, v, { ...target, ...options });
    const [a, b] = [toF64(got.out), toF64(clean.out)];
    const row = Math.floor(at / c.D) * c.D;
    for (let i = 0; i < a.length; i++) {
      if (i >= row && i < row + c.D) assert.ok(Number.isNaN(a[i]), 'the poisoned row is NaN');
      else assert.equal(a[i], b[i], `out[${i}]`);
    }
  });
});
