import { traceOrigin, tracingOrigins } from '../../util/origin-trace.ts';
import type Database from 'better-sqlite3';
import { compactAuthMethod } from '../../identity/auth-method.ts';
import { encodeMessageMeta } from '../../model/message-codec.ts';
import { EngineError } from '../../model/errors.ts';
import type { EventToAppend, StoredEvent, StoredEventInfo } from '../../model/events.ts';
import type { DiskHeadroom } from '../disk-headroom.ts';
import type { ForwardedOrigin } from '../../model/message.ts';
import type { OriginsMoved, OriginWatermarks } from '../origin-watermarks.ts';
import type { WalSync } from '../wal-sync.ts';
import type { EventFeed } from './feed.ts';
import { log } from './log.ts';
import type { EventNumbers } from './numbers.ts';
import { partitionOf, toStoredEvent } from './rows.ts';
import { mark, took, tracing } from '../../util/latency-trace.ts';

/** The stream's next numbers as a commit leaves them; they take effect only once it succeeded. */
interface NextNumbers {
  seq: number;
  pseqs: number[];
  offs: number[];
  enq: number;
}

/** One append call: its events go into the same commit, and it is answered once for all of them. */
interface Pending {
  events: readonly EventToAppend[];
  /** `infos` holds the whole commit's; this call's events start at `from`. */
  resolve: (infos: StoredEventInfo[], from: number) => void;
  reject: (err: Error) => void;
}

/**
 * Appends by group commit: the events of one event-loop turn (or of `commitIntervalMs`) share
 * one transaction and one sync, and are numbered in it. Senders are answered, and the events
 * shown to readers, once the commit is on disk.
 */
export class EventWriter {
  private pending: Pending[] = [];
  private flushScheduled = false;
  /** Commits so far, and how many of them are known on disk (or failed to get there). */
  private committed = 0;
  private settled = 0;
  private readonly insert: Database.Statement;
  private readonly commitBatch: (
    batch: Pending[],
    infos: StoredEventInfo[],
    next: NextNumbers,
  ) => OriginsMoved | undefined;

  constructor(
    db: Database.Database,
    private readonly numbers: EventNumbers,
    private readonly feed: EventFeed,
    private readonly origins: OriginWatermarks,
    private readonly headroom: DiskHeadroom,
    private readonly walSync: WalSync | undefined,
    private readonly commitIntervalMs: number,
  ) {
    const partitions = numbers.partitions;
    this.insert = db.prepare(
      'INSERT INTO events (seq, part, pseq, off, enq, dev, mod, auth, gen, src, props, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.commitBatch = db.transaction((batch: Pending[], infos: StoredEventInfo[], next: NextNumbers) => {
      // One enqueued time per batch, never earlier than the previous batch: time order = sequence order.
      const enq = Math.max(Date.now(), this.numbers.lastEnqueued);
      let seq = this.numbers.seq;
      const pseqs = this.numbers.pseqs.slice();
      const offs = this.numbers.offs.slice();
      for (const p of batch)
        for (const e of p.events) {
          const part = partitionOf(e.deviceId, partitions);
          const props = encodeMessageMeta(e.message);
          const info: StoredEventInfo = {
            sequenceNumber: seq,
            partition: part,
            partitionSequenceNumber: pseqs[part],
            offset: offs[part],
            enqueuedTime: enq,
          };
          this.insert.run(
            seq,
            part,
            pseqs[part],
            offs[part],
            enq,
            e.deviceId,
            e.moduleId ?? null,
            compactAuthMethod(e.authMethod),
            e.authGenerationId ?? null,
            e.messageSource,
            props,
            e.message.body,
          );
          infos.push(info);
          seq += 1;
          pseqs[part] += 1;
          offs[part] += Buffer.byteLength(props) + e.message.body.length;
        }
      // The counters move in flush(), once COMMIT has succeeded: a commit that fails (a full disk
      // fails at COMMIT, not at the inserts) uses up no numbers.
      next.seq = seq;
      next.pseqs = pseqs;
      next.offs = offs;
      next.enq = enq;
      // Where child gateways' messages came from, in the same transaction as the messages.
      let forwarded: ForwardedOrigin[] | undefined;
      for (const p of batch) for (const e of p.events) if (e.origin) (forwarded ??= []).push(e.origin);
      return forwarded ? this.origins.writeInTransaction(forwarded) : undefined;
    });
  }

  /** See EventStream.append. */
  append(event: EventToAppend): Promise<StoredEventInfo> {
    mark('hub.append', event.message.body);
    if (this.feed.closed) return Promise.reject(new Error('event stream is closed'));
    const appended = new Promise<StoredEventInfo>((resolve, reject) => {
      this.pending.push({ events: [event], resolve: (infos, from) => resolve(infos[from]!), reject });
      this.scheduleFlush();
    });
    if (event.origin) this.origins.track(event.origin, appended);
    return appended;
  }

  /** See EventStream.appendAll. */
  appendAll(events: readonly EventToAppend[]): Promise<StoredEventInfo[]> {
    if (this.feed.closed) return Promise.reject(new Error('event stream is closed'));
    if (events.length === 0) return Promise.resolve([]);
    if (tracing) for (const e of events) mark('hub.append', e.message.body);
    const appended = new Promise<StoredEventInfo[]>((resolve, reject) => {
      this.pending.push({ events, resolve: (infos, from) => resolve(infos.slice(from, from + events.length)), reject });
      this.scheduleFlush();
    });
    for (const e of events) if (e.origin) this.origins.track(e.origin, appended);
    return appended;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    if (this.commitIntervalMs > 0) setTimeout(() => this.flush(), this.commitIntervalMs);
    else setImmediate(() => this.flush());
  }

  /** Commits everything queued so far in one transaction. */
  flush(): void {
    this.flushScheduled = false;
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const infos: StoredEventInfo[] = [];
    // Below the free-space reserve nothing is written: the space left is for checkpoints.
    const full = this.headroom.refusal();
    if (full) return this.refuse(batch, new EngineError('store-full', full));
    const n = this.numbers;
    const next: NextNumbers = { seq: n.seq, pseqs: n.pseqs, offs: n.offs, enq: n.lastEnqueued };
    try {
      const t0 = tracing ? performance.now() : 0;
      const moved = this.commitBatch(batch, infos, next);
      if (tracing) took('hub.commit', performance.now() - t0);
      n.seq = next.seq;
      for (let i = 0; i < n.partitions; i++) {
        n.pseqs[i] = next.pseqs[i]!;
        n.offs[i] = next.offs[i]!;
      }
      n.lastEnqueued = next.enq;
      this.committed++;
      if (moved) this.origins.committedNow(moved);
      if (tracingOrigins) {
        let k = 0;
        for (const p of batch)
          for (const e of p.events)
            traceOrigin('hub.stored', {
              id: e.message.messageId,
              dev: e.deviceId,
              origin: e.origin,
              seq: infos[k++]?.sequenceNumber,
            });
      }
    } catch (err) {
      if (this.headroom.failed(err))
        return this.refuse(
          batch,
          new EngineError('store-full', this.headroom.refusal() ?? `store full: ${(err as Error).message}`),
        );
      log.error(
        { err, count: batch.reduce((k, p) => k + p.events.length, 0) },
        'event stream append failed; senders get an error',
      );
      return this.refuse(batch, err as Error);
    }
    for (const p of batch) for (const e of p.events) if (e.origin) this.origins.forget(e.origin);
    if (!this.walSync) {
      this.publish(batch, infos);
      return;
    }
    this.walSync.add({
      resolve: () => this.publish(batch, infos),
      // The rows are committed and the next sync that succeeds covers them: they are shown, but
      // their senders hear the failure and may send again (a duplicate, never a loss).
      reject: (err) => this.publish(batch, infos, err),
    });
  }

  /** Resolves once everything appended so far is durable (acknowledge a resend no earlier than its original). */
  whenDurable(): Promise<void> {
    const target = this.pending.length > 0 ? this.committed + 1 : this.committed;
    if (this.settled >= target) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        if (this.settled < target && !this.feed.closed) return;
        this.feed.waiters.delete(done);
        resolve();
      };
      this.feed.waiters.add(done);
    });
  }

  /** Nothing of `batch` was stored: its senders hear why. */
  private refuse(batch: Pending[], err: Error): void {
    for (const p of batch) {
      for (const e of p.events) if (e.origin) this.origins.forget(e.origin);
      p.reject(err);
    }
  }

  /** A commit is on disk (or its sync failed): answer its senders, show its events to readers. */
  private publish(batch: Pending[], infos: StoredEventInfo[], syncError?: Error): void {
    this.settled++;
    if (tracing) for (const p of batch) for (const e of p.events) mark('hub.durable', e.message.body);
    const events: StoredEvent[] = [];
    for (const p of batch) {
      const from = events.length;
      for (const e of p.events) events.push(toStoredEvent(e, infos[events.length]!));
      if (syncError) p.reject(syncError);
      else p.resolve(infos, from);
    }
    this.feed.publish(infos, events);
  }
}
