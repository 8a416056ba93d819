import rhea, { type Connection, type Delivery, type EventContext, type Receiver, type Sender, type Session as RheaSession } from 'rhea';
import './rhea-writer.ts';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { ClientCertificate } from '../../model/identity.ts';
import { addressPath } from './addresses.ts';
import { ClaimSet, claimFromToken, describeClaim, type Claim, type TokenChecker } from './claims.ts';
import { DeviceSessions } from './device-sessions.ts';
import { amqpErrorOf, CONDITION, type AmqpErrorInfo } from './errors.ts';
import type { LinkContext, LinkHandler, LinkRole, LinkRoute, Outcome } from './links.ts';
import type { OnBehalfOfSource } from './on-behalf-of.ts';
import { ExternalMechanism, PassThroughMechanism, PlainMechanism, parsePlainUser } from './sasl.ts';
import type { AmqpEngine } from './types.ts';
import { refusals, sourceAddress, wireText } from '../../util/log.ts';
import type { PreAuthTicket } from '../pre-auth.ts';

/** What every connection of a head shares. */
export interface HeadShared {
  engine: AmqpEngine;
  checker: TokenChecker;
  /** The hub host name first, then further accepted names. */
  hostNames: string[];
  routes: readonly LinkRoute[];
  log: Logger;
  idleTimeoutMs: number;
  /** Time from the transport being up to a credential accepted (CBS, SASL PLAIN or an authorized link). */
  authTimeoutMs: number;
  /** How often a feedback link looks for new records. */
  feedbackPollMs: number;
  /** Feedback record ids sent on some link and not yet settled (one service may hold several links). */
  feedbackInFlight: Set<number>;
  /** The largest message accepted (body and properties); a delivery far beyond it ends the connection. */
  maxMessageBytes: number;
  /** Identities a gateway below may act for (on-behalf-of.ts); absent: on-behalf-of is refused. */
  onBehalfOf?: OnBehalfOfSource;
}

export type Transport = 'amqp' | 'amqp-ws';

interface LinkEntry {
  ctx: LinkContextImpl;
  handler?: LinkHandler;
}

let nextConnectionId = 1;

/** The largest frame we accept (announced in our open). */
const MAX_FRAME_SIZE = 65536;
/** The most deliveries one disposition may settle (far above any session window). */
const MAX_DISPOSITION_RANGE = 65_536;
/** How long a client has to close its side after we closed ours, before the socket is destroyed. */
const CLOSE_GRACE_MS = 2000;

/** The AMQP header a server answers an unsupported header with (SASL offered), before it closes. */
const SASL_HEADER = Buffer.from([0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0]);

/**
 * One client connection: its claims, its links, and the device sessions opened through it.
 * Everything the client does arrives here as rhea events and is routed to link handlers.
 */
export class AmqpConnection {
  readonly id = nextConnectionId++;
  readonly claims: ClaimSet;
  readonly devices: DeviceSessions;
  readonly log: Logger;
  private readonly links = new Map<Sender | Receiver, LinkEntry>();
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
    mechs.PLAIN = () => new PlainMechanism((creds) => this.saslPlain(creds));
    mechs.EXTERNAL = () => new ExternalMechanism(() => this.clientCertificate !== undefined, (why) => this.refusal({}, why));
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
    } as never);
    this.wire();
    this.boundDispositions();
    // Once we have ended our side, the client has a moment to end its own: rhea stops reading
    // after some failures (a refused SASL), so the client's end would never be seen otherwise.
    socket.once('finish', () => setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref());
    socket.on('close', () => {
      this.end('socket closed');
      // After rhea's own close handling, which misses an idle timer it re-armed on input after a protocol error.
      setImmediate(() => this.stopRheaTimers());
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
    this.refusal({}, `closing the AMQP connection: no credential accepted within ${seconds} s (AMQP header, SASL, CBS put-token)`);
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
      this.abuse(CONDITION.framingError, `a frame of ${pendingFrame} bytes is over the ${MAX_FRAME_SIZE}-byte maximum frame size`);
      return;
    }
    const cap = this.shared.maxMessageBytes * 4;
    for (const link of this.links.keys()) {
      const frames = (link as unknown as { _incomplete?: { frames?: Buffer[] } })._incomplete?.frames;
      if (!frames || frames.length * MAX_FRAME_SIZE <= cap) continue;
      const size = frames.reduce((n, f) => n + (f ? f.length : 0), 0);
      if (size > cap) {
        this.abuse(CONDITION.tooLarge, `a message of more than ${size} bytes is far over the ${this.shared.maxMessageBytes}-byte limit`);
        return;
      }
    }
  }

  /**
   * rhea settles a disposition's range id by id, so one frame naming billions of deliveries
   * (first 0, last 4294967295) holds the event loop for minutes; a session never has more
   * deliveries in flight than its window. Found by the AMQP fuzzer.
   */
  private boundDispositions(): void {
    type DispositionFrame = { performative: { first: number; last?: number | null } };
    const rc = this.rc as unknown as { on_disposition(frame: DispositionFrame): void };
    const settle = rc.on_disposition.bind(rc);
    rc.on_disposition = (frame) => {
      const { first, last } = frame.performative;
      const count = last === undefined || last === null ? 1 : last - first + 1;
      if (count > MAX_DISPOSITION_RANGE) {
        // rhea answers a ProtocolError (recognised by name) by closing the connection, as for any malformed frame.
        throw Object.assign(new Error(`a disposition for ${count} deliveries (ids ${first} to ${last}) is over the ${MAX_DISPOSITION_RANGE} a session can have in flight`), { name: 'ProtocolError' });
      }
      settle(frame);
    };
  }

  /**
   * rhea re-arms its idle timer (twice the idle timeout, minutes) on every input, also on input
   * that ends in a protocol error, and its disconnect handling does not always clear it: a
   * closed connection then stays in memory, and keeps the process up, until the timer fires.
   */
  private stopRheaTimers(): void {
    const rc = this.rc as unknown as { heartbeat_in?: NodeJS.Timeout; heartbeat_out?: NodeJS.Timeout };
    clearTimeout(rc.heartbeat_in);
    clearTimeout(rc.heartbeat_out);
    rc.heartbeat_in = undefined;
    rc.heartbeat_out = undefined;
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
    for (const entry of [...this.links.values()]) {
      const ok = entry.handler?.authorized ? safe(() => entry.handler!.authorized!(), false) : true;
      if (!ok) {
        this.log.info({ address: entry.ctx.address }, 'detaching link: its credential lapsed');
        entry.ctx.detach({ condition: CONDITION.unauthorized, description: 'the token or certificate this link relied on has expired' });
      }
    }
  }

  /** Links currently attached, for handlers that pair links (twin, methods, CBS). */
  handlers(): Array<{ ctx: LinkContext; handler?: LinkHandler }> {
    return [...this.links.values()];
  }

  private claimLapsed(claim: Claim): void {
    this.log.info({ who: describeClaim(claim) }, 'credential expired; detaching the links that used it');
    if (claim.kind === 'identity') this.devices.credentialLapsed(claim.identity);
    this.recheckLinks();
  }

  private async saslPlain(creds: { username: string; password: string } | undefined): Promise<boolean> {
    if (!creds) {
      this.refusal({}, 'SASL PLAIN refused: malformed response');
      return false;
    }
    const user = parsePlainUser(creds.username);
    if (!user) {
      this.refusal({ username: wireText(creds.username) }, 'SASL PLAIN refused: user name is not {deviceId}@sas.{hub} or {policy}@sas.root.{hub}');
      return false;
    }
    const hubNames = this.shared.hostNames.map((h) => h.split('.')[0]!.toLowerCase());
    if (!hubNames.includes(user.hubName.toLowerCase())) {
      this.refusal({ username: wireText(creds.username) }, `SASL PLAIN refused: hub name "${wireText(user.hubName)}" is not this hub's`);
      return false;
    }
    try {
      const claim = await claimFromToken(creds.password, this.shared.checker, 'sasl-plain');
      const matches =
        user.kind === 'policy'
          ? claim.kind === 'policy' && claim.policy.keyName === user.keyName
          : claim.kind === 'identity' && claim.identity.deviceId === user.deviceId && claim.identity.moduleId === user.moduleId;
      if (!matches) {
        this.refusal({ username: wireText(creds.username), token: describeClaim(claim) }, 'SASL PLAIN refused: the token is for someone else than the user name');
        return false;
      }
      this.claims.put(claim);
      this.authenticated();
      this.log.info({ who: describeClaim(claim) }, 'authenticated by SASL PLAIN');
      return true;
    } catch (err) {
      this.refusal({ username: wireText(creds.username), reason: wireText(amqpErrorOf(err).description, 300) }, 'SASL PLAIN refused');
      return false;
    }
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
    rc.on('connection_open', guard('connection_open', () => this.log.debug({ peer: this.rc.container_id }, 'AMQP open')));
    rc.on('sender_open', guard('sender_open', (ctx) => this.linkOpened(ctx.sender!, 'sender')));
    rc.on('receiver_open', guard('receiver_open', (ctx) => this.linkOpened(ctx.receiver!, 'receiver')));
    rc.on('message', guard('message', (ctx) => this.onMessage(ctx)));
    rc.on('sendable', guard('sendable', (ctx) => this.links.get(ctx.sender!)?.handler?.sendable?.()));
    for (const outcome of ['accepted', 'rejected', 'released'] as const) {
      rc.on(outcome, guard(outcome, (ctx) => this.onOutcome(ctx.sender!, ctx.delivery!, outcome)));
    }
    rc.on('settled', guard('settled', (ctx) => {
      // Settled with no outcome at all: the client consumed it without saying more.
      if (ctx.sender && ctx.delivery && !ctx.delivery.remote_state) this.onOutcome(ctx.sender, ctx.delivery, 'settled');
    }));
    const linkGone = (name: string) =>
      guard(name, (ctx) => {
        const link = (ctx.sender ?? ctx.receiver)!;
        const entry = this.links.get(link);
        if (!entry) return;
        const err = link.error as { condition?: string; description?: string } | undefined;
        if (err?.condition) this.log.debug({ address: entry.ctx.address, condition: err.condition, description: err.description }, 'client detached a link with an error');
        entry.ctx.gone();
      });
    rc.on('sender_close', linkGone('sender_close'));
    rc.on('receiver_close', linkGone('receiver_close'));
    rc.on('sender_error', () => {});
    rc.on('receiver_error', () => {});
    rc.on('session_error', () => {});
    rc.on('session_close', guard('session_close', (ctx) => this.sessionGone(ctx.session!)));
    rc.on('connection_error', guard('connection_error', (ctx) => {
      const e = ctx.connection.error as { condition?: string; description?: string } | undefined;
      if (e?.condition) this.log.info({ condition: e.condition, description: e.description }, 'client closed the connection with an error');
    }));
    // rhea answers the client's close on the next turn and then ends the socket itself.
    rc.on('connection_close', guard('connection_close', () => this.end('closed by the client', false)));
    rc.on('disconnected', guard('disconnected', () => this.end('disconnected')));
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

  private linkOpened(link: Sender | Receiver, role: LinkRole): void {
    const remote = (role === 'sender' ? link.source : link.target) as { address?: string } | undefined;
    const address = remote?.address ? String(remote.address) : '';
    const path = addressPath(address);
    const attach = (link as unknown as { remote: { attach?: { properties?: Record<string, unknown>; snd_settle_mode?: number; rcv_settle_mode?: number } } }).remote.attach;
    const properties = (attach?.properties ?? {}) as Record<string, unknown>;
    const ctx = new LinkContextImpl(this, role, link, address, path, properties);
    const entry: LinkEntry = { ctx };
    this.links.set(link, entry);
    // rhea has queued its attach reply; hold it until the route has decided, so that a refused
    // link is answered with a null terminus and the error in one go.
    ctx.holdAttach();

    let route: LinkRoute | undefined;
    let params: unknown;
    for (const r of this.shared.routes) {
      if (r.role !== role) continue;
      params = r.match(path, address);
      if (params !== undefined) {
        route = r;
        break;
      }
    }
    if (!route) {
      const description = address
        ? `no ${role === 'sender' ? 'source' : 'target'} node "${address}" on this hub`
        : `the link names no ${role === 'sender' ? 'source' : 'target'} address`;
      this.refusal({ address: wireText(address), role }, `refused link: ${wireText(description, 300)}`);
      // A refused attach carries no terminus for the node the client asked for.
      ctx.detach({ condition: CONDITION.notFound, description });
      return;
    }

    // Echo the terminus and the settle modes the client asked for.
    const local = (link as unknown as { local: { attach: { snd_settle_mode?: number; rcv_settle_mode?: number } } }).local.attach;
    if (attach?.snd_settle_mode !== undefined) local.snd_settle_mode = attach.snd_settle_mode;
    if (attach?.rcv_settle_mode !== undefined) local.rcv_settle_mode = attach.rcv_settle_mode;
    if (role === 'sender') {
      link.set_source({ address });
      if (link.target) link.set_target(link.target as never);
    } else {
      link.set_target({ address });
      if (link.source) link.set_source(link.source as never);
    }

    const refuse = (err: unknown): void => {
      const info = amqpErrorOf(err);
      if (info.condition === CONDITION.internal) this.log.error({ err, address }, 'link handler failed');
      this.refusal({ address: wireText(address), route: route!.name, condition: info.condition, reason: wireText(info.description, 300) }, 'refused link');
      ctx.detach(info);
    };
    let opened: LinkHandler | Promise<LinkHandler>;
    try {
      opened = route.open(ctx, params);
    } catch (err) {
      refuse(err);
      return;
    }
    const install = (handler: LinkHandler): void => {
      if (ctx.closed) {
        safe(() => handler.closed?.(), undefined);
        return;
      }
      entry.handler = handler;
      // A link that needs a credential was granted: whatever proved it (a claim, a certificate) holds.
      if (!route!.anonymous) this.authenticated();
      ctx.sendAttach();
      this.log.debug({ address, route: route!.name }, 'link attached');
      if (role === 'sender') safe(() => handler.sendable?.(), undefined);
    };
    if (opened instanceof Promise) opened.then(install, refuse);
    else install(opened);
  }

  private onMessage(ctx: EventContext): void {
    const receiver = ctx.receiver!;
    const delivery = ctx.delivery!;
    const entry = this.links.get(receiver);
    if (!entry?.handler?.message) {
      // Nothing takes it (link refused or still being authorized): the client sent without credit.
      delivery.release({ delivery_failed: true } as never);
      return;
    }
    entry.handler.message(ctx.message!, delivery);
  }

  private onOutcome(sender: Sender, delivery: Delivery, outcome: Outcome): void {
    const handler = this.links.get(sender)?.handler;
    if (!handler?.outcome) return;
    const state = delivery.remote_state as { error?: { condition?: string; description?: string } } | undefined;
    const error = state?.error?.condition ? { condition: String(state.error.condition), description: String(state.error.description ?? '') } : undefined;
    handler.outcome(delivery, outcome, error);
  }

  private sessionGone(session: RheaSession): void {
    for (const [link, entry] of [...this.links]) if (link.session === session) entry.ctx.gone();
  }

  /** @internal a link context reports its link gone. */
  forget(link: Sender | Receiver): LinkEntry | undefined {
    const entry = this.links.get(link);
    this.links.delete(link);
    return entry;
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
    for (const entry of [...this.links.values()]) entry.ctx.gone();
    this.devices.closeAll();
    this.claims.clear();
    for (const fn of this.onEnd.splice(0)) safe(fn, undefined);
  }
}

interface EndpointInternals {
  state: { local_open: boolean; open_requests: number };
  local: { attach: { source?: unknown; target?: unknown } };
}

class LinkContextImpl implements LinkContext {
  private isClosed = false;
  private attachSent = true;
  constructor(
    readonly conn: AmqpConnection,
    readonly role: LinkRole,
    readonly link: Sender | Receiver,
    readonly address: string,
    readonly path: string,
    readonly properties: Record<string, unknown>,
  ) {}

  get closed(): boolean {
    return this.isClosed;
  }

  /** Undoes rhea's automatic attach reply (rhea internals: the endpoint state of the link). */
  holdAttach(): void {
    const st = (this.link as unknown as EndpointInternals).state;
    if (st.local_open) {
      st.local_open = false;
      st.open_requests = Math.max(0, st.open_requests - 1);
      this.attachSent = false;
    }
  }

  /** Sends the held attach reply (with the terminus set by then). */
  sendAttach(): void {
    if (this.attachSent) return;
    this.attachSent = true;
    this.link.open();
  }

  detach(error?: AmqpErrorInfo): void {
    if (!this.isClosed && !this.conn.closed) {
      try {
        if (!this.attachSent) {
          // Refused before the attach reply: it names no node, and the detach carries the reason.
          const local = (this.link as unknown as EndpointInternals).local.attach;
          if (this.role === 'sender') local.source = undefined;
          else local.target = undefined;
          this.sendAttach();
        }
        this.link.close(error as never);
      } catch {
        /* the session is already gone */
      }
    }
    this.gone();
  }

  /** The link is over, whoever ended it: tell its handler once. */
  gone(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    const entry = this.conn.forget(this.link);
    const handler = entry?.handler;
    if (handler?.closed) safe(() => handler.closed!(), undefined);
  }
}

function safe<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch {
    return fallback;
  }
}
