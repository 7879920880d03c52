// The package as a user gets it: `npm pack` makes the tarball (from the build `npm test` has just made),
// a user's project depends on it (unpacked into its node_modules, offline: @webgpu/types linked from this
// repository's node_modules), and the README's TypeScript examples compile with `strict` and the default
// `skipLibCheck: false`, then run: on the cpu where no WebGPU is there, as on a machine without a GPU
// (the project has no `webgpu` package).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
/** npm, quiet and offline: packing a folder needs no registry. */
const NPM_ENV = { ...process.env, npm_config_offline: 'true', npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };

const NO_NPM = await run('npm', ['--version'], { env: NPM_ENV }).then(
  () => undefined,
  (e: Error) => `npm cannot be run here (${e.message.split('\n')[0]})`,
);

let dir: string;
let files: string[];
let app: string;

before(async () => {
  if (NO_NPM) return;
  dir = mkdtempSync(join(tmpdir(), 'flashattn-package-'));
  // --ignore-scripts: `npm test` built dist already (prepack would build it again under the running tests).
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: ROOT, env: NPM_ENV });
  const [packed] = JSON.parse(stdout) as { filename: string; files: { path: string }[] }[];
  files = packed.files.map((f) => f.path);
  app = join(dir, 'app');
  const pkg = join(app, 'node_modules', 'flashattn');
  mkdirSync(pkg, { recursive: true });
  mkdirSync(join(app, 'node_modules', '@webgpu'));
  await run('tar', ['-xzf', join(dir, packed.filename), '-C', pkg, '--strip-components=1']);
  symlinkSync(join(ROOT, 'node_modules', '@webgpu', 'types'), join(app, 'node_modules', '@webgpu', 'types'), 'dir');
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the tarball: the built library with its declarations, docs and PyTorch scripts; no source maps; no build on install', { skip: NO_NPM }, () => {
  for (const f of ['dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli/main.js', 'README.md', 'LICENSE', 'docs/encoder-experiment.md', 'bench/anchors/pytorch_sdpa.py', 'bench/anchors/pytorch_seed_notebook.py']) {
    assert.ok(files.includes(f), `${f} is in the package`);
  }
  assert.deepEqual(files.filter((f) => f.endsWith('.map')), [], 'no source maps (they would point to sources the package does not hold)');
  assert.deepEqual(files.filter((f) => f.startsWith('dist/test') || f.startsWith('dist/bench') || f.startsWith('src/')), [], 'no tests, bench variants or sources');
  const pkg = JSON.parse(readFileSync(join(app, 'node_modules', 'flashattn', 'package.json'), 'utf8')) as { scripts: Record<string, string>; description: string; dependencies: Record<string, string> };
  for (const script of ['prepare', 'preinstall', 'install', 'postinstall']) assert.equal(pkg.scripts[script], undefined, `no ${script} script: installing the tarball builds nothing`);
  assert.match(pkg.scripts.prepack, /build/, 'npm pack and npm publish build first');
  assert.match(pkg.description, /WebGPU and the CPU/);
  assert.ok(pkg.dependencies['@webgpu/types'], 'the types the declarations reference are a dependency');
  assert.match(readFileSync(join(app, 'node_modules', 'flashattn', 'dist', 'src', 'index.d.ts'), 'utf8'), /\/\/\/ <reference types="@webgpu\/types"/);
});

test("the README's examples compile in a user's project (strict, skipLibCheck false) and run without a GPU", { skip: NO_NPM, timeout: 120_000 }, async () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  // The examples that stand alone (those that import the package); a fragment that continues one is not
  // compiled. Those that use Node's globals compile in a project with @types/node, as a Node project
  // has; the others in one without, so that the declarations are seen to need no Node types.
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]).filter((code) => /from 'flashattn'/.test(code));
  assert.ok(blocks.length >= 2, 'the README has its Use and Models examples');
  const usesNode = (code: string) => /\bprocess\.|from 'node:/.test(code);
  // A user's tsconfig: strict; skipLibCheck and lib left at their defaults.
  const compilerOptions = { strict: true, target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', outDir: 'out' };
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', type: 'module', dependencies: { flashattn: '*' } }));
  const tsc = async (project: string) => {
    const r = await run(process.execPath, [TSC, '-p', join(app, project)]).catch((e: { stdout?: string }) => ({ failed: e.stdout ?? String(e) }));
    assert.ok(!('failed' in r), `tsc (${project}) found errors:\n${'failed' in r ? r.failed : ''}`);
  };
  blocks.forEach((code, i) => writeFileSync(join(app, `readme-${i}.ts`), code));
  const files = (node: boolean) => blocks.flatMap((code, i) => (usesNode(code) === node ? [`readme-${i}.ts`] : []));
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: files(false) }));
  await tsc('tsconfig.json');
  if (files(true).length) {
    symlinkSync(join(ROOT, 'node_modules', '@types'), join(app, 'node_modules', '@types'), 'dir');
    writeFileSync(join(app, 'tsconfig.node.json'), JSON.stringify({ compilerOptions, files: files(true) }));
    await tsc('tsconfig.node.json');
  }
  // Run those that need no model files: on the cpu here (no webgpu package in the project).
  for (let i = 0; i < blocks.length; i++) {
    if (/readGPT2/.test(blocks[i])) continue;
    const { stdout, stderr } = await run(process.execPath, [join(app, 'out', `readme-${i}.js`)], { cwd: app, timeout: 100_000 });
    assert.equal(stderr, '', `example ${i} wrote to stderr`);
    if (blocks[i].includes('createEncoder')) assert.match(stdout, /^cpu \d+/, 'the Models example ran on the cpu (auto, no WebGPU here) and printed its peak');
  }
});
