import { EngineError } from '../model/errors.ts';
import type { C2DDelivery, C2DFeedbackRecord, C2DOutcome, C2DSendOptions } from '../model/c2d.ts';
import type { IdentityRef } from '../model/identity.ts';
import type { Message } from '../model/message.ts';
import type { C2DQueue } from '../store/c2d-queue.ts';
import { childLog } from '../util/log.ts';
import type { SessionImpl } from './session.ts';
import type { SessionTable } from './sessions.ts';
import type { EngineRegistry, RelayDelivery } from './types.ts';

const log = childLog('engine');

/** C2D messages handed to one session before it settles any (MQTT in-flight window). */
const C2D_SESSION_WINDOW = 10;
/** A session's C2D lock lasts until settled or the session ends; this bounds it after a crash. */
const C2D_SESSION_LOCK_MS = 10 * 60 * 1000;

export interface C2DDeps {
  sessions: SessionTable;
  registry: EngineRegistry;
  /** The node's C2D queues (throws 'unavailable' before the engine has started). */
  queue(): C2DQueue;
  checkMessage(identity: IdentityRef, message: Message): void;
  /** Lock duration of an HTTPS receive. */
  lockMs: number;
}

/**
 * Cloud-to-device messages: queued here and handed to a device's live session or taken by a
 * connectionless receive (HTTPS); and deliveries held elsewhere (a gateway relays C2D from
 * upstream and module inputs from its routes) handed to a live session the same way.
 */
export class C2DDeliveries {
  private nextRelayId = 1;

  constructor(private readonly deps: C2DDeps) {}

  /** Service side: queues a C2D message (queue-full when the queue is at its maximum). */
  async send(deviceId: string, message: Message, opts: C2DSendOptions = {}): Promise<{ messageId: string }> {
    const device = await this.deps.registry.getDevice(deviceId);
    if (!device) throw new EngineError('not-found', `device ${deviceId} is not registered`);
    this.deps.checkMessage({ deviceId }, message);
    const { messageId } = this.deps.queue().enqueue(deviceId, message, { ack: opts.ack, ttlMs: opts.ttlMs });
    const s = this.deps.sessions.of({ deviceId });
    if (s) this.pump(s);
    return { messageId };
  }

  /** Device side, connectionless (HTTPS): locks and returns the next message, if any. */
  async receive(deviceId: string): Promise<C2DDelivery | undefined> {
    return this.deps.queue().lockNext(deviceId, this.deps.lockMs);
  }

  /** Device side, connectionless (HTTPS): settles a lock. not-found when the lock is unknown, precondition when it expired. */
  async settle(deviceId: string, lockToken: string, outcome: C2DOutcome): Promise<void> {
    this.deps.queue().settle(deviceId, lockToken, outcome);
    const s = this.deps.sessions.of({ deviceId });
    if (s && outcome === 'abandon') this.pump(s);
  }

  /** Service side: feedback records not yet taken, oldest first. */
  pendingFeedback(limit?: number): C2DFeedbackRecord[] {
    return this.deps.queue().pendingFeedback(limit);
  }

  /** Service side: removes feedback records once delivered to the service. */
  acknowledgeFeedback(ids: number[]): void {
    this.deps.queue().acknowledgeFeedback(ids);
  }

  /** Hands available C2D messages to a subscribed session, up to its window. */
  pump(s: SessionImpl): void {
    if (s.closed || !s.subscriptions.has('c2d') || s.identity.moduleId !== undefined || !s.handler.onC2D) return;
    while ((s.inflight?.size ?? 0) < C2D_SESSION_WINDOW) {
      let d: C2DDelivery | undefined;
      try {
        d = this.deps.queue().lockNext(s.identity.deviceId, C2D_SESSION_LOCK_MS);
      } catch (err) {
        log.error({ err, session: s.id }, 'C2D delivery failed');
        return;
      }
      if (!d) return;
      (s.inflight ??= new Set()).add(d.lockToken);
      try {
        s.handler.onC2D(d);
      } catch (err) {
        log.error({ err, session: s.id }, 'C2D hand-over to the head failed');
      }
      if (s.closed) return;
    }
  }

  /**
   * Hands a C2D message held elsewhere (a gateway relays it from upstream) to the device's live
   * session. `settle` is called once with the device's outcome, or with 'abandon' when the
   * session ends first. Returns false, without calling `settle`, when the device is not
   * connected or has not subscribed to C2D.
   */
  relay(deviceId: string, delivery: RelayDelivery, settle: (outcome: C2DOutcome) => unknown): boolean {
    const s = this.deps.sessions.of({ deviceId });
    if (!s || s.closed || !s.subscriptions.has('c2d') || !s.handler.onC2D) return false;
    const d = this.relayed(s, delivery, settle);
    try {
      s.handler.onC2D(d);
    } catch (err) {
      log.error({ err, session: s.id }, 'C2D hand-over to the head failed');
    }
    return true;
  }

  /**
   * Hands a message to a module's input (a route's BrokeredEndpoint) on its live session;
   * like relay, `settle` gets the module's outcome or 'abandon'. False when the module is
   * not connected or has not subscribed to its inputs.
   */
  deliverInput(
    identity: IdentityRef,
    inputName: string,
    delivery: RelayDelivery,
    settle: (outcome: C2DOutcome) => unknown,
  ): boolean {
    const s = this.deps.sessions.of(identity);
    if (!s || s.closed || identity.moduleId === undefined || !s.subscriptions.has('inputs') || !s.handler.onInput)
      return false;
    const d = this.relayed(s, delivery, settle);
    try {
      s.handler.onInput(inputName, d);
    } catch (err) {
      log.error({ err, session: s.id }, 'input hand-over to the head failed');
    }
    return true;
  }

  private relayed(s: SessionImpl, delivery: RelayDelivery, settle: (outcome: C2DOutcome) => unknown): C2DDelivery {
    const lockToken = `relay-${(this.nextRelayId++).toString(36)}`;
    (s.external ??= new Map()).set(lockToken, settle);
    const now = Date.now();
    return {
      lockToken,
      deliveryCount: delivery.deliveryCount ?? 1,
      enqueuedTime: delivery.enqueuedTime ?? now,
      lockedUntil: now + C2D_SESSION_LOCK_MS,
      ack: delivery.ack ?? 'none',
      message: delivery.message,
    };
  }
}
