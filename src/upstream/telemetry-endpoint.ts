import { traceOrigin, tracingOrigins } from '../util/origin-trace.ts';
import type { Logger } from 'pino';
import type { IdentityRef } from '../model/identity.ts';
import type { Message } from '../model/message.ts';
import type { Availability, DeliveryEndpoint } from '../routing/pump.ts';
import type { BatchOrigin } from '../protocols/amqp/batch.ts';
import type { QueuedMessage } from '../store/message-store.ts';
import { isPermanentForMessage, UpstreamDownError, UpstreamError, type SendOutcome } from './errors.ts';
import { messageOfStored, senderIdentity } from '../store/sender-message.ts';
import { CONDITION } from '../protocols/amqp/errors.ts';
import { mark, tracing } from '../util/latency-trace.ts';

const PARENT_UNREACHABLE_RETRY_MS = 1000;

/**
 * `$upstream` for a gateway: stored messages go to the parent on behalf of their original
 * senders, each on its sender's telemetry link, all senders of a batch at once and every
 * sender's messages in order. A batch resolves once the parent accepted every message.
 *
 * What the parent refuses for good is dropped, logged and counted rather than retried forever
 * (it would block every sender queued behind it): a message over the size limit or
 * unreadable, and a sender the parent says it does not know, has disabled, or that is not in
 * this gateway's scope. Anything else (link down, throttled, timeout, released) fails the batch
 * and the pump retries it.
 */

export interface TelemetryEndpointMetrics {
  /** Messages the parent accepted. */
  sent: number;
  /** Messages dropped because the parent refused them for good. */
  undeliverable: number;
  /** Batches that failed (and were retried by the pump). */
  failedBatches: number;
}

/** Sends one identity's messages upstream in order, one outcome per message. */
export interface TelemetrySender {
  forward(messages: readonly Message[], origin?: BatchOrigin): Promise<SendOutcome[]>;
}

export interface TelemetryEndpointDeps {
  availability: Availability;
  isConnected(): boolean;
  /** The identity proxy that sends for `sender` (created on first use). */
  senderFor(sender: IdentityRef): TelemetrySender;
  describeParent(): string;
  /**
   * A batch got no answer within `stallMs`: the connection is presumed dead (a parent that
   * vanished without closing it) and is dropped, so the link reconnects.
   */
  stalled(why: string): void;
  stallMs: number;
  log: Logger;
  /**
   * The gateway store's id: when given, batches name their origin (stream and numbers) so the
   * parent stores each message once, also when a batch is sent again after a restart.
   */
  originId?: string;
}

export class UpstreamTelemetryEndpoint implements DeliveryEndpoint {
  readonly name = '$upstream';
  /** A second batch travels while the parent stores the first: neither side waits on the other. */
  readonly maxInFlight = 2;
  private readonly counters: TelemetryEndpointMetrics = { sent: 0, undeliverable: 0, failedBatches: 0 };
  private readonly lastDropLog = new Map<string, number>();
  /** Per stream (`priority/sender`): the store number of the last message handed to the link. */
  private readonly lastSent = new Map<string, number>();

  constructor(
    private readonly deps: TelemetryEndpointDeps,
    readonly maxBatch: number,
  ) {}

  isAvailable(): boolean {
    return this.deps.availability.isAvailable();
  }

  onAvailable(listener: () => void): () => void {
    return this.deps.availability.onAvailable(listener);
  }

  metrics(): TelemetryEndpointMetrics {
    return { ...this.counters };
  }

  async send(batch: readonly QueuedMessage[]): Promise<void> {
    if (!this.deps.isConnected())
      throw new UpstreamDownError(`the link to the parent (${this.deps.describeParent()}) is down`);
    if (tracing) for (const q of batch) mark('up.send', q.message.body);
    // Group by sender and queue, keeping each sender's order; senders go in parallel.
    const groups = new Map<string, { identity: IdentityRef; messages: Message[]; origin?: BatchOrigin }>();
    for (const q of batch) {
      const key = `${q.priority}/${q.message.sender}`;
      let g = groups.get(key);
      if (!g) {
        g = { identity: senderIdentity(q.message.sender), messages: [] };
        if (this.deps.originId !== undefined)
          g.origin = { stream: `${this.deps.originId}/${q.priority}`, prev: this.lastSent.get(key) ?? 0, seqs: [] };
        groups.set(key, g);
      }
      g.messages.push(messageOfStored(q.message));
      (g.origin?.seqs as number[] | undefined)?.push(q.seq);
    }
    // The next batch of each stream follows on from this one (the pump sends them in order).
    for (const [key, g] of groups) if (g.origin) this.lastSent.set(key, g.origin.seqs[g.origin.seqs.length - 1]!);
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const why = `the parent (${this.deps.describeParent()}) did not settle a batch of ${batch.length} messages within ${this.deps.stallMs} ms`;
        this.deps.stalled(why);
        reject(new UpstreamDownError(why));
      }, this.deps.stallMs);
    });
    let results: Array<PromiseSettledResult<void>>;
    try {
      results = await Promise.race([
        Promise.allSettled([...groups.values()].map((g) => this.sendGroup(g.identity, g.messages, g.origin))),
        stalled,
      ]);
    } catch (err) {
      this.counters.failedBatches++;
      throw err;
    } finally {
      clearTimeout(timer);
    }
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) {
      this.counters.failedBatches++;
      throw failure.reason;
    }
    if (tracing) for (const q of batch) mark('up.accepted', q.message.body);
  }

  /**
   * The pump starts reading again from the oldest unacknowledged message: what comes next
   * follows messages the parent acknowledged, whatever was sent since.
   */
  rewind(): void {
    traceOrigin('up.rewind', {});
    this.lastSent.clear();
  }

  private async sendGroup(identity: IdentityRef, messages: Message[], origin: BatchOrigin | undefined): Promise<void> {
    const who = identity.moduleId === undefined ? identity.deviceId : `${identity.deviceId}/${identity.moduleId}`;
    let outcomes: SendOutcome[];
    if (tracingOrigins) traceOrigin('up.send', { who, ids: messages.map((m) => m.messageId), origin });
    try {
      outcomes = await this.deps.senderFor(identity).forward(messages, origin);
      if (tracingOrigins) traceOrigin('up.outcome', { who, origin, ok: outcomes.map((o) => o.ok) });
    } catch (err) {
      if (tracingOrigins) traceOrigin('up.error', { who, origin, err: (err as Error).message });
      if (isPermanentRefusal(err)) {
        this.drop(who, messages.length, (err as Error).message);
        return;
      }
      throw err;
    }
    let firstFailure: SendOutcome | undefined;
    for (const o of outcomes) {
      if (o.ok) {
        this.counters.sent++;
      } else if (isPermanentForMessage(o)) {
        this.drop(who, 1, `${o.condition}: ${o.description}`);
      } else {
        firstFailure ??= o;
      }
    }
    if (firstFailure && !firstFailure.ok) {
      const text = `the parent did not take telemetry of ${who}: ${firstFailure.description}`;
      if (firstFailure.condition === 'amqp:connection:forced') throw new UpstreamDownError(text);
      const err = new UpstreamError(text, firstFailure.condition);
      // A parent gateway that held the batch while waiting for its own parent: it takes it the
      // moment that parent is back, so ask again soon instead of backing off for a minute.
      if (firstFailure.condition === CONDITION.parentUnreachable) err.retryAfterMs = PARENT_UNREACHABLE_RETRY_MS;
      throw err;
    }
  }

  private drop(who: string, count: number, why: string): void {
    this.counters.undeliverable += count;
    const now = Date.now();
    // One line per sender and minute: a long backlog of one refused sender would flood the log.
    if ((this.lastDropLog.get(who) ?? 0) + 60_000 <= now) {
      this.lastDropLog.set(who, now);
      this.deps.log.error(
        { sender: who, dropped: count, undeliverableTotal: this.counters.undeliverable, reason: why },
        'the parent refused telemetry for good; dropped',
      );
    }
  }
}

/** The parent said no to the sender itself: not registered, disabled, or not in this gateway's scope. */
function isPermanentRefusal(err: unknown): boolean {
  if (!(err instanceof UpstreamError) || err instanceof UpstreamDownError) return false;
  return err.status === 401 || err.status === 403 || err.status === 404;
}
