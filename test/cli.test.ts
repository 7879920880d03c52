// The `flashattn` command as a user meets it: usage errors are a clean message and exit status 2 (an
// unwritable report folder among them, before any work), and its help refers to what a user has.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = join(ROOT, 'dist', 'src', 'cli', 'main.js');

/** Exit status, stdout and stderr of `flashattn ...args`. */
function flashattn(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('a report folder that cannot be written: one line saying so, exit status 2, nothing run', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'flashattn-cli-'));
  try {
    const file = join(dir, 'a-file');
    writeFileSync(file, '');
    const { code, stdout, stderr } = await flashattn('bench', '--backend', 'cpu', '--out', join(file, 'report'));
    assert.equal(code, 2);
    assert.equal(stdout, '', 'nothing ran');
    assert.match(stderr, /^error: --out .*a-file\/report: cannot write the report there \(ENOTDIR: part of the path is a file\)\n/);
    assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad options: a message and exit status 2', async () => {
  const { code, stderr } = await flashattn('bench', '--repeats', '0');
  assert.equal(code, 2);
  assert.match(stderr, /--repeats/);
  assert.doesNotMatch(stderr, /^\s+at /m);
});

test("bench --help refers to files a user has and says nothing of the developers' notes", async () => {
  const { code, stdout } = await flashattn('bench', '--help');
  assert.equal(code, 0);
  for (const internal of [/PRODUCT\.md/, /\.\.\/shared/, /\bissue \d/i, /seed notebook/i]) assert.doesNotMatch(stdout, internal);
  const paths = [...stdout.matchAll(/\b((?:docs|bench|scripts|src)\/[\w./-]*\w)/g)].map((m) => m[1]);
  assert.ok(paths.length > 0);
  for (const p of paths) assert.ok(existsSync(join(ROOT, p)), `${p}, named in the help, is in the repository`);
});
