import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';

/** The event stream's SQLite file: its table, how it is opened, its `meta` values. */

/** Opens (or creates) `events.db` in `dir`; `background`: commits leave the fsync to WalSync. */
export function openEventsDb(dir: string, background: boolean): { db: Database.Database; file: string } {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'events.db');
  const db = new Database(file);
  // Page size only takes on a new file, before its first write; 8 KiB pages hold more events a write.
  db.pragma('page_size = 8192');
  db.pragma('journal_mode = WAL');
  // FULL makes each commit fsync the WAL; NORMAL leaves that to the background sync.
  db.pragma(background ? 'synchronous = NORMAL' : 'synchronous = FULL');
  // A checkpoint (copying the log into the file, with its fsyncs) runs inside the COMMIT that
  // crosses the threshold, on the event loop: fewer, larger ones (~32 MiB of log) cost less
  // than one every 4 MiB.
  db.pragma('wal_autocheckpoint = 4000');
  db.pragma('cache_size = -16000');
  db.exec(`
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
  db.exec('DROP INDEX IF EXISTS events_enq; DROP INDEX IF EXISTS events_dev;');
  return { db, file };
}

/** The partition count fixed when the stream was created; a new stream takes `requested` (1..32, default 4). */
export function partitionCountOf(db: Database.Database, requested: number | undefined): number {
  const stored = db.prepare(`SELECT value FROM meta WHERE key = 'partitions'`).get() as { value: string } | undefined;
  if (stored) return Number(stored.value);
  const partitions = Math.max(1, Math.min(32, Math.floor(requested ?? 4)));
  db.prepare(`INSERT INTO meta (key, value) VALUES ('partitions', ?)`).run(String(partitions));
  db.prepare(`INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)`).run(String(Date.now()));
  return partitions;
}

export function metaNumber(db: Database.Database, key: string): number | undefined {
  const row = db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
  return row ? Number(row.value) : undefined;
}

/** Statements prepared once per SQL text. */
export class StatementCache {
  private readonly statements = new Map<string, Database.Statement>();

  constructor(private readonly db: Database.Database) {}

  get(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }
}
