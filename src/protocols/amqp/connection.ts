import rhea, { type Connection, type EventContext } from 'rhea';
import './rhea-writer.ts';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { ClientCertificate } from '../../model/identity.ts';
import { refusals, sourceAddress, wireText } from '../../util/log.ts';
import type { PreAuthTicket } from '../pre-auth.ts';
import { ClaimSet, describeClaim, type Claim } from './claims.ts';
import { DeviceSessions } from './device-sessions.ts';
import { CONDITION, type AmqpErrorInfo } from './errors.ts';
import { safe } from './link-context.ts';
import { LinkTable } from './link-table.ts';
import { boundDispositions, stopRheaTimers } from './rhea-guards.ts';
import { ExternalMechanism, PassThroughMechanism, PlainMechanism, checkPlain } from './sasl.ts';
import type { ClientConnection, HeadShared, LinkContext, LinkHandler, Transport } from './types.ts';

export type { HeadShared, Transport } from './types.ts';

let nextConnectionId = 1;

/** The largest frame we accept (announced in our open). */
const MAX_FRAME_SIZE = 65536;
/** How long a client has to close its side after we closed ours, before the socket is destroyed. */
const CLOSE_GRACE_MS = 2000;

/** The AMQP header a server answers an unsupported header with (SASL offered), before it closes. */
const SASL_HEADER = Buffer.from([0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0]);

/**
 * One client connection: its claims, its links, and the device sessions opened through it.
 * Everything the client does arrives here as rhea events and is routed to link handlers.
 */
export class AmqpConnection implements ClientConnection {
  readonly id = nextConnectionId++;
  readonly claims: ClaimSet;
  readonly devices: DeviceSessions;
  readonly log: Logger;
  private readonly links = new LinkTable(this);
  private readonly rc: Connection;
  private ended = false;
  private headerSeen = false;
  private isAuthenticated = false;
  private authTimer?: NodeJS.Timeout;
  private readonly onEnd: Array<() => void> = [];

  constructor(
    readonly shared: HeadShared,
    private readonly socket: Duplex,
    readonly transport: Transport,
    readonly remote: string,
    readonly clientCertificate: ClientCertificate | undefined,
    private preAuth?: PreAuthTicket,
  ) {
    this.log = shared.log.child({ conn: this.id, transport, remote });
    this.claims = new ClaimSet((claim) => this.claimLapsed(claim));
    this.devices = new DeviceSessions(this);

    // A container per connection: its SASL mechanisms close over this connection's state.
    const container = rhea.create_container({ id: shared.hostNames[0] });
    const mechs = container.sasl_server_mechanisms as unknown as Record<string, () => unknown>;
    mechs.ANONYMOUS = () => new PassThroughMechanism('anonymous');
    mechs.MSSBCBS = () => new PassThroughMechanism('mssbcbs');
    mechs.PLAIN = () => new PlainMechanism((creds) => checkPlain(this, creds));
    mechs.EXTERNAL = () =>
      new ExternalMechanism(
        () => this.clientCertificate !== undefined,
        (why) => this.refusal({}, why),
      );
    container.on('error', (err: unknown) => this.log.warn({ err: String(err) }, 'AMQP error'));

    this.rc = container.create_connection({
      id: `amqp-${this.id}`,
      container_id: shared.hostNames[0],
      hostname: shared.hostNames[0],
      idle_time_out: shared.idleTimeoutMs,
      // Small frames keep one large message from monopolising the link, and fit WebSocket message limits.
      max_frame_size: MAX_FRAME_SIZE,
      reconnect: false,
      // Credit and settlement are ours to manage: deliveries are settled once the engine has them.
      receiver_options: { credit_window: 0, autoaccept: false },
      sender_options: { autosettle: true },
      properties: { product: 'strata' },
      // Children that know them send their telemetry on one relay link (relay-link.ts) and
      // their identities' presence on another (presence-link.ts).
      offered_capabilities: shared.offeredCapabilities.length > 0 ? shared.offeredCapabilities : undefined,
    } as never);
    this.wire();
    boundDispositions(this.rc);
    // Once we have ended our side, the client has a moment to end its own: rhea stops reading
    // after some failures (a refused SASL), so the client's end would never be seen otherwise.
    socket.once('finish', () => setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref());
    socket.on('close', () => {
      this.end('socket closed');
      // After rhea's own close handling, which misses an idle timer it re-armed on input after a protocol error.
      setImmediate(() => stopRheaTimers(this.rc));
    });
    socket.on('error', (err: Error) => this.log.debug({ err: err.message }, 'socket error'));
    // The first bytes tell whether the client spoke AMQP at all (for the garbage answer below).
    socket.once('data', (chunk: Buffer) => {
      this.headerSeen = chunk.length >= 4 && chunk.subarray(0, 4).toString('latin1') === 'AMQP';
    });
    this.rc.accept(socket as never);
    // After rhea has read each chunk: rhea itself would buffer whatever frame size or
    // multi-frame delivery a client announces.
    socket.on('data', () => this.checkBuffering());
    // Header, SASL and CBS share one deadline; the listener's TLS deadline came before.
    preAuth?.clearTimer();
    this.authTimer = setTimeout(() => this.authTimedOut(), shared.authTimeoutMs);
    this.authTimer.unref();
    this.log.debug('AMQP connection accepted');
  }

  /** A credential was accepted: the connection no longer counts as unauthenticated. */
  authenticated(): void {
    if (this.isAuthenticated) return;
    this.isAuthenticated = true;
    if (this.authTimer) clearTimeout(this.authTimer);
    this.authTimer = undefined;
    this.preAuth?.authenticated();
    this.preAuth = undefined;
  }

  /** A refusal or protocol error: before authentication, rate-limited per client address. */
  refusal(fields: Record<string, unknown>, msg: string): void {
    if (this.isAuthenticated) this.log.warn(fields, msg);
    else refusals.warn(this.log, sourceAddress(this.remote), fields, msg);
  }

  private authTimedOut(): void {
    this.authTimer = undefined;
    if (this.ended || this.isAuthenticated) return;
    const seconds = this.shared.authTimeoutMs / 1000;
    this.refusal(
      {},
      `closing the AMQP connection: no credential accepted within ${seconds} s (AMQP header, SASL, CBS put-token)`,
    );
    if (this.headerSeen) {
      this.abuse(CONDITION.unauthorized, `no credential was accepted within ${seconds} s of connecting`, false);
    } else {
      this.socket.destroy();
      this.end('authentication timeout');
    }
  }

  private checkBuffering(): void {
    if (this.ended) return;
    const pendingFrame = (this.rc as unknown as { frame_size?: number }).frame_size;
    if (pendingFrame !== undefined && pendingFrame > MAX_FRAME_SIZE) {
      this.abuse(
        CONDITION.framingError,
        `a frame of ${pendingFrame} bytes is over the ${MAX_FRAME_SIZE}-byte maximum frame size`,
      );
      return;
    }
    const cap = this.shared.maxMessageBytes * 4;
    for (const link of this.links.attached()) {
      const frames = (link as unknown as { _incomplete?: { frames?: Buffer[] } })._incomplete?.frames;
      if (!frames || frames.length * MAX_FRAME_SIZE <= cap) continue;
      const size = frames.reduce((n, f) => n + (f ? f.length : 0), 0);
      if (size > cap) {
        this.abuse(
          CONDITION.tooLarge,
          `a message of more than ${size} bytes is far over the ${this.shared.maxMessageBytes}-byte limit`,
        );
        return;
      }
    }
  }

  /** A client that makes us buffer without bound: close with the reason, then cut it off. */
  private abuse(condition: string, description: string, logIt = true): void {
    if (logIt) this.refusal({ condition, reason: description }, 'closing the AMQP connection');
    try {
      if (!this.rc.is_open()) this.rc.open();
      this.rc.close({ condition, description } as never);
      (this.rc as unknown as { _process(): void })._process();
    } catch {
      /* going anyway */
    }
    // Stop reading; let the close go out, then cut the connection.
    this.socket.pause();
    this.socket.end();
    this.end('refused to buffer', false);
  }

  get closed(): boolean {
    return this.ended;
  }

  /** Runs when the connection ends (any way). */
  onClosed(fn: () => void): void {
    if (this.ended) fn();
    else this.onEnd.push(fn);
  }

  /** Closes the connection with an error condition (shutdown, protocol violations). */
  close(error?: AmqpErrorInfo): void {
    if (this.ended) return;
    try {
      this.rc.close(error as never);
    } catch {
      /* already closing */
    }
    // A client that never answers our close is cut off.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** Re-checks every link after a claim lapsed or was replaced; links that lost their authority are detached. */
  recheckLinks(): void {
    this.links.recheck();
  }

  handlers(): Array<{ ctx: LinkContext; handler?: LinkHandler }> {
    return this.links.handlers();
  }

  private claimLapsed(claim: Claim): void {
    this.log.info({ who: describeClaim(claim) }, 'credential expired; detaching the links that used it');
    if (claim.kind === 'identity') this.devices.credentialLapsed(claim.identity);
    this.recheckLinks();
  }

  private wire(): void {
    const rc = this.rc;
    const guard =
      (name: string, fn: (ctx: EventContext) => void) =>
      (ctx: EventContext): void => {
        try {
          fn(ctx);
        } catch (err) {
          this.log.error({ err, event: name }, 'AMQP event handler failed');
        }
      };
    rc.on(
      'connection_open',
      guard('connection_open', () => this.log.debug({ peer: this.rc.container_id }, 'AMQP open')),
    );
    rc.on(
      'sender_open',
      guard('sender_open', (ctx) => this.links.opened(ctx.sender!, 'sender')),
    );
    rc.on(
      'receiver_open',
      guard('receiver_open', (ctx) => this.links.opened(ctx.receiver!, 'receiver')),
    );
    rc.on(
      'message',
      guard('message', (ctx) => this.links.message(ctx)),
    );
    rc.on(
      'sendable',
      guard('sendable', (ctx) => this.links.sendable(ctx.sender!)),
    );
    for (const outcome of ['accepted', 'rejected', 'released'] as const) {
      rc.on(
        outcome,
        guard(outcome, (ctx) => this.links.outcome(ctx.sender!, ctx.delivery!, outcome)),
      );
    }
    rc.on(
      'settled',
      guard('settled', (ctx) => {
        // Settled with no outcome at all: the client consumed it without saying more.
        if (ctx.sender && ctx.delivery && !ctx.delivery.remote_state)
          this.links.outcome(ctx.sender, ctx.delivery, 'settled');
      }),
    );
    const linkGone = (name: string) => guard(name, (ctx) => this.links.closedByClient((ctx.sender ?? ctx.receiver)!));
    rc.on('sender_close', linkGone('sender_close'));
    rc.on('receiver_close', linkGone('receiver_close'));
    rc.on('sender_error', () => {});
    rc.on('receiver_error', () => {});
    rc.on('session_error', () => {});
    rc.on(
      'session_close',
      guard('session_close', (ctx) => this.links.sessionGone(ctx.session!)),
    );
    rc.on(
      'connection_error',
      guard('connection_error', (ctx) => {
        const e = ctx.connection.error as { condition?: string; description?: string } | undefined;
        if (e?.condition)
          this.log.info(
            { condition: e.condition, description: e.description },
            'client closed the connection with an error',
          );
      }),
    );
    // rhea answers the client's close on the next turn and then ends the socket itself.
    rc.on(
      'connection_close',
      guard('connection_close', () => this.end('closed by the client', false)),
    );
    rc.on(
      'disconnected',
      guard('disconnected', () => this.end('disconnected')),
    );
    rc.on('protocol_error', (err: unknown) => this.protocolError(err));
    rc.on('error', (err: unknown) => this.protocolError(err));
  }

  /** Garbage or a broken frame: a clear answer, a log line, and this connection (only) ends. */
  private protocolError(err: unknown): void {
    const text = err instanceof Error ? err.message : String(err);
    this.refusal({ reason: wireText(text, 300) }, 'AMQP protocol error; closing the connection');
    try {
      if (!this.headerSeen) {
        // Not AMQP at all: answer with the header we speak, as the specification asks.
        this.socket.write(SASL_HEADER);
      } else if (!this.rc.is_closed()) {
        // A close must follow an open: answer with ours first if the client never got that far.
        if (!this.rc.is_open()) this.rc.open();
        this.rc.close({ condition: CONDITION.decode, description: `protocol error: ${text}` } as never);
        (this.rc as unknown as { _process(): void })._process();
      }
    } catch {
      /* the socket is going anyway */
    }
  }

  private end(why: string, destroySocket = true): void {
    if (!this.ended) this.cleanup(why);
    if (destroySocket) {
      if (!this.socket.destroyed) this.socket.destroy();
    } else {
      // A client that never reads our close answer is cut off.
      setTimeout(() => this.socket.destroy(), 2000).unref();
    }
  }

  private cleanup(why: string): void {
    this.ended = true;
    if (this.authTimer) clearTimeout(this.authTimer);
    this.authTimer = undefined;
    this.log.debug({ why }, 'AMQP connection ended');
    this.links.allGone();
    this.devices.closeAll();
    this.claims.clear();
    for (const fn of this.onEnd.splice(0)) safe(fn, undefined);
  }
}
