import { randomUUID } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { identityKey } from '../model/identity.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import { WalSync } from './wal-sync.ts';
import { DEFAULT_DISK_RESERVE_BYTES, DiskHeadroom } from './disk-headroom.ts';
import { OriginWatermarks, type OriginsMoved } from './origin-watermarks.ts';
import { type ForwardedOrigin } from '../model/message.ts';
import { PassingMarks } from './passing-marks.ts';
import { ResendWindow, type ResendKey, type ResendWritten } from './resend-window.ts';
import { recordPrefixOf, reviveSenderMessage, SenderMessage } from './sender-message.ts';

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
 */

const log = childLog('store');

export interface StoredMessage {
  body: Buffer;
  systemProperties: Record<string, string | undefined>;
  appProperties: Record<string, string>;
  /** Route source, e.g. `/messages` or `/messages/modules/m1/outputs/o1`. */
  source: string;
  /** Who sent it (device id or device/module); order is kept per sender. */
  sender: string;
}

export interface AppendTarget {
  endpoint: string;
  /** 0 is the highest; a non-negative integer. */
  priority: number;
  /** Seconds the entry may wait in this queue; 0, negative or Infinity means it never expires
   *  (resolve "0 = the global TTL" before calling). */
  ttlSecs: number;
}

export interface AppendEntry {
  message: StoredMessage;
  targets: AppendTarget[];
  /**
   * Set when a child gateway forwarded the message from its own store: its place there. A message
   * already stored is not stored again (see isForwardedStored); with no targets only the place is
   * recorded, so later messages of its stream are still recognised.
   */
  origin?: ForwardedOrigin;
  /** A device's message with a message id: remembered so that its resend is stored once (store/resend-window.ts). */
  resend?: ResendKey;
}

/** One queue entry as handed to a reader; pass it back to `checkpoint` once delivered. */
export interface QueuedMessage {
  readonly seq: number;
  readonly endpoint: string;
  readonly priority: number;
  /** ms since the epoch when the store accepted it. */
  readonly enqueuedAt: number;
  /** ms since the epoch; Infinity when it never expires. */
  readonly expiresAt: number;
  readonly message: StoredMessage;
}

export interface ReadOptions {
  priority: number;
  /** Only entries with seq greater than this (a reader's cursor; 0 reads from the start). */
  afterSeq: number;
  /** Only entries with seq up to and including this. */
  upToSeq?: number;
  limit: number;
}

export interface ReadResult {
  entries: QueuedMessage[];
  /** Where the next read should continue (covers entries skipped as expired or being checkpointed). */
  cursor: number;
  /** True when the range held nothing more to read at the time of the read. */
  exhausted: boolean;
}

export interface StoreSettings {
  /** The database file; created if missing. */
  path: string;
  /** Limit on stored payload bytes (body + properties), default 2 GiB. */
  maxBytes?: number;
  /** Limit on stored messages (each counted once however many endpoints it goes to), default unlimited. */
  maxMessages?: number;
  /** How long an append may wait for others to share its commit, default 1 ms. */
  commitWindowMs?: number;
  /** Commit at once when this many appends are waiting, default 4096. */
  commitMaxBatch?: number;
  /** How often expired entries are deleted in the background, default 1000 ms; 0 disables the timer. */
  sweepIntervalMs?: number;
  /** Queue rows examined per queue per sweep, default 20000 (bounds the pause a sweep causes). */
  sweepChunk?: number;
  /** Recently committed entries kept in memory per queue so readers that keep up skip the database:
   *  at most this many, default 100000 ... */
  readCacheEntries?: number;
  /** ... and at most this many body bytes, default 32 MiB (a burst the parent link has not caught up with yet). */
  readCacheBytes?: number;
  /** How commits reach the disk before acknowledgement: 'background' (default) or 'commit'; see above. */
  sync?: 'background' | 'commit';
  /** How long a device's message id is remembered to recognise its resend (store/resend-window.ts), default 60000 ms; 0 disables. */
  resendWindowMs?: number;
  /** At most this many message ids in that window, default 100000. */
  resendWindowEntries?: number;
  /** Clock in ms since the epoch (tests). */
  now?: () => number;
  /** Free disk space kept for checkpoints: appends are refused below it (DEFAULT_DISK_RESERVE_BYTES). */
  diskReserveBytes?: number;
  /** The setting that changes the reserve, named in the refusal. */
  diskReserveSetting?: string;
}

export interface EndpointStoreMetrics {
  endpoint: string;
  /** Entries waiting (including expired ones not yet deleted). */
  queueLength: number;
  queueLengthByPriority: Record<number, number>;
  /** Entries checkpointed (delivered) since the store was created. */
  checkpointed: number;
  /** Entries dropped because their TTL passed, since the store was created. */
  expired: number;
}

export interface StoreTotals {
  messages: number;
  bytes: number;
  maxMessages: number;
  maxBytes: number;
}

export const DEFAULT_MAX_BYTES = 2 * 1024 ** 3;
export const DEFAULT_RESEND_WINDOW_MS = 60_000;
export const DEFAULT_RESEND_WINDOW_ENTRIES = 100_000;

/**
 * The store refused an append because a size limit is reached, or its disk is under the
 * free-space reserve ('disk': `max` is the reserve, `current` the free bytes); the sender
 * should not get an acknowledgement.
 */
export class StoreFullError extends UserError {
  readonly code = 'STORE_FULL';
  constructor(
    readonly limit: 'maxBytes' | 'maxMessages' | 'disk',
    readonly max: number,
    readonly current: number,
    reason?: string,
  ) {
    super(
      limit === 'disk'
        ? (reason ?? `store full: ${current} bytes free on the disk, under the reserve of ${max}`)
        : limit === 'maxBytes'
          ? `message store full: ${current} of ${max} bytes used`
          : `message store full: ${current} of ${max} messages stored`,
      limit === 'disk'
        ? 'free space on the disk of the data directory; queued messages drain to their endpoints meanwhile'
        : `raise the store's ${limit} setting, or restore the endpoints so queued messages drain`,
    );
    this.name = 'StoreFullError';
  }
}

/** A committed entry kept in memory: itself what readers get, plus whether it is delivered or expired. */
class CacheItem implements QueuedMessage {
  gone = false;

  constructor(
    readonly seq: number,
    readonly endpoint: string,
    readonly priority: number,
    readonly enqueuedAt: number,
    readonly expiresAt: number,
    readonly message: StoredMessage,
  ) {}
}

interface QueueState {
  epId: number;
  endpoint: string;
  priority: number;
  /** Committed rows in the database. */
  length: number;
  /** The cache holds every committed, undeleted entry of this queue with seq > cacheFrom. */
  cacheFrom: number;
  cache: CacheItem[];
  head: number;
  /** Body bytes of cache[head..]. */
  cacheBytes: number;
  /** Background sweep position and the earliest expiry known to remain. */
  sweepCursor: number;
  sweepPassMin: number;
  nextExpiry: number;
}

interface EndpointState {
  id: number;
  name: string;
  checkpointed: number;
  expired: number;
  /** Seqs whose deletion (checkpoint or expiry) waits for the next commit. */
  pendingDelete: Set<number>;
  queues: Map<number, QueueState>;
  listeners: Set<() => void>;
  /** Appends for this endpoint waiting for their commit. */
  pendingAppends: number;
  /** Counted in the commit that writes them. */
  dirtyCheckpointed: number;
  dirtyExpired: number;
}

interface PendingAppend {
  seq: number;
  enqueuedAt: number;
  message: StoredMessage;
  meta: string;
  size: number;
  targets: Array<{ ep: EndpointState; priority: number; expiresAt: number }>;
  resolve: () => void;
  reject: (err: Error) => void;
}

/** The answer of an append whose batch is answered through another of its items. */
function ignore(): void {}

interface PendingDelete {
  ep: EndpointState;
  priority: number;
  seq: number;
  reason: 'checkpoint' | 'expired' | 'unreadable';
  /** An entry that cannot be read back: kept, with why, in set_aside by the same commit. */
  aside?: { row: MessageRow; why: string };
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

interface MessageRow {
  seq: number;
  expires: number;
  enq: number;
  meta: string;
  body: Buffer;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  checkpointed INTEGER NOT NULL DEFAULT 0,
  expired INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY,
  size INTEGER NOT NULL,
  enq INTEGER NOT NULL,
  meta TEXT NOT NULL,
  body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
  ep INTEGER NOT NULL,
  prio INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  expires INTEGER NOT NULL,
  PRIMARY KEY (ep, prio, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS set_aside (
  endpoint TEXT NOT NULL,
  prio INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  enq INTEGER NOT NULL,
  meta TEXT NOT NULL,
  body BLOB NOT NULL,
  why TEXT NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY (endpoint, seq)
) WITHOUT ROWID;
`;

const SCHEMA_VERSION = '1';
/** Rows per multi-row insert (5 values a message: well under SQLite's 32,766 parameters). */
const INSERT_CHUNK = 64;
/** Deletions per commit while the disk is under the reserve (see flush). */
const FULL_DISK_DELETE_CHUNK = 128;
/** Shorter runs of deletes are cheaper row by row than counted and deleted as a range. */
const MIN_RANGE_DELETE = 8;

function positiveOr(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value) || value <= 0) {
    throw new UserError(`message store setting ${name} must be a positive number, got ${String(value)}`);
  }
  return value;
}

function checkMessage(entry: AppendEntry): string | undefined {
  if (!entry || typeof entry !== 'object') return 'append needs { message, targets }';
  const m = entry.message;
  if (!m || typeof m !== 'object') return 'append needs a message';
  if (!Buffer.isBuffer(m.body)) return 'message body must be a Buffer';
  if (typeof m.sender !== 'string') return 'message sender must be a string';
  if (typeof m.source !== 'string') return 'message source must be a string';
  // A device's message carries its properties in its record (and builds them only when asked).
  if (m instanceof SenderMessage) return checkTargets(entry);
  if (!m.systemProperties || typeof m.systemProperties !== 'object') return 'message systemProperties must be an object';
  if (!m.appProperties || typeof m.appProperties !== 'object') return 'message appProperties must be an object';
  return checkTargets(entry);
}

function checkTargets(entry: AppendEntry): string | undefined {
  if (!Array.isArray(entry.targets)) return 'append targets must be an array';
  for (const t of entry.targets) {
    if (!t || typeof t.endpoint !== 'string' || t.endpoint === '') return 'each target needs a non-empty endpoint name';
    if (!Number.isSafeInteger(t.priority) || t.priority < 0) return `target ${t.endpoint}: priority must be a non-negative integer`;
    if (typeof t.ttlSecs !== 'number' || Number.isNaN(t.ttlSecs)) return `target ${t.endpoint}: ttlSecs must be a number`;
  }
  return undefined;
}

export class MessageStore {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly maxBytes: number;
  private readonly maxMessages: number;
  private readonly commitWindowMs: number;
  private readonly commitMaxBatch: number;
  private readonly sweepChunk: number;
  private readonly cacheCap: number;
  private readonly cacheByteCap: number;

  private readonly endpointsByName = new Map<string, EndpointState>();
  private nextSeq: number;
  private committedSeq: number;
  private messageCount: number;
  private byteCount: number;
  private pendingBytes = 0;
  private pendingMessages = 0;

  private appends: PendingAppend[] = [];
  /** Origins of the messages appended since the last commit, in append order. */
  private pendingOrigins: ForwardedOrigin[] = [];
  private readonly origins: OriginWatermarks;
  private readonly passing: PassingMarks;
  private readonly resends: ResendWindow;
  /** This store's id, made when the file was: message numbers are unique within it. */
  readonly id: string;
  private deletes: PendingDelete[] = [];
  private deleteWaiters: Waiter[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  private flushImmediate: NodeJS.Immediate | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private lastFullLog = 0;
  /** Every payload below this seq is deleted; `gcFloorNext` is what the open commit moves it to. */
  private gcFloor = 0;
  private gcFloorNext = 0;
  private orphanCursor = 0;
  private readonly backgroundSync: boolean;
  /** With background sync: acknowledges commits once an fdatasync of the WAL covers them. */
  private walSync: WalSync | undefined;
  /** Free space kept on the disk for checkpoints (undefined for an in-memory store). */
  private readonly headroom: DiskHeadroom | undefined;

  private readonly stmt: {
    insertMessage: Database.Statement;
    insertQueue: Database.Statement;
    insertEndpoint: Database.Statement;
    deleteQueue: Database.Statement;
    insertMessages: Database.Statement;
    insertQueues: Database.Statement;
    countRange: Database.Statement;
    deleteRange: Database.Statement;
    queueHead: Database.Statement;
    gcTotals: Database.Statement;
    gcDelete: Database.Statement;
    deleteMessage: Database.Statement;
    updateEndpoint: Database.Statement;
    insertAside: Database.Statement;
    saveLastSeq: Database.Statement;
    readRange: Database.Statement;
    sweepScan: Database.Statement;
  };

  private constructor(settings: StoreSettings) {
    this.path = settings.path;
    this.now = settings.now ?? Date.now;
    this.maxBytes = positiveOr(settings.maxBytes, DEFAULT_MAX_BYTES, 'maxBytes');
    this.maxMessages = positiveOr(settings.maxMessages, Infinity, 'maxMessages');
    this.commitWindowMs = settings.commitWindowMs ?? 1;
    this.backgroundSync = (settings.sync ?? 'background') === 'background' && settings.path !== ':memory:' && settings.path !== '';
    this.commitMaxBatch = positiveOr(settings.commitMaxBatch, 4096, 'commitMaxBatch');
    this.sweepChunk = positiveOr(settings.sweepChunk, 20_000, 'sweepChunk');
    this.cacheCap = settings.readCacheEntries ?? 100_000;
    this.cacheByteCap = settings.readCacheBytes ?? 32 * 1024 * 1024;

    try {
      this.db = new Database(settings.path, { timeout: 0 });
    } catch (err) {
      throw new UserError(`cannot open message store ${settings.path}: ${(err as Error).message}`,
        'check that the directory exists and is writable');
    }
    try {
      // Page size only takes on a new file; 8 KiB pages hold more small messages per write.
      this.db.pragma('page_size = 8192');
      this.db.pragma('journal_mode = WAL');
      this.db.pragma(this.backgroundSync ? 'synchronous = NORMAL' : 'synchronous = FULL');
      // One process owns the queues: a second one would hand out the same entries twice.
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.pragma('busy_timeout = 0');
      // Fewer, larger WAL checkpoints: pages rewritten by many commits are copied back once (~32 MiB of WAL).
      this.db.pragma('wal_autocheckpoint = 4000');
      this.db.pragma('cache_size = -16000');
      this.db.exec('BEGIN IMMEDIATE; COMMIT');
      this.db.exec(SCHEMA);
      const version = this.db.prepare('SELECT value FROM meta WHERE key = ?').pluck().get('schema') as string | undefined;
      if (version === undefined) this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('schema', SCHEMA_VERSION);
      else if (version !== SCHEMA_VERSION) {
        throw new UserError(`message store ${settings.path} has schema version ${version}, this build reads ${SCHEMA_VERSION}`);
      }
    } catch (err) {
      this.db.close();
      if (err instanceof UserError) throw err;
      const code = (err as { code?: string }).code;
      if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') {
        throw new UserError(`message store ${settings.path} is in use by another process`, 'stop the other Strata process first');
      }
      throw new UserError(`cannot open message store ${settings.path}: ${(err as Error).message}`);
    }

    this.stmt = {
      insertMessage: this.db.prepare('INSERT INTO messages (seq, size, enq, meta, body) VALUES (?, ?, ?, ?, ?)'),
      insertQueue: this.db.prepare('INSERT INTO queue (ep, prio, seq, expires) VALUES (?, ?, ?, ?)'),
      insertEndpoint: this.db.prepare('INSERT INTO endpoints (name) VALUES (?)'),
      deleteQueue: this.db.prepare('DELETE FROM queue WHERE ep = ? AND prio = ? AND seq = ?'),
      // Many rows per statement: a statement's own cost is paid once per chunk, not per message.
      insertMessages: this.db.prepare(`INSERT INTO messages (seq, size, enq, meta, body) VALUES ${Array(INSERT_CHUNK).fill('(?, ?, ?, ?, ?)').join(', ')}`),
      insertQueues: this.db.prepare(`INSERT INTO queue (ep, prio, seq, expires) VALUES ${Array(INSERT_CHUNK).fill('(?, ?, ?, ?)').join(', ')}`),
      countRange: this.db.prepare('SELECT count(*) FROM queue WHERE ep = ? AND prio = ? AND seq BETWEEN ? AND ?').pluck(),
      deleteRange: this.db.prepare('DELETE FROM queue WHERE ep = ? AND prio = ? AND seq BETWEEN ? AND ?'),
      queueHead: this.db.prepare('SELECT seq FROM queue WHERE ep = ? AND prio = ? ORDER BY seq LIMIT 1').pluck(),
      gcTotals: this.db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM messages WHERE seq < ?'),
      gcDelete: this.db.prepare('DELETE FROM messages WHERE seq < ?'),
      deleteMessage: this.db.prepare('DELETE FROM messages WHERE seq = ? RETURNING size').pluck(),
      insertAside: this.db.prepare('INSERT OR IGNORE INTO set_aside (endpoint, prio, seq, enq, meta, body, why, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)'),
      updateEndpoint: this.db.prepare('UPDATE endpoints SET checkpointed = checkpointed + ?, expired = expired + ? WHERE id = ?'),
      saveLastSeq: this.db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('lastSeq', ?)"),
      readRange: this.db.prepare(
        'SELECT q.seq AS seq, q.expires AS expires, m.enq AS enq, m.meta AS meta, m.body AS body ' +
          'FROM queue q JOIN messages m ON m.seq = q.seq ' +
          'WHERE q.ep = ? AND q.prio = ? AND q.seq > ? AND q.seq <= ? ORDER BY q.seq LIMIT ?',
      ),
      sweepScan: this.db.prepare('SELECT seq, expires FROM queue WHERE ep = ? AND prio = ? AND seq > ? ORDER BY seq LIMIT ?').raw(true),
    };

    let id = this.db.prepare("SELECT value FROM meta WHERE key = 'id'").pluck().get() as string | undefined;
    if (id === undefined) {
      id = randomUUID();
      this.db.prepare("INSERT INTO meta (key, value) VALUES ('id', ?)").run(id);
    }
    this.id = id;
    this.origins = new OriginWatermarks(this.db);
    this.passing = new PassingMarks(this.db);
    this.resends = new ResendWindow(this.db, {
      windowMs: settings.resendWindowMs ?? DEFAULT_RESEND_WINDOW_MS,
      maxEntries: settings.resendWindowEntries ?? DEFAULT_RESEND_WINDOW_ENTRIES,
      now: this.now,
    });

    const totals = this.db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes, coalesce(max(seq), 0) AS top FROM messages').get() as
      { n: number; bytes: number; top: number };
    this.messageCount = totals.n;
    this.byteCount = totals.bytes;
    // Seqs are never reused, also once every payload is gone: a receiver may rely on them.
    const saved = Number(this.db.prepare("SELECT value FROM meta WHERE key = 'lastSeq'").pluck().get() ?? 0);
    this.committedSeq = Math.max(totals.top, saved);
    this.nextSeq = this.committedSeq + 1;
    this.gcFloor = (this.db.prepare('SELECT min(seq) FROM messages').pluck().get() as number | null) ?? this.nextSeq;
    this.gcFloorNext = this.gcFloor;

    for (const row of this.db.prepare('SELECT id, name, checkpointed, expired FROM endpoints').all() as
      Array<{ id: number; name: string; checkpointed: number; expired: number }>) {
      this.endpointsByName.set(row.name, this.newEndpointState(row.id, row.name, row.checkpointed, row.expired));
    }
    const byId = new Map([...this.endpointsByName.values()].map((e) => [e.id, e]));
    for (const row of this.db.prepare('SELECT ep, prio, count(*) AS n FROM queue GROUP BY ep, prio').all() as
      Array<{ ep: number; prio: number; n: number }>) {
      const ep = byId.get(row.ep);
      if (ep) this.queueState(ep, row.prio).length = row.n;
    }

    if (this.backgroundSync) this.openWal();
    this.headroom = settings.path === ':memory:' || settings.path === '' ? undefined : new DiskHeadroom({
      dir: dirname(resolve(settings.path)),
      walPath: `${settings.path}-wal`,
      reserveBytes: settings.diskReserveBytes ?? DEFAULT_DISK_RESERVE_BYTES,
      what: 'message store',
      settingName: settings.diskReserveSetting ?? 'diskReserveBytes',
      checkpoint: () => this.db.pragma('wal_checkpoint(TRUNCATE)'),
      reusableBytes: () => (this.db.pragma('freelist_count', { simple: true }) as number) * (this.db.pragma('page_size', { simple: true }) as number),
      log,
    });

    // Says so at start-up when the disk is under the reserve already.
    this.headroom?.refusal(this.now());
    const sweepMs = settings.sweepIntervalMs ?? 1000;
    if (sweepMs > 0) {
      this.sweepTimer = setInterval(() => {
        this.sweepExpired().catch(() => undefined); // failures are logged where they happen
      }, sweepMs);
      this.sweepTimer.unref();
    }
    log.debug({ path: this.path, messages: this.messageCount, bytes: this.byteCount }, 'message store open');
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
    if (this.closed) return Promise.reject(new Error('message store is closed'));
    const now = this.now();
    const ready: PendingAppend[] = [];
    /** Every origin named, in entry order (a child's stream is recorded in its order). */
    const origins: ForwardedOrigin[] = [];
    let bytes = 0;
    for (const entry of entries) {
      const problem = checkMessage(entry);
      if (problem) {
        log.warn({ problem }, 'append refused');
        return Promise.reject(new TypeError(problem));
      }
      if (entry.origin) origins.push(entry.origin);
      // Nothing to store but the origin (if any): it is durable with the next commit.
      if (entry.targets.length === 0) continue;
      const m = entry.message;
      // A device's message as its short record; anything else as JSON of its fields (told apart by the `{`).
      const meta = m instanceof SenderMessage ? m.record() : JSON.stringify({ s: m.systemProperties, a: m.appProperties, src: m.source, snd: m.sender });
      const size = m.body.length + Buffer.byteLength(meta);
      let targets: PendingAppend['targets'];
      try {
        targets = this.targetsOf(entry.targets, now);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'cannot register endpoint in message store');
        return Promise.reject(new Error(`message not stored: ${(err as Error).message}`));
      }
      bytes += size;
      ready.push({ seq: 0, enqueuedAt: now, message: m, meta, size, targets, resolve: ignore, reject: ignore });
    }
    // Below the free-space reserve nothing new is written: the space left is for checkpoints.
    const diskFull = ready.length > 0 ? this.headroom?.refusal(now) : undefined;
    if (diskFull) return Promise.reject(new StoreFullError('disk', 0, 0, diskFull));
    if (this.byteCount + this.pendingBytes + bytes > this.maxBytes) {
      return Promise.reject(this.full(new StoreFullError('maxBytes', this.maxBytes, this.byteCount + this.pendingBytes)));
    }
    if (this.messageCount + this.pendingMessages + ready.length > this.maxMessages) {
      return Promise.reject(this.full(new StoreFullError('maxMessages', this.maxMessages, this.messageCount + this.pendingMessages)));
    }
    if (ready.length === 0 && origins.length === 0) return Promise.resolve();

    const stored = new Promise<void>((resolve, reject) => {
      // Everything pushed here goes into the same commit and is answered by the same sync: one
      // item carries the answer for all (on failure every item is rejected, so it is the last).
      for (const a of ready) {
        a.seq = this.nextSeq++;
        this.appends.push(a);
        for (const t of a.targets) t.ep.pendingAppends++;
      }
      this.pendingBytes += bytes;
      this.pendingMessages += ready.length;
      for (const o of origins) this.pendingOrigins.push(o);
      if (ready.length > 0) {
        const last = ready[ready.length - 1]!;
        last.resolve = resolve;
        last.reject = reject;
      } else {
        this.deleteWaiters.push({ resolve, reject });
      }
      this.scheduleFlush(this.appends.length >= this.commitMaxBatch);
    });
    for (const o of origins) this.origins.track(o, stored);
    for (const e of entries) if (e.resend && e.targets.length > 0) this.resends.add(e.resend, stored);
    return stored;
  }

  /** An append's targets: one per endpoint (when named twice, the highest priority wins), with expiry times. */
  private targetsOf(wanted: readonly AppendTarget[], enqueuedAt: number): PendingAppend['targets'] {
    let unique: Iterable<AppendTarget> = wanted;
    if (wanted.length > 1) {
      const byEndpoint = new Map<string, AppendTarget>();
      for (const t of wanted) {
        const seen = byEndpoint.get(t.endpoint);
        if (!seen || t.priority < seen.priority) byEndpoint.set(t.endpoint, t);
      }
      unique = byEndpoint.values();
    }
    const targets: PendingAppend['targets'] = [];
    for (const t of unique) {
      targets.push({
        ep: this.endpointState(t.endpoint),
        priority: t.priority,
        expiresAt: t.ttlSecs > 0 && Number.isFinite(t.ttlSecs) ? enqueuedAt + Math.round(t.ttlSecs * 1000) : Infinity,
      });
    }
    return targets;
  }

  /**
   * Up to `limit` live entries of one endpoint's queue at one priority, in arrival order.
   * Expired entries are skipped (and deleted with the next commit); entries whose checkpoint is
   * still being committed are skipped.
   */
  read(endpoint: string, opts: ReadOptions): ReadResult {
    const ep = this.endpointsByName.get(endpoint);
    const q = ep?.queues.get(opts.priority);
    const upTo = opts.upToSeq ?? Number.MAX_SAFE_INTEGER;
    if (!ep || !q || opts.limit <= 0 || opts.afterSeq >= upTo) return { entries: [], cursor: opts.afterSeq, exhausted: true };
    if (opts.afterSeq >= q.cacheFrom) return this.readCache(ep, q, opts.afterSeq, upTo, opts.limit);

    const now = this.now();
    const entries: QueuedMessage[] = [];
    let cursor = opts.afterSeq;
    let exhausted = false;
    while (entries.length < opts.limit) {
      const want = opts.limit - entries.length;
      const rows = this.stmt.readRange.all(ep.id, opts.priority, cursor, upTo, want) as MessageRow[];
      for (const row of rows) {
        cursor = row.seq;
        if (ep.pendingDelete.has(row.seq)) continue;
        const expiresAt = row.expires === 0 ? Infinity : row.expires;
        if (expiresAt <= now) {
          this.queueDelete(ep, opts.priority, row.seq, 'expired');
          continue;
        }
        let entry: QueuedMessage;
        try {
          entry = this.toEntry(ep.name, opts.priority, row, expiresAt);
        } catch (err) {
          this.setAside(ep, opts.priority, row, err);
          continue;
        }
        entries.push(entry);
      }
      if (rows.length < want) {
        exhausted = true;
        break;
      }
      // The database part is read; the rest of the range may be served from memory.
      if (cursor >= q.cacheFrom) {
        const more = this.readCache(ep, q, cursor, upTo, opts.limit - entries.length);
        entries.push(...more.entries);
        return { entries, cursor: more.cursor, exhausted: more.exhausted };
      }
    }
    if (this.deletes.length > 0) this.scheduleFlush(false);
    return { entries, cursor, exhausted };
  }

  /**
   * Marks entries delivered. Resolves once the deletion is committed; from then on they are never
   * handed out again, also after a restart. Entries already gone (expired meanwhile) are ignored.
   */
  checkpoint(endpoint: string, entries: readonly QueuedMessage[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error('message store is closed'));
    const ep = this.endpointsByName.get(endpoint);
    if (!ep || entries.length === 0) return Promise.resolve();
    for (const e of entries) {
      if (e.endpoint !== endpoint) return Promise.reject(new TypeError(`entry ${e.seq} belongs to ${e.endpoint}, not ${endpoint}`));
    }
    for (const e of entries) this.queueDelete(ep, e.priority, e.seq, 'checkpoint');
    return new Promise<void>((resolve, reject) => {
      this.deleteWaiters.push({ resolve, reject });
      this.scheduleFlush(false);
    });
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
    if (this.closed) return Promise.reject(new Error('message store is closed'));
    return new Promise<void>((resolve, reject) => {
      this.deleteWaiters.push({ resolve, reject });
      this.scheduleFlush(false);
    });
  }

  /**
   * Before a child's batch is passed to the parent without being stored (edge/direct-forward.ts):
   * undefined when a mark covering `seq` of `stream` is on disk already, else a promise that
   * resolves once one is (see passing-marks.ts).
   */
  markPassing(stream: string, seq: number): Promise<void> | undefined {
    if (this.closed) return Promise.reject(new Error('message store is closed'));
    if (this.passing.covers(stream, seq)) return undefined;
    return this.whenDurable();
  }

  /** The passing marks found on disk at open: how far a previous run may have passed each stream on. */
  passingMarksAtOpen(): ReadonlyMap<string, number> {
    return this.passing.atOpen;
  }

  /** True when the endpoint has entries, committed or waiting for their commit. */
  hasQueued(endpoint: string): boolean {
    const ep = this.endpointsByName.get(endpoint);
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
    const ep = this.endpointsByName.get(endpoint);
    if (!ep) return false;
    const prefix = recordPrefixOf(identity.deviceId, identity.moduleId);
    const sender = identityKey(identity.deviceId, identity.moduleId);
    // Records of a device's message begin with its ids; anything else is JSON naming its sender.
    return this.db.prepare(
      'SELECT 1 FROM queue q JOIN messages m ON m.seq = q.seq WHERE q.ep = ? AND ' +
        "(substr(m.meta, 1, ?) = ? OR (substr(m.meta, 1, 1) = '{' AND instr(m.meta, ?) > 0)) LIMIT 1",
    ).pluck().get(ep.id, prefix.length, prefix, `"snd":${JSON.stringify(sender)}`) !== undefined;
  }

  /** Priorities of an endpoint that have entries, highest first (lowest number). */
  priorities(endpoint: string): number[] {
    const ep = this.endpointsByName.get(endpoint);
    if (!ep) return [];
    const out: number[] = [];
    for (const q of ep.queues.values()) if (q.length > 0) out.push(q.priority);
    return out.sort((a, b) => a - b);
  }

  /** Entries set aside because they could not be read back (see setAside). */
  setAsideCount(endpoint?: string): number {
    const sql = endpoint === undefined ? 'SELECT count(*) FROM set_aside' : 'SELECT count(*) FROM set_aside WHERE endpoint = ?';
    return this.db.prepare(sql).pluck().get(...(endpoint === undefined ? [] : [endpoint])) as number;
  }

  queueLength(endpoint: string, priority?: number): number {
    const ep = this.endpointsByName.get(endpoint);
    if (!ep) return 0;
    if (priority !== undefined) return ep.queues.get(priority)?.length ?? 0;
    let n = 0;
    for (const q of ep.queues.values()) n += q.length;
    return n;
  }

  /** The highest seq committed so far (entries above it are not readable yet). */
  get lastSeq(): number {
    return this.committedSeq;
  }

  /** Calls `listener` after each commit that added entries for `endpoint`. Returns an unsubscribe. */
  onAppend(endpoint: string, listener: () => void): () => void {
    const ep = this.endpointState(endpoint);
    ep.listeners.add(listener);
    return () => ep.listeners.delete(listener);
  }

  endpoints(): string[] {
    return [...this.endpointsByName.keys()];
  }

  metrics(endpoint: string): EndpointStoreMetrics {
    const ep = this.endpointsByName.get(endpoint);
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
    if (this.closed) return undefined;
    const disk = this.headroom?.refusal(this.now());
    if (disk) return disk;
    if (this.byteCount + this.pendingBytes >= this.maxBytes) return `store full: message store holds ${this.byteCount} of ${this.maxBytes} bytes (maxBytes)`;
    if (this.messageCount + this.pendingMessages >= this.maxMessages) return `store full: message store holds ${this.messageCount} of ${this.maxMessages} messages (maxMessages)`;
    return undefined;
  }

  totals(): StoreTotals {
    return { messages: this.messageCount, bytes: this.byteCount, maxMessages: this.maxMessages, maxBytes: this.maxBytes };
  }

  /**
   * Deletes expired entries, a bounded slice of every queue per call (the background timer calls
   * this). Resolves when the deletions are committed, with how many were found.
   */
  sweepExpired(): Promise<number> {
    if (this.closed) return Promise.resolve(0);
    this.sweepOrphans();
    const now = this.now();
    let found = 0;
    for (const ep of this.endpointsByName.values()) {
      for (const q of ep.queues.values()) {
        if (q.length === 0) {
          q.sweepCursor = 0;
          q.sweepPassMin = Infinity;
          q.nextExpiry = Infinity;
          continue;
        }
        if (q.nextExpiry > now && q.sweepCursor === 0) continue;
        const rows = this.stmt.sweepScan.all(ep.id, q.priority, q.sweepCursor, this.sweepChunk) as Array<[number, number]>;
        for (const [seq, expires] of rows) {
          if (expires === 0 || ep.pendingDelete.has(seq)) continue;
          if (expires <= now) {
            this.queueDelete(ep, q.priority, seq, 'expired');
            found++;
          } else if (expires < q.sweepPassMin) q.sweepPassMin = expires;
        }
        if (rows.length < this.sweepChunk) {
          // A full pass is done: nothing expires before the earliest expiry it saw (appends lower it).
          q.nextExpiry = q.sweepPassMin;
          q.sweepPassMin = Infinity;
          q.sweepCursor = 0;
        } else {
          q.sweepCursor = rows[rows.length - 1][0];
        }
      }
    }
    if (found === 0 && this.deletes.length === 0) return Promise.resolve(0);
    return new Promise<number>((resolve, reject) => {
      this.deleteWaiters.push({ resolve: () => resolve(found), reject });
      this.scheduleFlush(false);
    });
  }

  /** Commits what is pending and closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.flush();
    this.closed = true;
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.flushImmediate) clearImmediate(this.flushImmediate);
    await this.walSync?.close();
    this.db.close();
  }

  // ---- internals ----

  /** Opens the WAL for background fdatasync, after making sure it and its directory entry are on disk. */
  private openWal(): void {
    try {
      this.walSync = new WalSync(this.path, 'message store', () =>
        this.db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)").run(String(Date.now())));
    } catch (err) {
      this.db.close();
      throw new UserError(`cannot prepare message store ${this.path}: ${(err as Error).message}`);
    }
  }

  private full(err: StoreFullError): StoreFullError {
    const t = this.now();
    if (t - this.lastFullLog > 5000) {
      this.lastFullLog = t;
      log.warn({ limit: err.limit, max: err.max, current: err.current }, err.message);
    }
    return err;
  }

  private newEndpointState(id: number, name: string, checkpointed: number, expired: number): EndpointState {
    return {
      id, name, checkpointed, expired,
      pendingDelete: new Set(), queues: new Map(), listeners: new Set(),
      pendingAppends: 0, dirtyCheckpointed: 0, dirtyExpired: 0,
    };
  }

  private endpointState(name: string): EndpointState {
    let ep = this.endpointsByName.get(name);
    if (!ep) {
      // Rare (once per endpoint name); its own tiny commit keeps ids stable before any append uses them.
      const id = Number(this.stmt.insertEndpoint.run(name).lastInsertRowid);
      ep = this.newEndpointState(id, name, 0, 0);
      this.endpointsByName.set(name, ep);
    }
    return ep;
  }

  private queueState(ep: EndpointState, priority: number): QueueState {
    let q = ep.queues.get(priority);
    if (!q) {
      q = {
        epId: ep.id, endpoint: ep.name, priority, length: 0,
        cacheFrom: this.committedSeq, cache: [], head: 0, cacheBytes: 0,
        sweepCursor: 0, sweepPassMin: Infinity, nextExpiry: 0,
      };
      ep.queues.set(priority, q);
    }
    return q;
  }

  private toEntry(endpoint: string, priority: number, row: MessageRow, expiresAt: number): QueuedMessage {
    return { seq: row.seq, endpoint, priority, enqueuedAt: row.enq, expiresAt, message: this.messageOfRow(row) };
  }

  private messageOfRow(row: MessageRow): StoredMessage {
    if (row.meta.charCodeAt(0) !== 0x7b) return reviveSenderMessage(row.meta, row.body);
    const meta = JSON.parse(row.meta) as { s: StoredMessage['systemProperties']; a: StoredMessage['appProperties']; src: string; snd: string };
    return { body: row.body, systemProperties: meta.s, appProperties: meta.a, source: meta.src, sender: meta.snd };
  }

  private readCache(ep: EndpointState, q: QueueState, afterSeq: number, upTo: number, limit: number): ReadResult {
    let items = q.cache;
    // The reader has moved past everything up to afterSeq: drop it from memory.
    let lo = q.head;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (items[mid].seq <= afterSeq) lo = mid + 1;
      else hi = mid;
    }
    if (lo > q.head) {
      for (let k = q.head; k < lo; k++) q.cacheBytes -= items[k].message.body.length;
      q.head = lo;
      q.cacheFrom = afterSeq;
      this.compactCache(q);
      items = q.cache;
    }
    const now = this.now();
    const entries: QueuedMessage[] = [];
    let cursor = afterSeq;
    let i = q.head;
    for (; i < items.length && entries.length < limit; i++) {
      const e = items[i]!;
      if (e.seq > upTo) break;
      cursor = e.seq;
      if (e.gone || ep.pendingDelete.has(e.seq)) continue;
      if (e.expiresAt <= now) {
        e.gone = true;
        this.queueDelete(ep, q.priority, e.seq, 'expired');
        continue;
      }
      entries.push(e);
    }
    const exhausted = i >= items.length || items[i].seq > upTo;
    if (this.deletes.length > 0) this.scheduleFlush(false);
    return { entries, cursor, exhausted };
  }

  private compactCache(q: QueueState): void {
    if (q.head > 1024 && q.head * 2 > q.cache.length) {
      q.cache = q.cache.slice(q.head);
      q.head = 0;
    }
  }

  private queueDelete(ep: EndpointState, priority: number, seq: number, reason: PendingDelete['reason'], aside?: PendingDelete['aside']): void {
    if (ep.pendingDelete.has(seq)) return;
    ep.pendingDelete.add(seq);
    this.deletes.push(aside ? { ep, priority, seq, reason, aside } : { ep, priority, seq, reason });
  }

  /**
   * A stored entry that cannot be read back (only a bug of ours could have written it) must
   * neither stop its endpoint's queue nor vanish: it leaves the queue and is kept, with the
   * reason, in the set_aside table, in one commit.
   */
  private setAside(ep: EndpointState, priority: number, row: MessageRow, err: unknown): void {
    const why = err instanceof Error ? err.message : String(err);
    log.error({ endpoint: ep.name, priority, seq: row.seq, why }, `a stored message cannot be read back; it is set aside (kept in the table set_aside of ${this.path}) and ${ep.name} goes on with the next`);
    this.queueDelete(ep, priority, row.seq, 'unreadable', { row, why });
    this.scheduleFlush(false);
  }

  private scheduleFlush(now: boolean): void {
    if (this.closed) return;
    if (now || this.commitWindowMs <= 0) {
      if (this.flushTimer) {
        clearTimeout(this.flushTimer);
        this.flushTimer = undefined;
      }
      if (!this.flushImmediate) this.flushImmediate = setImmediate(() => this.flush());
      return;
    }
    if (!this.flushTimer && !this.flushImmediate) this.flushTimer = setTimeout(() => this.flush(), this.commitWindowMs);
  }

  private flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.flushImmediate) clearImmediate(this.flushImmediate);
    this.flushTimer = undefined;
    this.flushImmediate = undefined;
    if (this.closed) return;
    const appends = this.appends;
    let deletes = this.deletes;
    let waiters = this.deleteWaiters;
    if (appends.length === 0 && deletes.length === 0 && waiters.length === 0) return;
    this.appends = [];
    this.deletes = [];
    this.deleteWaiters = [];
    // On a full disk a deletion's log pages must fit in what is left: a few at a time, the log
    // emptied before each, the waiters answered with the last part.
    const split = deletes.length > FULL_DISK_DELETE_CHUNK && this.headroom?.tight(this.now()) === true;
    if (split) {
      this.deletes = deletes.slice(FULL_DISK_DELETE_CHUNK);
      this.deleteWaiters = waiters;
      deletes = deletes.slice(0, FULL_DISK_DELETE_CHUNK);
      waiters = [];
      this.scheduleFlush(true);
    }
    const origins = this.pendingOrigins;
    this.pendingOrigins = [];
    let moved: OriginsMoved | undefined;
    let marks: Map<string, number> | undefined;
    // Taken now, so that a failed commit fails them too (a later commit must not claim them).
    const resendWritten: ResendWritten | undefined = this.resends.take();
    for (const a of appends) for (const t of a.targets) t.ep.pendingAppends--;

    const touched = new Set<EndpointState>();
    let freedBytes = 0;
    let freedMessages = 0;
    const deleted: PendingDelete[] = [];
    const s = this.stmt;
    if (deletes.length > 0) this.headroom?.beforeFreeing();
    try {
      this.db.exec('BEGIN');
      try {
        this.insertAppends(appends);
        const at = this.now();
        for (const d of deletes) {
          if (d.aside) s.insertAside.run(d.ep.name, d.priority, d.seq, d.aside.row.enq, d.aside.row.meta, d.aside.row.body, d.aside.why, at);
        }
        const gone = (d: PendingDelete) => {
          deleted.push(d);
          touched.add(d.ep);
          if (d.reason === 'checkpoint') d.ep.dirtyCheckpointed++;
          else if (d.reason === 'expired') d.ep.dirtyExpired++;
        };
        for (let i = 0; i < deletes.length; ) {
          // A checkpointed batch is a run of one queue's consecutive entries: one range
          // statement deletes it, once a count shows the range holds nothing else.
          const d = deletes[i]!;
          let j = i + 1;
          while (j < deletes.length && deletes[j]!.ep === d.ep && deletes[j]!.priority === d.priority && deletes[j]!.reason === d.reason && deletes[j]!.seq > deletes[j - 1]!.seq) j++;
          const last = deletes[j - 1]!;
          if (j - i >= MIN_RANGE_DELETE && s.countRange.get(d.ep.id, d.priority, d.seq, last.seq) === j - i) {
            s.deleteRange.run(d.ep.id, d.priority, d.seq, last.seq);
            for (let k = i; k < j; k++) gone(deletes[k]!);
          } else {
            for (let k = i; k < j; k++) {
              const x = deletes[k]!;
              if (s.deleteQueue.run(x.ep.id, x.priority, x.seq).changes > 0) gone(x);
            }
          }
          i = j;
        }
        if (deleted.length > 0) {
          const top = appends.length > 0 ? appends[appends.length - 1].seq : this.committedSeq;
          const freed = this.collectPayloads(top);
          freedBytes = freed.bytes;
          freedMessages = freed.n;
        }
        for (const ep of touched) s.updateEndpoint.run(ep.dirtyCheckpointed, ep.dirtyExpired, ep.id);
        if (appends.length > 0) s.saveLastSeq.run(String(appends[appends.length - 1].seq));
        if (origins.length > 0) moved = this.origins.writeInTransaction(origins);
        if (this.passing.hasPending) marks = this.passing.writeInTransaction();
        if (resendWritten) this.resends.writeInTransaction(resendWritten);
        this.db.exec('COMMIT');
      } catch (err) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw err;
      }
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      log.error({ err: error.message, appends: appends.length, deletes: deletes.length }, 'message store commit failed');
      const diskFull = this.headroom?.failed(error) ? new StoreFullError('disk', 0, 0, this.headroom.refusal() ?? `store full: ${error.message}`) : undefined;
      for (const o of origins) this.origins.forget(o);
      if (marks) this.passing.failed(marks);
      if (resendWritten) this.resends.failed(resendWritten);
      for (const ep of touched) {
        ep.dirtyCheckpointed = 0;
        ep.dirtyExpired = 0;
      }
      for (const d of deletes) d.ep.pendingDelete.delete(d.seq);
      if (split) {
        // The rest of the split deletion fails with this part: its waiters hear it and ask again.
        for (const d of this.deletes) d.ep.pendingDelete.delete(d.seq);
        this.deletes = [];
        waiters.push(...this.deleteWaiters);
        this.deleteWaiters = [];
      }
      for (const a of appends) {
        this.pendingBytes -= a.size;
        this.pendingMessages -= 1;
        a.reject(diskFull ?? new Error(`message not stored: ${error.message}`));
      }
      for (const w of waiters) w.reject(new Error(`checkpoint not stored: ${error.message}`));
      return;
    }

    // Committed: bring the in-memory view along, then acknowledge.
    if (moved) this.origins.committedNow(moved);
    for (const o of origins) this.origins.forget(o);
    if (resendWritten) this.resends.committed(resendWritten);
    for (const ep of touched) {
      ep.checkpointed += ep.dirtyCheckpointed;
      ep.expired += ep.dirtyExpired;
      ep.dirtyCheckpointed = 0;
      ep.dirtyExpired = 0;
    }
    for (const d of deletes) d.ep.pendingDelete.delete(d.seq);
    for (const d of deleted) {
      const q = d.ep.queues.get(d.priority);
      if (!q) continue;
      q.length--;
      this.markGone(q, d.seq);
    }
    this.byteCount -= freedBytes;
    this.messageCount -= freedMessages;
    this.gcFloor = Math.max(this.gcFloor, this.gcFloorNext);

    const notify = new Set<EndpointState>();
    for (const a of appends) {
      this.pendingBytes -= a.size;
      this.pendingMessages -= 1;
      this.byteCount += a.size;
      this.messageCount += 1;
      for (const t of a.targets) {
        const q = this.queueState(t.ep, t.priority);
        q.length++;
        if (t.expiresAt < q.nextExpiry) q.nextExpiry = t.expiresAt;
        if (t.expiresAt < q.sweepPassMin) q.sweepPassMin = t.expiresAt;
        this.cachePush(q, new CacheItem(a.seq, t.ep.name, t.priority, a.enqueuedAt, t.expiresAt, a.message));
        notify.add(t.ep);
      }
      // Written: the append only waits for its sync now, and need not keep its text alive meanwhile.
      a.meta = '';
    }
    if (appends.length > 0) this.committedSeq = appends[appends.length - 1].seq;
    // Marks count once on disk: answered first, before the waiters that asked for them.
    if (marks) {
      const written = marks;
      waiters.unshift({ resolve: () => this.passing.committed(written), reject: ignore });
    }
    if (this.walSync) {
      this.walSync.addAll(appends);
      this.walSync.addAll(waiters);
    } else {
      for (const a of appends) a.resolve();
      for (const w of waiters) w.resolve();
    }
    for (const ep of notify) {
      for (const l of ep.listeners) {
        try {
          l();
        } catch (err) {
          log.error({ endpoint: ep.name, err: (err as Error).message }, 'append listener failed');
        }
      }
    }
  }

  /** The messages and their queue entries, many rows per statement. */
  private insertAppends(appends: PendingAppend[]): void {
    const s = this.stmt;
    let i = 0;
    const args: unknown[] = [];
    for (; i + INSERT_CHUNK <= appends.length; i += INSERT_CHUNK) {
      args.length = 0;
      for (let k = i; k < i + INSERT_CHUNK; k++) {
        const a = appends[k]!;
        args.push(a.seq, a.size, a.enqueuedAt, a.meta, a.message.body);
      }
      s.insertMessages.run(args);
    }
    for (; i < appends.length; i++) {
      const a = appends[i]!;
      s.insertMessage.run(a.seq, a.size, a.enqueuedAt, a.meta, a.message.body);
    }
    const rows: unknown[] = [];
    let n = 0;
    for (const a of appends) {
      for (const t of a.targets) {
        rows.push(t.ep.id, t.priority, a.seq, t.expiresAt === Infinity ? 0 : t.expiresAt);
        if (++n === INSERT_CHUNK) {
          s.insertQueues.run(rows);
          rows.length = 0;
          n = 0;
        }
      }
    }
    for (let k = 0; k < rows.length; k += 4) s.insertQueue.run(rows[k], rows[k + 1], rows[k + 2], rows[k + 3]);
  }

  private cachePush(q: QueueState, entry: CacheItem): void {
    if (this.cacheCap <= 0) {
      q.cacheFrom = entry.seq;
      return;
    }
    q.cache.push(entry);
    q.cacheBytes += entry.message.body.length;
    if (q.cache.length - q.head > this.cacheCap || q.cacheBytes > this.cacheByteCap) {
      // Nobody is keeping up with this queue: keep the newest half, the rest stays on disk.
      let drop = q.head;
      while (drop < q.cache.length && (q.cache.length - drop > this.cacheCap / 2 || q.cacheBytes > this.cacheByteCap / 2)) {
        q.cacheBytes -= q.cache[drop].message.body.length;
        drop++;
      }
      if (drop > q.head) q.cacheFrom = q.cache[drop - 1].seq;
      q.cache = q.cache.slice(drop);
      q.head = 0;
    }
  }

  /**
   * Deletes the payloads no queue refers to any more: everything below the oldest entry still
   * queued anywhere, as one range delete inside the commit that removed the entries. Payloads
   * above that point whose entries are gone wait for it to move, or for `sweepOrphans`.
   */
  private collectPayloads(top: number): { n: number; bytes: number } {
    let floor = top + 1;
    for (const ep of this.endpointsByName.values()) {
      for (const q of ep.queues.values()) {
        const head = this.stmt.queueHead.get(ep.id, q.priority) as number | undefined;
        if (head !== undefined && head < floor) floor = head;
      }
    }
    if (floor <= this.gcFloor) return { n: 0, bytes: 0 };
    const t = this.stmt.gcTotals.get(floor) as { n: number; bytes: number };
    if (t.n > 0) this.stmt.gcDelete.run(floor);
    this.gcFloorNext = floor;
    return t;
  }

  /**
   * When one endpoint lags (a module that stays away), the range collection stops at its oldest
   * entry and payloads other endpoints are done with pile up behind it. Once that is a sizeable
   * share of the store, find them a slice at a time and delete them one by one.
   */
  private sweepOrphans(): void {
    let queued = 0;
    const epIds = new Set<number>();
    const prios = new Set<number>();
    for (const ep of this.endpointsByName.values()) {
      for (const q of ep.queues.values()) {
        queued += q.length;
        epIds.add(ep.id);
        prios.add(q.priority);
      }
    }
    if (this.messageCount - queued < Math.max(1000, this.messageCount / 10)) return;
    const from = Math.max(this.orphanCursor, this.gcFloor - 1);
    const slice = this.db.prepare('SELECT seq FROM messages WHERE seq > ? ORDER BY seq LIMIT ?').pluck().all(from, this.sweepChunk) as number[];
    if (slice.length === 0) {
      this.orphanCursor = 0;
      return;
    }
    const to = slice[slice.length - 1];
    this.orphanCursor = slice.length < this.sweepChunk ? 0 : to;
    // Ids are integers from our own table, so they can be written into the statement.
    const referenced = epIds.size === 0 ? '0' :
      `EXISTS (SELECT 1 FROM queue q WHERE q.ep IN (${[...epIds].join(',')}) AND q.prio IN (${[...prios].join(',')}) AND q.seq = m.seq)`;
    const orphans = this.db.prepare(`SELECT seq FROM messages m WHERE seq > ? AND seq <= ? AND NOT ${referenced}`).pluck().all(from, to) as number[];
    if (orphans.length === 0) return;
    let bytes = 0;
    try {
      this.db.transaction(() => {
        for (const seq of orphans) bytes += (this.stmt.deleteMessage.get(seq) as number | undefined) ?? 0;
      })();
    } catch (err) {
      log.error({ err: (err as Error).message }, 'deleting unreferenced payloads failed');
      return;
    }
    this.byteCount -= bytes;
    this.messageCount -= orphans.length;
    log.debug({ deleted: orphans.length, bytes }, 'deleted payloads left behind a lagging endpoint');
  }

  private markGone(q: QueueState, seq: number): void {
    const items = q.cache;
    let lo = q.head;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (items[mid].seq < seq) lo = mid + 1;
      else hi = mid;
    }
    if (lo < items.length && items[lo].seq === seq) items[lo].gone = true;
  }
}
