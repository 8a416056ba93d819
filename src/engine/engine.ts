import type Database from 'better-sqlite3';
import { authenticate } from '../identity/authenticate.ts';
import { C2DQueue } from '../store/c2d-queue.ts';
import { TrustedCas } from '../store/trusted-cas.ts';
import { childLog } from '../util/log.ts';
import { openEngineDatabase } from './databases.ts';
import { EngineError } from '../model/errors.ts';
import { SessionStore } from './session-store.ts';
import type { AuthRequest, AuthResult, IdentityRef } from '../model/identity.ts';
import type { C2DDelivery, C2DFeedbackRecord, C2DOutcome, C2DSendOptions } from '../model/c2d.ts';
import type {
  ConnectOptions,
  EngineOptions,
  RelayDelivery,
  Session,
  SessionHandler,
  SubscriptionKind,
  TelemetryItem,
} from './types.ts';
import type { StoredEventInfo } from '../model/events.ts';
import type { ForwardedBatch, ForwardedOrigin, Message } from '../model/message.ts';
import type { MethodInvokeRequest, MethodInvokeResult } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { MAX_MESSAGE_BYTES } from '../model/message.ts';
import { C2DDeliveries } from './c2d.ts';
import { reauthorizeAll, recheckIdentity } from './identity-changes.ts';
import { MethodCalls } from './methods.ts';
import type { SessionHost } from './session.ts';
import { SessionTable } from './sessions.ts';
import { checkMessage, TelemetryPath } from './telemetry.ts';
import { patchReported, pushDesired, readTwin } from './twins.ts';

const log = childLog('engine');

/**
 * The protocol-agnostic device engine shared by all heads. Its parts: the live sessions
 * (sessions.ts), telemetry to the node's sink (telemetry.ts), twins, direct methods and C2D.
 */
export class Engine {
  private db?: Database.Database;
  private queue?: C2DQueue;
  private cas?: TrustedCas;
  private readonly sessions: SessionTable;
  private readonly telemetry: TelemetryPath;
  private readonly methods: MethodCalls;
  private readonly deliveries: C2DDeliveries;
  private expiryTimer?: NodeJS.Timeout;
  private started = false;
  private stopping = false;
  private readonly onDesiredEvent = (d: string, m: string | undefined | null, patch: TwinCollection): void => {
    this.deliverDesired(m === undefined || m === null ? { deviceId: d } : { deviceId: d, moduleId: m }, patch);
  };
  private readonly onIdentityEvent = (d: string, m: string | undefined | null, kind: string): void => {
    recheckIdentity(
      { registry: this.options.registry, sessions: this.sessions, queue: this.queue },
      d,
      m ?? undefined,
      kind,
    )
      .then(() => (/creat/i.test(kind) ? undefined : reauthorizeAll(this.sessions, this.options.authorize)))
      .catch((err) => log.error({ err, deviceId: d, moduleId: m }, 'identity re-check failed'));
  };

  constructor(readonly options: EngineOptions) {
    const maxMessageBytes = options.maxMessageBytes ?? MAX_MESSAGE_BYTES;
    this.telemetry = new TelemetryPath(options.telemetrySink, maxMessageBytes);
    // What sessions ask of the engine's parts.
    const host: SessionHost = {
      sendTelemetry: (auth, message, via) => this.telemetry.send(auth, message, via),
      sendTelemetryBatch: (auth, messages, origins, batch, via) =>
        this.telemetry.sendBatch(auth, messages, origins, batch, via),
      twinGet: (identity) => this.twinGet(identity),
      twinPatchReported: (identity, patch) => this.twinPatchReported(identity, patch),
      c2d: { settle: (...args) => this.c2d.settle(...args) },
      pumpC2D: (s) => this.deliveries.pump(s),
      methodResponse: (s, requestId, status, payload) => this.methods.response(s, requestId, status, payload),
      subscriptionsChanged: (s) => this.sessions.subscriptionsChanged(s),
      subscriptionChanged: (s, kind, subscribed) => {
        const hook = this.options.onSubscriptionChange;
        if (!hook) return;
        try {
          hook(s.identity, kind, subscribed);
        } catch (err) {
          log.error({ err, session: s.id, kind }, 'subscription hook failed');
        }
      },
      notifyConnectWaiters: (key) => this.methods.notifyConnectWaiters(key),
      recordActivity: (s) => this.sessions.recordActivity(s),
      sessionEnded: (s, reason) => this.sessions.ended(s, reason),
    };
    this.sessions = new SessionTable(host, options.registry, options.maxConnectedClients ?? Infinity);
    this.methods = new MethodCalls(this.sessions);
    this.deliveries = new C2DDeliveries({
      sessions: this.sessions,
      registry: options.registry,
      queue: () => this.c2d,
      checkMessage: (identity, message) => checkMessage(identity, message, maxMessageBytes),
      lockMs: options.c2dLockMs ?? 60_000,
    });
  }

  /** Opens the engine's database and starts listening to the registry. */
  async start(): Promise<void> {
    if (this.started) return;
    this.db = openEngineDatabase(this.options.dataDir);
    this.queue = new C2DQueue(this.db, {
      maxDepth: this.options.c2dMaxQueueDepth,
      defaultTtlMs: this.options.c2dDefaultTtlMs,
      maxDeliveryCount: this.options.c2dMaxDeliveryCount,
    });
    // Locks belonged to connections of the previous run; their holders are gone.
    this.queue.releaseAll();
    this.cas = new TrustedCas(this.db);
    this.sessions.useStores(new SessionStore(this.db), this.queue);
    this.options.registry.on('desired', this.onDesiredEvent);
    this.options.registry.on('identity', this.onIdentityEvent);
    this.expiryTimer = setInterval(() => {
      try {
        this.queue?.expireAll();
      } catch (err) {
        log.error({ err }, 'C2D expiry failed');
      }
    }, 30_000);
    this.expiryTimer.unref();
    this.started = true;
  }

  /** Closes every session and the engine's database (the sink is its owner's to close, after this). */
  async close(): Promise<void> {
    if (!this.started || this.stopping) return;
    this.stopping = true;
    for (const s of this.sessions.all()) s.end('shutdown', 'the hub is shutting down');
    this.methods.rejectAll(() => new EngineError('unavailable', 'the hub is shutting down'));
    const reg = this.options.registry;
    reg.off?.('desired', this.onDesiredEvent as never);
    reg.off?.('identity', this.onIdentityEvent as never);
    if (this.expiryTimer) clearInterval(this.expiryTimer);
    this.db?.close();
    this.started = false;
  }

  /**
   * Why this node's store takes no telemetry now (its disk is under the reserve), or undefined.
   * MQTT, which cannot refuse one message, refuses CONNECTs meanwhile.
   */
  storeFull(): string | undefined {
    if (!this.started || this.stopping) return undefined;
    return this.telemetry.storeFull();
  }

  /** The C2D queues, for heads that need more than the engine methods. */
  get c2d(): C2DQueue {
    if (!this.queue) throw new EngineError('unavailable', 'the engine is not started');
    return this.queue;
  }

  /** The CAs registered for X.509 CA authentication. */
  get trustedCas(): TrustedCas {
    if (!this.cas) throw new EngineError('unavailable', 'the engine is not started');
    return this.cas;
  }

  /**
   * Checks a credential; throws EngineError unauthorized | not-found | disabled | expired, or
   * forbidden when the node's authorize hook refuses the identity (checked first: an identity
   * outside a gateway's scope is not in its registry either, and "not registered" would mislead).
   */
  async authenticate(req: AuthRequest): Promise<AuthResult> {
    const reg = this.options.registry;
    if (this.options.authorize && req.deviceId) {
      const identity: IdentityRef =
        req.moduleId === undefined ? { deviceId: req.deviceId } : { deviceId: req.deviceId, moduleId: req.moduleId };
      const refusal = await this.options.authorize(identity, { live: false });
      if (refusal !== undefined) throw new EngineError('forbidden', refusal);
    }
    return authenticate(req, {
      getDevice: (d) => reg.getDevice(d),
      getModule: (d, m) => reg.getModule(d, m),
      hostNames: [this.options.hostName, ...(this.options.extraHostNames ?? [])],
      trustedCas: () => {
        const extra = this.options.extraTrustedCas?.();
        return extra && extra.length > 0
          ? [...this.trustedCas.certificates(), ...extra]
          : this.trustedCas.certificates();
      },
    });
  }

  // ---- sessions (sessions.ts) ----

  /**
   * Opens a session; a live session of the same identity is closed with 'replaced'.
   * Deliveries (resumed C2D) start on a later turn of the event loop, after the head has
   * acknowledged the connection.
   */
  async connect(auth: AuthResult, handler: SessionHandler, opts: ConnectOptions): Promise<Session> {
    if (!this.started || this.stopping) throw new EngineError('unavailable', 'the hub is not accepting connections');
    const session = await this.sessions.open(auth, handler, opts);
    this.options.onSessionOpened?.(auth.identity);
    return session;
  }

  /** Live sessions now. */
  connectedCount(): number {
    return this.sessions.count();
  }

  /** Who is connected now, and over what (for `strata edge list` and /health). */
  connectedIdentities(): Array<{ deviceId: string; moduleId?: string; protocol: string }> {
    return this.sessions.identities();
  }

  /** The live session limit (Infinity when unlimited). */
  get maxConnectedClients(): number {
    return this.sessions.limit;
  }

  /** Changes the live session limit, closing the most recent sessions over it; returns how many were closed. */
  setMaxConnectedClients(limit: number): number {
    return this.sessions.setLimit(limit);
  }

  /** Whether the identity has a live session. */
  isConnected(identity: IdentityRef): boolean {
    return this.sessions.isConnected(identity);
  }

  /** The live session of an identity, if any. */
  sessionOf(identity: IdentityRef): Session | undefined {
    return this.sessions.of(identity);
  }

  /** Whether the identity has a live session subscribed to `kind`. */
  isSubscribed(identity: IdentityRef, kind: SubscriptionKind): boolean {
    return this.sessions.isSubscribed(identity, kind);
  }

  // ---- telemetry (telemetry.ts) ----

  /**
   * Telemetry; resolves once durable (where the sink numbers messages, as the event stream does,
   * with where it went; else only `enqueuedTime` of the result means anything). Throws too-large / bad-request.
   */
  sendTelemetry(auth: AuthResult, message: Message, via?: number): Promise<StoredEventInfo> {
    return this.telemetry.send(auth, message, via);
  }

  /**
   * A batch (HTTPS, or AMQP from a gateway): all stored in one transaction, or none; a resend of
   * what a child gateway forwarded before is not stored again (no info for it).
   */
  sendTelemetryBatch(
    auth: AuthResult,
    messages: Message[],
    origins?: ReadonlyArray<ForwardedOrigin | undefined>,
    batch?: ForwardedBatch,
    via?: number,
  ): Promise<StoredEventInfo[]> {
    return this.telemetry.sendBatch(auth, messages, origins, batch, via);
  }

  /** A child gateway's relay batch (messages of many senders, each item with its auth): see TelemetryPath.sendItems. */
  sendTelemetryItems(items: readonly TelemetryItem[], batch?: ForwardedBatch): Promise<void> {
    return this.telemetry.sendItems(items, batch);
  }

  // ---- twins (twins.ts) ----

  twinGet(identity: IdentityRef): Promise<TwinProperties> {
    return readTwin(this.options.registry, identity);
  }

  twinPatchReported(identity: IdentityRef, patch: Record<string, unknown>): Promise<{ version: number }> {
    return patchReported(this.options.registry, identity, patch);
  }

  /**
   * Hands a desired properties patch to the identity's live session; false when it is not
   * connected or has not subscribed to desired properties (a gateway then keeps the patch
   * for the next resynchronisation).
   */
  deliverDesired(identity: IdentityRef, patch: TwinCollection): boolean {
    return pushDesired(this.sessions.of(identity), patch);
  }

  // ---- direct methods (methods.ts) ----

  /** Service side: calls a method on a connected device/module. not-connected -> 404, timeout -> 504. */
  invokeMethod(target: IdentityRef, request: MethodInvokeRequest): Promise<MethodInvokeResult> {
    return this.methods.invoke(target, request);
  }

  // ---- cloud-to-device (c2d.ts) ----

  /** Service side: queues a C2D message (queue-full when the queue is at its maximum). */
  sendC2D(deviceId: string, message: Message, opts: C2DSendOptions = {}): Promise<{ messageId: string }> {
    return this.deliveries.send(deviceId, message, opts);
  }

  /** Device side, connectionless (HTTPS): locks and returns the next message, if any. */
  receiveC2D(deviceId: string): Promise<C2DDelivery | undefined> {
    return this.deliveries.receive(deviceId);
  }

  /** Device side, connectionless (HTTPS): settles a lock. not-found when the lock is unknown, precondition when it expired. */
  settleC2D(deviceId: string, lockToken: string, outcome: C2DOutcome): Promise<void> {
    return this.deliveries.settle(deviceId, lockToken, outcome);
  }

  /** Service side: feedback records not yet taken, oldest first. */
  pendingFeedback(limit?: number): C2DFeedbackRecord[] {
    return this.deliveries.pendingFeedback(limit);
  }

  /** Service side: removes feedback records once delivered to the service. */
  acknowledgeFeedback(ids: number[]): void {
    this.deliveries.acknowledgeFeedback(ids);
  }

  /**
   * Hands a C2D message held elsewhere (a gateway relays it from upstream) to the device's live
   * session; `settle` gets the device's outcome, or 'abandon' when the session ends first.
   * False, without calling `settle`, when the device is not connected or has not subscribed to C2D.
   */
  relayC2D(deviceId: string, delivery: RelayDelivery, settle: (outcome: C2DOutcome) => unknown): boolean {
    return this.deliveries.relay(deviceId, delivery, settle);
  }

  /**
   * Hands a message to a module's input (a route's BrokeredEndpoint) on its live session; like
   * relayC2D. False when the module is not connected or has not subscribed to its inputs.
   */
  deliverInput(
    identity: IdentityRef,
    inputName: string,
    delivery: RelayDelivery,
    settle: (outcome: C2DOutcome) => unknown,
  ): boolean {
    return this.deliveries.deliverInput(identity, inputName, delivery, settle);
  }
}
