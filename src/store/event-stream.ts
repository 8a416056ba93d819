import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { childLog } from '../util/log.ts';
import { compactAuthMethod, expandAuthMethod } from '../identity/auth-method.ts';
import { decodeMessageMeta, encodeMessageMeta } from '../model/message-codec.ts';
import { EventTail } from './event-tail.ts';
import { OriginWatermarks, type OriginsMoved } from './origin-watermarks.ts';
import { type ForwardedOrigin } from '../model/message.ts';
import { WalSync } from './wal-sync.ts';
import { DEFAULT_DISK_RESERVE_BYTES, DiskHeadroom } from './disk-headroom.ts';
import { EngineError } from '../model/errors.ts';
import type { EventReadOptions, EventReadResult, EventStreamReader, EventToAppend, PartitionInfo, PartitionReadOptions, StoredEvent, StoredEventInfo } from '../model/events.ts';

const log = childLog('event-stream');

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
const DEFAULT_READ_LIMIT = 100;
const MAX_READ_LIMIT = 1000;
const PRUNE_CHUNK = 10_000;
const PRUNE_CHUNK_TIGHT = 250;
/** A device-filtered read scans this many sequence numbers a statement, and at most DEVICE_SCAN_MAX a call. */
const DEVICE_SCAN_WINDOW = 20_000;
const DEVICE_SCAN_MAX = 200_000;
/** Bounds of the in-memory tail: events, and bytes of their bodies. */
const TAIL_EVENTS = 50_000;
const TAIL_BYTES = 32 * 1024 * 1024;

/** The stream's next numbers as a commit leaves them; they take effect only once it succeeded. */
interface NextNumbers {
  seq: number;
  pseqs: number[];
  offs: number[];
  enq: number;
}

/** One append call: its events go into the same commit, and it is answered once for all of them. */
interface Pending {
  events: readonly EventToAppend[];
  /** `infos` holds the whole commit's; this call's events start at `from`. */
  resolve: (infos: StoredEventInfo[], from: number) => void;
  reject: (err: Error) => void;
}

interface Row {
  seq: number;
  part: number;
  pseq: number;
  off: number;
  enq: number;
  dev: string;
  mod: string | null;
  auth: string;
  gen: string | null;
  src: string;
  props: string;
  body: Buffer;
}

/**
 * The hub's durable telemetry stream: one SQLite file (WAL), appended by group commit so that
 * many concurrent senders share one transaction and one fsync. A caller's promise resolves, and
 * readers see the event, only once the transaction holding it is on disk.
 *
 * Each event has a global sequence number (the row id; REST reader, CLI) and, for the
 * Event Hubs compatible endpoint, a partition chosen by hash of the device id with its own
 * sequence number and byte offset.
 */
export class EventStream implements EventStreamReader {
  private readonly db: Database.Database;
  private readonly partitions: number;
  private readonly retentionMs: number;
  private readonly commitIntervalMs: number;
  private pending: Pending[] = [];
  private flushScheduled = false;
  private nextSeq: number;
  private readonly nextPseq: number[];
  private readonly nextOffset: number[];
  private lastEnqueued = 0;
  private readonly listeners = new Set<(events: StoredEvent[]) => void>();
  private readonly waiters = new Set<() => void>();
  private pruneTimer?: NodeJS.Timeout;
  private closed = false;
  private readonly insert: Database.Statement;
  private readonly commitBatch: (batch: Pending[], infos: StoredEventInfo[], next: NextNumbers) => OriginsMoved | undefined;
  private readonly origins: OriginWatermarks;
  /** Commits so far, and how many of them are known on disk (or failed to get there). */
  private committed = 0;
  private settled = 0;
  /** Readers see events below these: the ones on disk. */
  private visibleSeq: number;
  private readonly visiblePseq: number[];
  private readonly walSync: WalSync | undefined;
  private readonly headroom: DiskHeadroom;
  /** The newest events, for readers that follow the stream's end. */
  private readonly tail = new EventTail(TAIL_EVENTS, TAIL_BYTES);

  constructor(opts: EventStreamOptions) {
    mkdirSync(opts.dir, { recursive: true });
    const file = join(opts.dir, 'events.db');
    this.db = new Database(file);
    // Page size only takes on a new file, before its first write; 8 KiB pages hold more events a write.
    this.db.pragma('page_size = 8192');
    this.db.pragma('journal_mode = WAL');
    const background = (opts.sync ?? 'background') === 'background';
    // FULL makes each commit fsync the WAL; NORMAL leaves that to the background sync.
    this.db.pragma(background ? 'synchronous = NORMAL' : 'synchronous = FULL');
    // A checkpoint (copying the log into the file, with its fsyncs) runs inside the COMMIT that
    // crosses the threshold, on the event loop: fewer, larger ones (~32 MiB of log) cost less
    // than one every 4 MiB.
    this.db.pragma('wal_autocheckpoint = 4000');
    this.db.pragma('cache_size = -16000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS events (
        seq   INTEGER PRIMARY KEY,
        part  INTEGER NOT NULL,
        pseq  INTEGER NOT NULL,
        off   INTEGER NOT NULL,
        enq   INTEGER NOT NULL,
        dev   TEXT NOT NULL,
        mod   TEXT,
        auth  TEXT NOT NULL,
        gen   TEXT,
        src   TEXT NOT NULL,
        props TEXT NOT NULL,
        body  BLOB NOT NULL
      );
      CREATE UNIQUE INDEX IF NOT EXISTS events_part ON events (part, pseq);
    `);
    // Earlier versions indexed the enqueued time and the device; every insert paid for both (the
    // device index alone touches a page per sender per commit). Times are found by bisection
    // now, and device reads scan the sequence in bounded windows.
    this.db.exec('DROP INDEX IF EXISTS events_enq; DROP INDEX IF EXISTS events_dev;');
    const stored = this.db.prepare(`SELECT value FROM meta WHERE key = 'partitions'`).get() as { value: string } | undefined;
    if (stored) {
      this.partitions = Number(stored.value);
    } else {
      this.partitions = Math.max(1, Math.min(32, Math.floor(opts.partitions ?? 4)));
      this.db.prepare(`INSERT INTO meta (key, value) VALUES ('partitions', ?)`).run(String(this.partitions));
      this.db.prepare(`INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)`).run(String(Date.now()));
    }
    this.retentionMs = opts.retentionMs ?? DEFAULT_RETENTION_MS;
    this.commitIntervalMs = opts.commitIntervalMs ?? 0;

    // Sequence numbers never go back, even after retention emptied the table: keep the high marks in meta.
    const maxSeq = (this.db.prepare('SELECT MAX(seq) AS m FROM events').get() as { m: number | null }).m;
    const metaSeq = this.metaNumber('next_seq');
    this.nextSeq = Math.max(maxSeq === null ? 1 : maxSeq + 1, metaSeq ?? 1);
    this.nextPseq = [];
    this.nextOffset = [];
    const lastOfPart = this.db.prepare('SELECT pseq, off, LENGTH(CAST(props AS BLOB)) + LENGTH(body) AS size, enq FROM events WHERE part = ? ORDER BY pseq DESC LIMIT 1');
    for (let p = 0; p < this.partitions; p++) {
      const row = lastOfPart.get(p) as { pseq: number; off: number; size: number; enq: number } | undefined;
      const metaPseq = this.metaNumber(`next_pseq_${p}`) ?? 0;
      const metaOff = this.metaNumber(`next_off_${p}`) ?? 0;
      this.nextPseq.push(Math.max(row ? row.pseq + 1 : 0, metaPseq));
      this.nextOffset.push(Math.max(row ? row.off + row.size : 0, metaOff));
      if (row && row.enq > this.lastEnqueued) this.lastEnqueued = row.enq;
    }
    this.visibleSeq = this.nextSeq;
    this.visiblePseq = this.nextPseq.slice();
    try {
      this.walSync = background
        ? new WalSync(file, 'event stream', () => this.db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)").run(String(Date.now())))
        : undefined;
    } catch (err) {
      this.db.close();
      throw err;
    }

    this.headroom = new DiskHeadroom({
      dir: opts.dir,
      walPath: `${file}-wal`,
      reserveBytes: opts.diskReserveBytes ?? DEFAULT_DISK_RESERVE_BYTES,
      what: 'event stream',
      settingName: 'strata hub start --disk-reserve-mb',
      checkpoint: () => this.db.pragma('wal_checkpoint(TRUNCATE)'),
      reusableBytes: () => (this.db.pragma('freelist_count', { simple: true }) as number) * (this.db.pragma('page_size', { simple: true }) as number),
      log,
    });
    this.origins = new OriginWatermarks(this.db);
    this.insert = this.db.prepare(
      'INSERT INTO events (seq, part, pseq, off, enq, dev, mod, auth, gen, src, props, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.commitBatch = this.db.transaction((batch: Pending[], infos: StoredEventInfo[], next: NextNumbers) => {
      // One enqueued time per batch, never earlier than the previous batch: time order = sequence order.
      const enq = Math.max(Date.now(), this.lastEnqueued);
      let seq = this.nextSeq;
      const pseqs = this.nextPseq.slice();
      const offs = this.nextOffset.slice();
      for (const p of batch) for (const e of p.events) {
        const part = partitionOf(e.deviceId, this.partitions);
        const props = encodeMessageMeta(e.message);
        const info: StoredEventInfo = {
          sequenceNumber: seq,
          partition: part,
          partitionSequenceNumber: pseqs[part],
          offset: offs[part],
          enqueuedTime: enq,
        };
        this.insert.run(seq, part, pseqs[part], offs[part], enq, e.deviceId, e.moduleId ?? null, compactAuthMethod(e.authMethod), e.authGenerationId ?? null, e.messageSource, props, e.message.body);
        infos.push(info);
        seq += 1;
        pseqs[part] += 1;
        offs[part] += Buffer.byteLength(props) + e.message.body.length;
      }
      // The counters move in flush(), once COMMIT has succeeded: a commit that fails (a full disk
      // fails at COMMIT, not at the inserts) uses up no numbers.
      next.seq = seq;
      next.pseqs = pseqs;
      next.offs = offs;
      next.enq = enq;
      // Where child gateways' messages came from, in the same transaction as the messages.
      let forwarded: ForwardedOrigin[] | undefined;
      for (const p of batch) for (const e of p.events) if (e.origin) (forwarded ??= []).push(e.origin);
      return forwarded ? this.origins.writeInTransaction(forwarded) : undefined;
    });

    // Says so at start-up when the disk is under the reserve already.
    this.headroom.refusal();
    this.prune();
    this.pruneTimer = setInterval(() => this.prune(), opts.pruneIntervalMs ?? 60_000);
    this.pruneTimer.unref();
  }

  /** Appends one event; resolves once it is durable. */
  append(event: EventToAppend): Promise<StoredEventInfo> {
    if (this.closed) return Promise.reject(new Error('event stream is closed'));
    const appended = new Promise<StoredEventInfo>((resolve, reject) => {
      this.pending.push({ events: [event], resolve: (infos, from) => resolve(infos[from]!), reject });
      this.scheduleFlush();
    });
    if (event.origin) this.origins.track(event.origin, appended);
    return appended;
  }

  /**
   * Appends several events in the same transaction (all or none), answered once for all: a
   * gateway's batch of hundreds costs one promise, not one an event.
   */
  appendAll(events: readonly EventToAppend[]): Promise<StoredEventInfo[]> {
    if (this.closed) return Promise.reject(new Error('event stream is closed'));
    if (events.length === 0) return Promise.resolve([]);
    const appended = new Promise<StoredEventInfo[]>((resolve, reject) => {
      this.pending.push({ events, resolve: (infos, from) => resolve(infos.slice(from, from + events.length)), reject });
      this.scheduleFlush();
    });
    for (const e of events) if (e.origin) this.origins.track(e.origin, appended);
    return appended;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    if (this.commitIntervalMs > 0) setTimeout(() => this.flush(), this.commitIntervalMs);
    else setImmediate(() => this.flush());
  }

  /** Commits everything queued so far in one transaction. */
  flush(): void {
    this.flushScheduled = false;
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const infos: StoredEventInfo[] = [];
    // Below the free-space reserve nothing is written: the space left is for checkpoints.
    const full = this.headroom.refusal();
    if (full) return this.refuse(batch, new EngineError('store-full', full));
    const next: NextNumbers = { seq: this.nextSeq, pseqs: this.nextPseq, offs: this.nextOffset, enq: this.lastEnqueued };
    try {
      const moved = this.commitBatch(batch, infos, next);
      this.nextSeq = next.seq;
      for (let i = 0; i < this.partitions; i++) {
        this.nextPseq[i] = next.pseqs[i]!;
        this.nextOffset[i] = next.offs[i]!;
      }
      this.lastEnqueued = next.enq;
      this.committed++;
      if (moved) this.origins.committedNow(moved);
    } catch (err) {
      if (this.headroom.failed(err)) return this.refuse(batch, new EngineError('store-full', this.headroom.refusal() ?? `store full: ${(err as Error).message}`));
      log.error({ err, count: batch.reduce((n, p) => n + p.events.length, 0) }, 'event stream append failed; senders get an error');
      return this.refuse(batch, err as Error);
    }
    for (const p of batch) for (const e of p.events) if (e.origin) this.origins.forget(e.origin);
    if (!this.walSync) {
      this.publish(batch, infos);
      return;
    }
    this.walSync.add({
      resolve: () => this.publish(batch, infos),
      // The rows are committed and the next sync that succeeds covers them: they are shown, but
      // their senders hear the failure and may send again (a duplicate, never a loss).
      reject: (err) => this.publish(batch, infos, err),
    });
  }

  /** Nothing of `batch` was stored: its senders hear why. */
  private refuse(batch: Pending[], err: Error): void {
    for (const p of batch) {
      for (const e of p.events) if (e.origin) this.origins.forget(e.origin);
      p.reject(err);
    }
  }

  /** Why new events are refused now (the disk is under the reserve), or undefined. */
  storeFull(): string | undefined {
    return this.closed ? undefined : this.headroom.refusal();
  }

  /** A commit is on disk (or its sync failed): answer its senders, show its events to readers. */
  private publish(batch: Pending[], infos: StoredEventInfo[], syncError?: Error): void {
    this.settled++;
    const lastInfo = infos[infos.length - 1]!;
    this.visibleSeq = lastInfo.sequenceNumber + 1;
    for (const info of infos) this.visiblePseq[info.partition] = info.partitionSequenceNumber + 1;
    const events: StoredEvent[] = [];
    for (const p of batch) {
      const from = events.length;
      for (const e of p.events) events.push(toStoredEvent(e, infos[events.length]!));
      if (syncError) p.reject(syncError);
      else p.resolve(infos, from);
    }
    this.tail.add(events);
    if (this.listeners.size > 0) {
      for (const l of this.listeners) {
        try {
          l(events);
        } catch (err) {
          log.error({ err }, 'event stream listener failed');
        }
      }
    }
    for (const w of [...this.waiters]) w();
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
    const target = this.pending.length > 0 ? this.committed + 1 : this.committed;
    if (this.settled >= target) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        if (this.settled < target && !this.closed) return;
        this.waiters.delete(done);
        resolve();
      };
      this.waiters.add(done);
    });
  }

  onAppend(listener: (events: StoredEvent[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  partitionCount(): number {
    return this.partitions;
  }

  nextSequenceNumber(): number {
    return this.visibleSeq;
  }

  partitionOf(deviceId: string): number {
    return partitionOf(deviceId, this.partitions);
  }

  async read(opts: EventReadOptions = {}): Promise<EventReadResult> {
    const limit = clampLimit(opts.limit);
    const deadline = opts.waitMs ? Date.now() + opts.waitMs : 0;
    let start = this.startSequence(opts);
    for (;;) {
      if (opts.deviceId === undefined) {
        const recent = this.fromTail(start, limit);
        if (recent && recent.length > 0) return { events: recent, nextSequenceNumber: recent[recent.length - 1]!.sequenceNumber + 1 };
        const rows = this.stmt('SELECT * FROM events WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?').all(start, this.visibleSeq, limit) as Row[];
        if (rows.length > 0) return { events: rows.map(rowToEvent), nextSequenceNumber: rows[rows.length - 1].seq + 1 };
      } else {
        const found = this.readDevice(start, limit, opts.deviceId, opts.moduleId);
        // An empty page short of the head: the scan budget ran out; the reader continues from there.
        if (found.events.length > 0 || found.nextSequenceNumber < this.visibleSeq) return found;
      }
      // Nothing at or after `start` yet: everything before the write head has been scanned.
      start = Math.max(start, this.visibleSeq);
      const left = deadline - Date.now();
      if (left <= 0 || opts.signal?.aborted || this.closed) return { events: [], nextSequenceNumber: start };
      await this.waitForAppend(left, opts.signal);
    }
  }

  async readPartition(opts: PartitionReadOptions): Promise<StoredEvent[]> {
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
      fromPseq = row ? row.pseq : this.visiblePseq[opts.partition];
    } else if (opts.fromTime !== undefined) {
      const part = opts.partition;
      const time = opts.fromTime;
      const at = this.stmt('SELECT pseq AS key, enq FROM events WHERE part = ? AND pseq >= ? ORDER BY pseq LIMIT 1');
      fromPseq =
        firstReaching(0, this.visiblePseq[part], (k) => at.get(part, k) as Keyed | undefined, inclusive ? (enq) => enq >= time : (enq) => enq > time) ??
        this.visiblePseq[part];
    } else {
      fromPseq = 0;
    }
    const select = this.stmt('SELECT * FROM events WHERE part = ? AND pseq >= ? AND pseq < ? ORDER BY pseq LIMIT ?');
    for (;;) {
      const rows = select.all(opts.partition, fromPseq, this.visiblePseq[opts.partition], limit) as Row[];
      if (rows.length > 0) return rows.map(rowToEvent);
      fromPseq = Math.max(fromPseq, this.visiblePseq[opts.partition]);
      const left = deadline - Date.now();
      if (left <= 0 || opts.signal?.aborted || this.closed) return [];
      await this.waitForAppend(left, opts.signal);
    }
  }

  partitionInfo(partition: number): PartitionInfo {
    if (!Number.isInteger(partition) || partition < 0 || partition >= this.partitions) {
      throw new RangeError(`partition ${partition} does not exist (0..${this.partitions - 1})`);
    }
    const first = this.db.prepare('SELECT pseq FROM events WHERE part = ? ORDER BY pseq LIMIT 1').get(partition) as { pseq: number } | undefined;
    const last = this.db.prepare('SELECT pseq, off, enq FROM events WHERE part = ? AND pseq < ? ORDER BY pseq DESC LIMIT 1').get(partition, this.visiblePseq[partition]) as
      | { pseq: number; off: number; enq: number }
      | undefined;
    return {
      partition,
      beginSequenceNumber: first ? first.pseq : -1,
      lastSequenceNumber: last ? last.pseq : this.visiblePseq[partition] - 1,
      lastOffset: last ? last.off : -1,
      lastEnqueuedTime: last?.enq,
      isEmpty: !last,
    };
  }

  /** When the stream was first created (epoch ms). */
  createdAt(): number {
    return this.metaNumber('created') ?? 0;
  }

  /** Deletes events older than the retention period; returns how many went. */
  prune(now = Date.now()): number {
    if (this.closed) return 0;
    const cutoff = now - this.retentionMs;
    let total = 0;
    try {
      this.saveHighMarks();
      const first = (this.db.prepare('SELECT MIN(seq) AS s FROM events').get() as { s: number | null }).s;
      if (first !== null) {
        const keep = this.firstSeqReaching(first, this.nextSeq, (enq) => enq >= cutoff) ?? this.nextSeq;
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
    if (total > 0) log.info({ deleted: total, retentionMs: this.retentionMs }, 'event stream retention removed old events');
    // What retention removed is not served from memory either.
    this.tail.dropEnqueuedBefore(cutoff);
    return total;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    await this.walSync?.close();
    for (const w of [...this.waiters]) w();
    this.saveHighMarks();
    this.db.close();
  }

  private saveHighMarks(): void {
    const put = this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value');
    this.db.transaction(() => {
      put.run('next_seq', String(this.nextSeq));
      for (let p = 0; p < this.partitions; p++) {
        put.run(`next_pseq_${p}`, String(this.nextPseq[p]));
        put.run(`next_off_${p}`, String(this.nextOffset[p]));
      }
    })();
  }

  private metaNumber(key: string): number | undefined {
    const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
    return row ? Number(row.value) : undefined;
  }

  private startSequence(opts: EventReadOptions): number {
    if (opts.fromSequenceNumber !== undefined) return Math.max(1, Math.floor(opts.fromSequenceNumber));
    const row = this.db.prepare('SELECT MIN(seq) AS s FROM events').get() as { s: number | null };
    if (opts.fromTime !== undefined) {
      const time = opts.fromTime;
      return row.s === null ? this.visibleSeq : (this.firstSeqReaching(row.s, this.visibleSeq, (enq) => enq >= time) ?? this.visibleSeq);
    }
    return row.s ?? this.visibleSeq;
  }

  /** The first sequence number in [lo, hi) whose enqueued time is `reached`. */
  private firstSeqReaching(lo: number, hi: number, reached: (enq: number) => boolean): number | undefined {
    const at = this.stmt('SELECT seq AS key, enq FROM events WHERE seq >= ? ORDER BY seq LIMIT 1');
    return firstReaching(lo, hi, (k) => at.get(k) as Keyed | undefined, reached);
  }

  private readonly statements = new Map<string, Database.Statement>();

  private stmt(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  /**
   * One device's (or module's) events from `start`: from memory when the tail holds `start`,
   * else by scanning the sequence in windows (there is no device index; see the constructor),
   * at most DEVICE_SCAN_MAX sequence numbers a call.
   */
  private readDevice(start: number, limit: number, deviceId: string, moduleId?: string): EventReadResult {
    const end = this.visibleSeq;
    const matches = (e: StoredEvent) => e.deviceId === deviceId && (moduleId === undefined || e.moduleId === moduleId);
    const events: StoredEvent[] = [];
    const inTail = this.tail.scan(start, end, (e) => {
      if (matches(e)) events.push(e);
      return events.length < limit;
    });
    if (inTail) return { events, nextSequenceNumber: events.length === limit ? events[limit - 1]!.sequenceNumber + 1 : Math.max(start, end) };
    const select =
      moduleId === undefined
        ? this.stmt('SELECT * FROM events WHERE seq >= ? AND seq < ? AND dev = ? ORDER BY seq LIMIT ?')
        : this.stmt('SELECT * FROM events WHERE seq >= ? AND seq < ? AND dev = ? AND mod = ? ORDER BY seq LIMIT ?');
    let from = start;
    while (from < end && from - start < DEVICE_SCAN_MAX) {
      const to = Math.min(end, from + DEVICE_SCAN_WINDOW);
      const rows = (moduleId === undefined ? select.all(from, to, deviceId, limit) : select.all(from, to, deviceId, moduleId, limit)) as Row[];
      if (rows.length > 0) return { events: rows.map(rowToEvent), nextSequenceNumber: rows.length === limit ? rows[limit - 1]!.seq + 1 : to };
      from = to;
    }
    return { events: [], nextSequenceNumber: Math.max(start, from) };
  }

  /** Events from `start` on, when the tail holds `start`; undefined when it does not. */
  private fromTail(start: number, limit: number): StoredEvent[] | undefined {
    if (start >= this.visibleSeq) return undefined;
    return this.tail.from(start, this.visibleSeq, limit);
  }

  private waitForAppend(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }
}

/** FNV-1a over the UTF-8 bytes of the device id: stable across restarts and processes. */
export function partitionOf(deviceId: string, partitions: number): number {
  let h = 0x811c9dc5;
  const bytes = Buffer.from(deviceId, 'utf8');
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}

interface Keyed {
  key: number;
  enq: number;
}

/**
 * The first key in [lo, hi) whose row's enqueued time is `reached`, by bisection: enqueued times
 * never decrease along the sequence (one time per commit, never earlier than the one before),
 * so no index on the time is needed. `at(k)` is the first row with a key >= k; keys may have gaps.
 */
export function firstReaching(lo: number, hi: number, at: (key: number) => Keyed | undefined, reached: (enq: number) => boolean): number | undefined {
  let best: number | undefined;
  while (lo < hi) {
    const mid = lo + Math.floor((hi - lo) / 2);
    const row = at(mid);
    if (!row || row.key >= hi) {
      hi = mid;
    } else if (reached(row.enq)) {
      best = row.key;
      hi = mid;
    } else {
      lo = row.key + 1;
    }
  }
  return best;
}

function clampLimit(limit?: number): number {
  if (limit === undefined || !Number.isFinite(limit) || limit <= 0) return DEFAULT_READ_LIMIT;
  return Math.min(MAX_READ_LIMIT, Math.floor(limit));
}

function rowToEvent(r: Row): StoredEvent {
  const e: StoredEvent = {
    sequenceNumber: r.seq,
    partition: r.part,
    partitionSequenceNumber: r.pseq,
    offset: r.off,
    enqueuedTime: r.enq,
    deviceId: r.dev,
    authMethod: expandAuthMethod(r.auth),
    messageSource: r.src,
    message: decodeMessageMeta(r.props, r.body),
  };
  if (r.mod !== null) e.moduleId = r.mod;
  if (r.gen !== null) e.authGenerationId = r.gen;
  return e;
}

function toStoredEvent(e: EventToAppend, info: StoredEventInfo): StoredEvent {
  // Fields named one by one (no spread): this runs for every event appended.
  const out: StoredEvent = {
    sequenceNumber: info.sequenceNumber,
    partition: info.partition,
    partitionSequenceNumber: info.partitionSequenceNumber,
    offset: info.offset,
    enqueuedTime: info.enqueuedTime,
    deviceId: e.deviceId,
    authMethod: e.authMethod,
    messageSource: e.messageSource,
    message: e.message,
  };
  if (e.moduleId !== undefined) out.moduleId = e.moduleId;
  if (e.authGenerationId !== undefined) out.authGenerationId = e.authGenerationId;
  return out;
}
