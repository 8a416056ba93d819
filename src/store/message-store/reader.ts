import type { GroupCommit } from './commit.ts';
import { log } from './log.ts';
import type { ReadCache } from './read-cache.ts';
import type { Statements } from './schema.ts';
import type { EndpointState, Endpoints, MessageRow, QueueState } from './state.ts';
import { messageOfRow } from './stored-form.ts';
import type { QueuedMessage, ReadOptions, ReadResult } from './types.ts';

/** Reads a queue: from the file up to where its read cache starts, from memory after that. */
export class QueueReader {
  /** Hands expired entries to the next commit. */
  private readonly expire: (ep: EndpointState, priority: number, seq: number) => void;

  constructor(
    private readonly path: string,
    private readonly stmt: Statements,
    private readonly endpoints: Endpoints,
    private readonly cache: ReadCache,
    private readonly commit: GroupCommit,
    private readonly now: () => number,
  ) {
    this.expire = (ep, priority, seq) => commit.queueDelete(ep, priority, seq, 'expired');
  }

  /** See MessageStore.read. */
  read(endpoint: string, opts: ReadOptions): ReadResult {
    const ep = this.endpoints.get(endpoint);
    const q = ep?.queues.get(opts.priority);
    const upTo = opts.upToSeq ?? Number.MAX_SAFE_INTEGER;
    if (!ep || !q || opts.limit <= 0 || opts.afterSeq >= upTo)
      return { entries: [], cursor: opts.afterSeq, exhausted: true };
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
          this.commit.queueDelete(ep, opts.priority, row.seq, 'expired');
          continue;
        }
        let entry: QueuedMessage;
        try {
          entry = {
            seq: row.seq,
            endpoint: ep.name,
            priority: opts.priority,
            enqueuedAt: row.enq,
            expiresAt,
            message: messageOfRow(row),
          };
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
    if (this.commit.hasDeletes) this.commit.scheduleFlush(false);
    return { entries, cursor, exhausted };
  }

  private readCache(ep: EndpointState, q: QueueState, afterSeq: number, upTo: number, limit: number): ReadResult {
    const result = this.cache.read(ep, q, afterSeq, upTo, limit, this.now, this.expire);
    if (this.commit.hasDeletes) this.commit.scheduleFlush(false);
    return result;
  }

  /**
   * A stored entry that cannot be read back (only a bug of ours could have written it) must
   * neither stop its endpoint's queue nor vanish: it leaves the queue and is kept, with the
   * reason, in the set_aside table, in one commit.
   */
  private setAside(ep: EndpointState, priority: number, row: MessageRow, err: unknown): void {
    const why = err instanceof Error ? err.message : String(err);
    log.error(
      { endpoint: ep.name, priority, seq: row.seq, why },
      `a stored message cannot be read back; it is set aside (kept in the table set_aside of ${this.path}) and ${ep.name} goes on with the next`,
    );
    this.commit.queueDelete(ep, priority, row.seq, 'unreadable', { row, why });
    this.commit.scheduleFlush(false);
  }
}
