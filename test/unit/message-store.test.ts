import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { MessageStore, StoreFullError, type QueuedMessage, type StoredMessage } from '../../src/store/message-store.ts';
import { messageOfStored, SenderMessage, storedMessageOf } from '../../src/store/sender-message.ts';
import { authMethodText } from '../../src/identity/auth-method.ts';
import { RESERVE } from '../../src/store/passing-marks.ts';
import { tempStore } from '../helpers/temp-store.ts';

const setup = tempStore;

function msg(sender: string, n: number, body = `body-${n}`): StoredMessage {
  return {
    body: Buffer.from(body),
    systemProperties: { messageId: `${sender}-${n}`, contentType: 'application/json', correlationId: undefined },
    appProperties: { n: String(n) },
    source: '/messages',
    sender,
  };
}

function readAll(store: MessageStore, endpoint: string, priority = 0, limit = 1_000_000): QueuedMessage[] {
  return store.read(endpoint, { priority, afterSeq: 0, limit }).entries;
}

function rawCount(file: string, sql: string): number {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).pluck().get() as number;
  } finally {
    db.close();
  }
}

test('an appended message is readable with its properties after the append resolves, and after a restart', async (t) => {
  const ctx = setup(t);
  let store = ctx.open({});
  const pending = store.append({
    message: msg('dev-1', 1),
    targets: [{ endpoint: '$upstream', priority: 0, ttlSecs: 7200 }],
  });
  assert.equal(readAll(store, '$upstream').length, 0, 'nothing is visible before the commit');
  await pending;
  const [e] = readAll(store, '$upstream');
  assert.equal(e.message.body.toString(), 'body-1');
  assert.deepEqual(e.message.appProperties, { n: '1' });
  assert.equal(e.message.systemProperties.messageId, 'dev-1-1');
  assert.equal(e.message.sender, 'dev-1');
  assert.equal(e.message.source, '/messages');
  assert.equal(e.endpoint, '$upstream');
  await store.close();

  store = ctx.open({});
  const [again] = readAll(store, '$upstream');
  assert.equal(again.seq, e.seq);
  assert.equal(again.message.body.toString(), 'body-1');
  assert.deepEqual(again.message.appProperties, { n: '1' });
  assert.equal(again.message.systemProperties.contentType, 'application/json');
  assert.equal(again.expiresAt, e.expiresAt);
});

test("a device's message is stored as its short record and read back as the same message, beside JSON-stored ones", async (t) => {
  const ctx = setup(t);
  const auth = {
    identity: { deviceId: 'dev-2', moduleId: 'm' },
    kind: 'sas',
    generationId: 'g1',
    authMethod: '{"scope":"module"}',
  } as const;
  const sent = { body: Buffer.from('own-1'), messageId: 'x-1', outputName: 'o', properties: { n: '1' } };
  let store = ctx.open({});
  const to = [{ endpoint: '$upstream', priority: 0, ttlSecs: 0 }];
  await Promise.all([
    store.append({ message: storedMessageOf(auth, sent, 1_700_000_000_000), targets: to }),
    store.append({ message: msg('dev-1', 2), targets: to }),
  ]);
  const [fromMemory] = readAll(store, '$upstream');
  assert.equal(messageOfStored(fromMemory!.message), sent, 'while in memory, the very message received');
  await store.close();
  assert.equal(
    rawCount(ctx.file, "SELECT count(*) FROM messages WHERE meta LIKE '1[%'"),
    1,
    'the record is what the file holds',
  );

  store = ctx.open({});
  const [a, b] = readAll(store, '$upstream');
  assert.ok(a!.message instanceof SenderMessage);
  assert.deepEqual(messageOfStored(a!.message), sent);
  assert.equal(a!.message.sender, 'dev-2/m');
  assert.equal(a!.message.source, '/messages/modules/m/outputs/o');
  assert.equal(a!.message.systemProperties.connectionDeviceGenerationId, 'g1');
  assert.equal(a!.message.systemProperties.enqueuedTime, '2023-11-14T22:13:20.000Z');
  assert.equal(b!.message.systemProperties.messageId, 'dev-1-2', 'JSON-stored messages still read as before');
});

test('a checkpointed entry is never handed out again, also after a restart', async (t) => {
  const ctx = setup(t);
  let store = ctx.open({});
  await Promise.all(
    [1, 2, 3, 4].map((n) =>
      store.append({ message: msg('d', n), targets: [{ endpoint: 'e', priority: 0, ttlSecs: 0 }] }),
    ),
  );
  const all = readAll(store, 'e');
  assert.deepEqual(
    all.map((e) => e.message.appProperties.n),
    ['1', '2', '3', '4'],
  );
  const done = store.checkpoint('e', all.slice(0, 2));
  assert.deepEqual(
    readAll(store, 'e').map((e) => e.message.appProperties.n),
    ['3', '4'],
    'a checkpoint in progress hides its entries',
  );
  await done;
  assert.deepEqual(
    readAll(store, 'e').map((e) => e.message.appProperties.n),
    ['3', '4'],
  );
  assert.equal(store.metrics('e').checkpointed, 2);
  assert.equal(store.queueLength('e'), 2);
  await store.close();

  store = ctx.open({});
  assert.deepEqual(
    readAll(store, 'e').map((e) => e.message.appProperties.n),
    ['3', '4'],
  );
  assert.equal(store.metrics('e').checkpointed, 2, 'the counter survives a restart');
  assert.equal(store.queueLength('e'), 2);
});

for (const limits of [{ readCacheEntries: 2500 }, { readCacheBytes: 3000 }]) {
  test(`reads continue from a cursor, in batches, and memory and disk give the same entries (${JSON.stringify(limits)})`, async (t) => {
    const ctx = setup(t);
    let store = ctx.open(limits);
    const appends = [];
    for (let n = 0; n < 3000; n++)
      appends.push(
        store.append({ message: msg(`s${n % 3}`, n), targets: [{ endpoint: 'e', priority: 0, ttlSecs: 0 }] }),
      );
    await Promise.all(appends);
    const collect = (s: MessageStore) => {
      const seen: string[] = [];
      let cursor = 0;
      for (;;) {
        const r = s.read('e', { priority: 0, afterSeq: cursor, limit: 400 });
        assert.ok(r.entries.length <= 400);
        seen.push(...r.entries.map((e) => e.message.appProperties.n));
        cursor = r.cursor;
        if (r.exhausted) break;
      }
      return seen;
    };
    const fromMemory = collect(store); // the oldest come from disk, the newest from memory
    await store.close();
    store = ctx.open({});
    const fromDisk = collect(store);
    assert.equal(fromMemory.length, 3000);
    assert.deepEqual(fromMemory, fromDisk);
    assert.deepEqual(
      fromDisk,
      Array.from({ length: 3000 }, (_, i) => String(i)),
    );
  });
}

test('each endpoint and priority has its own queue, read highest priority first', async (t) => {
  const store = setup(t).open({});
  await Promise.all([
    store.append({ message: msg('d', 1), targets: [{ endpoint: 'a', priority: 2, ttlSecs: 0 }] }),
    store.append({
      message: msg('d', 2),
      targets: [
        { endpoint: 'a', priority: 0, ttlSecs: 0 },
        { endpoint: 'b', priority: 5, ttlSecs: 0 },
      ],
    }),
    store.append({ message: msg('d', 3), targets: [{ endpoint: 'b', priority: 5, ttlSecs: 0 }] }),
    store.append({ message: msg('d', 4), targets: [{ endpoint: 'a', priority: 2, ttlSecs: 0 }] }),
  ]);
  assert.deepEqual(store.priorities('a'), [0, 2]);
  assert.deepEqual(store.priorities('b'), [5]);
  assert.deepEqual(store.priorities('nobody'), []);
  assert.deepEqual(
    readAll(store, 'a', 0).map((e) => e.message.appProperties.n),
    ['2'],
  );
  assert.deepEqual(
    readAll(store, 'a', 2).map((e) => e.message.appProperties.n),
    ['1', '4'],
  );
  assert.deepEqual(
    readAll(store, 'b', 5).map((e) => e.message.appProperties.n),
    ['2', '3'],
  );
  assert.equal(store.queueLength('a'), 3);
  assert.equal(store.queueLength('a', 2), 2);
  assert.deepEqual(store.metrics('a').queueLengthByPriority, { 0: 1, 2: 2 });
  // Checkpointing one endpoint's entry leaves the other's alone.
  await store.checkpoint('a', readAll(store, 'a', 0));
  assert.deepEqual(
    readAll(store, 'b', 5).map((e) => e.message.appProperties.n),
    ['2', '3'],
  );
  assert.deepEqual(store.priorities('a'), [2]);
});

test('an endpoint named twice in one append gets one entry, at the higher priority', async (t) => {
  const store = setup(t).open({});
  await store.append({
    message: msg('d', 1),
    targets: [
      { endpoint: 'a', priority: 3, ttlSecs: 0 },
      { endpoint: 'a', priority: 1, ttlSecs: 0 },
    ],
  });
  assert.equal(store.queueLength('a'), 1);
  assert.equal(readAll(store, 'a', 1).length, 1);
});

test('a message sent to many endpoints is stored once and deleted when the last one checkpoints it', async (t) => {
  const ctx = setup(t);
  const file = ctx.file;
  const store = ctx.open({});
  const body = 'x'.repeat(1000);
  const targets = ['$upstream', '/modules/m1/inputs/i1', '/modules/m2/inputs/i2'].map((endpoint) => ({
    endpoint,
    priority: 0,
    ttlSecs: 0,
  }));
  await store.append({ message: msg('d', 1, body), targets });
  const totals = store.totals();
  assert.equal(totals.messages, 1);
  assert.ok(totals.bytes >= 1000 && totals.bytes < 1300, `one copy of the payload is counted, got ${totals.bytes}`);
  await store.checkpoint('$upstream', readAll(store, '$upstream'));
  await store.checkpoint('/modules/m1/inputs/i1', readAll(store, '/modules/m1/inputs/i1'));
  assert.equal(store.totals().messages, 1, 'still needed by m2');
  assert.equal(readAll(store, '/modules/m2/inputs/i2')[0].message.body.toString(), body);
  await store.checkpoint('/modules/m2/inputs/i2', readAll(store, '/modules/m2/inputs/i2'));
  assert.deepEqual([store.totals().messages, store.totals().bytes], [0, 0]);
  const lastSeq = store.lastSeq;
  await store.close();
  assert.equal(rawCount(file, 'SELECT count(*) FROM messages'), 0, 'payload row deleted');
  assert.equal(rawCount(file, 'SELECT count(*) FROM queue'), 0);
  const reopened = ctx.open({});
  await reopened.append({ message: msg('d', 2), targets });
  assert.equal(readAll(reopened, '$upstream')[0].seq, lastSeq + 1, 'seqs are not reused after the store emptied');
});

test('payloads left behind a lagging endpoint are found and deleted by the sweep', async (t) => {
  const ctx = setup(t);
  const file = ctx.file;
  const store = ctx.open({});
  await store.append({ message: msg('d', 0), targets: [{ endpoint: 'slow', priority: 0, ttlSecs: 0 }] });
  const appends = [];
  for (let n = 1; n <= 1500; n++)
    appends.push(store.append({ message: msg('d', n), targets: [{ endpoint: 'fast', priority: 0, ttlSecs: 0 }] }));
  await Promise.all(appends);
  await store.checkpoint('fast', readAll(store, 'fast'));
  assert.equal(store.totals().messages, 1501, 'the oldest entry of "slow" holds the range back');
  await store.sweepExpired();
  assert.equal(store.totals().messages, 1);
  assert.equal(readAll(store, 'slow')[0].message.appProperties.n, '0');
  await store.close();
  assert.equal(rawCount(file, 'SELECT count(*) FROM messages'), 1);
});

test('expired entries are skipped on read, deleted and counted per endpoint', async (t) => {
  let clock = 1_000_000;
  const ctx = setup(t);
  const store = ctx.open({ now: () => clock });
  await store.append({
    message: msg('d', 1),
    targets: [
      { endpoint: 'a', priority: 0, ttlSecs: 10 },
      { endpoint: 'b', priority: 0, ttlSecs: 60 },
    ],
  });
  await store.append({ message: msg('d', 2), targets: [{ endpoint: 'a', priority: 0, ttlSecs: 100 }] });
  await store.append({ message: msg('d', 3), targets: [{ endpoint: 'a', priority: 0, ttlSecs: 0 }] });
  assert.equal(readAll(store, 'a')[0].expiresAt, 1_000_000 + 10_000);
  assert.equal(readAll(store, 'a')[2].expiresAt, Infinity);

  clock += 11_000;
  assert.deepEqual(
    readAll(store, 'a').map((e) => e.message.appProperties.n),
    ['2', '3'],
    'expired entry skipped',
  );
  assert.deepEqual(
    readAll(store, 'b').map((e) => e.message.appProperties.n),
    ['1'],
    'same message, longer TTL elsewhere',
  );
  await store.sweepExpired(); // lets the deletion queued by the read commit
  assert.equal(store.metrics('a').expired, 1);
  assert.equal(store.metrics('b').expired, 0);
  assert.equal(store.queueLength('a'), 2);
  assert.equal(store.totals().messages, 3, 'payload 1 still needed by b');

  // Background deletion, no read involved.
  clock += 60_000;
  assert.equal(await store.sweepExpired(), 1);
  assert.equal(store.metrics('b').expired, 1);
  assert.equal(store.queueLength('b'), 0);
  assert.equal(store.totals().messages, 2, 'payload 1 deleted with its last entry');
  clock += 1_000_000;
  assert.equal(await store.sweepExpired(), 1);
  assert.deepEqual(
    readAll(store, 'a').map((e) => e.message.appProperties.n),
    ['3'],
    'TTL 0 never expires',
  );
  assert.equal(store.metrics('a').expired, 2);
  await store.close();
  const again = ctx.open({ now: () => clock });
  assert.deepEqual(
    [again.metrics('a').expired, again.metrics('b').expired],
    [2, 1],
    'expired counts survive a restart',
  );
});

test('the background timer deletes expired entries on its own', async (t) => {
  let clock = 5_000_000;
  const store = setup(t).open({ sweepIntervalMs: 20, now: () => clock });
  await store.append({ message: msg('d', 1), targets: [{ endpoint: 'a', priority: 3, ttlSecs: 1 }] });
  clock += 2000;
  const deadline = Date.now() + 5000;
  while (store.metrics('a').expired === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(store.metrics('a').expired, 1);
  assert.equal(store.queueLength('a'), 0);
});

test('a full store refuses appends with StoreFullError and accepts again once entries are delivered', async (t) => {
  const store = setup(t).open({ maxMessages: 3 });
  const target = [{ endpoint: 'e', priority: 0, ttlSecs: 0 }];
  await Promise.all([1, 2, 3].map((n) => store.append({ message: msg('d', n), targets: target })));
  await assert.rejects(store.append({ message: msg('d', 4), targets: target }), (err: unknown) => {
    assert.ok(err instanceof StoreFullError);
    assert.equal(err.limit, 'maxMessages');
    assert.equal(err.code, 'STORE_FULL');
    assert.match(err.message, /message store full: 3 of 3 messages/);
    return true;
  });
  assert.equal(store.queueLength('e'), 3, 'nothing of the refused message is stored');
  await store.checkpoint('e', readAll(store, 'e').slice(0, 1));
  await store.append({ message: msg('d', 5), targets: target });
  assert.deepEqual(
    readAll(store, 'e').map((e) => e.message.appProperties.n),
    ['2', '3', '5'],
  );
});

test('the byte limit counts body and properties, also for appends still waiting for their commit', async (t) => {
  const store = setup(t).open({ maxBytes: 2500 });
  const target = [{ endpoint: 'e', priority: 0, ttlSecs: 0 }];
  const first = store.append({ message: msg('d', 1, 'x'.repeat(1000)), targets: target });
  const second = store.append({ message: msg('d', 2, 'x'.repeat(1000)), targets: target });
  const third = store.append({ message: msg('d', 3, 'x'.repeat(1000)), targets: target });
  await assert.rejects(
    third,
    (err: unknown) => err instanceof StoreFullError && err.limit === 'maxBytes' && /bytes used/.test(err.message),
  );
  await Promise.all([first, second]);
  assert.equal(store.totals().messages, 2);
  assert.ok(store.totals().bytes > 2000 && store.totals().bytes <= 2500);
});

test('order per sender is kept within each priority, across commits', async (t) => {
  const store = setup(t).open({ commitMaxBatch: 7 });
  const appends = [];
  for (let n = 0; n < 300; n++) {
    const sender = `dev-${n % 4}`;
    appends.push(store.append({ message: msg(sender, n), targets: [{ endpoint: 'e', priority: n % 2, ttlSecs: 0 }] }));
  }
  await Promise.all(appends);
  for (const priority of [0, 1]) {
    const last = new Map<string, number>();
    const entries = readAll(store, 'e', priority);
    assert.equal(entries.length, 150);
    for (const e of entries) {
      const n = Number(e.message.appProperties.n);
      assert.ok(
        n > (last.get(e.message.sender) ?? -1),
        `sender ${e.message.sender}: ${n} after ${last.get(e.message.sender)}`,
      );
      last.set(e.message.sender, n);
    }
  }
});

test('bad input is refused with a specific error and the store keeps working', async (t) => {
  const store = setup(t).open({});
  const good = msg('d', 1);
  await assert.rejects(
    store.append({
      message: { ...good, body: 'text' as unknown as Buffer },
      targets: [{ endpoint: 'e', priority: 0, ttlSecs: 0 }],
    }),
    /body must be a Buffer/,
  );
  await assert.rejects(
    store.append({ message: good, targets: [{ endpoint: '', priority: 0, ttlSecs: 0 }] }),
    /non-empty endpoint/,
  );
  await assert.rejects(
    store.append({ message: good, targets: [{ endpoint: 'e', priority: -1, ttlSecs: 0 }] }),
    /priority must be a non-negative integer/,
  );
  await assert.rejects(
    store.append({ message: good, targets: [{ endpoint: 'e', priority: 0, ttlSecs: Number.NaN }] }),
    /ttlSecs must be a number/,
  );
  await assert.rejects(
    store.append(undefined as unknown as Parameters<MessageStore['append']>[0]),
    /needs \{ message, targets \}/,
  );
  await store.append({ message: good, targets: [{ endpoint: 'e', priority: 0, ttlSecs: 0 }] });
  assert.equal(store.queueLength('e'), 1);
  const [entry] = readAll(store, 'e');
  await assert.rejects(store.checkpoint('e', [{ ...entry, endpoint: 'other' }]), /belongs to other, not e/);
  assert.equal(store.queueLength('e'), 1);
});

test('a store in use cannot be opened a second time', async (t) => {
  const ctx = setup(t);
  ctx.open({});
  assert.throws(() => MessageStore.open({ path: ctx.file }), /in use by another process/);
});

test("'commit' sync mode stores and reads the same way", async (t) => {
  const ctx = setup(t);
  let store = ctx.open({ sync: 'commit' });
  await store.append({ message: msg('d', 1), targets: [{ endpoint: 'e', priority: 0, ttlSecs: 0 }] });
  await store.close();
  store = ctx.open({});
  assert.equal(readAll(store, 'e')[0].message.body.toString(), 'body-1');
});

test('checkpoints of long runs are deleted as ranges, and a run with foreign entries in its range deletes only its own', async (t) => {
  const ctx = setup(t);
  const store = ctx.open({});
  await Promise.all(
    Array.from({ length: 300 }, (_, i) =>
      store.append({ message: msg('a', i), targets: [{ endpoint: 'up', priority: 0, ttlSecs: 0 }] }),
    ),
  );
  const all = readAll(store, 'up');
  assert.equal(all.length, 300);
  // A contiguous run (a pump batch) ...
  await store.checkpoint('up', all.slice(0, 100));
  // ... and a run of every other entry: the range between its ends holds entries it does not name.
  await store.checkpoint(
    'up',
    all.slice(100, 200).filter((_, i) => i % 2 === 0),
  );
  assert.equal(store.queueLength('up'), 150);
  await store.close();
  const again = ctx.open({});
  const left = readAll(again, 'up').map((e) => Number(e.message.appProperties.n));
  assert.deepEqual(left, [
    ...Array.from({ length: 50 }, (_, i) => 101 + 2 * i),
    ...Array.from({ length: 100 }, (_, i) => 200 + i),
  ]);
  await again.close();
  assert.equal(rawCount(ctx.file, 'SELECT count(*) FROM queue'), 150);
});

test('a forwarded message being stored is found in flight until its commit, then by its watermark', async (t) => {
  const ctx = setup(t);
  const store = ctx.open({});
  const origin = { stream: 'child|store-9/0', seq: 5, prev: 0 };
  assert.equal(store.forwardedInFlight(origin), undefined);
  const stored = store.append({
    message: msg('leaf', 1),
    targets: [{ endpoint: 'upstream', priority: 0, ttlSecs: 0 }],
    origin,
  });
  // Not committed yet: the watermark does not know it, the in-flight record does.
  assert.equal(store.isForwardedStored(origin), false);
  const inFlight = store.forwardedInFlight(origin);
  assert.ok(inFlight, 'a resend arriving now finds the first copy under way');
  await inFlight;
  await stored;
  assert.equal(store.isForwardedStored(origin), true);
  assert.equal(store.forwardedInFlight(origin), undefined, 'forgotten once settled');
  assert.equal(readAll(store, 'upstream').length, 1);
});

test('a batch of appends is stored in one commit, all or none, and answered once', async (t) => {
  const ctx = setup(t);
  const store = ctx.open({ maxMessages: 5 });
  const to = [{ endpoint: 'upstream', priority: 0, ttlSecs: 0 }];
  const stream = 'child|store-1/0';
  const batch = [
    { message: msg('leaf', 1), targets: to, origin: { stream, seq: 1, prev: 0 } },
    // Routed nowhere: only its place in the child's stream is recorded.
    { message: msg('leaf', 2), targets: [], origin: { stream, seq: 2, prev: 1 } },
    {
      message: msg('leaf', 3),
      targets: [...to, { endpoint: 'upstream', priority: 3, ttlSecs: 0 }],
      origin: { stream, seq: 3, prev: 2 },
    },
  ];
  const done = store.appendAll(batch);
  for (const e of batch) assert.ok(store.forwardedInFlight(e.origin), 'each origin is under way until the commit');
  await done;
  assert.deepEqual(
    readAll(store, 'upstream').map((e) => e.message.appProperties.n),
    ['1', '3'],
    'one entry per endpoint, in order',
  );
  for (const e of batch) assert.equal(store.isForwardedStored(e.origin), true);

  // A bad entry anywhere refuses the whole batch; so does a limit the batch as a whole would pass.
  await assert.rejects(
    store.appendAll([
      { message: msg('leaf', 4), targets: to },
      { message: msg('leaf', 5), targets: [{ endpoint: '', priority: 0, ttlSecs: 0 }] },
    ]),
    TypeError,
  );
  await assert.rejects(
    store.appendAll([4, 5, 6, 7].map((n) => ({ message: msg('leaf', n), targets: to }))),
    StoreFullError,
  );
  assert.equal(readAll(store, 'upstream').length, 2, 'nothing of a refused batch is stored');
  await store.appendAll([4, 5, 6].map((n) => ({ message: msg('leaf', n), targets: to })));
  assert.equal(readAll(store, 'upstream').length, 5);
  assert.equal(await store.appendAll([]), undefined);
});

test('a stored entry that cannot be read back is set aside with the reason, and its queue goes on', async (t) => {
  const ctx = setup(t);
  let store = ctx.open({});
  for (let n = 1; n <= 5; n++)
    await store.append({ message: msg('dev', n), targets: [{ endpoint: 'up', priority: 0, ttlSecs: 0 }] });
  await store.close();
  // What only a bug could write: a record of no known form for the third message.
  const db = new Database(ctx.file);
  const third = db.prepare('SELECT seq FROM messages ORDER BY seq LIMIT 1 OFFSET 2').pluck().get() as number;
  db.prepare('UPDATE messages SET meta = ? WHERE seq = ?').run('9[garbled', third);
  db.close();

  store = ctx.open({});
  const entries = readAll(store, 'up');
  assert.deepEqual(
    entries.map((e) => e.message.body.toString()),
    ['body-1', 'body-2', 'body-4', 'body-5'],
  );
  await store.checkpoint('up', entries);
  assert.equal(store.queueLength('up'), 0);
  assert.equal(store.setAsideCount('up'), 1);
  assert.equal(store.metrics('up').expired, 0);
  await store.close();

  // Kept whole, with why; and never handed out again.
  const ro = new Database(ctx.file, { readonly: true });
  const kept = ro.prepare('SELECT seq, meta, body, why FROM set_aside').all() as Array<{
    seq: number;
    meta: string;
    body: Buffer;
    why: string;
  }>;
  ro.close();
  assert.equal(kept.length, 1);
  assert.equal(kept[0]!.seq, third);
  assert.equal(kept[0]!.body.toString(), 'body-3');
  assert.match(kept[0]!.why, /unknown stored message form/);
  store = ctx.open({});
  assert.deepEqual(readAll(store, 'up'), []);
  await store.close();
  assert.equal(rawCount(ctx.file, 'SELECT count(*) FROM queue'), 0);
});

test("a sender's standard auth method is stored by a short name and read back whole; records with the full text read the same", async (t) => {
  const ctx = setup(t);
  const full = authMethodText('device', 'sas');
  const auth = { identity: { deviceId: 'dev-s' }, kind: 'sas', authMethod: full } as const;
  let store = ctx.open({});
  const to = [{ endpoint: 'up', priority: 0, ttlSecs: 0 }];
  await store.append({
    message: storedMessageOf(auth, { body: Buffer.from('short'), properties: {} }, 1_700_000_000_000),
    targets: to,
  });
  await store.close();
  const db = new Database(ctx.file);
  const meta = db.prepare('SELECT meta FROM messages').pluck().get() as string;
  assert.ok(!meta.includes('issuer'), `the record holds no full auth method text: ${meta}`);
  // A record written before the short names: the full text, escaped inside the record.
  db.prepare('UPDATE messages SET meta = ?').run(meta.replace(JSON.stringify('device.sas'), JSON.stringify(full)));
  db.close();
  store = ctx.open({});
  const [e] = readAll(store, 'up');
  assert.equal(e!.message.systemProperties.connectionAuthMethod, full);
  await store.append({
    message: storedMessageOf(auth, { body: Buffer.from('again'), properties: {} }, 1_700_000_000_001),
    targets: to,
  });
  await store.close();
  store = ctx.open({});
  assert.deepEqual(
    readAll(store, 'up').map((x) => x.message.systemProperties.connectionAuthMethod),
    [full, full],
  );
});

test('hasQueued: entries waiting for their commit count, committed ones too, checkpointed ones not', async (t) => {
  const ctx = setup(t);
  const store = ctx.open({});
  assert.equal(store.hasQueued('$upstream'), false);
  const stored = store.append({ message: msg('d1', 1), targets: [{ endpoint: '$upstream', priority: 3, ttlSecs: 0 }] });
  assert.equal(store.hasQueued('$upstream'), true, 'before its commit');
  assert.equal(store.queueLength('$upstream'), 0, 'not committed yet');
  await stored;
  assert.equal(store.hasQueued('$upstream'), true, 'committed');
  assert.equal(store.hasQueued('other'), false);
  await store.checkpoint('$upstream', readAll(store, '$upstream', 3));
  assert.equal(store.hasQueued('$upstream'), false, 'delivered');
});

test('a passing mark is on disk once markPassing resolves, reaches ahead, and is read back at open', async (t) => {
  const ctx = setup(t);
  let store = ctx.open({});
  assert.equal(store.passingMarksAtOpen().size, 0);
  const first = store.markPassing('leaf|child/0', 10);
  assert.ok(first instanceof Promise, 'the first mark of a stream is written');
  assert.ok(store.markPassing('leaf|child/0', 10) instanceof Promise, 'not covered before its commit is on disk');
  await first;
  assert.equal(store.markPassing('leaf|child/0', 10), undefined, 'covered once on disk');
  assert.equal(store.markPassing('leaf|child/0', 10 + RESERVE), undefined, 'written ahead of need');
  const beyond = store.markPassing('leaf|child/0', 11 + RESERVE);
  assert.ok(beyond instanceof Promise, 'past the reserve a new mark is written');
  await beyond;
  await store.close();
  store = ctx.open({});
  assert.equal(store.passingMarksAtOpen().get('leaf|child/0'), 11 + 2 * RESERVE);
  assert.equal(store.passingMarksAtOpen().get('other'), undefined);
});

test("hasQueuedFrom finds a sender's committed entries by its ids, modules apart from their device", async (t) => {
  const ctx = setup(t);
  const store = ctx.open({});
  const to = [{ endpoint: '$upstream', priority: 0, ttlSecs: 0 }];
  const sas = authMethodText('device', 'sas');
  await store.append({
    message: storedMessageOf(
      { identity: { deviceId: 'dev%_1', moduleId: 'm1' }, kind: 'sas', authMethod: sas },
      { body: Buffer.from('x'), properties: {} },
    ),
    targets: to,
  });
  await store.append({ message: msg('json-sender', 1), targets: to });
  assert.equal(store.hasQueuedFrom('$upstream', { deviceId: 'dev%_1', moduleId: 'm1' }), true);
  assert.equal(store.hasQueuedFrom('$upstream', { deviceId: 'dev%_1' }), false, 'the device is not its module');
  assert.equal(store.hasQueuedFrom('$upstream', { deviceId: 'dev' }), false, 'no wildcard');
  assert.equal(store.hasQueuedFrom('$upstream', { deviceId: 'json-sender' }), true, 'a JSON record names its sender');
  assert.equal(store.hasQueuedFrom('other', { deviceId: 'json-sender' }), false);
  await store.checkpoint('$upstream', readAll(store, '$upstream'));
  assert.equal(store.hasQueuedFrom('$upstream', { deviceId: 'json-sender' }), false, 'delivered');
});
