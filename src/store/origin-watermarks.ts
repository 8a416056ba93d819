import type Database from 'better-sqlite3';
import type { ForwardedOrigin } from '../model/message.ts';

/**
 * Exactly-once storage of what a child gateway forwards. A child's store numbers its messages;
 * it sends each with its stream (its store's id, the queue's priority and the sender), its
 * sequence number and the number of the message it sent before in that stream (`prev`; 0 when
 * everything before was acknowledged already). A stored message therefore shows that the stream
 * holds nothing between `prev` and it: the receiving store keeps, per stream, what it holds as a
 * watermark (everything up to it is stored) and a few spans above it (ranges stored while an
 * earlier message was missing, say a batch that travelled while the one before it was lost).
 * A message inside them is a resend of one already stored and is skipped; when the missing part
 * arrives the spans join the watermark. Both are written in the same transaction that stores the
 * messages, so they never claim a message that a failed or lost transfer did not store.
 */

/** A stream's stored ranges: everything up to `mark`, and the spans (lo, hi] above it, in order. */
export interface StreamCoverage {
  mark: number;
  spans: Array<[lo: number, hi: number]>;
  spansChanged?: boolean;
}

/** What a transaction moved, by stream: applied once it committed (`committedNow`). */
export type OriginsMoved = Map<string, StreamCoverage>;

/** Spans kept per stream; past it the oldest go (a resend inside them would be stored again). */
const MAX_SPANS = 64;
const NO_SPANS: Array<[number, number]> = [];

/** Records that (prev, seq] is stored. */
export function cover(c: StreamCoverage, prev: number, seq: number): void {
  if (seq <= c.mark) return;
  if (prev <= c.mark) {
    c.mark = seq;
    while (c.spans.length > 0 && c.spans[0]![0] <= c.mark) {
      c.mark = Math.max(c.mark, c.spans.shift()![1]);
      c.spansChanged = true;
    }
    return;
  }
  let lo = prev;
  let hi = seq;
  const kept: Array<[number, number]> = [];
  let at = 0;
  for (const span of c.spans) {
    if (span[0] <= hi && lo <= span[1]) {
      lo = Math.min(lo, span[0]);
      hi = Math.max(hi, span[1]);
    } else {
      if (span[1] < lo) at++;
      kept.push(span);
    }
  }
  kept.splice(at, 0, [lo, hi]);
  if (kept.length > MAX_SPANS) kept.splice(0, kept.length - MAX_SPANS);
  c.spans = kept;
  c.spansChanged = true;
}

/** True when `seq` lies in what `c` records as stored. */
export function covers(c: StreamCoverage, seq: number): boolean {
  if (seq <= c.mark) return true;
  for (const [lo, hi] of c.spans) if (seq > lo && seq <= hi) return true;
  return false;
}

export class OriginWatermarks {
  private readonly committed = new Map<string, number>();
  private readonly spans = new Map<string, Array<[number, number]>>();
  /**
   * Forwarded messages taken but not yet committed, by stream and number. A resend can arrive
   * before its original's commit (the child's link dropped and it sent again at once); it then
   * waits for the original instead of being stored a second time.
   */
  private readonly inFlight = new Map<string, Map<number, Promise<unknown>>>();
  private readonly upsert: Database.Statement;
  private readonly deleteSpans: Database.Statement;
  private readonly insertSpan: Database.Statement;

  constructor(db: Database.Database) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS origins (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS origin_spans (stream TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, PRIMARY KEY (stream, lo)) WITHOUT ROWID;
    `);
    for (const row of db.prepare('SELECT stream, seq FROM origins').all() as Array<{ stream: string; seq: number }>)
      this.committed.set(row.stream, row.seq);
    for (const row of db.prepare('SELECT stream, lo, hi FROM origin_spans ORDER BY stream, lo').all() as Array<{
      stream: string;
      lo: number;
      hi: number;
    }>) {
      let list = this.spans.get(row.stream);
      if (!list) this.spans.set(row.stream, (list = []));
      list.push([row.lo, row.hi]);
    }
    this.upsert = db.prepare(
      'INSERT INTO origins (stream, seq) VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > origins.seq',
    );
    this.deleteSpans = db.prepare('DELETE FROM origin_spans WHERE stream = ?');
    this.insertSpan = db.prepare('INSERT INTO origin_spans (stream, lo, hi) VALUES (?, ?, ?)');
  }

  /** True when this message is already stored (a resend): skip it. */
  isStored(origin: ForwardedOrigin): boolean {
    return covers(
      { mark: this.committed.get(origin.stream) ?? 0, spans: this.spans.get(origin.stream) ?? NO_SPANS },
      origin.seq,
    );
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
   * Inside the transaction that stores `origins` (in append order): records what they cover and
   * writes it. Returns what to apply once the commit succeeded.
   */
  writeInTransaction(origins: Iterable<ForwardedOrigin>): OriginsMoved {
    const moved: OriginsMoved = new Map();
    for (const o of origins) {
      let c = moved.get(o.stream);
      if (!c)
        moved.set(
          o.stream,
          (c = { mark: this.committed.get(o.stream) ?? 0, spans: [...(this.spans.get(o.stream) ?? [])] }),
        );
      cover(c, o.prev, o.seq);
    }
    for (const [stream, c] of moved) {
      this.upsert.run(stream, c.mark);
      if (!c.spansChanged) continue;
      this.deleteSpans.run(stream);
      for (const [lo, hi] of c.spans) this.insertSpan.run(stream, lo, hi);
    }
    return moved;
  }

  /** After the commit: what moved holds. */
  committedNow(moved: OriginsMoved): void {
    for (const [stream, c] of moved) {
      if (c.mark > (this.committed.get(stream) ?? 0)) this.committed.set(stream, c.mark);
      if (!c.spansChanged) continue;
      if (c.spans.length > 0) this.spans.set(stream, c.spans);
      else this.spans.delete(stream);
    }
  }
}
