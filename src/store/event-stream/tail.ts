import type { StoredEvent } from '../../model/events.ts';

/**
 * The newest events of the stream, in sequence order, for readers that follow its end (the usual
 * case): they are served from memory instead of read back from the file. It holds every event
 * from its first one on, but the sequence numbers may have holes (numbers that never got a row;
 * a database written by an earlier version has them where appends failed), so a position is found
 * by bisection, never by subtracting the first number.
 */
export class EventTail {
  private events: StoredEvent[] = [];
  private head = 0;
  private bytes = 0;

  /** Holds at most `maxEvents` events and `maxBytes` bytes of their bodies; the oldest go first. */
  constructor(
    private readonly maxEvents: number,
    private readonly maxBytes: number,
  ) {}

  get size(): number {
    return this.events.length - this.head;
  }

  /** The sequence number of the oldest event held; undefined when empty. */
  first(): number | undefined {
    return this.head < this.events.length ? this.events[this.head]!.sequenceNumber : undefined;
  }

  /** Adds events newer than all held (one commit's, in order) and drops the oldest over the bounds. */
  add(events: readonly StoredEvent[]): void {
    for (const e of events) {
      // Bisection needs order: should an event ever come out of order, forget what is held and
      // let readers go to the file rather than serve a wrong page.
      if (this.size > 0 && e.sequenceNumber <= this.events[this.events.length - 1]!.sequenceNumber) this.clear();
      this.events.push(e);
      this.bytes += e.message.body.length;
    }
    while (this.size > this.maxEvents || this.bytes > this.maxBytes) this.dropHead();
    if (this.head > 4096 && this.head * 2 > this.events.length) {
      this.events = this.events.slice(this.head);
      this.head = 0;
    }
  }

  /** Drops the events enqueued before `cutoff` (what retention removed from the file). */
  dropEnqueuedBefore(cutoff: number): void {
    while (this.head < this.events.length && this.events[this.head]!.enqueuedTime < cutoff) this.dropHead();
  }

  /**
   * Up to `limit` events from `start` on (the first one at or after it) and before `end`; undefined
   * when the tail does not cover `start` (it is before the oldest event held, or nothing is held):
   * then the file has to be read.
   */
  from(start: number, end: number, limit: number): StoredEvent[] | undefined {
    const i = this.indexOf(start);
    if (i === undefined) return undefined;
    const out: StoredEvent[] = [];
    for (let j = i; j < this.events.length && out.length < limit; j++) {
      const e = this.events[j]!;
      if (e.sequenceNumber >= end) break;
      out.push(e);
    }
    return out;
  }

  /**
   * Calls `visit` on each event from `start` on and before `end` until it returns false; false
   * when the tail does not cover `start`.
   */
  scan(start: number, end: number, visit: (e: StoredEvent) => boolean): boolean {
    const i = this.indexOf(start);
    if (i === undefined) return false;
    for (let j = i; j < this.events.length; j++) {
      const e = this.events[j]!;
      if (e.sequenceNumber >= end || !visit(e)) break;
    }
    return true;
  }

  /** Index of the first held event numbered `start` or later; undefined when `start` is before the oldest held. */
  private indexOf(start: number): number | undefined {
    const first = this.first();
    if (first === undefined || start < first) return undefined;
    let lo = this.head;
    let hi = this.events.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.events[mid]!.sequenceNumber < start) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private clear(): void {
    this.events = [];
    this.head = 0;
    this.bytes = 0;
  }

  private dropHead(): void {
    this.bytes -= this.events[this.head]!.message.body.length;
    this.head++;
  }
}
