import type Database from 'better-sqlite3';
import type {
  EventReadOptions,
  EventReadResult,
  PartitionInfo,
  PartitionReadOptions,
  StoredEvent,
} from '../../model/events.ts';
import type { EventFeed } from './feed.ts';
import { firstReaching, firstSeqReaching, type Keyed, type Row, rowToEvent } from './rows.ts';
import type { StatementCache } from './schema.ts';

const DEFAULT_READ_LIMIT = 100;
const MAX_READ_LIMIT = 1000;
/** A device-filtered read scans this many sequence numbers a statement, and at most DEVICE_SCAN_MAX a call. */
const DEVICE_SCAN_WINDOW = 20_000;
const DEVICE_SCAN_MAX = 200_000;

/**
 * Reads the stream up to its visible end (events on disk): by global sequence number, by
 * device, or by partition; from the in-memory tail when it holds the start, else from the file.
 * With `waitMs` a read at the end waits for the next commit.
 */
export class EventReader {
  constructor(
    private readonly db: Database.Database,
    private readonly partitions: number,
    private readonly feed: EventFeed,
    private readonly stmts: StatementCache,
  ) {}

  async read(opts: EventReadOptions = {}): Promise<EventReadResult> {
    const feed = this.feed;
    const limit = clampLimit(opts.limit);
    const deadline = opts.waitMs ? Date.now() + opts.waitMs : 0;
    let start = this.startSequence(opts);
    for (;;) {
      if (opts.deviceId === undefined) {
        const recent = this.fromTail(start, limit);
        if (recent && recent.length > 0)
          return { events: recent, nextSequenceNumber: recent[recent.length - 1]!.sequenceNumber + 1 };
        const rows = this.stmts
          .get('SELECT * FROM events WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?')
          .all(start, feed.seq, limit) as Row[];
        if (rows.length > 0) return { events: rows.map(rowToEvent), nextSequenceNumber: rows[rows.length - 1].seq + 1 };
      } else {
        const found = this.readDevice(start, limit, opts.deviceId, opts.moduleId);
        // An empty page short of the head: the scan budget ran out; the reader continues from there.
        if (found.events.length > 0 || found.nextSequenceNumber < feed.seq) return found;
      }
      // Nothing at or after `start` yet: everything before the write head has been scanned.
      start = Math.max(start, feed.seq);
      const left = deadline - Date.now();
      if (left <= 0 || opts.signal?.aborted || feed.closed) return { events: [], nextSequenceNumber: start };
      await feed.waitForAppend(left, opts.signal);
    }
  }

  async readPartition(opts: PartitionReadOptions): Promise<StoredEvent[]> {
    const feed = this.feed;
    if (!Number.isInteger(opts.partition) || opts.partition < 0 || opts.partition >= this.partitions) {
      throw new RangeError(`partition ${opts.partition} does not exist (0..${this.partitions - 1})`);
    }
    const limit = clampLimit(opts.limit);
    const deadline = opts.waitMs ? Date.now() + opts.waitMs : 0;
    const inclusive = opts.inclusive ?? true;
    let fromPseq: number;
    if (opts.fromPartitionSequenceNumber !== undefined) {
      fromPseq = opts.fromPartitionSequenceNumber + (inclusive ? 0 : 1);
    } else if (opts.fromOffset !== undefined) {
      const row = this.db
        .prepare(`SELECT pseq FROM events WHERE part = ? AND off ${inclusive ? '>=' : '>'} ? ORDER BY pseq LIMIT 1`)
        .get(opts.partition, opts.fromOffset) as { pseq: number } | undefined;
      fromPseq = row ? row.pseq : feed.pseqs[opts.partition];
    } else if (opts.fromTime !== undefined) {
      const part = opts.partition;
      const time = opts.fromTime;
      const at = this.stmts.get(
        'SELECT pseq AS key, enq FROM events WHERE part = ? AND pseq >= ? ORDER BY pseq LIMIT 1',
      );
      fromPseq =
        firstReaching(
          0,
          feed.pseqs[part],
          (k) => at.get(part, k) as Keyed | undefined,
          inclusive ? (enq) => enq >= time : (enq) => enq > time,
        ) ?? feed.pseqs[part];
    } else {
      fromPseq = 0;
    }
    const select = this.stmts.get(
      'SELECT * FROM events WHERE part = ? AND pseq >= ? AND pseq < ? ORDER BY pseq LIMIT ?',
    );
    for (;;) {
      const rows = select.all(opts.partition, fromPseq, feed.pseqs[opts.partition], limit) as Row[];
      if (rows.length > 0) return rows.map(rowToEvent);
      fromPseq = Math.max(fromPseq, feed.pseqs[opts.partition]);
      const left = deadline - Date.now();
      if (left <= 0 || opts.signal?.aborted || feed.closed) return [];
      await feed.waitForAppend(left, opts.signal);
    }
  }

  partitionInfo(partition: number): PartitionInfo {
    if (!Number.isInteger(partition) || partition < 0 || partition >= this.partitions) {
      throw new RangeError(`partition ${partition} does not exist (0..${this.partitions - 1})`);
    }
    const visible = this.feed.pseqs[partition];
    const first = this.db.prepare('SELECT pseq FROM events WHERE part = ? ORDER BY pseq LIMIT 1').get(partition) as
      | { pseq: number }
      | undefined;
    const last = this.db
      .prepare('SELECT pseq, off, enq FROM events WHERE part = ? AND pseq < ? ORDER BY pseq DESC LIMIT 1')
      .get(partition, visible) as { pseq: number; off: number; enq: number } | undefined;
    return {
      partition,
      beginSequenceNumber: first ? first.pseq : -1,
      lastSequenceNumber: last ? last.pseq : visible - 1,
      lastOffset: last ? last.off : -1,
      lastEnqueuedTime: last?.enq,
      isEmpty: !last,
    };
  }

  private startSequence(opts: EventReadOptions): number {
    const visible = this.feed.seq;
    if (opts.fromSequenceNumber !== undefined) return Math.max(1, Math.floor(opts.fromSequenceNumber));
    const row = this.db.prepare('SELECT MIN(seq) AS s FROM events').get() as { s: number | null };
    if (opts.fromTime !== undefined) {
      const time = opts.fromTime;
      return row.s === null ? visible : (firstSeqReaching(this.stmts, row.s, visible, (enq) => enq >= time) ?? visible);
    }
    return row.s ?? visible;
  }

  /**
   * One device's (or module's) events from `start`: from memory when the tail holds `start`,
   * else by scanning the sequence in windows (there is no device index; see schema.ts), at
   * most DEVICE_SCAN_MAX sequence numbers a call.
   */
  private readDevice(start: number, limit: number, deviceId: string, moduleId?: string): EventReadResult {
    const end = this.feed.seq;
    const matches = (e: StoredEvent) => e.deviceId === deviceId && (moduleId === undefined || e.moduleId === moduleId);
    const events: StoredEvent[] = [];
    const inTail = this.feed.tail.scan(start, end, (e) => {
      if (matches(e)) events.push(e);
      return events.length < limit;
    });
    if (inTail)
      return {
        events,
        nextSequenceNumber: events.length === limit ? events[limit - 1]!.sequenceNumber + 1 : Math.max(start, end),
      };
    const select =
      moduleId === undefined
        ? this.stmts.get('SELECT * FROM events WHERE seq >= ? AND seq < ? AND dev = ? ORDER BY seq LIMIT ?')
        : this.stmts.get(
            'SELECT * FROM events WHERE seq >= ? AND seq < ? AND dev = ? AND mod = ? ORDER BY seq LIMIT ?',
          );
    let from = start;
    while (from < end && from - start < DEVICE_SCAN_MAX) {
      const to = Math.min(end, from + DEVICE_SCAN_WINDOW);
      const rows = (
        moduleId === undefined ? select.all(from, to, deviceId, limit) : select.all(from, to, deviceId, moduleId, limit)
      ) as Row[];
      if (rows.length > 0)
        return {
          events: rows.map(rowToEvent),
          nextSequenceNumber: rows.length === limit ? rows[limit - 1]!.seq + 1 : to,
        };
      from = to;
    }
    return { events: [], nextSequenceNumber: Math.max(start, from) };
  }

  /** Events from `start` on, when the tail holds `start`; undefined when it does not. */
  private fromTail(start: number, limit: number): StoredEvent[] | undefined {
    if (start >= this.feed.seq) return undefined;
    return this.feed.tail.from(start, this.feed.seq, limit);
  }
}

function clampLimit(limit?: number): number {
  if (limit === undefined || !Number.isFinite(limit) || limit <= 0) return DEFAULT_READ_LIMIT;
  return Math.min(MAX_READ_LIMIT, Math.floor(limit));
}
