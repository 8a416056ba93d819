import type Database from 'better-sqlite3';

/**
 * Exactly-once storage of what a child gateway forwards. A child's store numbers its messages;
 * it sends each with its stream (its store's id, the queue's priority and the sender), its
 * sequence number and the number of the message it sent before in that stream (`prev`; 0 when
 * everything before was acknowledged already). The receiving store keeps, per stream, a
 * watermark: the highest number up to which every message of the stream is durably stored.
 * A message at or below the watermark is a resend of one already stored and is skipped.
 *
 * The watermark only moves along an unbroken chain (a message whose `prev` is at or below it),
 * inside the same transaction that stores the messages, so it can never claim a message that a
 * failed or lost transfer did not store: a resend is then stored again rather than dropped.
 */

/** What a forwarded message says about its place in its stream. */
export interface ForwardedOrigin {
  stream: string;
  seq: number;
  /** The stream's message sent just before this one, or 0 when all before it were acknowledged. */
  prev: number;
}

export class OriginWatermarks {
  private readonly committed = new Map<string, number>();
  /**
   * Forwarded messages taken but not yet committed, by stream and number. A resend can arrive
   * before its original's commit (the child's link dropped and it sent again at once); it then
   * waits for the original instead of being stored a second time.
   */
  private readonly inFlight = new Map<string, Map<number, Promise<unknown>>>();
  private readonly upsert: Database.Statement;

  constructor(db: Database.Database) {
    db.exec('CREATE TABLE IF NOT EXISTS origins (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID');
    for (const row of db.prepare('SELECT stream, seq FROM origins').all() as Array<{ stream: string; seq: number }>) this.committed.set(row.stream, row.seq);
    this.upsert = db.prepare('INSERT INTO origins (stream, seq) VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > origins.seq');
  }

  /** True when this message is already stored (a resend): skip it. */
  isStored(origin: ForwardedOrigin): boolean {
    return origin.seq <= (this.committed.get(origin.stream) ?? 0);
  }

  /** Remembers a forwarded message being stored by `storing`, until `forget` is told its commit is over. */
  track(origin: ForwardedOrigin, storing: Promise<unknown>): void {
    let bySeq = this.inFlight.get(origin.stream);
    if (!bySeq) this.inFlight.set(origin.stream, (bySeq = new Map()));
    bySeq.set(origin.seq, storing);
  }

  /**
   * After the commit that held these origins, whether it succeeded (the watermark answers from
   * now on) or failed (a resend is then stored anew).
   */
  forget(origin: ForwardedOrigin): void {
    const bySeq = this.inFlight.get(origin.stream);
    if (!bySeq) return;
    bySeq.delete(origin.seq);
    if (bySeq.size === 0) this.inFlight.delete(origin.stream);
  }

  /** The storing of this same message when it is under way (a resend of it waits for that). */
  inFlightOf(origin: ForwardedOrigin): Promise<unknown> | undefined {
    return this.inFlight.get(origin.stream)?.get(origin.seq);
  }

  /**
   * Inside the transaction that stores `origins` (in append order): moves the watermarks along
   * the chains they continue and writes them. Returns what to apply once the commit succeeded.
   */
  writeInTransaction(origins: Iterable<ForwardedOrigin>): Map<string, number> {
    const moved = new Map<string, number>();
    for (const o of origins) {
      const w = moved.get(o.stream) ?? this.committed.get(o.stream) ?? 0;
      if ((o.prev === 0 || o.prev <= w) && o.seq > w) moved.set(o.stream, o.seq);
    }
    for (const [stream, seq] of moved) this.upsert.run(stream, seq);
    return moved;
  }

  /** After the commit: the moved watermarks hold. */
  committedNow(moved: Map<string, number>): void {
    for (const [stream, seq] of moved) if (seq > (this.committed.get(stream) ?? 0)) this.committed.set(stream, seq);
  }
}
