import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { DiskHeadroom, isDiskFull, reserveBytesOf } from '../../src/store/disk-headroom.ts';

const MiB = 1024 * 1024;

function setup(t: { after(fn: () => void): void }, o: { free: number; reusable?: number; wal?: number }) {
  const dir = mkdtempSync(join(tmpdir(), 'strata-headroom-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const walPath = join(dir, 'store.db-wal');
  const state = { free: o.free, reusable: o.reusable ?? 0, checkpoints: 0 };
  writeFileSync(walPath, '');
  if (o.wal) truncateSync(walPath, o.wal);
  const h = new DiskHeadroom({
    dir,
    walPath,
    reserveBytes: 8 * MiB,
    what: 'test store',
    settingName: 'reserve',
    checkpoint: () => {
      state.checkpoints++;
      // A checkpoint moves the log into the database: the log's space comes back.
      truncateSync(walPath, 0);
    },
    reusableBytes: () => state.reusable,
    freeBytes: () => state.free,
    log: pino({ level: 'silent' }),
  });
  return { h, state };
}

test('refuses below the reserve, says why, and takes messages again once space is back', (t) => {
  const { h, state } = setup(t, { free: 100 * MiB });
  assert.equal(h.refusal(0), undefined);
  state.free = 7 * MiB;
  const why = h.refusal(1000);
  assert.match(
    why ?? '',
    /^store full: the disk holding .* has 7\.0 MiB free, under the reserve of 8\.0 MiB kept for checkpoints \(reserve\)/,
  );
  assert.equal(h.tight(1000), true);
  state.free = 20 * MiB;
  assert.equal(h.refusal(1100), why, 'measured again at most every 250 ms while full');
  assert.equal(h.refusal(1300), undefined);
  assert.equal(h.tight(1300), false);
});

test('free pages inside the database count as room (a drained store), the disk still keeps an eighth of the reserve', (t) => {
  const { h, state } = setup(t, { free: 4 * MiB, reusable: 50 * MiB });
  assert.equal(h.refusal(0), undefined);
  state.free = 0.5 * MiB;
  assert.match(h.refusal(1000) ?? '', /store full/);
});

test('a long log is checkpointed before the store is called full', (t) => {
  const { h, state } = setup(t, { free: 12 * MiB, wal: 6 * MiB });
  assert.equal(h.refusal(0), undefined);
  assert.equal(state.checkpoints, 1);
});

test('SQLITE_FULL and ENOSPC count as a full disk, other errors do not', (t) => {
  assert.equal(isDiskFull(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' })), true);
  assert.equal(isDiskFull(Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })), true);
  assert.equal(isDiskFull(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' })), false);
  assert.equal(isDiskFull(new Error('other')), false);
  const { h } = setup(t, { free: 100 * MiB });
  assert.equal(h.failed(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' })), true);
  assert.match(h.refusal() ?? '', /store full: the disk holding .* is full/);
});

test('the reserve setting is a number of MiB, 0 or more', () => {
  assert.equal(reserveBytesOf('1', 'x'), MiB);
  assert.equal(reserveBytesOf(0.5, 'x'), MiB / 2);
  assert.throws(() => reserveBytesOf('-1', 'the setting'), /the setting must be a number of MiB, 0 or more, got "-1"/);
  assert.throws(() => reserveBytesOf('lots', 'the setting'), /must be a number of MiB/);
});
