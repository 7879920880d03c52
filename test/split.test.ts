// The split of f32 tensors into f16 halves that the subgroup-matrix kernels take f32 in (kernels/split.ts):
// run on any adapter (the passes need no subgroup matrices), checked value by value in f64.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { f16ToNumber } from '../src/f16.js';
import { tensor } from '../src/index.js';
import { checkForward } from '../src/problem.js';
import { defaultGpu } from '../src/webgpu/device.js';
import { Call, splitInputs } from '../src/webgpu/index.js';
import { WEBGPU_SKIPPED, reportWebgpuSkip } from './spec.js';
import { randomTensor } from './util.js';

reportWebgpuSkip();

/** f32 bits of x. */
const bits = (x: number) => new Uint32Array(Float32Array.of(x).buffer)[0];

/** Split `tensors` (f32 values) on the device; their maxima (as f32 bits) and halves, read back. */
async function split(tensors: Float32Array[]): Promise<{ maxima: Uint32Array; halves: Uint16Array[] }> {
  const gpu = await defaultGpu();
  const x = tensor(tensors[0], [1, tensors[0].length / 4, 1, 4], 'f32');
  const call = new Call(checkForward(x, x, x, {}), gpu);
  try {
    const inputs = tensors.map((t, i) => call.buffers.upload(t, `x${i}`));
    const s = await splitInputs(call, inputs, tensors.map((t) => t.length));
    await call.submit(async (enc) => s.encode(enc));
    const maxima = new Uint32Array(await call.buffers.read(s.maxima, 4 * tensors.length, 'q'));
    const halves = await Promise.all(s.halves.map(async (h, i) => new Uint16Array(await call.buffers.read(h, 4 * tensors[i].length, 'q'))));
    return { maxima, halves };
  } finally {
    call.dispose();
  }
}

/** x·2^e = hi + lo to 22 bits (lo's own rounding: half its f16 ulp, 2^-25 at least), hi the f16 nearest x·2^e. */
function checkHalves(x: Float32Array, halves: Uint16Array, e: number, label: string): void {
  const n = x.length;
  for (let i = 0; i < n; i++) {
    const xs = x[i] * 2 ** e;
    const hi = f16ToNumber(halves[i]);
    const lo = f16ToNumber(halves[n + i]);
    const hiUlp = 2 ** (Math.max(Math.floor(Math.log2(Math.abs(hi) || 1)), -14) - 10);
    assert.ok(Math.abs(xs - hi) <= hiUlp / 2, `${label}[${i}]: hi ${hi} for ${xs}`);
    const err = Math.abs(xs - hi - lo);
    assert.ok(err <= Math.max(Math.abs(xs) * 2 ** -22, 2 ** -25), `${label}[${i}]: ${xs} = ${hi} + ${lo} off by ${err}`);
  }
}

test('f32 → f16 halves: maxima, the power of two, and x·2^e = hi + lo to 22 bits', { skip: WEBGPU_SKIPPED }, async () => {
  const plain = randomTensor('f32', [1, 1000, 1, 4], 1, 1).data as Float32Array;
  const wide = Float32Array.from(plain, (x, i) => x * 10 ** ((i % 13) - 6)); // 1e-6 .. 1e6
  wide[17] = -3.0e6; // the largest magnitude, negative
  const tiny = Float32Array.from(plain, (x) => x * 1e-30); // far below f16's range: scaled up
  const { maxima, halves } = await split([plain, wide, tiny]);
  [plain, wide, tiny].forEach((x, i) => {
    const most = x.reduce((m, y) => Math.max(m, Math.abs(y)), 0);
    assert.equal(maxima[i], bits(most), `tensor ${i}'s largest magnitude`);
    const e = 14 - Math.floor(Math.log2(most));
    assert.ok(Math.abs(most * 2 ** e) >= 2 ** 14 && Math.abs(most * 2 ** e) < 2 ** 15, 'the largest lands in [2^14, 2^15)');
    checkHalves(x, halves[i], e, `tensor ${i}`);
  });
});

test('f32 → f16 halves: a NaN or an infinity leaves the scaling of the rest as it is, and a NaN stays one', { skip: WEBGPU_SKIPPED }, async () => {
  const x = randomTensor('f32', [1, 64, 1, 4], 2, 1e-3).data as Float32Array;
  const clean = x.slice();
  x[5] = NaN;
  x[9] = Infinity;
  const { maxima, halves } = await split([x, clean]);
  assert.equal(maxima[0], maxima[1], 'the largest finite magnitude');
  assert.ok(Number.isNaN(f16ToNumber(halves[0][5])), 'hi of the NaN');
  const e = 14 - Math.floor(Math.log2(clean.reduce((m, y) => Math.max(m, Math.abs(y)), 0)));
  const finite = (h: Uint16Array) => h.filter((_, i) => i % x.length !== 5 && i % x.length !== 9);
  checkHalves(
    clean.filter((_, i) => i !== 5 && i !== 9),
    finite(halves[0]),
    e,
    'beside a NaN',
  );
});
