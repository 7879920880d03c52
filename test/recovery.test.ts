// After a failed allocation the library stays usable. A stand-in device (a real one behind a Proxy) fails
// an allocation as Dawn reports one, in the call's 'out-of-memory' error scope: the call throws an
// OutOfMemoryError, releases everything, and the next call on that device succeeds. Where the device is
// lost instead (as a driver out of memory outside an allocation loses it), the call throws a
// DeviceLostError, and the library's own device is replaced by a new one for the next call.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeviceLostError, forward, MemoryTracker, OutOfMemoryError, webgpuDevice, type Tensor } from '../src/index.js';
import { gpuEntry } from '../src/webgpu/device.js';
import { reportWebgpuSkip, WEBGPU_SKIPPED } from './spec.js';
import { inputs, maxError } from './util.js';
import { toF64 } from '../src/tensor.js';

reportWebgpuSkip();

const c = { B: 1, H: 2, Hkv: 2, Nq: 64, Nk: 64, D: 16 };
const { q, k, v } = inputs(c, 'f32', 'BNHD');
const reference = await forward(q, k, v, { backend: 'reference' });

function assertCorrect(out: Tensor): void {
  const err = maxError(out, toF64(reference.out));
  assert.ok(err < 1e-5, `out differs from the reference by ${err}`);
}

/**
 * A device of its own from the adapter, behind a Proxy: `onCreateBuffer(n)` runs before the n-th
 * createBuffer (from 1), and `failScope()` makes the next 'out-of-memory' scope popped report an error,
 * as Dawn reports a buffer it could not make.
 */
async function standIn(onCreateBuffer: (n: number, device: GPUDevice, failScope: () => void) => void): Promise<GPUDevice> {
  const adapter = await (await gpuEntry())!.gpu.requestAdapter();
  const device = await adapter!.requestDevice();
  const scopes: GPUErrorFilter[] = [];
  let fail = false;
  let made = 0;
  return new Proxy(device, {
    get(target, prop) {
      if (prop === 'createBuffer') {
        return (descriptor: GPUBufferDescriptor) => {
          onCreateBuffer(++made, target, () => (fail = true));
          return target.createBuffer(descriptor);
        };
      }
      if (prop === 'pushErrorScope') {
        return (filter: GPUErrorFilter) => {
          scopes.push(filter);
          target.pushErrorScope(filter);
        };
      }
      if (prop === 'popErrorScope') {
        return async () => {
          const filter = scopes.pop();
          const error = await target.popErrorScope();
          if (filter === 'out-of-memory' && fail) {
            fail = false;
            return { message: 'vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY (stand-in)' };
          }
          return error;
        };
      }
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

test('an allocation that fails gives an OutOfMemoryError, releases everything, and the next call on the device succeeds', { skip: WEBGPU_SKIPPED }, async () => {
  let failAt = 3; // the third buffer of the first call: q, k and v are made, the output is not
  const device = await standIn((n, _, failScope) => n === failAt && failScope());
  const memory = new MemoryTracker();
  await assert.rejects(forward(q, k, v, { backend: 'webgpu', device, memory }), (e: unknown) => e instanceof OutOfMemoryError && e.argument === 'q');
  assert.equal(memory.live, 0, 'the failed call released every buffer it made');
  failAt = 0;
  const { out } = await forward(q, k, v, { backend: 'webgpu', device, memory });
  assertCorrect(out);
  assert.equal(memory.live, 0);
  device.destroy();
});

test("a device lost during a call gives a DeviceLostError naming the caller's device", { skip: WEBGPU_SKIPPED }, async () => {
  const device = await standIn((n, target) => n === 3 && target.destroy());
  const memory = new MemoryTracker();
  await assert.rejects(forward(q, k, v, { backend: 'webgpu', device, memory }), (e: unknown) => {
    assert.ok(e instanceof DeviceLostError, String(e));
    assert.equal(e.argument, 'options.device');
    assert.match(e.message, /lost \(destroyed/);
    return true;
  });
  assert.equal(memory.live, 0);
  const { out } = await forward(q, k, v, { backend: 'webgpu' }); // the library's own device is not affected
  assertCorrect(out);
});

test("the library's own device lost during a call: a DeviceLostError, then the next call runs on a new device", { skip: WEBGPU_SKIPPED }, async () => {
  const lost = await webgpuDevice();
  const createBuffer = lost.createBuffer.bind(lost);
  let made = 0;
  // An own property in front of the prototype's method: the device dies at its third buffer of the call.
  Object.defineProperty(lost, 'createBuffer', {
    value: (descriptor: GPUBufferDescriptor) => {
      if (++made === 3) lost.destroy();
      return createBuffer(descriptor);
    },
  });
  await assert.rejects(forward(q, k, v, { backend: 'webgpu' }), (e: unknown) => e instanceof DeviceLostError && e.argument === 'options.backend' && /replaced by a new one/.test(e.message));
  const { out } = await forward(q, k, v, { backend: 'webgpu' });
  assertCorrect(out);
  assert.notEqual(await webgpuDevice(), lost, 'a new device');
});
