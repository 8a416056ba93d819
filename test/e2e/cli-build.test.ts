/**
 * The CLI as installed: `npm install` builds dist/ (the prepare script), and bin/strata.js then
 * runs the compiled JavaScript, falling back to the TypeScript sources when one changed since
 * the build (or with STRATA_FROM_SOURCE=1). On a temp copy of the project, whose main.ts is
 * swapped after the build for one that says it ran, so each run shows which code it took.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const VERSION = '0.0.0-build-test';

let dir: string;
let copy: string;

function run(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const base: NodeJS.ProcessEnv = { ...process.env, STRATA_LOG_LEVEL: 'warn' };
    delete base.STRATA_FROM_SOURCE; // `npm test` sets it for the other tests
    execFile(
      process.execPath,
      [join(copy, file), ...args],
      { cwd: copy, timeout: 120_000, env: { ...base, ...env } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, out: stdout, err: stderr });
      },
    );
  });
}

const strata = (args: string[], env?: NodeJS.ProcessEnv) => run('bin/strata.js', args, env);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-cli-build-'));
  copy = join(dir, 'strata');
  mkdirSync(copy);
  for (const f of ['tsconfig.json', 'tsconfig.build.json', 'scripts', 'bin', 'src'])
    cpSync(join(ROOT, f), join(copy, f), { recursive: true });
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  writeFileSync(join(copy, 'package.json'), JSON.stringify({ ...pkg, version: VERSION }, null, 2));
  symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));

  // What `npm install` runs (the prepare script).
  const build = await run('scripts/build.js', []);
  assert.equal(build.code, 0, `build failed: ${build.out}${build.err}`);

  // The source entry now differs from what was compiled, dated before the build: a run that
  // prints the version took dist/, one that prints "from source" took src/.
  const main = join(copy, 'src', 'cli', 'main.ts');
  const built = statSync(join(copy, 'dist', '.built')).mtime;
  const before = new Date(built.getTime() - 60_000);
  writeFileSync(main, "process.stdout.write('from source\\n');\n");
  utimesSync(main, before, before);
  utimesSync(join(copy, 'src', 'cli'), before, before);
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('the compiled CLI prints the package version', async () => {
  const r = await strata(['--version']);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, `${VERSION}\n`);
  assert.equal(r.err, '');
});

test('the compiled CLI lists every command group and loads one on demand', async () => {
  const help = await strata(['--help']);
  assert.equal(help.code, 0, help.err);
  for (const group of ['hub', 'device', 'certs', 'edge', 'topology'])
    assert.match(help.out, new RegExp(`^  ${group} `, 'm'));

  const device = await strata(['device', '--help']);
  assert.equal(device.code, 0, device.err);
  assert.match(device.out, /^Usage: strata device /m);
  assert.match(device.out, /^ {2}list /m, 'device-identity.ts registered');
  assert.match(device.out, /^ {2}send /m, 'device-send.ts registered');

  const helpDevice = await strata(['help', 'device']);
  assert.equal(helpDevice.out, device.out);
});

test('an unknown command is named, with the help hint', async () => {
  const r = await strata(['devcie', 'list']);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /unknown command 'devcie'/);
  assert.match(r.err, /Did you mean device\?/);
});

test('STRATA_FROM_SOURCE=1 runs the sources', async () => {
  const r = await strata(['--version'], { STRATA_FROM_SOURCE: '1' });
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, 'from source\n');
});

test('a source changed after the build is run from source, not stale', async () => {
  const now = new Date();
  utimesSync(join(copy, 'src', 'cli', 'main.ts'), now, now);
  const r = await strata(['--version']);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, 'from source\n');
});
