import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import type { EventToAppend } from '../../src/model/events.ts';
import { EventStream, firstReaching, partitionOf } from '../../src/store/event-stream.ts';
import { authMethodText } from '../../src/identity/auth-method.ts';

async function tempDir(t: { after(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-es-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function ev(
  deviceId: string,
  body: string,
  extra: Partial<EventToAppend['message']> = {},
  moduleId?: string,
): EventToAppend {
  return {
    deviceId,
    moduleId,
    authMethod: '{"type":"sas"}',
    messageSource: 'Telemetry',
    message: { body: Buffer.from(body), properties: {}, ...extra },
  };
}

test('appends get global sequence numbers, a partition by device, per-partition sequence numbers and byte offsets', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir, partitions: 4 });
  t.after(() => s.close());
  const infos = await Promise.all(
    ['a', 'b', 'a', 'c', 'a'].map((d, i) => s.append(ev(d, `m${i}`, { messageId: `id${i}` }))),
  );
  assert.deepEqual(
    infos.map((i) => i.sequenceNumber),
    [1, 2, 3, 4, 5],
  );
  const pa = partitionOf('a', 4);
  const aInfos = infos.filter((_, i) => ['a', 'b', 'a', 'c', 'a'][i] === 'a');
  assert.ok(
    aInfos.every((i) => i.partition === pa),
    'a device always lands in the same partition',
  );
  const samePart = infos.filter((i) => i.partition === pa);
  assert.deepEqual(
    samePart.map((i) => i.partitionSequenceNumber),
    samePart.map((_, k) => k),
  );
  for (let k = 1; k < samePart.length; k++) assert.ok(samePart[k].offset > samePart[k - 1].offset, 'offsets grow');
  assert.equal(samePart[0].offset, 0);
  const { events, nextSequenceNumber } = await s.read({});
  assert.equal(events.length, 5);
  assert.equal(nextSequenceNumber, 6);
  assert.equal(events[2].message.messageId, 'id2');
  assert.equal(events[2].message.body.toString(), 'm2');
});

test('an append resolves only once committed: another connection sees the row', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir });
  t.after(() => s.close());
  const info = await s.append(ev('dur', 'durable'));
  const other = new Database(join(dir, 'events.db'), { readonly: true });
  t.after(() => other.close());
  const row = other.prepare('SELECT dev, body FROM events WHERE seq = ?').get(info.sequenceNumber) as {
    dev: string;
    body: Buffer;
  };
  assert.equal(row.dev, 'dur');
  assert.equal(row.body.toString(), 'durable');
  assert.equal(other.pragma('journal_mode', { simple: true }), 'wal');
});

test('many concurrent appends are committed together and all resolve in order', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir });
  t.after(() => s.close());
  const infos = await Promise.all(Array.from({ length: 2000 }, (_, i) => s.append(ev(`d${i % 37}`, `x${i}`))));
  assert.deepEqual(
    infos.map((i) => i.sequenceNumber),
    Array.from({ length: 2000 }, (_, i) => i + 1),
  );
  // Group commit: one enqueued time per transaction, so far fewer distinct times than messages.
  assert.ok(new Set(infos.map((i) => i.enqueuedTime)).size < 10);
});

test('batches and single appends interleaved share a commit; each is answered with its own events, in order', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir, partitions: 2 });
  t.after(() => s.close());
  const [one, batch, two, empty] = await Promise.all([
    s.append(ev('a', 'first')),
    s.appendAll([ev('b', 'b1'), ev('c', 'b2'), ev('b', 'b3')]),
    s.append(ev('a', 'last')),
    s.appendAll([]),
  ]);
  assert.equal(one.sequenceNumber, 1);
  assert.deepEqual(
    batch.map((i) => i.sequenceNumber),
    [2, 3, 4],
  );
  assert.equal(two.sequenceNumber, 5);
  assert.deepEqual(empty, []);
  assert.equal(new Set([one, ...batch, two].map((i) => i.enqueuedTime)).size, 1, 'one commit');
  const { events } = await s.read({});
  assert.deepEqual(
    events.map((e) => e.message.body.toString()),
    ['first', 'b1', 'b2', 'b3', 'last'],
  );
  assert.deepEqual(
    events.map((e) => e.sequenceNumber),
    [1, 2, 3, 4, 5],
  );
});

test('a batch whose commit fails is refused whole and nothing of it is readable', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir });
  t.after(() => s.close());
  await s.append(ev('a', 'before'));
  // A body the table refuses (NOT NULL) in the middle of the batch: the transaction rolls back.
  const broken = ev('b', 'x');
  (broken.message as { body: unknown }).body = null;
  await assert.rejects(s.appendAll([ev('b', 'ok-1'), broken, ev('b', 'ok-2')]));
  const after = await s.append(ev('a', 'after'));
  assert.equal(after.sequenceNumber, 2, 'numbers continue as if the batch never came');
  const { events } = await s.read({});
  assert.deepEqual(
    events.map((e) => e.message.body.toString()),
    ['before', 'after'],
  );
});

test('reads by time, by device and module, and long-polls for new events', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir });
  t.after(() => s.close());
  await s.append(ev('x', 'old'));
  await new Promise((r) => setTimeout(r, 20));
  const mark = Date.now();
  await s.append(ev('y', 'new'));
  await s.append(ev('x', 'mod', {}, 'm1'));
  assert.deepEqual(
    (await s.read({ fromTime: mark })).events.map((e) => e.message.body.toString()),
    ['new', 'mod'],
  );
  assert.deepEqual(
    (await s.read({ deviceId: 'x' })).events.map((e) => e.message.body.toString()),
    ['old', 'mod'],
  );
  assert.deepEqual(
    (await s.read({ deviceId: 'x', moduleId: 'm1' })).events.map((e) => e.moduleId),
    ['m1'],
  );
  const r = await s.read({ deviceId: 'nobody' });
  assert.equal(r.events.length, 0);
  assert.equal(r.nextSequenceNumber, 4, 'an empty filtered read continues after everything scanned');

  const started = Date.now();
  const waiting = s.read({ fromSequenceNumber: 4, waitMs: 5000 });
  setTimeout(() => void s.append(ev('z', 'late')), 50);
  const got = await waiting;
  assert.equal(got.events[0].message.body.toString(), 'late');
  assert.ok(Date.now() - started < 2000, 'the wait ended on the append');

  const ac = new AbortController();
  const aborted = s.read({ fromSequenceNumber: 100, waitMs: 5000, signal: ac.signal });
  ac.abort();
  assert.deepEqual((await aborted).events, []);
  const empty = await s.read({ fromSequenceNumber: 100, waitMs: 50 });
  assert.equal(empty.events.length, 0);
});

test('retention removes old events; sequence numbers continue after a restart with an empty table', async (t) => {
  const dir = await tempDir(t);
  let s = new EventStream({ dir, retentionMs: 1000, partitions: 2 });
  await s.append(ev('r', '1'));
  await s.append(ev('r', '2'));
  assert.equal(s.prune(Date.now() + 5000), 2);
  assert.equal((await s.read({})).events.length, 0);
  const p = partitionOf('r', 2);
  assert.equal(s.partitionInfo(p).isEmpty, true);
  await s.close();
  s = new EventStream({ dir, retentionMs: 1000, partitions: 8 });
  t.after(() => s.close());
  assert.equal(s.partitionCount(), 2, 'the partition count is fixed at creation');
  const info = await s.append(ev('r', '3'));
  assert.equal(info.sequenceNumber, 3);
  assert.equal(info.partitionSequenceNumber, 2);
  assert.ok(info.offset > 0);
});

test('partition reads by sequence number, offset and time, inclusive or not; partition info', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir, partitions: 1 });
  t.after(() => s.close());
  const infos = [];
  for (let i = 0; i < 5; i++) {
    if (i === 4) await new Promise((r) => setTimeout(r, 15));
    infos.push(await s.append(ev('p', `e${i}`)));
  }
  const bodies = (es: { message: { body: Buffer } }[]) => es.map((e) => e.message.body.toString());
  assert.deepEqual(bodies(await s.readPartition({ partition: 0, fromPartitionSequenceNumber: 2 })), ['e2', 'e3', 'e4']);
  assert.deepEqual(bodies(await s.readPartition({ partition: 0, fromPartitionSequenceNumber: 2, inclusive: false })), [
    'e3',
    'e4',
  ]);
  assert.deepEqual(bodies(await s.readPartition({ partition: 0, fromOffset: infos[3].offset })), ['e3', 'e4']);
  assert.deepEqual(bodies(await s.readPartition({ partition: 0, fromOffset: infos[3].offset, inclusive: false })), [
    'e4',
  ]);
  assert.deepEqual(bodies(await s.readPartition({ partition: 0, fromTime: infos[4].enqueuedTime })), ['e4']);
  assert.deepEqual(bodies(await s.readPartition({ partition: 0, limit: 2 })), ['e0', 'e1']);
  const info = s.partitionInfo(0);
  assert.deepEqual(
    { begin: info.beginSequenceNumber, last: info.lastSequenceNumber, off: info.lastOffset, empty: info.isEmpty },
    { begin: 0, last: 4, off: infos[4].offset, empty: false },
  );
  await assert.rejects(s.readPartition({ partition: 3 }), RangeError);
});

test('readers at the end are served from memory with exactly what the file holds; retention applies to both', async (t) => {
  const dir = await tempDir(t);
  const s = new EventStream({ dir, partitions: 2, pruneIntervalMs: 3_600_000 });
  const devices = ['a', 'b', 'c'];
  await Promise.all(
    Array.from({ length: 300 }, (_, i) =>
      s.append(
        ev(
          devices[i % 3]!,
          `body-${i}`,
          { messageId: `id-${i}`, properties: { n: String(i) }, contentType: 'application/json' },
          i % 7 === 0 ? 'mod' : undefined,
        ),
      ),
    ),
  );
  const fromMemory = [
    ...(await s.read({ fromSequenceNumber: 1, limit: 1000 })).events,
    ...(await s.read({ fromSequenceNumber: 250, limit: 20 })).events,
  ];
  await s.close();
  const again = new EventStream({ dir, pruneIntervalMs: 3_600_000 });
  t.after(() => again.close());
  const fromFile = [
    ...(await again.read({ fromSequenceNumber: 1, limit: 1000 })).events,
    ...(await again.read({ fromSequenceNumber: 250, limit: 20 })).events,
  ];
  assert.equal(fromMemory.length, 320);
  const shape = (e: (typeof fromMemory)[number]) =>
    JSON.parse(JSON.stringify({ ...e, message: { ...e.message, body: e.message.body.toString() } }));
  assert.deepEqual(fromMemory.map(shape), fromFile.map(shape));

  // Events past retention are gone from memory as from the file.
  await again.append(ev('a', 'fresh'));
  assert.equal((await again.read({ fromSequenceNumber: 301 })).events.length, 1, 'served from memory');
  again.prune(Date.now() + 2 * 24 * 3600 * 1000);
  assert.deepEqual((await again.read({ fromSequenceNumber: 301 })).events, []);
});

test('bisection finds the first key whose time is reached, across gaps in the keys', () => {
  // key -> enqueued time; keys 4..6 and 10 are missing (retention, restarts).
  const rows = new Map([
    [1, 10],
    [2, 10],
    [3, 20],
    [7, 20],
    [8, 30],
    [9, 30],
    [11, 40],
  ]);
  const keys = [...rows.keys()];
  const at = (k: number) => {
    const key = keys.find((x) => x >= k);
    return key === undefined ? undefined : { key, enq: rows.get(key)! };
  };
  const first = (time: number, inclusive = true) =>
    firstReaching(1, 12, at, inclusive ? (e) => e >= time : (e) => e > time);
  assert.equal(first(0), 1);
  assert.equal(first(15), 3);
  assert.equal(first(20), 3);
  assert.equal(first(20, false), 8);
  assert.equal(first(35), 11);
  assert.equal(first(41), undefined, 'nothing that late');
  assert.equal(
    firstReaching(5, 7, at, () => true),
    undefined,
    'nothing inside the range',
  );
});

test('without time and device indexes, reads from the file by time, device and module still find exactly their events', async (t) => {
  const dir = await tempDir(t);
  let s = new EventStream({ dir, partitions: 2, pruneIntervalMs: 3_600_000 });
  // Three commits at distinct times; the last one holds more events than one scan window.
  await s.append(ev('early', 'e0'));
  await new Promise((r) => setTimeout(r, 15));
  const mark = Date.now();
  await s.append(ev('rare', 'r0', {}, 'm1'));
  await new Promise((r) => setTimeout(r, 15));
  const bulk = Array.from({ length: 45_000 }, (_, i) => ev(`bulk-${i % 50}`, `b${i}`));
  bulk[30_000] = ev('rare', 'r1');
  bulk[44_000] = ev('rare', 'r2', {}, 'm1');
  await s.appendAll(bulk);
  await s.close();
  // Reopened: nothing is in memory, every read goes to the file.
  s = new EventStream({ dir, pruneIntervalMs: 3_600_000 });
  t.after(() => s.close());
  const db = new Database(join(dir, 'events.db'), { readonly: true });
  t.after(() => db.close());
  const indexes = (
    db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'").all() as {
      name: string;
    }[]
  ).map((r) => r.name);
  assert.deepEqual(
    indexes.filter((n) => !n.startsWith('sqlite_')),
    ['events_part'],
    'only the partition index is kept up by every insert',
  );

  assert.deepEqual(
    (await s.read({ fromTime: mark, limit: 2 })).events.map((e) => e.message.body.toString()),
    ['r0', 'b0'],
  );
  const p = s.partitionOf('rare');
  assert.equal((await s.readPartition({ partition: p, fromTime: mark, limit: 1 }))[0]?.message.body.toString(), 'r0');

  // A device-filtered reader that follows nextSequenceNumber sees exactly that device's events, in order.
  const follow = async (deviceId: string, moduleId?: string) => {
    const seen: string[] = [];
    let from = 1;
    for (let pages = 0; from < s.nextSequenceNumber(); pages++) {
      assert.ok(pages < 100, 'the reader moves forward');
      const page = await s.read({ fromSequenceNumber: from, deviceId, moduleId, limit: 10 });
      assert.ok(page.nextSequenceNumber > from);
      seen.push(...page.events.map((e) => e.message.body.toString()));
      from = page.nextSequenceNumber;
    }
    return seen;
  };
  assert.deepEqual(await follow('rare'), ['r0', 'r1', 'r2']);
  assert.deepEqual(await follow('rare', 'm1'), ['r0', 'r2']);
  assert.equal((await follow('bulk-7')).length, 900);

  // Retention by time removes exactly the events older than the cutoff.
  const kept = s.nextSequenceNumber() - 1 - 1;
  assert.equal(s.prune(mark + 24 * 3600 * 1000), 1, 'the default retention is a day: the cutoff falls at the mark');
  assert.equal((await s.read({ limit: 1 })).events[0]?.message.body.toString(), 'r0');
  assert.equal((db.prepare('SELECT count(*) AS n FROM events').get() as { n: number }).n, kept);
});

test('standard auth method texts are stored by a short name and read back whole, beside full texts written before', async (t) => {
  const dir = await tempDir(t);
  const full = authMethodText('module', 'x509Certificate');
  let s = new EventStream({ dir, partitions: 2 });
  await s.append({ ...ev('d', 'one', {}, 'm'), authMethod: full });
  await s.append(ev('d', 'custom'));
  s.close();
  const file = new Database(join(dir, 'events.db'));
  assert.deepEqual(file.prepare('SELECT auth FROM events ORDER BY seq').pluck().all(), [
    'module.x509Certificate',
    '{"type":"sas"}',
  ]);
  file.prepare('UPDATE events SET auth = ? WHERE seq = 1').run(full);
  file
    .prepare(
      "INSERT INTO events SELECT seq + 2, part, pseq + 2, off + 100, enq, dev, mod, 'module.x509Certificate', gen, src, props, body FROM events WHERE seq = 1",
    )
    .run();
  file.close();
  s = new EventStream({ dir, partitions: 2 });
  t.after(() => s.close());
  const { events } = await s.read({});
  assert.deepEqual(
    events.map((e) => e.authMethod),
    [full, '{"type":"sas"}', full],
  );
});
