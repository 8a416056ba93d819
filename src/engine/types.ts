/**
 * The contract between protocol heads (MQTT, AMQP, HTTPS, service REST) and the engine.
 *
 * Heads translate wire formats into these types and call the engine; every decision
 * (authentication, limits, durability, session rules) is taken by the engine so that all
 * heads behave the same. Keep this file stable: add fields and methods, never rename.
 */

import type { X509Certificate } from 'node:crypto';
import type { ForwardedOrigin } from '../store/origin-watermarks.ts';

// ---------------------------------------------------------------------------------------------
// Identities and authentication
// ---------------------------------------------------------------------------------------------

/** A device (`moduleId` undefined) or a module identity. */
export interface IdentityRef {
  deviceId: string;
  moduleId?: string;
}

/** How an identity proved itself; `x509` covers both self-signed (thumbprint) and CA-signed. */
export type AuthKind = 'sas' | 'x509-thumbprint' | 'x509-ca';

/** What a head hands to `Engine.authenticate`. Give a SAS token, a client certificate, or both. */
export interface AuthRequest extends IdentityRef {
  /** `SharedAccessSignature sr=...&sig=...&se=...` as the client sent it. */
  sasToken?: string;
  /** The TLS client certificate (DER), with whatever intermediates the client presented. */
  clientCertificate?: ClientCertificate;
  /** Extra host names accepted as the audience host (a gateway also accepts its own). */
  acceptedHostNames?: string[];
}

export interface ClientCertificate {
  /** DER of the leaf certificate. */
  raw: Buffer;
  /** DER of the further certificates the client presented, leaf's issuer first. */
  chain?: Buffer[];
}

/** A successful authentication. */
export interface AuthResult {
  identity: IdentityRef;
  kind: AuthKind;
  /** When the credential stops being valid (epoch ms): the SAS `se`, or the certificate's notAfter. */
  expiresAt?: number;
  /** The identity's generationId in the registry, when it has one. */
  generationId?: string;
  /** For SAS: whether a module signed with its device's key. */
  signedWithDeviceKey?: boolean;
  /**
   * The value IoT Hub puts in `iothub-connection-auth-method`: a JSON text such as
   * `{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`.
   */
  authMethod: string;
}

/**
 * Why the engine refused or failed an operation. Heads map the code to their wire
 * (MQTT CONNACK code, AMQP error condition, HTTP status + IoT Hub error code); see
 * `httpStatusOf` / `iotHubErrorCodeOf` in errors.ts.
 */
export type EngineErrorCode =
  | 'unauthorized' // bad credential: wrong key, bad signature, wrong audience, unknown certificate
  | 'not-found' // no such device/module, or no such lock token / message
  | 'disabled' // the identity exists but is disabled
  | 'expired' // the credential's lifetime is over
  | 'forbidden' // authenticated, but acting for another identity (e.g. another device's topic)
  | 'bad-request' // malformed input (properties, JSON, ids)
  | 'too-large' // message over the size limit
  | 'queue-full' // C2D queue at its maximum depth
  | 'not-connected' // direct method / delivery target not connected (or not subscribed)
  | 'timeout' // direct method response did not arrive in time
  | 'precondition' // stale etag / version
  | 'throttled'
  | 'unavailable' // shutting down, store closed
  | 'parent-unreachable' // a gateway cannot take this now without its parent: send it again soon
  | 'store-full' // the node's store cannot take messages now (its disk is under the free-space reserve)
  | 'internal';

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/** The canonical message every head decodes into and encodes from. */
export interface Message {
  body: Buffer;
  /** `$.mid` / IoTHub-MessageId / AMQP message_id. */
  messageId?: string;
  /** `$.cid` / IoTHub-CorrelationId / AMQP correlation_id. */
  correlationId?: string;
  /** `$.uid` / IoTHub-UserId / AMQP user_id. */
  userId?: string;
  /** `$.to` / IoTHub-To / AMQP to. */
  to?: string;
  /** Absolute expiry, epoch ms (`$.exp` / IoTHub-Expiry / AMQP absolute_expiry_time). */
  expiry?: number;
  /** `$.ct` / iothub-contenttype / AMQP content_type. */
  contentType?: string;
  /** `$.ce` / iothub-contentencoding / AMQP content_encoding. */
  contentEncoding?: string;
  /** `$.on`: the module output the message was sent on. */
  outputName?: string;
  /** `$.sub`: the Plug and Play component. */
  component?: string;
  /** `$.ifid`: the Plug and Play interface id. */
  interfaceId?: string;
  /** `$.ctime` / iothub-creation-time-utc, as the sender wrote it. */
  creationTime?: string;
  /** Application properties, in the order received. */
  properties: Record<string, string>;
}

/** Default maximum size of one message: body plus property names and values. */
export const MAX_MESSAGE_BYTES = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// The event stream (telemetry as stored by the hub; read by REST, CLI and later Event Hubs)
// ---------------------------------------------------------------------------------------------

/** Where a stored event sits in the stream and what the hub stamped on it. */
export interface StoredEventInfo {
  /** Global, gap-free-at-write, ever increasing (starts at 1). */
  sequenceNumber: number;
  /** Partition chosen by hash of the device id (stable for a device). */
  partition: number;
  /** Sequence number inside the partition (starts at 0, as in Event Hubs). */
  partitionSequenceNumber: number;
  /** Byte offset inside the partition (cumulative size of the events before it). */
  offset: number;
  /** `iothub-enqueuedtime`, epoch ms. */
  enqueuedTime: number;
}

/** A telemetry message as stored, with the hub's annotations. */
export interface StoredEvent extends StoredEventInfo {
  /** `iothub-connection-device-id`. */
  deviceId: string;
  /** `iothub-connection-module-id`, for module senders. */
  moduleId?: string;
  /** `iothub-connection-auth-method` (JSON text). */
  authMethod: string;
  /** `iothub-connection-auth-generation-id`. */
  authGenerationId?: string;
  /** `iothub-message-source`. */
  messageSource: 'Telemetry' | string;
  message: Message;
}

/** A message the engine is about to append (stamping is the store's job). */
export interface EventToAppend {
  deviceId: string;
  moduleId?: string;
  authMethod: string;
  authGenerationId?: string;
  messageSource: string;
  message: Message;
  /** Forwarded by a child gateway from its store: stored once (store/origin-watermarks.ts). */
  origin?: ForwardedOrigin;
}

/** Options for reading the event stream. Without a start, reading begins at the oldest event kept. */
export interface EventReadOptions {
  /** Start at this global sequence number (inclusive). */
  fromSequenceNumber?: number;
  /** Start at the first event enqueued at or after this time (epoch ms). */
  fromTime?: number;
  /** Only this device's events. */
  deviceId?: string;
  /** Only this module's events (with deviceId). */
  moduleId?: string;
  /** At most this many events (default 100, capped at 1000). */
  limit?: number;
  /** When nothing matches yet, wait up to this long for new events (long-poll). */
  waitMs?: number;
  /** Cancels a wait. */
  signal?: AbortSignal;
}

export interface EventReadResult {
  events: StoredEvent[];
  /** Pass as `fromSequenceNumber` to continue after what was returned (or after what was scanned). */
  nextSequenceNumber: number;
}

/** Reads by partition, for the Event Hubs compatible endpoint (issue 6). */
export interface PartitionReadOptions {
  partition: number;
  /** Start at this partition sequence number. */
  fromPartitionSequenceNumber?: number;
  /** Start at this byte offset. */
  fromOffset?: number;
  /** Start at this enqueued time (epoch ms). */
  fromTime?: number;
  /** Whether the start position itself is included (default true). */
  inclusive?: boolean;
  limit?: number;
  waitMs?: number;
  signal?: AbortSignal;
}

export interface PartitionInfo {
  partition: number;
  /** -1 when the partition holds nothing. */
  beginSequenceNumber: number;
  lastSequenceNumber: number;
  lastOffset: number;
  lastEnqueuedTime?: number;
  isEmpty: boolean;
}

/** The read side of the event stream, as the engine exposes it (`engine.events`). */
export interface EventStreamReader {
  read(opts?: EventReadOptions): Promise<EventReadResult>;
  readPartition(opts: PartitionReadOptions): Promise<StoredEvent[]>;
  partitionCount(): number;
  partitionInfo(partition: number): PartitionInfo;
  /** The next global sequence number that will be assigned. */
  nextSequenceNumber(): number;
  /** Called for each batch once durable; returns an unsubscribe function. */
  onAppend(listener: (events: StoredEvent[]) => void): () => void;
}

// ---------------------------------------------------------------------------------------------
// Twins
// ---------------------------------------------------------------------------------------------

export type TwinCollection = Record<string, unknown> & { $version?: number };

/** What a device sees of its twin: the two property collections with their `$version`. */
export interface TwinProperties {
  desired: TwinCollection;
  reported: TwinCollection;
}

// ---------------------------------------------------------------------------------------------
// Direct methods
// ---------------------------------------------------------------------------------------------

export interface MethodInvokeRequest {
  methodName: string;
  /** Any JSON value (the service sends JSON). */
  payload?: unknown;
  /** Default 30 s. */
  responseTimeoutInSeconds?: number;
  /** How long to wait for the target to connect; default 0 (404 at once when offline). */
  connectTimeoutInSeconds?: number;
}

export interface MethodInvokeResult {
  status: number;
  payload: unknown;
}

/** A method call as a session receives it; answer with `session.methodResponse(requestId, ...)`. */
export interface MethodRequest {
  requestId: string;
  methodName: string;
  /** The JSON payload as bytes. */
  payload: Buffer;
}

// ---------------------------------------------------------------------------------------------
// Cloud-to-device messages
// ---------------------------------------------------------------------------------------------

/** `iothub-ack`: which outcomes the sender wants feedback for. */
export type C2DAck = 'none' | 'positive' | 'negative' | 'full';

export type C2DOutcome = 'complete' | 'reject' | 'abandon';

/** A C2D message locked for one delivery. */
export interface C2DDelivery {
  /** Settle with this token. */
  lockToken: string;
  /** Number of times it has been delivered, this delivery included. */
  deliveryCount: number;
  enqueuedTime: number;
  /** Lock end, epoch ms. */
  lockedUntil: number;
  ack: C2DAck;
  message: Message;
}

export interface C2DSendOptions {
  ack?: C2DAck;
  /** Time to live in ms when the message carries no expiry (default: queue's default TTL, 1 hour). */
  ttlMs?: number;
}

/** A feedback record as IoT Hub reports it on `/messages/serviceBound/feedback`. */
export interface C2DFeedbackRecord {
  /** Feedback record id. */
  id: number;
  originalMessageId: string;
  deviceId: string;
  /** `Success` | `Expired` | `DeliveryCountExceeded` | `Rejected` | `Purged`. */
  statusCode: 'Success' | 'Expired' | 'DeliveryCountExceeded' | 'Rejected' | 'Purged';
  description: string;
  /** Epoch ms. */
  enqueuedTimeUtc: number;
  deviceGenerationId?: string;
}

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
  sendTelemetryBatch(messages: Message[], origins?: ReadonlyArray<ForwardedOrigin | undefined>, batch?: ForwardedBatch): Promise<StoredEventInfo[]>;
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

/** The registry's device/module record, as far as the engine reads it (IoT Hub JSON shape). */
export interface RegistryIdentity {
  deviceId: string;
  moduleId?: string;
  generationId?: string;
  status?: 'enabled' | 'disabled' | string;
  authentication?: {
    type?: 'sas' | 'selfSigned' | 'certificateAuthority' | 'none' | string;
    symmetricKey?: { primaryKey?: string | null; secondaryKey?: string | null } | null;
    x509Thumbprint?: { primaryThumbprint?: string | null; secondaryThumbprint?: string | null } | null;
  };
}

type MaybePromise<T> = T | Promise<T>;

export interface EngineRegistry {
  getDevice(deviceId: string): MaybePromise<RegistryIdentity | undefined | null>;
  getModule(deviceId: string, moduleId: string): MaybePromise<RegistryIdentity | undefined | null>;
  getTwin(deviceId: string, moduleId?: string): MaybePromise<{ properties?: { desired?: TwinCollection; reported?: TwinCollection } } | undefined | null>;
  updateReported(deviceId: string, moduleId: string | undefined, patch: Record<string, unknown>): MaybePromise<{ version: number }>;
  setConnectionState(deviceId: string, moduleId: string | undefined, connected: boolean): MaybePromise<unknown>;
  on(event: 'desired', listener: (deviceId: string, moduleId: string | undefined | null, patch: TwinCollection) => void): unknown;
  on(event: 'identity', listener: (deviceId: string, moduleId: string | undefined | null, kind: string) => void): unknown;
  // biome-ignore lint/suspicious/noExplicitAny: any event's listener must fit here; unknown[] parameters would refuse them
  off?(event: string, listener: (...args: any[]) => void): unknown;
}

// ---------------------------------------------------------------------------------------------
// Engine options
// ---------------------------------------------------------------------------------------------

/**
 * A child gateway's batch as it arrived (AMQP): the transfer's payload, and its stream as the
 * child named it (the items' origins carry the same stream prefixed with the sender). A gateway
 * may pass it on to its parent unchanged instead of storing it (edge/direct-forward.ts).
 */
export interface ForwardedBatch {
  payload: Buffer;
  stream: string;
}

/**
 * Where a node that is not the root sends telemetry instead of its event stream (a gateway:
 * routes -> durable store -> endpoint pumps). Resolve once every message is durable, which is
 * when the device gets its acknowledgement; reject with an EngineError to refuse (e.g.
 * 'throttled' when the store is full). Messages come in the order the device sent them.
 * `via` is the session a message came on (absent for a request without one, e.g. HTTP), so a
 * gateway can tell a device's resend on a new connection from a repeat on the same one.
 */
export type TelemetrySink = (items: ReadonlyArray<{ auth: AuthResult; message: Message; origin?: ForwardedOrigin; via?: number }>, batch?: ForwardedBatch) => Promise<void>;

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
  /** Telemetry goes here instead of the event stream (no event stream is opened then). */
  telemetrySink?: TelemetrySink;
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
  /** Directory for the engine's databases (event stream, C2D queues, trusted CAs). */
  dataDir: string;
  /** The hub host name (SAS audience host). */
  hostName: string;
  /** Further accepted audience hosts. */
  extraHostNames?: string[];
  /** Event stream retention in ms (default 1 day). */
  retentionMs?: number;
  /** Number of event stream partitions, fixed when the stream is created (default 4). */
  partitions?: number;
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
  /** Group commit interval of the event stream in ms (default 2). */
  commitIntervalMs?: number;
  /** Free disk space the event stream keeps for checkpoints, refusing telemetry below it (default 64 MiB). */
  diskReserveBytes?: number;
  /** A node with a telemetry sink: why its store takes no messages now (full), or undefined. */
  storeFull?: () => string | undefined;
}
