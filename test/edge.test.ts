// Edge cases on every backend (and the reference's Algorithms 1 and 2 through the API): rows that see no
// key, logits of ±1e4, a NaN confined to its row, grouped-query heads, N = 1, custom scales.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { forward, tensor, type Tensor } from '../src/index.js';
import { toF64 } from '../src/tensor.js';
import { BACKENDS, checkInputs, reportWebgpuSkip } from './spec.js';
import { inputs, randomTensor, type Case } from './util.js';

const TARGETS = [...BACKENDS.map((backend) => ({ backend })), { backend: 'reference' as const }];
reportWebgpuSkip();

/** Rows of a (B, N, H, D) tensor for which pred(b, n, h) holds, as f64 values. */
function rows(t: Tensor, pred: (b: number, n: number, h: number) => boolean): number[] {
  const [B, N, H, D] = t.shape;
  const x = toF64(t);
  const out: number[] = [];
  for (let b = 0; b < B; b++)
    for (let n = 0; n < N; n++)
      for (let h = 0; h < H; h++) if (pred(b, n, h)) out.push(...x.subarray(((b * N + n) * H + h) * D, ((b * N + n) * H + h + 1) * D));
  return out;
}

for (const target of TARGETS) {
  describe(`edge cases: ${target.backend}`, () => {
    for (const dtype of ['f32', 'f16'] as const) {
      test(`${dtype}: rows that see no key give out = 0, lse = −∞ and zero gradients`, async () => {
        // causal with Nq > Nk, bottom-right aligned: query i sees keys j ≤ i − (Nq − Nk); rows 0..Nq−Nk−1 see none.
        const c: Case = { B: 2, H: 3, Hkv: 3, Nq: 150, Nk: 70, D: 24 };
        const got = await checkInputs(`${target.backend} ${dtype}`, inputs(c, dtype, 'BNHD'), { causal: true }, target);
        const blind = (_b: number, n: number) => n < c.Nq - c.Nk;
        assert.ok(rows(got.out, blind).every((x) => x === 0), 'out of a row that sees no key is 0');
        assert.ok(rows(got.dq, blind).every((x) => x === 0), 'dq of a row that sees no key is 0');
        const lse = toF64(got.lse);
        for (let bh = 0; bh < c.B * c.H; bh++) {
          for (let n = 0; n < c.Nq; n++) assert.equal(lse[bh * c.Nq + n] === -Infinity, n < c.Nq - c.Nk, `lse row ${n}`);
        }
      });

      // The reference backend computes in f64 and rounds the lse it returns to f32 for these dtypes, so its
      // backward cannot recover P to better than L's f32 ulp (1e-3 at 1e4); its ±1e4 case runs in f64
      // in reference.test.ts instead.
      test(`${dtype}: logits of ±1e4 do not overflow`, { skip: target.backend === 'reference' ? 'f64 only: see reference.test.ts' : undefined }, async () => {
        // |q|, |k| ~ 100 and D = 16: scaled logits reach ±1e4, where exp overflows without the running max.
        const c: Case = { B: 1, H: 2, Hkv: 2, Nq: 67, Nk: 131, D: 16 };
        const t = inputs(c, dtype, 'BNHD');
        const big = { ...t, q: randomTensor(dtype, [1, 67, 2, 16], 11, 100), k: randomTensor(dtype, [1, 131, 2, 16], 12, 100) };
        for (const causal of [false, true]) {
          const got = await checkInputs(`${target.backend} ${dtype} causal=${causal}`, big, { causal }, target);
          for (const x of [got.out, got.dq, got.dk, got.dv]) assert.ok(toF64(x).every(Number.isFinite), 'all finite');
          const lse = toF64(got.lse);
          assert.ok(lse.some((l) => Math.abs(l) > 1000) && lse.every(Number.isFinite), 'lse carries the large logits');
        }
      });
    }

    // D = 32: also the subgroup-matrix kernels where the adapter has them (f32 there: split into f16 halves).
    for (const algorithm of ['flash', 'standard'] as const) for (const D of [20, 32]) test(`${algorithm}: a NaN in one query row stays in that row, D = ${D}`, async () => {
      const c: Case = { B: 2, H: 3, Hkv: 3, Nq: 130, Nk: 140, D };
      const { q, k, v } = inputs(c, 'f32', 'BNHD');
      const options = { ...target, algorithm };
      const clean = await forward(q, k, v, options);
      const poisoned = q.data.slice();
      const [b0, n0, h0] = [1, 77, 2];
      poisoned[((b0 * c.Nq + n0) * c.H + h0) * c.D + 5] = NaN;
      const got = await forward(tensor(poisoned, q.shape), k, v, options);
      const hit = (b: number, n: number, h: number) => b === b0 && n === n0 && h === h0;
      assert.ok(rows(got.out, hit).every(Number.isNaN), 'the poisoned row is NaN');
      assert.deepEqual(rows(got.out, (b, n, h) => !hit(b, n, h)), rows(clean.out, (b, n, h) => !hit(b, n, h)), 'every other row is unchanged');
      const lse = toF64(got.lse);
      lse.forEach((l, i) => assert.equal(Number.isNaN(l), i === (b0 * c.H + h0) * c.Nq + n0, `lse[${i}]`));
    });

    for (const [Nq, Nk] of [
      [1, 300],
      [300, 1],
      [1, 1],
    ]) {
      test(`Nq=${Nq} Nk=${Nk}, causal on and off`, async () => {
        for (const causal of [false, true]) {
          await checkInputs(`${target.backend} causal=${causal}`, inputs({ B: 2, H: 3, Hkv: 3, Nq, Nk, D: 33 }, 'f32', 'BNHD'), { causal }, target);
        }
      });
    }

    test('grouped-query and multi-query heads, both layouts', async () => {
      for (const Hkv of [1, 2]) {
        for (const layout of ['BNHD', 'BHND'] as const) {
          for (const causal of [false, true]) {
            const c: Case = { B: 2, H: 4, Hkv, Nq: 97, Nk: 161, D: 40 };
            await checkInputs(`${target.backend} Hkv=${Hkv} ${layout} causal=${causal}`, inputs(c, 'f32', layout), { causal, layout }, target);
          }
        }
      }
    });

    test('few keys for many rows (P near 1: dV sums many rows of dO)', async () => {
      // One or two keys shared by a GQA group's 4 heads of 300 rows: dV_j = Σ_r P_rj dO_r over 1200 rows
      // whose P is 1 (or about 1/2). Summed in f32 runs of rows, dV's error was 2.5–4.4× the standard's.
      for (const Nk of [1, 2]) {
        for (const seed of [1, 2]) {
          const c: Case = { B: 1, H: 8, Hkv: 2, Nq: 300, Nk, D: 32 };
          await checkInputs(`${target.backend} Nk=${Nk} seed ${seed}`, inputs(c, 'f32', 'BNHD', seed), {}, target);
        }
      }
    });

    test('custom softmax scales, negative included', async () => {
      for (const scale of [0.5, -0.3, 0]) {
        await checkInputs(`${target.backend} scale=${scale}`, inputs({ B: 1, H: 2, Hkv: 2, Nq: 45, Nk: 77, D: 19 }, 'f32', 'BNHD'), { scale }, target);
      }
    });
  });
}
