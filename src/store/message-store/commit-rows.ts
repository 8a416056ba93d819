import { INSERT_CHUNK, type Statements } from './schema.ts';
import type { PendingAppend, PendingDelete } from './state.ts';

/** The rows one commit writes and deletes, with as few statements as the batch allows. */

/** Shorter runs of deletes are cheaper row by row than counted and deleted as a range. */
const MIN_RANGE_DELETE = 8;

/** The messages and their queue entries, many rows per statement. */
export function insertAppends(s: Statements, appends: PendingAppend[]): void {
  let i = 0;
  const args: unknown[] = [];
  for (; i + INSERT_CHUNK <= appends.length; i += INSERT_CHUNK) {
    args.length = 0;
    for (let k = i; k < i + INSERT_CHUNK; k++) {
      const a = appends[k]!;
      args.push(a.seq, a.size, a.enqueuedAt, a.meta, a.message.body);
    }
    s.insertMessages.run(args);
  }
  for (; i < appends.length; i++) {
    const a = appends[i]!;
    s.insertMessage.run(a.seq, a.size, a.enqueuedAt, a.meta, a.message.body);
  }
  const rows: unknown[] = [];
  let n = 0;
  for (const a of appends) {
    for (const t of a.targets) {
      rows.push(t.ep.id, t.priority, a.seq, t.expiresAt === Infinity ? 0 : t.expiresAt);
      if (++n === INSERT_CHUNK) {
        s.insertQueues.run(rows);
        rows.length = 0;
        n = 0;
      }
    }
  }
  for (let k = 0; k < rows.length; k += 4) s.insertQueue.run(rows[k], rows[k + 1], rows[k + 2], rows[k + 3]);
}

/** Deletes the queue entries; `gone` hears of each one that was still there. */
export function deleteEntries(s: Statements, deletes: PendingDelete[], gone: (d: PendingDelete) => void): void {
  for (let i = 0; i < deletes.length; ) {
    // A checkpointed batch is a run of one queue's consecutive entries: one range
    // statement deletes it, once a count shows the range holds nothing else.
    const d = deletes[i]!;
    let j = i + 1;
    while (
      j < deletes.length &&
      deletes[j]!.ep === d.ep &&
      deletes[j]!.priority === d.priority &&
      deletes[j]!.reason === d.reason &&
      deletes[j]!.seq > deletes[j - 1]!.seq
    )
      j++;
    const last = deletes[j - 1]!;
    if (j - i >= MIN_RANGE_DELETE && s.countRange.get(d.ep.id, d.priority, d.seq, last.seq) === j - i) {
      s.deleteRange.run(d.ep.id, d.priority, d.seq, last.seq);
      for (let k = i; k < j; k++) gone(deletes[k]!);
    } else {
      for (let k = i; k < j; k++) {
        const x = deletes[k]!;
        if (s.deleteQueue.run(x.ep.id, x.priority, x.seq).changes > 0) gone(x);
      }
    }
    i = j;
  }
}
