import type Database from 'better-sqlite3';
import { log } from './log.ts';
import type { Statements } from './schema.ts';
import type { Endpoints, StoreCounts } from './state.ts';

/**
 * Deletes payloads (`messages` rows) once no queue entry refers to them. Most go in the commit
 * that removed their last entries, as one range below the oldest entry still queued; those
 * left behind a lagging endpoint are found by `sweepOrphans`.
 */
export class PayloadGc {
  /** Every payload below this seq is deleted; `floorNext` is what the open commit moves it to. */
  private floor: number;
  private floorNext: number;
  private orphanCursor = 0;

  constructor(
    private readonly db: Database.Database,
    private readonly stmt: Statements,
    private readonly endpoints: Endpoints,
    private readonly counts: StoreCounts,
    private readonly sweepChunk: number,
    floor: number,
  ) {
    this.floor = floor;
    this.floorNext = floor;
  }

  /**
   * Deletes the payloads no queue refers to any more: everything below the oldest entry still
   * queued anywhere, as one range delete inside the commit that removed the entries. Payloads
   * above that point whose entries are gone wait for it to move, or for `sweepOrphans`.
   */
  collect(top: number): { n: number; bytes: number } {
    let floor = top + 1;
    for (const ep of this.endpoints.values()) {
      for (const q of ep.queues.values()) {
        const head = this.stmt.queueHead.get(ep.id, q.priority) as number | undefined;
        if (head !== undefined && head < floor) floor = head;
      }
    }
    if (floor <= this.floor) return { n: 0, bytes: 0 };
    const t = this.stmt.gcTotals.get(floor) as { n: number; bytes: number };
    if (t.n > 0) this.stmt.gcDelete.run(floor);
    this.floorNext = floor;
    return t;
  }

  /** The commit succeeded: what `collect` deleted is gone. */
  committed(): void {
    this.floor = Math.max(this.floor, this.floorNext);
  }

  /**
   * When one endpoint lags (a module that stays away), the range collection stops at its oldest
   * entry and payloads other endpoints are done with pile up behind it. Once that is a sizeable
   * share of the store, find them a slice at a time and delete them one by one.
   */
  sweepOrphans(): void {
    let queued = 0;
    const epIds = new Set<number>();
    const prios = new Set<number>();
    for (const ep of this.endpoints.values()) {
      for (const q of ep.queues.values()) {
        queued += q.length;
        epIds.add(ep.id);
        prios.add(q.priority);
      }
    }
    if (this.counts.messages - queued < Math.max(1000, this.counts.messages / 10)) return;
    const from = Math.max(this.orphanCursor, this.floor - 1);
    const slice = this.db
      .prepare('SELECT seq FROM messages WHERE seq > ? ORDER BY seq LIMIT ?')
      .pluck()
      .all(from, this.sweepChunk) as number[];
    if (slice.length === 0) {
      this.orphanCursor = 0;
      return;
    }
    const to = slice[slice.length - 1];
    this.orphanCursor = slice.length < this.sweepChunk ? 0 : to;
    // Ids are integers from our own table, so they can be written into the statement.
    const referenced =
      epIds.size === 0
        ? '0'
        : `EXISTS (SELECT 1 FROM queue q WHERE q.ep IN (${[...epIds].join(',')}) AND q.prio IN (${[...prios].join(',')}) AND q.seq = m.seq)`;
    const orphans = this.db
      .prepare(`SELECT seq FROM messages m WHERE seq > ? AND seq <= ? AND NOT ${referenced}`)
      .pluck()
      .all(from, to) as number[];
    if (orphans.length === 0) return;
    let bytes = 0;
    try {
      this.db.transaction(() => {
        for (const seq of orphans) bytes += (this.stmt.deleteMessage.get(seq) as number | undefined) ?? 0;
      })();
    } catch (err) {
      log.error({ err: (err as Error).message }, 'deleting unreferenced payloads failed');
      return;
    }
    this.counts.bytes -= bytes;
    this.counts.messages -= orphans.length;
    log.debug({ deleted: orphans.length, bytes }, 'deleted payloads left behind a lagging endpoint');
  }
}
