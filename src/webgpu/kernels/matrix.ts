/**
 * What the subgroup-matrix (tensor core) kernels share: the 16×16×16 f16→f32 fragment types, the WGSL
 * enables, and the helpers that unroll their loops at generation time (these kernels never run on
 * lavapipe, so unrolling costs no compile time there).
 */

/** The M = N = K of every matrix operation. */
export const FRAGMENT = 16;

export const LEFT = 'subgroup_matrix_left<f16, 16, 16>';
export const RIGHT = 'subgroup_matrix_right<f16, 16, 16>';
export const RESULT = 'subgroup_matrix_result<f32, 16, 16>';

export const MATRIX_ENABLES = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;`;

export const LOG2E_WGSL = `const LOG2E = 1.4426950408889634;
const LN2 = 0.6931471805599453;`;

/** [0, n). */
export const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);
/** Every (i, j) with i < a, j < b, i major. */
export const grid = (a: number, b: number): Array<readonly [number, number]> => range(a).flatMap((i) => range(b).map((j) => [i, j] as const));
/** The lines `f(i)` for i < n, joined by newlines. */
export const lines = (n: number, f: (i: number) => string): string => range(n).map(f).join('\n');

/**
 * `x = op(x, shuffled x)` over the invocations that share a row: lanes `stride` apart, for SHARES =
 * SGS / stride lanes per row (no shuffle when one lane owns a row).
 */
export function combine(x: string, op: (a: string, b: string) => string, stride: number, shares: number): string {
  return range(Math.log2(shares))
    .map((i) => `${x} = ${op(x, `subgroupShuffleXor(${x}, ${stride << i}u)`)};`)
    .join('\n    ');
}
