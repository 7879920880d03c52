// The webgpu backend beyond the shared spec: zero-copy GPUBuffers in and out, the caller's own device,
// typed errors for a buffer of another device and for f16 on a device without shader-f16, and the
// allocator's accounting (flash never allocates an Nq×Nk buffer; the standard baseline's matrices are in
// the input dtype; an input over the binding limit is an OutOfMemoryError naming it), and the standard
// baseline rounding where the cpu's does.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DTypeError, MemoryTracker, OutOfMemoryError, ValueError, backward, forward, tensor, webgpuDevice, type AttentionOptions, type GpuTensor, type Tensor } from '../src/index.js';
import { keeps } from '../src/modifiers.js';
import { checkForward } from '../src/problem.js';
import { standardForward } from '../src/reference/index.js';
import { toF64 } from '../src/tensor.js';
import { defaultGpu, gpuEntry } from '../src/webgpu/device.js';
import { forwardChoice } from '../src/webgpu/index.js';
import { standardChunks, webgpuStandardForward } from '../src/webgpu/standard.js';
import { BACKENDS, reportWebgpuSkip } from './spec.js';
import { assertWithinRule, inputs, maxError, onDevice, type Case } from './util.js';

reportWebgpuSkip();

const c = { B: 2, H: 3, Hkv: 3, Nq: 70, Nk: 90, D: 24 };

async function readBack(device: GPUDevice, t: GpuTensor): Promise<Float32Array> {
  const staging = device.createBuffer({ size: t.data.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(t.data, 0, staging, 0, t.data.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(staging.getMappedRange().slice(0));
  staging.destroy();
  return out.subarray(0, t.shape.reduce((a, b) => a * b, 1));
}

/** The spacing of f16 values at magnitude x (subnormals: 2^-24). */
function ulp16(x: number): number {
  return Math.abs(x) < 2 ** -14 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(Math.abs(x))) - 10);
}

/** A second device from the same adapter, optionally without shader-f16. */
async function otherDevice(withF16: boolean): Promise<GPUDevice> {
  const entry = await gpuEntry();
  const adapter = await entry!.gpu.requestAdapter();
  return adapter!.requestDevice({ requiredFeatures: withF16 && adapter!.features.has('shader-f16') ? ['shader-f16'] : [] });
}

if (BACKENDS.includes('webgpu')) {
  describe('webgpu', () => {
    test('GPUBuffers in, GPUBuffers out, equal to the typed-array path', async () => {
      const device = await webgpuDevice();
      const { q, k, v } = inputs(c, 'f32', 'BNHD');
      const host = await forward(q, k, v, { backend: 'webgpu', causal: true });
      const gpu = await forward(onDevice(device, q), onDevice(device, k), onDevice(device, v), { causal: true });
      assert.equal(gpu.backend, 'webgpu');
      assert.ok(gpu.out.data instanceof GPUBuffer, 'out is a GPUBuffer');
      assert.deepEqual(await readBack(device, gpu.out), host.out.data);
      assert.deepEqual(await readBack(device, gpu.lse), host.lse.data);
    });

    // The tiled forward takes f32 (and f16 without subgroup matrices) up to the D whose O_i rows no longer
    // fit its registers; past that the portable kernel runs. Both are held to the error rule here.
    test('f32 forward: the tiled kernel, or the portable one past its head dims, within the rule', async () => {
      const gpu = await defaultGpu();
      for (const [D, kernel] of [
        [64, 'forwardTiled'],
        [59, 'forwardTiled'],
        [700, 'forward'],
      ] as const) {
        const c = { B: 1, H: 2, Hkv: 1, Nq: 37, Nk: 53, D };
        const { q, k, v } = inputs(c, 'f32', 'BHND');
        for (const causal of [false, true]) {
          const p = checkForward(q, k, v, { causal, layout: 'BHND' });
          assert.equal(forwardChoice(p, gpu).kernel, kernel, `D = ${D}`);
          const oracle = standardForward(p, toF64(q), toF64(k), toF64(v));
          const options = { backend: 'webgpu' as const, causal, layout: 'BHND' as const };
          const [flash, standard] = await Promise.all([forward(q, k, v, options), forward(q, k, v, { ...options, algorithm: 'standard' })]);
          for (const name of ['out', 'lse'] as const) {
            assertWithinRule(`D=${D} causal=${causal} ${name}`, maxError(flash[name], oracle[name]), maxError(standard[name], oracle[name]), 2);
          }
        }
      }
    });

    test('typed arrays backed by a SharedArrayBuffer are accepted (Dawn writes none to a buffer: they are copied)', async () => {
      const { q, k, v, dout } = inputs(c, 'f32', 'BNHD');
      const cpu = await forward(q, k, v, { backend: 'cpu' });
      const shared = (t: Tensor) => {
        const data = new Float32Array(new SharedArrayBuffer(t.data.byteLength));
        data.set(t.data);
        return tensor(data, t.shape);
      };
      const gpu = await backward(shared(dout), shared(q), k, v, shared(cpu.out), cpu.lse, { backend: 'webgpu' });
      assert.equal(gpu.dq.data.length, q.data.length);
      assert.ok((gpu.dq.data as Float32Array).every(Number.isFinite));
    });

    test("the caller's own device (options.device)", async () => {
      const device = await otherDevice(false);
      const { q, k, v } = inputs(c, 'f32', 'BNHD');
      const mine = await forward(onDevice(device, q), onDevice(device, k), onDevice(device, v), { device });
      const host = await forward(q, k, v, { backend: 'webgpu' });
      // The two devices may have different limits, hence other tiles and other roundings: equal to f32 level.
      const got = await readBack(device, mine.out);
      let err = 0;
      got.forEach((x, i) => (err = Math.max(err, Math.abs(x - host.out.data[i]))));
      assert.ok(err < 1e-6, `the caller's device agrees with the library's: ${err}`);
      device.destroy();
    });

    test('a GPUBuffer of another device is a typed error naming it', async () => {
      const device = await otherDevice(false);
      const { q, k, v } = inputs(c, 'f32', 'BNHD');
      await assert.rejects(forward(onDevice(device, q), onDevice(device, k), onDevice(device, v)), (e: unknown) => {
        assert.ok(e instanceof ValueError, String(e));
        assert.equal(e.argument, 'q.data');
        return true;
      });
      device.destroy();
    });

    test('f16 on a device without shader-f16 is a typed error', async () => {
      const device = await otherDevice(false);
      const { q, k, v } = inputs(c, 'f16', 'BNHD');
      await assert.rejects(forward(q, k, v, { backend: 'webgpu', device }), (e: unknown) => e instanceof DTypeError && e.argument === 'q.dtype');
      device.destroy();
    });

    test('flash peaks far below one Nq×Nk matrix and leaves nothing allocated', async () => {
      const n = 2048;
      const { q, k, v } = inputs({ B: 1, H: 2, Hkv: 2, Nq: n, Nk: n, D: 8 }, 'f32', 'BNHD');
      const memory = new MemoryTracker();
      await forward(q, k, v, { backend: 'webgpu', memory });
      assert.equal(memory.live, 0);
      assert.ok(memory.peak > 0 && memory.peak < (n * n * 4) / 4, `peak ${memory.peak} B`);
    });

    test('an input over the binding limit is an OutOfMemoryError naming that input, and nothing is left allocated', async () => {
      const device = await webgpuDevice();
      const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
      const [D, Nk] = [4, Math.floor(limit / 16) + 1]; // k and v (1, Nk, 1, 4) f32: one element row past the limit
      const q = tensor(new Float32Array(D), [1, 1, 1, D]);
      const k = tensor(new Float32Array(Nk * D), [1, Nk, 1, D]);
      const memory = new MemoryTracker();
      await assert.rejects(forward(q, k, k, { backend: 'webgpu', memory }), (e: unknown) => e instanceof OutOfMemoryError && e.argument === 'k');
      assert.equal(memory.live, 0);
    });

    test('the standard baseline holds S and P of every head, in head chunks when one binding would exceed the limit', async () => {
      const device = await webgpuDevice();
      const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
      // Enough heads that all of S would not fit in one binding; few enough columns to stay quick.
      const n = 2048;
      const H = Math.floor(limit / (n * n * 4)) + 1;
      const { q, k, v } = inputs({ B: 1, H, Hkv: H, Nq: n, Nk: n, D: 4 }, 'f32', 'BNHD');
      const memory = new MemoryTracker();
      const standard = await forward(q, k, v, { backend: 'webgpu', algorithm: 'standard', memory });
      const flash = await forward(q, k, v, { backend: 'webgpu' });
      const matrix = n * n * 4;
      // Each chunk's buffers fit one binding (Dawn rejects a larger one); together they hold every head, as PyTorch's math path does.
      assert.ok(memory.peak >= 2 * H * matrix && memory.peak < 3 * H * matrix, `S and P of all ${H} heads: peak ${memory.peak} B`);
      let err = 0;
      for (let i = 0; i < flash.out.data.length; i++) err = Math.max(err, Math.abs(standard.out.data[i] - flash.out.data[i]));
      assert.ok(err < 1e-5, `standard and flash agree: ${err}`);
    });

    test('the f16 standard baseline holds S and P in f16, chunked by 2-byte heads', async () => {
      const n = 256;
      const c = { B: 1, H: 5, Hkv: 5, Nq: n, Nk: n, D: 8 };
      const { q, k, v } = inputs(c, 'f16', 'BNHD');
      const matrix = n * n * 2; // one head's S in f16
      const whole = new MemoryTracker();
      const all = await webgpuStandardForward(checkForward(q, k, v, { backend: 'webgpu', algorithm: 'standard', memory: whole }), q, k, v);
      // S and P of all heads at 2 bytes an entry (at 4 they alone would be 4·H·matrix).
      assert.ok(whole.peak >= 2 * c.H * matrix && whole.peak < 3 * c.H * matrix, `S and P of all heads in f16: peak ${whole.peak} B`);
      // A binding of 2.5 f16 heads: chunks of 2 heads (an f32 rule would give 1), all of them held.
      assert.deepEqual(standardChunks({ ...c, B: 1, dtype: 'f16' }, 2.5 * matrix).map((ch) => ch.nkv * ch.c), [2, 2, 1]);
      const chunked = new MemoryTracker();
      const two = await webgpuStandardForward(checkForward(q, k, v, { backend: 'webgpu', algorithm: 'standard', memory: chunked }), q, k, v, 2.5 * matrix);
      assert.ok(chunked.peak >= 2 * c.H * matrix && chunked.peak < 3 * c.H * matrix, `S and P of all heads, in chunks: peak ${chunked.peak} B`);
      assert.deepEqual(two.out.data, all.out.data, 'chunking does not change the result');
      assert.deepEqual(two.lse.data, all.lse.data, 'chunking does not change the lse');
    });

    // Both backends' f16 standard attention store S, P (P, dP, dS) in f16, rounded at the same points
    // (to nearest even: f16.ts, and lavapipe's or a GPU's f32 → f16 conversion) from the same f16 inputs.
    // Before each rounding they differ only by accumulation error (f32 with two-level summation here, f64
    // on the cpu): about 2^-19 relative, against f16's spacing of 2^-10, so a stored entry lands on the
    // other f16 neighbour rarely, and then one ulp away. An output element then differs by at most one
    // ulp from its own final rounding plus the flips that reach it, each ulp(P)·|v| ≤ 2^-10·P·|v| (P ≤ 1,
    // a row's P sums to 1): within 2 ulps at the tensor's largest magnitude, and few elements differ at
    // all. (Measured: ≤ 1 ulp, ≤ 1.5% of the elements; with S and P in f32 on the GPU, 55–65% differed.)
    test('f16 standard attention: cpu and webgpu agree to the stored f16 roundings', async () => {
      for (const causal of [false, true]) {
        const { q, k, v, dout } = inputs(c, 'f16', 'BNHD');
        const results = await Promise.all(
          (['cpu', 'webgpu'] as const).map(async (backend) => {
            const options = { backend, algorithm: 'standard' as const, causal };
            const f = await forward(q, k, v, options);
            const g = await backward(dout, q, k, v, f.out, f.lse, options);
            return { out: toF64(f.out), dq: toF64(g.dq), dk: toF64(g.dk), dv: toF64(g.dv) };
          }),
        );
        const [cpu, gpu] = results;
        for (const name of ['out', 'dq', 'dk', 'dv'] as const) {
          const [x, y] = [cpu[name], gpu[name]];
          const unit = ulp16(x.reduce((m, a) => Math.max(m, Math.abs(a)), 0));
          let err = 0;
          let differ = 0;
          x.forEach((a, i) => {
            if (a === y[i]) return;
            differ++;
            err = Math.max(err, Math.abs(a - y[i]));
          });
          const label = `causal=${causal} ${name}`;
          assert.ok(err <= 2 * unit, `${label}: max difference ${err} is ${(err / unit).toFixed(2)} f16 ulps at the tensor's scale (at most 2)`);
          assert.ok(differ <= 0.05 * x.length, `${label}: ${differ} of ${x.length} elements differ (at most 5%: the backends round at the same points)`);
        }
      }
    });

    // Issue 15: a masked entry's P = dS = 0 times a NaN in its row's q must not reach dk (nor dv) of keys
    // that row cannot see, under causal and under the variants' element rule.
    test('flash backward: a NaN in one query row stays in its own dq and in dk, dv of the keys it sees', async () => {
      const g: Case = { B: 2, H: 4, Hkv: 2, Nq: 40, Nk: 50, D: 16 };
      const t = inputs(g, 'f32', 'BNHD');
      const poisoned = (t.q.data as Float32Array).slice();
      const [b0, n0, h0] = [1, 17, 3];
      poisoned[((b0 * g.Nq + n0) * g.H + h0) * g.D + 5] = NaN;
      const bad = tensor(poisoned, t.q.shape);
      const mask = { data: Uint8Array.from({ length: g.Nq * g.Nk }, (_, e) => (e % 7 === 3 ? 0 : 1)), shape: [1, 1, g.Nq, g.Nk] };
      const variants: [string, AttentionOptions][] = [
        ['causal', { causal: true }],
        ['window [12, 4] + mask', { window: [12, 4], mask }],
      ];
      for (const [name, options] of variants) {
        const o: AttentionOptions = { ...options, backend: 'webgpu' };
        const grads = async (q: Tensor) => {
          const f = await forward(q, t.k, t.v, o);
          return backward(t.dout, q, t.k, t.v, f.out, f.lse, o);
        };
        const [clean, got] = [await grads(t.q), await grads(bad)];
        const m = checkForward(t.q, t.k, t.v, options).mods;
        const [dq, dq0] = [toF64(got.dq), toF64(clean.dq)];
        dq.forEach((x, e) => {
          if (Math.floor(e / g.D) === (b0 * g.Nq + n0) * g.H + h0) assert.ok(Number.isNaN(x), `${name}: dq[${e}] of the poisoned row is NaN`);
          else assert.equal(x, dq0[e], `${name}: dq[${e}] as without the NaN`);
        });
        for (const x of ['dk', 'dv'] as const) {
          const [y, y0] = [toF64(got[x]), toF64(clean[x])];
          y.forEach((a, e) => {
            const [b, j, hkv] = [Math.floor(e / (g.Nk * g.Hkv * g.D)), Math.floor(e / (g.Hkv * g.D)) % g.Nk, Math.floor(e / g.D) % g.Hkv];
            const seen = b === b0 && hkv === Math.floor(h0 / (g.H / g.Hkv)) && keeps(m, b0, h0, n0, j, g.Nq, g.Nk);
            if (seen) assert.ok(Number.isNaN(a), `${name}: ${x}[${e}] of key ${j}, which the poisoned row sees, is NaN`);
            else assert.equal(a, y0[e], `${name}: ${x}[${e}] of key ${j} as without the NaN`);
          });
        }
      }
    });

    test('a block mask and a mask changed in place between calls: the next call sees the change (what is kept between calls is checked against the contents)', async () => {
      const g = { B: 1, H: 2, Hkv: 1, Nq: 40, Nk: 50, D: 8 };
      const t = inputs(g, 'f32', 'BNHD');
      const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, e) => ((e * 7 + seed) % 5 === 0 ? 0 : 1));
      const blockMask = { data: pattern(2 * 5 * 7, 1), shape: [1, 2, 5, 7], blockSize: [8, 8] as [number, number] };
      const mask = { data: pattern(40 * 50, 2), shape: [1, 1, 40, 50] };
      const o: AttentionOptions = { backend: 'webgpu', blockMask, mask };
      const run = async (options: AttentionOptions) => {
        const f = await forward(t.q, t.k, t.v, options);
        const b = await backward(t.dout, t.q, t.k, t.v, f.out, f.lse, options);
        return [f.out, f.lse, b.dq, b.dk, b.dv].map((x) => toF64(x));
      };
      // The same results as fresh arrays with the same contents (never seen: nothing kept), every call.
      const fresh = () => run({ ...o, blockMask: { ...blockMask, data: blockMask.data.slice() }, mask: { ...mask, data: mask.data.slice() } });
      for (let call = 0; call < 3; call++) assert.deepEqual(await run(o), await fresh(), `call ${call} with the same arrays`);
      blockMask.data.set(pattern(blockMask.data.length, 3));
      assert.deepEqual(await run(o), await fresh(), 'after the block mask changed in place');
      mask.data.set(pattern(mask.data.length, 4));
      assert.deepEqual(await run(o), await fresh(), 'after the mask changed in place');
      const unchanged = await run(o);
      mask.data[0] ^= 1; // one element: the first row's first key
      const changed = await run(o);
      assert.deepEqual(changed, await fresh(), 'after one element of the mask changed');
      assert.notDeepEqual(changed[0], unchanged[0], 'that element changes out');
    });
  });
}
