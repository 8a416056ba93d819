import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
  // Its own empty temp and working directories, so other processes' files do not count.
  const root = mkdtempSync(join(tmpdir(), 'strata-warm-up-test-'));
  const [tmp, cwd] = [join(root, 'tmp'), join(root, 'cwd')];
  mkdirSync(tmp);
  mkdirSync(cwd);
  const was = { tmpdir: process.env.TMPDIR, cwd: process.cwd() };
  const before = resources();
  try {
    process.env.TMPDIR = tmp;
    process.chdir(cwd);
    warmUpMessagePath({ rounds: 5 });
    // Anything it had scheduled would show once the loop turns.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(readdirSync(tmp), [], 'no file in the temp directory');
    assert.deepEqual(readdirSync(cwd), [], 'no file in the working directory');
    assert.deepEqual(resources(), before, 'no handle, socket or timer');
  } finally {
    process.chdir(was.cwd);
    if (was.tmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = was.tmpdir;
    rmSync(root, { recursive: true, force: true });
  }
});

test('a node starts with the warm-up unless STRATA_NO_WARM_UP=1', () => {
  assert.equal(warmUpAtStart({ STRATA_NO_WARM_UP: '1' }), undefined);
  const r = warmUpAtStart({});
  assert.ok(r !== undefined && r.rounds > 0, 'warmed up');
});
