import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';

/** File name of the engine's own database (C2D queues, feedback, trusted CAs) inside a data dir. */
export const ENGINE_DB_FILE = 'engine.db';

/**
 * Opens (creating when needed) the engine database of a data dir. WAL lets the CLI
 * (`strata hub ca add`) write while the hub runs.
 */
export function openEngineDatabase(dataDir: string): Database.Database {
  mkdirSync(dataDir, { recursive: true });
  const db = new Database(join(dataDir, ENGINE_DB_FILE));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 5000');
  return db;
}
