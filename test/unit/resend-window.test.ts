import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { DEFAULT_RESEND_WINDOW_MS } from '../../src/store/message-store/types.ts';
import type { StoredMessage } from '../../src/store/message-store.ts';
import { ResendWindow, type ResendKey } from '../../src/store/resend-window.ts';
import { tempStore } from '../helpers/temp-store.ts';

function msg(sender: string, id: string): StoredMessage {
  return { body: Buffer.from(id), systemProperties: { messageId: id }, appProperties: {}, source: '/messages', sender };
}

const UP = [{ endpoint: '$upstream', priority: 0, ttlSecs: 7200 }];
const key = (sender: string, messageId: string, via: string, print = 'p'): ResendKey => ({
  sender,
  messageId,
  via,
  print,
});

test('a message of the same sender and id on another connection within the window is the resend of the stored one; on the same connection, from another sender, or with another id it is new', async (t) => {
  const store = tempStore(t).open({});
  await store.append({ message: msg('dev-1', 'm1'), targets: UP, resend: key('dev-1', 'm1', 'run/1') });
  const original = store.resendOriginal(key('dev-1', 'm1', 'run/2'));
  assert.ok(original instanceof Promise, 'a resend on a new connection is recognised');
  await original;
  assert.equal(
    store.resendOriginal(key('dev-1', 'm1', 'run/1')),
    undefined,
    'the same connection again: a device reusing its id',
  );
  assert.equal(store.resendOriginal(key('dev-2', 'm1', 'run/2')), undefined, 'ids are per sender');
  assert.equal(store.resendOriginal(key('dev-1', 'm2', 'run/2')), undefined);
  assert.equal(
    store.resendOriginal(key('dev-1', 'm1', 'run/2', 'other content')),
    undefined,
    'the id reused for another message',
  );
});

test('a resend that arrives before its original is on disk waits for that commit', async (t) => {
  const store = tempStore(t).open({ commitWindowMs: 50 });
  const storing = store.append({ message: msg('dev-1', 'm1'), targets: UP, resend: key('dev-1', 'm1', 'a') });
  const original = store.resendOriginal(key('dev-1', 'm1', 'b'));
  assert.equal(original, storing, 'the resend is answered with the original');
  await storing;
});

test('the window is narrow: past it a repeated id is a new message', async (t) => {
  let now = 1_000_000;
  const store = tempStore(t).open({ now: () => now, resendWindowMs: 60_000 });
  await store.append({ message: msg('dev-1', 'm1'), targets: UP, resend: key('dev-1', 'm1', 'a') });
  now += 59_000;
  assert.ok(store.resendOriginal(key('dev-1', 'm1', 'b')), 'inside the window');
  now += 2000;
  assert.equal(store.resendOriginal(key('dev-1', 'm1', 'b')), undefined, 'past the window');
});

test('the window is on disk: a store opened again (a gateway killed and restarted) recognises the resend of what it stored before', async (t) => {
  const ctx = tempStore(t);
  const first = ctx.open({});
  await first.append({ message: msg('dev-1', 'm1'), targets: UP, resend: key('dev-1', 'm1', 'run1/7') });
  await first.close();
  const again = ctx.open({});
  assert.ok(again.resendOriginal(key('dev-1', 'm1', 'run2/1')));
  // Nothing else is remembered: a message that had no id, or went nowhere, is not in it.
  assert.equal(again.resendOriginal(key('dev-1', 'm2', 'run2/1')), undefined);
});

test('a message that is not stored (no targets) leaves nothing in the window; 0 turns the window off', async (t) => {
  const ctx = tempStore(t);
  const store = ctx.open({});
  await store.append({ message: msg('dev-1', 'm1'), targets: [], resend: key('dev-1', 'm1', 'a') });
  assert.equal(store.resendOriginal(key('dev-1', 'm1', 'b')), undefined);
  await store.close();
  const off = ctx.open({ resendWindowMs: 0 });
  await off.append({ message: msg('dev-1', 'm2'), targets: UP, resend: key('dev-1', 'm2', 'a') });
  assert.equal(off.resendOriginal(key('dev-1', 'm2', 'b')), undefined);
});

test('at most maxEntries ids are kept, the oldest go first', () => {
  const db = new Database(':memory:');
  const w = new ResendWindow(db, { windowMs: 60_000, maxEntries: 3, now: () => 5 });
  for (const id of ['a', 'b', 'c', 'd']) w.add(key('dev', id, 'x'), Promise.resolve());
  const written = w.take()!;
  w.writeInTransaction(written);
  w.committed(written);
  assert.equal(w.originalOf(key('dev', 'a', 'y')), undefined, 'the oldest went');
  for (const id of ['b', 'c', 'd']) assert.equal(w.originalOf(key('dev', id, 'y')), 'stored');
});

test('a failed commit leaves nothing claimed: the resend is stored anew', () => {
  const db = new Database(':memory:');
  const w = new ResendWindow(db, { windowMs: 60_000, maxEntries: 10, now: () => 5 });
  w.add(key('dev', 'a', 'x'), Promise.resolve());
  const written = w.take()!;
  w.writeInTransaction(written);
  w.failed(written);
  assert.equal(w.originalOf(key('dev', 'a', 'y')), undefined);
});

test('the window on disk does not grow: rows past it are deleted as new ones are written', async (t) => {
  let now = 1_000_000;
  const ctx = tempStore(t);
  const store = ctx.open({ now: () => now, resendWindowMs: 10_000 });
  for (let i = 0; i < 30; i++) {
    await store.append({ message: msg('dev-1', `m${i}`), targets: UP, resend: key('dev-1', `m${i}`, 'a') });
    now += 2000;
  }
  assert.ok(store.resendOriginal(key('dev-1', 'm29', 'b')));
  assert.equal(store.resendOriginal(key('dev-1', 'm20', 'b')), undefined);
  await store.close();
  const db = new Database(ctx.file, { readonly: true });
  const rows = db.prepare('SELECT count(*) FROM resend_window').pluck().get() as number;
  db.close();
  assert.ok(rows <= 7, `${rows} rows kept for a 10 s window written every 2 s`);
});

test("the default window outlasts the official device SDK's retries of one send (a resend can come that late)", () => {
  // The SDK's budget for one operation, retries included, as its client sets it.
  const require = createRequire(import.meta.url);
  const sdkClient = readFileSync(
    join(dirname(require.resolve('azure-iot-device')), 'dist', 'internal_client.js'),
    'utf8',
  );
  const budget = Number(/MAX_OPERATION_TIMEOUT = (\d+)/.exec(sdkClient)?.[1]);
  assert.ok(budget > 0, 'the SDK names its operation timeout');
  assert.ok(
    DEFAULT_RESEND_WINDOW_MS >= budget + 30_000,
    `window ${DEFAULT_RESEND_WINDOW_MS} ms, SDK retries for ${budget} ms`,
  );
});

test('on disk too, at most maxEntries ids are kept whatever the rate (rows past the cap go)', () => {
  const db = new Database(':memory:');
  let now = 1_000_000;
  const w = new ResendWindow(db, { windowMs: 300_000, maxEntries: 50, now: () => now });
  // 100 commits of 10 ids, 1.1 s apart: all inside the window, ten times the cap.
  for (let c = 0; c < 100; c++) {
    for (let i = 0; i < 10; i++) w.add(key('dev', `m${c}-${i}`, 'x'), Promise.resolve());
    const written = w.take()!;
    w.writeInTransaction(written);
    w.committed(written);
    now += 1100;
  }
  const ids = (db.prepare('SELECT keys FROM resend_window').pluck().all() as string[]).reduce(
    (n, keys) => n + (JSON.parse(keys) as unknown[]).length,
    0,
  );
  assert.ok(ids >= 50 && ids <= 60, `${ids} ids on disk for a cap of 50`);
  // A store opened again finds the newest ones.
  const again = new ResendWindow(db, { windowMs: 300_000, maxEntries: 50, now: () => now });
  assert.equal(again.originalOf(key('dev', 'm99-9', 'y')), 'stored');
  assert.equal(again.originalOf(key('dev', 'm0-0', 'y')), undefined);
});
