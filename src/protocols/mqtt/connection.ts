import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import mqtt from 'mqtt-packet';
import type { Engine } from '../../engine/engine.ts';
import { describeIdentity } from '../../engine/engine.ts';
import { EngineError } from '../../model/errors.ts';
import type { AuthResult, ClientCertificate, IdentityRef } from '../../model/identity.ts';
import type { C2DDelivery } from '../../model/c2d.ts';
import type { CloseReason, Protocol, Session, SessionHandler, SubscriptionKind } from '../../engine/types.ts';
import type { MethodRequest } from '../../model/methods.ts';
import type { TwinCollection } from '../../model/twin.ts';
import { EDGE_HUB } from '../../identity/device-id.ts';
import { childLog, refusals, sourceAddress, wireText } from '../../util/log.ts';
import type { PreAuthTicket } from '../pre-auth.ts';
import { actingEdgeOf, claimedChainRefusal, grantOnBehalfOf, onScopeChange, withdrawalReason, type OnBehalfOfSource } from '../../identity/on-behalf-of.ts';
import { BagError, c2dTopic, decodeBag, identityFromClientId, inputTopic, parsePublishTopic, parseSubscription, parseUsername, sameIdentity } from './topics.ts';

const log = childLog('mqtt');

/** The plain buffer list of the `bl` package mqtt-packet builds on (its parser would use the stream form). */
const { BufferList } = createRequire(createRequire(import.meta.url).resolve('mqtt-packet'))('bl') as { BufferList: new () => unknown };

/**
 * What the parser reads from its settings once CONNECT is in: mqtt-packet keeps the whole CONNECT
 * packet there (client id, user name, the password's token) for the connection's life otherwise.
 */
const CONNECTED_PARSER_SETTINGS = Object.freeze({ protocolVersion: 4 });
/** The parser's state machine, the same for every parser: one array for all connections. */
const PARSER_STATES = Object.freeze(['_parseHeader', '_parseLength', '_parsePayload', '_newPacket']);

/** CONNACK return codes of MQTT 3.1.1. */
const CONNACK = {
  accepted: 0,
  badProtocol: 1,
  identifierRejected: 2,
  unavailable: 3,
  badCredentials: 4,
  notAuthorized: 5,
} as const;

export interface MqttConnectionOptions {
  protocol: Extract<Protocol, 'mqtt' | 'mqtt-ws'>;
  remote: string;
  /** The TLS client certificate, when the client presented one. */
  clientCertificate?: ClientCertificate;
  /** Time allowed between the transport opening and CONNECT (default 10 s). */
  connectTimeoutMs?: number;
  /** Any packet larger than this closes the connection before it is buffered whole (default 512 KiB). */
  maxPacketBytes?: number;
  /** Keep-alive is enforced at this multiple of the client's interval (default 1.5). */
  keepAliveFactor?: number;
  /** Identities a gateway below may connect on behalf of; absent: such CONNECTs are refused. */
  onBehalfOf?: OnBehalfOfSource;
  /** The listener's count of unauthenticated connections, released once CONNECT is accepted. */
  preAuth?: PreAuthTicket;
  /** The listener's live connections: joined here, left at teardown. */
  live?: Set<MqttConnection>;
}

/** The connection a transport or parser belongs to, for listeners shared by all connections. */
const OWNER = Symbol('strata.mqttConnection');
type Owned = { [OWNER]: MqttConnection };

/** The user name parameter naming the auth chain of an on-behalf-of CONNECT. */
const AUTH_CHAIN_PARAM = 'auth-chain';

type State = 'awaiting-connect' | 'authenticating' | 'connected' | 'closed';

interface InternalPacket {
  cmd: string;
  messageId?: number;
  [k: string]: unknown;
}

/**
 * One MQTT 3.1.1 connection of a device or module, over TLS or a WebSocket: frames with
 * mqtt-packet, turns IoT Hub topics into engine calls and engine pushes into PUBLISHes.
 * Every refusal closes only this connection and logs one line saying why.
 */
export class MqttConnection {
  private state: State = 'awaiting-connect';
  private readonly parser = mqtt.parser({ protocolVersion: 4 });
  private session?: Session;
  private identity?: IdentityRef;
  private backlog: InternalPacket[] = [];
  private readonly remote: string;
  private readonly protocol: MqttConnectionOptions['protocol'];
  /** Needed until CONNECT is handled (certificate, timeouts, on-behalf-of source); dropped then. */
  private opts?: MqttConnectionOptions;
  private readonly onBehalfOfSource?: OnBehalfOfSource;
  private readonly live?: Set<MqttConnection>;
  private lastReceived = Date.now();
  private keepAliveMs = 0;
  private keepAliveTimer?: NodeJS.Timeout;
  private connectTimer?: NodeJS.Timeout;
  /** Counted as unauthenticated until CONNACK; dropped then (an idle connection keeps nothing it does not need). */
  private preAuth?: PreAuthTicket;
  private nextPacketId = 1;
  /** Outgoing QoS 1 PUBLISHes waiting for PUBACK: packet id -> C2D lock token (made at the first). */
  private awaitingAck?: Map<number, string>;
  private corked = false;
  /** Packet ids of stored telemetry to acknowledge at the end of this turn. */
  private pubacks: number[] = [];
  private readonly maxPacketBytes: number;
  /** Ends the registry watch of an on-behalf-of connection. */
  private unwatch?: () => void;

  constructor(
    private readonly stream: Duplex,
    private readonly engine: Engine,
    opts: MqttConnectionOptions,
  ) {
    this.opts = opts;
    this.remote = opts.remote;
    this.protocol = opts.protocol;
    if (opts.onBehalfOf) this.onBehalfOfSource = opts.onBehalfOf;
    this.maxPacketBytes = opts.maxPacketBytes ?? 512 * 1024;
    // The parser keeps its bytes in a BufferListStream, a whole Duplex stream per connection; it
    // only ever appends, reads and consumes, which the plain list does for a fraction of the memory.
    const parser = this.parser as unknown as { _list: unknown; _states: readonly string[] } & Owned;
    parser._list = new BufferList();
    parser._states = PARSER_STATES;
    // Listeners shared by all connections find theirs through the emitter: no closures per connection.
    parser[OWNER] = this;
    this.parser.on('packet', onParserPacket);
    this.parser.on('error', onParserError);
    (stream as unknown as Owned)[OWNER] = this;
    stream.on('data', onStreamData);
    stream.on('error', onStreamError);
    stream.on('close', onStreamEnd);
    stream.on('end', onStreamEnd);
    if (opts.live) {
      this.live = opts.live;
      opts.live.add(this);
    }
    // Counts from the transport being up; the listener's TLS deadline came before.
    this.preAuth = opts.preAuth;
    opts.preAuth?.clearTimer();
    this.connectTimer = setTimeout(() => {
      if (this.state === 'awaiting-connect') this.refuse(`no CONNECT within ${(opts.connectTimeoutMs ?? 10_000) / 1000} s`);
    }, opts.connectTimeoutMs ?? 10_000);
    this.connectTimer.unref();
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  /** @internal the identity CONNECT named (set before the session opens). */
  connectedIdentity(): IdentityRef {
    return this.identity!;
  }

  private who(): string {
    return this.identity ? describeIdentity(this.identity) : `client at ${this.remote}`;
  }

  /** @internal */
  onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.lastReceived = Date.now();
    try {
      this.parser.parse(chunk);
    } catch (err) {
      // A bug in handling one client's packet must cost that connection only, never the process.
      log.error({ err, who: this.who(), remote: this.remote }, 'closing connection: internal error while handling a packet');
      this.teardown('protocol-error');
      return;
    }
    // The parser buffers until a packet is whole: refuse huge ones as soon as their length is known.
    const pending = (this.parser as unknown as { packet: { length: number } }).packet;
    if ((this.state as State) !== 'closed' && pending && pending.length > this.maxPacketBytes) {
      this.protocolError(`packet of ${pending.length} bytes exceeds the limit of ${this.maxPacketBytes}`);
    }
  }

  /** @internal */
  onPacket(p: InternalPacket): void {
    if (this.state === 'closed') return;
    if (this.state === 'awaiting-connect') {
      if (p.cmd !== 'connect') return this.protocolError(`first packet is ${p.cmd.toUpperCase()}, not CONNECT`);
      this.state = 'authenticating';
      // Only 3.1.1 gets further (onConnect refuses the rest), so that is all the parser needs.
      (this.parser as unknown as { settings: object }).settings = CONNECTED_PARSER_SETTINGS;
      void this.onConnect(p as unknown as mqtt.IConnectPacket);
      return;
    }
    if (this.state === 'authenticating') {
      // Clients may pipeline packets behind CONNECT; handle them once the session exists.
      if (this.backlog.length > 1000) return this.protocolError('too many packets before CONNACK');
      this.backlog.push(p);
      return;
    }
    this.handle(p);
  }

  private async onConnect(p: mqtt.IConnectPacket): Promise<void> {
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    if (p.protocolVersion !== 4) {
      return this.refuse(`MQTT protocol level ${p.protocolVersion} is not supported (3.1.1 only)`, CONNACK.badProtocol);
    }
    const identity = identityFromClientId(p.clientId);
    if (!identity) return this.refuse(`client id "${wireText(p.clientId)}" does not name a device or module`, CONNACK.identifierRejected);
    this.identity = identity;
    let authChain: string | undefined;
    if (p.username !== undefined) {
      const u = parseUsername(p.username);
      if (!u || u.clientId !== p.clientId) {
        return this.refuse(`user name "${wireText(p.username)}" does not name client "${wireText(p.clientId)}"`, CONNACK.badCredentials);
      }
      authChain = u.query.get(AUTH_CHAIN_PARAM);
    }
    const sasToken = p.password ? p.password.toString('utf8') : undefined;
    const clientCertificate = this.opts?.clientCertificate;
    if (!sasToken && !clientCertificate) {
      return this.refuse('neither a SAS token (password) nor a client certificate was given', CONNACK.badCredentials);
    }
    const actorEdgeId = sasToken === undefined ? undefined : actingEdgeOf(sasToken);
    const onBehalfOf = actorEdgeId !== undefined && !sameIdentity(identity, { deviceId: actorEdgeId, moduleId: EDGE_HUB });
    let auth: AuthResult;
    if (onBehalfOf) {
      const granted = await this.grant(actorEdgeId, identity, sasToken!, authChain);
      if (!granted) return;
      auth = granted;
    } else {
      try {
        auth = await this.engine.authenticate({ ...identity, sasToken, clientCertificate: sasToken ? undefined : clientCertificate });
      } catch (err) {
        if (err instanceof EngineError) return this.refuse(`authentication failed (${err.code}): ${err.message}`, CONNACK.notAuthorized);
        log.error({ err, remote: this.remote }, 'authentication error');
        return this.refuse('authentication error', CONNACK.unavailable);
      }
    }
    if (this.state === 'closed') return;
    // While the store cannot take telemetry, a device let in would be dropped at its first
    // PUBLISH and reconnect at once; "server unavailable" makes the SDKs back off instead.
    const storeFull = this.engine.storeFull();
    if (storeFull) return this.refuse(storeFull, CONNACK.unavailable);
    const handler = new ConnectionSessionHandler(this);
    try {
      this.session = await this.engine.connect(auth, handler, { protocol: this.protocol, cleanSession: p.clean !== false, remote: this.remote, viaGateway: onBehalfOf });
    } catch (err) {
      // An engine refusal (e.g. the gateway's MaxConnectedClients) says why in its message.
      if (err instanceof EngineError) return this.refuse(err.message, CONNACK.unavailable);
      log.warn({ err, who: this.who() }, 'session could not be opened');
      return this.refuse('the hub is not accepting connections', CONNACK.unavailable);
    }
    if (this.stream.destroyed) {
      this.session.close('client');
      this.state = 'closed';
      return;
    }
    this.state = 'connected';
    // The same identity as the one parsed from the client id; keeping the session's leaves one copy.
    this.identity = this.session.identity;
    this.preAuth?.authenticated();
    this.preAuth = undefined;
    const keepAliveFactor = this.opts?.keepAliveFactor ?? 1.5;
    this.opts = undefined;
    this.send({ cmd: 'connack', returnCode: CONNACK.accepted, sessionPresent: this.session.resumed });
    if (p.keepalive && p.keepalive > 0) {
      this.keepAliveMs = p.keepalive * 1000 * keepAliveFactor;
      this.armKeepAlive();
    }
    const backlog = this.backlog;
    this.backlog = [];
    for (const q of backlog) {
      if (this.state !== 'connected') break;
      this.handle(q);
    }
  }

  /**
   * An edge hub below connects for `target` with its own `{edge}/$edgeHub` token and the
   * target's auth chain in the user name: accepted exactly when the AMQP head would accept the
   * same claim (see ../on-behalf-of.ts), and dropped again when a registry change withdraws it.
   * Returns the target's credentials, or undefined after refusing the CONNECT.
   */
  private async grant(actorEdgeId: string, target: IdentityRef, token: string, authChain: string | undefined): Promise<AuthResult | undefined> {
    const source = this.onBehalfOfSource;
    const actor = `${actorEdgeId}/${EDGE_HUB}`;
    const refuse = (why: string) => {
      this.refuse(`on-behalf-of by ${actor} refused: ${why}`, CONNACK.notAuthorized);
      return undefined;
    };
    let auth: AuthResult;
    try {
      auth = (await grantOnBehalfOf({ source, authenticate: (req) => this.engine.authenticate(req), actorEdgeId, target, token })).auth;
    } catch (err) {
      if (err instanceof EngineError) return refuse(err.message);
      log.error({ err, remote: this.remote }, 'on-behalf-of check failed');
      this.refuse('authentication error', CONNACK.unavailable);
      return undefined;
    }
    const chainRefusal = claimedChainRefusal(source, authChain, actorEdgeId, target, `the user name carries no ${AUTH_CHAIN_PARAM} parameter`);
    if (chainRefusal) return refuse(chainRefusal);
    if (this.state === 'closed') return undefined;
    this.unwatch = onScopeChange(source!, () => {
      if (this.state === 'closed') return;
      const why = withdrawalReason(source!, target, actorEdgeId);
      if (!why) return;
      log.info({ actor, target: describeIdentity(target), remote: this.remote, reason: why }, 'on-behalf-of withdrawn');
      this.forbidden(`on-behalf-of withdrawn: ${why}`);
    });
    log.info({ actor, target: describeIdentity(target), chain: authChain }, 'on-behalf-of accepted');
    return auth;
  }

  private armKeepAlive(): void {
    if (this.keepAliveTimer) clearTimeout(this.keepAliveTimer);
    const due = this.lastReceived + this.keepAliveMs - Date.now();
    this.keepAliveTimer = setTimeout(() => {
      if (this.state !== 'connected') return;
      if (Date.now() - this.lastReceived >= this.keepAliveMs) {
        log.warn({ who: this.who(), remote: this.remote, keepAliveMs: this.keepAliveMs }, 'closing connection: keep-alive expired (nothing received for 1.5x the keep-alive interval)');
        this.teardown('keep-alive');
      } else {
        this.armKeepAlive();
      }
    }, Math.max(10, due));
    this.keepAliveTimer.unref();
  }

  private handle(p: InternalPacket): void {
    switch (p.cmd) {
      case 'publish':
        return this.onPublish(p as unknown as mqtt.IPublishPacket);
      case 'puback':
        return this.onPuback(p.messageId ?? 0);
      case 'subscribe':
        return this.onSubscribe(p as unknown as mqtt.ISubscribePacket);
      case 'unsubscribe':
        return this.onUnsubscribe(p as unknown as mqtt.IUnsubscribePacket);
      case 'pingreq':
        return this.send({ cmd: 'pingresp' });
      case 'disconnect':
        return this.teardown('client');
      case 'connect':
        return this.protocolError('second CONNECT on the same connection');
      default:
        return this.protocolError(`unexpected ${p.cmd.toUpperCase()} packet`);
    }
  }

  private onPublish(p: mqtt.IPublishPacket): void {
    const session = this.session!;
    if (p.qos === 2) return this.protocolError(`QoS 2 PUBLISH to "${wireText(p.topic)}" is not supported`);
    const target = parsePublishTopic(p.topic);
    const payload = Buffer.isBuffer(p.payload) ? p.payload : Buffer.from(p.payload ?? '');
    switch (target.kind) {
      case 'telemetry': {
        if (!sameIdentity(target.identity, session.identity)) {
          return this.forbidden(`published to ${describeIdentity(target.identity)}'s telemetry topic; nothing was stored`);
        }
        let message;
        try {
          message = decodeBag(target.bag, payload);
        } catch (err) {
          if (err instanceof BagError) return this.protocolError(`malformed property bag on "${wireText(p.topic)}": ${err.message}`);
          throw err;
        }
        const messageId = p.messageId;
        const qos = p.qos;
        session.sendTelemetry(message).then(
          () => {
            if (qos === 1) this.puback(messageId);
          },
          (err: unknown) => {
            if (this.state === 'closed') return;
            if (err instanceof EngineError && err.code === 'too-large') {
              log.warn({ who: this.who(), remote: this.remote }, `closing connection: ${err.message}`);
            } else if (err instanceof EngineError && err.code === 'store-full') {
              // MQTT 3.1.1 has no negative PUBACK: the close is the refusal; the device sends it again later.
              log.warn({ who: this.who(), remote: this.remote, code: err.code }, `closing connection: telemetry not stored, ${err.message}`);
            } else {
              log.warn({ err, who: this.who() }, 'closing connection: telemetry could not be stored');
            }
            this.teardown('protocol-error');
          },
        );
        return;
      }
      case 'twin-get':
        this.ackIfQos1(p);
        session.twinGet().then(
          (twin) => this.twinResponse(200, target.rid, Buffer.from(JSON.stringify(twin))),
          (err: unknown) => this.twinError(target.rid, err),
        );
        return;
      case 'twin-patch-reported': {
        this.ackIfQos1(p);
        let patch: unknown;
        try {
          patch = JSON.parse(payload.toString('utf8'));
        } catch {
          return this.twinError(target.rid, new EngineError('bad-request', 'the reported properties patch is not JSON'));
        }
        session.twinPatchReported(patch as Record<string, unknown>).then(
          ({ version }) => this.twinResponse(204, target.rid, Buffer.alloc(0), version),
          (err: unknown) => this.twinError(target.rid, err),
        );
        return;
      }
      case 'method-response':
        this.ackIfQos1(p);
        session.methodResponse(target.rid, target.status, payload);
        return;
      case 'unknown':
        return this.protocolError(`PUBLISH to an unknown topic: ${wireText(target.why, 300)}`);
    }
  }

  private ackIfQos1(p: mqtt.IPublishPacket): void {
    if (p.qos === 1) this.send({ cmd: 'puback', messageId: p.messageId });
  }

  /**
   * Acknowledges a stored telemetry message. The acknowledgements of one event-loop turn are
   * written as one buffer: a client with a window of QoS 1 messages gets its PUBACKs together,
   * and a packet object, an encoder call and a write each would cost more than the bytes.
   */
  private puback(messageId: number | undefined): void {
    if (messageId === undefined) return;
    if (this.pubacks.length === 0) process.nextTick(writePubacks, this);
    this.pubacks.push(messageId);
  }

  /** @internal */
  writePubacks(): void {
    const ids = this.pubacks;
    this.pubacks = [];
    if (this.stream.destroyed || this.stream.writableEnded) return;
    const out = Buffer.allocUnsafe(4 * ids.length);
    for (let i = 0; i < ids.length; i++) {
      // PUBACK: type 4, remaining length 2, packet identifier.
      out[4 * i] = 0x40;
      out[4 * i + 1] = 0x02;
      out.writeUInt16BE(ids[i]!, 4 * i + 2);
    }
    this.stream.write(out);
  }

  private twinResponse(status: number, rid: string, body: Buffer, version?: number): void {
    if (this.state !== 'connected' || !this.session?.subscriptions.has('twin-responses')) {
      if (this.state === 'connected') log.warn({ who: this.who(), rid: wireText(rid) }, 'twin response dropped: the client has not subscribed to $iothub/twin/res/#');
      return;
    }
    const v = version === undefined ? '' : `&$version=${version}`;
    this.publish(`$iothub/twin/res/${status}/?$rid=${encodeURIComponent(rid)}${v}`, body, 0);
  }

  private twinError(rid: string, err: unknown): void {
    const status = err instanceof EngineError ? statusOf(err) : 500;
    const message = err instanceof Error ? err.message : String(err);
    if (!(err instanceof EngineError)) log.error({ err, who: this.who() }, 'twin operation failed');
    else log.warn({ who: this.who(), code: err.code }, `twin request refused: ${message}`);
    this.twinResponse(status, rid, Buffer.from(JSON.stringify({ errorCode: status * 1000 + 1, message })));
  }

  private onPuback(packetId: number): void {
    const lockToken = this.awaitingAck?.get(packetId);
    if (lockToken === undefined) return;
    this.awaitingAck!.delete(packetId);
    this.session!.settleC2D(lockToken, 'complete').catch((err: unknown) => log.warn({ err, who: this.who() }, 'C2D completion failed'));
  }

  private onSubscribe(p: mqtt.ISubscribePacket): void {
    const session = this.session!;
    const granted: number[] = [];
    const kinds: SubscriptionKind[] = [];
    for (const s of p.subscriptions) {
      const sub = parseSubscription(s.topic);
      if (!sub) {
        log.warn({ who: this.who(), filter: wireText(s.topic) }, 'subscription refused: not an IoT Hub topic filter');
        granted.push(0x80);
        continue;
      }
      if (sub.identity && !sameIdentity(sub.identity, { deviceId: session.identity.deviceId, moduleId: sub.kind === 'c2d' ? undefined : session.identity.moduleId })) {
        return this.forbidden(`subscribed to ${describeIdentity(sub.identity)}'s topic "${wireText(s.topic)}"`);
      }
      if ((sub.kind === 'c2d' && session.identity.moduleId !== undefined) || (sub.kind === 'inputs' && session.identity.moduleId === undefined)) {
        log.warn({ who: this.who(), filter: wireText(s.topic) }, `subscription refused: ${sub.kind === 'c2d' ? 'modules do not receive C2D messages' : 'devices have no inputs'}`);
        granted.push(0x80);
        continue;
      }
      granted.push(Math.min(s.qos, 1));
      kinds.push(sub.kind);
    }
    this.send({ cmd: 'suback', messageId: p.messageId, granted });
    // After the SUBACK, so that resumed deliveries follow it on the wire.
    for (const k of kinds) session.subscribe(k);
  }

  private onUnsubscribe(p: mqtt.IUnsubscribePacket): void {
    for (const f of p.unsubscriptions) {
      const sub = parseSubscription(f);
      if (sub) this.session!.unsubscribe(sub.kind);
    }
    this.send({ cmd: 'unsuback', messageId: p.messageId });
  }

  /** @internal */
  deliver(topic: string, d: C2DDelivery): void {
    if (this.state !== 'connected') return;
    const id = this.allocatePacketId();
    (this.awaitingAck ??= new Map()).set(id, d.lockToken);
    this.send({ cmd: 'publish', topic, payload: d.message.body, qos: 1, dup: d.deliveryCount > 1, retain: false, messageId: id });
  }

  /** @internal */
  pushDesired(patch: TwinCollection): void {
    const v = patch.$version;
    this.publish(`$iothub/twin/PATCH/properties/desired/?$version=${v ?? ''}`, Buffer.from(JSON.stringify(patch)), 0);
  }

  /** @internal */
  pushMethod(req: MethodRequest): void {
    this.publish(`$iothub/methods/POST/${req.methodName}/?$rid=${encodeURIComponent(req.requestId)}`, req.payload, 0);
  }

  private publish(topic: string, payload: Buffer, qos: 0 | 1): void {
    if (this.state !== 'connected') return;
    this.send({ cmd: 'publish', topic, payload, qos, dup: false, retain: false, ...(qos === 1 ? { messageId: this.allocatePacketId() } : {}) });
  }

  private allocatePacketId(): number {
    for (let i = 0; i < 65535; i++) {
      const id = this.nextPacketId;
      this.nextPacketId = id === 65535 ? 1 : id + 1;
      if (!this.awaitingAck?.has(id)) return id;
    }
    throw new Error('no free MQTT packet id');
  }

  /** Writes a packet; writes of the same event-loop turn leave in one TLS record. */
  private send(packet: Record<string, unknown>): void {
    if (this.stream.destroyed || this.stream.writableEnded) return;
    if (!this.corked) {
      this.corked = true;
      this.stream.cork();
      process.nextTick(() => {
        this.corked = false;
        this.stream.uncork();
      });
    }
    this.stream.write(mqtt.generate(packet as unknown as mqtt.Packet));
  }

  private refuse(why: string, code?: number): void {
    // Refusals come before authentication: one address repeating them gets a few lines and a count.
    refusals.warn(log, sourceAddress(this.remote), { who: this.who(), remote: this.remote, protocol: this.protocol }, `connection refused: ${why}`);
    if (code !== undefined && !this.stream.destroyed) {
      this.stream.write(mqtt.generate({ cmd: 'connack', returnCode: code, sessionPresent: false }));
    }
    this.teardown('protocol-error', true);
  }

  private protocolError(why: string): void {
    if (this.state === 'closed') return;
    const fields = { who: this.who(), remote: this.remote, protocol: this.protocol };
    if (this.state === 'connected') log.warn(fields, `closing connection: ${why}`);
    else refusals.warn(log, sourceAddress(this.remote), fields, `closing connection: ${why}`);
    this.teardown('protocol-error');
  }

  private forbidden(why: string): void {
    log.warn({ who: this.who(), remote: this.remote, protocol: this.protocol }, `closing connection: ${why}`);
    this.teardown('forbidden');
  }

  /** The engine ends the session (replaced, token expired, identity disabled...). */
  /** @internal */
  engineClose(reason: CloseReason, detail?: string): void {
    log.warn({ who: this.who(), remote: this.remote, reason }, `closing connection: ${detail ?? reason}`);
    this.teardown(reason);
  }

  private teardown(reason: CloseReason, flush = false): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.unwatch?.();
    if (this.connectTimer) clearTimeout(this.connectTimer);
    if (this.keepAliveTimer) clearTimeout(this.keepAliveTimer);
    this.backlog = [];
    this.awaitingAck = undefined;
    this.live?.delete(this);
    this.opts = undefined;
    this.session?.close(reason);
    if (flush) this.stream.end(() => this.stream.destroy());
    else this.stream.destroy();
    // A half-open peer must not keep the socket: end() above is given a second to flush.
    if (flush) setTimeout(() => this.stream.destroy(), 1000).unref();
  }

  /** @internal */
  malformed(err: Error): void {
    this.protocolError(`malformed packet: ${err.message}`);
  }

  /** @internal */
  transportError(err: Error): void {
    log.debug({ err, remote: this.remote }, 'transport error');
    this.teardown('client');
  }

  /** @internal */
  transportClosed(): void {
    this.teardown('client');
  }

  /** Closes from outside (listener shutdown). */
  close(): void {
    this.teardown('shutdown');
  }
}

function onParserPacket(this: Owned, p: unknown): void {
  this[OWNER].onPacket(p as InternalPacket);
}

function onParserError(this: Owned, err: Error): void {
  this[OWNER].malformed(err);
}

function onStreamData(this: Owned, chunk: Buffer): void {
  this[OWNER].onData(chunk);
}

function onStreamError(this: Owned, err: Error): void {
  this[OWNER].transportError(err);
}

function onStreamEnd(this: Owned): void {
  this[OWNER].transportClosed();
}

function writePubacks(conn: MqttConnection): void {
  conn.writePubacks();
}

/**
 * What the engine pushes to one connection. A class rather than an object of arrow functions:
 * one small object per idle connection instead of five closures (each carrying a name property
 * once compiled).
 */
class ConnectionSessionHandler implements SessionHandler {
  constructor(private readonly conn: MqttConnection) {}
  onC2D(d: C2DDelivery): void {
    const identity = this.conn.connectedIdentity();
    this.conn.deliver(c2dTopic(identity.deviceId, d.message, d.ack), d);
  }
  onInput(input: string, d: C2DDelivery): void {
    const identity = this.conn.connectedIdentity();
    this.conn.deliver(inputTopic(identity.deviceId, identity.moduleId ?? '', input, d.message, d.ack), d);
  }
  onDesired(patch: TwinCollection): void {
    this.conn.pushDesired(patch);
  }
  onMethod(req: MethodRequest): void {
    this.conn.pushMethod(req);
  }
  close(reason: CloseReason, detail?: string): void {
    this.conn.engineClose(reason, detail);
  }
}

function statusOf(err: EngineError): number {
  switch (err.code) {
    case 'bad-request':
    case 'too-large':
      return 400;
    case 'not-found':
      return 404;
    case 'precondition':
      return 412;
    case 'throttled':
      return 429;
    case 'unauthorized':
    case 'forbidden':
    case 'disabled':
    case 'expired':
      return 401;
    default:
      return 500;
  }
}
