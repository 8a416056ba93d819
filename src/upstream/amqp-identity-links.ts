import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Delivery, Message as AmqpMessage, Receiver } from 'rhea';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection } from '../model/twin.ts';
import { fromAmqp } from '../protocols/amqp/message.ts';
import { AmqpConnection } from './amqp-connection.ts';
import { type OutLink, both, closeQuietly, forgetDelivery, onReceiverGone } from './amqp-links.ts';
import { UpstreamDownError, UpstreamError } from './errors.ts';
import type { UpstreamC2DDelivery } from './parent-link.ts';
import { took, tracing } from '../util/latency-trace.ts';

/**
 * The links of one downstream identity on the shared AMQP connection to the parent: telemetry,
 * twin, direct methods and C2D, each attached when first used (the identity authorized first)
 * and carrying the identity's auth chain, each forgotten when it or its connection goes.
 * AmqpIdentityProxy (amqp-identity-proxy.ts) builds the identity's traffic on them.
 */

/** What an identity proxy needs from the AmqpParentLink that owns it. */
export interface AmqpProxyOwner {
  readonly hubHostName: string;
  readonly edgeDeviceId: string;
  readonly operationTimeoutMs: number;
  readonly log: Logger;
  /** The live connection, or undefined while the link is down. */
  current(): AmqpConnection | undefined;
  /** Puts the gateway's token for `identity` on the connection (once per connection). */
  authorize(pc: AmqpConnection, identity: IdentityRef): Promise<void>;
  /** Forgets that `identity` was authorized on `pc` (the parent refused a link of it): the next use puts the token again. */
  forgetAuthorization(pc: AmqpConnection, identity: IdentityRef): void;
  /** Subscribes to the link coming up; returns the unsubscribe. */
  onUp(listener: () => void): () => void;
}

/** The link address path of an identity, e.g. `/devices/d1/modules/m1` (ids as they are, as the SDKs send them). */
export function basePath(id: IdentityRef): string {
  return id.moduleId === undefined ? `/devices/${id.deviceId}` : `/devices/${id.deviceId}/modules/${id.moduleId}`;
}

export interface TwinLinks {
  out: OutLink;
  inn: Receiver;
  pending: Map<string, { resolve: (r: TwinAnswer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>;
  subscribed: boolean;
}

export interface TwinAnswer {
  status: number;
  version?: number;
  body: Buffer;
}

export interface MethodLinks {
  out: OutLink;
  inn: Receiver;
}

/** The links of an identity on one connection. */
export interface PerConnection {
  pc: AmqpConnection;
  telemetry?: Promise<OutLink>;
  twin?: Promise<TwinLinks>;
  methods?: Promise<MethodLinks>;
  methodsReady?: MethodLinks;
  c2d?: Promise<Receiver>;
  locks: Map<string, Delivery>;
}

const TWIN_CREDIT = 100;
const METHOD_CREDIT = 100;
const C2D_CREDIT = 10;
/** How long a C2D delivery may stay unsettled before it is abandoned. */
const C2D_LOCK_MS = 5 * 60_000;

export abstract class AmqpIdentityLinks {
  readonly deviceId: string;
  readonly moduleId?: string;
  protected per?: PerConnection;
  protected readonly desiredCbs: Array<(patch: TwinCollection) => void> = [];
  protected methodCb?: (req: MethodRequest) => void;
  protected c2dCb?: (delivery: UpstreamC2DDelivery) => void;
  protected isClosed = false;

  constructor(
    protected readonly owner: AmqpProxyOwner,
    readonly identity: IdentityRef,
    public authChain: string,
  ) {
    this.deviceId = identity.deviceId;
    if (identity.moduleId !== undefined) this.moduleId = identity.moduleId;
  }

  /** A twin answer or desired properties push arrived on the twin link. */
  protected abstract twinMessage(links: TwinLinks, msg: AmqpMessage): void;
  /** A direct method call arrived on the method link. */
  protected abstract methodRequest(msg: AmqpMessage): void;
  /** Attaches the links the callbacks need again, after a backoff (one was detached). */
  protected abstract scheduleRearm(): void;

  get closed(): boolean {
    return this.isClosed;
  }

  protected describe(): string {
    return this.moduleId === undefined ? `device ${this.deviceId}` : `module ${this.deviceId}/${this.moduleId}`;
  }

  /** This identity's links on the live connection (a new, empty set after a reconnect). */
  protected state(): PerConnection {
    if (this.isClosed) throw new UpstreamError(`the upstream identity ${identityKey(this.identity)} was closed`);
    const pc = this.owner.current();
    if (!pc) throw new UpstreamDownError(`the link to the parent is down; ${this.describe()} cannot reach it now`);
    if (!this.per || this.per.pc !== pc) this.per = { pc, locks: new Map() };
    return this.per;
  }

  protected props(extra: Record<string, string> = {}): Record<string, string> {
    return AmqpConnection.linkProperties(this.authChain, extra);
  }

  /**
   * Attaches links (authorizing the identity first). When the parent refuses them as
   * unauthorized although the identity was authorized (its credential there lapsed or was
   * withdrawn), the token is put again and the attach tried once more; a refusal then is final.
   */
  protected async attaching<T>(pc: AmqpConnection, open: () => Promise<T>): Promise<T> {
    await this.owner.authorize(pc, this.identity);
    try {
      return await open();
    } catch (err) {
      if (!(err instanceof UpstreamError) || err.condition !== 'amqp:unauthorized-access' || pc.closed) throw err;
      this.owner.forgetAuthorization(pc, this.identity);
      await this.owner.authorize(pc, this.identity);
      try {
        return await open();
      } catch (again) {
        if (again instanceof UpstreamError && again.condition === 'amqp:unauthorized-access')
          this.owner.forgetAuthorization(pc, this.identity);
        throw again;
      }
    }
  }

  // ---- telemetry (used by the telemetry endpoint) ----

  protected telemetryLink(): Promise<OutLink> {
    const per = this.state();
    if (per.telemetry) return per.telemetry;
    const opening = (async () => {
      const t0 = tracing ? performance.now() : 0;
      const link = await this.attaching(per.pc, () =>
        per.pc.openSender(
          {
            name: `events-${identityKey(this.identity)}-${randomUUID()}`,
            target: { address: `${basePath(this.identity)}/messages/events` },
            source: { address: `events-${identityKey(this.identity)}` },
            snd_settle_mode: 0,
            rcv_settle_mode: 0,
            properties: this.props(),
          },
          `telemetry (${identityKey(this.identity)})`,
        ),
      );
      if (tracing) took('up.attach', performance.now() - t0);
      link.onGone(() => {
        if (per.telemetry === opening) per.telemetry = undefined;
      });
      return link;
    })();
    per.telemetry = opening;
    opening.catch(() => {
      if (per.telemetry === opening) per.telemetry = undefined;
    });
    return opening;
  }

  // ---- twin ----

  protected twinLinks(): Promise<TwinLinks> {
    const per = this.state();
    if (per.twin) return per.twin;
    const opening = (async () => {
      const channel = `twin:${randomUUID()}`;
      const address = `${basePath(this.identity)}/twin`;
      const props = this.props({ 'com.microsoft:channel-correlation-id': channel });
      const [out, inn] = await this.attaching(per.pc, () =>
        both(
          per.pc.openSender(
            {
              name: `twin-out-${channel}`,
              target: { address },
              source: { address: `twin-out-${identityKey(this.identity)}` },
              snd_settle_mode: 1,
              rcv_settle_mode: 0,
              properties: props,
            },
            'twin',
          ),
          per.pc.openReceiver(
            {
              name: `twin-in-${channel}`,
              source: { address },
              target: { address: `twin-in-${identityKey(this.identity)}` },
              credit_window: TWIN_CREDIT,
              autoaccept: true,
              rcv_settle_mode: 0,
              properties: props,
            },
            'twin',
          ),
        ),
      );
      const links: TwinLinks = { out, inn, pending: new Map(), subscribed: false };
      inn.on('message', (ctx) => this.twinMessage(links, ctx.message!));
      const gone = (why: string) => {
        if (per.twin === opening) per.twin = undefined;
        for (const [cid, p] of links.pending) {
          clearTimeout(p.timer);
          p.reject(per.pc.closed ? new UpstreamDownError(why) : new UpstreamError(why));
          links.pending.delete(cid);
        }
        out.end(why);
        closeQuietly(inn);
        if (this.desiredCbs.length > 0 && !per.pc.closed) this.scheduleRearm();
      };
      out.onGone(gone);
      onReceiverGone(inn, 'twin', gone);
      return links;
    })();
    per.twin = opening;
    opening.catch(() => {
      if (per.twin === opening) per.twin = undefined;
    });
    return opening;
  }

  // ---- direct methods ----

  protected methodLinks(): Promise<MethodLinks> {
    const per = this.state();
    if (per.methods) return per.methods;
    const opening = (async () => {
      const channel = `methods:${randomUUID()}`;
      const address = `${basePath(this.identity)}/methods/devicebound`;
      const props = this.props({ 'com.microsoft:channel-correlation-id': channel });
      const [inn, out] = await this.attaching(per.pc, () =>
        both(
          per.pc.openReceiver(
            {
              name: `methods-in-${channel}`,
              source: { address },
              target: { address: `methods-in-${identityKey(this.identity)}` },
              credit_window: METHOD_CREDIT,
              autoaccept: true,
              rcv_settle_mode: 0,
              properties: props,
            },
            'methods',
          ),
          per.pc.openSender(
            {
              name: `methods-out-${channel}`,
              target: { address },
              source: { address: `methods-out-${identityKey(this.identity)}` },
              snd_settle_mode: 1,
              rcv_settle_mode: 0,
              properties: props,
            },
            'methods',
          ),
        ),
      );
      const links: MethodLinks = { out, inn };
      inn.on('message', (ctx) => this.methodRequest(ctx.message!));
      const gone = () => {
        if (per.methods === opening) per.methods = undefined;
        if (per.methodsReady === links) per.methodsReady = undefined;
        out.end('method links closed');
        closeQuietly(inn);
        if (this.methodCb && !per.pc.closed) this.scheduleRearm();
      };
      out.onGone(gone);
      onReceiverGone(inn, 'methods', gone);
      per.methodsReady = links;
      return links;
    })();
    per.methods = opening;
    opening.catch(() => {
      if (per.methods === opening) per.methods = undefined;
    });
    return opening;
  }

  // ---- cloud-to-device ----

  protected c2dLink(): Promise<Receiver> {
    const per = this.state();
    if (per.c2d) return per.c2d;
    if (this.moduleId !== undefined)
      return Promise.reject(
        new UpstreamError(`${this.describe()}: modules receive no cloud-to-device messages`, 'amqp:not-found', 404),
      );
    const opening = (async () => {
      const address = `${basePath(this.identity)}/messages/devicebound`;
      const inn = await this.attaching(per.pc, () =>
        per.pc.openReceiver(
          {
            name: `c2d-${identityKey(this.identity)}-${randomUUID()}`,
            source: { address },
            target: { address: `c2d-${identityKey(this.identity)}` },
            credit_window: C2D_CREDIT,
            autoaccept: false,
            rcv_settle_mode: 0,
            properties: this.props(),
          },
          'cloud-to-device',
        ),
      );
      inn.on('message', (ctx) => {
        const lockToken = randomUUID();
        const held = ctx.delivery!;
        per.locks.set(lockToken, held);
        // A delivery nobody settles would pin rhea's session buffer (see forgetDelivery): give it back.
        setTimeout(() => {
          if (per.locks.get(lockToken) !== held) return;
          per.locks.delete(lockToken);
          this.owner.log.warn(
            { identity: identityKey(this.identity), lockToken },
            `cloud-to-device message not settled within ${C2D_LOCK_MS / 1000} s; abandoned (the parent delivers it again)`,
          );
          held.release();
        }, C2D_LOCK_MS).unref();
        const msg = ctx.message!;
        const delivery: UpstreamC2DDelivery = {
          lockToken,
          message: fromAmqp(msg),
          deliveryCount: (Number(msg.delivery_count) || 0) + 1,
        };
        if (!this.c2dCb) {
          per.locks.delete(lockToken);
          ctx.delivery!.release();
          return;
        }
        try {
          this.c2dCb(delivery);
        } catch (err) {
          this.owner.log.error({ err, identity: identityKey(this.identity) }, 'C2D callback failed');
        }
      });
      onReceiverGone(inn, 'cloud-to-device', () => {
        if (per.c2d === opening) per.c2d = undefined;
        // Never to be settled now (the parent delivers them again); rhea must not keep them.
        for (const d of per.locks.values()) forgetDelivery(d);
        per.locks.clear();
        closeQuietly(inn);
        if (this.c2dCb && !per.pc.closed) this.scheduleRearm();
      });
      return inn;
    })();
    per.c2d = opening;
    opening.catch(() => {
      if (per.c2d === opening) per.c2d = undefined;
    });
    return opening;
  }
}

/** Detaches every link of `per` (the identity is closing); a C2D message still held goes back to the parent. */
export async function detachAll(per: PerConnection): Promise<void> {
  const settle = async <T>(p: Promise<T> | undefined, fn: (v: T) => void) => {
    if (!p) return;
    try {
      fn(await p);
    } catch {
      /* never opened */
    }
  };
  await Promise.all([
    settle(per.telemetry, (l) => l.end('identity closed')),
    settle(per.twin, (l) => {
      l.out.end('identity closed');
      closeQuietly(l.inn);
    }),
    settle(per.methods, (l) => {
      l.out.end('identity closed');
      closeQuietly(l.inn);
    }),
    settle(per.c2d, (r) => {
      for (const d of per.locks.values()) d.release();
      per.locks.clear();
      closeQuietly(r);
    }),
  ]);
}
