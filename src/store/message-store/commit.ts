import type Database from 'better-sqlite3';
import type { DiskHeadroom } from '../disk-headroom.ts';
import type { ForwardedOrigin } from '../../model/message.ts';
import type { OriginsMoved, OriginWatermarks } from '../origin-watermarks.ts';
import type { PassingMarks } from '../passing-marks.ts';
import type { ResendWindow, ResendWritten } from '../resend-window.ts';
import type { WalSync } from '../wal-sync.ts';
import { prepareAppends } from './append.ts';
import { deleteEntries, insertAppends } from './commit-rows.ts';
import { took, tracing } from '../../util/latency-trace.ts';
import { log } from './log.ts';
import type { PayloadGc } from './payload-gc.ts';
import type { ReadCache } from './read-cache.ts';
import type { Statements } from './schema.ts';
import {
  CacheItem,
  type EndpointState,
  type Endpoints,
  ignore,
  type PendingAppend,
  type PendingDelete,
  queueOf,
  type StoreCounts,
  type Waiter,
} from './state.ts';
import { StoreFullError } from './store-full-error.ts';
import type { AppendEntry } from './types.ts';

/** How long checkpoints alone wait for a commit (they ride along with an append's before that). */
const LAZY_COMMIT_MS = 20;

/** Deletions per commit while the disk is under the reserve (see flush). */
const FULL_DISK_DELETE_CHUNK = 128;

export interface CommitParts {
  db: Database.Database;
  stmt: Statements;
  endpoints: Endpoints;
  counts: StoreCounts;
  cache: ReadCache;
  gc: PayloadGc;
  origins: OriginWatermarks;
  passing: PassingMarks;
  resends: ResendWindow;
  headroom: DiskHeadroom | undefined;
  /** With background sync: acknowledges commits once an fdatasync of the WAL covers them. */
  walSync: WalSync | undefined;
  now: () => number;
  maxBytes: number;
  maxMessages: number;
  commitWindowMs: number;
  commitMaxBatch: number;
  committedSeq: number;
}

/**
 * The message store's writer: numbers appends, gathers them and the deletions (checkpoints,
 * expiries) of a short window into one transaction, and answers them once it is durable.
 */
export class GroupCommit {
  private readonly p: CommitParts;
  private nextSeq: number;
  /** The highest seq committed so far (entries above it are not readable yet). */
  committedSeq: number;
  closed = false;

  private appends: PendingAppend[] = [];
  /** Origins of the messages appended since the last commit, in append order. */
  private pendingOrigins: ForwardedOrigin[] = [];
  private deletes: PendingDelete[] = [];
  private deleteWaiters: Waiter[] = [];
  /** Answered once the next commit is written (not necessarily on disk). */
  private writtenWaiters: Waiter[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  /** The timer was set for checkpoints only (LAZY_COMMIT_MS). */
  private flushTimerLazy = false;
  /** performance.now() of the last commit. */
  private lastFlushAt = -Infinity;
  private flushImmediate: NodeJS.Immediate | undefined;
  private lastFullLog = 0;

  constructor(parts: CommitParts) {
    this.p = parts;
    this.committedSeq = parts.committedSeq;
    this.nextSeq = parts.committedSeq + 1;
  }

  /** See MessageStore.appendAll. */
  appendAll(entries: readonly AppendEntry[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error('message store is closed'));
    const { counts, maxBytes, maxMessages } = this.p;
    const now = this.p.now();
    const prepared = prepareAppends(entries, now, this.p.endpoints);
    if (prepared instanceof Error) return Promise.reject(prepared);
    const { ready, origins, bytes } = prepared;
    // Below the free-space reserve nothing new is written: the space left is for checkpoints.
    const diskFull = ready.length > 0 ? this.p.headroom?.refusal(now) : undefined;
    if (diskFull) return Promise.reject(new StoreFullError('disk', 0, 0, diskFull));
    if (counts.bytes + counts.pendingBytes + bytes > maxBytes) {
      return Promise.reject(this.full(new StoreFullError('maxBytes', maxBytes, counts.bytes + counts.pendingBytes)));
    }
    if (counts.messages + counts.pendingMessages + ready.length > maxMessages) {
      return Promise.reject(
        this.full(new StoreFullError('maxMessages', maxMessages, counts.messages + counts.pendingMessages)),
      );
    }
    if (ready.length === 0 && origins.length === 0) return Promise.resolve();

    const stored = new Promise<void>((resolve, reject) => {
      // Everything pushed here goes into the same commit and is answered by the same sync: one
      // item carries the answer for all (on failure every item is rejected, so it is the last).
      for (const a of ready) {
        a.seq = this.nextSeq++;
        this.appends.push(a);
        for (const t of a.targets) t.ep.pendingAppends++;
      }
      counts.pendingBytes += bytes;
      counts.pendingMessages += ready.length;
      for (const o of origins) this.pendingOrigins.push(o);
      if (ready.length > 0) {
        const last = ready[ready.length - 1]!;
        last.resolve = resolve;
        last.reject = reject;
      } else {
        this.deleteWaiters.push({ resolve, reject });
      }
      this.scheduleFlush(this.appends.length >= this.p.commitMaxBatch);
    });
    for (const o of origins) this.p.origins.track(o, stored);
    for (const e of entries) if (e.resend && e.targets.length > 0) this.p.resends.add(e.resend, stored);
    return stored;
  }

  /** The entry leaves its queue with the next commit. */
  queueDelete(
    ep: EndpointState,
    priority: number,
    seq: number,
    reason: PendingDelete['reason'],
    aside?: PendingDelete['aside'],
  ): void {
    if (ep.pendingDelete.has(seq)) return;
    ep.pendingDelete.add(seq);
    this.deletes.push(aside ? { ep, priority, seq, reason, aside } : { ep, priority, seq, reason });
  }

  /** True when deletions wait for a commit. */
  get hasDeletes(): boolean {
    return this.deletes.length > 0;
  }

  /**
   * `w` is answered with the next commit: once it is durable, or with `durable` false as soon as
   * it is written (a checkpoint: losing one in a crash only sends its entries again, and the next
   * append's sync makes it durable anyway; waiting for a sync of its own cost an fdatasync per
   * batch).
   */
  waitForCommit(w: Waiter, durable = true): void {
    if (durable) this.deleteWaiters.push(w);
    else this.writtenWaiters.push(w);
    this.scheduleFlush(false, !durable);
  }

  /**
   * Commits soon. Right after this turn of the event loop when no commit ran within the window
   * (a lone message waits for no timer, and the loop wakes once less); else once the window
   * since the last commit has passed, so a busy store commits at most once a window. `lazy`
   * (checkpoints only) waits longer: nothing waits on it, and it rides along with the next
   * append's commit when one comes.
   */
  scheduleFlush(now: boolean, lazy = false): void {
    if (this.closed || this.flushImmediate) return;
    const window = this.p.commitWindowMs;
    const sinceLast = performance.now() - this.lastFlushAt;
    if (now || window <= 0 || (!lazy && sinceLast >= window)) {
      if (this.flushTimer) {
        clearTimeout(this.flushTimer);
        this.flushTimer = undefined;
      }
      this.flushImmediate = setImmediate(() => this.flush());
      return;
    }
    if (this.flushTimer && (lazy || !this.flushTimerLazy)) return;
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimerLazy = lazy;
    this.flushTimer = setTimeout(() => this.flush(), lazy ? Math.max(window, LAZY_COMMIT_MS) : window - sinceLast);
  }

  /** Commits what is pending; no commit after this. */
  close(): void {
    this.flush();
    this.closed = true;
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.flushImmediate) clearImmediate(this.flushImmediate);
  }

  private flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.flushImmediate) clearImmediate(this.flushImmediate);
    this.flushTimer = undefined;
    this.flushImmediate = undefined;
    if (this.closed) return;
    this.lastFlushAt = performance.now();
    const { db, stmt: s, counts, headroom, origins: originMarks, passing, resends, gc } = this.p;
    const appends = this.appends;
    let deletes = this.deletes;
    let waiters = this.deleteWaiters;
    const written = this.writtenWaiters;
    if (appends.length === 0 && deletes.length === 0 && waiters.length === 0 && written.length === 0) return;
    this.appends = [];
    this.deletes = [];
    this.deleteWaiters = [];
    this.writtenWaiters = [];
    // On a full disk a deletion's log pages must fit in what is left: a few at a time, the log
    // emptied before each, the waiters answered with the last part.
    const split = deletes.length > FULL_DISK_DELETE_CHUNK && headroom?.tight(this.p.now()) === true;
    if (split) {
      this.deletes = deletes.slice(FULL_DISK_DELETE_CHUNK);
      this.deleteWaiters = waiters;
      deletes = deletes.slice(0, FULL_DISK_DELETE_CHUNK);
      waiters = [];
      this.scheduleFlush(true);
    }
    const origins = this.pendingOrigins;
    this.pendingOrigins = [];
    let moved: OriginsMoved | undefined;
    let marks: Map<string, number> | undefined;
    // Taken now, so that a failed commit fails them too (a later commit must not claim them).
    const resendWritten: ResendWritten | undefined = resends.take();
    for (const a of appends) for (const t of a.targets) t.ep.pendingAppends--;

    const touched = new Set<EndpointState>();
    let freedBytes = 0;
    let freedMessages = 0;
    const deleted: PendingDelete[] = [];
    if (deletes.length > 0) headroom?.beforeFreeing();
    try {
      const t0 = tracing ? performance.now() : 0;
      db.exec('BEGIN');
      try {
        insertAppends(s, appends);
        const at = this.p.now();
        for (const d of deletes) {
          if (d.aside)
            s.insertAside.run(
              d.ep.name,
              d.priority,
              d.seq,
              d.aside.row.enq,
              d.aside.row.meta,
              d.aside.row.body,
              d.aside.why,
              at,
            );
        }
        deleteEntries(s, deletes, (d) => {
          deleted.push(d);
          touched.add(d.ep);
          if (d.reason === 'checkpoint') d.ep.dirtyCheckpointed++;
          else if (d.reason === 'expired') d.ep.dirtyExpired++;
        });
        if (deleted.length > 0) {
          const top = appends.length > 0 ? appends[appends.length - 1].seq : this.committedSeq;
          const freed = gc.collect(top);
          freedBytes = freed.bytes;
          freedMessages = freed.n;
        }
        for (const ep of touched) s.updateEndpoint.run(ep.dirtyCheckpointed, ep.dirtyExpired, ep.id);
        if (appends.length > 0) s.saveLastSeq.run(String(appends[appends.length - 1].seq));
        if (origins.length > 0) moved = originMarks.writeInTransaction(origins);
        if (passing.hasPending) marks = passing.writeInTransaction();
        if (resendWritten) resends.writeInTransaction(resendWritten);
        db.exec('COMMIT');
        if (tracing) took('store.commit', performance.now() - t0);
      } catch (err) {
        if (db.inTransaction) db.exec('ROLLBACK');
        throw err;
      }
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      log.error(
        { err: error.message, appends: appends.length, deletes: deletes.length },
        'message store commit failed',
      );
      const diskFull = headroom?.failed(error)
        ? new StoreFullError('disk', 0, 0, headroom.refusal() ?? `store full: ${error.message}`)
        : undefined;
      for (const o of origins) originMarks.forget(o);
      if (marks) passing.failed(marks);
      if (resendWritten) resends.failed(resendWritten);
      for (const ep of touched) {
        ep.dirtyCheckpointed = 0;
        ep.dirtyExpired = 0;
      }
      for (const d of deletes) d.ep.pendingDelete.delete(d.seq);
      if (split) {
        // The rest of the split deletion fails with this part: its waiters hear it and ask again.
        for (const d of this.deletes) d.ep.pendingDelete.delete(d.seq);
        this.deletes = [];
        waiters.push(...this.deleteWaiters);
        this.deleteWaiters = [];
      }
      for (const a of appends) {
        counts.pendingBytes -= a.size;
        counts.pendingMessages -= 1;
        a.reject(diskFull ?? new Error(`message not stored: ${error.message}`));
      }
      for (const w of [...waiters, ...written]) w.reject(new Error(`checkpoint not stored: ${error.message}`));
      return;
    }

    // Committed: bring the in-memory view along, then acknowledge.
    if (moved) originMarks.committedNow(moved);
    for (const o of origins) originMarks.forget(o);
    if (resendWritten) resends.committed(resendWritten);
    for (const ep of touched) {
      ep.checkpointed += ep.dirtyCheckpointed;
      ep.expired += ep.dirtyExpired;
      ep.dirtyCheckpointed = 0;
      ep.dirtyExpired = 0;
    }
    for (const d of deletes) d.ep.pendingDelete.delete(d.seq);
    for (const d of deleted) {
      const q = d.ep.queues.get(d.priority);
      if (!q) continue;
      q.length--;
      this.p.cache.markGone(q, d.seq);
    }
    counts.bytes -= freedBytes;
    counts.messages -= freedMessages;
    gc.committed();

    const notify = new Set<EndpointState>();
    for (const a of appends) {
      counts.pendingBytes -= a.size;
      counts.pendingMessages -= 1;
      counts.bytes += a.size;
      counts.messages += 1;
      for (const t of a.targets) {
        const q = queueOf(t.ep, t.priority, this.committedSeq);
        q.length++;
        if (t.expiresAt < q.nextExpiry) q.nextExpiry = t.expiresAt;
        if (t.expiresAt < q.sweepPassMin) q.sweepPassMin = t.expiresAt;
        this.p.cache.push(q, new CacheItem(a.seq, t.ep.name, t.priority, a.enqueuedAt, t.expiresAt, a.message));
        notify.add(t.ep);
      }
      // Written: the append only waits for its sync now, and need not keep its text alive meanwhile.
      a.meta = '';
    }
    if (appends.length > 0) this.committedSeq = appends[appends.length - 1].seq;
    // Marks count once on disk: answered first, before the waiters that asked for them.
    if (marks) {
      const written = marks;
      waiters.unshift({ resolve: () => passing.committed(written), reject: ignore });
    }
    for (const w of written) w.resolve();
    const walSync = this.p.walSync;
    if (walSync) {
      walSync.addAll(appends);
      walSync.addAll(waiters);
    } else {
      for (const a of appends) a.resolve();
      for (const w of waiters) w.resolve();
    }
    for (const ep of notify) {
      for (const l of ep.listeners) {
        try {
          l();
        } catch (err) {
          log.error({ endpoint: ep.name, err: (err as Error).message }, 'append listener failed');
        }
      }
    }
  }

  /** Logs a refusal for a full store at most every 5 s. */
  private full(err: StoreFullError): StoreFullError {
    const t = this.p.now();
    if (t - this.lastFullLog > 5000) {
      this.lastFullLog = t;
      log.warn({ limit: err.limit, max: err.max, current: err.current }, err.message);
    }
    return err;
  }
}
