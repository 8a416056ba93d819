import type Database from 'better-sqlite3';
import { metaNumber } from './schema.ts';

/**
 * The numbers the next commit gives: the global sequence number, and per partition the
 * sequence number and byte offset; with the last enqueued time, which never goes back.
 * Numbers never go back either, even after retention emptied the table: the high marks are
 * kept in `meta` (see save).
 */
export class EventNumbers {
  seq: number;
  readonly pseqs: number[] = [];
  readonly offs: number[] = [];
  lastEnqueued = 0;

  constructor(
    private readonly db: Database.Database,
    readonly partitions: number,
  ) {
    // Sequence numbers never go back, even after retention emptied the table: keep the high marks in meta.
    const maxSeq = (db.prepare('SELECT MAX(seq) AS m FROM events').get() as { m: number | null }).m;
    const metaSeq = metaNumber(db, 'next_seq');
    this.seq = Math.max(maxSeq === null ? 1 : maxSeq + 1, metaSeq ?? 1);
    const lastOfPart = db.prepare(
      'SELECT pseq, off, LENGTH(CAST(props AS BLOB)) + LENGTH(body) AS size, enq FROM events WHERE part = ? ORDER BY pseq DESC LIMIT 1',
    );
    for (let p = 0; p < partitions; p++) {
      const row = lastOfPart.get(p) as { pseq: number; off: number; size: number; enq: number } | undefined;
      const metaPseq = metaNumber(db, `next_pseq_${p}`) ?? 0;
      const metaOff = metaNumber(db, `next_off_${p}`) ?? 0;
      this.pseqs.push(Math.max(row ? row.pseq + 1 : 0, metaPseq));
      this.offs.push(Math.max(row ? row.off + row.size : 0, metaOff));
      if (row && row.enq > this.lastEnqueued) this.lastEnqueued = row.enq;
    }
  }

  /** Writes the high marks to `meta`. */
  save(): void {
    const put = this.db.prepare(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
    );
    this.db.transaction(() => {
      put.run('next_seq', String(this.seq));
      for (let p = 0; p < this.partitions; p++) {
        put.run(`next_pseq_${p}`, String(this.pseqs[p]));
        put.run(`next_off_${p}`, String(this.offs[p]));
      }
    })();
  }
}
