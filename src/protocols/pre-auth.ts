import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { childLog, refusals, sourceAddress, wireText } from '../util/log.ts';

/**
 * Limits on clients that have not authenticated yet, the same on every port of a node. Each
 * timeout closes the socket; the caps bound how many such clients hold sockets and memory.
 */
export interface PreAuthLimits {
  /** TCP connect to a finished TLS handshake. */
  tlsHandshakeTimeoutMs: number;
  /** TLS (or WebSocket) up to CONNECT received. */
  mqttConnectTimeoutMs: number;
  /** TLS (or WebSocket) up to a credential accepted: AMQP header, SASL, CBS put-token or an authorized link. */
  amqpAuthTimeoutMs: number;
  /** TLS up to a whole HTTP request head (also between requests until one succeeds). */
  httpHeadersTimeoutMs: number;
  /** Unauthenticated connections from one address; more are refused at once. */
  maxUnauthenticatedPerAddress: number;
  /** Unauthenticated connections in total; one more closes the oldest of them. */
  maxUnauthenticated: number;
}

export const DEFAULT_PRE_AUTH_LIMITS: Readonly<PreAuthLimits> = Object.freeze({
  tlsHandshakeTimeoutMs: 10_000,
  mqttConnectTimeoutMs: 10_000,
  amqpAuthTimeoutMs: 30_000,
  httpHeadersTimeoutMs: 30_000,
  maxUnauthenticatedPerAddress: 256,
  maxUnauthenticated: 4096,
});

/** The setting each limit is configured by (config.toml [strata] keys; `strata hub start` options). */
export const PRE_AUTH_SETTINGS = {
  tlsHandshakeTimeoutMs: { setting: 'tls_handshake_timeout_secs', option: '--tls-handshake-timeout', seconds: true },
  mqttConnectTimeoutMs: { setting: 'mqtt_connect_timeout_secs', option: '--mqtt-connect-timeout', seconds: true },
  amqpAuthTimeoutMs: { setting: 'amqp_auth_timeout_secs', option: '--amqp-auth-timeout', seconds: true },
  httpHeadersTimeoutMs: { setting: 'http_headers_timeout_secs', option: '--http-headers-timeout', seconds: true },
  maxUnauthenticatedPerAddress: {
    setting: 'max_unauthenticated_per_address',
    option: '--max-unauthenticated-per-address',
    seconds: false,
  },
  maxUnauthenticated: { setting: 'max_unauthenticated', option: '--max-unauthenticated', seconds: false },
} as const satisfies Record<keyof PreAuthLimits, { setting: string; option: string; seconds: boolean }>;

/**
 * TLS server options for a guarded server: the gate's deadline replaces Node's own handshake
 * timer, which would otherwise stay on every connection, cleared but allocated, for its lifetime.
 * Node reads 0 as "the default, 120 s"; only a negative value means no timer.
 */
export const GATED_TLS_OPTIONS = { handshakeTimeout: -1 } as const;

const TICKET = Symbol('strata.preAuth');
/** Set on a raw socket this gate closed: its TLS socket's dying errors are ours, not the client's. */
const CLOSED_HERE = Symbol('strata.preAuthClosed');

function closeHere(raw: Socket): void {
  (raw as unknown as Record<symbol, unknown>)[CLOSED_HERE] = true;
  raw.destroy();
}

/** Where a connection stands before authentication; released once it authenticates or closes. */
export class PreAuthTicket {
  private timer?: NodeJS.Timeout;
  private released = false;
  /** Releases on close; removed again on release, so an authenticated connection keeps nothing of the ticket. */
  readonly onClose = (): void => this.release();
  private tlsSocket?: Socket;

  constructor(
    private readonly gate: PreAuthGate,
    readonly socket: Socket,
    readonly address: string,
    readonly remote: string,
    readonly port: string,
  ) {}

  /** Closes the socket unless `what` is done within `ms` (replacing any earlier deadline). */
  expect(what: string, ms: number): void {
    if (this.released) return;
    this.clearTimer();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.released) return;
      this.gate.closeFor(this, `${what} not done within ${ms / 1000} s`);
    }, ms);
    this.timer.unref();
  }

  /** Stops the deadline (a protocol head keeps its own from here). */
  clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The client proved who it is: it no longer counts against the caps. */
  authenticated(): void {
    this.release();
  }

  /** @internal the TLS socket on top of the raw one: released when either closes. */
  watch(tlsSocket: Socket): void {
    if (this.released) return;
    this.tlsSocket = tlsSocket;
    tlsSocket.once('close', this.onClose);
  }

  /** @internal */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.clearTimer();
    this.gate.forget(this);
    this.socket.off('close', this.onClose);
    this.tlsSocket?.off('close', this.onClose);
    this.tlsSocket = undefined;
    // Not `delete`: that would turn every socket object into a slower, larger dictionary.
    (this.socket as unknown as Record<symbol, unknown>)[TICKET] = undefined;
  }
}

/** The ticket of a connection, from the TLS socket (or its raw TCP socket) it arrived on. */
export function preAuthOf(socket: unknown): PreAuthTicket | undefined {
  const s = socket as { [TICKET]?: PreAuthTicket; _parent?: { [TICKET]?: PreAuthTicket } } | undefined;
  return s?.[TICKET] ?? s?._parent?.[TICKET];
}

/**
 * Counts and times out a node's unauthenticated connections across all its listeners. Guard
 * each TLS server with it; protocol heads call `preAuthOf(socket)?.authenticated()`.
 */
export class PreAuthGate {
  readonly limits: PreAuthLimits;
  /** Oldest first: the total cap closes from the front. */
  private readonly open = new Set<PreAuthTicket>();
  private readonly perAddress = new Map<string, number>();
  private readonly log: Logger;

  constructor(limits: Partial<PreAuthLimits> = {}, logger?: Logger) {
    this.limits = { ...DEFAULT_PRE_AUTH_LIMITS, ...limits };
    this.log = logger ?? childLog('pre-auth');
  }

  /** Unauthenticated connections now (all listeners). */
  get count(): number {
    return this.open.size;
  }

  /**
   * Counts every TCP connection of `server` from accept on, closes it when the TLS handshake
   * takes too long or fails, and starts `afterHandshake` (the protocol's own deadline).
   */
  guardTls(server: TlsServer, port: string, afterHandshake?: { what: string; ms: number }): void {
    server.on('connection', (raw: Socket) => this.admit(raw, port));
    server.on('secureConnection', (socket: TLSSocket) => {
      const ticket = preAuthOf(socket);
      if (!ticket) return;
      ticket.watch(socket);
      if (afterHandshake) ticket.expect(afterHandshake.what, afterHandshake.ms);
      else ticket.clearTimer();
    });
    server.on('tlsClientError', (err: Error, socket: TLSSocket) => {
      const raw = ((socket as unknown as { _parent?: Socket })._parent ?? socket) as unknown as Record<symbol, unknown>;
      if (raw[CLOSED_HERE]) return void socket.destroy();
      const ticket = preAuthOf(socket);
      const remote = ticket?.remote ?? `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
      refusals.warn(
        this.log,
        sourceAddress(remote),
        { remote, port, reason: wireText(err.message, 300) },
        `TLS handshake failed on the ${port} port; closing`,
      );
      ticket?.release();
      socket.destroy();
    });
  }

  /**
   * An HTTPS server: after the handshake the request head must arrive in time; a request
   * answered with anything but 401/403 authenticates the connection; a WebSocket upgrade hands
   * the deadline to the protocol head behind it.
   */
  guardHttps(server: TlsServer): void {
    const headers = { what: 'HTTP request head', ms: this.limits.httpHeadersTimeoutMs };
    this.guardTls(server, 'HTTPS', headers);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const ticket = preAuthOf(req.socket);
      if (!ticket) return;
      ticket.clearTimer();
      const settle = (status: number) => {
        if (status === 401 || status === 403) ticket.expect(headers.what, headers.ms);
        else ticket.authenticated();
      };
      // Decided when the head goes out, not at the end: a long-lived answer (an SSE stream of
      // events, a long poll) must not count as unauthenticated, nor be closed as the oldest one.
      const writeHead = res.writeHead;
      res.writeHead = function (this: ServerResponse, ...args: Parameters<ServerResponse['writeHead']>) {
        res.writeHead = writeHead;
        settle(typeof args[0] === 'number' ? args[0] : res.statusCode);
        return writeHead.apply(this, args);
      } as ServerResponse['writeHead'];
      res.once('finish', () => {
        if (res.writeHead !== writeHead) settle(res.statusCode);
      });
    });
    server.on('upgrade', (req: IncomingMessage) => preAuthOf(req.socket)?.clearTimer());
  }

  private admit(raw: Socket, port: string): void {
    const remote = `${raw.remoteAddress ?? '?'}:${raw.remotePort ?? '?'}`;
    const address = sourceAddress(remote);
    const fromHere = this.perAddress.get(address) ?? 0;
    if (fromHere >= this.limits.maxUnauthenticatedPerAddress) {
      refusals.warn(
        this.log,
        address,
        { remote, port, limit: this.limits.maxUnauthenticatedPerAddress },
        `connection refused: ${fromHere} unauthenticated connections from ${address} already (max_unauthenticated_per_address)`,
      );
      closeHere(raw);
      return;
    }
    if (this.open.size >= this.limits.maxUnauthenticated) {
      const oldest = this.open.values().next().value!;
      refusals.warn(
        this.log,
        'max_unauthenticated',
        { remote: oldest.remote, port: oldest.port, limit: this.limits.maxUnauthenticated },
        `closing the oldest unauthenticated connection (${oldest.remote}): ${this.open.size} unauthenticated connections in total (max_unauthenticated)`,
      );
      oldest.release();
      closeHere(oldest.socket);
    }
    const ticket = new PreAuthTicket(this, raw, address, remote, port);
    (raw as unknown as Record<symbol, unknown>)[TICKET] = ticket;
    this.open.add(ticket);
    this.perAddress.set(address, fromHere + 1);
    raw.once('close', ticket.onClose);
    ticket.expect('TLS handshake', this.limits.tlsHandshakeTimeoutMs);
  }

  /** @internal */
  closeFor(ticket: PreAuthTicket, why: string): void {
    refusals.warn(
      this.log,
      ticket.address,
      { remote: ticket.remote, port: ticket.port },
      `closing unauthenticated connection from ${ticket.remote}: ${why}`,
    );
    ticket.release();
    closeHere(ticket.socket);
  }

  /** @internal */
  forget(ticket: PreAuthTicket): void {
    if (!this.open.delete(ticket)) return;
    const n = (this.perAddress.get(ticket.address) ?? 1) - 1;
    if (n <= 0) this.perAddress.delete(ticket.address);
    else this.perAddress.set(ticket.address, n);
  }
}

/**
 * Reads the limits from settings by their names (seconds for timeouts); a value that is not a
 * positive number is an error naming the setting.
 */
export function preAuthLimitsFrom(
  get: (name: string) => unknown,
  describe: (name: string) => string,
): Partial<PreAuthLimits> {
  const out: Partial<PreAuthLimits> = {};
  for (const [key, s] of Object.entries(PRE_AUTH_SETTINGS) as Array<
    [keyof PreAuthLimits, (typeof PRE_AUTH_SETTINGS)[keyof PreAuthLimits]]
  >) {
    const raw = get(s.setting);
    if (raw === undefined) continue;
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
    if (!Number.isFinite(n) || n <= 0 || (!s.seconds && !Number.isInteger(n))) {
      throw new Error(
        `${describe(s.setting)} must be a positive ${s.seconds ? 'number of seconds' : 'whole number'}, not ${JSON.stringify(raw)}`,
      );
    }
    out[key] = s.seconds ? Math.round(n * 1000) : n;
  }
  return out;
}
