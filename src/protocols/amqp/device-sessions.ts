import type { Logger } from 'pino';
import type { Engine } from '../../engine/engine.ts';
import type { CloseReason, Protocol, Session, SessionHandler, SubscriptionKind } from '../../engine/types.ts';
import type { C2DDelivery } from '../../model/c2d.ts';
import { identityKey, type ClientCertificate, type IdentityRef } from '../../model/identity.ts';
import type { MethodRequest } from '../../model/methods.ts';
import type { TwinCollection } from '../../model/twin.ts';
import { describeIdentity } from '../../model/identity.ts';
import { claimFromCertificate, type ClaimSet, type IdentityClaim, type TokenChecker } from './claims.ts';
import { AmqpRefusal, amqpErrorOf, CONDITION, type AmqpErrorInfo } from './errors.ts';

/**
 * The device and module identities that have links on one connection. Each gets one engine
 * Session (opened at its first link, closed with its last), shared by all of its links: the
 * engine sees one connected device however many links the SDK attaches.
 */

/**
 * What the device sessions need of their connection: its credentials and where it comes from.
 * The connection (connection.ts) is one; stated here so that this file needs nothing above it.
 */
export interface SessionHost {
  readonly claims: ClaimSet;
  readonly clientCertificate: ClientCertificate | undefined;
  readonly shared: { readonly checker: TokenChecker; readonly engine: Pick<Engine, 'connect'> };
  readonly transport: Protocol;
  readonly remote: string;
  readonly log: Logger;
}

/** A link of an identity, as the identity needs to reach it. */
export interface Member {
  detach(error: AmqpErrorInfo): void;
}

/** Where the engine's pushes for an identity go (C2D, inputs, methods, desired). */
export interface DeliveryTarget {
  deliver(delivery: C2DDelivery, inputName?: string): void;
}
export interface MethodTarget {
  request(req: MethodRequest): void;
}
export interface DesiredTarget {
  /** Only targets whose twin link subscribed (PUT) receive pushes. */
  readonly wantsDesired: boolean;
  desired(patch: TwinCollection): void;
}

type TargetKind = 'c2d' | 'inputs' | 'methods' | 'desired';

export class IdentityState implements SessionHandler {
  readonly key: string;
  session?: Session;
  private opening?: Promise<Session>;
  private readonly members = new Set<Member>();
  private readonly targets = {
    c2d: new Set<DeliveryTarget>(),
    inputs: new Set<DeliveryTarget>(),
    methods: new Set<MethodTarget>(),
    desired: new Set<DesiredTarget>(),
  };
  /** Method requests sent and not yet answered: lower-cased id on the wire -> engine request id. */
  readonly pendingMethods = new Map<string, string>();
  private ended = false;

  constructor(
    readonly owner: DeviceSessions,
    readonly identity: IdentityRef,
  ) {
    this.key = identityKey(identity);
  }

  get conn(): SessionHost {
    return this.owner.conn;
  }

  /** Resolves once the identity is authorized on this connection and its engine session is open. */
  async ready(): Promise<Session> {
    if (this.session && !this.session.closed) return this.session;
    if (!this.opening) {
      this.opening = this.open().finally(() => {
        this.opening = undefined;
      });
    }
    return this.opening;
  }

  private async open(): Promise<Session> {
    const conn = this.conn;
    let claim: IdentityClaim | undefined = conn.claims.identity(this.identity);
    if (!claim && conn.clientCertificate) {
      claim = await claimFromCertificate(this.identity, conn.clientCertificate, conn.shared.checker);
      conn.claims.put(claim);
      conn.log.info(
        { who: describeIdentity(this.identity), kind: claim.auth.kind },
        'authenticated by client certificate',
      );
    }
    if (!claim) {
      throw new AmqpRefusal(
        CONDITION.unauthorized,
        `no credential for ${describeIdentity(this.identity)} on this connection: put a SAS token for it on $cbs, or connect with its client certificate`,
      );
    }
    const session = await conn.shared.engine.connect(claim.auth, this, {
      protocol: conn.transport,
      cleanSession: true,
      remote: conn.remote,
      viaGateway: claim.onBehalfOf === true,
    });
    if (this.ended || this.members.size === 0) {
      // Every link went away while the session was opening.
      session.close('client');
      throw new AmqpRefusal(CONDITION.detachForced, 'the link closed while it was being opened');
    }
    this.session = session;
    for (const kind of ['c2d', 'inputs', 'methods'] as const) if (this.targets[kind].size > 0) session.subscribe(kind);
    if ([...this.targets.desired].some((t) => t.wantsDesired)) session.subscribe('desired');
    return session;
  }

  join(member: Member): void {
    this.members.add(member);
  }

  /** Joins `member` and waits for the session; on a refusal the member leaves again and it is thrown. */
  async enter(member: Member): Promise<Session> {
    this.join(member);
    try {
      return await this.ready();
    } catch (err) {
      this.leave(member);
      throw err;
    }
  }

  /** A link of this identity is gone; the last one closes the engine session. */
  leave(member: Member): void {
    this.members.delete(member);
    if (this.members.size === 0) this.finish('client');
  }

  addTarget(kind: 'c2d' | 'inputs', t: DeliveryTarget): void;
  addTarget(kind: 'methods', t: MethodTarget): void;
  addTarget(kind: 'desired', t: DesiredTarget): void;
  addTarget(kind: TargetKind, t: never): void {
    const set = this.targets[kind] as Set<unknown>;
    set.add(t);
    // Desired pushes start with the twin link's PUT, not with its attach.
    if (set.size === 1 && kind !== 'desired') this.subscribe(kind);
  }

  removeTarget(kind: TargetKind, t: unknown): void {
    const set = this.targets[kind] as Set<unknown>;
    if (!set.delete(t)) return;
    if (set.size === 0 && this.session && !this.session.closed) {
      try {
        this.session.unsubscribe(kind);
      } catch (err) {
        this.conn.log.debug({ err: String(err) }, 'unsubscribe failed');
      }
    }
  }

  /** Desired pushes start for a twin link (PUT on its request link). */
  subscribeDesired(): void {
    this.subscribe('desired');
  }

  private subscribe(kind: SubscriptionKind): void {
    if (!this.session || this.session.closed) return;
    try {
      this.session.subscribe(kind);
    } catch (err) {
      this.conn.log.warn({ err: String(err), kind }, 'subscribe failed');
    }
  }

  // ---- SessionHandler: the engine reaching this identity ----

  onC2D(delivery: C2DDelivery): void {
    this.deliverTo('c2d', delivery);
  }

  onInput(inputName: string, delivery: C2DDelivery): void {
    this.deliverTo('inputs', delivery, inputName);
  }

  private deliverTo(kind: 'c2d' | 'inputs', delivery: C2DDelivery, inputName?: string): void {
    const target = this.targets[kind].values().next().value as DeliveryTarget | undefined;
    if (target) {
      target.deliver(delivery, inputName);
      return;
    }
    // The link went away between subscribe and push: hand it back for the next receiver.
    this.session?.settleC2D(delivery.lockToken, 'abandon').catch(() => {});
  }

  onDesired(patch: TwinCollection): void {
    for (const t of this.targets.desired) if (t.wantsDesired) t.desired(patch);
  }

  onMethod(request: MethodRequest): void {
    const target = this.targets.methods.values().next().value as MethodTarget | undefined;
    if (target) target.request(request);
    else
      this.session?.methodResponse(
        request.requestId,
        404,
        Buffer.from(JSON.stringify({ message: 'the device has no method link' })),
      );
  }

  close(reason: CloseReason, detail?: string): void {
    this.session = undefined;
    if (this.ended) return;
    this.conn.log.info(
      { who: describeIdentity(this.identity), reason, detail },
      'engine ended the device session; detaching its links',
    );
    this.detachAll(errorForReason(reason, detail));
    this.finish(undefined);
  }

  /** The identity's credential lapsed: detach its links and end its session. */
  credentialLapsed(): void {
    if (this.ended) return;
    // End the session first, so the engine records why (the detaches would end it as 'client').
    this.finish('token-expired');
    this.detachAll({
      condition: CONDITION.unauthorized,
      description: `the credential of ${describeIdentity(this.identity)} has expired; put a new token on $cbs`,
    });
  }

  private detachAll(error: AmqpErrorInfo): void {
    for (const m of [...this.members]) {
      try {
        m.detach(error);
      } catch {
        /* best effort */
      }
    }
  }

  /** Ends the session (with `reason`, unless the engine ended it) and forgets this identity. */
  finish(reason: CloseReason | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.owner.forget(this);
    const s = this.session;
    this.session = undefined;
    if (s && !s.closed && reason) {
      try {
        s.close(reason);
      } catch {
        /* already closing */
      }
    }
  }
}

function errorForReason(reason: CloseReason, detail?: string): AmqpErrorInfo {
  const description = detail ? `${reason}: ${detail}` : reason;
  switch (reason) {
    case 'replaced':
      return {
        condition: CONDITION.stolen,
        description: `another connection opened for this identity (${description})`,
      };
    case 'token-expired':
    case 'identity-disabled':
    case 'identity-deleted':
    case 'identity-changed':
    case 'forbidden':
      return { condition: CONDITION.unauthorized, description };
    default:
      return { condition: CONDITION.detachForced, description };
  }
}

export class DeviceSessions {
  private readonly states = new Map<string, IdentityState>();

  constructor(readonly conn: SessionHost) {}

  /** The state of an identity on this connection, created on first use. */
  stateFor(identity: IdentityRef): IdentityState {
    const key = identityKey(identity);
    let s = this.states.get(key);
    if (!s) {
      s = new IdentityState(this, identity);
      this.states.set(key, s);
    }
    return s;
  }

  /** @internal */
  forget(state: IdentityState): void {
    if (this.states.get(state.key) === state) this.states.delete(state.key);
  }

  /** A renewed token (CBS put-token again) reaches the open session. */
  renewed(claim: IdentityClaim): void {
    const s = this.states.get(identityKey(claim.identity));
    if (s?.session && !s.session.closed) {
      try {
        s.session.renew(claim.auth);
      } catch (err) {
        this.conn.log.warn({ err: amqpErrorOf(err).description }, 'session renewal failed');
      }
    }
  }

  credentialLapsed(identity: IdentityRef): void {
    this.states.get(identityKey(identity))?.credentialLapsed();
  }

  closeAll(): void {
    for (const s of [...this.states.values()]) s.finish('client');
  }
}
