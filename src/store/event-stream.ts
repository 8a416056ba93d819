import type Database from 'better-sqlite3';
import type { ForwardedOrigin } from '../model/message.ts';
import { OriginWatermarks } from './origin-watermarks.ts';
import { WalSync } from './wal-sync.ts';
import { DEFAULT_DISK_RESERVE_BYTES, DiskHeadroom } from './disk-headroom.ts';
import type {
  EventReadOptions,
  EventReadResult,
  EventStreamReader,
  EventToAppend,
  PartitionInfo,
  PartitionReadOptions,
  StoredEvent,
  StoredEventInfo,
} from '../model/events.ts';
import { EventFeed } from './event-stream/feed.ts';
import { log } from './event-stream/log.ts';
import { EventNumbers } from './event-stream/numbers.ts';
import { EventReader } from './event-stream/reader.ts';
import { Retention } from './event-stream/retention.ts';
import { partitionOf } from './event-stream/rows.ts';
import { metaNumber, openEventsDb, partitionCountOf, StatementCache } from './event-stream/schema.ts';
import { EventWriter } from './event-stream/writer.ts';

export { firstReaching, partitionOf } from './event-stream/rows.ts';

export interface EventStreamOptions {
  /** Directory holding `events.db`. */
  dir: string;
  /** Partition count; only used when the stream is created (default 4). */
  partitions?: number;
  /** Events older than this are deleted (default 1 day). */
  retentionMs?: number;
  /** 0 (default): commit at the end of each event-loop turn; > 0: at most every N ms. */
  commitIntervalMs?: number;
  /** How often retention runs (default 60 s). */
  pruneIntervalMs?: number;
  /**
   * How a commit gets on disk: 'background' (default) commits with synchronous=NORMAL and
   * fdatasyncs the log off the event loop (wal-sync.ts); 'commit' uses synchronous=FULL, the
   * flush inside COMMIT. Either way an append resolves, and readers see the event, only once
   * it is on disk.
   */
  sync?: 'background' | 'commit';
  /** Free disk space kept for checkpoints: appends are refused below it (DEFAULT_DISK_RESERVE_BYTES). */
  diskReserveBytes?: number;
}

export const DEFAULT_RETENTION_MS = 24 * 60 * 60 * 1000;

/**
 * The hub's durable telemetry stream: one SQLite file (WAL), appended by group commit so that
 * many concurrent senders share one transaction and one fsync. A caller's promise resolves, and
 * readers see the event, only once the transaction holding it is on disk.
 *
 * Each event has a global sequence number (the row id; REST reader, CLI) and, for the
 * Event Hubs compatible endpoint, a partition chosen by hash of the device id with its own
 * sequence number and byte offset.
 *
 * The parts, in event-stream/: the writer, the reader, what readers see (feed.ts, with the
 * in-memory tail), the numbering, retention, and the file (schema.ts, rows.ts).
 */
export class EventStream implements EventStreamReader {
  private readonly db: Database.Database;
  private readonly partitions: number;
  private readonly numbers: EventNumbers;
  private readonly feed: EventFeed;
  private readonly writer: EventWriter;
  private readonly reader: EventReader;
  private readonly retention: Retention;
  private readonly origins: OriginWatermarks;
  private readonly walSync: WalSync | undefined;
  private readonly headroom: DiskHeadroom;
  private pruneTimer?: NodeJS.Timeout;

  constructor(opts: EventStreamOptions) {
    const background = (opts.sync ?? 'background') === 'background';
    const { db, file } = openEventsDb(opts.dir, background);
    this.db = db;
    this.partitions = partitionCountOf(db, opts.partitions);
    this.numbers = new EventNumbers(db, this.partitions);
    this.feed = new EventFeed(this.numbers);
    try {
      this.walSync = background
        ? new WalSync(file, 'event stream', () =>
            db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)").run(String(Date.now())),
          )
        : undefined;
    } catch (err) {
      db.close();
      throw err;
    }

    this.headroom = new DiskHeadroom({
      dir: opts.dir,
      walPath: `${file}-wal`,
      reserveBytes: opts.diskReserveBytes ?? DEFAULT_DISK_RESERVE_BYTES,
      what: 'event stream',
      settingName: 'strata hub start --disk-reserve-mb',
      checkpoint: () => db.pragma('wal_checkpoint(TRUNCATE)'),
      reusableBytes: () =>
        (db.pragma('freelist_count', { simple: true }) as number) *
        (db.pragma('page_size', { simple: true }) as number),
      log,
    });
    this.origins = new OriginWatermarks(db);
    this.writer = new EventWriter(
      db,
      this.numbers,
      this.feed,
      this.origins,
      this.headroom,
      this.walSync,
      opts.commitIntervalMs ?? 0,
    );
    const stmts = new StatementCache(db);
    this.reader = new EventReader(db, this.partitions, this.feed, stmts);
    this.retention = new Retention(
      db,
      stmts,
      this.numbers,
      this.feed,
      this.headroom,
      opts.retentionMs ?? DEFAULT_RETENTION_MS,
    );

    // Says so at start-up when the disk is under the reserve already.
    this.headroom.refusal();
    this.prune();
    this.pruneTimer = setInterval(() => this.prune(), opts.pruneIntervalMs ?? 60_000);
    this.pruneTimer.unref();
  }

  /** Appends one event; resolves once it is durable. */
  append(event: EventToAppend): Promise<StoredEventInfo> {
    return this.writer.append(event);
  }

  /**
   * Appends several events in the same transaction (all or none), answered once for all: a
   * gateway's batch of hundreds costs one promise, not one an event.
   */
  appendAll(events: readonly EventToAppend[]): Promise<StoredEventInfo[]> {
    return this.writer.appendAll(events);
  }

  /** Commits everything queued so far in one transaction. */
  flush(): void {
    this.writer.flush();
  }

  /** Why new events are refused now (the disk is under the reserve), or undefined. */
  storeFull(): string | undefined {
    return this.feed.closed ? undefined : this.headroom.refusal();
  }

  /** True when a child gateway's message at this origin is stored already (a resend). */
  isForwardedStored(origin: ForwardedOrigin): boolean {
    return this.origins.isStored(origin);
  }

  /** The storing of a child gateway's message at this origin, while it is under way. */
  forwardedInFlight(origin: ForwardedOrigin): Promise<unknown> | undefined {
    return this.origins.inFlightOf(origin);
  }

  /** Resolves once everything appended so far is durable (acknowledge a resend no earlier than its original). */
  whenDurable(): Promise<void> {
    return this.writer.whenDurable();
  }

  onAppend(listener: (events: StoredEvent[]) => void): () => void {
    return this.feed.onAppend(listener);
  }

  partitionCount(): number {
    return this.partitions;
  }

  nextSequenceNumber(): number {
    return this.feed.seq;
  }

  partitionOf(deviceId: string): number {
    return partitionOf(deviceId, this.partitions);
  }

  read(opts: EventReadOptions = {}): Promise<EventReadResult> {
    return this.reader.read(opts);
  }

  readPartition(opts: PartitionReadOptions): Promise<StoredEvent[]> {
    return this.reader.readPartition(opts);
  }

  partitionInfo(partition: number): PartitionInfo {
    return this.reader.partitionInfo(partition);
  }

  /** When the stream was first created (epoch ms). */
  createdAt(): number {
    return metaNumber(this.db, 'created') ?? 0;
  }

  /** Deletes events older than the retention period; returns how many went. */
  prune(now = Date.now()): number {
    return this.retention.prune(now);
  }

  async close(): Promise<void> {
    if (this.feed.closed) return;
    this.flush();
    this.feed.closed = true;
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    await this.walSync?.close();
    this.feed.wakeAll();
    this.numbers.save();
    this.db.close();
  }
}
