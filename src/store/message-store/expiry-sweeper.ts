import type { GroupCommit } from './commit.ts';
import type { PayloadGc } from './payload-gc.ts';
import type { Statements } from './schema.ts';
import type { Endpoints } from './state.ts';

/**
 * Finds expired entries that no reader comes by to skip, a bounded slice of every queue per
 * pass, and hands them to the next commit; each pass first looks for payloads left behind a
 * lagging endpoint (PayloadGc.sweepOrphans).
 */
export class ExpirySweeper {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly stmt: Statements,
    private readonly endpoints: Endpoints,
    private readonly commit: GroupCommit,
    private readonly gc: PayloadGc,
    private readonly now: () => number,
    /** Queue rows examined per queue per pass. */
    private readonly chunk: number,
  ) {}

  /** Sweeps every `ms` in the background; 0 never. */
  start(ms: number): void {
    if (ms <= 0) return;
    this.timer = setInterval(() => {
      this.sweep().catch(() => undefined); // failures are logged where they happen
    }, ms);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** See MessageStore.sweepExpired. */
  sweep(): Promise<number> {
    if (this.commit.closed) return Promise.resolve(0);
    this.gc.sweepOrphans();
    const now = this.now();
    let found = 0;
    for (const ep of this.endpoints.values()) {
      for (const q of ep.queues.values()) {
        if (q.length === 0) {
          q.sweepCursor = 0;
          q.sweepPassMin = Infinity;
          q.nextExpiry = Infinity;
          continue;
        }
        if (q.nextExpiry > now && q.sweepCursor === 0) continue;
        const rows = this.stmt.sweepScan.all(ep.id, q.priority, q.sweepCursor, this.chunk) as Array<[number, number]>;
        for (const [seq, expires] of rows) {
          if (expires === 0 || ep.pendingDelete.has(seq)) continue;
          if (expires <= now) {
            this.commit.queueDelete(ep, q.priority, seq, 'expired');
            found++;
          } else if (expires < q.sweepPassMin) q.sweepPassMin = expires;
        }
        if (rows.length < this.chunk) {
          // A full pass is done: nothing expires before the earliest expiry it saw (appends lower it).
          q.nextExpiry = q.sweepPassMin;
          q.sweepPassMin = Infinity;
          q.sweepCursor = 0;
        } else {
          q.sweepCursor = rows[rows.length - 1][0];
        }
      }
    }
    if (found === 0 && !this.commit.hasDeletes) return Promise.resolve(0);
    return new Promise<number>((resolve, reject) => {
      this.commit.waitForCommit({ resolve: () => resolve(found), reject });
    });
  }
}
