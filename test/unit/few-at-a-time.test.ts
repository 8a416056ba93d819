import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FewAtATime } from '../../src/upstream/few-at-a-time.ts';

/** A job per item whose promise the test settles by hand. */
function jobs() {
  const started: number[] = [];
  const settle = new Map<number, { ok(): void; fail(): void }>();
  let running = 0;
  let most = 0;
  const run = (n: number) =>
    new Promise<void>((resolve, reject) => {
      started.push(n);
      most = Math.max(most, ++running);
      settle.set(n, {
        ok: () => {
          running--;
          resolve();
        },
        fail: () => {
          running--;
          reject(new Error(`job ${n}`));
        },
      });
    });
  return { started, settle, run, most: () => most };
}
const tick = () => new Promise((r) => setImmediate(r));

test('runs at most its limit at once, in arrival order; a failed job frees its place like a finished one', async () => {
  const j = jobs();
  const q = new FewAtATime<number>(3, j.run);
  for (let n = 0; n < 10; n++) q.push(n);
  assert.deepEqual(j.started, [0, 1, 2]);
  j.settle.get(1)!.ok();
  await tick();
  assert.deepEqual(j.started, [0, 1, 2, 3]);
  j.settle.get(0)!.fail();
  j.settle.get(2)!.ok();
  await tick();
  assert.deepEqual(j.started, [0, 1, 2, 3, 4, 5]);
  for (let n = 3; n < 10; n++) {
    j.settle.get(n)!.ok();
    await tick();
  }
  assert.deepEqual(j.started, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(j.most(), 3);
});

test('clear drops what has not started; what runs finishes, and later pushes run', async () => {
  const j = jobs();
  const q = new FewAtATime<number>(2, j.run);
  for (let n = 0; n < 5; n++) q.push(n);
  q.clear();
  j.settle.get(0)!.ok();
  j.settle.get(1)!.ok();
  await tick();
  assert.deepEqual(j.started, [0, 1], 'the three waiting were dropped');
  q.push(7);
  assert.deepEqual(j.started, [0, 1, 7]);
});
