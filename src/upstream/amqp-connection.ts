import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import rhea, {
  type Connection,
  type Message as AmqpMessage,
  type Receiver,
  type ReceiverOptions,
  type SenderOptions,
} from 'rhea';
import '../protocols/amqp/rhea-writer.ts';
import type { Logger } from 'pino';
import { OutLink, onReceiverGone, whenAttached } from './amqp-links.ts';
import { UpstreamDownError, UpstreamError } from './errors.ts';
import { UpstreamConnectError } from './transport.ts';

/**
 * One AMQP connection to the parent, from open to loss: the `$cbs` request/response pair and
 * the links opened on it. When it is lost, everything waiting on it fails at once with
 * UpstreamDownError and the AmqpParentLink opens a new one.
 */

const CBS_TOKEN_TYPE = 'servicebus.windows.net:sastoken';
const MAX_FRAME_SIZE = 65536;

export interface AmqpConnectionOptions {
  /** The AMQP container id we announce. */
  containerId: string;
  /** `hostname` of the AMQP open: the IoT hub's host name. */
  hubHostName: string;
  /** Our idle timeout: the parent sends at least this often, or the connection counts as lost. */
  idleTimeoutMs: number;
  /** How long an open, attach or CBS answer may take. */
  operationTimeoutMs: number;
  log: Logger;
}

export interface PutTokenResult {
  status: number;
  description: string;
}

export class AmqpConnection {
  readonly conn: Connection;
  readonly openedAt = Date.now();
  readonly lost: Promise<string>;
  private markLost!: (why: string) => void;
  private ended = false;
  private cbsOut?: OutLink;
  private readonly cbsWaiting = new Map<
    string,
    { resolve: (r: PutTokenResult) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  private nextCbsId = 1;
  private readonly outLinks = new Set<OutLink>();
  private readonly onEnd: Array<(why: string) => void> = [];
  /** Attaches under way, failed when the connection goes (raceLost). */
  private readonly attachWaiters = new Set<(why: string) => void>();
  private lostWhy = '';

  private constructor(
    private readonly socket: Duplex,
    readonly o: AmqpConnectionOptions,
  ) {
    this.lost = new Promise((resolve) => (this.markLost = resolve));
    const container = rhea.create_container({ id: o.containerId });
    // Link and connection errors are handled where they happen; this keeps rhea from throwing
    // the ones nobody listens to.
    container.on('error', (err: unknown) => o.log.debug({ err: String(err) }, 'AMQP error on the upstream connection'));
    this.conn = container.create_connection({
      id: o.containerId,
      container_id: o.containerId,
      hostname: o.hubHostName,
      idle_time_out: o.idleTimeoutMs,
      max_frame_size: MAX_FRAME_SIZE,
      reconnect: false,
      // Our socket is already open and verified: hand it to rhea as its connection.
      connection_details: () => ({
        host: o.hubHostName,
        port: 0,
        connect: (_port: number, _host: string, _opts: unknown, connected: () => void) => {
          process.nextTick(connected);
          return socket;
        },
      }),
    } as never);
    const lose = (why: string) => () => this.end(why);
    this.conn.on('disconnected', (ctx) => {
      const err = (ctx as { error?: Error }).error;
      this.end(err ? `connection to the parent lost: ${err.message}` : 'connection to the parent closed');
    });
    this.conn.on('connection_close', () => {
      const e = this.conn.error as { condition?: string; description?: string } | undefined;
      this.end(
        e?.condition
          ? `the parent closed the connection (${e.condition}: ${e.description ?? ''})`
          : 'the parent closed the connection',
      );
    });
    this.conn.on('connection_error', () => {});
    this.conn.on('protocol_error', (err: unknown) => this.end(`AMQP protocol error: ${String(err)}`));
    this.conn.on('error', (err: unknown) => this.end(`AMQP error: ${String(err)}`));
    this.conn.on('session_error', () => {});
    this.conn.on('sender_error', () => {});
    this.conn.on('receiver_error', () => {});
    socket.on('close', lose('connection to the parent closed'));
    socket.on('error', (err: Error) => this.end(`connection to the parent lost: ${err.message}`));
  }

  /** Opens AMQP on a connected socket and attaches the `$cbs` links. */
  static async open(socket: Duplex, o: AmqpConnectionOptions): Promise<AmqpConnection> {
    const pc = new AmqpConnection(socket, o);
    try {
      await pc.start();
      return pc;
    } catch (err) {
      pc.end(err instanceof Error ? err.message : String(err));
      throw err;
    }
  }

  private async start(): Promise<void> {
    const opened = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new UpstreamConnectError('timeout', `the parent did not open AMQP within ${this.o.operationTimeoutMs} ms`),
          ),
        this.o.operationTimeoutMs,
      );
      this.conn.once('connection_open', () => {
        clearTimeout(timer);
        resolve();
      });
      void this.lost.then((why) => {
        clearTimeout(timer);
        reject(new UpstreamConnectError('refused', why));
      });
    });
    this.conn.connect();
    await opened;
    const sender = this.conn.open_sender({
      target: { address: '$cbs' },
      source: { address: 'cbs-requests' },
      name: `cbs-out-${randomUUID()}`,
    } as SenderOptions);
    const receiver = this.conn.open_receiver({
      source: { address: '$cbs' },
      target: { address: 'cbs' },
      name: `cbs-in-${randomUUID()}`,
      credit_window: 100,
    } as ReceiverOptions);
    receiver.on('message', (ctx) => this.cbsAnswer(ctx.message!));
    onReceiverGone(receiver, '$cbs', (why) => this.end(why));
    await Promise.all([
      whenAttached(sender, 'sender', '$cbs', this.o.operationTimeoutMs),
      whenAttached(receiver, 'receiver', '$cbs', this.o.operationTimeoutMs),
    ]);
    this.cbsOut = this.track(new OutLink(sender, '$cbs'));
    this.cbsOut.onGone((why) => this.end(why));
  }

  get closed(): boolean {
    return this.ended;
  }

  /** True when the parent offered `capability` in its AMQP open. */
  offers(capability: string): boolean {
    const open = (this.conn as unknown as { remote?: { open?: { offered_capabilities?: unknown } } }).remote?.open;
    const caps = open?.offered_capabilities;
    const list = Array.isArray(caps) ? caps : caps === undefined || caps === null ? [] : [caps];
    return list.some((c) => String(c) === capability);
  }

  /** Runs when the connection is lost or closed (at once when it already is). */
  onClosed(fn: (why: string) => void): void {
    if (this.ended) fn('closed');
    else this.onEnd.push(fn);
  }

  /** CBS put-token: `audience` is what the token is put for (the `name`), `token` the SAS. */
  putToken(audience: string, token: string): Promise<PutTokenResult> {
    if (this.ended || !this.cbsOut) return Promise.reject(new UpstreamDownError('the upstream connection is closed'));
    const id = `put-token-${this.nextCbsId++}`;
    const msg: AmqpMessage = {
      message_id: id,
      reply_to: 'cbs',
      to: '$cbs',
      application_properties: { operation: 'put-token', type: CBS_TOKEN_TYPE, name: audience },
      body: token,
    };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.cbsWaiting.delete(id);
        reject(
          new UpstreamError(
            `the parent did not answer a CBS put-token for ${audience} within ${this.o.operationTimeoutMs} ms`,
            'com.microsoft:timeout',
          ),
        );
      }, this.o.operationTimeoutMs);
      this.cbsWaiting.set(id, { resolve, reject, timer });
      this.cbsOut!.post(msg);
    });
  }

  private cbsAnswer(msg: AmqpMessage): void {
    const id = msg.correlation_id === undefined ? undefined : String(msg.correlation_id);
    const waiting = id === undefined ? undefined : this.cbsWaiting.get(id);
    if (!waiting) return;
    this.cbsWaiting.delete(id!);
    clearTimeout(waiting.timer);
    const app = (msg.application_properties ?? {}) as Record<string, unknown>;
    const status = Number(app['status-code'] ?? app.statusCode ?? 0);
    waiting.resolve({ status, description: String(app['status-description'] ?? app.statusDescription ?? '') });
  }

  /** Attaches a sender; rejects with the parent's reason when it refuses. */
  async openSender(opts: SenderOptions, what: string): Promise<OutLink> {
    if (this.ended) throw new UpstreamDownError('the upstream connection is closed');
    const sender = this.conn.open_sender(opts);
    await this.raceLost(whenAttached(sender, 'sender', what, this.o.operationTimeoutMs));
    return this.track(new OutLink(sender, what));
  }

  /** Attaches a receiver; rejects with the parent's reason when it refuses. */
  async openReceiver(opts: ReceiverOptions, what: string): Promise<Receiver> {
    if (this.ended) throw new UpstreamDownError('the upstream connection is closed');
    const receiver = this.conn.open_receiver(opts);
    return this.raceLost(whenAttached(receiver, 'receiver', what, this.o.operationTimeoutMs));
  }

  private track(link: OutLink): OutLink {
    this.outLinks.add(link);
    link.onGone(() => this.outLinks.delete(link));
    return link;
  }

  /**
   * `p`, or a failure when the connection goes first. The waiter is dropped once `p` settles: a
   * reaction on `lost` would stay until the connection ends, one per attach ever made on it.
   */
  private raceLost<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      // Deferred as before, so an attach that settled as the connection went keeps its own outcome.
      const onLost = (why: string) => queueMicrotask(() => reject(new UpstreamDownError(why)));
      if (this.ended) onLost(this.lostWhy);
      else this.attachWaiters.add(onLost);
      p.then(
        (value) => {
          this.attachWaiters.delete(onLost);
          resolve(value);
        },
        (err: unknown) => {
          this.attachWaiters.delete(onLost);
          reject(err);
        },
      );
    });
  }

  /** Closes politely (AMQP close), then cuts the socket if the parent does not answer. */
  async close(): Promise<void> {
    if (this.ended) return;
    const gone = new Promise<void>((resolve) => this.onClosed(() => resolve()));
    try {
      this.conn.close();
    } catch {
      /* already closing */
    }
    const timer = setTimeout(() => this.end('closed'), 1000);
    await gone;
    clearTimeout(timer);
  }

  /** The connection is over: everything waiting on it fails with `why`. */
  end(why: string): void {
    if (this.ended) return;
    this.ended = true;
    for (const [id, w] of this.cbsWaiting) {
      clearTimeout(w.timer);
      w.reject(new UpstreamDownError(why));
      this.cbsWaiting.delete(id);
    }
    for (const l of [...this.outLinks]) l.end(why, 'amqp:connection:forced');
    this.outLinks.clear();
    if (!this.socket.destroyed) this.socket.destroy();
    // rhea only notices a socket it sees end; one we cut must be reported to it, or its
    // heartbeat timers live on (and keep the process alive) for minutes.
    const rc = this.conn as unknown as {
      _disconnected?: (e?: unknown) => void;
      heartbeat_in?: NodeJS.Timeout;
      heartbeat_out?: NodeJS.Timeout;
    };
    try {
      rc._disconnected?.();
    } catch {
      /* already disconnected */
    }
    const stopTimers = () => {
      if (rc.heartbeat_in) clearTimeout(rc.heartbeat_in);
      if (rc.heartbeat_out) clearTimeout(rc.heartbeat_out);
    };
    stopTimers();
    // When the end comes from inside rhea's input handling (a close frame), rhea arms its idle
    // timer once more on the way out.
    setImmediate(stopTimers);
    this.lostWhy = why;
    this.markLost(why);
    for (const w of this.attachWaiters) w(why);
    this.attachWaiters.clear();
    for (const fn of this.onEnd.splice(0)) {
      try {
        fn(why);
      } catch (err) {
        this.o.log.error({ err }, 'upstream connection close handler failed');
      }
    }
  }

  /** Link properties every link of a target carries. */
  static linkProperties(authChain: string | undefined, extra: Record<string, string> = {}): Record<string, string> {
    const p: Record<string, string> = {
      'com.microsoft:api-version': '2021-04-12',
      'com.microsoft:client-version': 'strata-edge-hub',
      ...extra,
    };
    if (authChain) p['com.microsoft:auth-chain'] = authChain;
    return p;
  }
}
