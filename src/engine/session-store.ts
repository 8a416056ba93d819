import type Database from 'better-sqlite3';
import type { SubscriptionKind } from './types.ts';

const KINDS: ReadonlySet<string> = new Set<SubscriptionKind>(['c2d', 'inputs', 'desired', 'methods', 'twin-responses']);

/**
 * Subscriptions of persistent sessions (MQTT CleanSession=0), kept in the engine database so
 * that a device reconnecting after a hub restart finds them again: the official clients do
 * not resubscribe when the session is said to be present.
 */
export class SessionStore {
  private readonly s: Record<string, Database.Statement>;

  constructor(db: Database.Database) {
    db.exec(
      'CREATE TABLE IF NOT EXISTS persistent_sessions (identity TEXT PRIMARY KEY, subscriptions TEXT NOT NULL, updated_ms INTEGER NOT NULL)',
    );
    this.s = {
      get: db.prepare('SELECT subscriptions FROM persistent_sessions WHERE identity = ?'),
      put: db.prepare(
        'INSERT INTO persistent_sessions (identity, subscriptions, updated_ms) VALUES (?, ?, ?) ON CONFLICT(identity) DO UPDATE SET subscriptions = excluded.subscriptions, updated_ms = excluded.updated_ms',
      ),
      del: db.prepare('DELETE FROM persistent_sessions WHERE identity = ?'),
      delDevice: db.prepare("DELETE FROM persistent_sessions WHERE identity = ? OR identity LIKE ? ESCAPE '\\'"),
    };
  }

  get(identityKey: string): Set<SubscriptionKind> | undefined {
    const row = this.s.get.get(identityKey) as { subscriptions: string } | undefined;
    if (!row) return undefined;
    let list: unknown;
    try {
      list = JSON.parse(row.subscriptions);
    } catch {
      return undefined;
    }
    return new Set(
      (Array.isArray(list) ? list : []).filter((k): k is SubscriptionKind => typeof k === 'string' && KINDS.has(k)),
    );
  }

  put(identityKey: string, subscriptions: ReadonlySet<SubscriptionKind>): void {
    this.s.put.run(identityKey, JSON.stringify([...subscriptions].sort()), Date.now());
  }

  delete(identityKey: string): void {
    this.s.del.run(identityKey);
  }

  /** Forgets the sessions of a device and of its modules (identity deleted). */
  deleteDevice(deviceId: string): void {
    const escaped = deviceId.replace(/[\\%_]/g, (c) => `\\${c}`);
    this.s.delDevice.run(deviceId, `${escaped}\u0000%`);
  }
}
