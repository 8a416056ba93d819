import type { ForwardedOrigin } from '../model/message.ts';
import type Database from 'better-sqlite3';
import { authenticate } from '../identity/authenticate.ts';
import { C2DQueue } from '../store/c2d-queue.ts';
import { EventStream } from '../store/event-stream.ts';
import { TrustedCas } from '../store/trusted-cas.ts';
import { childLog } from '../util/log.ts';
import { openEngineDatabase } from './databases.ts';
import { EngineError } from '../model/errors.ts';
import { messageSize } from '../model/message-codec.ts';
import { SessionStore } from './session-store.ts';
import type { AuthRequest, AuthResult, IdentityRef } from '../model/identity.ts';
import type { C2DDelivery, C2DFeedbackRecord, C2DOutcome, C2DSendOptions } from '../model/c2d.ts';
import type { CloseReason, ConnectOptions, EngineOptions, Protocol, RelayDelivery, Session, SessionHandler, SubscriptionKind, TelemetrySink } from './types.ts';
import type { EventStreamReader, EventToAppend, StoredEventInfo } from '../model/events.ts';
import type { ForwardedBatch, Message } from '../model/message.ts';
import type { MethodInvokeRequest, MethodInvokeResult } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { MAX_MESSAGE_BYTES } from '../model/message.ts';
import { JSON_MAX_DEPTH, TWIN_MAX_DEPTH, nestsDeeperThan, tooDeepMessage } from '../util/json-depth.ts';
import { identityKey } from '../model/identity.ts';

const log = childLog('engine');

/** C2D messages handed to one session before it settles any (MQTT in-flight window). */
const C2D_SESSION_WINDOW = 10;
/** A session's C2D lock lasts until settled or the session ends; this bounds it after a crash. */
const C2D_SESSION_LOCK_MS = 10 * 60 * 1000;
/** setTimeout cannot wait longer than this; longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const ACTIVITY_EVERY_MS = 60_000;

export function describeIdentity(id: IdentityRef): string {
  return id.moduleId === undefined ? `device ${id.deviceId}` : `module ${id.deviceId}/${id.moduleId}`;
}

interface PendingMethod {
  identity: IdentityRef;
  resolve: (r: MethodInvokeResult) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

interface PersistentState {
  subscriptions: Set<SubscriptionKind>;
}

/** The protocol-agnostic device engine shared by all heads. */
export class Engine {
  private stream?: EventStream;
  private db?: Database.Database;
  private queue?: C2DQueue;
  private cas?: TrustedCas;
  private sessionStore?: SessionStore;
  private readonly sessions = new Map<string, SessionImpl>();
  private readonly persistent = new Map<string, PersistentState>();
  private readonly pendingMethods = new Map<string, PendingMethod>();
  private readonly connectWaiters = new Map<string, Set<() => void>>();
  private nextSessionId = 1;
  private nextRequestId = 1;
  private expiryTimer?: NodeJS.Timeout;
  private started = false;
  private stopping = false;
  private readonly maxMessageBytes: number;
  private maxClients: number;
  private nextRelayId = 1;
  private readonly onDesiredEvent = (d: string, m: string | undefined | null, patch: TwinCollection): void => this.pushDesired(d, m ?? undefined, patch);
  private readonly onIdentityEvent = (d: string, m: string | undefined | null, kind: string): void => {
    this.recheckIdentity(d, m ?? undefined, kind)
      .then(() => (/creat/i.test(kind) ? undefined : this.reauthorizeAll()))
      .catch((err) => log.error({ err, deviceId: d, moduleId: m }, 'identity re-check failed'));
  };

  constructor(readonly options: EngineOptions) {
    this.maxMessageBytes = options.maxMessageBytes ?? MAX_MESSAGE_BYTES;
    this.maxClients = checkLimit(options.maxConnectedClients ?? Infinity);
  }

  /** Opens the stores and starts listening to the registry. */
  async start(): Promise<void> {
    if (this.started) return;
    // A node with a telemetry sink (a gateway) forwards telemetry; it keeps no event stream.
    if (!this.options.telemetrySink) {
      this.stream = new EventStream({
        dir: this.options.dataDir,
        partitions: this.options.partitions,
        retentionMs: this.options.retentionMs,
        commitIntervalMs: this.options.commitIntervalMs,
        diskReserveBytes: this.options.diskReserveBytes,
      });
    }
    this.db = openEngineDatabase(this.options.dataDir);
    this.queue = new C2DQueue(this.db, {
      maxDepth: this.options.c2dMaxQueueDepth,
      defaultTtlMs: this.options.c2dDefaultTtlMs,
      maxDeliveryCount: this.options.c2dMaxDeliveryCount,
    });
    // Locks belonged to connections of the previous run; their holders are gone.
    this.queue.releaseAll();
    this.cas = new TrustedCas(this.db);
    this.sessionStore = new SessionStore(this.db);
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

  /** Closes every session and the stores (pending appends are flushed first). */
  async close(): Promise<void> {
    if (!this.started || this.stopping) return;
    this.stopping = true;
    for (const s of [...this.sessions.values()]) s.end('shutdown', 'the hub is shutting down');
    for (const [rid, p] of this.pendingMethods) {
      clearTimeout(p.timer);
      p.reject(new EngineError('unavailable', 'the hub is shutting down'));
      this.pendingMethods.delete(rid);
    }
    const reg = this.options.registry;
    reg.off?.('desired', this.onDesiredEvent as never);
    reg.off?.('identity', this.onIdentityEvent as never);
    if (this.expiryTimer) clearInterval(this.expiryTimer);
    await this.stream?.close();
    this.db?.close();
    this.started = false;
  }

  /**
   * Why this node's store takes no telemetry now (its disk is under the reserve), or undefined.
   * MQTT, which cannot refuse one message, refuses CONNECTs meanwhile.
   */
  storeFull(): string | undefined {
    if (!this.started || this.stopping) return undefined;
    return this.options.telemetrySink ? this.options.storeFull?.() : this.stream?.storeFull();
  }

  /** The read side of the event stream. */
  get events(): EventStreamReader {
    return this.eventStream;
  }

  /** The event stream itself (append side included), for the hub's own endpoints. */
  get eventStream(): EventStream {
    if (!this.stream) throw new EngineError('unavailable', 'the engine is not started');
    return this.stream;
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
      const identity: IdentityRef = req.moduleId === undefined ? { deviceId: req.deviceId } : { deviceId: req.deviceId, moduleId: req.moduleId };
      const refusal = await this.options.authorize(identity, { live: false });
      if (refusal !== undefined) throw new EngineError('forbidden', refusal);
    }
    return authenticate(req, {
      getDevice: (d) => reg.getDevice(d),
      getModule: (d, m) => reg.getModule(d, m),
      hostNames: [this.options.hostName, ...(this.options.extraHostNames ?? [])],
      trustedCas: () => {
        const extra = this.options.extraTrustedCas?.();
        return extra && extra.length > 0 ? [...this.trustedCas.certificates(), ...extra] : this.trustedCas.certificates();
      },
    });
  }

  /**
   * Opens a session; a live session of the same identity is closed with 'replaced'.
   * Deliveries (resumed C2D) start on a later turn of the event loop, after the head has
   * acknowledged the connection.
   */
  async connect(auth: AuthResult, handler: SessionHandler, opts: ConnectOptions): Promise<Session> {
    if (!this.started || this.stopping) throw new EngineError('unavailable', 'the hub is not accepting connections');
    const key = identityKey(auth.identity);
    const old = this.sessions.get(key);
    // A reconnect of a connected identity replaces its session, so it does not count twice.
    if (!old && !opts.viaGateway && this.directCount() >= this.maxClients) {
      throw new EngineError(
        'throttled',
        `gateway has reached MaxConnectedClients=${this.maxClients}: ${describeIdentity(auth.identity)} refused (raise MaxConnectedClients, or connect fewer devices to this gateway)`,
      );
    }
    if (old) {
      log.info({ identity: describeIdentity(auth.identity), old: old.id }, 'new connection for the same identity replaces the old one');
      old.end('replaced', 'another connection with the same identity was opened');
    }
    const clean = opts.cleanSession ?? true;
    let state = clean ? undefined : this.persistent.get(key);
    if (!clean && !state) {
      // Not in memory: a session kept from before a restart.
      const stored = this.storeCall(() => this.sessionStore?.get(key));
      if (stored) state = { subscriptions: stored };
    }
    const resumed = !!state;
    if (!state) state = { subscriptions: new Set() };
    if (clean) {
      // A clean start discards a kept session; most connections never had one, so look before writing.
      const kept = this.persistent.delete(key) || !!this.storeCall(() => this.sessionStore?.get(key));
      if (kept) this.storeCall(() => this.sessionStore?.delete(key));
    } else {
      this.persistent.set(key, state);
      this.storeCall(() => this.sessionStore?.put(key, state!.subscriptions));
    }
    const session = new SessionImpl(this, this.nextSessionId++, auth, handler, opts.protocol, resumed, clean, state.subscriptions, opts.remote, opts.viaGateway === true);
    this.sessions.set(key, session);
    this.setConnectionState(auth.identity, true);
    session.armExpiry();
    log.info(
      { identity: describeIdentity(auth.identity), session: session.id, protocol: opts.protocol, auth: auth.kind, resumed, remote: opts.remote },
      'connected',
    );
    if (state.subscriptions.size > 0) {
      for (const kind of state.subscriptions) this.subscriptionChanged(session, kind, true);
      setImmediate(() => {
        if (session.closed) return;
        if (state.subscriptions.has('c2d')) this.pumpC2D(session);
        this.notifyConnectWaiters(key);
      });
    }
    return session;
  }

  /** Live sessions now. */
  connectedCount(): number {
    return this.sessions.size;
  }

  /** Live sessions of direct clients (not through a child gateway): what MaxConnectedClients limits. */
  private directCount(): number {
    let n = 0;
    for (const s of this.sessions.values()) if (!s.viaGateway) n++;
    return n;
  }

  /** Who is connected now, and over what (for `strata edge list` and /health). */
  connectedIdentities(): Array<{ deviceId: string; moduleId?: string; protocol: string }> {
    return [...this.sessions.values()].map((s) => ({ deviceId: s.identity.deviceId, moduleId: s.identity.moduleId, protocol: s.protocol }));
  }

  /** The live session limit (Infinity when unlimited). */
  get maxConnectedClients(): number {
    return this.maxClients;
  }

  /**
   * Changes the live session limit. When it drops below the number of live sessions, the most
   * recently connected ones are closed ('over-limit') until the count fits: a limit holds for
   * clients that were connected before it was lowered too.
   */
  setMaxConnectedClients(limit: number): number {
    this.maxClients = checkLimit(limit);
    const excess = this.directCount() - this.maxClients;
    if (excess > 0) {
      const newest = [...this.sessions.values()].filter((s) => !s.viaGateway).slice(-excess);
      log.warn({ limit: this.maxClients, closing: excess }, `MaxConnectedClients lowered to ${this.maxClients}: closing the ${excess} most recent connection(s)`);
      for (const s of newest) s.end('over-limit', `gateway has reached MaxConnectedClients=${this.maxClients} (the limit was lowered)`);
    }
    return excess > 0 ? excess : 0;
  }

  /** Whether the identity has a live session. */
  isConnected(identity: IdentityRef): boolean {
    const s = this.sessions.get(identityKey(identity));
    return !!s && !s.closed;
  }

  /** The live session of an identity, if any. */
  sessionOf(identity: IdentityRef): Session | undefined {
    return this.sessions.get(identityKey(identity));
  }

  /**
   * Telemetry; resolves once durable (in the event stream, or taken by the telemetry sink, in
   * which case only `enqueuedTime` of the result means anything). Throws too-large / bad-request.
   */
  sendTelemetry(auth: AuthResult, message: Message, via?: number): Promise<StoredEventInfo> {
    // Not async: returning a promise from an async function costs every message extra turns.
    try {
      this.checkMessage(auth.identity, message);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.options.telemetrySink) return this.toSink([via === undefined ? { auth, message } : { auth, message, via }]);
    return this.eventStream.append({
      deviceId: auth.identity.deviceId,
      moduleId: auth.identity.moduleId,
      authMethod: auth.authMethod,
      authGenerationId: auth.generationId,
      messageSource: 'Telemetry',
      message,
    });
  }

  /** A batch (HTTPS, or AMQP from a gateway): all stored in one transaction, or none; a resend of what a child gateway forwarded before is not stored again (no info for it). */
  async sendTelemetryBatch(auth: AuthResult, messages: Message[], origins?: ReadonlyArray<ForwardedOrigin | undefined>, batch?: ForwardedBatch, via?: number): Promise<StoredEventInfo[]> {
    for (const m of messages) this.checkMessage(auth.identity, m);
    if (this.options.telemetrySink) {
      const info = await this.toSink(messages.map((message, i) => (origins?.[i] ? { auth, message, origin: origins[i] } : via === undefined ? { auth, message } : { auth, message, via })), batch);
      return messages.map(() => info);
    }
    const events: EventToAppend[] = [];
    let originals: Promise<unknown>[] | undefined;
    for (let i = 0; i < messages.length; i++) {
      const origin = origins?.[i];
      // A child gateway sending again what is stored already: taken, stored once.
      if (origin && this.eventStream.isForwardedStored(origin)) continue;
      const original = origin && this.eventStream.forwardedInFlight(origin);
      if (original) {
        (originals ??= []).push(original);
        continue;
      }
      const event: EventToAppend = {
        deviceId: auth.identity.deviceId,
        moduleId: auth.identity.moduleId,
        authMethod: auth.authMethod,
        authGenerationId: auth.generationId,
        messageSource: 'Telemetry',
        message: messages[i]!,
      };
      if (origin) event.origin = origin;
      events.push(event);
    }
    if (events.length === messages.length) return this.eventStream.appendAll(events);
    const [stored] = await Promise.all([this.eventStream.appendAll(events), this.eventStream.whenDurable(), ...(originals ?? [])]);
    return stored;
  }

  private toSink(items: Parameters<TelemetrySink>[0], batch?: ForwardedBatch): Promise<StoredEventInfo> {
    const enqueuedTime = Date.now();
    let taken: Promise<void>;
    try {
      taken = this.options.telemetrySink!(items, batch);
    } catch (err) {
      taken = Promise.reject(err);
    }
    return taken.then(
      () => ({ sequenceNumber: 0, partition: 0, partitionSequenceNumber: 0, offset: 0, enqueuedTime }),
      (err: unknown) => {
        if (err instanceof EngineError) throw err;
        log.error({ err }, 'telemetry sink failed');
        throw new EngineError('unavailable', `telemetry could not be stored: ${(err as Error).message}`);
      },
    );
  }

  /**
   * Hands a C2D message held elsewhere (a gateway relays it from upstream) to the device's live
   * session. `settle` is called once with the device's outcome, or with 'abandon' when the
   * session ends first. Returns false, without calling `settle`, when the device is not
   * connected or has not subscribed to C2D.
   */
  relayC2D(deviceId: string, delivery: RelayDelivery, settle: (outcome: C2DOutcome) => unknown): boolean {
    const s = this.sessions.get(identityKey({ deviceId }));
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
   * like relayC2D, `settle` gets the module's outcome or 'abandon'. False when the module is
   * not connected or has not subscribed to its inputs.
   */
  deliverInput(identity: IdentityRef, inputName: string, delivery: RelayDelivery, settle: (outcome: C2DOutcome) => unknown): boolean {
    const s = this.sessions.get(identityKey(identity));
    if (!s || s.closed || identity.moduleId === undefined || !s.subscriptions.has('inputs') || !s.handler.onInput) return false;
    const d = this.relayed(s, delivery, settle);
    try {
      s.handler.onInput(inputName, d);
    } catch (err) {
      log.error({ err, session: s.id }, 'input hand-over to the head failed');
    }
    return true;
  }

  /** Whether the identity has a live session subscribed to `kind`. */
  isSubscribed(identity: IdentityRef, kind: SubscriptionKind): boolean {
    const s = this.sessions.get(identityKey(identity));
    return !!s && !s.closed && s.subscriptions.has(kind);
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

  /** @internal */
  subscriptionChanged(s: SessionImpl, kind: SubscriptionKind, subscribed: boolean): void {
    const hook = this.options.onSubscriptionChange;
    if (!hook) return;
    try {
      hook(s.identity, kind, subscribed);
    } catch (err) {
      log.error({ err, session: s.id, kind }, 'subscription hook failed');
    }
  }

  private checkMessage(identity: IdentityRef, message: Message): void {
    if (!Buffer.isBuffer(message.body)) throw new EngineError('bad-request', 'message body must be bytes');
    const size = messageSize(message);
    if (size > this.maxMessageBytes) {
      throw new EngineError('too-large', `message of ${describeIdentity(identity)} is ${size} bytes (body and properties); the limit is ${this.maxMessageBytes}`);
    }
  }

  async twinGet(identity: IdentityRef): Promise<TwinProperties> {
    const twin = await this.options.registry.getTwin(identity.deviceId, identity.moduleId);
    if (!twin) throw new EngineError('not-found', `${describeIdentity(identity)} has no twin`);
    return {
      desired: withoutMetadata(twin.properties?.desired),
      reported: withoutMetadata(twin.properties?.reported),
    };
  }

  async twinPatchReported(identity: IdentityRef, patch: Record<string, unknown>): Promise<{ version: number }> {
    if (patch === null) {
      // IoT Hub refuses it too: a device clears its reported properties one by one.
      throw new EngineError('bad-request', 'a reported properties patch cannot be null; to remove reported properties, send a patch naming each of them as null');
    }
    if (typeof patch !== 'object' || Array.isArray(patch)) {
      throw new EngineError('bad-request', 'a reported properties patch must be a JSON object');
    }
    for (const k of Object.keys(patch)) {
      if (k.startsWith('$')) throw new EngineError('bad-request', `reported property names cannot start with "$" ("${k}")`);
    }
    // Here, not only at the hub: a gateway would serialise the patch for its parent first.
    if (nestsDeeperThan(patch, TWIN_MAX_DEPTH)) throw new EngineError('bad-request', tooDeepMessage('reported properties'));
    try {
      return await this.options.registry.updateReported(identity.deviceId, identity.moduleId, patch);
    } catch (err) {
      if (err instanceof EngineError) throw err;
      const status = (err as { status?: number; statusCode?: number }).status ?? (err as { statusCode?: number }).statusCode;
      if (status === 404) throw new EngineError('not-found', (err as Error).message);
      if (status === 400) throw new EngineError('bad-request', (err as Error).message);
      throw err;
    }
  }

  private pushDesired(deviceId: string, moduleId: string | undefined, patch: TwinCollection): void {
    this.deliverDesired(moduleId === undefined ? { deviceId } : { deviceId, moduleId }, patch);
  }

  /**
   * Hands a desired properties patch to the identity's live session; false when it is not
   * connected or has not subscribed to desired properties (a gateway then keeps the patch
   * for the next resynchronisation).
   */
  deliverDesired(identity: IdentityRef, patch: TwinCollection): boolean {
    const s = this.sessions.get(identityKey(identity));
    if (!s || s.closed || !s.subscriptions.has('desired') || !s.handler.onDesired) return false;
    try {
      s.handler.onDesired(patch);
    } catch (err) {
      log.error({ err, session: s.id }, 'desired push failed');
      return false;
    }
    return true;
  }

  /** Service side: calls a method on a connected device/module. not-connected -> 404, timeout -> 504. */
  async invokeMethod(target: IdentityRef, request: MethodInvokeRequest): Promise<MethodInvokeResult> {
    if (typeof request.methodName !== 'string' || request.methodName.length === 0 || /[/#+?]/.test(request.methodName)) {
      throw new EngineError('bad-request', `invalid method name "${String(request.methodName)}"`);
    }
    const responseTimeout = secondsOr(request.responseTimeoutInSeconds, 30, 5, 300);
    const connectTimeout = secondsOr(request.connectTimeoutInSeconds, 0, 0, 300);
    const key = identityKey(target);
    let session = this.methodTarget(key);
    if (!session && connectTimeout > 0) {
      await this.waitForConnect(key, connectTimeout * 1000);
      session = this.methodTarget(key);
    }
    if (!session) {
      throw new EngineError('not-connected', `${describeIdentity(target)} is not connected or has not subscribed to direct methods`);
    }
    const requestId = (this.nextRequestId++).toString(16);
    const payload = Buffer.from(JSON.stringify(request.payload === undefined ? null : request.payload));
    const target2 = session;
    return new Promise<MethodInvokeResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingMethods.delete(requestId);
        reject(new EngineError('timeout', `${describeIdentity(target)} did not answer method "${request.methodName}" within ${responseTimeout} s`));
      }, responseTimeout * 1000);
      this.pendingMethods.set(requestId, { identity: target, resolve, reject, timer });
      try {
        target2.handler.onMethod?.({ requestId, methodName: request.methodName, payload });
      } catch (err) {
        clearTimeout(timer);
        this.pendingMethods.delete(requestId);
        reject(err as Error);
      }
    });
  }

  /** @internal the device's answer to a method request. */
  methodResponse(session: SessionImpl, requestId: string, status: number, payload: Buffer): void {
    const p = this.pendingMethods.get(requestId);
    if (!p || identityKey(p.identity) !== identityKey(session.identity)) {
      log.warn({ session: session.id, requestId }, 'method response for an unknown or expired request ignored');
      return;
    }
    this.pendingMethods.delete(requestId);
    clearTimeout(p.timer);
    let value: unknown = null;
    if (payload.length > 0) {
      const text = payload.toString('utf8');
      try {
        value = JSON.parse(text);
      } catch {
        value = text;
      }
    }
    // The caller serialises the answer again (to the service, or up to a parent gateway).
    if (nestsDeeperThan(value, JSON_MAX_DEPTH)) {
      log.warn({ session: session.id, requestId }, 'method response refused: its payload nests too deeply');
      p.reject(new EngineError('bad-request', tooDeepMessage(`the method response of ${describeIdentity(session.identity)}`, JSON_MAX_DEPTH)));
      return;
    }
    p.resolve({ status, payload: value });
  }

  private methodTarget(key: string): SessionImpl | undefined {
    const s = this.sessions.get(key);
    return s && !s.closed && s.subscriptions.has('methods') ? s : undefined;
  }

  private waitForConnect(key: string, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let set = this.connectWaiters.get(key);
      if (!set) this.connectWaiters.set(key, (set = new Set()));
      const done = (): void => {
        clearTimeout(timer);
        set!.delete(done);
        if (set!.size === 0) this.connectWaiters.delete(key);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }

  /** @internal */
  notifyConnectWaiters(key: string): void {
    const set = this.connectWaiters.get(key);
    if (set) for (const w of [...set]) w();
  }

  /** Service side: queues a C2D message (queue-full when the queue is at its maximum). */
  async sendC2D(deviceId: string, message: Message, opts: C2DSendOptions = {}): Promise<{ messageId: string }> {
    const device = await this.options.registry.getDevice(deviceId);
    if (!device) throw new EngineError('not-found', `device ${deviceId} is not registered`);
    this.checkMessage({ deviceId }, message);
    const { messageId } = this.c2d.enqueue(deviceId, message, { ack: opts.ack, ttlMs: opts.ttlMs });
    const s = this.sessions.get(identityKey({ deviceId }));
    if (s) this.pumpC2D(s);
    return { messageId };
  }

  /** Device side, connectionless (HTTPS): locks and returns the next message, if any. */
  async receiveC2D(deviceId: string): Promise<C2DDelivery | undefined> {
    return this.c2d.lockNext(deviceId, this.options.c2dLockMs ?? 60_000);
  }

  /** Device side, connectionless (HTTPS): settles a lock. not-found when the lock is unknown, precondition when it expired. */
  async settleC2D(deviceId: string, lockToken: string, outcome: C2DOutcome): Promise<void> {
    this.c2d.settle(deviceId, lockToken, outcome);
    const s = this.sessions.get(identityKey({ deviceId }));
    if (s && outcome === 'abandon') this.pumpC2D(s);
  }

  /** Service side: feedback records not yet taken, oldest first. */
  pendingFeedback(limit?: number): C2DFeedbackRecord[] {
    return this.c2d.pendingFeedback(limit);
  }

  /** Service side: removes feedback records once delivered to the service. */
  acknowledgeFeedback(ids: number[]): void {
    this.c2d.acknowledgeFeedback(ids);
  }

  /** @internal hands available C2D messages to a subscribed session, up to its window. */
  pumpC2D(s: SessionImpl): void {
    if (s.closed || !s.subscriptions.has('c2d') || s.identity.moduleId !== undefined || !s.handler.onC2D) return;
    while ((s.inflight?.size ?? 0) < C2D_SESSION_WINDOW) {
      let d: C2DDelivery | undefined;
      try {
        d = this.c2d.lockNext(s.identity.deviceId, C2D_SESSION_LOCK_MS);
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

  /** @internal a persistent session's subscriptions changed. */
  subscriptionsChanged(s: SessionImpl): void {
    if (!s.clean) this.storeCall(() => this.sessionStore?.put(identityKey(s.identity), s.subscriptions));
  }

  private storeCall<T>(fn: () => T): T | undefined {
    try {
      return fn();
    } catch (err) {
      log.error({ err }, 'could not read or write persistent session state');
      return undefined;
    }
  }

  /** @internal */
  sessionEnded(s: SessionImpl, reason: CloseReason): void {
    const key = identityKey(s.identity);
    if (s.external && s.external.size > 0) {
      const pending = [...s.external.values()];
      s.external.clear();
      for (const settle of pending) {
        try {
          settle('abandon');
        } catch (err) {
          log.error({ err, session: s.id }, 'could not hand back a relayed message');
        }
      }
    }
    if (s.inflight && s.inflight.size > 0 && this.queue) {
      try {
        this.queue.release(s.inflight);
      } catch (err) {
        log.error({ err, session: s.id }, 'could not release C2D locks');
      }
      s.inflight.clear();
    }
    if (s.clean) {
      const st = this.persistent.get(key);
      if (st && st.subscriptions === s.subscriptions) this.persistent.delete(key);
    }
    if (this.sessions.get(key) === s) {
      this.sessions.delete(key);
      this.setConnectionState(s.identity, false);
    }
    log.info({ identity: describeIdentity(s.identity), session: s.id, reason }, 'disconnected');
  }

  /** @internal */
  recordActivity(s: SessionImpl): void {
    const reg = this.options.registry as { recordActivity?: (d: string, m: string | undefined) => unknown };
    if (!reg.recordActivity) return;
    try {
      const r = reg.recordActivity(s.identity.deviceId, s.identity.moduleId);
      if (r instanceof Promise) r.catch(() => undefined);
    } catch {
      /* activity time is best effort */
    }
  }

  private setConnectionState(identity: IdentityRef, connected: boolean): void {
    try {
      const r = this.options.registry.setConnectionState(identity.deviceId, identity.moduleId, connected);
      if (r instanceof Promise) r.catch((err) => log.warn({ err, identity: describeIdentity(identity) }, 'could not record connection state'));
    } catch (err) {
      log.warn({ err, identity: describeIdentity(identity) }, 'could not record connection state');
    }
  }

  /**
   * Runs the authorize hook again for every live session: a change to one identity (an edge
   * device disabled, moved or deleted) can take others out of scope.
   */
  private async reauthorizeAll(): Promise<void> {
    const hook = this.options.authorize;
    if (!hook) return;
    for (const s of [...this.sessions.values()]) {
      if (s.closed) continue;
      const refusal = await hook(s.identity, { live: true });
      if (refusal !== undefined) s.end('forbidden', refusal);
    }
  }

  private async recheckIdentity(deviceId: string, moduleId: string | undefined, kind: string): Promise<void> {
    const affected = [...this.sessions.values()].filter(
      (s) => s.identity.deviceId === deviceId && (moduleId === undefined || s.identity.moduleId === moduleId),
    );
    if (/delet/i.test(kind)) {
      if (moduleId === undefined) {
        const device = await this.options.registry.getDevice(deviceId);
        if (!device) {
          this.queue?.purge(deviceId);
          this.storeCall(() => this.sessionStore?.deleteDevice(deviceId));
          for (const k of [...this.persistent.keys()]) if (k === deviceId || k.startsWith(`${deviceId}/`)) this.persistent.delete(k);
        }
      } else {
        const key = identityKey({ deviceId, moduleId });
        this.persistent.delete(key);
        this.storeCall(() => this.sessionStore?.delete(key));
      }
    }
    for (const s of affected) {
      const device = await this.options.registry.getDevice(deviceId);
      const ident = s.identity.moduleId === undefined ? device : device && (await this.options.registry.getModule(deviceId, s.identity.moduleId));
      if (!device || !ident) s.end('identity-deleted', `${describeIdentity(s.identity)} was deleted`);
      else if (device.status === 'disabled' || ident.status === 'disabled') s.end('identity-disabled', `${describeIdentity(s.identity)} was disabled`);
      else if (authTypeChanged(s.auth, ident.authentication?.type)) s.end('identity-changed', `the authentication of ${describeIdentity(s.identity)} changed`);
    }
  }
}

/** A live connection; the engine's side of it. */
class SessionImpl implements Session {
  closed = false;
  /** C2D lock tokens handed to the head and not settled; made at the first (most sessions never get one). */
  inflight?: Set<string>;
  /** Relayed deliveries (relayC2D, deliverInput) not settled yet: lock token -> their settle. */
  external?: Map<string, (outcome: C2DOutcome) => unknown>;
  private expiryTimer?: NodeJS.Timeout;
  private lastActivity = 0;

  constructor(
    private readonly engine: Engine,
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

  sendTelemetryBatch(messages: Message[], origins?: ReadonlyArray<ForwardedOrigin | undefined>, batch?: ForwardedBatch): Promise<StoredEventInfo[]> {
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
    if (identityKey(auth.identity) !== identityKey(this.identity)) throw new EngineError('forbidden', 'a renewed credential must be for the same identity');
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
    this.expiryTimer = setTimeout(() => {
      if (this.auth.expiresAt !== undefined && this.auth.expiresAt <= Date.now()) this.end('token-expired', 'the credential of this connection expired');
      else this.armExpiry();
    }, Math.min(Math.ceil(wait / 1000) * 1000, MAX_TIMER_MS));
    this.expiryTimer.unref();
  }
}

function checkLimit(limit: number): number {
  if (limit === Infinity) return limit;
  if (!Number.isInteger(limit) || limit < 0) throw new EngineError('bad-request', `MaxConnectedClients must be a whole number of 0 or more, got ${String(limit)}`);
  return limit;
}

function authTypeChanged(auth: AuthResult, type: string | undefined): boolean {
  const t = type ?? 'sas';
  if (auth.kind === 'sas') return t !== 'sas';
  if (auth.kind === 'x509-thumbprint') return t !== 'selfSigned';
  return t !== 'certificateAuthority';
}

function withoutMetadata(c: TwinCollection | undefined): TwinCollection {
  if (!c) return { $version: 1 };
  const out: TwinCollection = {};
  for (const [k, v] of Object.entries(c)) if (k !== '$metadata') out[k] = v;
  if (out.$version === undefined) out.$version = 1;
  return out;
}

function secondsOr(v: unknown, dflt: number, min: number, max: number): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  if (!Number.isFinite(n)) return dflt;
  return Math.min(max, Math.max(min, n));
}
