import { randomUUID } from 'node:crypto';
import type { BatchOrigin } from '../protocols/amqp/batch.ts';
import { messageSize } from '../model/message-codec.ts';
import type { C2DOutcome } from '../model/c2d.ts';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import { MAX_MESSAGE_BYTES, type Message } from '../model/message.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import { BagError, decodeBag, parseParentPublish, telemetryTopic } from '../protocols/mqtt/topics.ts';
import { Backoff } from './backoff.ts';
import { UpstreamDownError, UpstreamError, twinRefusal, type SendOutcome } from './errors.ts';
import type { IncomingPublish, MqttConnection } from './mqtt-connection.ts';
import { MqttIdentityConnection, type MqttProxyOwner } from './mqtt-identity-connection.ts';
import type { UpstreamC2DDelivery, UpstreamIdentity } from './parent-link.ts';
import type { TelemetrySender } from './telemetry-endpoint.ts';

/**
 * One downstream identity at the parent over MQTT, on its own connection
 * (mqtt-identity-connection.ts): telemetry as QoS 1 PUBLISHes, twin requests, and the
 * subscriptions the callbacks of its handle (mqtt-identity-handle.ts) need, made again
 * whenever the connection comes back.
 */

/** What the proxy reads of the handle openIdentity gave out for its identity (mqtt-identity-handle.ts). */
export interface ProxyCallbacks extends UpstreamIdentity {
  readonly closed: boolean;
  readonly desiredCbs: ReadonlyArray<(patch: TwinCollection) => void>;
  readonly desiredLiveCbs: ReadonlyArray<() => void>;
  readonly methodCb?: (req: MethodRequest) => void;
  readonly c2dCb?: (delivery: UpstreamC2DDelivery) => void;
}

const TWIN_RESPONSES = '$iothub/twin/res/#';
const DESIRED = '$iothub/twin/PATCH/properties/desired/#';
const METHODS = '$iothub/methods/POST/#';
const OK: SendOutcome = { ok: true };

interface TwinAnswer {
  status: number;
  version?: number;
  body: Buffer;
}

interface PendingTwin {
  wire: MqttConnection;
  resolve: (a: TwinAnswer) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class MqttIdentityProxy extends MqttIdentityConnection implements TelemetrySender {
  /** The handle openIdentity gave out, while it is open. */
  handle?: ProxyCallbacks;
  private readonly subscriptions = new WeakMap<MqttConnection, Map<string, Promise<void>>>();
  private readonly twinPending = new Map<string, PendingTwin>();
  private nextRid = 1;
  private readonly locks = new Map<string, { wire: MqttConnection; messageId: number }>();
  private telemetryInFlight = 0;
  private rearmTimer?: NodeJS.Timeout;
  private readonly rearmBackoff = new Backoff(1000, 30_000);
  private readonly unsubscribeUp: () => void;

  constructor(owner: MqttProxyOwner, identity: IdentityRef, authChain: string, pinned = false) {
    super(owner, identity, authChain, pinned);
    this.unsubscribeUp = owner.onUp(() => {
      if (this.wanted().length > 0) this.rearm();
    });
  }

  /**
   * Nothing waits on this identity: no callbacks, requests or telemetry. C2D messages still held
   * do not count: with no callback left, nobody below will settle them, and closing the
   * connection is what makes the parent deliver them again.
   */
  idle(): boolean {
    return (
      this.wanted().length === 0 && this.twinPending.size === 0 && this.telemetryInFlight === 0 && !this.connecting
    );
  }

  protected forgetWire(wire: MqttConnection, why: string): void {
    for (const [rid, p] of this.twinPending) {
      if (p.wire !== wire) continue;
      clearTimeout(p.timer);
      this.twinPending.delete(rid);
      p.reject(new UpstreamDownError(why));
    }
    // Never acknowledged now: the parent delivers them again on the next connection.
    for (const [token, lock] of this.locks) if (lock.wire === wire) this.locks.delete(token);
  }

  // ---- subscriptions ----

  private subscribed(wire: MqttConnection, filter: string): Promise<void> {
    let map = this.subscriptions.get(wire);
    if (!map) {
      map = new Map();
      this.subscriptions.set(wire, map);
    }
    let p = map.get(filter);
    if (!p) {
      const m = map;
      p = wire.subscribe([filter]).then((granted) => {
        if (granted[0] === undefined || granted[0] > 1) {
          throw new UpstreamError(
            `the parent refused the subscription ${filter} of ${this.who}`,
            'amqp:unauthorized-access',
            403,
          );
        }
        if (filter === DESIRED) this.desiredLive();
      });
      p.catch(() => m.delete(filter));
      map.set(filter, p);
    }
    return p;
  }

  /** The parent confirmed the desired subscription on a connection: patches from now on are pushed. */
  private desiredLive(): void {
    for (const live of this.handle?.desiredLiveCbs ?? []) {
      try {
        live();
      } catch (err) {
        this.owner.log.error({ err, identity: identityKey(this.identity) }, 'desired subscription callback failed');
      }
    }
  }

  /** Filters the handle's callbacks need. */
  protected wanted(): string[] {
    const ch = this.handle;
    if (!ch || ch.closed) return [];
    const out: string[] = [];
    if (ch.desiredCbs.length > 0) out.push(DESIRED);
    if (ch.methodCb) out.push(METHODS);
    if (ch.c2dCb && this.identity.moduleId === undefined)
      out.push(`devices/${this.identity.deviceId}/messages/devicebound/#`);
    return out;
  }

  /** Connects and subscribes whatever the callbacks need; rejects with the first refusal. */
  async arm(): Promise<void> {
    const wanted = this.wanted();
    if (wanted.length === 0) return;
    const wire = await this.connection();
    await Promise.all(wanted.map((f) => this.subscribed(wire, f)));
  }

  rearm(): void {
    if (this.isClosed) return;
    if (this.rearmTimer) {
      clearTimeout(this.rearmTimer);
      this.rearmTimer = undefined;
    }
    this.arm().then(
      () => this.rearmBackoff.reset(),
      (err: unknown) => {
        if (this.isClosed || err instanceof UpstreamDownError) return;
        this.owner.log.warn(
          { identity: identityKey(this.identity), err: (err as Error).message },
          'could not subscribe a downstream identity upstream; will retry',
        );
        this.scheduleRearm();
      },
    );
  }

  protected scheduleRearm(): void {
    if (this.isClosed || this.rearmTimer) return;
    this.rearmTimer = setTimeout(() => {
      this.rearmTimer = undefined;
      if (this.owner.isUp() && this.wanted().length > 0) this.rearm();
    }, this.rearmBackoff.next());
    this.rearmTimer.unref();
  }

  /** Stops the parent pushing what the handle no longer wants (its callbacks were dropped). */
  unsubscribeUnwanted(): void {
    const wire = this.wire;
    const map = wire && this.subscriptions.get(wire);
    if (!wire || !map) return;
    const keep = new Set([...this.wanted(), TWIN_RESPONSES]);
    const drop = [...map.keys()].filter((f) => !keep.has(f));
    if (drop.length === 0) return;
    for (const f of drop) map.delete(f);
    wire.unsubscribe(drop);
  }

  // ---- telemetry ----

  /**
   * Every message as a QoS 1 PUBLISH, all in flight at once, in order on the one connection; one
   * outcome per message. What the parent could only refuse by closing the connection (a message
   * over the size limit) is refused here, for good, before it is sent. MQTT cannot name a
   * message's origin: `origin` is not used, and a message whose PUBACK was lost in a reconnect
   * is sent again (at least once).
   */
  async forward(messages: readonly Message[], _origin?: BatchOrigin): Promise<SendOutcome[]> {
    const wire = await this.connection();
    this.lastUsed = Date.now();
    this.telemetryInFlight++;
    try {
      return await new Promise<SendOutcome[]>((resolve) => {
        const outcomes = new Array<SendOutcome>(messages.length);
        let left = messages.length;
        if (left === 0) return resolve(outcomes);
        messages.forEach((m, i) =>
          this.publishOne(wire, m, (o) => {
            outcomes[i] = o;
            if (--left === 0) resolve(outcomes);
          }),
        );
      });
    } finally {
      this.telemetryInFlight--;
      this.lastUsed = Date.now();
    }
  }

  private publishOne(wire: MqttConnection, m: Message, done: (o: SendOutcome) => void): void {
    const size = messageSize(m);
    if (size > MAX_MESSAGE_BYTES) {
      return done({
        ok: false,
        condition: 'amqp:link:message-size-exceeded',
        description: `message of ${this.who} is ${size} bytes (body and properties); the limit is ${MAX_MESSAGE_BYTES}`,
      });
    }
    const topic = telemetryTopic(this.identity, m);
    if (topic.length > 65535 / 3 && Buffer.byteLength(topic) > 65535) {
      return done({
        ok: false,
        condition: 'amqp:link:message-size-exceeded',
        description: `the properties of a message of ${this.who} do not fit an MQTT topic (${Buffer.byteLength(topic)} bytes; at most 65535)`,
      });
    }
    wire.publish(topic, m.body, (err) => {
      if (!err) return done(OK);
      const e = err as UpstreamError;
      done({
        ok: false,
        condition:
          e instanceof UpstreamDownError ? 'amqp:connection:forced' : (e.condition ?? 'com.microsoft:server-busy'),
        description: e.message,
      });
    });
  }

  // ---- twin ----

  private async twinCall(what: string, topic: (rid: string) => string, body: string): Promise<TwinAnswer> {
    const wire = await this.connection();
    this.lastUsed = Date.now();
    await this.subscribed(wire, TWIN_RESPONSES);
    const rid = String(this.nextRid++);
    const answer = await new Promise<TwinAnswer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.twinPending.delete(rid);
        reject(
          new UpstreamError(
            `the parent did not answer twin ${what} for ${this.who} within ${this.owner.operationTimeoutMs} ms`,
            'com.microsoft:timeout',
            504,
          ),
        );
      }, this.owner.operationTimeoutMs);
      this.twinPending.set(rid, { wire, resolve, reject, timer });
      try {
        wire.post(topic(rid), Buffer.from(body, 'utf8'));
      } catch (err) {
        clearTimeout(timer);
        this.twinPending.delete(rid);
        reject(err as Error);
      }
    });
    this.lastUsed = Date.now();
    if (answer.status < 200 || answer.status >= 300) {
      throw twinRefusal(what, this.who, answer.status, answer.body);
    }
    return answer;
  }

  async twinGet(): Promise<TwinProperties> {
    const answer = await this.twinCall('GET', (rid) => `$iothub/twin/GET/?$rid=${rid}`, ' ');
    const doc = JSON.parse(answer.body.toString('utf8') || '{}') as Partial<TwinProperties>;
    return { desired: doc.desired ?? { $version: 1 }, reported: doc.reported ?? { $version: 1 } };
  }

  async twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }> {
    const answer = await this.twinCall(
      'PATCH',
      (rid) => `$iothub/twin/PATCH/properties/reported/?$rid=${rid}`,
      JSON.stringify(patch),
    );
    return { version: answer.version ?? 0 };
  }

  // ---- what the parent sends ----

  protected incoming(wire: MqttConnection, p: IncomingPublish): void {
    const what = parseParentPublish(p.topic);
    switch (what.kind) {
      case 'twin-response': {
        const waiting = this.twinPending.get(what.rid);
        if (!waiting) return;
        this.twinPending.delete(what.rid);
        clearTimeout(waiting.timer);
        waiting.resolve({ status: what.status, version: what.version, body: p.payload });
        return;
      }
      case 'desired': {
        let patch: TwinCollection;
        try {
          patch = JSON.parse(p.payload.toString('utf8')) as TwinCollection;
        } catch {
          this.owner.log.warn(
            { identity: identityKey(this.identity) },
            'desired properties push from the parent is not JSON; ignored',
          );
          return;
        }
        for (const cb of this.handle?.desiredCbs ?? []) {
          try {
            cb(patch);
          } catch (err) {
            this.owner.log.error({ err, identity: identityKey(this.identity) }, 'desired properties callback failed');
          }
        }
        return;
      }
      case 'method': {
        const cb = this.handle?.methodCb;
        const req: MethodRequest = { requestId: what.rid, methodName: what.methodName, payload: p.payload };
        if (!cb) {
          this.methodResponse(
            req.requestId,
            404,
            Buffer.from(JSON.stringify({ message: `${this.who} does not take direct methods at this gateway now` })),
          );
          return;
        }
        try {
          cb(req);
        } catch (err) {
          this.owner.log.error({ err, identity: identityKey(this.identity) }, 'method callback failed');
        }
        return;
      }
      case 'c2d':
        return this.c2d(wire, p, what.bag);
      default:
        this.owner.log.warn(
          { identity: identityKey(this.identity), topic: p.topic.slice(0, 200) },
          'the parent sent a message on a topic the gateway did not subscribe to; ignored',
        );
        if (p.qos === 1 && p.messageId !== undefined) wire.puback(p.messageId);
    }
  }

  private c2d(wire: MqttConnection, p: IncomingPublish, bag: string): void {
    let message: Message;
    try {
      message = decodeBag(bag, p.payload);
    } catch (err) {
      if (!(err instanceof BagError)) throw err;
      // Left unacknowledged: it stays locked at the parent (MQTT cannot refuse a message).
      this.owner.log.error(
        { identity: identityKey(this.identity), reason: err.message },
        'cloud-to-device message from the parent has an unreadable property bag; not taken',
      );
      return;
    }
    const cb = this.handle?.c2dCb;
    if (!cb || p.qos === 0 || p.messageId === undefined) {
      if (p.qos === 0) cb?.({ lockToken: randomUUID(), message, deliveryCount: 1 });
      return;
    }
    const lockToken = randomUUID();
    this.locks.set(lockToken, { wire, messageId: p.messageId });
    try {
      cb({ lockToken, message, deliveryCount: p.dup ? 2 : 1 });
    } catch (err) {
      this.owner.log.error({ err, identity: identityKey(this.identity) }, 'C2D callback failed');
    }
  }

  /**
   * MQTT settles by acknowledging, and the parent completes a message when the device
   * acknowledges it. So: complete = PUBACK; reject = PUBACK too (MQTT cannot reject; the
   * message is gone, the parent records it completed, not rejected); abandon = no PUBACK: the
   * message stays locked at the parent until this connection ends, and is delivered again on
   * the next one.
   */
  settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void> {
    const lock = this.locks.get(lockToken);
    if (!lock || lock.wire !== this.wire || lock.wire.closed) {
      return Promise.reject(
        new UpstreamError(
          `no cloud-to-device delivery with lock token ${lockToken} for ${this.who} on the live connection (it was re-established since: the parent delivers the message again)`,
          'com.microsoft:message-lock-lost',
          412,
        ),
      );
    }
    this.locks.delete(lockToken);
    if (outcome === 'abandon') return Promise.resolve();
    if (outcome === 'reject')
      this.owner.log.info(
        { identity: identityKey(this.identity) },
        'cloud-to-device message rejected below: MQTT cannot reject, so the parent records it completed',
      );
    lock.wire.puback(lock.messageId);
    return Promise.resolve();
  }

  methodResponse(requestId: string, status: number, payload: Buffer): void {
    const wire = this.wire;
    if (!wire || wire.closed) {
      this.owner.log.warn(
        { identity: identityKey(this.identity), requestId },
        'direct method answer dropped: the upstream connection it came on is gone',
      );
      return;
    }
    wire.post(`$iothub/methods/res/${status}/?$rid=${encodeURIComponent(requestId)}`, payload);
  }

  override close(why: string, forGood = false): void {
    if (forGood) {
      this.unsubscribeUp();
      if (this.rearmTimer) clearTimeout(this.rearmTimer);
    }
    super.close(why, forGood);
  }
}
