import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { rmSync, statfsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isEngineError } from '../../src/model/errors.ts';
import type { EventToAppend } from '../../src/model/events.ts';
import { EventStream } from '../../src/store/event-stream.ts';

/** A real SQLITE_FULL needs a small file system of its own (CI runs as root). */
const NOT_ROOT = process.getuid?.() !== 0 && 'mounting a tmpfs needs root';

function ev(n: number, bytes: number): EventToAppend {
  return {
    deviceId: `d${n % 3}`,
    authMethod: '{"type":"sas"}',
    messageSource: 'Telemetry',
    message: { body: Buffer.alloc(bytes, n % 256), properties: {} },
  };
}

test('a commit that fails on a full disk is refused as store-full and leaves no hole in the numbering', {
  skip: NOT_ROOT,
}, async (t) => {
  const mnt = await mkdtemp(join(tmpdir(), 'strata-es-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
  let s: EventStream | undefined;
  t.after(async () => {
    await s?.close();
    execFileSync('umount', [mnt]);
    await rm(mnt, { recursive: true, force: true });
  });
  // No reserve: the commit itself runs into the full disk, as when another program filled it.
  s = new EventStream({ dir: join(mnt, 'es'), partitions: 2, diskReserveBytes: 0 });
  const first = await s.appendAll([ev(0, 1000), ev(1, 1000), ev(2, 1000)]);
  // Leave about 300 KB: a batch of 1 MB cannot commit.
  const free = statfsSync(mnt).bavail * statfsSync(mnt).bsize;
  const filler = join(mnt, 'filler');
  writeFileSync(filler, Buffer.alloc(Math.max(0, free - 300 * 1024)));
  const big = Array.from({ length: 50 }, (_, i) => ev(10 + i, 20_000));
  await assert.rejects(
    s.appendAll(big),
    (err: unknown) => isEngineError(err, 'store-full') && /store full/.test((err as Error).message),
  );
  rmSync(filler);
  // A full store measures again at most every 250 ms.
  await new Promise((r) => setTimeout(r, 300));
  const after = await s.appendAll([ev(3, 1000), ev(4, 1000)]);
  assert.equal(after[0]!.sequenceNumber, first[2]!.sequenceNumber + 1, 'the next append takes the next number');
  const byPart = new Map<number, number[]>();
  for (const i of [...first, ...after])
    byPart.set(i.partition, [...(byPart.get(i.partition) ?? []), i.partitionSequenceNumber]);
  for (const [, seqs] of byPart)
    assert.deepEqual(
      seqs,
      seqs.map((_, k) => seqs[0]! + k),
      'partition numbers without holes',
    );
  const read = await s.read({ fromSequenceNumber: 1, limit: 100 });
  assert.deepEqual(
    read.events.map((e) => e.sequenceNumber),
    [1, 2, 3, 4, 5],
  );
});
