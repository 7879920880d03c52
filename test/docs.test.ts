// What a user reads refers to what a user has: every file of the repository that the README, bench's
// README, docs/ and the report's text name exists, and none of them sends the reader to the developers'
// own notes (files outside the repository, issue numbers). A test run without an adapter says how to
// get one.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { webgpuSkipMessage } from './util.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

/** What sends a reader outside what they have: the developers' shared folder and planning notes, issue numbers. */
const INTERNAL = [/PRODUCT\.md/, /\.\.\/shared\//, /\bissue \d/i, /seed notebook/i, /\.\.\/seeds\//];

/** Files the docs name that a script makes, so not in the repository: bench/peers/pack.sh's. */
const MADE = new Set(['bench/peers/ort-web.tar.xz']);

const DOCS = ['README.md', 'bench/README.md', ...readdirSync(join(ROOT, 'docs')).map((f) => `docs/${f}`)];

for (const doc of DOCS) {
  test(`${doc}: every file it names is in the repository, and it names no developers' notes`, () => {
    const text = read(doc);
    for (const internal of INTERNAL) assert.doesNotMatch(text, internal);
    // Paths from the repository's root, or from the document's folder where they start with ../
    const paths = [...text.matchAll(/(?<![\w./-])((?:\.\.\/)*(?:src|test|bench|docs|scripts|\.ci)\/[\w./-]*\w)/g)].map((m) => m[1]);
    assert.ok(paths.length > 0);
    const missing = paths.filter((p) => !MADE.has(p) && !existsSync(p.startsWith('../') ? join(ROOT, dirname(doc), p) : join(ROOT, p)));
    assert.deepEqual(missing, [], `named in ${doc} but not in the repository`);
  });
}

test("the report's text (page, captions, table notes) names no developers' notes", () => {
  for (const file of ['src/cli/html.ts', 'src/cli/charts.ts', 'src/cli/tables.ts', 'src/cli/report.ts', 'src/cli/program.ts']) {
    for (const internal of INTERNAL) assert.doesNotMatch(read(file), internal, file);
  }
});

test('without an adapter, the test run says how to get one', () => {
  const message = webgpuSkipMessage('none from webgpu (Dawn)');
  assert.match(message, /none from webgpu \(Dawn\)/);
  assert.match(message, /bash scripts\/install-lavapipe\.sh/);
  assert.match(message, /XDG_RUNTIME_DIR/);
  assert.ok(existsSync(join(ROOT, 'scripts', 'install-lavapipe.sh')));
});
