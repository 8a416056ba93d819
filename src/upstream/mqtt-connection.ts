import type { Duplex } from 'node:stream';
import mqtt from 'mqtt-packet';
import type { Logger } from 'pino';
import { UpstreamDownError, UpstreamError } from './errors.ts';
import { UpstreamConnectError } from './transport.ts';

/**
 * One MQTT 3.1.1 client connection to the parent, from CONNECT to loss, framed with
 * mqtt-packet on a socket opened and verified by transport.ts. It pipelines: any number of
 * QoS 1 PUBLISHes may wait for their PUBACK at once (each resolves on its own), because a
 * stop-and-wait client would cap a gateway's upstream at one message per round trip.
 * Incoming QoS 1 PUBLISHes are acknowledged only when the owner says so (`puback`), which is
 * how a C2D message stays locked at the parent until the device below settles it.
 */

/** CONNACK return codes of MQTT 3.1.1, as the parent explains a refusal. */
const CONNACK_TEXT: Record<number, string> = {
  1: 'unacceptable protocol version',
  2: 'identifier rejected',
  3: 'server unavailable',
  4: 'bad user name or password',
  5: 'not authorized',
};

export interface MqttConnectionOptions {
  clientId: string;
  username: string;
  password: string;
  /** Seconds; the wire pings when it has sent nothing for half of it. */
  keepAliveSecs: number;
  /** How long the CONNACK and SUBACKs may take. */
  operationTimeoutMs: number;
  log: Logger;
}

export interface IncomingPublish {
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  messageId?: number;
  dup: boolean;
}

/** A CONNACK refusal: `code` is the MQTT return code. */
export class ConnackRefusal extends UpstreamConnectError {
  constructor(
    readonly returnCode: number,
    message: string,
  ) {
    super('refused', message);
  }
}

interface Waiting {
  resolve: (v: number[] | undefined) => void;
  reject: (e: Error) => void;
}

export class MqttConnection {
  readonly openedAt = Date.now();
  readonly lost: Promise<string>;
  /** PUBLISHes from the parent; set by the owner before any subscription. */
  onPublish: (p: IncomingPublish) => void = () => undefined;
  private markLost!: (why: string) => void;
  private ended = false;
  private readonly parser = mqtt.parser({ protocolVersion: 4 });
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 1;
  private corked = false;
  private lastSent = Date.now();
  private lastReceived = Date.now();
  private pingTimer?: NodeJS.Timeout;
  private connack?: { resolve: () => void; reject: (e: Error) => void };
  private readonly idleGone: Array<() => void> = [];

  private constructor(
    private readonly socket: Duplex,
    private readonly o: MqttConnectionOptions,
  ) {
    this.lost = new Promise((resolve) => (this.markLost = resolve));
    this.parser.on('packet', (p) => this.onPacket(p));
    this.parser.on('error', (err: Error) => this.end(`malformed packet from the parent: ${err.message}`));
    socket.on('data', (chunk: Buffer) => {
      this.lastReceived = Date.now();
      try {
        this.parser.parse(chunk);
      } catch (err) {
        this.o.log.error({ err }, 'error while handling a packet from the parent');
        this.end(`error while handling a packet from the parent: ${(err as Error).message}`);
      }
    });
    socket.on('error', (err: Error) => this.end(`connection to the parent lost: ${err.message}`));
    socket.on('close', () => this.end('connection to the parent closed'));
    socket.on('end', () => this.end('the parent closed the connection'));
  }

  /** Sends CONNECT on an open socket; resolves once the parent accepted it (CONNACK 0). */
  static async open(socket: Duplex, o: MqttConnectionOptions): Promise<MqttConnection> {
    const wire = new MqttConnection(socket, o);
    const accepted = new Promise<void>((resolve, reject) => (wire.connack = { resolve, reject }));
    const timer = setTimeout(
      () => wire.end(`the parent did not answer CONNECT within ${o.operationTimeoutMs} ms`),
      o.operationTimeoutMs,
    );
    void wire.lost.then((why) => wire.connack?.reject(new UpstreamConnectError('lost', why)));
    wire.send({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      clientId: o.clientId,
      keepalive: o.keepAliveSecs,
      username: o.username,
      password: Buffer.from(o.password, 'utf8'),
    });
    try {
      await accepted;
    } finally {
      clearTimeout(timer);
    }
    wire.armPing();
    return wire;
  }

  get closed(): boolean {
    return this.ended;
  }

  /** QoS 1 PUBLISHes and SUBSCRIBEs waiting for their answer. */
  get pending(): number {
    return this.waiting.size;
  }

  /**
   * QoS 1: `done()` on PUBACK, `done(err)` (UpstreamDownError) when the connection goes first.
   * A callback rather than a promise, and the packet encoded here rather than by mqtt-packet:
   * this runs for every message a gateway forwards.
   */
  publish(topic: string, payload: Buffer, done: (err?: Error) => void): void {
    if (this.ended) return done(new UpstreamDownError('the upstream connection is closed'));
    const messageId = this.allocate();
    this.waiting.set(messageId, { resolve: () => done(), reject: done });
    this.write(encodePublishQos1(topic, messageId, payload));
  }

  /** QoS 0: requests and answers whose outcome comes back as a message of its own (twin, methods). */
  post(topic: string, payload: Buffer): void {
    if (this.ended) throw new UpstreamDownError('the upstream connection is closed');
    this.send({ cmd: 'publish', topic, payload, qos: 0, dup: false, retain: false });
  }

  /** Resolves with the granted QoS per filter (0x80: refused). */
  subscribe(filters: string[]): Promise<number[]> {
    if (this.ended) return Promise.reject(new UpstreamDownError('the upstream connection is closed'));
    const messageId = this.allocate();
    return new Promise<number[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.waiting.delete(messageId))
          reject(
            new UpstreamError(
              `the parent did not answer SUBSCRIBE within ${this.o.operationTimeoutMs} ms`,
              'com.microsoft:timeout',
              504,
            ),
          );
      }, this.o.operationTimeoutMs);
      this.waiting.set(messageId, {
        resolve: (granted) => {
          clearTimeout(timer);
          resolve(granted ?? []);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.send({ cmd: 'subscribe', messageId, subscriptions: filters.map((topic) => ({ topic, qos: 1 as const })) });
    });
  }

  unsubscribe(filters: string[]): void {
    if (this.ended) return;
    const messageId = this.allocate();
    // The UNSUBACK carries nothing we need: free the id when it comes.
    this.waiting.set(messageId, { resolve: () => undefined, reject: () => undefined });
    this.send({ cmd: 'unsubscribe', messageId, unsubscriptions: filters });
  }

  /** Acknowledges an incoming QoS 1 PUBLISH. */
  puback(messageId: number): void {
    if (!this.ended) this.send({ cmd: 'puback', messageId });
  }

  /** Resolves once nothing waits for an answer (or the connection is gone). */
  drained(): Promise<void> {
    if (this.ended || this.waiting.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleGone.push(resolve));
  }

  /** DISCONNECT, then the socket is closed. */
  close(why = 'closed'): void {
    if (this.ended) return;
    this.send({ cmd: 'disconnect' });
    this.socket.end();
    this.end(why);
  }

  /** The connection is over: everything waiting on it fails with `why`. */
  end(why: string): void {
    if (this.ended) return;
    this.ended = true;
    if (this.pingTimer) clearTimeout(this.pingTimer);
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) w.reject(new UpstreamDownError(why));
    for (const fn of this.idleGone.splice(0)) fn();
    // Whatever is still buffered had its chance: a socket we give up on must not linger.
    setImmediate(() => this.socket.destroy());
    this.markLost(why);
  }

  private allocate(): number {
    for (let i = 0; i < 65535; i++) {
      const id = this.nextId;
      this.nextId = id === 65535 ? 1 : id + 1;
      if (!this.waiting.has(id)) return id;
    }
    throw new UpstreamError('all 65535 MQTT packet ids are waiting for an answer', 'com.microsoft:server-busy', 503);
  }

  private onPacket(p: mqtt.Packet): void {
    if (this.ended) return;
    switch (p.cmd) {
      case 'connack': {
        const code = p.returnCode ?? 0;
        const c = this.connack;
        this.connack = undefined;
        if (!c) return this.end('a second CONNACK from the parent');
        if (code === 0) return c.resolve();
        const why = `the parent refused CONNECT of ${this.o.clientId}: ${CONNACK_TEXT[code] ?? `return code ${code}`}`;
        c.reject(new ConnackRefusal(code, why));
        return this.end(why);
      }
      case 'puback':
      case 'unsuback':
        return this.answer(p.messageId);
      case 'suback':
        return this.answer(
          p.messageId,
          p.granted.map((g) => (typeof g === 'number' ? g : ((g as { qos?: number }).qos ?? 0x80))),
        );
      case 'publish':
        this.onPublish({
          topic: p.topic,
          payload: Buffer.isBuffer(p.payload) ? p.payload : Buffer.from(p.payload),
          qos: p.qos,
          messageId: p.messageId,
          dup: p.dup,
        });
        return;
      case 'pingresp':
        return;
      default:
        return this.end(`unexpected ${p.cmd.toUpperCase()} from the parent`);
    }
  }

  private answer(messageId: number | undefined, granted?: number[]): void {
    if (messageId === undefined) return;
    const w = this.waiting.get(messageId);
    if (!w) return;
    this.waiting.delete(messageId);
    w.resolve(granted);
    if (this.waiting.size === 0) for (const fn of this.idleGone.splice(0)) fn();
  }

  /** Pings when nothing was sent for half the keep-alive; silence for a whole one (two pings unanswered) ends the connection. */
  private armPing(): void {
    const half = (this.o.keepAliveSecs * 1000) / 2;
    this.pingTimer = setTimeout(() => {
      if (this.ended) return;
      const now = Date.now();
      if (now - this.lastReceived >= this.o.keepAliveSecs * 1000) {
        this.end(`the parent sent nothing for ${this.o.keepAliveSecs} s (keep-alive)`);
        return;
      }
      if (now - this.lastSent >= half) this.send({ cmd: 'pingreq' });
      this.armPing();
    }, half / 2);
    this.pingTimer.unref();
  }

  private send(packet: Record<string, unknown>): void {
    this.write(mqtt.generate(packet as unknown as mqtt.Packet));
  }

  /** Writes of one event-loop turn leave in one TLS record. */
  private write(bytes: Buffer): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.lastSent = Date.now();
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(bytes);
  }
}

/** A QoS 1 PUBLISH (no DUP, no RETAIN) of MQTT 3.1.1, byte by byte. */
export function encodePublishQos1(topic: string, messageId: number, payload: Buffer): Buffer {
  const topicBytes = Buffer.byteLength(topic);
  if (topicBytes > 0xffff)
    throw new UpstreamError(
      `an MQTT topic holds at most 65535 bytes, this one ${topicBytes}`,
      'amqp:link:message-size-exceeded',
    );
  const remaining = 2 + topicBytes + 2 + payload.length;
  let lengthBytes = 1;
  for (let n = remaining; n > 127; n = Math.floor(n / 128)) lengthBytes++;
  const out = Buffer.allocUnsafe(1 + lengthBytes + remaining);
  out[0] = 0x32;
  let at = 1;
  let n = remaining;
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out[at++] = byte;
  } while (n > 0);
  out.writeUInt16BE(topicBytes, at);
  at += 2;
  at += out.write(topic, at, 'utf8');
  out.writeUInt16BE(messageId, at);
  at += 2;
  payload.copy(out, at);
  return out;
}
