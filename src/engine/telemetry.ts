import { EngineError } from '../model/errors.ts';
import type { AuthResult, IdentityRef } from '../model/identity.ts';
import type { StoredEventInfo } from '../model/events.ts';
import type { ForwardedBatch, ForwardedOrigin, Message } from '../model/message.ts';
import { messageSize } from '../model/message-codec.ts';
import { traceOrigin, tracingOrigins } from '../util/origin-trace.ts';
import { childLog } from '../util/log.ts';
import { describeIdentity } from '../model/identity.ts';
import type { TelemetryItem, TelemetrySink } from './types.ts';

const log = childLog('engine');

/** Throws bad-request for a body that is not bytes, too-large above the node's message limit. */
export function checkMessage(identity: IdentityRef, message: Message, maxMessageBytes: number): void {
  if (!Buffer.isBuffer(message.body)) throw new EngineError('bad-request', 'message body must be bytes');
  const size = messageSize(message);
  if (size > maxMessageBytes) {
    throw new EngineError(
      'too-large',
      `message of ${describeIdentity(identity)} is ${size} bytes (body and properties); the limit is ${maxMessageBytes}`,
    );
  }
}

/**
 * Appends what the sink does not hold yet. A child gateway sends a batch again when its answer
 * was lost: what is stored already is answered once it is durable, what is being stored once
 * that first copy is, and neither is stored twice (store/origin-watermarks.ts). Only messages
 * forwarded by a child gateway name an origin.
 */
// biome-ignore lint/suspicious/noConfusingVoidType: a sink may resolve with nothing: a gateway's store numbers no events
export function appendOnce(sink: TelemetrySink, items: readonly TelemetryItem[]): Promise<StoredEventInfo[] | void> {
  /** Made at the first message taken out (most batches have none). */
  let rest: TelemetryItem[] | undefined;
  let originals: Promise<unknown>[] | undefined;
  let stored = false;
  for (let i = 0; i < items.length; i++) {
    const item = items[i]!;
    const origin = item.origin;
    if (origin) {
      // Sent again, and stored already: taken, stored once.
      if (sink.isForwardedStored(origin)) {
        traceOrigin('known', { id: item.message.messageId, origin });
        stored = true;
        rest ??= items.slice(0, i);
        continue;
      }
      const original = sink.forwardedInFlight(origin);
      if (original) {
        traceOrigin('in-flight', { id: item.message.messageId, origin });
        (originals ??= []).push(original);
        rest ??= items.slice(0, i);
        continue;
      }
    }
    rest?.push(item);
  }
  if (!rest) return sink.append(items);
  const appended = sink.append(rest);
  const waits: Array<Promise<unknown>> = [appended];
  if (stored) waits.push(sink.whenDurable());
  if (originals) waits.push(...originals);
  return Promise.all(waits).then(() => appended);
}

/** Where a message went when the sink does not number messages (a gateway's store): only the time means anything. */
function unnumbered(enqueuedTime: number): StoredEventInfo {
  return { sequenceNumber: 0, partition: 0, partitionSequenceNumber: 0, offset: 0, enqueuedTime };
}

/** The engine's telemetry path: checks each message, then hands it to the node's sink (see TelemetrySink). */
export class TelemetryPath {
  constructor(
    private readonly sink: TelemetrySink,
    private readonly maxMessageBytes: number,
  ) {}

  /** Resolves once durable. Throws too-large / bad-request. */
  send(auth: AuthResult, message: Message, via?: number): Promise<StoredEventInfo> {
    // Not async: returning a promise from an async function costs every message extra turns.
    try {
      checkMessage(auth.identity, message, this.maxMessageBytes);
    } catch (err) {
      return Promise.reject(err);
    }
    const enqueuedTime = Date.now();
    return this.take([via === undefined ? { auth, message } : { auth, message, via }]).then(
      (infos) => infos?.[0] ?? unnumbered(enqueuedTime),
    );
  }

  /** All stored in one commit, or none; a resend of what a child gateway forwarded before is not stored again (no info for it). */
  async sendBatch(
    auth: AuthResult,
    messages: Message[],
    origins?: ReadonlyArray<ForwardedOrigin | undefined>,
    batch?: ForwardedBatch,
    via?: number,
  ): Promise<StoredEventInfo[]> {
    for (const m of messages) checkMessage(auth.identity, m, this.maxMessageBytes);
    const enqueuedTime = Date.now();
    if (tracingOrigins)
      traceOrigin('recv', {
        from: describeIdentity(auth.identity),
        ids: messages.map((m) => m.messageId),
        origins,
        via,
      });
    // A forwarded message is recognised when sent again by its origin, a device's by its session.
    const items = messages.map((message, i): TelemetryItem => {
      const origin = origins?.[i];
      if (origin) return { auth, message, origin };
      return via === undefined ? { auth, message } : { auth, message, via };
    });
    const infos = await this.take(items, batch);
    if (infos) return infos;
    const info = unnumbered(enqueuedTime);
    return messages.map(() => info);
  }

  /**
   * A child gateway's relay batch: messages of many senders, each item with its own auth. All
   * stored in one commit, or none; what was stored before is not stored again.
   */
  async sendItems(items: readonly TelemetryItem[], batch?: ForwardedBatch): Promise<void> {
    for (const it of items) checkMessage(it.auth.identity, it.message, this.maxMessageBytes);
    if (tracingOrigins)
      traceOrigin('recv', {
        relay: true,
        ids: items.map((it) => it.message.messageId),
        origins: items.map((it) => it.origin),
      });
    await this.take(items, batch);
  }

  /** Why the sink takes no telemetry now, or undefined. */
  storeFull(): string | undefined {
    return this.sink.storeFull();
  }

  // biome-ignore lint/suspicious/noConfusingVoidType: a sink may resolve with nothing: a gateway's store numbers no events
  private take(items: readonly TelemetryItem[], batch?: ForwardedBatch): Promise<StoredEventInfo[] | void> {
    try {
      return this.sink.offer?.(items, batch) ?? appendOnce(this.sink, items);
    } catch (err) {
      // A sink that throws instead of refusing has failed.
      if (err instanceof EngineError) return Promise.reject(err);
      log.error({ err }, 'telemetry sink failed');
      return Promise.reject(new EngineError('unavailable', `telemetry could not be stored: ${(err as Error).message}`));
    }
  }
}
