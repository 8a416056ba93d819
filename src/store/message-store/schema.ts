import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { UserError } from '../../util/errors.ts';
import { type Endpoints, queueOf } from './state.ts';

/** The message store's SQLite file: its tables, how it is opened, the statements its parts share. */

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
export const INSERT_CHUNK = 64;

/** Opens (or creates) the file with the store's settings and checks its schema; throws a UserError when it cannot be used. */
export function openDatabase(path: string, backgroundSync: boolean): Database.Database {
  let db: Database.Database;
  try {
    db = new Database(path, { timeout: 0 });
  } catch (err) {
    throw new UserError(
      `cannot open message store ${path}: ${(err as Error).message}`,
      'check that the directory exists and is writable',
    );
  }
  try {
    // Page size only takes on a new file; 8 KiB pages hold more small messages per write.
    db.pragma('page_size = 8192');
    db.pragma('journal_mode = WAL');
    db.pragma(backgroundSync ? 'synchronous = NORMAL' : 'synchronous = FULL');
    // One process owns the queues: a second one would hand out the same entries twice.
    db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('busy_timeout = 0');
    // Fewer, larger WAL checkpoints: pages rewritten by many commits are copied back once (~32 MiB of WAL).
    db.pragma('wal_autocheckpoint = 4000');
    db.pragma('cache_size = -16000');
    db.exec('BEGIN IMMEDIATE; COMMIT');
    db.exec(SCHEMA);
    const version = db.prepare('SELECT value FROM meta WHERE key = ?').pluck().get('schema') as string | undefined;
    if (version === undefined) db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('schema', SCHEMA_VERSION);
    else if (version !== SCHEMA_VERSION) {
      throw new UserError(`message store ${path} has schema version ${version}, this build reads ${SCHEMA_VERSION}`);
    }
  } catch (err) {
    db.close();
    if (err instanceof UserError) throw err;
    const code = (err as { code?: string }).code;
    if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') {
      throw new UserError(`message store ${path} is in use by another process`, 'stop the other Strata process first');
    }
    throw new UserError(`cannot open message store ${path}: ${(err as Error).message}`);
  }
  return db;
}

export interface Statements {
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
}

export function prepareStatements(db: Database.Database): Statements {
  return {
    insertMessage: db.prepare('INSERT INTO messages (seq, size, enq, meta, body) VALUES (?, ?, ?, ?, ?)'),
    insertQueue: db.prepare('INSERT INTO queue (ep, prio, seq, expires) VALUES (?, ?, ?, ?)'),
    insertEndpoint: db.prepare('INSERT INTO endpoints (name) VALUES (?)'),
    deleteQueue: db.prepare('DELETE FROM queue WHERE ep = ? AND prio = ? AND seq = ?'),
    // Many rows per statement: a statement's own cost is paid once per chunk, not per message.
    insertMessages: db.prepare(
      `INSERT INTO messages (seq, size, enq, meta, body) VALUES ${Array(INSERT_CHUNK).fill('(?, ?, ?, ?, ?)').join(', ')}`,
    ),
    insertQueues: db.prepare(
      `INSERT INTO queue (ep, prio, seq, expires) VALUES ${Array(INSERT_CHUNK).fill('(?, ?, ?, ?)').join(', ')}`,
    ),
    countRange: db.prepare('SELECT count(*) FROM queue WHERE ep = ? AND prio = ? AND seq BETWEEN ? AND ?').pluck(),
    deleteRange: db.prepare('DELETE FROM queue WHERE ep = ? AND prio = ? AND seq BETWEEN ? AND ?'),
    queueHead: db.prepare('SELECT seq FROM queue WHERE ep = ? AND prio = ? ORDER BY seq LIMIT 1').pluck(),
    gcTotals: db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM messages WHERE seq < ?'),
    gcDelete: db.prepare('DELETE FROM messages WHERE seq < ?'),
    deleteMessage: db.prepare('DELETE FROM messages WHERE seq = ? RETURNING size').pluck(),
    insertAside: db.prepare(
      'INSERT OR IGNORE INTO set_aside (endpoint, prio, seq, enq, meta, body, why, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    ),
    updateEndpoint: db.prepare(
      'UPDATE endpoints SET checkpointed = checkpointed + ?, expired = expired + ? WHERE id = ?',
    ),
    saveLastSeq: db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('lastSeq', ?)"),
    readRange: db.prepare(
      'SELECT q.seq AS seq, q.expires AS expires, m.enq AS enq, m.meta AS meta, m.body AS body ' +
        'FROM queue q JOIN messages m ON m.seq = q.seq ' +
        'WHERE q.ep = ? AND q.prio = ? AND q.seq > ? AND q.seq <= ? ORDER BY q.seq LIMIT ?',
    ),
    sweepScan: db
      .prepare('SELECT seq, expires FROM queue WHERE ep = ? AND prio = ? AND seq > ? ORDER BY seq LIMIT ?')
      .raw(true),
  };
}

/** This store's id, made when the file was. */
export function storeIdOf(db: Database.Database): string {
  let id = db.prepare("SELECT value FROM meta WHERE key = 'id'").pluck().get() as string | undefined;
  if (id === undefined) {
    id = randomUUID();
    db.prepare("INSERT INTO meta (key, value) VALUES ('id', ?)").run(id);
  }
  return id;
}

export interface OpenedState {
  messages: number;
  bytes: number;
  committedSeq: number;
  /** Every payload below this seq is deleted. */
  gcFloor: number;
}

/** Counts and numbering as the file holds them; fills `endpoints` with its endpoints and queue lengths. */
export function loadState(db: Database.Database, endpoints: Endpoints): OpenedState {
  const totals = db
    .prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes, coalesce(max(seq), 0) AS top FROM messages')
    .get() as { n: number; bytes: number; top: number };
  // Seqs are never reused, also once every payload is gone: a receiver may rely on them.
  const saved = Number(db.prepare("SELECT value FROM meta WHERE key = 'lastSeq'").pluck().get() ?? 0);
  const committedSeq = Math.max(totals.top, saved);
  const gcFloor = (db.prepare('SELECT min(seq) FROM messages').pluck().get() as number | null) ?? committedSeq + 1;

  for (const row of db.prepare('SELECT id, name, checkpointed, expired FROM endpoints').all() as Array<{
    id: number;
    name: string;
    checkpointed: number;
    expired: number;
  }>) {
    endpoints.load(row.id, row.name, row.checkpointed, row.expired);
  }
  const byId = new Map([...endpoints.values()].map((e) => [e.id, e]));
  for (const row of db.prepare('SELECT ep, prio, count(*) AS n FROM queue GROUP BY ep, prio').all() as Array<{
    ep: number;
    prio: number;
    n: number;
  }>) {
    const ep = byId.get(row.ep);
    if (ep) queueOf(ep, row.prio, committedSeq).length = row.n;
  }
  return { messages: totals.n, bytes: totals.bytes, committedSeq, gcFloor };
}
