import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { warmUpMessageStore, warmUpStoreAtStart } from '../../src/store/warm-up.ts';

/** Timers, file descriptors, sockets and the like this process holds, by kind. */
function resources(): Record<string, number> {
  const count: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) count[kind] = (count[kind] ?? 0) + 1;
  return count;
}

/** Runs `fn` with TMPDIR and the working directory pointed at empty directories of its own. */
async function inOwnDirs(fn: (dirs: { tmp: string; cwd: string }) => Promise<void>): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'strata-store-warm-up-test-'));
  const dirs = { tmp: join(root, 'tmp'), cwd: join(root, 'cwd') };
  mkdirSync(dirs.tmp);
  mkdirSync(dirs.cwd);
  const was = { tmpdir: process.env.TMPDIR, cwd: process.cwd() };
  try {
    process.env.TMPDIR = dirs.tmp;
    process.chdir(dirs.cwd);
    await fn(dirs);
  } finally {
    process.chdir(was.cwd);
    if (was.tmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = was.tmpdir;
    rmSync(root, { recursive: true, force: true });
  }
}

test('the store warm-up stores, reads and checkpoints every round it is given', async () => {
  const r = await warmUpMessageStore({ rounds: 3, budgetMs: 60_000 });
  assert.equal(r.rounds, 3);
  assert.equal(r.messages, 750);
});

test('the store warm-up leaves nothing behind: no directory, file, row, descriptor or timer', async () => {
  await inOwnDirs(async ({ tmp, cwd }) => {
    const before = resources();
    let during: string[] = [];
    const warming = warmUpMessageStore({ rounds: 3 });
    // While it runs, its store (and so its rows) lives in a directory of its own under TMPDIR...
    during = readdirSync(tmp);
    await warming;
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(during.length, 1, 'one temporary directory while it runs');
    // ... which is gone with every row in it once it is done.
    assert.deepEqual(readdirSync(tmp), [], 'its temporary directory is gone');
    assert.deepEqual(readdirSync(cwd), [], 'nothing in the working directory');
    assert.deepEqual(resources(), before, 'no descriptor, handle or timer');
  });
});

test('the store warm-up removes its directory also when it runs no round', async () => {
  await inOwnDirs(async ({ tmp }) => {
    // A budget of 0 opens and closes the store without a round: the directory still goes.
    const r = await warmUpMessageStore({ budgetMs: 0 });
    assert.equal(r.rounds, 0);
    assert.deepEqual(readdirSync(tmp), []);
  });
});

test('a gateway starts with the store warm-up unless STRATA_NO_WARM_UP=1; a failure does not stop it', async () => {
  assert.equal(await warmUpStoreAtStart({ STRATA_NO_WARM_UP: '1' }), undefined);
  const r = await warmUpStoreAtStart({});
  assert.ok(r !== undefined && r.rounds > 0, 'warmed up');
  await inOwnDirs(async ({ tmp }) => {
    // A temp directory that cannot be written: the warm-up gives up, the start goes on.
    rmSync(tmp, { recursive: true });
    assert.equal(await warmUpStoreAtStart({}), undefined);
  });
});
