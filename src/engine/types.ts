/**
 * The contract between protocol heads (MQTT, AMQP, HTTPS, service REST) and the engine.
 *
 * Heads translate wire formats into these types and call the engine; every decision
 * (authentication, limits, durability, session rules) is taken by the engine so that all
 * heads behave the same. Keep this file stable: add fields and methods, never rename.
 */

import type { X509Certificate } from 'node:crypto';

import type { AuthResult, IdentityRef, RegistryIdentity } from '../model/identity.ts';
import type { ForwardedBatch, ForwardedOrigin, Message } from '../model/message.ts';
import type { StoredEventInfo } from '../model/events.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { C2DAck, C2DDelivery, C2DOutcome } from '../model/c2d.ts';

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

export type Protocol = 'mqtt' | 'mqtt-ws' | 'amqp' | 'amqp-ws' | 'https';

/**
 * What a session has subscribed to. Kept by the engine across reconnects of a persistent
 * session (MQTT CleanSession=0), so heads can restore it.
 */
export type SubscriptionKind =
  | 'c2d' // devicebound messages
  | 'inputs' // module inputs
  | 'desired' // desired property pushes
  | 'methods' // direct method requests
  | 'twin-responses'; // responses to twin GET / PATCH (MQTT needs an explicit subscribe)

export type CloseReason =
  | 'replaced' // a new connection for the same identity
  | 'token-expired'
  | 'identity-disabled'
  | 'identity-deleted'
  | 'identity-changed' // credentials changed in the registry
  | 'keep-alive'
  | 'protocol-error'
  | 'forbidden'
  | 'over-limit' // the node's connection limit (MaxConnectedClients) was lowered below the live count
  | 'client' // the client went away
  | 'shutdown';

/** Implemented by a head for each live connection: how the engine reaches the wire. */
export interface SessionHandler {
  /** A C2D message for this device (only after a 'c2d' subscription). Settle via `session.settleC2D`. */
  onC2D?(delivery: C2DDelivery): void;
  /** A module input message (only after an 'inputs' subscription). */
  onInput?(inputName: string, delivery: C2DDelivery): void;
  /** A desired properties patch, `$version` included (only after a 'desired' subscription). */
  onDesired?(patch: TwinCollection): void;
  /** A direct method request (only after a 'methods' subscription). */
  onMethod?(request: MethodRequest): void;
  /** The engine ends this connection; the head closes its transport. Called at most once. */
  close(reason: CloseReason, detail?: string): void;
}

export interface ConnectOptions {
  protocol: Protocol;
  /** MQTT CleanSession. When false, subscriptions and pending C2D survive reconnects. Default true. */
  cleanSession?: boolean;
  /** Remote address, for logs. */
  remote?: string;
  /**
   * Connected through a child gateway (on its behalf). MaxConnectedClients limits a gateway's own
   * direct clients; identities below a child gateway were counted there already, and refusing
   * one of them here would hold up all the telemetry that child forwards.
   */
  viaGateway?: boolean;
}

/** A live connection of one identity. Created by `Engine.connect`. */
export interface Session {
  readonly id: number;
  readonly identity: IdentityRef;
  readonly auth: AuthResult;
  readonly protocol: Protocol;
  /** True when a persistent session's state (subscriptions, pending C2D) was resumed. */
  readonly resumed: boolean;
  readonly subscriptions: ReadonlySet<SubscriptionKind>;
  readonly closed: boolean;

  subscribe(kind: SubscriptionKind): void;
  unsubscribe(kind: SubscriptionKind): void;

  /** Telemetry from this identity; resolves once durable. */
  sendTelemetry(message: Message): Promise<StoredEventInfo>;
  /** Several messages stored together (all or none), e.g. an AMQP batch; `origins` (one per message) when a child gateway forwarded them. */
  sendTelemetryBatch(
    messages: Message[],
    origins?: ReadonlyArray<ForwardedOrigin | undefined>,
    batch?: ForwardedBatch,
  ): Promise<StoredEventInfo[]>;
  twinGet(): Promise<TwinProperties>;
  /** Merge patch (null deletes); resolves with the new reported `$version`. */
  twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }>;
  /** Settles a C2D delivery made to this session. */
  settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void>;
  /** The device's answer to `onMethod`. */
  methodResponse(requestId: string, status: number, payload: Buffer): void;
  /** A renewed credential on the same connection (AMQP CBS put-token). */
  renew(auth: AuthResult): void;
  /** Any traffic from the client (for lastActivityTime). */
  touch(): void;
  /** The head saw its transport end (or wants to end it). Idempotent. */
  close(reason?: CloseReason): void;
}

// ---------------------------------------------------------------------------------------------
// What the engine needs from the registry (implemented by the hub's Registry, or a gateway's cache)
// ---------------------------------------------------------------------------------------------

type MaybePromise<T> = T | Promise<T>;

export interface EngineRegistry {
  getDevice(deviceId: string): MaybePromise<RegistryIdentity | undefined | null>;
  getModule(deviceId: string, moduleId: string): MaybePromise<RegistryIdentity | undefined | null>;
  getTwin(
    deviceId: string,
    moduleId?: string,
  ): MaybePromise<{ properties?: { desired?: TwinCollection; reported?: TwinCollection } } | undefined | null>;
  updateReported(
    deviceId: string,
    moduleId: string | undefined,
    patch: Record<string, unknown>,
  ): MaybePromise<{ version: number }>;
  setConnectionState(deviceId: string, moduleId: string | undefined, connected: boolean): MaybePromise<unknown>;
  on(
    event: 'desired',
    listener: (deviceId: string, moduleId: string | undefined | null, patch: TwinCollection) => void,
  ): unknown;
  on(
    event: 'identity',
    listener: (deviceId: string, moduleId: string | undefined | null, kind: string) => void,
  ): unknown;
  // biome-ignore lint/suspicious/noExplicitAny: any event's listener must fit here; unknown[] parameters would refuse them
  off?(event: string, listener: (...args: any[]) => void): unknown;
}

// ---------------------------------------------------------------------------------------------
// Engine options
// ---------------------------------------------------------------------------------------------
/**
 * One telemetry message on its way to the node's sink. `via` is the session it came on (absent
 * for a request without one, e.g. HTTP), so a gateway can tell a device's resend on a new
 * connection from a repeat on the same one; `origin` where a child gateway's store holds it.
 */
export interface TelemetryItem {
  auth: AuthResult;
  message: Message;
  origin?: ForwardedOrigin;
  via?: number;
}

/**
 * Where a node's telemetry goes: the event stream at the hub; routes -> durable store ->
 * endpoint pumps at a gateway. The role's composition root builds it and hands it to the engine,
 * which takes out a child gateway's resends (by origin, through the queries below) before it
 * appends, so that each message is stored once whatever the role.
 */
export interface TelemetrySink {
  /**
   * Stores messages, in the order the device sent them, in one commit (all or none). Resolve once
   * every one is durable, which is when the device gets its acknowledgement: with where each went
   * when the sink numbers them (the event stream), else with nothing. Reject with an EngineError
   * to refuse (e.g. 'store-full').
   */
  // biome-ignore lint/suspicious/noConfusingVoidType: a sink may resolve with nothing: a gateway's store numbers no events
  append(items: readonly TelemetryItem[]): Promise<StoredEventInfo[] | void>;
  /** Resolves once everything appended so far is durable (a resend is answered no earlier than its original). */
  whenDurable(): Promise<unknown>;
  /** True when a child gateway's message at this origin is stored already (a resend). */
  isForwardedStored(origin: ForwardedOrigin): boolean;
  /** The storing of a child gateway's message at this origin, while it is under way. */
  forwardedInFlight(origin: ForwardedOrigin): Promise<unknown> | undefined;
  /** Why the sink takes no telemetry now (its disk is under the reserve, or it is full), or undefined. */
  storeFull(): string | undefined;
  /**
   * A gateway's way past its store: sees every message first, with the child gateway's batch it
   * came in when there is one. A promise when the sink took them some other way (the batch passed
   * on to the parent as it came, edge/direct-forward.ts); undefined to have them appended.
   */
  offer?(items: readonly TelemetryItem[], batch?: ForwardedBatch): Promise<void> | undefined;
}

/**
 * Decides whether an identity may use this node at all, before its credential is checked (a
 * gateway: only identities in its scope). Resolve with undefined to let it in, or with the
 * reason it is refused. `live` is true when the engine re-checks a connected identity after an
 * identity change (answer from what is known; do not go looking upstream).
 */
export type AuthorizeHook = (identity: IdentityRef, context: { live: boolean }) => MaybePromise<string | undefined>;

/** What an external delivery (a C2D message or module input held elsewhere) needs from the engine. */
export interface RelayDelivery {
  message: Message;
  ack?: C2DAck;
  /** Default 1. */
  deliveryCount?: number;
  /** Default now. */
  enqueuedTime?: number;
}

export interface EngineOptions {
  registry: EngineRegistry;
  /**
   * CA certificates trusted for `certificateAuthority` devices besides those registered with the
   * engine (a gateway: its trust bundle, as an edge hub checks client certificates against it).
   */
  extraTrustedCas?: () => X509Certificate[];
  /** Where telemetry goes (the hub's event stream, a gateway's message store): see TelemetrySink. */
  telemetrySink: TelemetrySink;
  /**
   * Live sessions allowed at once, every identity counted (default: unlimited). A gateway sets
   * its MaxConnectedClients (100 by default); `Engine.setMaxConnectedClients` changes it live.
   */
  maxConnectedClients?: number;
  /** Who may connect at all (see AuthorizeHook); absent: everyone the registry knows. */
  authorize?: AuthorizeHook;
  /**
   * Told when a live session starts or stops wanting a kind of push (including the
   * subscriptions a resumed persistent session brings back), so a gateway opens the matching
   * upstream links only while someone listens.
   */
  onSubscriptionChange?: (identity: IdentityRef, kind: SubscriptionKind, subscribed: boolean) => void;
  /**
   * Told when an authenticated identity opened a session, so a gateway can open what its
   * telemetry will need upstream before the first message arrives.
   */
  onSessionOpened?: (identity: IdentityRef) => void;
  /** Directory for the engine's database (sessions, C2D queues, trusted CAs). */
  dataDir: string;
  /** The hub host name (SAS audience host). */
  hostName: string;
  /** Further accepted audience hosts. */
  extraHostNames?: string[];
  /** Maximum message size in bytes (default 256 KiB). */
  maxMessageBytes?: number;
  /** C2D queue depth per device (default 50). */
  c2dMaxQueueDepth?: number;
  /** C2D default time to live in ms (default 1 hour). */
  c2dDefaultTtlMs?: number;
  /** C2D lock duration for HTTPS receives in ms (default 60 s). */
  c2dLockMs?: number;
  /** C2D max delivery count before dead-lettering (default 10). */
  c2dMaxDeliveryCount?: number;
}
