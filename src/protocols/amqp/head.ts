import type { Duplex } from 'node:stream';
import tls, { type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { MAX_MESSAGE_BYTES } from '../../model/message.ts';
import type { ClientCertificate } from '../../model/identity.ts';
import type { AccessPolicy } from '../../identity/policies.ts';
import { childLog } from '../../util/log.ts';
import { clientCertificateOf } from '../http/client-cert.ts';
import { cbsRoutes } from './cbs.ts';
import { AmqpConnection, type HeadShared, type Transport } from './connection.ts';
import { deviceRoutes } from './device-links.ts';
import { PRESENCE_CAPABILITY, presenceRoute } from './presence-link.ts';
import { RELAY_CAPABILITY, relayRoute } from './relay-link.ts';
import { CONDITION } from './errors.ts';
import type { LinkRoute } from './links.ts';
import type { OnBehalfOfSource } from './on-behalf-of.ts';
import { serviceRoutes } from './service-links.ts';
import type { AmqpEngine } from './types.ts';
import { GATED_TLS_OPTIONS, PreAuthGate, preAuthOf, type PreAuthTicket } from '../pre-auth.ts';

/** The subprotocol AMQP-over-WebSockets clients offer. */
export const AMQP_WS_SUBPROTOCOL = 'AMQPWSB10';

export interface AmqpHeadOptions {
  engine: AmqpEngine;
  /** The hub host name (SAS audiences, SASL PLAIN hub name, container id). */
  hostName: string;
  /** Further host names accepted in audiences (a gateway's own). */
  extraHostNames?: string[];
  /** The hub's shared access policies by key name (service and Event Hubs clients). */
  policy(keyName: string): AccessPolicy | undefined;
  /** AMQP idle timeout we announce; the client must send something at least this often (default 240 s). */
  idleTimeoutMs?: number;
  /** Time from the transport being up to a credential accepted (default 30 s). */
  authTimeoutMs?: number;
  /** The node's limits on unauthenticated connections (shared by its listeners); default: a gate of its own. */
  preAuth?: PreAuthGate;
  /** How often feedback links look for new records (default 200 ms). */
  feedbackPollMs?: number;
  /** The message size limit the engine enforces (default 256 KiB); used to bound buffering. */
  maxMessageBytes?: number;
  /** Where a gateway below may act on behalf of identities (on-behalf-of.ts); absent: refused. */
  onBehalfOf?: OnBehalfOfSource;
  /**
   * Offer gateways below Strata's relay and presence links (default true). False answers as
   * IoT Hub does, so a gateway below opens links per identity, as it would under IoT Hub.
   */
  strataLinks?: boolean;
  log?: Logger;
}

export interface TlsListenOptions {
  host: string;
  port: number;
  /** Server certificate (full chain) and key, PEM. */
  cert: string;
  key: string;
}

/**
 * IoT Hub's AMQP 1.0 endpoint: port 5671 over TLS, and the same protocol over WebSockets
 * (`AMQPWSB10` on the HTTPS port). Client certificates are asked for but never required at the
 * TLS layer; what they prove is decided per link by the engine.
 */
export class AmqpHead {
  readonly connections = new Set<AmqpConnection>();
  private readonly routes: LinkRoute[];
  private readonly shared: HeadShared;
  private readonly servers: tls.Server[] = [];
  readonly log: Logger;
  readonly preAuth: PreAuthGate;

  constructor(opts: AmqpHeadOptions) {
    this.log = opts.log ?? childLog('amqp');
    this.preAuth =
      opts.preAuth ??
      new PreAuthGate(opts.authTimeoutMs === undefined ? {} : { amqpAuthTimeoutMs: opts.authTimeoutMs });
    const hostNames = [opts.hostName, ...(opts.extraHostNames ?? [])];
    const strataLinks = opts.strataLinks ?? true;
    this.routes = [
      ...cbsRoutes,
      ...(strataLinks ? [relayRoute, presenceRoute] : []),
      ...deviceRoutes,
      ...serviceRoutes,
    ];
    this.shared = {
      engine: opts.engine,
      checker: {
        authenticate: (req) => opts.engine.authenticate({ ...req, acceptedHostNames: opts.extraHostNames }),
        policy: (name) => opts.policy(name),
        hostNames,
      },
      hostNames,
      routes: this.routes,
      log: this.log,
      idleTimeoutMs: opts.idleTimeoutMs ?? 240_000,
      authTimeoutMs: opts.authTimeoutMs ?? this.preAuth.limits.amqpAuthTimeoutMs,
      feedbackPollMs: opts.feedbackPollMs ?? 200,
      feedbackInFlight: new Set(),
      maxMessageBytes: opts.maxMessageBytes ?? MAX_MESSAGE_BYTES,
      onBehalfOf: opts.onBehalfOf,
      offeredCapabilities: strataLinks ? [RELAY_CAPABILITY, PRESENCE_CAPABILITY] : [],
    };
  }

  /**
   * Adds link routes (e.g. the Event Hubs receive side). Routes are tried in order; `first`
   * puts them before the built-in ones.
   */
  addRoutes(routes: LinkRoute[], opts: { first?: boolean } = {}): void {
    if (opts.first) this.routes.unshift(...routes);
    else this.routes.push(...routes);
  }

  /** Serves one connection over an already established transport. */
  accept(
    socket: Duplex,
    info: { transport: Transport; remote: string; clientCertificate?: ClientCertificate; preAuth?: PreAuthTicket },
  ): AmqpConnection {
    const conn = new AmqpConnection(
      this.shared,
      socket,
      info.transport,
      info.remote,
      info.clientCertificate,
      info.preAuth,
    );
    this.connections.add(conn);
    conn.onClosed(() => this.connections.delete(conn));
    return conn;
  }

  /**
   * Listens for AMQP over TLS; the head closes the server with its connections. Resolves with
   * the server (a role swaps renewed certificates into it).
   */
  async listen(o: TlsListenOptions): Promise<tls.Server> {
    const server = tls.createServer({
      ...GATED_TLS_OPTIONS,
      cert: o.cert,
      key: o.key,
      // X.509 devices present certificates from CAs the TLS layer does not know; the engine judges them.
      requestCert: true,
      rejectUnauthorized: false,
      ALPNProtocols: ['amqp'],
    });
    server.on('secureConnection', (socket: TLSSocket) => {
      socket.setNoDelay(true);
      const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
      try {
        this.accept(socket, {
          transport: 'amqp',
          remote,
          clientCertificate: clientCertificateOf(socket),
          preAuth: preAuthOf(socket),
        });
      } catch (err) {
        this.log.error({ err, remote }, 'could not serve an AMQP connection');
        socket.destroy();
      }
    });
    this.preAuth.guardTls(server, 'AMQP');
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port, o.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'AMQP listener error'));
    this.servers.push(server);
    return server;
  }

  /** Stops listening and closes every connection (amqp:connection:forced). */
  async close(): Promise<void> {
    const closing = this.servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    for (const c of [...this.connections])
      c.close({ condition: CONDITION.connectionForced, description: 'the hub is shutting down' });
    // Give clients a moment to read the close before the sockets go.
    const deadline = Date.now() + 1000;
    while (this.connections.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await Promise.all(closing);
  }
}
