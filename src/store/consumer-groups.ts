import type { NodeDb } from './db.ts';

/**
 * The consumer groups of the hub's built-in Event Hubs compatible endpoint. `$Default` always
 * exists and is not stored; the others live in the hub database so that `strata hub
 * consumer-group add` works whether or not the hub is running (receivers look them up at attach).
 * Names compare case-insensitively, as Event Hubs entity names do (clients send `$default`).
 */

export const DEFAULT_CONSUMER_GROUP = '$Default';

/** Event Hubs' rule: 1 to 50 letters, digits, `.`, `-`, `_`, starting and ending with a letter or digit. */
const NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?$/;

export interface ConsumerGroup {
  name: string;
  /** Epoch ms; 0 for `$Default`. */
  createdAt: number;
}

export class ConsumerGroupError extends Error {
  constructor(
    message: string,
    readonly code: 'invalid' | 'exists' | 'not-found' | 'reserved',
  ) {
    super(message);
    this.name = 'ConsumerGroupError';
  }
}

/** Why `name` cannot be a consumer group name, or undefined when it can. */
export function consumerGroupNameProblem(name: string): string | undefined {
  if (name.toLowerCase() === DEFAULT_CONSUMER_GROUP.toLowerCase())
    return `${DEFAULT_CONSUMER_GROUP} always exists and cannot be added or removed`;
  if (!NAME.test(name)) {
    return `consumer group name "${name}" is not valid: use 1 to 50 letters, digits, ".", "-" or "_", starting and ending with a letter or digit`;
  }
  return undefined;
}

export class ConsumerGroups {
  constructor(private readonly db: NodeDb) {
    db.migrate('event-hubs-consumer-groups', [
      'CREATE TABLE consumer_groups (name TEXT PRIMARY KEY COLLATE NOCASE, created_at INTEGER NOT NULL)',
    ]);
  }

  /** `$Default` first, then the others by creation. */
  list(): ConsumerGroup[] {
    const rows = this.db.sqlite
      .prepare('SELECT name, created_at FROM consumer_groups ORDER BY created_at, name')
      .all() as Array<{ name: string; created_at: number }>;
    return [
      { name: DEFAULT_CONSUMER_GROUP, createdAt: 0 },
      ...rows.map((r) => ({ name: r.name, createdAt: r.created_at })),
    ];
  }

  /** The group as it was created (its stored spelling), or undefined. */
  get(name: string): ConsumerGroup | undefined {
    if (name.toLowerCase() === DEFAULT_CONSUMER_GROUP.toLowerCase())
      return { name: DEFAULT_CONSUMER_GROUP, createdAt: 0 };
    const row = this.db.sqlite.prepare('SELECT name, created_at FROM consumer_groups WHERE name = ?').get(name) as
      | { name: string; created_at: number }
      | undefined;
    return row ? { name: row.name, createdAt: row.created_at } : undefined;
  }

  add(name: string, now = Date.now()): ConsumerGroup {
    const problem = consumerGroupNameProblem(name);
    if (problem)
      throw new ConsumerGroupError(
        problem,
        name.toLowerCase() === DEFAULT_CONSUMER_GROUP.toLowerCase() ? 'reserved' : 'invalid',
      );
    const changes = this.db.sqlite
      .prepare('INSERT INTO consumer_groups (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING')
      .run(name, now).changes;
    if (changes === 0)
      throw new ConsumerGroupError(`consumer group "${this.get(name)?.name ?? name}" already exists`, 'exists');
    return { name, createdAt: now };
  }

  remove(name: string): void {
    if (name.toLowerCase() === DEFAULT_CONSUMER_GROUP.toLowerCase()) {
      throw new ConsumerGroupError(`${DEFAULT_CONSUMER_GROUP} always exists and cannot be removed`, 'reserved');
    }
    const changes = this.db.sqlite.prepare('DELETE FROM consumer_groups WHERE name = ?').run(name).changes;
    if (changes === 0) throw new ConsumerGroupError(`there is no consumer group "${name}"`, 'not-found');
  }
}
