import { EngineError } from '../model/errors.ts';
import { identityKey, type AuthResult, type IdentityRef } from '../model/identity.ts';
import type { C2DQueue } from '../store/c2d-queue.ts';
import { childLog } from '../util/log.ts';
import { SessionImpl, type SessionHost } from './session.ts';
import { describeIdentity } from '../model/identity.ts';
import type { SessionStore } from './session-store.ts';
import type { CloseReason, ConnectOptions, EngineRegistry, SessionHandler, SubscriptionKind } from './types.ts';

const log = childLog('engine');

interface PersistentState {
  subscriptions: Set<SubscriptionKind>;
}

/**
 * The live sessions of a node, one per identity, with what persistent sessions keep across
 * reconnects and restarts, and the node's connection limit (MaxConnectedClients).
 */
export class SessionTable {
  private readonly sessions = new Map<string, SessionImpl>();
  private readonly persistent = new Map<string, PersistentState>();
  private nextSessionId = 1;
  private maxClients: number;
  private store?: SessionStore;
  private queue?: C2DQueue;

  constructor(
    private readonly host: SessionHost,
    private readonly registry: EngineRegistry,
    maxClients: number,
  ) {
    this.maxClients = checkLimit(maxClients);
  }

  /** The engine's database is open: persistent sessions are kept there, C2D locks released there. */
  useStores(store: SessionStore, queue: C2DQueue): void {
    this.store = store;
    this.queue = queue;
  }

  /**
   * Opens a session; a live session of the same identity is closed with 'replaced'.
   * Deliveries (resumed C2D) start on a later turn of the event loop, after the head has
   * acknowledged the connection.
   */
  open(auth: AuthResult, handler: SessionHandler, opts: ConnectOptions): SessionImpl {
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
      log.info(
        { identity: describeIdentity(auth.identity), old: old.id },
        'new connection for the same identity replaces the old one',
      );
      old.end('replaced', 'another connection with the same identity was opened');
    }
    const clean = opts.cleanSession ?? true;
    let state = clean ? undefined : this.persistent.get(key);
    if (!clean && !state) {
      // Not in memory: a session kept from before a restart.
      const stored = this.storeCall(() => this.store?.get(key));
      if (stored) state = { subscriptions: stored };
    }
    const resumed = !!state;
    if (!state) state = { subscriptions: new Set() };
    if (clean) {
      // A clean start discards a kept session; most connections never had one, so look before writing.
      const kept = this.persistent.delete(key) || !!this.storeCall(() => this.store?.get(key));
      if (kept) this.storeCall(() => this.store?.delete(key));
    } else {
      this.persistent.set(key, state);
      this.storeCall(() => this.store?.put(key, state!.subscriptions));
    }
    const session = new SessionImpl(
      this.host,
      this.nextSessionId++,
      auth,
      handler,
      opts.protocol,
      resumed,
      clean,
      state.subscriptions,
      opts.remote,
      opts.viaGateway === true,
    );
    this.sessions.set(key, session);
    this.setConnectionState(auth.identity, true);
    session.armExpiry();
    log.info(
      {
        identity: describeIdentity(auth.identity),
        session: session.id,
        protocol: opts.protocol,
        auth: auth.kind,
        resumed,
        remote: opts.remote,
      },
      'connected',
    );
    if (state.subscriptions.size > 0) {
      for (const kind of state.subscriptions) this.host.subscriptionChanged(session, kind, true);
      setImmediate(() => {
        if (session.closed) return;
        if (state.subscriptions.has('c2d')) this.host.pumpC2D(session);
        this.host.notifyConnectWaiters(key);
      });
    }
    return session;
  }

  /** A session's transport ended: hand back what it held, forget what it need not keep. */
  ended(s: SessionImpl, reason: CloseReason): void {
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

  /** The session of an identity key, closed or not. */
  get(key: string): SessionImpl | undefined {
    return this.sessions.get(key);
  }

  /** The live session of an identity, if any. */
  of(identity: IdentityRef): SessionImpl | undefined {
    return this.sessions.get(identityKey(identity));
  }

  /** Every session now, in the order they connected. */
  all(): SessionImpl[] {
    return [...this.sessions.values()];
  }

  /** Whether the identity has a live session. */
  isConnected(identity: IdentityRef): boolean {
    const s = this.sessions.get(identityKey(identity));
    return !!s && !s.closed;
  }

  /** Whether the identity has a live session subscribed to `kind`. */
  isSubscribed(identity: IdentityRef, kind: SubscriptionKind): boolean {
    const s = this.sessions.get(identityKey(identity));
    return !!s && !s.closed && s.subscriptions.has(kind);
  }

  /** Live sessions now. */
  count(): number {
    return this.sessions.size;
  }

  /** Who is connected now, and over what (for `strata edge list` and /health). */
  identities(): Array<{ deviceId: string; moduleId?: string; protocol: string }> {
    return [...this.sessions.values()].map((s) => ({
      deviceId: s.identity.deviceId,
      moduleId: s.identity.moduleId,
      protocol: s.protocol,
    }));
  }

  /** The live session limit (Infinity when unlimited). */
  get limit(): number {
    return this.maxClients;
  }

  /**
   * Changes the live session limit. When it drops below the number of live sessions, the most
   * recently connected ones are closed ('over-limit') until the count fits: a limit holds for
   * clients that were connected before it was lowered too.
   */
  setLimit(limit: number): number {
    this.maxClients = checkLimit(limit);
    const excess = this.directCount() - this.maxClients;
    if (excess > 0) {
      const newest = [...this.sessions.values()].filter((s) => !s.viaGateway).slice(-excess);
      log.warn(
        { limit: this.maxClients, closing: excess },
        `MaxConnectedClients lowered to ${this.maxClients}: closing the ${excess} most recent connection(s)`,
      );
      for (const s of newest)
        s.end('over-limit', `gateway has reached MaxConnectedClients=${this.maxClients} (the limit was lowered)`);
    }
    return excess > 0 ? excess : 0;
  }

  /** Live sessions of direct clients (not through a child gateway): what MaxConnectedClients limits. */
  private directCount(): number {
    let n = 0;
    for (const s of this.sessions.values()) if (!s.viaGateway) n++;
    return n;
  }

  /** A persistent session's subscriptions changed. */
  subscriptionsChanged(s: SessionImpl): void {
    if (!s.clean) this.storeCall(() => this.store?.put(identityKey(s.identity), s.subscriptions));
  }

  /** A deleted device: its kept sessions and those of its modules go. */
  forgetDevice(deviceId: string): void {
    this.storeCall(() => this.store?.deleteDevice(deviceId));
    for (const k of [...this.persistent.keys()])
      if (k === deviceId || k.startsWith(`${deviceId}/`)) this.persistent.delete(k);
  }

  /** A deleted module: its kept session goes. */
  forgetModule(deviceId: string, moduleId: string): void {
    const key = identityKey({ deviceId, moduleId });
    this.persistent.delete(key);
    this.storeCall(() => this.store?.delete(key));
  }

  recordActivity(s: SessionImpl): void {
    const reg = this.registry as { recordActivity?: (d: string, m: string | undefined) => unknown };
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
      const r = this.registry.setConnectionState(identity.deviceId, identity.moduleId, connected);
      if (r instanceof Promise)
        r.catch((err) => log.warn({ err, identity: describeIdentity(identity) }, 'could not record connection state'));
    } catch (err) {
      log.warn({ err, identity: describeIdentity(identity) }, 'could not record connection state');
    }
  }

  private storeCall<T>(fn: () => T): T | undefined {
    try {
      return fn();
    } catch (err) {
      log.error({ err }, 'could not read or write persistent session state');
      return undefined;
    }
  }
}

function checkLimit(limit: number): number {
  if (limit === Infinity) return limit;
  if (!Number.isInteger(limit) || limit < 0)
    throw new EngineError(
      'bad-request',
      `MaxConnectedClients must be a whole number of 0 or more, got ${String(limit)}`,
    );
  return limit;
}
