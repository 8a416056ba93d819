import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { openEngineDatabase } from '../../src/engine/databases.ts';
import { isEngineError } from '../../src/model/errors.ts';
import { C2DQueue } from '../../src/store/c2d-queue.ts';

async function queue(t: { after(fn: () => unknown): void }, opts = {}): Promise<C2DQueue> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-c2d-'));
  const db = openEngineDatabase(dir);
  t.after(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });
  return new C2DQueue(db, opts);
}

const msg = (body: string, messageId?: string) => ({ body: Buffer.from(body), messageId, properties: { p: '1' } });

test('lock, complete: the message leaves the queue and positive feedback is recorded when asked for', async (t) => {
  const q = await queue(t);
  q.enqueue('d', msg('one', 'm1'), { ack: 'positive' });
  q.enqueue('d', msg('two', 'm2'), { ack: 'negative' });
  const a = q.lockNext('d', 60_000)!;
  assert.equal(a.message.body.toString(), 'one');
  assert.equal(a.message.messageId, 'm1');
  assert.deepEqual(a.message.properties, { p: '1' });
  assert.equal(a.deliveryCount, 1);
  const b = q.lockNext('d', 60_000)!;
  assert.equal(b.message.messageId, 'm2', 'a locked message is not handed out again');
  assert.equal(q.lockNext('d', 60_000), undefined);
  q.settle('d', a.lockToken, 'complete');
  q.settle('d', b.lockToken, 'complete');
  assert.equal(q.depth('d'), 0);
  assert.deepEqual(
    q.pendingFeedback().map((f) => [f.originalMessageId, f.statusCode]),
    [['m1', 'Success']],
    'negative-only ack gives no feedback on success',
  );
});

test('reject removes with Rejected feedback; abandon redelivers with a higher delivery count', async (t) => {
  const q = await queue(t);
  q.enqueue('d', msg('r', 'rej'), { ack: 'full' });
  const r = q.lockNext('d', 60_000)!;
  q.settle('d', r.lockToken, 'reject');
  assert.deepEqual(
    q.pendingFeedback().map((f) => [f.originalMessageId, f.statusCode, f.description]),
    [['rej', 'Rejected', 'Message rejected']],
  );
  q.acknowledgeFeedback(q.pendingFeedback().map((f) => f.id));
  assert.equal(q.pendingFeedback().length, 0);

  q.enqueue('d', msg('a', 'ab'));
  const first = q.lockNext('d', 60_000)!;
  q.settle('d', first.lockToken, 'abandon');
  const second = q.lockNext('d', 60_000)!;
  assert.equal(second.message.messageId, 'ab');
  assert.equal(second.deliveryCount, 2);
  assert.notEqual(second.lockToken, first.lockToken);
  assert.throws(
    () => q.settle('d', first.lockToken, 'complete'),
    (e) => isEngineError(e, 'not-found'),
    'the old lock token is gone',
  );
  assert.throws(
    () => q.settle('other', second.lockToken, 'complete'),
    (e) => isEngineError(e, 'not-found'),
    'a lock token of another device',
  );
});

test('an expired lock makes the message available again and its token stale', async (t) => {
  const q = await queue(t);
  const now = Date.now();
  q.enqueue('d', msg('x'), { now });
  const a = q.lockNext('d', 1000, { now })!;
  assert.equal(q.lockNext('d', 1000, { now: now + 500 }), undefined);
  const b = q.lockNext('d', 1000, { now: now + 1500 })!;
  assert.equal(b.deliveryCount, 2);
  assert.throws(
    () => q.settle('d', a.lockToken, 'complete', { now: now + 1600 }),
    (e) => isEngineError(e, 'not-found'),
  );
  assert.throws(
    () => q.settle('d', b.lockToken, 'complete', { now: now + 3000 }),
    (e) => isEngineError(e, 'precondition'),
  );
});

test('the queue holds at most 50 messages per device', async (t) => {
  const q = await queue(t);
  for (let i = 0; i < 50; i++) q.enqueue('full', msg(`m${i}`));
  assert.throws(
    () => q.enqueue('full', msg('one too many')),
    (e) => isEngineError(e, 'queue-full') && /50/.test((e as Error).message),
  );
  q.enqueue('other', msg('other devices are not affected'));
  assert.equal(q.depth('full'), 50);
});

test('expired messages leave with Expired feedback; too many deliveries dead-letter', async (t) => {
  const q = await queue(t, { maxDeliveryCount: 2 });
  const now = Date.now();
  q.enqueue('d', msg('ttl', 'ttl'), { ttlMs: 1000, ack: 'negative', now });
  q.enqueue('d', { ...msg('abs', 'abs'), expiry: now + 500 }, { ack: 'full', now });
  assert.equal(q.lockNext('d', 10_000, { now: now + 2000 }), undefined);
  assert.deepEqual(
    q.pendingFeedback().map((f) => [f.originalMessageId, f.statusCode]),
    [
      ['ttl', 'Expired'],
      ['abs', 'Expired'],
    ],
  );
  q.acknowledgeFeedback(q.pendingFeedback().map((f) => f.id));

  q.enqueue('e', msg('bouncy', 'bouncy'), { ack: 'full' });
  for (let i = 0; i < 2; i++) q.settle('e', q.lockNext('e', 10_000)!.lockToken, 'abandon');
  assert.equal(q.lockNext('e', 10_000), undefined);
  assert.deepEqual(
    q.pendingFeedback().map((f) => [f.originalMessageId, f.statusCode]),
    [['bouncy', 'DeliveryCountExceeded']],
  );
});

test('release and releaseAll make locked messages available again', async (t) => {
  const q = await queue(t);
  q.enqueue('d', msg('1'));
  q.enqueue('d', msg('2'));
  const a = q.lockNext('d', 60_000)!;
  const b = q.lockNext('d', 60_000)!;
  q.release([a.lockToken, 'unknown-token']);
  assert.equal(q.lockNext('d', 60_000)!.message.body.toString(), '1');
  assert.equal(q.releaseAll(), 2);
  assert.ok(q.lockNext('d', 60_000));
  assert.throws(
    () => q.settle('d', b.lockToken, 'complete'),
    (e) => isEngineError(e, 'not-found'),
  );
});
