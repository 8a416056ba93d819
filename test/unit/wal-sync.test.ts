import assert from 'node:assert/strict';
import fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mock, test } from 'node:test';
import Database from 'better-sqlite3';
import type { EventToAppend } from '../../src/model/events.ts';
import { EventStream } from '../../src/store/event-stream.ts';
import { WalSync } from '../../src/store/wal-sync.ts';

/**
 * These tests hold the disk flush (fs.fdatasync) back to see what waits for it; everything else
 * (SQLite, the files) is real.
 */
type Held = Array<(err: NodeJS.ErrnoException | null) => void>;

function holdFdatasync(t: { after(fn: () => unknown): void }): Held {
  const held: Held = [];
  const real = fs.fdatasync;
  const m = mock.method(fs, 'fdatasync', (fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => {
    // Each held callback still flushes for real when released without an error.
    held.push((err) => (err ? cb(err) : real(fd, cb)));
  });
  t.after(() => m.mock.restore());
  return held;
}

async function tempDir(t: { after(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-walsync-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** How many flushes are held (a call, so the checker does not narrow it between awaits). */
const asked = (held: Held): number => held.length;

const tick = () => new Promise((r) => setTimeout(r, 20));

/** Waits (up to 5 s) for `done`: a released flush still runs the real fdatasync, which a busy disk may take a while over. */
async function until(done: () => boolean): Promise<void> {
  for (const end = Date.now() + 5000; !done() && Date.now() < end; ) await tick();
}

function ev(deviceId: string, body: string): EventToAppend {
  return {
    deviceId,
    authMethod: '{"type":"sas"}',
    messageSource: 'Telemetry',
    message: { body: Buffer.from(body), properties: {} },
  };
}

test('waiters settle only after the flush of the log, and commits made during one flush share the next', async (t) => {
  const dir = await tempDir(t);
  const db = new Database(join(dir, 'x.db'));
  t.after(() => db.close());
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE t (v)');
  const held = holdFdatasync(t);
  const sync = new WalSync(join(dir, 'x.db'), 'test store', () => db.prepare('INSERT INTO t VALUES (0)').run());
  const settled: string[] = [];
  const waiter = (name: string) => ({
    resolve: () => settled.push(name),
    reject: (e: Error) => settled.push(`${name}: ${e.message}`),
  });
  sync.add(waiter('a'));
  sync.add(waiter('b'));
  sync.add(waiter('c'));
  await tick();
  assert.deepEqual(settled, [], 'nothing settles before the disk flush');
  assert.equal(held.length, 1, 'one flush at a time');
  held.shift()!(null);
  await until(() => settled.length > 0);
  await tick();
  assert.deepEqual(settled, ['a'], 'the first flush covers what was committed before it started');
  assert.equal(held.length, 1, 'b and c, added while it ran, share the next flush');
  held.shift()!(null);
  await until(() => settled.length >= 3);
  assert.deepEqual(settled, ['a', 'b', 'c']);
  sync.add(waiter('d'));
  await tick();
  held.shift()!(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
  await until(() => settled.length >= 4);
  assert.deepEqual(settled.slice(3), ['d: not known to be on disk: EIO: i/o error']);
  await sync.close();
});

test('the event stream answers a sender, and shows the event to readers, only after the flush', async (t) => {
  const dir = await tempDir(t);
  const held = holdFdatasync(t);
  const s = new EventStream({ dir, partitions: 2, pruneIntervalMs: 3_600_000 });
  let answered = false;
  const appended = s.append(ev('dev-1', 'hello')).then((info) => {
    answered = true;
    return info;
  });
  // Wait for the commit, then for its flush to be asked for.
  for (let i = 0; i < 50 && held.length === 0; i++) await tick();
  assert.equal(held.length, 1, 'the commit asked for a flush');
  assert.equal(answered, false, 'the sender waits for the disk');
  const before = await s.read({ fromSequenceNumber: 1 });
  assert.deepEqual(before.events, [], 'a reader does not see an event that is not on disk yet');
  const part = s.partitionOf('dev-1');
  assert.deepEqual(await s.readPartition({ partition: part }), []);
  assert.equal(s.partitionInfo(part).isEmpty, true);
  let durable = false;
  const whenDurable = s.whenDurable().then(() => (durable = true));
  await tick();
  assert.equal(durable, false, 'whenDurable waits for the flush too');

  held.shift()!(null);
  const info = await appended;
  await whenDurable;
  assert.equal(info.sequenceNumber, 1);
  const after = await s.read({ fromSequenceNumber: 1 });
  assert.deepEqual(
    after.events.map((e) => e.message.body.toString()),
    ['hello'],
  );
  assert.equal((await s.readPartition({ partition: part }))[0]?.message.body.toString(), 'hello');
  const closing = s.close();
  for (let i = 0; i < 10 && asked(held) === 0; i++) await tick();
  while (asked(held) > 0) held.shift()!(null);
  await closing;
});

test('with sync "commit" the event stream flushes inside COMMIT: no background flush is asked for', async (t) => {
  const dir = await tempDir(t);
  const held = holdFdatasync(t);
  const s = new EventStream({ dir, sync: 'commit', pruneIntervalMs: 3_600_000 });
  t.after(() => s.close());
  const info = await s.append(ev('dev-2', 'x'));
  assert.equal(info.sequenceNumber, 1);
  assert.equal(held.length, 0);
  const db = new Database(join(dir, 'events.db'), { readonly: true });
  t.after(() => db.close());
  assert.equal((db.prepare('SELECT count(*) AS n FROM events').get() as { n: number }).n, 1);
});
