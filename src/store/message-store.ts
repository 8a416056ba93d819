import { dirname, resolve } from 'node:path';
import type Database from 'better-sqlite3';
import { UserError } from '../util/errors.ts';
import { WalSync } from './wal-sync.ts';
import { DEFAULT_DISK_RESERVE_BYTES, DiskHeadroom } from './disk-headroom.ts';
import type { ForwardedOrigin } from '../model/message.ts';
import { OriginWatermarks } from './origin-watermarks.ts';
import { PassingMarks } from './passing-marks.ts';
import { ResendWindow, type ResendKey } from './resend-window.ts';
import { GroupCommit } from './message-store/commit.ts';
import { ExpirySweeper } from './message-store/expiry-sweeper.ts';
import { log } from './message-store/log.ts';
import { PayloadGc } from './message-store/payload-gc.ts';
import { ReadCache } from './message-store/read-cache.ts';
import { QueueReader } from './message-store/reader.ts';
import { loadState, openDatabase, prepareStatements, storeIdOf } from './message-store/schema.ts';
import { Endpoints, type StoreCounts } from './message-store/state.ts';
import { queuedFrom } from './message-store/stored-form.ts';
import {
  DEFAULT_MAX_BYTES,
  DEFAULT_RESEND_WINDOW_ENTRIES,
  DEFAULT_RESEND_WINDOW_MS,
  type AppendEntry,
  type EndpointStoreMetrics,
  type QueuedMessage,
  type ReadOptions,
  type ReadResult,
  type StoreSettings,
  type StoreTotals,
} from './message-store/types.ts';

export { StoreFullError } from './message-store/store-full-error.ts';
export {
  DEFAULT_MAX_BYTES,
  DEFAULT_RESEND_WINDOW_ENTRIES,
  DEFAULT_RESEND_WINDOW_MS,
  type AppendEntry,
  type AppendTarget,
  type EndpointStoreMetrics,
  type QueuedMessage,
  type ReadOptions,
  type ReadResult,
  type StoredMessage,
  type StoreSettings,
  type StoreTotals,
} from './message-store/types.ts';

/**
 * Durable store-and-forward queues on one SQLite file (WAL).
 *
 * A message is written once (`messages`) and referenced by one row per target endpoint in
 * `queue`, keyed (endpoint, priority, seq). `seq` is the store-wide arrival order, so reading a
 * queue in key order gives priority first, then arrival, which keeps every sender's order.
 * Deleting a queue row is the checkpoint: once committed, that entry is never handed out again,
 * also after a crash. A payload row carries a reference count and goes with its last queue row.
 *
 * Appends and checkpoints are group-committed: everything arriving within `commitWindowMs`
 * (or until `commitMaxBatch` appends are waiting) shares one transaction, and an append's
 * promise resolves only once that transaction is on disk.
 *
 * How it gets on disk (`sync`): by default ('background') the transaction commits with
 * synchronous=NORMAL, which writes the WAL without waiting for the disk, and then the WAL file
 * is fdatasync'ed on libuv's thread pool; acknowledgements wait for that fdatasync. That is the
 * same flush synchronous=FULL does inside COMMIT, but the event loop keeps receiving and
 * forwarding while the disk works, and commits made during one fdatasync share the next. Under
 * a busy disk a synchronous fsync can take tens of milliseconds, all of it a stalled process.
 * 'commit' uses synchronous=FULL and acknowledges right after COMMIT returns.
 *
 * The parts, in message-store/: the writer (commit.ts, with append.ts and commit-rows.ts), the
 * reader and its in-memory cache (reader.ts, read-cache.ts), the expiry sweeper and payload
 * collection (expiry-sweeper.ts, payload-gc.ts), the file (schema.ts) and the shared state.
 * This class opens them together and answers for them.
 */

function positiveOr(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value) || value <= 0) {
    throw new UserError(`message store setting ${name} must be a positive number, got ${String(value)}`);
  }
  return value;
}

export class MessageStore {
  readonly path: string;
  /** This store's id, made when the file was: message numbers are unique within it. */
  readonly id: string;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly maxBytes: number;
  private readonly maxMessages: number;
  private readonly endpointIndex: Endpoints;
  private readonly counts: StoreCounts;
  private readonly origins: OriginWatermarks;
  private readonly passing: PassingMarks;
  private readonly resends: ResendWindow;
  /** With background sync: acknowledges commits once an fdatasync of the WAL covers them. */
  private walSync: WalSync | undefined;
  /** Free space kept on the disk for checkpoints (undefined for an in-memory store). */
  private readonly headroom: DiskHeadroom | undefined;
  private readonly commit: GroupCommit;
  private readonly reader: QueueReader;
  private readonly sweeper: ExpirySweeper;

  private constructor(settings: StoreSettings) {
    this.path = settings.path;
    this.now = settings.now ?? Date.now;
    this.maxBytes = positiveOr(settings.maxBytes, DEFAULT_MAX_BYTES, 'maxBytes');
    this.maxMessages = positiveOr(settings.maxMessages, Infinity, 'maxMessages');
    const commitWindowMs = settings.commitWindowMs ?? 1;
    const backgroundSync =
      (settings.sync ?? 'background') === 'background' && settings.path !== ':memory:' && settings.path !== '';
    const commitMaxBatch = positiveOr(settings.commitMaxBatch, 4096, 'commitMaxBatch');
    const sweepChunk = positiveOr(settings.sweepChunk, 20_000, 'sweepChunk');
    const cache = new ReadCache(settings.readCacheEntries ?? 100_000, settings.readCacheBytes ?? 32 * 1024 * 1024);

    const db = openDatabase(settings.path, backgroundSync);
    this.db = db;
    const stmt = prepareStatements(db);
    this.id = storeIdOf(db);
    this.origins = new OriginWatermarks(db);
    this.passing = new PassingMarks(db);
    this.resends = new ResendWindow(db, {
      windowMs: settings.resendWindowMs ?? DEFAULT_RESEND_WINDOW_MS,
      maxEntries: settings.resendWindowEntries ?? DEFAULT_RESEND_WINDOW_ENTRIES,
      now: this.now,
    });

    this.endpointIndex = new Endpoints(stmt.insertEndpoint);
    const opened = loadState(db, this.endpointIndex);
    this.counts = { messages: opened.messages, bytes: opened.bytes, pendingMessages: 0, pendingBytes: 0 };

    if (backgroundSync) this.openWal();
    this.headroom =
      settings.path === ':memory:' || settings.path === ''
        ? undefined
        : new DiskHeadroom({
            dir: dirname(resolve(settings.path)),
            walPath: `${settings.path}-wal`,
            reserveBytes: settings.diskReserveBytes ?? DEFAULT_DISK_RESERVE_BYTES,
            what: 'message store',
            settingName: settings.diskReserveSetting ?? 'diskReserveBytes',
            checkpoint: () => db.pragma('wal_checkpoint(TRUNCATE)'),
            reusableBytes: () =>
              (db.pragma('freelist_count', { simple: true }) as number) *
              (db.pragma('page_size', { simple: true }) as number),
            log,
          });

    const gc = new PayloadGc(db, stmt, this.endpointIndex, this.counts, sweepChunk, opened.gcFloor);
    this.commit = new GroupCommit({
      db,
      stmt,
      endpoints: this.endpointIndex,
      counts: this.counts,
      cache,
      gc,
      origins: this.origins,
      passing: this.passing,
      resends: this.resends,
      headroom: this.headroom,
      walSync: this.walSync,
      now: this.now,
      maxBytes: this.maxBytes,
      maxMessages: this.maxMessages,
      commitWindowMs,
      commitMaxBatch,
      committedSeq: opened.committedSeq,
    });
    this.reader = new QueueReader(this.path, stmt, this.endpointIndex, cache, this.commit, this.now);
    this.sweeper = new ExpirySweeper(stmt, this.endpointIndex, this.commit, gc, this.now, sweepChunk);

    // Says so at start-up when the disk is under the reserve already.
    this.headroom?.refusal(this.now());
    this.sweeper.start(settings.sweepIntervalMs ?? 1000);
    log.debug({ path: this.path, messages: this.counts.messages, bytes: this.counts.bytes }, 'message store open');
  }

  /** Opens (or creates) the store; throws a UserError when the file cannot be used. */
  static open(settings: StoreSettings | string): MessageStore {
    return new MessageStore(typeof settings === 'string' ? { path: settings } : settings);
  }

  /**
   * Stores a message once for all its targets. Resolves after the commit holding it is durable;
   * rejects with StoreFullError (nothing stored) when a size limit would be passed.
   */
  append(entry: AppendEntry): Promise<void> {
    return this.appendAll([entry]);
  }

  /**
   * Stores several messages in the same commit, all or none, answered once when that commit is
   * durable: a child gateway's batch of hundreds costs one promise, not one a message.
   */
  appendAll(entries: readonly AppendEntry[]): Promise<void> {
    return this.commit.appendAll(entries);
  }

  /**
   * Up to `limit` live entries of one endpoint's queue at one priority, in arrival order.
   * Expired entries are skipped (and deleted with the next commit); entries whose checkpoint is
   * still being committed are skipped.
   */
  read(endpoint: string, opts: ReadOptions): ReadResult {
    return this.reader.read(endpoint, opts);
  }

  /**
   * Marks entries delivered. Resolves once the deletion is committed: from then on they are never
   * handed out again, and after a restart neither once a later sync covered it (an append's); a
   * crash before that hands them out again, which the parent recognises by their origin.
   * Entries already gone (expired meanwhile) are ignored.
   */
  checkpoint(endpoint: string, entries: readonly QueuedMessage[]): Promise<void> {
    if (this.commit.closed) return Promise.reject(new Error('message store is closed'));
    const ep = this.endpointIndex.get(endpoint);
    if (!ep || entries.length === 0) return Promise.resolve();
    for (const e of entries) {
      if (e.endpoint !== endpoint)
        return Promise.reject(new TypeError(`entry ${e.seq} belongs to ${e.endpoint}, not ${endpoint}`));
    }
    for (const e of entries) this.commit.queueDelete(ep, e.priority, e.seq, 'checkpoint');
    return new Promise<void>((resolve, reject) => this.commit.waitForCommit({ resolve, reject }, false));
  }

  /** True when a child gateway's message at this origin is stored already (a resend). */
  isForwardedStored(origin: ForwardedOrigin): boolean {
    return this.origins.isStored(origin);
  }

  /** The storing of a child gateway's message at this origin, while it is under way. */
  forwardedInFlight(origin: ForwardedOrigin): Promise<unknown> | undefined {
    return this.origins.inFlightOf(origin);
  }

  /**
   * When a device's message is a resend of one stored here (store/resend-window.ts): resolves
   * once the original is on disk, and the resend needs nothing more. Undefined: a new message.
   */
  resendOriginal(key: ResendKey): Promise<unknown> | undefined {
    const original = this.resends.originalOf(key);
    return original === 'stored' ? this.whenDurable() : original;
  }

  /** Resolves once everything committed so far is on disk (acknowledge a resend no earlier than its original). */
  whenDurable(): Promise<void> {
    if (this.commit.closed) return Promise.reject(new Error('message store is closed'));
    return new Promise<void>((resolve, reject) => this.commit.waitForCommit({ resolve, reject }));
  }

  /**
   * Before a child's batch is passed to the parent without being stored (edge/direct-forward.ts):
   * undefined when a mark covering `seq` of `stream` is on disk already, else a promise that
   * resolves once one is (see passing-marks.ts).
   */
  markPassing(stream: string, seq: number): Promise<void> | undefined {
    if (this.commit.closed) return Promise.reject(new Error('message store is closed'));
    if (this.passing.covers(stream, seq)) return undefined;
    return this.whenDurable();
  }

  /** The passing marks found on disk at open: how far a previous run may have passed each stream on. */
  passingMarksAtOpen(): ReadonlyMap<string, number> {
    return this.passing.atOpen;
  }

  /** True when the endpoint has entries, committed or waiting for their commit. */
  hasQueued(endpoint: string): boolean {
    const ep = this.endpointIndex.get(endpoint);
    if (!ep) return false;
    if (ep.pendingAppends > 0) return true;
    for (const q of ep.queues.values()) if (q.length > 0) return true;
    return false;
  }

  /**
   * True when the endpoint has committed entries from this sender. A scan of the queue: for rare
   * questions (a middle gateway after a restart, edge/direct-forward.ts).
   */
  hasQueuedFrom(endpoint: string, identity: { deviceId: string; moduleId?: string }): boolean {
    const ep = this.endpointIndex.get(endpoint);
    if (!ep) return false;
    return queuedFrom(this.db, ep.id, identity);
  }

  /** Priorities of an endpoint that have entries, highest first (lowest number). */
  priorities(endpoint: string): number[] {
    const ep = this.endpointIndex.get(endpoint);
    if (!ep) return [];
    const out: number[] = [];
    for (const q of ep.queues.values()) if (q.length > 0) out.push(q.priority);
    return out.sort((a, b) => a - b);
  }

  /** Entries set aside because they could not be read back (see QueueReader.setAside). */
  setAsideCount(endpoint?: string): number {
    const sql =
      endpoint === undefined ? 'SELECT count(*) FROM set_aside' : 'SELECT count(*) FROM set_aside WHERE endpoint = ?';
    return this.db
      .prepare(sql)
      .pluck()
      .get(...(endpoint === undefined ? [] : [endpoint])) as number;
  }

  queueLength(endpoint: string, priority?: number): number {
    const ep = this.endpointIndex.get(endpoint);
    if (!ep) return 0;
    if (priority !== undefined) return ep.queues.get(priority)?.length ?? 0;
    let n = 0;
    for (const q of ep.queues.values()) n += q.length;
    return n;
  }

  /** The highest seq committed so far (entries above it are not readable yet). */
  get lastSeq(): number {
    return this.commit.committedSeq;
  }

  /** Calls `listener` after each commit that added entries for `endpoint`. Returns an unsubscribe. */
  onAppend(endpoint: string, listener: () => void): () => void {
    const ep = this.endpointIndex.ensure(endpoint);
    ep.listeners.add(listener);
    return () => ep.listeners.delete(listener);
  }

  endpoints(): string[] {
    return this.endpointIndex.names();
  }

  metrics(endpoint: string): EndpointStoreMetrics {
    const ep = this.endpointIndex.get(endpoint);
    const byPriority: Record<number, number> = {};
    let queueLength = 0;
    for (const q of ep?.queues.values() ?? []) {
      byPriority[q.priority] = q.length;
      queueLength += q.length;
    }
    return {
      endpoint,
      queueLength,
      queueLengthByPriority: byPriority,
      checkpointed: ep?.checkpointed ?? 0,
      expired: ep?.expired ?? 0,
    };
  }

  /** Why the store takes no new messages now (disk under the reserve, or a size limit reached), or undefined. */
  storeFull(): string | undefined {
    if (this.commit.closed) return undefined;
    const disk = this.headroom?.refusal(this.now());
    if (disk) return disk;
    const c = this.counts;
    if (c.bytes + c.pendingBytes >= this.maxBytes)
      return `store full: message store holds ${c.bytes} of ${this.maxBytes} bytes (maxBytes)`;
    if (c.messages + c.pendingMessages >= this.maxMessages)
      return `store full: message store holds ${c.messages} of ${this.maxMessages} messages (maxMessages)`;
    return undefined;
  }

  totals(): StoreTotals {
    return {
      messages: this.counts.messages,
      bytes: this.counts.bytes,
      maxMessages: this.maxMessages,
      maxBytes: this.maxBytes,
    };
  }

  /**
   * Deletes expired entries, a bounded slice of every queue per call (the background timer calls
   * this). Resolves when the deletions are committed, with how many were found.
   */
  sweepExpired(): Promise<number> {
    return this.sweeper.sweep();
  }

  /** Commits what is pending and closes the file. */
  async close(): Promise<void> {
    if (this.commit.closed) return;
    this.sweeper.stop();
    this.commit.close();
    await this.walSync?.close();
    this.db.close();
  }

  /** Opens the WAL for background fdatasync, after making sure it and its directory entry are on disk. */
  private openWal(): void {
    try {
      this.walSync = new WalSync(this.path, 'message store', () =>
        this.db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)").run(String(Date.now())),
      );
    } catch (err) {
      this.db.close();
      throw new UserError(`cannot prepare message store ${this.path}: ${(err as Error).message}`);
    }
  }
}
