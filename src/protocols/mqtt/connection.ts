import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import mqtt from 'mqtt-packet';
import type { Engine } from '../../engine/engine.ts';
import { describeIdentity } from '../../model/identity.ts';
import type { CloseReason, Protocol, Session } from '../../engine/types.ts';
import type { ClientCertificate, IdentityRef } from '../../model/identity.ts';
import { childLog, refusals, sourceAddress } from '../../util/log.ts';
import type { OnBehalfOfSource } from '../../identity/on-behalf-of.ts';
import type { PreAuthTicket } from '../pre-auth.ts';
import { handle, onConnect } from './handlers/index.ts';
import { PacketReader, type PacketSink, type ReadPacket } from './packet-reader.ts';
import { CONNACK, type ClientConnection, type InternalPacket, type State } from './types.ts';

const log = childLog('mqtt');

/** The plain buffer list of the `bl` package mqtt-packet builds on (its parser would use the stream form). */
const { BufferList } = createRequire(createRequire(import.meta.url).resolve('mqtt-packet'))('bl') as {
  BufferList: new () => unknown;
};

/**
 * What the parser reads from its settings once CONNECT is in: mqtt-packet keeps the whole CONNECT
 * packet there (client id, user name, the password's token) for the connection's life otherwise.
 */
const CONNECTED_PARSER_SETTINGS = Object.freeze({ protocolVersion: 4 });
/** The parser's state machine, the same for every parser: one array for all connections. */
const PARSER_STATES = Object.freeze(['_parseHeader', '_parseLength', '_parsePayload', '_newPacket']);

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

/**
 * One MQTT 3.1.1 connection of a device or module, over TLS or a WebSocket: frames with
 * mqtt-packet until connected, then with a PacketReader (the packets of every message without
 * mqtt-packet's copies), holds the connection's state and hands each packet to its handler (handlers/);
 * engine pushes leave as PUBLISHes (session-handler.ts).
 * Every refusal closes only this connection and logs one line saying why.
 */
export class MqttConnection implements ClientConnection, PacketSink {
  state: State = 'awaiting-connect';
  /** Reads the stream until the reader takes it over; dropped then (with its emitter, about 1 KB a connection). */
  private parser?: mqtt.Parser;
  /** Reads the stream once connected (made then): PUBLISH, PUBACK and PINGREQ without mqtt-packet. */
  private reader?: PacketReader;
  session?: Session;
  identity?: IdentityRef;
  private backlog: InternalPacket[] = [];
  readonly remote: string;
  readonly protocol: MqttConnectionOptions['protocol'];
  /** Needed until CONNECT is handled (certificate, timeouts, on-behalf-of source); dropped then. */
  private opts?: MqttConnectionOptions;
  readonly onBehalfOfSource?: OnBehalfOfSource;
  private readonly live?: Set<MqttConnection>;
  private lastReceived = Date.now();
  private keepAliveMs = 0;
  private keepAliveTimer?: NodeJS.Timeout;
  private connectTimer?: NodeJS.Timeout;
  /** Counted as unauthenticated until CONNACK; dropped then (an idle connection keeps nothing it does not need). */
  private preAuth?: PreAuthTicket;
  private nextPacketId = 1;
  /** Outgoing QoS 1 PUBLISHes waiting for PUBACK: packet id -> C2D lock token (made at the first). */
  awaitingAck?: Map<number, string>;
  private corked = false;
  /** Packet ids of stored telemetry to acknowledge at the end of this turn. */
  private pubacks: number[] = [];
  private readonly maxPacketBytes: number;
  /** Ends the registry watch of an on-behalf-of connection. */
  unwatch?: () => void;

  constructor(
    private readonly stream: Duplex,
    readonly engine: Engine,
    opts: MqttConnectionOptions,
  ) {
    this.opts = opts;
    this.remote = opts.remote;
    this.protocol = opts.protocol;
    if (opts.onBehalfOf) this.onBehalfOfSource = opts.onBehalfOf;
    this.maxPacketBytes = opts.maxPacketBytes ?? 512 * 1024;
    this.parser = parserFor(this);
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
      if (this.state === 'awaiting-connect')
        this.refuse(`no CONNECT within ${(opts.connectTimeoutMs ?? 10_000) / 1000} s`);
    }, opts.connectTimeoutMs ?? 10_000);
    this.connectTimer.unref();
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  who(): string {
    return this.identity ? describeIdentity(this.identity) : `client at ${this.remote}`;
  }

  /** @internal */
  onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.lastReceived = Date.now();
    try {
      if (this.reader !== undefined || (this.state === 'connected' && parserIdle(this.parser))) {
        if (this.reader === undefined) {
          this.reader = new PacketReader(this, this.maxPacketBytes);
          this.parser = undefined;
        }
        this.reader.feed(chunk);
        return;
      }
      this.parser!.parse(chunk);
    } catch (err) {
      // A bug in handling one client's packet must cost that connection only, never the process.
      log.error(
        { err, who: this.who(), remote: this.remote },
        'closing connection: internal error while handling a packet',
      );
      this.teardown('protocol-error');
      return;
    }
    // The parser buffers until a packet is whole: refuse huge ones as soon as their length is known.
    const pending = (this.parser as unknown as { packet: { length: number } } | undefined)?.packet;
    if ((this.state as State) !== 'closed' && pending && pending.length > this.maxPacketBytes) {
      this.protocolError(`packet of ${pending.length} bytes exceeds the limit of ${this.maxPacketBytes}`);
    }
  }

  /** @internal The reader's packets (PacketSink). */
  packet(p: ReadPacket): void {
    this.onPacket(p as unknown as InternalPacket);
  }

  /** @internal The reader's frames of other types, whole: mqtt-packet parses them at once. */
  frame(bytes: Buffer): void {
    // Rare once connected (SUBSCRIBE, DISCONNECT): a parser for the frame, gone with it.
    parserFor(this, CONNECTED_PARSER_SETTINGS).parse(bytes);
  }

  /** @internal */
  tooLarge(length: number): void {
    this.protocolError(`packet of ${length} bytes exceeds the limit of ${this.maxPacketBytes}`);
  }

  /** @internal */
  onPacket(p: InternalPacket): void {
    if (this.state === 'closed') return;
    if (this.state === 'awaiting-connect') {
      if (p.cmd !== 'connect') return this.protocolError(`first packet is ${p.cmd.toUpperCase()}, not CONNECT`);
      this.state = 'authenticating';
      // Only 3.1.1 gets further (onConnect refuses the rest), so that is all the parser needs.
      if (this.parser) (this.parser as unknown as { settings: object }).settings = CONNECTED_PARSER_SETTINGS;
      if (this.connectTimer) clearTimeout(this.connectTimer);
      this.connectTimer = undefined;
      void onConnect(this, p as unknown as mqtt.IConnectPacket);
      return;
    }
    if (this.state === 'authenticating') {
      // Clients may pipeline packets behind CONNECT; handle them once the session exists.
      if (this.backlog.length > 1000) return this.protocolError('too many packets before CONNACK');
      this.backlog.push(p);
      return;
    }
    handle(this, p);
  }

  /** The TLS client certificate, until CONNECT is handled. */
  get clientCertificate(): ClientCertificate | undefined {
    return this.opts?.clientCertificate;
  }

  /** CONNECT accepted (handlers/connect.ts) and its session open: CONNACK, keep-alive, then the packets that waited. */
  established(session: Session, keepalive: number | undefined): void {
    this.session = session;
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
    if (keepalive && keepalive > 0) {
      this.keepAliveMs = keepalive * 1000 * keepAliveFactor;
      this.armKeepAlive();
    }
    const backlog = this.backlog;
    this.backlog = [];
    for (const q of backlog) {
      if (this.state !== 'connected') break;
      handle(this, q);
    }
    // The packet reader takes the next bytes: an idle connection keeps no parser.
    if (this.state === 'connected' && parserIdle(this.parser)) this.parser = undefined;
  }

  private armKeepAlive(): void {
    if (this.keepAliveTimer) clearTimeout(this.keepAliveTimer);
    const due = this.lastReceived + this.keepAliveMs - Date.now();
    this.keepAliveTimer = setTimeout(
      () => {
        if (this.state !== 'connected') return;
        if (Date.now() - this.lastReceived >= this.keepAliveMs) {
          log.warn(
            { who: this.who(), remote: this.remote, keepAliveMs: this.keepAliveMs },
            'closing connection: keep-alive expired (nothing received for 1.5x the keep-alive interval)',
          );
          this.teardown('keep-alive');
        } else {
          this.armKeepAlive();
        }
      },
      Math.max(10, due),
    );
    this.keepAliveTimer.unref();
  }

  /**
   * Acknowledges a stored telemetry message. The acknowledgements of one event-loop turn are
   * written as one buffer: a client with a window of QoS 1 messages gets its PUBACKs together,
   * and a packet object, an encoder call and a write each would cost more than the bytes.
   */
  puback(messageId: number | undefined): void {
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

  publish(topic: string, payload: Buffer, qos: 0 | 1): void {
    if (this.state !== 'connected') return;
    this.send({
      cmd: 'publish',
      topic,
      payload,
      qos,
      dup: false,
      retain: false,
      ...(qos === 1 ? { messageId: this.allocatePacketId() } : {}),
    });
  }

  allocatePacketId(): number {
    for (let i = 0; i < 65535; i++) {
      const id = this.nextPacketId;
      this.nextPacketId = id === 65535 ? 1 : id + 1;
      if (!this.awaitingAck?.has(id)) return id;
    }
    throw new Error('no free MQTT packet id');
  }

  /** Writes a packet; writes of the same event-loop turn leave in one TLS record. */
  send(packet: Record<string, unknown>): void {
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

  refuse(why: string, code?: number): void {
    // Refusals come before authentication: one address repeating them gets a few lines and a count.
    refusals.warn(
      log,
      sourceAddress(this.remote),
      { who: this.who(), remote: this.remote, protocol: this.protocol },
      `connection refused: ${why}`,
    );
    if (code !== undefined && !this.stream.destroyed) {
      this.stream.write(mqtt.generate({ cmd: 'connack', returnCode: code, sessionPresent: false }));
    }
    this.teardown('protocol-error', true);
  }

  protocolError(why: string): void {
    if (this.state === 'closed') return;
    const fields = { who: this.who(), remote: this.remote, protocol: this.protocol };
    if (this.state === 'connected') log.warn(fields, `closing connection: ${why}`);
    else refusals.warn(log, sourceAddress(this.remote), fields, `closing connection: ${why}`);
    this.teardown('protocol-error');
  }

  forbidden(why: string): void {
    log.warn({ who: this.who(), remote: this.remote, protocol: this.protocol }, `closing connection: ${why}`);
    this.teardown('forbidden');
  }

  /** The engine ends the session (replaced, token expired, identity disabled...). */
  engineClose(reason: CloseReason, detail?: string): void {
    log.warn({ who: this.who(), remote: this.remote, reason }, `closing connection: ${detail ?? reason}`);
    this.teardown(reason);
  }

  teardown(reason: CloseReason, flush = false): void {
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

/** An mqtt-packet parser whose packets and errors go to `conn`. */
function parserFor(conn: MqttConnection, settings?: object): mqtt.Parser {
  const parser = mqtt.parser({ protocolVersion: 4 });
  const p = parser as unknown as { _list: unknown; _states: readonly string[]; settings: object } & Owned;
  // The parser keeps its bytes in a BufferListStream, a whole Duplex stream per connection; it
  // only ever appends, reads and consumes, which the plain list does for a fraction of the memory.
  p._list = new BufferList();
  p._states = PARSER_STATES;
  if (settings) p.settings = settings;
  // Listeners shared by all connections find theirs through the emitter: no closures per connection.
  p[OWNER] = conn;
  parser.on('packet', onParserPacket);
  parser.on('error', onParserError);
  return parser;
}

/** Nothing of a packet is buffered in mqtt-packet's parser: the reader can take the stream over. */
function parserIdle(parser: unknown): boolean {
  const p = parser as { _list: { length: number }; _stateCounter: number } | undefined;
  return p === undefined || (p._list.length === 0 && p._stateCounter === 0);
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
