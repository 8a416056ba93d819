import type { Logger } from 'pino';
import type { Delivery, Message as AmqpMessage, Receiver, Sender } from 'rhea';
import type { Engine } from '../../engine/engine.ts';
import type { ClientCertificate } from '../../model/identity.ts';
import type { OnBehalfOfSource } from '../../identity/on-behalf-of.ts';
import type { ClaimSet, TokenChecker } from './claims.ts';
import type { DeviceSessions } from './device-sessions.ts';
import type { AmqpErrorInfo } from './errors.ts';

/**
 * The AMQP head's shared vocabulary: what a connection is to the link routes, device sessions and
 * on-behalf-of checks that work on it (connection.ts implements it), and the link dispatcher's
 * terms. Everything here is a type; the files that use them import this one, never each other.
 */

/** The part of the engine the AMQP head uses. */
export type AmqpEngine = Pick<
  Engine,
  'authenticate' | 'connect' | 'sendC2D' | 'pendingFeedback' | 'acknowledgeFeedback' | 'sendTelemetryItems'
>;

export type Transport = 'amqp' | 'amqp-ws';

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
  /** What the AMQP open offers: Strata's own links for gateways below, or none as IoT Hub. */
  offeredCapabilities: readonly string[];
}

/** One client connection, as the routes and handlers of its links see it. */
export interface ClientConnection {
  readonly id: number;
  readonly shared: HeadShared;
  readonly transport: Transport;
  readonly remote: string;
  readonly clientCertificate: ClientCertificate | undefined;
  readonly claims: ClaimSet;
  readonly devices: DeviceSessions;
  readonly log: Logger;
  readonly closed: boolean;
  /** A credential was accepted: the connection no longer counts as unauthenticated. */
  authenticated(): void;
  /** A refusal or protocol error: before authentication, rate-limited per client address. */
  refusal(fields: Record<string, unknown>, msg: string): void;
  /** Runs when the connection ends (any way). */
  onClosed(fn: () => void): void;
  /** Closes the connection with an error condition (shutdown, protocol violations). */
  close(error?: AmqpErrorInfo): void;
  /** Links currently attached, for handlers that pair links (twin, methods, CBS). */
  handlers(): Array<{ ctx: LinkContext; handler?: LinkHandler }>;
}

/*
 * The link dispatcher's vocabulary. Every link a client attaches is matched against an ordered
 * list of routes by our role on it and its address; the first route that matches takes it.
 * Device links, service links, CBS, and (issue 6) the Event Hubs receive side are all routes.
 */

/** Our role on a link: `sender` when the client receives. */
export type LinkRole = 'sender' | 'receiver';

/** How the client settled a delivery we sent. */
export type Outcome = 'accepted' | 'rejected' | 'released' | 'settled';

/** What a route sees of a link being attached. */
export interface LinkContext {
  readonly conn: ClientConnection;
  readonly role: LinkRole;
  readonly link: Sender | Receiver;
  /** The address as the client wrote it (source for our senders, target for our receivers). */
  readonly address: string;
  /** The address reduced to its path (no scheme, host or query). */
  readonly path: string;
  /** The client's link properties (e.g. `com.microsoft:channel-correlation-id`). */
  readonly properties: Record<string, unknown>;
  /** True once the link is gone. */
  readonly closed: boolean;
  /** Detaches the link with an error (logged by the caller); `closed()` of its handler follows. */
  detach(error?: AmqpErrorInfo): void;
}

/** What a route installs for a link it took. Every member is optional. */
export interface LinkHandler {
  /** A message on our receiver. Settle through `delivery` (accept / reject / release). */
  message?(msg: AmqpMessage, delivery: Delivery): void;
  /** Our sender got credit (or room in the session window). */
  sendable?(): void;
  /** The client settled a delivery we sent on this link. */
  outcome?(delivery: Delivery, outcome: Outcome, error?: AmqpErrorInfo): void;
  /**
   * Asked when a claim of the connection lapsed or was dropped: false detaches the link with
   * amqp:unauthorized-access.
   */
  authorized?(): boolean;
  /** The link is gone: client detach, session end, connection loss, or our own detach. Called once. */
  closed?(): void;
}

export interface LinkRoute {
  /** For logs. */
  name: string;
  role: LinkRole;
  /** Open to clients that proved nothing yet (CBS, $management): attaching one does not count as authenticated. */
  anonymous?: boolean;
  /** Returns route parameters when the route takes this address; `path` is lower-cased nowhere. */
  match(path: string, address: string): unknown | undefined;
  /**
   * Takes the link. The attach reply is held until this returns (or its promise resolves), so
   * a route may adjust the terminus first (e.g. echo an Event Hubs filter with
   * `ctx.link.set_source`). Throw (AmqpRefusal, EngineError, AccessDenied) to refuse: the
   * client then gets an attach without a terminus and a detach with that error.
   */
  open(ctx: LinkContext, params: unknown): LinkHandler | Promise<LinkHandler>;
}
