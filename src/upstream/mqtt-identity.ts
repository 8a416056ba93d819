import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { BatchOrigin } from '../protocols/amqp/batch.ts';
import { messageSize } from '../model/message-codec.ts';
import { MAX_MESSAGE_BYTES, type Message } from '../model/message.ts';
import { type C2DOutcome } from '../model/c2d.ts';
import { type IdentityRef } from '../model/identity.ts';
import { type MethodRequest } from '../model/methods.ts';
import { type TwinCollection, type TwinProperties } from '../model/twin.ts';
import { BagError, decodeBag, parseParentPublish, telemetryTopic } from '../protocols/mqtt/topics.ts';
import { Backoff } from './backoff.ts';
import { identityKey } from '../model/identity.ts';
import type { UpstreamC2DDelivery, UpstreamIdentity } from './identity.ts';
import { UpstreamDownError, UpstreamError, twinRefusal, type SendOutcome } from './links.ts';
import { ConnackRefusal, MqttWire, type IncomingPublish } from './mqtt-wire.ts';
import type { TelemetrySender } from './telemetry-endpoint.ts';

/**
 * One downstream identity at the parent over MQTT: IoT Hub's MQTT has no multiplexing, so the
 * gateway keeps one connection per identity (client id = the identity, the auth chain in the
 * user name, the gateway's `{edge}/$edgeHub` token as the password) and speaks the device SDKs'
 * topics on it. The connection opens when something needs it (telemetry, a twin call, a
 * registered callback), comes back with backoff after a loss while callbacks want it, is
 * re-made before the gateway's token expires (MQTT has no other way to renew a credential),
 * and is closed by the link when it has been idle a while.
 */

/** What an identity line needs from the MqttUpstream that owns it. */
export interface MqttCore {
  readonly hubHostName: string;
  readonly edgeDeviceId: string;
  readonly operationTimeoutMs: number;
  readonly log: Logger;
  /** The parent accepts the gateway now (its own `$edgeHub` connection is up). */
  isUp(): boolean;
  /** A TLS or WebSocket stream to the parent, verified against the trust bundle. */
  openSocket(): Promise<Duplex>;
  /** Aborted when the link closes: connection attempts under way give up at once. */
  readonly closing: AbortSignal;
  /** The gateway's SAS token (audience `{hub}/devices/{edge}/modules/$edgeHub`) and when it expires. */
  token(): { text: string; expiresAt: number; ttlMs: number };
  /** The parent refused the gateway's own credential on a target's connection. */
  credentialsRefused(why: string): void;
  /** Subscribes to the link coming up; returns the unsubscribe. */
  onUp(listener: () => void): () => void;
}

const TWIN_RESPONSES = '$iothub/twin/res/#';
const DESIRED = '$iothub/twin/PATCH/properties/desired/#';
const METHODS = '$iothub/methods/POST/#';
const KEEP_ALIVE_SECS = 60;
/** A refused identity is not tried again sooner than this. */
const REFUSAL_KEPT_MS = 5000;
const OK: SendOutcome = { ok: true };

interface TwinAnswer {
  status: number;
  version?: number;
  body: Buffer;
}

interface PendingTwin {
  wire: MqttWire;
  resolve: (a: TwinAnswer) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class MqttIdentityLine implements TelemetrySender {
  readonly who: string;
  /** When it was last used for telemetry or a request (epoch ms). */
  lastUsed = Date.now();
  channel?: MqttIdentityChannel;
  private wire?: MqttWire;
  private connecting?: Promise<MqttWire>;
  private refusal?: { err: Error; at: number };
  private readonly subscriptions = new WeakMap<MqttWire, Map<string, Promise<void>>>();
  private readonly twinPending = new Map<string, PendingTwin>();
  private nextRid = 1;
  private readonly locks = new Map<string, { wire: MqttWire; messageId: number }>();
  private telemetryInFlight = 0;
  private renewTimer?: NodeJS.Timeout;
  private rearmTimer?: NodeJS.Timeout;
  private readonly rearmBackoff = new Backoff(1000, 30_000);
  private readonly unsubscribeUp: () => void;
  private downListeners: Array<(why: string) => void> = [];
  private isClosed = false;

  constructor(
    private readonly core: MqttCore,
    readonly identity: IdentityRef,
    public authChain: string,
    /** The gateway's own `$edgeHub`: connected by the link's loop, with its own credential, never idle-closed. */
    readonly pinned = false,
  ) {
    this.who = identity.moduleId === undefined ? `device ${identity.deviceId}` : `module ${identity.deviceId}/${identity.moduleId}`;
    this.unsubscribeUp = core.onUp(() => {
      if (this.wanted().length > 0) this.rearm();
    });
  }

  get connected(): boolean {
    return this.wire !== undefined && !this.wire.closed;
  }

  /**
   * Nothing waits on this line: no callbacks, requests or telemetry. C2D messages still held
   * do not count: with no callback left, nobody below will settle them, and closing the
   * connection is what makes the parent deliver them again.
   */
  idle(): boolean {
    return this.wanted().length === 0 && this.twinPending.size === 0 && this.telemetryInFlight === 0 && !this.connecting;
  }

  /** Resolves with why, the next time the connection is lost (a renewal's reconnect is not a loss). */
  nextDown(): Promise<string> {
    return new Promise((resolve) => this.downListeners.push(resolve));
  }

  // ---- the connection ----

  /**
   * The live connection, opened when there is none and the link is up. `fromLinkLoop`: the
   * link's own loop (re)connecting the pinned `$edgeHub` line, which is what brings it up.
   */
  connection(fromLinkLoop = false): Promise<MqttWire> {
    if (this.isClosed) return Promise.reject(new UpstreamError(`the upstream connection of ${this.who} was closed`));
    if (this.connecting) return this.connecting;
    if (this.wire && !this.wire.closed) return Promise.resolve(this.wire);
    if (!(this.pinned && fromLinkLoop) && !this.core.isUp()) return Promise.reject(new UpstreamDownError(`the link to the parent is down; ${this.who} cannot reach it now`));
    if (this.refusal && Date.now() - this.refusal.at < REFUSAL_KEPT_MS) return Promise.reject(this.refusal.err);
    const opening = this.open().finally(() => {
      if (this.connecting === opening) this.connecting = undefined;
    });
    this.connecting = opening;
    return opening;
  }

  private username(): string {
    const clientId = identityKey(this.identity);
    const chain = this.pinned ? '' : `&auth-chain=${encodeURIComponent(this.authChain)}`;
    return `${this.core.hubHostName}/${clientId}/?api-version=2021-04-12&DeviceClientType=${encodeURIComponent('strata-edge-hub')}${chain}`;
  }

  private async open(): Promise<MqttWire> {
    const socket = await this.core.openSocket().catch((err: Error) => {
      throw this.pinned ? err : new UpstreamDownError(err.message);
    });
    const token = this.core.token();
    let wire: MqttWire;
    // The link closing while the parent has not answered CONNECT yet: cutting the socket ends the wait.
    const cut = () => socket.destroy();
    this.core.closing.addEventListener('abort', cut, { once: true });
    try {
      wire = await MqttWire.open(socket, { clientId: identityKey(this.identity), username: this.username(), password: token.text, keepAliveSecs: KEEP_ALIVE_SECS, operationTimeoutMs: this.core.operationTimeoutMs, log: this.core.log });
    } catch (err) {
      socket.destroy();
      throw this.pinned ? err : this.targetError(err as Error);
    } finally {
      this.core.closing.removeEventListener('abort', cut);
    }
    if (this.isClosed) {
      wire.close('the identity was closed');
      throw new UpstreamError(`the upstream connection of ${this.who} was closed`);
    }
    this.refusal = undefined;
    this.wire = wire;
    wire.onPublish = (p) => this.incoming(wire, p);
    void wire.lost.then((why) => this.lost(wire, why));
    // A credential cannot be renewed on an MQTT connection: a new connection brings a new token.
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => void this.renew(wire), Math.max(1000, token.expiresAt - Date.now() - token.ttlMs / 5));
    this.renewTimer.unref();
    if (this.wanted().length > 0) setImmediate(() => this.rearm());
    return wire;
  }

  /** A target's connection refused: whose fault is it? */
  private targetError(err: Error): Error {
    if (!(err instanceof ConnackRefusal)) return new UpstreamDownError(err.message);
    if (err.returnCode === 4) {
      // The user name and password are the gateway's: the target is not to blame.
      this.core.credentialsRefused(err.message);
      return new UpstreamDownError(err.message);
    }
    if (err.returnCode === 3) return new UpstreamError(err.message, 'com.microsoft:server-busy', 503);
    const e = new UpstreamError(`the parent refused to let ${this.core.edgeDeviceId} act for ${this.who}: ${err.message}`, 'amqp:unauthorized-access', err.returnCode === 2 ? 404 : 401);
    this.refusal = { err: e, at: Date.now() };
    this.core.log.warn({ identity: identityKey(this.identity), authChain: this.authChain, reason: err.message }, 'the parent refused a downstream identity');
    return e;
  }

  private lost(wire: MqttWire, why: string): void {
    if (this.wire !== wire) return;
    this.wire = undefined;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.forgetWire(wire, why);
    for (const fn of this.downListeners.splice(0)) fn(why);
    if (!this.pinned && !this.isClosed && this.wanted().length > 0) this.scheduleRearm();
  }

  private forgetWire(wire: MqttWire, why: string): void {
    for (const [rid, p] of this.twinPending) {
      if (p.wire !== wire) continue;
      clearTimeout(p.timer);
      this.twinPending.delete(rid);
      p.reject(new UpstreamDownError(why));
    }
    // Never acknowledged now: the parent delivers them again on the next connection.
    for (const [token, lock] of this.locks) if (lock.wire === wire) this.locks.delete(token);
  }

  /**
   * Re-made before the token runs out: what is waiting for an answer is given a moment, then
   * the connection ends politely and a new one (with a fresh token) takes its place. Lines
   * nobody needs now just close.
   */
  private async renew(wire: MqttWire): Promise<void> {
    if (this.wire !== wire || wire.closed) return;
    if (!this.pinned && this.idle()) {
      wire.close('idle when its credential was due for renewal');
      return;
    }
    const renewing = (async () => {
      await Promise.race([wire.drained(), new Promise((r) => setTimeout(r, this.core.operationTimeoutMs))]);
      this.wire = undefined;
      this.forgetWire(wire, 'the connection was renewed');
      wire.close('renewing the credential');
      return this.open();
    })();
    this.connecting = renewing;
    try {
      await renewing;
      this.core.log.debug({ identity: identityKey(this.identity) }, 'upstream MQTT connection renewed with a fresh token');
    } catch (err) {
      const why = `could not renew the upstream connection of ${this.who}: ${(err as Error).message}`;
      this.core.log.warn({ identity: identityKey(this.identity) }, why);
      for (const fn of this.downListeners.splice(0)) fn(why);
      if (!this.pinned && this.wanted().length > 0) this.scheduleRearm();
    } finally {
      if (this.connecting === renewing) this.connecting = undefined;
    }
  }

  private subscribed(wire: MqttWire, filter: string): Promise<void> {
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
          throw new UpstreamError(`the parent refused the subscription ${filter} of ${this.who}`, 'amqp:unauthorized-access', 403);
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
    for (const live of this.channel?.desiredLiveCbs ?? []) {
      try {
        live();
      } catch (err) {
        this.core.log.error({ err, identity: identityKey(this.identity) }, 'desired subscription callback failed');
      }
    }
  }

  /** Filters the channel's callbacks need. */
  private wanted(): string[] {
    const ch = this.channel;
    if (!ch || ch.closed) return [];
    const out: string[] = [];
    if (ch.desiredCbs.length > 0) out.push(DESIRED);
    if (ch.methodCb) out.push(METHODS);
    if (ch.c2dCb && this.identity.moduleId === undefined) out.push(`devices/${this.identity.deviceId}/messages/devicebound/#`);
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
        this.core.log.warn({ identity: identityKey(this.identity), err: (err as Error).message }, 'could not subscribe a downstream identity upstream; will retry');
        this.scheduleRearm();
      },
    );
  }

  private scheduleRearm(): void {
    if (this.isClosed || this.rearmTimer) return;
    this.rearmTimer = setTimeout(() => {
      this.rearmTimer = undefined;
      if (this.core.isUp() && this.wanted().length > 0) this.rearm();
    }, this.rearmBackoff.next());
    this.rearmTimer.unref();
  }

  /** Stops the parent pushing what the channel no longer wants (its callbacks were dropped). */
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
  async sendTelemetry(messages: readonly Message[], _origin?: BatchOrigin): Promise<SendOutcome[]> {
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

  private publishOne(wire: MqttWire, m: Message, done: (o: SendOutcome) => void): void {
    const size = messageSize(m);
    if (size > MAX_MESSAGE_BYTES) {
      return done({ ok: false, condition: 'amqp:link:message-size-exceeded', description: `message of ${this.who} is ${size} bytes (body and properties); the limit is ${MAX_MESSAGE_BYTES}` });
    }
    const topic = telemetryTopic(this.identity, m);
    if (topic.length > 65535 / 3 && Buffer.byteLength(topic) > 65535) {
      return done({ ok: false, condition: 'amqp:link:message-size-exceeded', description: `the properties of a message of ${this.who} do not fit an MQTT topic (${Buffer.byteLength(topic)} bytes; at most 65535)` });
    }
    wire.publish(topic, m.body, (err) => {
      if (!err) return done(OK);
      const e = err as UpstreamError;
      done({ ok: false, condition: e instanceof UpstreamDownError ? 'amqp:connection:forced' : (e.condition ?? 'com.microsoft:server-busy'), description: e.message });
    });
  }

  /** Ends the connection if it has publishes waiting (the parent stopped answering). */
  endIfWaiting(why: string): void {
    if (this.wire && this.wire.pending > 0) this.wire.end(why);
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
        reject(new UpstreamError(`the parent did not answer twin ${what} for ${this.who} within ${this.core.operationTimeoutMs} ms`, 'com.microsoft:timeout', 504));
      }, this.core.operationTimeoutMs);
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
    const answer = await this.twinCall('PATCH', (rid) => `$iothub/twin/PATCH/properties/reported/?$rid=${rid}`, JSON.stringify(patch));
    return { version: answer.version ?? 0 };
  }

  // ---- what the parent sends ----

  private incoming(wire: MqttWire, p: IncomingPublish): void {
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
          this.core.log.warn({ identity: identityKey(this.identity) }, 'desired properties push from the parent is not JSON; ignored');
          return;
        }
        for (const cb of this.channel?.desiredCbs ?? []) {
          try {
            cb(patch);
          } catch (err) {
            this.core.log.error({ err, identity: identityKey(this.identity) }, 'desired properties callback failed');
          }
        }
        return;
      }
      case 'method': {
        const cb = this.channel?.methodCb;
        const req: MethodRequest = { requestId: what.rid, methodName: what.methodName, payload: p.payload };
        if (!cb) {
          this.methodResponse(req.requestId, 404, Buffer.from(JSON.stringify({ message: `${this.who} does not take direct methods at this gateway now` })));
          return;
        }
        try {
          cb(req);
        } catch (err) {
          this.core.log.error({ err, identity: identityKey(this.identity) }, 'method callback failed');
        }
        return;
      }
      case 'c2d':
        return this.c2d(wire, p, what.bag);
      default:
        this.core.log.warn({ identity: identityKey(this.identity), topic: p.topic.slice(0, 200) }, 'the parent sent a message on a topic the gateway did not subscribe to; ignored');
        if (p.qos === 1 && p.messageId !== undefined) wire.puback(p.messageId);
    }
  }

  private c2d(wire: MqttWire, p: IncomingPublish, bag: string): void {
    let message: Message;
    try {
      message = decodeBag(bag, p.payload);
    } catch (err) {
      if (!(err instanceof BagError)) throw err;
      // Left unacknowledged: it stays locked at the parent (MQTT cannot refuse a message).
      this.core.log.error({ identity: identityKey(this.identity), reason: err.message }, 'cloud-to-device message from the parent has an unreadable property bag; not taken');
      return;
    }
    const cb = this.channel?.c2dCb;
    if (!cb || p.qos === 0 || p.messageId === undefined) {
      if (p.qos === 0) cb?.({ lockToken: randomUUID(), message, deliveryCount: 1 });
      return;
    }
    const lockToken = randomUUID();
    this.locks.set(lockToken, { wire, messageId: p.messageId });
    try {
      cb({ lockToken, message, deliveryCount: p.dup ? 2 : 1 });
    } catch (err) {
      this.core.log.error({ err, identity: identityKey(this.identity) }, 'C2D callback failed');
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
    if (outcome === 'reject') this.core.log.info({ identity: identityKey(this.identity) }, 'cloud-to-device message rejected below: MQTT cannot reject, so the parent records it completed');
    lock.wire.puback(lock.messageId);
    return Promise.resolve();
  }

  methodResponse(requestId: string, status: number, payload: Buffer): void {
    const wire = this.wire;
    if (!wire || wire.closed) {
      this.core.log.warn({ identity: identityKey(this.identity), requestId }, 'direct method answer dropped: the upstream connection it came on is gone');
      return;
    }
    wire.post(`$iothub/methods/res/${status}/?$rid=${encodeURIComponent(requestId)}`, payload);
  }

  /** Closes the connection (idle, or the link closing); the line may connect again later unless `forGood`. */
  close(why: string, forGood = false): void {
    if (forGood) {
      this.isClosed = true;
      this.unsubscribeUp();
      if (this.rearmTimer) clearTimeout(this.rearmTimer);
    }
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.wire?.close(why);
  }
}

/**
 * What openIdentity returns: the callbacks of one user of an identity line. Closing it drops
 * its callbacks (and the subscriptions they needed); the line's connection stays while
 * telemetry uses it, and the link closes it once idle.
 */
export class MqttIdentityChannel implements UpstreamIdentity {
  readonly deviceId: string;
  readonly moduleId?: string;
  readonly desiredCbs: Array<(patch: TwinCollection) => void> = [];
  readonly desiredLiveCbs: Array<() => void> = [];
  methodCb?: (req: MethodRequest) => void;
  c2dCb?: (delivery: UpstreamC2DDelivery) => void;
  private isClosed = false;

  constructor(
    private readonly line: MqttIdentityLine,
    private readonly isUp: () => boolean,
  ) {
    this.deviceId = line.identity.deviceId;
    if (line.identity.moduleId !== undefined) this.moduleId = line.identity.moduleId;
  }

  get authChain(): string {
    return this.line.authChain;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  private open(): MqttIdentityLine {
    if (this.isClosed) throw new UpstreamError(`the upstream identity ${identityKey(this.line.identity)} was closed`);
    return this.line;
  }

  twinGet(): Promise<TwinProperties> {
    return this.open().twinGet();
  }

  twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }> {
    return this.open().twinPatchReported(patch);
  }

  onDesired(cb: (patch: TwinCollection) => void, onLive?: () => void): void {
    this.desiredCbs.push(cb);
    if (onLive) this.desiredLiveCbs.push(onLive);
    this.armSoon();
  }

  onMethod(cb: (req: MethodRequest) => void): void {
    this.methodCb = cb;
    this.armSoon();
  }

  methodResponse(requestId: string, status: number, payload: Buffer): void {
    this.line.methodResponse(requestId, status, payload);
  }

  onC2D(cb: (delivery: UpstreamC2DDelivery) => void): void {
    this.c2dCb = cb;
    this.armSoon();
  }

  settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void> {
    return this.line.settleC2D(lockToken, outcome);
  }

  private armSoon(): void {
    if (!this.isClosed && this.isUp()) this.line.rearm();
  }

  async ready(): Promise<void> {
    const line = this.open();
    if (!this.isUp()) throw new UpstreamDownError(`the link to the parent is down; ${line.who} cannot reach it now`);
    await line.arm();
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    this.desiredCbs.length = 0;
    this.desiredLiveCbs.length = 0;
    this.methodCb = undefined;
    this.c2dCb = undefined;
    if (this.line.channel === this) this.line.channel = undefined;
    this.line.unsubscribeUnwanted();
  }
}
