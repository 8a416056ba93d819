import { randomUUID } from 'node:crypto';
import rhea, { type Delivery, type Message as AmqpMessage, type Receiver } from 'rhea';
import type { C2DOutcome } from '../model/c2d.ts';
import type { IdentityRef } from '../model/identity.ts';
import type { Message } from '../model/message.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { BATCH_FORMAT, batchHead, encodeBatchOfSections, MAX_BATCH_BYTES, type BatchOrigin } from '../protocols/amqp/batch.ts';
import { DATA_HEADER, encodeDataSections } from '../protocols/amqp/encode-message.ts';
import { bodyBytes, fromAmqp, idToAmqp, idToString, toAmqp } from '../protocols/amqp/message.ts';
import { Backoff } from './backoff.ts';
import { basePath, type UpstreamCore } from './core.ts';
import { identityKey } from '../model/identity.ts';
import { OutLink, UpstreamDownError, UpstreamError, forgetDelivery, isPermanentForMessage, onReceiverGone, twinRefusal, type SendOutcome } from './links.ts';
import { ParentConnection } from './parent-connection.ts';

/**
 * One downstream identity as the parent sees it through the gateway: its twin, direct methods
 * and C2D links on the shared upstream connection, opened when first used, each carrying the
 * identity's auth chain. Callbacks registered with onDesired / onMethod / onC2D keep their
 * links attached: after a reconnect (or a link the parent dropped) they are attached again.
 */

/** A C2D message from the parent, locked until settled with `settleC2D(lockToken, ...)`. */
export interface UpstreamC2DDelivery {
  lockToken: string;
  message: Message;
  /** How often the parent has delivered it, this time included. */
  deliveryCount: number;
}

export interface UpstreamIdentity {
  readonly deviceId: string;
  readonly moduleId?: string;
  readonly authChain: string;
  twinGet(): Promise<TwinProperties>;
  /** Merge patch (null deletes); resolves with the new reported `$version`. */
  twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }>;
  /**
   * Desired property patches pushed by the parent (`$version` included). `onLive` is called
   * each time the parent confirms the subscription (first time, after a reconnect or a link
   * attached again): patches made before that moment were not pushed here.
   */
  onDesired(cb: (patch: TwinCollection) => void, onLive?: () => void): void;
  /** Direct method calls for this identity; answer with methodResponse. */
  onMethod(cb: (req: MethodRequest) => void): void;
  methodResponse(requestId: string, status: number, payload: Buffer): void;
  /** Cloud-to-device messages (devices only); settle each with settleC2D. */
  onC2D(cb: (delivery: UpstreamC2DDelivery) => void): void;
  settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void>;
  /**
   * Resolves once every registered callback's link is attached on the live connection (so the
   * parent routes methods, C2D and desired pushes here); rejects with the parent's refusal.
   */
  ready(): Promise<void>;
  /** Detaches this identity's links. */
  close(): Promise<void>;
}

interface TwinLinks {
  out: OutLink;
  inn: Receiver;
  pending: Map<string, { resolve: (r: TwinAnswer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>;
  subscribed: boolean;
}

interface TwinAnswer {
  status: number;
  version?: number;
  body: Buffer;
}

interface MethodLinks {
  out: OutLink;
  inn: Receiver;
}

/** The links of an identity on one connection. */
interface PerConnection {
  pc: ParentConnection;
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

export class IdentityChannel implements UpstreamIdentity {
  readonly deviceId: string;
  readonly moduleId?: string;
  private per?: PerConnection;
  private readonly desiredCbs: Array<(patch: TwinCollection) => void> = [];
  private readonly desiredLiveCbs: Array<() => void> = [];
  private methodCb?: (req: MethodRequest) => void;
  private c2dCb?: (delivery: UpstreamC2DDelivery) => void;
  private isClosed = false;
  private rearmTimer?: NodeJS.Timeout;
  private readonly rearmBackoff = new Backoff(1000, 30_000);
  private readonly unsubscribeUp: () => void;
  private lastArm: Promise<void> = Promise.resolve();

  constructor(
    private readonly core: UpstreamCore,
    readonly identity: IdentityRef,
    public authChain: string,
  ) {
    this.deviceId = identity.deviceId;
    if (identity.moduleId !== undefined) this.moduleId = identity.moduleId;
    this.unsubscribeUp = core.onUp(() => this.rearm());
  }

  get closed(): boolean {
    return this.isClosed;
  }

  private describe(): string {
    return this.moduleId === undefined ? `device ${this.deviceId}` : `module ${this.deviceId}/${this.moduleId}`;
  }

  /** This identity's links on the live connection (a new, empty set after a reconnect). */
  private state(): PerConnection {
    if (this.isClosed) throw new UpstreamError(`the upstream identity ${identityKey(this.identity)} was closed`);
    const pc = this.core.current();
    if (!pc) throw new UpstreamDownError(`the link to the parent is down; ${this.describe()} cannot reach it now`);
    if (!this.per || this.per.pc !== pc) this.per = { pc, locks: new Map() };
    return this.per;
  }

  private props(extra: Record<string, string> = {}): Record<string, string> {
    return ParentConnection.linkProperties(this.authChain, extra);
  }

  /**
   * Attaches links (authorizing the identity first). When the parent refuses them as
   * unauthorized although the identity was authorized (its credential there lapsed or was
   * withdrawn), the token is put again and the attach tried once more; a refusal then is final.
   */
  private async attaching<T>(pc: ParentConnection, open: () => Promise<T>): Promise<T> {
    await this.core.authorize(pc, this.identity);
    try {
      return await open();
    } catch (err) {
      if (!(err instanceof UpstreamError) || err.condition !== 'amqp:unauthorized-access' || pc.closed) throw err;
      this.core.forgetAuthorization(pc, this.identity);
      await this.core.authorize(pc, this.identity);
      try {
        return await open();
      } catch (again) {
        if (again instanceof UpstreamError && again.condition === 'amqp:unauthorized-access') this.core.forgetAuthorization(pc, this.identity);
        throw again;
      }
    }
  }

  // ---- telemetry (used by the telemetry endpoint) ----

  private telemetryLink(): Promise<OutLink> {
    const per = this.state();
    if (per.telemetry) return per.telemetry;
    const opening = (async () => {
      const link = await this.attaching(per.pc, () => per.pc.openSender(
        {
          name: `events-${identityKey(this.identity)}-${randomUUID()}`,
          target: { address: `${basePath(this.identity)}/messages/events` },
          source: { address: `events-${identityKey(this.identity)}` },
          snd_settle_mode: 0,
          rcv_settle_mode: 0,
          properties: this.props(),
        },
        `telemetry (${identityKey(this.identity)})`,
      ));
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

  /**
   * Sends messages in order on this identity's telemetry link; one outcome per message. Several
   * messages go as IoT Hub batches (one transfer each, up to the batch size limit); a batch
   * refused for something one of its messages did wrong is sent again one message at a time, so
   * only that message is refused. With `origin` (messages from the gateway's store: their stream,
   * numbers and the number sent before them), every batch names it, so the parent stores each
   * message once even when it is sent again.
   */
  async sendTelemetry(messages: readonly Message[], origin?: BatchOrigin): Promise<SendOutcome[]> {
    const link = await this.telemetryLink();
    // All messages encoded once into one buffer of data sections: a batch is a slice of it,
    // a message sent alone the slice of its section. When they all fit in one batch (the
    // usual case) its head goes into room left in front, so the batch is never copied.
    const head = origin && batchHead(origin);
    const { buf, at } = encodeDataSections(messages, head?.length ?? 0);
    const one = (i: number) => buf.subarray(at[i]! + DATA_HEADER, at[i + 1]);
    if (messages.length === 1 && !origin) return [await link.sendEncoded(one(0), 0)];
    const runs = runsOf(at);
    if (runs.length === 1) {
      head?.copy(buf, 0);
      const o = await link.sendEncoded(buf.subarray(0, at[messages.length]), BATCH_FORMAT);
      if (!isPermanentForMessage(o)) return messages.map(() => o);
      return Promise.all(messages.map((_, i) => link.sendEncoded(one(i), 0)));
    }
    let prev = origin?.prev ?? 0;
    const outcomes = await Promise.all(
      runs.map(async ([from, to]) => {
        let chunkOrigin: BatchOrigin | undefined;
        if (origin) {
          const seqs = origin.seqs.slice(from, to);
          chunkOrigin = { stream: origin.stream, prev, seqs };
          prev = seqs[seqs.length - 1]!;
        } else if (to - from === 1) {
          return [await link.sendEncoded(one(from), 0)];
        }
        const o = await link.sendEncoded(encodeBatchOfSections(buf.subarray(at[from], at[to]), chunkOrigin), BATCH_FORMAT);
        const count = to - from;
        if (!isPermanentForMessage(o)) return Array.from({ length: count }, () => o);
        return Promise.all(Array.from({ length: count }, (_, k) => link.sendEncoded(one(from + k), 0)));
      }),
    );
    return outcomes.flat();
  }

  /**
   * Sends a batch encoded already (a child gateway's, passed on as it came) on this identity's
   * telemetry link, and reports the parent's outcome. Rejects, having sent nothing, when the link
   * cannot be attached.
   */
  async sendBatchPayload(payload: Buffer): Promise<SendOutcome> {
    const link = await this.telemetryLink();
    return link.sendEncoded(payload, BATCH_FORMAT);
  }

  // ---- twin ----

  private twinLinks(): Promise<TwinLinks> {
    const per = this.state();
    if (per.twin) return per.twin;
    const opening = (async () => {
      const channel = `twin:${randomUUID()}`;
      const address = `${basePath(this.identity)}/twin`;
      const props = this.props({ 'com.microsoft:channel-correlation-id': channel });
      const [out, inn] = await this.attaching(per.pc, () => both(
        per.pc.openSender({ name: `twin-out-${channel}`, target: { address }, source: { address: `twin-out-${identityKey(this.identity)}` }, snd_settle_mode: 1, rcv_settle_mode: 0, properties: props }, 'twin'),
        per.pc.openReceiver({ name: `twin-in-${channel}`, source: { address }, target: { address: `twin-in-${identityKey(this.identity)}` }, credit_window: TWIN_CREDIT, autoaccept: true, rcv_settle_mode: 0, properties: props }, 'twin'),
      ));
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

  private twinMessage(links: TwinLinks, msg: AmqpMessage): void {
    const cid = idToString(msg.correlation_id);
    const waiting = cid === undefined ? undefined : links.pending.get(cid);
    if (waiting) {
      links.pending.delete(cid!);
      clearTimeout(waiting.timer);
      const ann = (msg.message_annotations ?? {}) as Record<string, unknown>;
      const version = ann.version === undefined || ann.version === null ? undefined : Number(ann.version);
      waiting.resolve({ status: Number(ann.status ?? 0), version: Number.isFinite(version) ? version : undefined, body: bodyBytes(msg.body) });
      return;
    }
    if (cid !== undefined) {
      // An answer to a request given up on (timed out): pushes carry no correlation id.
      this.core.log.debug({ identity: identityKey(this.identity), correlationId: cid }, 'late twin answer from the parent; ignored');
      return;
    }
    // Anything else on the twin link is a desired properties push.
    let patch: TwinCollection;
    try {
      patch = JSON.parse(bodyBytes(msg.body).toString('utf8')) as TwinCollection;
    } catch {
      this.core.log.warn({ identity: identityKey(this.identity) }, 'desired properties push from the parent is not JSON; ignored');
      return;
    }
    for (const cb of this.desiredCbs) {
      try {
        cb(patch);
      } catch (err) {
        this.core.log.error({ err, identity: identityKey(this.identity) }, 'desired properties callback failed');
      }
    }
  }

  private twinRequest(links: TwinLinks, operation: string, resource?: string, body = ' '): Promise<TwinAnswer> {
    const cid = randomUUID();
    const annotations: Record<string, string> = { operation };
    if (resource) annotations.resource = resource;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        links.pending.delete(cid);
        reject(new UpstreamError(`the parent did not answer twin ${operation} for ${this.describe()} within ${this.core.operationTimeoutMs} ms`, 'com.microsoft:timeout', 504));
      }, this.core.operationTimeoutMs);
      links.pending.set(cid, { resolve, reject, timer });
      links.out.post({ correlation_id: cid, message_annotations: annotations, body: rhea.message.data_section(Buffer.from(body, 'utf8')) });
    });
  }

  private async twinCall(operation: string, resource?: string, body?: string): Promise<TwinAnswer> {
    const links = await this.twinLinks();
    const answer = await this.twinRequest(links, operation, resource, body);
    if (answer.status < 200 || answer.status >= 300) {
      throw twinRefusal(operation, this.describe(), answer.status, answer.body);
    }
    return answer;
  }

  async twinGet(): Promise<TwinProperties> {
    const answer = await this.twinCall('GET');
    const doc = JSON.parse(answer.body.toString('utf8') || '{}') as Partial<TwinProperties>;
    return { desired: doc.desired ?? { $version: 1 }, reported: doc.reported ?? { $version: 1 } };
  }

  async twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }> {
    const answer = await this.twinCall('PATCH', '/properties/reported', JSON.stringify(patch));
    return { version: answer.version ?? 0 };
  }

  private async subscribeDesired(links: TwinLinks): Promise<void> {
    if (links.subscribed) return;
    const answer = await this.twinRequest(links, 'PUT', '/notifications/twin/properties/desired');
    if (answer.status < 200 || answer.status >= 300) {
      throw new UpstreamError(`the parent refused desired property updates for ${this.describe()} (${answer.status}): ${answer.body.toString('utf8')}`, undefined, answer.status);
    }
    links.subscribed = true;
    for (const live of this.desiredLiveCbs) {
      try {
        live();
      } catch (err) {
        this.core.log.error({ err, identity: identityKey(this.identity) }, 'desired subscription callback failed');
      }
    }
  }

  onDesired(cb: (patch: TwinCollection) => void, onLive?: () => void): void {
    this.desiredCbs.push(cb);
    if (onLive) this.desiredLiveCbs.push(onLive);
    this.armSoon();
  }

  // ---- direct methods ----

  private methodLinks(): Promise<MethodLinks> {
    const per = this.state();
    if (per.methods) return per.methods;
    const opening = (async () => {
      const channel = `methods:${randomUUID()}`;
      const address = `${basePath(this.identity)}/methods/devicebound`;
      const props = this.props({ 'com.microsoft:channel-correlation-id': channel });
      const [inn, out] = await this.attaching(per.pc, () => both(
        per.pc.openReceiver({ name: `methods-in-${channel}`, source: { address }, target: { address: `methods-in-${identityKey(this.identity)}` }, credit_window: METHOD_CREDIT, autoaccept: true, rcv_settle_mode: 0, properties: props }, 'methods'),
        per.pc.openSender({ name: `methods-out-${channel}`, target: { address }, source: { address: `methods-out-${identityKey(this.identity)}` }, snd_settle_mode: 1, rcv_settle_mode: 0, properties: props }, 'methods'),
      ));
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

  private methodRequest(msg: AmqpMessage): void {
    const requestId = idToString(msg.correlation_id);
    const app = (msg.application_properties ?? {}) as Record<string, unknown>;
    const methodName = app['IoThub-methodname'] ?? app['iothub-methodname'];
    if (requestId === undefined || methodName === undefined) {
      this.core.log.warn({ identity: identityKey(this.identity) }, 'method request from the parent without correlation id or method name; ignored');
      return;
    }
    const req: MethodRequest = { requestId, methodName: String(methodName), payload: bodyBytes(msg.body) };
    if (!this.methodCb) {
      this.methodResponse(requestId, 501, Buffer.from(JSON.stringify({ message: `${this.describe()} takes no direct methods here` })));
      return;
    }
    try {
      this.methodCb(req);
    } catch (err) {
      this.core.log.error({ err, identity: identityKey(this.identity) }, 'method callback failed');
    }
  }

  onMethod(cb: (req: MethodRequest) => void): void {
    this.methodCb = cb;
    this.armSoon();
  }

  methodResponse(requestId: string, status: number, payload: Buffer): void {
    const links = this.per?.pc === this.core.current() ? this.per?.methodsReady : undefined;
    if (!links || !links.out.open) {
      this.core.log.warn({ identity: identityKey(this.identity), requestId }, 'method response dropped: the method link to the parent is down (the caller times out)');
      return;
    }
    links.out.post({
      correlation_id: idToAmqp(requestId),
      application_properties: { 'IoThub-status': rhea.types.wrap_int(status) },
      body: rhea.message.data_section(payload),
    });
  }

  // ---- cloud-to-device ----

  private c2dLink(): Promise<Receiver> {
    const per = this.state();
    if (per.c2d) return per.c2d;
    if (this.moduleId !== undefined) return Promise.reject(new UpstreamError(`${this.describe()}: modules receive no cloud-to-device messages`, 'amqp:not-found', 404));
    const opening = (async () => {
      const address = `${basePath(this.identity)}/messages/devicebound`;
      const inn = await this.attaching(per.pc, () => per.pc.openReceiver(
        { name: `c2d-${identityKey(this.identity)}-${randomUUID()}`, source: { address }, target: { address: `c2d-${identityKey(this.identity)}` }, credit_window: C2D_CREDIT, autoaccept: false, rcv_settle_mode: 0, properties: this.props() },
        'cloud-to-device',
      ));
      inn.on('message', (ctx) => {
        const lockToken = randomUUID();
        const held = ctx.delivery!;
        per.locks.set(lockToken, held);
        // A delivery nobody settles would pin rhea's session buffer (see forgetDelivery): give it back.
        setTimeout(() => {
          if (per.locks.get(lockToken) !== held) return;
          per.locks.delete(lockToken);
          this.core.log.warn({ identity: identityKey(this.identity), lockToken }, `cloud-to-device message not settled within ${C2D_LOCK_MS / 1000} s; abandoned (the parent delivers it again)`);
          held.release();
        }, C2D_LOCK_MS).unref();
        const msg = ctx.message!;
        const delivery: UpstreamC2DDelivery = { lockToken, message: fromAmqp(msg), deliveryCount: (Number(msg.delivery_count) || 0) + 1 };
        if (!this.c2dCb) {
          per.locks.delete(lockToken);
          ctx.delivery!.release();
          return;
        }
        try {
          this.c2dCb(delivery);
        } catch (err) {
          this.core.log.error({ err, identity: identityKey(this.identity) }, 'C2D callback failed');
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

  onC2D(cb: (delivery: UpstreamC2DDelivery) => void): void {
    this.c2dCb = cb;
    this.armSoon();
  }

  async settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void> {
    const per = this.per;
    const delivery = per?.pc === this.core.current() ? per?.locks.get(lockToken) : undefined;
    if (!per || !delivery) {
      throw new UpstreamError(
        `no cloud-to-device delivery with lock token ${lockToken} for ${this.describe()} on the live link (the link was re-established since: the parent delivers the message again)`,
        'com.microsoft:message-lock-lost',
        412,
      );
    }
    per.locks.delete(lockToken);
    if (outcome === 'complete') delivery.accept();
    else if (outcome === 'reject') delivery.reject();
    else delivery.release();
  }

  // ---- keeping subscriptions attached ----

  private wanted(): boolean {
    return this.desiredCbs.length > 0 || this.methodCb !== undefined || this.c2dCb !== undefined;
  }

  /** Attaches every link a registered callback needs; rejects with the first refusal. */
  private async arm(): Promise<void> {
    const tasks: Array<Promise<unknown>> = [];
    if (this.desiredCbs.length > 0) tasks.push(this.twinLinks().then((l) => this.subscribeDesired(l)));
    if (this.methodCb) tasks.push(this.methodLinks());
    if (this.c2dCb) tasks.push(this.c2dLink());
    await Promise.all(tasks);
  }

  private armSoon(): void {
    if (this.isClosed || !this.core.current()) return;
    this.rearm();
  }

  private rearm(): void {
    if (this.isClosed || !this.wanted()) return;
    if (this.rearmTimer) {
      clearTimeout(this.rearmTimer);
      this.rearmTimer = undefined;
    }
    const attempt = this.arm().then(
      () => this.rearmBackoff.reset(),
      (err: unknown) => {
        if (err instanceof UpstreamDownError || this.isClosed) throw err;
        this.core.log.warn({ identity: identityKey(this.identity), err: (err as Error).message }, 'could not attach the links of a downstream identity upstream; will retry');
        this.scheduleRearm();
        throw err;
      },
    );
    attempt.catch(() => {});
    this.lastArm = attempt;
  }

  private scheduleRearm(): void {
    if (this.isClosed || this.rearmTimer) return;
    this.rearmTimer = setTimeout(() => {
      this.rearmTimer = undefined;
      if (this.core.current()) this.rearm();
    }, this.rearmBackoff.next());
    this.rearmTimer.unref();
  }

  async ready(): Promise<void> {
    this.state();
    if (!this.wanted()) return;
    await this.lastArm.catch(() => undefined);
    await this.arm();
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    this.unsubscribeUp();
    if (this.rearmTimer) clearTimeout(this.rearmTimer);
    const per = this.per;
    this.per = undefined;
    if (!per) return;
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
}

function closeQuietly(link: Receiver): void {
  try {
    if (!link.is_closed()) link.close();
  } catch {
    /* the connection is gone */
  }
}

/** Both attaches, or neither: when one fails the other is closed again. */
async function both<A extends OutLink | Receiver, B extends OutLink | Receiver>(a: Promise<A>, b: Promise<B>): Promise<[A, B]> {
  const [ra, rb] = await Promise.allSettled([a, b]);
  if (ra.status === 'fulfilled' && rb.status === 'fulfilled') return [ra.value, rb.value];
  for (const r of [ra, rb]) {
    if (r.status !== 'fulfilled') continue;
    if (r.value instanceof OutLink) r.value.end('paired link refused');
    else closeQuietly(r.value as Receiver);
  }
  throw ra.status === 'rejected' ? ra.reason : (rb as PromiseRejectedResult).reason;
}

/** Room for the batch's own framing (and origin annotations) inside the size limit. */
const BATCH_OVERHEAD = 1024;

/** [from, to) index ranges of consecutive encoded messages, each run within IoT Hub's batch size limit. */
function runsOf(at: readonly number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const count = at.length - 1;
  let from = 0;
  let bytes = BATCH_OVERHEAD;
  for (let i = 0; i < count; i++) {
    // The data section as encoded, plus the message's number in the origin list (up to 17).
    const size = at[i + 1]! - at[i]! + 17;
    if (i > from && bytes + size > MAX_BATCH_BYTES) {
      out.push([from, i]);
      from = i;
      bytes = BATCH_OVERHEAD;
    }
    bytes += size;
  }
  if (count > from) out.push([from, count]);
  return out;
}
