import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { warmUpAtStart, warmUpMessagePath } from '../../src/protocols/warm-up.ts';

/** Timers, sockets, file handles and the like this process holds, by kind. */
function resources(): Record<string, number> {
  const count: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) count[kind] = (count[kind] ?? 0) + 1;
  return count;
}

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
  const before = { tmp: readdirSync(tmpdir()).sort(), cwd: readdirSync(process.cwd()).sort(), res: resources() };
  warmUpMessagePath({ rounds: 5 });
  // Anything it had scheduled would show once the loop turns.
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(readdirSync(tmpdir()).sort(), before.tmp, 'no file in the temp directory');
  assert.deepEqual(readdirSync(process.cwd()).sort(), before.cwd, 'no file in the working directory');
  assert.deepEqual(resources(), before.res, 'no handle, socket or timer');
});

test('a node starts with the warm-up unless STRATA_NO_WARM_UP=1', () => {
  assert.equal(warmUpAtStart({ STRATA_NO_WARM_UP: '1' }), undefined);
  const r = warmUpAtStart({});
  assert.ok(r !== undefined && r.rounds > 0, 'warmed up');
});
