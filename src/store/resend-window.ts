import type Database from 'better-sqlite3';

/**
 * A device's resend of a message this gateway stored but whose acknowledgement it may not have
 * received, recognised by (sender, message id) and stored once.
 *
 * Where the second copy comes from: a gateway stores a device's message, and the device gets
 * its acknowledgement (MQTT PUBACK, AMQP disposition, HTTP 204) only after that commit is on
 * disk. If the gateway is killed, or the connection drops, between the two, the device never
 * hears that the message was taken: the official SDKs then send it again, the same message
 * with the same message id, on their next connection. Without this window the gateway stores it
 * a second time under a new number and both copies go up (the origin watermarks that make
 * gateway-to-gateway batches exactly once do not help here: a device's message has no origin
 * until this store numbers it). So each stored message that has a message id is remembered
 * here, in the same commit as the message, on disk, with the connection it came on; a
 * message of the same sender with the same id that comes on ANOTHER connection within the
 * window is that resend, and is answered without being stored again (once the original is on
 * disk). After a restart every connection is another one, and the window is read back from
 * disk, which is what makes the killed layer itself recognise what it stored before it died.
 *
 * Why narrow: IoT Hub does not de-duplicate by message id, and devices may reuse ids, so only
 * what can be a resend in doubt counts: the same sender and id, on a later connection (a resend
 * after a lost acknowledgement always comes on one; a repeat on the same connection is
 * always a new message), within `windowMs` of the first copy (the time a device takes to
 * reconnect and send again; default 60 s). Messages without an id are never compared; nor are
 * a child gateway's batches, which name their origin and are de-duplicated by it. The window
 * holds at most `maxEntries` ids (oldest go first): past that a resend may be stored twice,
 * never is a message dropped that was not stored.
 */

/** A message's place in the window: who sent it, its id, and the connection it came on. */
export interface ResendKey {
  sender: string;
  messageId: string;
  /** The connection (or request) it came on; unique across runs of the process. */
  via: string;
}

export interface ResendWindowSettings {
  windowMs: number;
  maxEntries: number;
  now: () => number;
}

interface Seen {
  via: string;
  at: number;
  /** The commit holding it, until it is over. */
  storing?: Promise<unknown>;
}

/** What a commit wrote: applied once it is over. */
export type ResendWritten = Array<{ k: string; seen: Seen }>;

/** Disk rows older than the window are deleted at most this often (in a commit that writes). */
const PRUNE_EVERY_MS = 1000;

const keyOf = (sender: string, messageId: string) => `${sender}\n${messageId}`;

export class ResendWindow {
  /** In insertion order, which is time order: the oldest are at the front. */
  private readonly seen = new Map<string, Seen>();
  private pending: ResendWritten = [];
  private lastPrune = 0;
  private readonly upsert: Database.Statement;
  private readonly prune: Database.Statement;

  constructor(db: Database.Database, private readonly o: ResendWindowSettings) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS resend_window (sender TEXT NOT NULL, mid TEXT NOT NULL, via TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (sender, mid)) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS resend_window_at ON resend_window (at);
    `);
    this.upsert = db.prepare('INSERT INTO resend_window (sender, mid, via, at) VALUES (?, ?, ?, ?) ON CONFLICT (sender, mid) DO UPDATE SET via = excluded.via, at = excluded.at');
    this.prune = db.prepare('DELETE FROM resend_window WHERE at < ?');
    if (!this.enabled) return;
    const since = this.o.now() - this.o.windowMs;
    const rows = db.prepare('SELECT sender, mid, via, at FROM resend_window WHERE at >= ? ORDER BY at DESC LIMIT ?').all(since, this.o.maxEntries) as Array<{ sender: string; mid: string; via: string; at: number }>;
    for (let i = rows.length - 1; i >= 0; i--) this.seen.set(keyOf(rows[i]!.sender, rows[i]!.mid), { via: rows[i]!.via, at: rows[i]!.at });
  }

  get enabled(): boolean {
    return this.o.windowMs > 0 && this.o.maxEntries > 0;
  }

  /**
   * When `key` is a resend of a message stored here (see above): 'stored', or the commit of the
   * original still under way. Undefined: a new message.
   */
  originalOf(key: ResendKey): 'stored' | Promise<unknown> | undefined {
    if (!this.enabled) return undefined;
    const s = this.seen.get(keyOf(key.sender, key.messageId));
    if (!s || s.via === key.via || s.at < this.o.now() - this.o.windowMs) return undefined;
    return s.storing ?? 'stored';
  }

  /** A message with this key is being stored by the next commit (`storing` answers it). */
  add(key: ResendKey, storing: Promise<unknown>): void {
    if (!this.enabled) return;
    const k = keyOf(key.sender, key.messageId);
    const now = this.o.now();
    const seen: Seen = { via: key.via, at: now, storing };
    // Moved to the end: the map stays in time order.
    this.seen.delete(k);
    this.seen.set(k, seen);
    this.pending.push({ k, seen });
    const oldest = now - this.o.windowMs;
    for (const [old, s] of this.seen) {
      if (s.at >= oldest && this.seen.size <= this.o.maxEntries) break;
      this.seen.delete(old);
    }
  }

  get hasPending(): boolean {
    return this.pending.length > 0;
  }

  /** Inside the commit that stores the messages: writes their keys, and drops rows past the window. */
  writeInTransaction(): ResendWritten {
    const written = this.pending;
    this.pending = [];
    for (const { k, seen } of written) {
      const nl = k.indexOf('\n');
      this.upsert.run(k.slice(0, nl), k.slice(nl + 1), seen.via, seen.at);
    }
    const now = this.o.now();
    if (written.length > 0 && now - this.lastPrune >= PRUNE_EVERY_MS) {
      this.lastPrune = now;
      this.prune.run(now - this.o.windowMs);
    }
    return written;
  }

  /** The commit is over: resends now find the original stored. */
  committed(written: ResendWritten): void {
    for (const w of written) w.seen.storing = undefined;
  }

  /** The commit failed: nothing of it is stored, so a resend is a new message. */
  failed(written: ResendWritten): void {
    for (const { k, seen } of written) if (this.seen.get(k) === seen) this.seen.delete(k);
  }
}
