// Memory: the cpu flash kernels never allocate anything of size Nq×Nk; the standard baseline does.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryTracker, backward, forward } from '../src/index.js';
import { inputs } from './util.js';

test('flash forward and backward peak far below one Nq×Nk matrix; standard holds several', async () => {
  const c = { B: 1, H: 2, Hkv: 2, Nq: 2048, Nk: 2048, D: 8 };
  const { q, k, v, dout } = inputs(c, 'f32', 'BNHD');
  const scores = c.Nq * c.Nk * 4; // one head's S in f32: 16 MiB
  const peak = async (algorithm: 'flash' | 'standard') => {
    const fwd = new MemoryTracker();
    const f = await forward(q, k, v, { algorithm, memory: fwd });
    const bwd = new MemoryTracker();
    await backward(dout, q, k, v, f.out, f.lse, { algorithm, memory: bwd });
    assert.equal(fwd.live, 0, 'nothing is left counted after a call');
    assert.equal(bwd.live, 0, 'nothing is left counted after a call');
    return { forward: fwd.peak, backward: bwd.peak };
  };
  const flash = await peak('flash');
  const standard = await peak('standard');
  assert.ok(flash.forward < scores / 4, `flash forward peak ${flash.forward} B`);
  assert.ok(flash.backward < scores / 4, `flash backward peak ${flash.backward} B`);
  assert.ok(standard.forward >= 2 * c.H * scores, `standard forward holds S and P: ${standard.forward} B`);
  assert.ok(standard.backward >= 3 * c.H * scores, `standard backward holds P, dP and dS: ${standard.backward} B`);
});
