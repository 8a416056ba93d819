import { randomUUID } from 'node:crypto';
import type Database from 'better-sqlite3';
import { EngineError } from '../model/errors.ts';
import { decodeMessageMeta, encodeMessageMeta } from '../model/message-codec.ts';
import type { C2DAck, C2DDelivery, C2DFeedbackRecord, C2DOutcome } from '../model/c2d.ts';
import type { Message } from '../model/message.ts';
import { childLog } from '../util/log.ts';

const log = childLog('c2d');

export interface C2DQueueOptions {
  /** Messages waiting per device (default 50, as IoT Hub). */
  maxDepth?: number;
  /** TTL of a message that carries no expiry (default 1 hour). */
  defaultTtlMs?: number;
  /** Deliveries before a message is dead-lettered (default 10). */
  maxDeliveryCount?: number;
}

interface Row {
  id: number;
  device_id: string;
  module_id: string;
  message_id: string;
  meta: string;
  body: Buffer;
  enqueued_ms: number;
  expiry_ms: number;
  ack: C2DAck;
  delivery_count: number;
  lock_token: string | null;
  locked_until: number;
}

/**
 * Durable per-device cloud-to-device queues (and, with a module id, module input queues) in the
 * engine database. Messages are delivered under a lock and leave the queue only when completed,
 * rejected, expired or dead-lettered; the outcomes the sender asked for (`iothub-ack`) are
 * recorded as feedback records.
 */
export class C2DQueue {
  readonly maxDepth: number;
  readonly defaultTtlMs: number;
  readonly maxDeliveryCount: number;
  private readonly s: Record<string, Database.Statement>;

  constructor(
    private readonly db: Database.Database,
    opts: C2DQueueOptions = {},
  ) {
    this.maxDepth = opts.maxDepth ?? 50;
    this.defaultTtlMs = opts.defaultTtlMs ?? 60 * 60 * 1000;
    this.maxDeliveryCount = opts.maxDeliveryCount ?? 10;
    db.exec(`
      CREATE TABLE IF NOT EXISTS c2d_messages (
        id             INTEGER PRIMARY KEY,
        device_id      TEXT NOT NULL,
        module_id      TEXT NOT NULL DEFAULT '',
        message_id     TEXT NOT NULL,
        meta           TEXT NOT NULL,
        body           BLOB NOT NULL,
        enqueued_ms    INTEGER NOT NULL,
        expiry_ms      INTEGER NOT NULL,
        ack            TEXT NOT NULL DEFAULT 'none',
        delivery_count INTEGER NOT NULL DEFAULT 0,
        lock_token     TEXT,
        locked_until   INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX IF NOT EXISTS c2d_by_identity ON c2d_messages (device_id, module_id, id);
      CREATE UNIQUE INDEX IF NOT EXISTS c2d_by_lock ON c2d_messages (lock_token) WHERE lock_token IS NOT NULL;
      CREATE TABLE IF NOT EXISTS c2d_feedback (
        id                  INTEGER PRIMARY KEY,
        device_id           TEXT NOT NULL,
        original_message_id TEXT NOT NULL,
        status              TEXT NOT NULL,
        description         TEXT NOT NULL,
        enqueued_ms         INTEGER NOT NULL,
        generation_id       TEXT
      );
    `);
    this.s = {
      count: db.prepare('SELECT COUNT(*) AS n FROM c2d_messages WHERE device_id = ? AND module_id = ?'),
      insert: db.prepare(
        'INSERT INTO c2d_messages (device_id, module_id, message_id, meta, body, enqueued_ms, expiry_ms, ack) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      expired: db.prepare('SELECT * FROM c2d_messages WHERE device_id = ? AND module_id = ? AND expiry_ms <= ?'),
      allExpired: db.prepare('SELECT * FROM c2d_messages WHERE expiry_ms <= ? LIMIT 1000'),
      next: db.prepare(
        'SELECT * FROM c2d_messages WHERE device_id = ? AND module_id = ? AND locked_until <= ? AND expiry_ms > ? ORDER BY id LIMIT 1',
      ),
      lock: db.prepare(
        'UPDATE c2d_messages SET lock_token = ?, locked_until = ?, delivery_count = delivery_count + 1 WHERE id = ?',
      ),
      byLock: db.prepare('SELECT * FROM c2d_messages WHERE lock_token = ?'),
      remove: db.prepare('DELETE FROM c2d_messages WHERE id = ?'),
      unlock: db.prepare('UPDATE c2d_messages SET lock_token = NULL, locked_until = 0 WHERE id = ?'),
      purge: db.prepare('DELETE FROM c2d_messages WHERE device_id = ?'),
      feedback: db.prepare(
        'INSERT INTO c2d_feedback (device_id, original_message_id, status, description, enqueued_ms, generation_id) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      pendingFeedback: db.prepare('SELECT * FROM c2d_feedback ORDER BY id LIMIT ?'),
      deleteFeedback: db.prepare('DELETE FROM c2d_feedback WHERE id = ?'),
    };
  }

  /** Number of messages waiting (locked or not) for a device or module. */
  depth(deviceId: string, moduleId = ''): number {
    return (this.s.count.get(deviceId, moduleId) as { n: number }).n;
  }

  /** Queues a message; throws EngineError queue-full at the maximum depth. */
  enqueue(
    deviceId: string,
    message: Message,
    opts: { ack?: C2DAck; ttlMs?: number; moduleId?: string; now?: number } = {},
  ): { messageId: string; id: number } {
    const now = opts.now ?? Date.now();
    const moduleId = opts.moduleId ?? '';
    return this.db.transaction(() => {
      this.expireFor(deviceId, moduleId, now);
      if (this.depth(deviceId, moduleId) >= this.maxDepth) {
        throw new EngineError(
          'queue-full',
          `the queue of ${describeTarget(deviceId, moduleId)} already holds ${this.maxDepth} messages`,
        );
      }
      const messageId = message.messageId ?? randomUUID();
      const stored: Message = { ...message, messageId };
      const expiry = message.expiry ?? now + (opts.ttlMs ?? this.defaultTtlMs);
      const info = this.s.insert.run(
        deviceId,
        moduleId,
        messageId,
        encodeMessageMeta(stored),
        message.body,
        now,
        expiry,
        opts.ack ?? 'none',
      );
      return { messageId, id: Number(info.lastInsertRowid) };
    })();
  }

  /**
   * Locks the oldest available message for `lockMs` and returns it, or undefined when none is
   * available. Messages delivered too often are dead-lettered on the way.
   */
  lockNext(deviceId: string, lockMs: number, opts: { moduleId?: string; now?: number } = {}): C2DDelivery | undefined {
    const now = opts.now ?? Date.now();
    const moduleId = opts.moduleId ?? '';
    return this.db.transaction(() => {
      this.expireFor(deviceId, moduleId, now);
      for (;;) {
        const row = this.s.next.get(deviceId, moduleId, now, now) as Row | undefined;
        if (!row) return undefined;
        if (row.delivery_count >= this.maxDeliveryCount) {
          this.s.remove.run(row.id);
          this.recordOutcome(row, 'DeliveryCountExceeded', now);
          continue;
        }
        const lockToken = randomUUID();
        const lockedUntil = now + lockMs;
        this.s.lock.run(lockToken, lockedUntil, row.id);
        return {
          lockToken,
          deliveryCount: row.delivery_count + 1,
          enqueuedTime: row.enqueued_ms,
          lockedUntil,
          ack: row.ack,
          message: decodeMessageMeta(row.meta, row.body),
        };
      }
    })();
  }

  /**
   * Settles a locked message. complete/reject remove it (with feedback when asked for);
   * abandon makes it available again. Throws not-found for an unknown token and precondition
   * when the lock has expired meanwhile.
   */
  settle(
    deviceId: string,
    lockToken: string,
    outcome: C2DOutcome,
    opts: { moduleId?: string; now?: number; ignoreLockExpiry?: boolean } = {},
  ): void {
    const now = opts.now ?? Date.now();
    const moduleId = opts.moduleId ?? '';
    this.db.transaction(() => {
      const row = this.s.byLock.get(lockToken) as Row | undefined;
      if (!row || row.device_id !== deviceId || row.module_id !== moduleId) {
        throw new EngineError(
          'not-found',
          `no message of ${describeTarget(deviceId, moduleId)} is locked with token ${lockToken}`,
        );
      }
      if (!opts.ignoreLockExpiry && row.locked_until <= now) {
        throw new EngineError('precondition', `the lock ${lockToken} has expired; the message may be delivered again`);
      }
      if (outcome === 'abandon') {
        this.s.unlock.run(row.id);
        return;
      }
      this.s.remove.run(row.id);
      this.recordOutcome(row, outcome === 'complete' ? 'Success' : 'Rejected', now);
    })();
  }

  /** Makes locked messages available again (their session went away). Unknown tokens are ignored. */
  release(lockTokens: Iterable<string>): void {
    this.db.transaction(() => {
      for (const t of lockTokens) {
        const row = this.s.byLock.get(t) as Row | undefined;
        if (row) this.s.unlock.run(row.id);
      }
    })();
  }

  /** Drops every lock (at start-up: the connections that held them are gone). */
  releaseAll(): number {
    return this.db
      .prepare('UPDATE c2d_messages SET lock_token = NULL, locked_until = 0 WHERE lock_token IS NOT NULL')
      .run().changes;
  }

  /** Removes every queued message of a device (identity deleted). */
  purge(deviceId: string): number {
    return this.s.purge.run(deviceId).changes;
  }

  /** Expires overdue messages of all devices; returns how many. */
  expireAll(now = Date.now()): number {
    let n = 0;
    this.db.transaction(() => {
      for (const row of this.s.allExpired.all(now) as Row[]) {
        this.s.remove.run(row.id);
        this.recordOutcome(row, 'Expired', now);
        n++;
      }
    })();
    return n;
  }

  pendingFeedback(limit = 100): C2DFeedbackRecord[] {
    const rows = this.s.pendingFeedback.all(limit) as Array<{
      id: number;
      device_id: string;
      original_message_id: string;
      status: C2DFeedbackRecord['statusCode'];
      description: string;
      enqueued_ms: number;
      generation_id: string | null;
    }>;
    return rows.map((r) => {
      const rec: C2DFeedbackRecord = {
        id: r.id,
        originalMessageId: r.original_message_id,
        deviceId: r.device_id,
        statusCode: r.status,
        description: r.description,
        enqueuedTimeUtc: r.enqueued_ms,
      };
      if (r.generation_id) rec.deviceGenerationId = r.generation_id;
      return rec;
    });
  }

  acknowledgeFeedback(ids: number[]): void {
    this.db.transaction(() => {
      for (const id of ids) this.s.deleteFeedback.run(id);
    })();
  }

  private expireFor(deviceId: string, moduleId: string, now: number): void {
    for (const row of this.s.expired.all(deviceId, moduleId, now) as Row[]) {
      this.s.remove.run(row.id);
      this.recordOutcome(row, 'Expired', now);
    }
  }

  private recordOutcome(row: Row, status: C2DFeedbackRecord['statusCode'], now: number): void {
    const positive = status === 'Success';
    const wanted = row.ack === 'full' || (row.ack === 'positive' && positive) || (row.ack === 'negative' && !positive);
    if (status !== 'Success')
      log.info(
        { deviceId: row.device_id, messageId: row.message_id, status },
        'C2D message left the queue without completion',
      );
    if (!wanted) return;
    this.s.feedback.run(row.device_id, row.message_id, status, FEEDBACK_TEXT[status], now, null);
  }
}

const FEEDBACK_TEXT: Record<C2DFeedbackRecord['statusCode'], string> = {
  Success: 'Success',
  Expired: 'Message expired',
  DeliveryCountExceeded: 'Message delivery count exceeded',
  Rejected: 'Message rejected',
  Purged: 'Message purged',
};

function describeTarget(deviceId: string, moduleId: string): string {
  return moduleId ? `module ${deviceId}/${moduleId}` : `device ${deviceId}`;
}
