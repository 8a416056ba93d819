import type Database from 'better-sqlite3';
import type { DiskHeadroom } from '../disk-headroom.ts';
import type { EventFeed } from './feed.ts';
import { log } from './log.ts';
import type { EventNumbers } from './numbers.ts';
import { firstSeqReaching } from './rows.ts';
import type { StatementCache } from './schema.ts';

const PRUNE_CHUNK = 10_000;
const PRUNE_CHUNK_TIGHT = 250;

/** Deletes events older than the retention period, from the file and from the in-memory tail. */
export class Retention {
  constructor(
    private readonly db: Database.Database,
    private readonly stmts: StatementCache,
    private readonly numbers: EventNumbers,
    private readonly feed: EventFeed,
    private readonly headroom: DiskHeadroom,
    readonly retentionMs: number,
  ) {}

  /** Returns how many events went. */
  prune(now: number): number {
    if (this.feed.closed) return 0;
    const cutoff = now - this.retentionMs;
    let total = 0;
    try {
      this.numbers.save();
      const first = (this.db.prepare('SELECT MIN(seq) AS s FROM events').get() as { s: number | null }).s;
      if (first !== null) {
        const next = this.numbers.seq;
        const keep = firstSeqReaching(this.stmts, first, next, (enq) => enq >= cutoff) ?? next;
        const del = this.db.prepare('DELETE FROM events WHERE seq >= ? AND seq < ?');
        // On a near-full disk each deletion's log pages must fit in what is left: small ones, the log emptied before each.
        const tight = this.headroom.tight();
        const chunk = tight ? PRUNE_CHUNK_TIGHT : PRUNE_CHUNK;
        for (let from = first; from < keep; from += chunk) {
          if (tight) this.headroom.beforeFreeing();
          total += del.run(from, Math.min(keep, from + chunk)).changes;
        }
      }
    } catch (err) {
      log.error({ err }, 'event stream retention failed');
    }
    if (total > 0)
      log.info({ deleted: total, retentionMs: this.retentionMs }, 'event stream retention removed old events');
    // What retention removed is not served from memory either.
    this.feed.tail.dropEnqueuedBefore(cutoff);
    return total;
  }
}
