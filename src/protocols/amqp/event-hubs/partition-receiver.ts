import type { Sender } from 'rhea';
import type { EventStreamReader, PartitionReadOptions, StoredEvent } from '../../../model/events.ts';
import { CONDITION } from '../errors.ts';
import type { LinkContext, LinkHandler } from '../types.ts';
import { encodeEvent, type RuntimeInfo } from './event-message.ts';
import type { StartPosition } from './filter.ts';
import type { PartitionFeed } from './partition-feed.ts';

/** Events read from the store at a time (the store caps a read at 1000). */
const READ_BATCH = 1000;
/** Deliveries handed to rhea in one turn of the event loop before yielding. */
const SEND_SLICE = 2000;

/** rhea internals: the session's outgoing queue, to count what it has not transferred yet. */
interface OutgoingInternals {
  next_pending_delivery: number;
  available(): number;
}

export interface PartitionReceiverOptions {
  stream: EventStreamReader;
  feed: PartitionFeed;
  partition: number;
  start: StartPosition;
  /** Add the partition's last-enqueued figures to each delivery (receiver runtime metrics). */
  runtimeMetrics: boolean;
  /** Whether the connection still holds the credential that opened the link. */
  authorized(): boolean;
  /** Runs once when the link is gone. */
  onClosed(): void;
}

/**
 * Our sender on `{entity}/ConsumerGroups/{group}/Partitions/{id}`: reads the partition from
 * its start position in store-sized batches, then follows appends. It never hands rhea more
 * deliveries than the client has given credit for, so a slow reader costs one batch of memory.
 */
export class PartitionReceiver implements LinkHandler {
  private buffer: StoredEvent[] = [];
  private next = 0;
  /** The partition sequence number to read next, once the start position has been resolved. */
  private nextPseq: number | undefined;
  private reading = false;
  /** Something was appended while a read was running. */
  private dirty = false;
  /** The last read found nothing: wait for appends instead of asking the store again. */
  private idle = false;
  private sliceScheduled = false;
  private isClosed = false;
  /** Ids of our deliveries rhea has not transferred yet (ascending), from `head` on. */
  private readonly untransferred: number[] = [];
  private head = 0;
  private readonly stopListening: () => void;

  constructor(
    private readonly ctx: LinkContext,
    private readonly o: PartitionReceiverOptions,
  ) {
    // Listen before resolving "latest", so nothing appended in between is lost.
    this.stopListening = o.feed.listen(o.partition, (events) => this.appended(events));
    const s = o.start;
    if (s.kind === 'earliest') this.nextPseq = 0;
    else if (s.kind === 'latest') this.nextPseq = o.stream.partitionInfo(o.partition).lastSequenceNumber + 1;
    else if (s.kind === 'sequence') this.nextPseq = s.sequenceNumber + (s.inclusive ? 0 : 1);
  }

  authorized = (): boolean => this.o.authorized();

  sendable(): void {
    this.pump();
  }

  outcome(): void {
    // A settlement frees room in the session's outgoing queue.
    this.pump();
  }

  closed(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.stopListening();
    this.buffer = [];
    this.o.onClosed();
  }

  private get sender(): Sender {
    return this.ctx.link as Sender;
  }

  /** How many more deliveries the client's credit (and rhea's session queue) allows now. */
  private room(): number {
    const s = this.sender;
    if (!s.is_open()) return 0;
    const outgoing = (s.session as unknown as { outgoing: OutgoingInternals }).outgoing;
    while (this.head < this.untransferred.length && this.untransferred[this.head]! < outgoing.next_pending_delivery)
      this.head++;
    if (this.head > 1024 && this.head * 2 > this.untransferred.length) {
      this.untransferred.splice(0, this.head);
      this.head = 0;
    }
    const pending = this.untransferred.length - this.head;
    return Math.min((s as unknown as { credit: number }).credit - pending, outgoing.available());
  }

  private pump(): void {
    if (this.isClosed || this.ctx.closed) return;
    let room = this.room();
    let slice = SEND_SLICE;
    while (room > 0 && this.next < this.buffer.length) {
      if (slice-- === 0) {
        this.scheduleSlice();
        return;
      }
      this.send(this.buffer[this.next++]!);
      room--;
    }
    if (this.next >= this.buffer.length) {
      if (this.buffer.length > 0) this.buffer = [];
      this.next = 0;
      if (room > 0 && !this.idle) this.fill();
    }
  }

  private scheduleSlice(): void {
    if (this.sliceScheduled) return;
    this.sliceScheduled = true;
    setImmediate(() => {
      this.sliceScheduled = false;
      this.pump();
    });
  }

  private send(e: StoredEvent): void {
    let runtime: RuntimeInfo | undefined;
    if (this.o.runtimeMetrics) {
      const last = this.o.feed.lastEnqueued(this.o.partition);
      if (last)
        runtime = {
          lastSequenceNumber: last.sequenceNumber,
          lastOffset: last.offset,
          lastEnqueuedTime: last.enqueuedTime,
          retrievedAt: Date.now(),
        };
    }
    // Pre-encoded: rhea sends the bytes as they are when given a message format.
    const d = this.sender.send(encodeEvent(e, runtime), undefined, 0) as unknown as { id: number };
    this.untransferred.push(d.id);
  }

  private readOptions(): PartitionReadOptions {
    const base = { partition: this.o.partition, limit: READ_BATCH };
    if (this.nextPseq !== undefined) return { ...base, fromPartitionSequenceNumber: this.nextPseq };
    const s = this.o.start;
    if (s.kind === 'offset') return { ...base, fromOffset: s.offset, inclusive: s.inclusive };
    if (s.kind === 'time') return { ...base, fromTime: s.time, inclusive: s.inclusive };
    return { ...base, fromPartitionSequenceNumber: 0 };
  }

  private fill(): void {
    if (this.reading || this.isClosed) return;
    this.reading = true;
    this.dirty = false;
    let read: Promise<StoredEvent[]>;
    try {
      read = this.o.stream.readPartition(this.readOptions());
    } catch (err) {
      read = Promise.reject(err);
    }
    read.then(
      (events) => {
        this.reading = false;
        if (this.isClosed) return;
        if (events.length > 0) {
          this.buffer = events;
          this.next = 0;
          this.nextPseq = events[events.length - 1]!.partitionSequenceNumber + 1;
          this.pump();
        } else if (this.dirty) {
          this.fill();
        } else {
          this.idle = true;
        }
      },
      (err: unknown) => {
        this.reading = false;
        if (this.isClosed) return;
        this.ctx.conn.log.warn(
          { address: this.ctx.address, reason: (err as Error)?.message },
          'reading the event stream failed; detaching the receiver',
        );
        this.ctx.detach({
          condition: CONDITION.internal,
          description: `reading partition ${this.o.partition} failed: ${(err as Error)?.message ?? String(err)}`,
        });
      },
    );
  }

  /** Events appended to our partition: take them from memory when they are exactly what comes next. */
  private appended(events: StoredEvent[]): void {
    if (this.isClosed || events.length === 0) return;
    const first = events[0]!.partitionSequenceNumber;
    const last = events[events.length - 1]!.partitionSequenceNumber;
    if (this.nextPseq !== undefined && last < this.nextPseq) return;
    if (this.reading) {
      this.dirty = true;
      return;
    }
    this.idle = false;
    if (this.next < this.buffer.length) return; // still sending a backlog; the store has these
    if (this.nextPseq !== undefined && first <= this.nextPseq) {
      // By number, not by subtraction: partition sequence numbers may have holes.
      const next = this.nextPseq;
      this.buffer = first === next ? events : events.filter((e) => e.partitionSequenceNumber >= next);
      this.next = 0;
      this.nextPseq = last + 1;
    }
    this.pump();
  }
}
