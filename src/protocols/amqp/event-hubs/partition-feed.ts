import type { Logger } from 'pino';
import type { EventStreamReader, StoredEvent } from '../../../model/events.ts';

/** What a reader of one partition is told when events were appended to it. */
export type PartitionListener = (events: StoredEvent[]) => void;

/** The newest event of a partition, as receivers that asked for runtime metrics report it. */
export interface LastEnqueued {
  sequenceNumber: number;
  offset: number;
  enqueuedTime: number;
}

/**
 * One subscription to the event stream for all partition receivers of a hub: each appended
 * batch is split by partition once and handed to the receivers of that partition only.
 */
export class PartitionFeed {
  private readonly listeners: Array<Set<PartitionListener>>;
  private readonly last: Array<LastEnqueued | undefined>;
  private unsubscribe?: () => void;

  constructor(
    readonly stream: EventStreamReader,
    private readonly log?: Logger,
  ) {
    const n = stream.partitionCount();
    this.listeners = Array.from({ length: n }, () => new Set<PartitionListener>());
    this.last = Array.from({ length: n }, () => undefined);
  }

  get partitions(): number {
    return this.listeners.length;
  }

  /** Adds a listener for one partition; returns its removal. */
  listen(partition: number, fn: PartitionListener): () => void {
    this.ensureSubscribed();
    this.listeners[partition]!.add(fn);
    return () => this.listeners[partition]!.delete(fn);
  }

  /** The newest event of a partition (from memory once known, else from the store). */
  lastEnqueued(partition: number): LastEnqueued | undefined {
    this.ensureSubscribed();
    let last = this.last[partition];
    if (!last) {
      const info = this.stream.partitionInfo(partition);
      if (info.isEmpty || info.lastEnqueuedTime === undefined) return undefined;
      last = { sequenceNumber: info.lastSequenceNumber, offset: info.lastOffset, enqueuedTime: info.lastEnqueuedTime };
      this.last[partition] = last;
    }
    return last;
  }

  close(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    for (const set of this.listeners) set.clear();
  }

  private ensureSubscribed(): void {
    if (this.unsubscribe) return;
    this.unsubscribe = this.stream.onAppend((events) => this.dispatch(events));
  }

  private dispatch(events: StoredEvent[]): void {
    const byPartition = new Map<number, StoredEvent[]>();
    for (const e of events) {
      let list = byPartition.get(e.partition);
      if (!list) byPartition.set(e.partition, (list = []));
      list.push(e);
    }
    for (const [p, list] of byPartition) {
      if (p < 0 || p >= this.listeners.length) continue;
      const newest = list[list.length - 1]!;
      this.last[p] = {
        sequenceNumber: newest.partitionSequenceNumber,
        offset: newest.offset,
        enqueuedTime: newest.enqueuedTime,
      };
      for (const fn of this.listeners[p]!) {
        try {
          fn(list);
        } catch (err) {
          // A receiver's failure is its own; the others still hear of the batch.
          this.log?.error({ err, partition: p }, 'an Event Hubs receiver failed to take appended events');
        }
      }
    }
  }
}
