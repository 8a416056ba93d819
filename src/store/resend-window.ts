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
 * here, in the same commit as the message, on disk, with the connection it came on and a
 * digest of its content; a message of the same sender with the same id and content that comes
 * on ANOTHER connection within the window is that resend, and is answered without being stored
 * again (once the original is on disk). After a restart every connection is another one, and the window is read back from
 * disk, which is what makes the killed layer itself recognise what it stored before it died.
 *
 * Why narrow: IoT Hub does not de-duplicate by message id, and devices may reuse ids, so only
 * what can be a resend in doubt counts: the same sender, id, body and properties, on a later
 * connection (a resend after a lost acknowledgement always comes on one; a repeat on the same
 * connection is always a new message), within `windowMs` of the first copy (as long as a
 * device keeps trying one send: the official SDKs retry for up to 240 s; default 300 s). Messages without an id are never compared; nor are
 * a child gateway's batches, which name their origin and are de-duplicated by it. The window
 * holds at most `maxEntries` ids (oldest go first), in memory and on disk: past that a resend
 * may be stored twice, never is a message dropped that was not stored.
 */

/** A message's place in the window: who sent it, its id, the connection it came on, and its content. */
export interface ResendKey {
  sender: string;
  messageId: string;
  /** The connection (or request) it came on; unique across runs of the process. */
  via: string;
  /** A digest of its body and properties: a resend is the same message, a reused id mostly is not. */
  print: string;
}

export interface ResendWindowSettings {
  windowMs: number;
  maxEntries: number;
  now: () => number;
}

interface Seen {
  via: string;
  print: string;
  at: number;
  /** The commit holding it, until it is over. */
  storing?: Promise<unknown>;
}

/** What one commit writes: applied once it is over. */
export interface ResendWritten {
  items: Array<{ key: ResendKey; k: string; seen: Seen }>;
  /** Its row, once written. */
  row?: { rowid: number; at: number; n: number };
}

/** Disk rows older than the window are deleted at most this often (in a commit that writes). */
const PRUNE_EVERY_MS = 1000;

const resendKey = (sender: string, messageId: string) => `${sender}\n${messageId}`;

export class ResendWindow {
  private readonly seen = new Map<string, Seen>();
  /**
   * What was added, oldest first (from `head` on), for eviction: a Map's own iterator would walk
   * past every entry deleted at its front since its last rehash, on every add. An item whose key
   * was added again later is stale and skipped.
   */
  private order: Array<{ k: string; seen: Seen }> = [];
  private head = 0;
  private pending: ResendWritten['items'] = [];
  /**
   * The rows on disk, oldest first: one a commit, holding that commit's keys (one append at the
   * end of the table per commit costs a store next to nothing; a row a message halved its rate).
   */
  private readonly rows: Array<{ rowid: number; at: number; n: number }> = [];
  /** Keys in `rows`. */
  private rowKeys = 0;
  private lastPrune = 0;
  private readonly insert: Database.Statement;
  private readonly prune: Database.Statement;

  constructor(
    db: Database.Database,
    private readonly o: ResendWindowSettings,
  ) {
    db.exec('CREATE TABLE IF NOT EXISTS resend_window (at INTEGER NOT NULL, keys TEXT NOT NULL)');
    this.insert = db.prepare('INSERT INTO resend_window (at, keys) VALUES (?, ?)');
    this.prune = db.prepare('DELETE FROM resend_window WHERE rowid <= ?');
    if (!this.enabled) return;
    const since = this.o.now() - this.o.windowMs;
    for (const row of db
      .prepare('SELECT rowid, at, keys FROM resend_window WHERE at >= ? ORDER BY rowid')
      .all(since) as Array<{ rowid: number; at: number; keys: string }>) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(row.keys);
      } catch {
        parsed = undefined;
      }
      const keys: unknown[] = Array.isArray(parsed) ? parsed : [];
      this.rows.push({ rowid: row.rowid, at: row.at, n: keys.length });
      this.rowKeys += keys.length;
      for (const x of keys) {
        if (!Array.isArray(x) || x.length !== 4 || !x.every((v) => typeof v === 'string')) continue;
        const k = resendKey(x[0], x[1]);
        const seen: Seen = { via: x[2], print: x[3], at: row.at };
        this.seen.set(k, seen);
        this.order.push({ k, seen });
      }
    }
    this.evict(this.o.now());
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
    const s = this.seen.get(resendKey(key.sender, key.messageId));
    if (!s || s.via === key.via || s.print !== key.print || s.at < this.o.now() - this.o.windowMs) return undefined;
    return s.storing ?? 'stored';
  }

  /** A message with this key is being stored by the next commit (`storing` answers it). */
  add(key: ResendKey, storing: Promise<unknown>): void {
    if (!this.enabled) return;
    const k = resendKey(key.sender, key.messageId);
    const now = this.o.now();
    const seen: Seen = { via: key.via, print: key.print, at: now, storing };
    this.seen.set(k, seen);
    this.order.push({ k, seen });
    this.pending.push({ key, k, seen });
    this.evict(now);
  }

  private evict(now: number): void {
    const oldest = now - this.o.windowMs;
    const order = this.order;
    while (this.head < order.length) {
      const first = order[this.head]!;
      const current = this.seen.get(first.k) === first.seen;
      // Stale items go whatever their age, so the list stays within a few times the entries.
      if (
        current &&
        first.seen.at >= oldest &&
        this.seen.size <= this.o.maxEntries &&
        order.length - this.head <= 2 * this.o.maxEntries
      )
        break;
      if (current) this.seen.delete(first.k);
      this.head++;
    }
    if (this.head > 4096 && this.head * 2 > order.length) {
      this.order = order.slice(this.head);
      this.head = 0;
    }
  }

  /** At the start of a commit: the keys of the messages it stores (all added since the last). */
  take(): ResendWritten | undefined {
    if (this.pending.length === 0) return undefined;
    const items = this.pending;
    this.pending = [];
    return { items };
  }

  /** Inside that commit: writes the keys, and drops rows past the window. */
  writeInTransaction(written: ResendWritten): void {
    const now = this.o.now();
    const info = this.insert.run(
      now,
      JSON.stringify(written.items.map(({ key }) => [key.sender, key.messageId, key.via, key.print])),
    );
    written.row = { rowid: Number(info.lastInsertRowid), at: now, n: written.items.length };
    this.rows.push(written.row);
    this.rowKeys += written.row.n;
    if (now - this.lastPrune >= PRUNE_EVERY_MS) {
      this.lastPrune = now;
      let upTo = 0;
      // Past the window, or past the ids kept in memory (the disk would otherwise grow with the rate).
      while (
        this.rows.length > 1 &&
        (this.rows[0]!.at < now - this.o.windowMs || this.rowKeys - this.rows[0]!.n >= this.o.maxEntries)
      ) {
        const gone = this.rows.shift()!;
        this.rowKeys -= gone.n;
        upTo = gone.rowid;
      }
      if (upTo > 0) this.prune.run(upTo);
    }
  }

  /** The commit is over: resends now find the original stored. */
  committed(written: ResendWritten): void {
    for (const w of written.items) w.seen.storing = undefined;
  }

  /** The commit failed: nothing of it is stored, so a resend is a new message. */
  failed(written: ResendWritten): void {
    for (const { k, seen } of written.items) if (this.seen.get(k) === seen) this.seen.delete(k);
    // Its row went with the rollback (rows pruned from the list meanwhile go with the next prune).
    if (written.row && this.rows[this.rows.length - 1] === written.row) {
      this.rows.pop();
      this.rowKeys -= written.row.n;
    }
  }
}
