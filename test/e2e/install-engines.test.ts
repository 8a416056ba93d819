/**
 * `npm install` on the Node the project runs on prints no engine warning: no dependency in the
 * lockfile declares a Node range this Node is outside of (a fastify dependency once wanted
 * Node >= 22, overridden in package.json). npm itself checks, on a dry run of a clean install
 * from the lockfile, offline.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

test("a clean install from the lockfile warns of no dependency's Node engine, and the project's own range takes this Node", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-engines-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const f of ['package.json', 'package-lock.json']) await copyFile(join(ROOT, f), join(dir, f));
  const { stdout, stderr } = await run('npm', ['ci', '--dry-run', '--offline', '--ignore-scripts'], {
    cwd: dir,
    timeout: 120_000,
  });
  const out = stdout + stderr;
  assert.match(out, /added \d+ packages/, `npm ran the dry install:\n${out.slice(-2000)}`);
  assert.doesNotMatch(out, /EBADENGINE/, out.slice(-3000));
  // The project's own range, as npm states it, includes the Node this runs on (its major line).
  const engines = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')).engines.node as string;
  const major = process.versions.node.split('.')[0];
  assert.match(engines, new RegExp(`\\^${major}\\.|>=${major}\\b`), `engines.node ${engines} names Node ${major}`);
});
