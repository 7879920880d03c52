// forward() on GPUBuffer tensors with options.out / options.lse: the results are written into the
// caller's buffers (which may hold anything before the call) with the same bits as into new ones, on
// every kernel family and path (decode, register-tiled, portable, standard, packed sequences, rows that
// see no key), and the buffers are checked (shape, dtype, size, usage, not an input).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DTypeError, ShapeError, ValueError, backward, forward, webgpuDevice, type AttentionOptions, type GpuTensor } from '../src/index.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { inputs, onDevice, type Case } from './util.js';

reportWebgpuSkip();

/** A result buffer of `shape` filled with 0xFF bytes (NaN in f32 and f16): what a kernel leaves unwritten shows. */
function garbage(device: GPUDevice, dtype: 'f32' | 'f16', shape: number[], usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST): GpuTensor {
  const bytes = Math.ceil((shape.reduce((a, b) => a * b, 1) * (dtype === 'f16' ? 2 : 4)) / 4) * 4;
  const buffer = device.createBuffer({ size: bytes, usage: usage | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(buffer, 0, new Uint8Array(bytes).fill(0xff));
  return { data: buffer, dtype, shape };
}

/** The bytes of a GpuTensor's elements. */
async function bytesOf(device: GPUDevice, t: GpuTensor): Promise<Uint8Array> {
  const n = t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'f16' ? 2 : 4);
  const size = Math.ceil(n / 4) * 4;
  const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(t.data, 0, staging, 0, size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Uint8Array(staging.getMappedRange().slice(0, n));
  staging.destroy();
  return out;
}

type OutputCase = Case & { dtype: 'f32' | 'f16'; what: string; options?: AttentionOptions };

const CASES: OutputCase[] = [
  { what: 'decode, split keys, GQA', B: 2, H: 8, Hkv: 2, Nq: 1, Nk: 2100, D: 64, dtype: 'f16' },
  { what: 'decode, causal rows that see no key', B: 1, H: 4, Hkv: 4, Nq: 6, Nk: 3, D: 40, dtype: 'f32', options: { causal: true } },
  { what: 'decode with a window and ALiBi', B: 1, H: 2, Hkv: 1, Nq: 2, Nk: 300, D: 16, dtype: 'f32', options: { window: [40, 0], alibiSlopes: Float32Array.of(0.1, 0.3) } },
  { what: 'register-tiled forward, causal', B: 2, H: 3, Hkv: 1, Nq: 70, Nk: 90, D: 24, dtype: 'f32', options: { causal: true } },
  { what: 'register-tiled forward, f16, BHND', B: 1, H: 2, Hkv: 2, Nq: 40, Nk: 33, D: 32, dtype: 'f16', options: { layout: 'BHND' } },
  { what: 'forward, row blocks the block mask leaves empty', B: 1, H: 2, Hkv: 2, Nq: 64, Nk: 64, D: 16, dtype: 'f32', options: { blockMask: { data: Uint8Array.of(1, 0, 0, 0), shape: [1, 1, 2, 2], blockSize: [32, 32] } } },
  { what: 'portable forward (D past 512)', B: 1, H: 1, Hkv: 1, Nq: 20, Nk: 12, D: 520, dtype: 'f32' },
  { what: 'standard attention', B: 1, H: 2, Hkv: 1, Nq: 30, Nk: 20, D: 8, dtype: 'f32', options: { algorithm: 'standard', causal: true } },
  {
    what: 'packed sequences, one without keys and one without queries',
    B: 1, H: 2, Hkv: 2, Nq: 9, Nk: 7, D: 8, dtype: 'f32',
    options: { cuSeqlensQ: Int32Array.of(0, 4, 4, 9), cuSeqlensK: Int32Array.of(0, 0, 3, 7) },
  },
];

if (BACKENDS.includes('webgpu')) {
  describe('forward() into the caller\'s buffers (options.out, options.lse)', () => {
    for (const c of CASES) {
      test(`${c.what}: the same bits as in new buffers, whatever the buffers held`, async () => {
        const device = await webgpuDevice();
        const layout = c.options?.layout ?? 'BNHD';
        const t = inputs(c, c.dtype, layout);
        const [q, k, v] = [onDevice(device, t.q), onDevice(device, t.k), onDevice(device, t.v)];
        const options = { ...c.options, backend: 'webgpu' as const };
        const fresh = await forward(q, k, v, options);
        const out = garbage(device, c.dtype, [...q.shape]);
        const lse = garbage(device, 'f32', [c.B, c.H, c.Nq]);
        const mine = await forward(q, k, v, { ...options, out, lse });
        assert.equal(mine.out.data, out.data, 'out is the caller\'s buffer');
        assert.equal(mine.lse.data, lse.data, 'lse is the caller\'s buffer');
        assert.deepEqual(mine.out.shape, fresh.out.shape);
        assert.deepEqual(await bytesOf(device, mine.out), await bytesOf(device, fresh.out as GpuTensor), 'out');
        assert.deepEqual(await bytesOf(device, mine.lse), await bytesOf(device, fresh.lse as GpuTensor), 'lse');
        // Only one of them: the other is made as before.
        const outOnly = await forward(q, k, v, { ...options, out: garbage(device, c.dtype, [...q.shape]) });
        assert.deepEqual(await bytesOf(device, outOnly.lse as GpuTensor), await bytesOf(device, fresh.lse as GpuTensor), 'lse beside a given out');
        // backward() takes the forward's options and ignores these two.
        if (!c.options?.cuSeqlensQ && c.options?.algorithm !== 'standard') {
          const dO = onDevice(device, t.dout);
          const a = await backward(dO, q, k, v, fresh.out as GpuTensor, fresh.lse as GpuTensor, options);
          const b = await backward(dO, q, k, v, fresh.out as GpuTensor, fresh.lse as GpuTensor, { ...options, out, lse });
          assert.deepEqual(await bytesOf(device, b.dq), await bytesOf(device, a.dq), 'dq');
        }
      });
    }

    test('a decode loop through the same buffers: every step right, the kept sizes never mixed up', async () => {
      const device = await webgpuDevice();
      const steps = [
        { B: 1, H: 4, Hkv: 1, Nq: 1, Nk: 100, D: 16 },
        { B: 1, H: 4, Hkv: 1, Nq: 1, Nk: 700, D: 16 },
        { B: 1, H: 4, Hkv: 1, Nq: 1, Nk: 100, D: 16 },
      ];
      const out = garbage(device, 'f32', [1, 1, 4, 16]);
      const lse = garbage(device, 'f32', [1, 4, 1]);
      const expected: Uint8Array[] = [];
      const pending: Promise<unknown>[] = [];
      for (const [i, s] of steps.entries()) {
        const t = inputs(s, 'f32', 'BNHD', 10 + i);
        const [q, k, v] = [onDevice(device, t.q), onDevice(device, t.k), onDevice(device, t.v)];
        expected.push(await bytesOf(device, (await forward(q, k, v)).out as GpuTensor));
        // Each step's own out: queued back to back without waiting, then read.
        const own = garbage(device, 'f32', [1, 1, 4, 16]);
        pending.push(forward(q, k, v, { out: own, lse }).then(async (r) => assert.deepEqual(await bytesOf(device, r.out), expected[i], `step ${i}`)));
        await forward(q, k, v, { out, lse });
        assert.deepEqual(await bytesOf(device, out), expected[i], `step ${i} into the shared buffer`);
      }
      await Promise.all(pending);
    });

    test('bad buffers are typed errors naming the option', async () => {
      const device = await webgpuDevice();
      const c = { B: 1, H: 2, Hkv: 1, Nq: 1, Nk: 40, D: 8 };
      const t = inputs(c, 'f32', 'BNHD');
      const [q, k, v] = [onDevice(device, t.q), onDevice(device, t.k), onDevice(device, t.v)];
      const out = garbage(device, 'f32', [1, 1, 2, 8]);
      const named = (name: string, type: new (...a: never[]) => Error) => (e: unknown) => e instanceof type && e.message.includes(name);
      await assert.rejects(forward(q, k, v, { out: garbage(device, 'f32', [1, 2, 2, 8]) }), named('options.out.shape', ShapeError));
      await assert.rejects(forward(q, k, v, { out: garbage(device, 'f16', [1, 1, 2, 8]) }), named('options.out.dtype', DTypeError));
      await assert.rejects(forward(q, k, v, { lse: garbage(device, 'f32', [1, 1, 2]) }), named('options.lse.shape', ShapeError));
      await assert.rejects(forward(q, k, v, { out: q }), named('options.out.data', ValueError));
      await assert.rejects(forward(q, k, v, { out, lse: { data: out.data, dtype: 'f32', shape: [1, 2, 1] } }), named('options.lse.data', ValueError));
      await assert.rejects(forward(q, k, v, { out: { ...out, data: device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE }) } }), named('options.out.data', ShapeError));
      const unbindable = garbage(device, 'f32', [1, 1, 2, 8], GPUBufferUsage.COPY_SRC);
      await assert.rejects(forward(q, k, v, { out: unbindable }), named('options.out.data', ValueError));
      await assert.rejects(forward(q, k, v, { out: { data: new Float32Array(16), dtype: 'f32', shape: [1, 1, 2, 8] } as unknown as GpuTensor }), named('options.out', ValueError));
      await assert.rejects(forward(t.q, t.k, t.v, { backend: 'webgpu', out }), named('options.out', ValueError));
      // Packed sequences copy their results in: COPY_DST is needed too.
      const packed = { cuSeqlensQ: Int32Array.of(0, 1), cuSeqlensK: Int32Array.of(0, 40) };
      const storageOnly = device.createBuffer({ size: 64, usage: GPUBufferUsage.STORAGE });
      await assert.rejects(forward(q, k, v, { ...packed, out: { data: storageOnly, dtype: 'f32', shape: [1, 1, 2, 8] } }), named('options.out.data', ValueError));
    });
  });
}
