import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import type { EventToAppend, StoredEvent, StoredEventInfo } from '../../src/model/events.ts';
import { EventStream, partitionOf } from '../../src/store/event-stream.ts';
import { EventTail } from '../../src/store/event-stream/tail.ts';
import { mountSmallDisk } from '../helpers/tmpfs-disk.ts';

/**
 * Reads of the event stream across holes in its numbering: every start position (before the
 * first event, inside a hole, after the last) gives exactly the events at or after it, from
 * memory and from the file, by sequence number, by device and by partition.
 */

function stored(seq: number, enq = seq, body = `b${seq}`): StoredEvent {
  return {
    sequenceNumber: seq,
    partition: 0,
    partitionSequenceNumber: seq,
    offset: seq * 10,
    enqueuedTime: enq,
    deviceId: seq % 2 === 0 ? 'even' : 'odd',
    authMethod: '{"type":"sas"}',
    messageSource: 'Telemetry',
    message: { body: Buffer.from(body), properties: {} },
  };
}

function ev(deviceId: string, body: string): EventToAppend {
  return {
    deviceId,
    authMethod: '{"type":"sas"}',
    messageSource: 'Telemetry',
    message: { body: Buffer.from(body), properties: {} },
  };
}

const seqs = (events: readonly StoredEvent[]) => events.map((e) => e.sequenceNumber);

test('the in-memory tail finds every start position across holes: before the first, inside a hole, after the last', () => {
  const held = [5, 6, 7, 10, 11, 15, 20];
  const tail = new EventTail(1000, 1 << 20);
  tail.add(held.slice(0, 3).map((s) => stored(s)));
  tail.add(held.slice(3).map((s) => stored(s)));
  assert.equal(tail.first(), 5);
  for (const end of [21, 12, 5]) {
    for (const limit of [1, 2, 3, 100]) {
      for (let start = 0; start <= 25; start++) {
        const got = tail.from(start, end, limit);
        if (start < 5) {
          assert.equal(got, undefined, `start ${start} is before the tail: the file must be read`);
          continue;
        }
        const want = held.filter((s) => s >= start && s < end).slice(0, limit);
        assert.deepEqual(got && seqs(got), want, `start ${start}, end ${end}, limit ${limit}`);
        const visited: number[] = [];
        assert.equal(
          tail.scan(start, end, (e) => {
            visited.push(e.sequenceNumber);
            return visited.length < limit;
          }),
          true,
        );
        assert.deepEqual(visited, want, `scan from ${start}, end ${end}, limit ${limit}`);
      }
    }
  }
  assert.equal(
    tail.scan(4, 21, () => true),
    false,
  );
});

test('the tail keeps its bounds and drops what retention removed; its positions stay right after dropping', () => {
  const tail = new EventTail(4, 1 << 20);
  tail.add([1, 2, 4, 8, 9, 13].map((s) => stored(s, s * 100)));
  assert.equal(tail.size, 4);
  assert.equal(tail.first(), 4);
  assert.equal(tail.from(3, 100, 10), undefined);
  assert.deepEqual(seqs(tail.from(5, 100, 10)!), [8, 9, 13]);
  tail.dropEnqueuedBefore(850);
  assert.equal(tail.first(), 9);
  assert.deepEqual(seqs(tail.from(10, 100, 10)!), [13]);
  assert.deepEqual(seqs(tail.from(14, 100, 10)!), []);
  // Body bytes bound it too.
  const small = new EventTail(100, 10);
  small.add([stored(1, 1, 'aaaa'), stored(3, 3, 'bbbb'), stored(7, 7, 'cccc')]);
  assert.equal(small.first(), 3);
  assert.deepEqual(seqs(small.from(4, 100, 10)!), [7]);
  // An event out of order empties it: readers go to the file instead of getting a wrong page.
  small.add([stored(5)]);
  assert.equal(small.first(), 5);
  assert.equal(small.size, 1);
});

/** Reads the whole stream from `start` with `read`, page by page, without waiting. */
async function readAll(
  s: EventStream,
  start: number,
  opts: { deviceId?: string; limit?: number } = {},
): Promise<number[]> {
  const out: number[] = [];
  let from = start;
  for (let pages = 0; pages < 10_000; pages++) {
    const page = await s.read({ fromSequenceNumber: from, limit: opts.limit ?? 7, deviceId: opts.deviceId });
    out.push(...seqs(page.events));
    if (page.events.length === 0 && page.nextSequenceNumber >= s.nextSequenceNumber()) return out;
    assert.ok(page.nextSequenceNumber >= from, 'the position never goes back');
    from = page.nextSequenceNumber;
  }
  throw new Error('read did not reach the end');
}

async function readPartitionAll(s: EventStream, partition: number, fromPseq: number): Promise<number[]> {
  const out: number[] = [];
  let from = fromPseq;
  for (;;) {
    const events = await s.readPartition({ partition, fromPartitionSequenceNumber: from, limit: 5 });
    if (events.length === 0) return out;
    out.push(...events.map((e) => e.partitionSequenceNumber));
    from = events[events.length - 1]!.partitionSequenceNumber + 1;
  }
}

/** Every reader from every position gives exactly the acknowledged events at or after it. */
async function assertEveryPosition(
  s: EventStream,
  acked: readonly StoredEventInfo[],
  devices: readonly string[],
  ackedDevice: Map<number, string>,
  where: string,
): Promise<void> {
  const all = acked.map((a) => a.sequenceNumber).sort((a, b) => a - b);
  const last = all[all.length - 1]!;
  for (let start = 0; start <= last + 2; start++) {
    const want = all.filter((q) => q >= start);
    assert.deepEqual(await readAll(s, start), want, `${where}: read from ${start}`);
    for (const d of devices) {
      assert.deepEqual(
        await readAll(s, start, { deviceId: d }),
        want.filter((q) => ackedDevice.get(q) === d),
        `${where}: read ${d} from ${start}`,
      );
    }
  }
  for (let p = 0; p < s.partitionCount(); p++) {
    const inPart = acked
      .filter((a) => a.partition === p)
      .map((a) => a.partitionSequenceNumber)
      .sort((a, b) => a - b);
    const top = inPart.length ? inPart[inPart.length - 1]! : 0;
    for (let start = 0; start <= top + 2; start++) {
      assert.deepEqual(
        await readPartitionAll(s, p, start),
        inPart.filter((q) => q >= start),
        `${where}: partition ${p} from ${start}`,
      );
    }
  }
}

test('appends that fail on a full disk use up no sequence numbers, and every acknowledged event is read from every position', async (t) => {
  const disk = mountSmallDisk(t, 2 * 1024 * 1024);
  if (!disk) return t.skip('needs root to mount a small tmpfs');
  const s = new EventStream({ dir: disk.dir, partitions: 2, pruneIntervalMs: 3_600_000, diskReserveBytes: 0 });
  let open = true;
  t.after(async () => {
    disk.free();
    if (open) await s.close();
  });
  const devices = ['dev-a', 'dev-b', 'dev-c'];
  assert.notEqual(partitionOf('dev-a', 2), partitionOf('dev-b', 2), 'two partitions in use');
  const acked: StoredEventInfo[] = [];
  const ackedDevice = new Map<number, string>();
  let refused = 0;
  let n = 0;
  /** One commit of an event from each device; counts what was acknowledged and what refused. */
  const round = async (): Promise<boolean> => {
    const results = await Promise.allSettled(devices.map((d) => s.append(ev(d, `${d}-${n++}-${'x'.repeat(900)}`))));
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') {
        acked.push(r.value);
        ackedDevice.set(r.value.sequenceNumber, devices[i]!);
      } else refused++;
    });
    return results.every((r) => r.status === 'rejected');
  };
  const phase = async (rounds: number) => {
    for (let i = 0; i < rounds; i++) await round();
  };
  /** Fills the disk and sends until three commits in a row were refused. */
  const failSome = async () => {
    disk.fill();
    let inARow = 0;
    for (let i = 0; i < 200 && inARow < 3; i++) inARow = (await round()) ? inARow + 1 : 0;
    assert.equal(inARow, 3, 'appends fail on the full disk');
    disk.free();
  };

  await phase(5);
  await failSome();
  await phase(5);
  await failSome();
  await phase(4);
  assert.ok(refused >= 18, `appends were refused (${refused})`);

  await assertEveryPosition(s, acked, devices, ackedDevice, 'from memory');

  // What Event Hubs clients expect: numbers count the events that exist, one after the other.
  const global = acked.map((a) => a.sequenceNumber).sort((a, b) => a - b);
  assert.deepEqual(
    global,
    global.map((_, i) => i + 1),
    'no sequence number went to a refused append',
  );
  for (let p = 0; p < 2; p++) {
    const part = acked
      .filter((a) => a.partition === p)
      .map((a) => a.partitionSequenceNumber)
      .sort((a, b) => a - b);
    assert.deepEqual(
      part,
      part.map((_, i) => i),
      `partition ${p}: no partition sequence number went to a refused append`,
    );
  }
  assert.equal(s.nextSequenceNumber(), acked.length + 1);
  await s.close();
  open = false;
  const again = new EventStream({ dir: disk.dir, pruneIntervalMs: 3_600_000, diskReserveBytes: 0 });
  t.after(() => again.close());
  await assertEveryPosition(again, acked, devices, ackedDevice, 'from the file');
  const next = await again.append(ev('dev-a', 'after restart'));
  assert.equal(next.sequenceNumber, acked.length + 1, 'numbering continues without a gap after a restart');
});

test('holes already in a stored stream (from any source) are read across, from the file and from memory', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-es-holes-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const devices = ['dev-a', 'dev-b'];
  const acked: StoredEventInfo[] = [];
  const ackedDevice = new Map<number, string>();
  const first = new EventStream({ dir, partitions: 2, pruneIntervalMs: 3_600_000 });
  for (let i = 0; i < 24; i++) {
    const d = devices[i % 2]!;
    const info = await first.append(ev(d, `m${i}`));
    acked.push(info);
    ackedDevice.set(info.sequenceNumber, d);
  }
  await first.close();
  // Rows missing inside the numbering, as a database written by an earlier version holds them
  // where its appends failed, and at the end (numbers used by appends that never committed).
  const gone = new Set([1, 2, 6, 7, 8, 13, 23, 24]);
  const db = new Database(join(dir, 'events.db'));
  db.prepare(`DELETE FROM events WHERE seq IN (${[...gone].join(',')})`).run();
  db.prepare(`INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', '30')`).run();
  db.close();
  const kept = acked.filter((a) => !gone.has(a.sequenceNumber));

  const s = new EventStream({ dir, pruneIntervalMs: 3_600_000 });
  t.after(() => s.close());
  await assertEveryPosition(s, kept, devices, ackedDevice, 'stored with holes');
  // New events go to memory after the holes; readers cross from the file into memory.
  for (let i = 0; i < 10; i++) {
    const d = devices[i % 2]!;
    const info = await s.append(ev(d, `n${i}`));
    kept.push(info);
    ackedDevice.set(info.sequenceNumber, d);
  }
  assert.equal(kept[kept.length - 10]!.sequenceNumber, 30, 'numbers never go back');
  await assertEveryPosition(s, kept, devices, ackedDevice, 'stored with holes, then appended');
});
