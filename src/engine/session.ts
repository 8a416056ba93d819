import { EngineError } from '../model/errors.ts';
import { describeIdentity, identityKey, type AuthResult, type IdentityRef } from '../model/identity.ts';
import type { C2DOutcome } from '../model/c2d.ts';
import type { StoredEventInfo } from '../model/events.ts';
import type { ForwardedBatch, ForwardedOrigin, Message } from '../model/message.ts';
import type { TwinProperties } from '../model/twin.ts';
import type { C2DQueue } from '../store/c2d-queue.ts';
import { childLog } from '../util/log.ts';
import type { CloseReason, Protocol, Session, SessionHandler, SubscriptionKind } from './types.ts';

const log = childLog('engine');

/** setTimeout cannot wait longer than this; longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const ACTIVITY_EVERY_MS = 60_000;

/** What a session asks of the engine's parts (built by the engine, so this file needs none of them). */
export interface SessionHost {
  sendTelemetry(auth: AuthResult, message: Message, via?: number): Promise<StoredEventInfo>;
  sendTelemetryBatch(
    auth: AuthResult,
    messages: Message[],
    origins?: ReadonlyArray<ForwardedOrigin | undefined>,
    batch?: ForwardedBatch,
    via?: number,
  ): Promise<StoredEventInfo[]>;
  twinGet(identity: IdentityRef): Promise<TwinProperties>;
  twinPatchReported(identity: IdentityRef, patch: Record<string, unknown>): Promise<{ version: number }>;
  readonly c2d: Pick<C2DQueue, 'settle'>;
  /** Hands available C2D messages to a subscribed session, up to its window. */
  pumpC2D(s: SessionImpl): void;
  /** The device's answer to a method request. */
  methodResponse(s: SessionImpl, requestId: string, status: number, payload: Buffer): void;
  /** A persistent session's subscriptions changed (kept for its reconnect). */
  subscriptionsChanged(s: SessionImpl): void;
  /** Tells the node's subscription hook. */
  subscriptionChanged(s: SessionImpl, kind: SubscriptionKind, subscribed: boolean): void;
  /** The identity subscribed to methods: a call waiting for it to connect may go on. */
  notifyConnectWaiters(key: string): void;
  recordActivity(s: SessionImpl): void;
  sessionEnded(s: SessionImpl, reason: CloseReason): void;
}

/** A live connection; the engine's side of it. */
export class SessionImpl implements Session {
  closed = false;
  /** C2D lock tokens handed to the head and not settled; made at the first (most sessions never get one). */
  inflight?: Set<string>;
  /** Relayed deliveries (relayC2D, deliverInput) not settled yet: lock token -> their settle. */
  external?: Map<string, (outcome: C2DOutcome) => unknown>;
  private expiryTimer?: NodeJS.Timeout;
  private lastActivity = 0;

  constructor(
    private readonly engine: SessionHost,
    readonly id: number,
    public auth: AuthResult,
    readonly handler: SessionHandler,
    readonly protocol: Protocol,
    readonly resumed: boolean,
    readonly clean: boolean,
    readonly subscriptions: Set<SubscriptionKind>,
    readonly remote: string | undefined,
    readonly viaGateway: boolean,
  ) {}

  get identity(): IdentityRef {
    return this.auth.identity;
  }

  subscribe(kind: SubscriptionKind): void {
    if (this.closed) return;
    const had = this.subscriptions.has(kind);
    this.subscriptions.add(kind);
    if (!had) {
      this.engine.subscriptionsChanged(this);
      this.engine.subscriptionChanged(this, kind, true);
    }
    if (kind === 'c2d') this.engine.pumpC2D(this);
    if (kind === 'methods' && !had) this.engine.notifyConnectWaiters(identityKey(this.identity));
  }

  unsubscribe(kind: SubscriptionKind): void {
    if (this.subscriptions.delete(kind)) {
      this.engine.subscriptionsChanged(this);
      this.engine.subscriptionChanged(this, kind, false);
    }
  }

  sendTelemetry(message: Message): Promise<StoredEventInfo> {
    if (this.closed) return Promise.reject(new EngineError('unavailable', 'the connection is closed'));
    this.touch();
    return this.engine.sendTelemetry(this.auth, message, this.id);
  }

  sendTelemetryBatch(
    messages: Message[],
    origins?: ReadonlyArray<ForwardedOrigin | undefined>,
    batch?: ForwardedBatch,
  ): Promise<StoredEventInfo[]> {
    if (this.closed) return Promise.reject(new EngineError('unavailable', 'the connection is closed'));
    this.touch();
    return this.engine.sendTelemetryBatch(this.auth, messages, origins, batch, this.id);
  }

  twinGet(): Promise<TwinProperties> {
    this.touch();
    return this.engine.twinGet(this.identity);
  }

  twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }> {
    this.touch();
    return this.engine.twinPatchReported(this.identity, patch);
  }

  async settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void> {
    this.touch();
    const relayed = this.external?.get(lockToken);
    if (relayed) {
      this.external!.delete(lockToken);
      await relayed(outcome);
      return;
    }
    const mine = this.inflight?.delete(lockToken) ?? false;
    try {
      // The session holds its lock until it settles, however long that takes.
      this.engine.c2d.settle(this.identity.deviceId, lockToken, outcome, { ignoreLockExpiry: mine });
    } finally {
      this.engine.pumpC2D(this);
    }
  }

  methodResponse(requestId: string, status: number, payload: Buffer): void {
    this.touch();
    this.engine.methodResponse(this, requestId, status, payload);
  }

  renew(auth: AuthResult): void {
    if (identityKey(auth.identity) !== identityKey(this.identity))
      throw new EngineError('forbidden', 'a renewed credential must be for the same identity');
    this.auth = auth;
    this.armExpiry();
  }

  touch(): void {
    const now = Date.now();
    if (now - this.lastActivity < ACTIVITY_EVERY_MS) return;
    this.lastActivity = now;
    this.engine.recordActivity(this);
  }

  /** The head's transport ended (or the head ends it). */
  close(reason: CloseReason = 'client'): void {
    if (this.closed) return;
    this.closed = true;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.engine.sessionEnded(this, reason);
  }

  /** The engine ends the session: tell the head, then clean up. */
  end(reason: CloseReason, detail: string): void {
    if (this.closed) return;
    log.info({ identity: describeIdentity(this.identity), session: this.id, reason, detail }, 'closing connection');
    try {
      this.handler.close(reason, detail);
    } catch (err) {
      log.error({ err, session: this.id }, 'head failed to close its connection');
    }
    this.close(reason);
  }

  armExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    const at = this.auth.expiresAt;
    if (at === undefined) return;
    const wait = at - Date.now();
    if (wait <= 0) {
      setImmediate(() => this.end('token-expired', 'the credential of this connection expired'));
      return;
    }
    // Whole seconds (tokens expire on a second anyway): Node keeps one list per timer duration,
    // so sessions with tokens of the same lifetime share one instead of each costing a list.
    // One function for all sessions, the session as its argument: no closure kept per connection.
    this.expiryTimer = setTimeout(expiryDue, Math.min(Math.ceil(wait / 1000) * 1000, MAX_TIMER_MS), this);
    this.expiryTimer.unref();
  }
}

function expiryDue(session: SessionImpl): void {
  if (session.closed) return;
  if (session.auth.expiresAt !== undefined && session.auth.expiresAt <= Date.now())
    session.end('token-expired', 'the credential of this connection expired');
  else session.armExpiry();
}
