import type { MessageStore, QueuedMessage } from '../store/message-store.ts';
import { childLog } from '../util/log.ts';

/**
 * Moves one endpoint's queued messages from the store to the endpoint.
 *
 * - Batches are as large as the endpoint takes (`maxBatch`), as many in flight as it allows
 *   (`maxInFlight`, default 1). Batches are checkpointed in the order they were sent; after a
 *   failure, everything from the failed batch on is sent again, so each sender's order holds.
 * - On failure: one exponential backoff with jitter for the whole endpoint (`minBackoffMs`
 *   doubling to `maxBackoffMs`, each wait drawn from [d/2, d]). An endpoint that reports
 *   `onAvailable` cuts the wait short: the drain resumes as soon as it says it is back. One that
 *   only reports `isAvailable()` is polled every 250 ms while down; one that reports neither is
 *   retried when its backoff ends. A send not settled after `sendTimeoutMs` counts as failed; the
 *   endpoint should give up on it too, or that batch may arrive twice (delivery is at least once).
 * - Priorities: every batch gives each waiting priority a share by weight (default 2^(9-p), so
 *   priority 0 gets twice priority 1) and at least one slot, highest priority first in the batch;
 *   slots a priority cannot fill go to the next. Low priorities slow down, they never stop.
 * - Order: by default each priority queue is sent strictly in arrival order, which keeps every
 *   sender's order also across outages; live messages wait behind the backlog and the backlog
 *   drains at full batch size. With `liveShare` > 0, a drain that starts with more than one batch
 *   waiting splits the queue into a backlog lane (what was stored when the drain started) and a
 *   live lane (what arrives after), and gives the live lane that share of every batch: fresh data
 *   flows at once, and a sender's order holds within each lane but not between them.
 */

const log = childLog('pump');

/**
 * Where a pump delivers a queue's messages: `$upstream` (the parent link or the hub's event
 * stream) or a module input. (A route's sink, in endpoint.ts, names one of these by its id.)
 */
export interface DeliveryEndpoint {
  /** The store's endpoint name, e.g. `$upstream` or `/modules/m1/inputs/in1`. */
  readonly name: string;
  /** The largest batch `send` accepts; the pump fills batches up to this. */
  readonly maxBatch: number;
  /**
   * How many batches may be in flight at once (default 1). More than one keeps a remote
   * endpoint busy while the previous batch's acknowledgement travels back; the endpoint must
   * deliver concurrent batches in the order they were sent.
   */
  readonly maxInFlight?: number;
  /**
   * Delivers a batch, in order. Resolve only when the receiver has taken every message (the
   * pump then checkpoints them); reject when it is down or refused, and the pump retries later.
   */
  send(batch: readonly QueuedMessage[]): Promise<void>;
  /** False while the endpoint knows it cannot deliver (link down, module not connected). */
  isAvailable?(): boolean;
  /**
   * Subscribes to "reachable again". Endpoints that offer it get their drain resumed at once
   * instead of after the pump's backoff. Returns an unsubscribe function.
   */
  onAvailable?(listener: () => void): () => void;
  /** Told when the pump starts reading again from the oldest unacknowledged message. */
  rewind?(): void;
}

/** Availability bookkeeping for DeliveryEndpoint implementations: `set(true)` wakes the pumps waiting on it. */
export class Availability {
  private up: boolean;
  private readonly listeners = new Set<() => void>();

  constructor(initiallyUp = true) {
    this.up = initiallyUp;
  }

  set(up: boolean): void {
    const wasUp = this.up;
    this.up = up;
    if (up && !wasUp) for (const l of [...this.listeners]) l();
  }

  isAvailable(): boolean {
    return this.up;
  }

  onAvailable(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

export interface PumpSettings {
  /** First retry wait after a failure, default 1000 ms. */
  minBackoffMs?: number;
  /** Longest retry wait, default 60000 ms. */
  maxBackoffMs?: number;
  /** A send that has not settled after this long counts as failed, default 30000 ms. */
  sendTimeoutMs?: number;
  /** Share of each batch reserved for live messages while a backlog drains (0..0.9), default 0. */
  liveShare?: number;
  /** Weight of a priority in a batch; default 2^(9-p). */
  priorityWeight?: (priority: number) => number;
  /** Source of jitter (tests). */
  random?: () => number;
}

export type PumpState = 'idle' | 'sending' | 'backoff' | 'unavailable' | 'stopped';

export interface PumpMetrics {
  endpoint: string;
  /** Entries waiting in the store for this endpoint. */
  queueLength: number;
  /** Messages the endpoint accepted (this process). */
  sent: number;
  /** Entries dropped because their TTL passed (kept by the store across restarts). */
  expired: number;
  /** Send attempts that failed (this process). */
  failed: number;
  /** Messages in failed attempts (a message retried twice counts twice). */
  failedMessages: number;
  consecutiveFailures: number;
  /** The wait chosen after the last failure, 0 after a success. */
  backoffMs: number;
  state: PumpState;
  lastError?: string;
}

interface Lane {
  /** Main (or live) lane position. */
  cursor: number;
  /** Set while a backlog lane is open: it covers seq in (backlogCursor, liveStart]. */
  liveStart?: number;
  backlogCursor: number;
}

interface InFlight {
  batch: QueuedMessage[];
  /** Settles with undefined when the endpoint took the batch, or with the failure. */
  outcome: Promise<unknown>;
}

interface WaitFor {
  work?: boolean;
  available?: boolean;
  timeoutMs?: number;
}

const AVAILABILITY_POLL_MS = 250;

function defaultWeight(priority: number): number {
  return 2 ** (9 - Math.min(Math.max(priority, 0), 9));
}

export class EndpointPump {
  readonly name: string;
  private readonly minBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly sendTimeoutMs: number;
  private readonly liveShare: number;
  private readonly weight: (priority: number) => number;
  private readonly random: () => number;
  private readonly depth: number;

  private lanes = new Map<number, Lane>();
  private stopped = true;
  private loop: Promise<void> | undefined;
  private unsubscribe: Array<() => void> = [];

  private workSignal = false;
  private availableSignal = false;
  private waiter: { on: WaitFor; wake: () => void } | undefined;

  private sent = 0;
  private failed = 0;
  private failedMessages = 0;
  private failures = 0;
  private backoffMs = 0;
  private state: PumpState = 'stopped';
  private lastError: string | undefined;

  constructor(
    private readonly store: MessageStore,
    private readonly endpoint: DeliveryEndpoint,
    settings: PumpSettings = {},
  ) {
    this.name = endpoint.name;
    this.minBackoffMs = settings.minBackoffMs ?? 1000;
    this.maxBackoffMs = Math.max(settings.maxBackoffMs ?? 60_000, this.minBackoffMs);
    this.sendTimeoutMs = settings.sendTimeoutMs ?? 30_000;
    this.liveShare = Math.min(Math.max(settings.liveShare ?? 0, 0), 0.9);
    this.weight = settings.priorityWeight ?? defaultWeight;
    this.random = settings.random ?? Math.random;
    this.depth = Math.max(1, Math.floor(endpoint.maxInFlight ?? 1));
    if (!Number.isSafeInteger(endpoint.maxBatch) || endpoint.maxBatch < 1) {
      throw new TypeError(`endpoint ${endpoint.name}: maxBatch must be a positive integer, got ${endpoint.maxBatch}`);
    }
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.unsubscribe.push(this.store.onAppend(this.name, () => this.signal('work')));
    if (this.endpoint.onAvailable) this.unsubscribe.push(this.endpoint.onAvailable(() => this.signal('available')));
    this.loop = this.run().catch((err: unknown) => {
      // A bug, not an endpoint failure: say so loudly; the store still holds every message.
      log.error(
        { endpoint: this.name, err: (err as Error).message, stack: (err as Error).stack },
        'pump stopped by an error',
      );
      this.state = 'stopped';
    });
  }

  /** Stops after the batches in flight (if any) settle. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const u of this.unsubscribe) u();
    this.unsubscribe = [];
    this.waiter?.wake();
    await this.loop;
    this.state = 'stopped';
  }

  metrics(): PumpMetrics {
    const s = this.store.metrics(this.name);
    return {
      endpoint: this.name,
      queueLength: s.queueLength,
      sent: this.sent,
      expired: s.expired,
      failed: this.failed,
      failedMessages: this.failedMessages,
      consecutiveFailures: this.failures,
      backoffMs: this.backoffMs,
      state: this.state,
      ...(this.lastError !== undefined ? { lastError: this.lastError } : {}),
    };
  }

  private signal(kind: 'work' | 'available'): void {
    if (kind === 'work') this.workSignal = true;
    else this.availableSignal = true;
    const w = this.waiter;
    if (w && ((kind === 'work' && w.on.work) || (kind === 'available' && w.on.available))) w.wake();
  }

  private wait(on: WaitFor): Promise<void> {
    if (this.stopped || (on.work && this.workSignal) || (on.available && this.availableSignal))
      return Promise.resolve();
    return new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const wake = () => {
        if (timer) clearTimeout(timer);
        this.waiter = undefined;
        resolve();
      };
      if (on.timeoutMs !== undefined) timer = setTimeout(wake, on.timeoutMs);
      this.waiter = { on, wake };
    });
  }

  private async run(): Promise<void> {
    let drainStart = true;
    // Batches sent and not yet settled, oldest first. They are checkpointed strictly in this
    // order: a batch that succeeded after one that failed is sent again (after it), so a
    // sender's order holds at the price of a duplicate, never of a loss.
    const inflight: InFlight[] = [];
    while (!this.stopped) {
      if (inflight.length === 0) {
        if (this.endpoint.isAvailable && !this.endpoint.isAvailable()) {
          this.state = 'unavailable';
          this.availableSignal = false;
          await this.wait({ available: true, timeoutMs: this.endpoint.onAvailable ? undefined : AVAILABILITY_POLL_MS });
          drainStart = true;
          continue;
        }
        if (drainStart) {
          this.startDrain();
          drainStart = false;
        }
      }
      while (inflight.length < this.depth) {
        this.workSignal = false;
        const batch = this.nextBatch();
        if (batch.length === 0) break;
        this.state = 'sending';
        this.availableSignal = false;
        inflight.push({
          batch,
          outcome: this.sendWithTimeout(batch).then(
            () => undefined,
            (err: unknown) => err ?? new Error('send failed'),
          ),
        });
      }
      const head = inflight[0];
      if (!head) {
        this.state = 'idle';
        await this.wait({ work: true, available: false });
        continue;
      }
      // With room for another batch, new work wakes the loop too, to send it at once.
      const roomLeft = inflight.length < this.depth;
      const settled = roomLeft
        ? await Promise.race([head.outcome.then((err) => ({ err })), this.wait({ work: true })])
        : { err: await head.outcome };
      if (settled === undefined) continue;
      if (settled.err !== undefined) {
        await Promise.all(inflight.map((f) => f.outcome));
        inflight.length = 0;
        this.onFailure(head.batch, settled.err);
        this.state = 'backoff';
        await this.wait({ available: true, timeoutMs: this.backoffMs });
        drainStart = true;
        continue;
      }
      inflight.shift();
      this.delivered(head.batch);
      // Let sockets, timers and the store's commit run between batches.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    // Stopping: what is still in flight settles; what succeeded in order is checkpointed.
    for (const f of inflight) {
      if ((await f.outcome) !== undefined) break;
      this.delivered(f.batch);
    }
  }

  private delivered(batch: QueuedMessage[]): void {
    if (this.failures > 0) {
      log.info({ endpoint: this.name, afterFailures: this.failures }, 'endpoint accepting messages again');
      this.failures = 0;
      this.backoffMs = 0;
    }
    this.sent += batch.length;
    this.store.checkpoint(this.name, batch).catch((err: unknown) => {
      // The entries stay stored and are sent again after a restart: at least once, never lost.
      log.error({ endpoint: this.name, err: (err as Error).message }, 'checkpoint failed');
    });
  }

  private sendWithTimeout(batch: QueuedMessage[]): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`send timed out after ${this.sendTimeoutMs} ms`)), this.sendTimeoutMs);
    });
    let sending: Promise<void>;
    try {
      sending = Promise.resolve(this.endpoint.send(batch));
    } catch (err) {
      sending = Promise.reject(err);
    }
    return Promise.race([sending, timeout]).finally(() => clearTimeout(timer));
  }

  private onFailure(batch: QueuedMessage[], err: unknown): void {
    this.failed++;
    this.failedMessages += batch.length;
    this.lastError = err instanceof Error ? err.message : String(err);
    const hint = (err as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
    if (typeof hint === 'number' && hint >= 0) {
      // The endpoint knows when to ask again (a parent gateway waiting for its own parent).
      this.backoffMs = hint;
      log.debug({ endpoint: this.name, retryInMs: hint, err: this.lastError }, 'endpoint asked to send again later');
      return;
    }
    this.failures++;
    const full = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** Math.min(this.failures - 1, 30));
    this.backoffMs = Math.round(full / 2 + (this.random() * full) / 2);
    const line = { endpoint: this.name, failures: this.failures, retryInMs: this.backoffMs, err: this.lastError };
    if (this.failures === 1) log.warn(line, 'endpoint send failed, will retry');
    else log.debug(line, 'endpoint send failed again');
  }

  /** Forget read positions: after a failure, everything not checkpointed is read again. */
  private startDrain(): void {
    this.lanes.clear();
    this.endpoint.rewind?.();
    if (this.liveShare <= 0) return;
    const top = this.store.lastSeq;
    for (const p of this.store.priorities(this.name)) {
      if (this.store.queueLength(this.name, p) > this.endpoint.maxBatch) {
        this.lanes.set(p, { cursor: top, liveStart: top, backlogCursor: 0 });
      }
    }
  }

  private lane(priority: number): Lane {
    let lane = this.lanes.get(priority);
    if (!lane) {
      lane = { cursor: 0, backlogCursor: 0 };
      this.lanes.set(priority, lane);
    }
    return lane;
  }

  private nextBatch(): QueuedMessage[] {
    const cap = this.endpoint.maxBatch;
    const priorities = this.store.priorities(this.name);
    if (priorities.length === 0) return [];
    const batch: QueuedMessage[] = [];
    if (priorities.length === 1) {
      this.take(priorities[0], cap, batch);
      return batch;
    }
    const weights = priorities.map((p) => Math.max(this.weight(p), 0));
    const total = weights.reduce((a, b) => a + b, 0) || 1;
    for (let i = 0; i < priorities.length && batch.length < cap; i++) {
      const quota = Math.max(1, Math.floor((cap * weights[i]) / total));
      this.take(priorities[i], Math.min(quota, cap - batch.length), batch);
    }
    for (let i = 0; i < priorities.length && batch.length < cap; i++) {
      this.take(priorities[i], cap - batch.length, batch);
    }
    // Highest priority first within the batch.
    batch.sort((a, b) => a.priority - b.priority);
    return batch;
  }

  private take(priority: number, n: number, out: QueuedMessage[]): void {
    if (n <= 0) return;
    const lane = this.lane(priority);
    if (lane.liveStart === undefined) {
      lane.cursor = this.read(priority, lane.cursor, undefined, n, out).cursor;
      return;
    }
    const liveN = Math.min(n, Math.max(1, Math.ceil(n * this.liveShare)));
    let got = this.readBacklog(priority, lane, n - liveN, out);
    const live = this.read(priority, lane.cursor, undefined, n - got, out);
    lane.cursor = live.cursor;
    got += live.got;
    if (got < n && lane.liveStart !== undefined) this.readBacklog(priority, lane, n - got, out);
  }

  private readBacklog(priority: number, lane: Lane, n: number, out: QueuedMessage[]): number {
    if (n <= 0 || lane.liveStart === undefined) return 0;
    const r = this.read(priority, lane.backlogCursor, lane.liveStart, n, out);
    lane.backlogCursor = r.cursor;
    if (r.exhausted) lane.liveStart = undefined;
    return r.got;
  }

  private read(priority: number, after: number, upTo: number | undefined, n: number, out: QueuedMessage[]) {
    const r = this.store.read(this.name, { priority, afterSeq: after, upToSeq: upTo, limit: n });
    for (const e of r.entries) out.push(e);
    return { cursor: r.cursor, got: r.entries.length, exhausted: r.exhausted };
  }
}
