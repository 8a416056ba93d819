import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, rmSync } from 'node:fs';
import { activeResources, inOwnDirs } from '../helpers/leftovers.ts';
import { warmUpMessageStore } from '../../src/store/warm-up.ts';
import { warmUpAtStart } from '../../src/util/warm-up.ts';

test('the store warm-up stores, reads and checkpoints every round it is given', async () => {
  const r = await warmUpMessageStore({ rounds: 3, budgetMs: 60_000 });
  assert.equal(r.rounds, 3);
  assert.equal(r.messages, 750);
});

test('the store warm-up leaves nothing behind: no directory, file, row, descriptor or timer', async () => {
  await inOwnDirs(async ({ tmp, cwd }) => {
    const before = activeResources();
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
    assert.deepEqual(activeResources(), before, 'no descriptor, handle or timer');
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

test('a store warm-up that cannot make its directory fails, and the start goes on without it', async () => {
  await inOwnDirs(async ({ tmp }) => {
    rmSync(tmp, { recursive: true });
    await assert.rejects(warmUpMessageStore(), /ENOENT/);
    assert.equal(await warmUpAtStart('message store', {}, () => warmUpMessageStore()), undefined);
  });
});
