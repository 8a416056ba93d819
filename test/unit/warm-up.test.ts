import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { activeResources, inOwnDirs } from '../helpers/leftovers.ts';
import { warmUpMessagePath } from '../../src/protocols/warm-up.ts';
import { warmUpAtStart } from '../../src/util/warm-up.ts';

test('the warm-up runs every round it is given and reads every message back', () => {
  const r = warmUpMessagePath({ rounds: 3, budgetMs: 60_000 });
  assert.equal(r.rounds, 3);
  assert.equal(r.messages, 750);
});

test('the warm-up stops at its time budget', () => {
  assert.equal(warmUpMessagePath({ budgetMs: 0 }).rounds, 0, 'no time, no round');
  const r = warmUpMessagePath({ rounds: 1_000_000, budgetMs: 50 });
  assert.ok(r.rounds > 0 && r.rounds < 1_000_000, `ran ${r.rounds} rounds`);
  // One round past the budget at most (a round is a few milliseconds warm, tens cold).
  assert.ok(r.ms < 50 + 500, `took ${r.ms} ms for a budget of 50`);
});

test('the warm-up leaves nothing behind: no file, socket, timer or other handle', async () => {
  await inOwnDirs(async ({ tmp, cwd }) => {
    const before = activeResources();
    warmUpMessagePath({ rounds: 5 });
    // Anything it had scheduled would show once the loop turns.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(readdirSync(tmp), [], 'no file in the temp directory');
    assert.deepEqual(readdirSync(cwd), [], 'no file in the working directory');
    assert.deepEqual(activeResources(), before, 'no handle, socket or timer');
  });
});

test('a node starts with the warm-up unless STRATA_NO_WARM_UP=1; a failing one does not stop the start', async () => {
  const calls = { ran: 0 };
  const run = () => {
    calls.ran++;
    return warmUpMessagePath({ rounds: 2 });
  };
  assert.equal(await warmUpAtStart('message path', { STRATA_NO_WARM_UP: '1' }, run), undefined);
  assert.equal(calls.ran, 0, 'skipped');
  const r = await warmUpAtStart('message path', {}, run);
  assert.equal(calls.ran, 1, 'warmed up');
  assert.equal(r?.rounds, 2);
  const failing = () => {
    throw new Error('no room');
  };
  assert.equal(await warmUpAtStart('message path', {}, failing), undefined, 'a failure is only logged');
});
