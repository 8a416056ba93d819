import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { EngineError, engineCodeOfStatus } from '../model/errors.ts';
import type { EngineRegistry, SubscriptionKind } from '../engine/types.ts';
import type { IdentityRef, RegistryIdentity } from '../model/identity.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection } from '../model/twin.ts';
import {
  UpstreamDownError,
  UpstreamError,
  type UpstreamC2DDelivery,
  type UpstreamIdentity,
} from '../upstream/index.ts';
import { childLog } from '../util/log.ts';
import { identityKey } from '../model/identity.ts';
import type { ScopeCache } from '../scope/cache.ts';
import { DesiredSync } from './desired-sync.ts';
import type { TwinCache } from './twin-cache.ts';

/**
 * The engine's registry on a gateway. Identities come from the scope cache (synced from the
 * parent, on disk, so devices authenticate offline); twins live upstream and are reached
 * through the upstream link on the device's behalf, with the last properties seen kept on disk
 * for reads while the parent is unreachable; desired pushes, direct methods and C2D from the
 * parent are relayed to the connected device, desired properties kept in step by DesiredSync
 * (nothing missed while a subscription travels up). Connection state is local.
 *
 * An identity's upstream channel is opened when it first subscribes or calls its twin and
 * closed when it disconnects; upstream links for pushes are attached only while the device
 * subscribes to them, so nothing the parent sends waits at a gateway with no listener.
 */

/** What the registry needs of the upstream link. */
export interface UpstreamOpener {
  openIdentity(id: { deviceId: string; moduleId?: string; authChain: string }): UpstreamIdentity;
  readonly connected: boolean;
  /** The identity connected here or left: the link lets the parent see it go. */
  identityPresent?(identity: IdentityRef, present: boolean): void;
}

/** Where relayed pushes go (the gateway wires these to the engine). */
export interface RelayHandlers {
  /** A direct method for a connected identity; call `respond` exactly once. */
  method(identity: IdentityRef, req: MethodRequest, respond: (status: number, payload: Buffer) => void): void;
  /** A C2D message for a connected device; call `settle` exactly once. */
  c2d(
    deviceId: string,
    delivery: UpstreamC2DDelivery,
    settle: (outcome: 'complete' | 'reject' | 'abandon') => void,
  ): void;
  /** A desired properties patch for a subscribed identity; false when nobody took it. */
  desired(identity: IdentityRef, patch: TwinCollection): boolean;
}

interface Entry {
  identity: IdentityRef;
  channel?: UpstreamIdentity;
  /** Push kinds whose upstream callback is registered on `channel` (bits of PUSH_BIT). */
  registered: number;
  /** Push kinds the device wants now (bits of PUSH_BIT). */
  wanted: number;
  connected: boolean;
}

/** The push kinds as bits: an entry per connected identity holds two numbers, not two Sets. */
const PUSH_BIT: Partial<Record<SubscriptionKind, number>> = { desired: 1, methods: 2, c2d: 4 };
const PUSH_KINDS = ['desired', 'methods', 'c2d'] as const;

function describe(id: IdentityRef): string {
  return id.moduleId === undefined ? `device ${id.deviceId}` : `module ${id.deviceId}/${id.moduleId}`;
}

export class GatewayRegistry extends EventEmitter implements EngineRegistry {
  private readonly entries = new Map<string, Entry>();
  private relay?: RelayHandlers;
  private readonly log: Logger;
  private readonly desired: DesiredSync;
  private readonly onScopeIdentity = (deviceId: string, moduleId: string | undefined, kind: string): void => {
    if (kind === 'deleted') this.o.twins.forget(deviceId, moduleId);
    this.emit('identity', deviceId, moduleId, kind);
  };

  constructor(private readonly o: { scope: ScopeCache; twins: TwinCache; upstream: UpstreamOpener; log?: Logger }) {
    super();
    this.log = o.log ?? childLog('gateway-registry');
    this.desired = new DesiredSync({
      twins: o.twins,
      deliver: (id, patch) => this.relay?.desired(id, patch) ?? false,
      wanted: (id) => {
        const e = this.entries.get(identityKey(id));
        return !!e && e.connected && (e.wanted & PUSH_BIT.desired!) !== 0;
      },
      log: this.log,
    });
    o.scope.on('identity', this.onScopeIdentity);
  }

  /** Connects the relays once the engine exists. */
  setRelay(handlers: RelayHandlers): void {
    this.relay = handlers;
  }

  close(): Promise<void> {
    this.o.scope.off('identity', this.onScopeIdentity);
    this.desired.close();
    const closing = [...this.entries.values()].map((e) => this.closeChannel(e));
    this.entries.clear();
    return Promise.all(closing).then(() => undefined);
  }

  // ---- identities ----

  getDevice(deviceId: string): RegistryIdentity | undefined {
    return this.o.scope.getDevice(deviceId);
  }

  getModule(deviceId: string, moduleId: string): RegistryIdentity | undefined {
    return this.o.scope.getModule(deviceId, moduleId);
  }

  // ---- twins ----

  async getTwin(
    deviceId: string,
    moduleId?: string,
  ): Promise<{ properties: { desired: TwinCollection; reported: TwinCollection } }> {
    const id = ref(deviceId, moduleId);
    try {
      const twin = await this.channelOf(id).twinGet();
      this.o.twins.put(deviceId, moduleId, twin);
      return { properties: twin };
    } catch (err) {
      if (!unreachable(err)) throw engineErrorOf(err, `reading the twin of ${describe(id)}`, this.log);
      const cached = this.o.twins.get(deviceId, moduleId);
      if (!cached) {
        throw new EngineError(
          'unavailable',
          `the parent is unreachable and no twin of ${describe(id)} is cached at this gateway yet (${(err as Error).message})`,
        );
      }
      this.log.info(
        { identity: identityKey(id), cachedAt: new Date(cached.updatedMs).toISOString() },
        'parent unreachable: answering the twin read from the cache',
      );
      return { properties: { desired: cached.desired, reported: cached.reported } };
    }
  }

  async updateReported(
    deviceId: string,
    moduleId: string | undefined,
    patch: Record<string, unknown>,
  ): Promise<{ version: number }> {
    const id = ref(deviceId, moduleId);
    try {
      const r = await this.channelOf(id).twinPatchReported(patch);
      this.o.twins.mergeReported(deviceId, moduleId, patch, r.version);
      return r;
    } catch (err) {
      if (unreachable(err))
        throw new EngineError(
          'unavailable',
          `the parent is unreachable; the reported properties of ${describe(id)} were not updated (${(err as Error).message})`,
        );
      throw engineErrorOf(err, `updating the reported properties of ${describe(id)}`, this.log);
    }
  }

  // ---- connection state and pushes ----

  setConnectionState(deviceId: string, moduleId: string | undefined, connected: boolean): void {
    const id = ref(deviceId, moduleId);
    const e = this.entry(id);
    e.connected = connected;
    this.o.upstream.identityPresent?.(id, connected);
    if (connected) {
      // Opened when a subscription or a twin call needs it: an idle device holds no upstream proxy.
      if (e.wanted !== 0) this.ensureChannel(e);
      return;
    }
    e.wanted = 0;
    this.desired.forget(id);
    this.entries.delete(identityKey(id));
    void this.closeChannel(e);
  }

  isConnected(deviceId: string, moduleId?: string): boolean {
    return this.entries.get(identityKey(ref(deviceId, moduleId)))?.connected ?? false;
  }

  /** The engine's subscription hook: attach (or drop) the upstream link that feeds a push kind. */
  subscriptionChanged(identity: IdentityRef, kind: SubscriptionKind, subscribed: boolean): void {
    const bit = PUSH_BIT[kind];
    if (bit === undefined) return;
    const e = this.entry(identity);
    if (subscribed) {
      e.wanted |= bit;
      if (e.connected) this.register(e, kind);
      return;
    }
    e.wanted &= ~bit;
    if (kind === 'desired') this.desired.forget(identity);
    // Upstream callbacks cannot be taken back one by one; a fresh channel carries only what is wanted.
    if ((e.registered & bit) !== 0) {
      const old = e.channel;
      e.channel = undefined;
      e.registered = 0;
      if (old) void old.close().catch(() => undefined);
      if (e.connected) this.ensureChannel(e);
    }
  }

  private entry(id: IdentityRef): Entry {
    const k = identityKey(id);
    let e = this.entries.get(k);
    if (!e) {
      e = { identity: id, registered: 0, wanted: 0, connected: false };
      this.entries.set(k, e);
    }
    return e;
  }

  /** The upstream channel of an identity (opened for a twin call of an identity not connected too). */
  private channelOf(id: IdentityRef): UpstreamIdentity {
    const e = this.entries.get(identityKey(id));
    if (e) return this.ensureChannel(e);
    return this.o.upstream.openIdentity({ ...id, authChain: this.authChain(id) });
  }

  private authChain(id: IdentityRef): string {
    const chain = this.o.scope.authChainOf(id.deviceId, id.moduleId);
    if (chain) return chain;
    // Not (or no longer) in scope: the parent decides; this chain names the gateway as the actor.
    const edge = this.o.scope.edgeDeviceId;
    return id.moduleId === undefined
      ? `${id.deviceId};${edge}`
      : `${id.deviceId}/${id.moduleId};${id.deviceId};${edge}`;
  }

  private ensureChannel(e: Entry): UpstreamIdentity {
    if (!e.channel) {
      e.channel = this.o.upstream.openIdentity({ ...e.identity, authChain: this.authChain(e.identity) });
      e.registered = 0;
    }
    for (const kind of PUSH_KINDS) if ((e.wanted & PUSH_BIT[kind]!) !== 0) this.register(e, kind);
    return e.channel;
  }

  private register(e: Entry, kind: SubscriptionKind): void {
    const ch = e.channel ?? this.ensureChannel(e);
    const bit = PUSH_BIT[kind]!;
    if ((e.registered & bit) !== 0) return;
    e.registered |= bit;
    const id = e.identity;
    if (kind === 'desired') {
      const fetch = () => ch.twinGet();
      ch.onDesired(
        (patch) => this.desired.pushed(id, patch, fetch),
        () => this.desired.live(id, fetch),
      );
    } else if (kind === 'methods') {
      ch.onMethod((req) => {
        let answered = false;
        const respond = (status: number, payload: Buffer) => {
          if (answered) return;
          answered = true;
          ch.methodResponse(req.requestId, status, payload);
        };
        if (!this.relay) return respond(503, Buffer.from(JSON.stringify({ message: 'the gateway is starting' })));
        this.relay.method(id, req, respond);
      });
    } else if (kind === 'c2d' && id.moduleId === undefined) {
      ch.onC2D((delivery) => {
        let settled = false;
        const settle = (outcome: 'complete' | 'reject' | 'abandon') => {
          if (settled) return;
          settled = true;
          ch.settleC2D(delivery.lockToken, outcome).catch((err: unknown) =>
            this.log.warn(
              { identity: identityKey(id), err: (err as Error).message },
              'could not settle a cloud-to-device message upstream (the parent delivers it again)',
            ),
          );
        };
        if (!this.relay) return settle('abandon');
        this.relay.c2d(id.deviceId, delivery, settle);
      });
    }
  }

  private async closeChannel(e: Entry): Promise<void> {
    const ch = e.channel;
    e.channel = undefined;
    e.registered = 0;
    if (!ch) return;
    try {
      await ch.close();
    } catch (err) {
      this.log.debug({ err, identity: identityKey(e.identity) }, 'closing an upstream identity failed');
    }
  }
}

function ref(deviceId: string, moduleId?: string): IdentityRef {
  return moduleId === undefined || moduleId === null ? { deviceId } : { deviceId, moduleId };
}

/**
 * The parent could not be asked (down, timed out, the connection failed), as opposed to
 * answering with a refusal. A fault of this gateway's own (a stack overflow on input it failed
 * to refuse, a bug) is neither, and must not be reported as the parent's absence.
 */
function unreachable(err: unknown): boolean {
  if (err instanceof UpstreamDownError) return true;
  if (err instanceof UpstreamError)
    return (
      err.status === undefined || err.status === 504 || err.status === 503 || err.condition === 'com.microsoft:timeout'
    );
  if (err instanceof EngineError || isProgrammingError(err)) return false;
  // Anything else comes from the transport (socket, TLS, the MQTT or AMQP client).
  return true;
}

function isProgrammingError(err: unknown): boolean {
  return (
    err instanceof RangeError || err instanceof TypeError || err instanceof ReferenceError || err instanceof SyntaxError
  );
}

/**
 * A refusal passed on as the parent gave it: its status and its own message, unwrapped, so a
 * device three layers down reads what the hub said; the gateway's context goes to its log.
 */
function engineErrorOf(err: unknown, what: string, log: Logger): EngineError {
  if (err instanceof EngineError) return err;
  if (err instanceof UpstreamError && err.status !== undefined) {
    log.info({ status: err.status, reason: err.message }, `${what}: refused by the parent`);
    return new EngineError(engineCodeOfStatus(err.status), err.parentMessage ?? err.message);
  }
  log.error({ err }, `${what} failed at this gateway`);
  return new EngineError('internal', `${what} failed at the gateway: ${(err as Error)?.message ?? String(err)}`);
}
