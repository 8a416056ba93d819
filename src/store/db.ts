import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * One SQLite file per node. WAL lets readers (the CLI, a second connection) run beside the
 * writer; synchronous=FULL makes every committed transaction durable before the call returns,
 * which the registry wants (an acknowledged device create must survive kill -9 and power loss)
 * and the message store will need ("durable before acknowledged").
 */
export interface NodeDb {
  readonly sqlite: Database.Database;
  readonly path: string;
  /** Runs `fn` in one transaction (nested calls join the outer one). */
  transaction<T>(fn: () => T): T;
  /** Applies the schema steps of one component that this file has not seen yet, in order. */
  migrate(component: string, steps: readonly string[]): void;
  close(): void;
}

export function openNodeDb(path: string, opts: { readonly?: boolean } = {}): NodeDb {
  if (!opts.readonly) mkdirSync(dirname(path), { recursive: true });
  const sqlite = new Database(path, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false });
  sqlite.pragma('busy_timeout = 5000');
  if (!opts.readonly) {
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = FULL');
    sqlite.pragma('foreign_keys = ON');
    sqlite.exec('CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)');
  }
  let closed = false;
  return {
    sqlite,
    path,
    transaction<T>(fn: () => T): T {
      if (sqlite.inTransaction) return fn();
      return sqlite.transaction(fn).immediate();
    },
    migrate(component, steps) {
      const row = sqlite.prepare('SELECT version FROM schema_versions WHERE component = ?').get(component) as
        | { version: number }
        | undefined;
      const have = row?.version ?? 0;
      if (have > steps.length) {
        throw new Error(
          `${path} holds ${component} schema version ${have}, newer than this program knows (${steps.length}); upgrade strata`,
        );
      }
      if (have === steps.length) return;
      sqlite
        .transaction(() => {
          for (let v = have; v < steps.length; v++) sqlite.exec(steps[v]!);
          sqlite
            .prepare(
              'INSERT INTO schema_versions (component, version) VALUES (?, ?) ON CONFLICT(component) DO UPDATE SET version = excluded.version',
            )
            .run(component, steps.length);
        })
        .immediate();
    },
    close() {
      if (closed) return;
      closed = true;
      sqlite.close();
    },
  };
}
