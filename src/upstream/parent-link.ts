import type { C2DOutcome } from '../model/c2d.ts';
import type { IdentityRef } from '../model/identity.ts';
import type { Message } from '../model/message.ts';
import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';
import type { DeliveryEndpoint } from '../routing/pump.ts';
import type { SendOutcome } from './errors.ts';
import type { TelemetryEndpointMetrics } from './telemetry-endpoint.ts';

/**
 * What a gateway uses of its link to the parent, whatever the protocol: the AMQP link (one
 * multiplexed connection, amqp-parent-link.ts) and the MQTT link (one connection per identity,
 * mqtt-parent-link.ts) both implement ParentLink, and hand out an UpstreamIdentity per
 * downstream identity.
 */

export interface ParentLinkStatus {
  connected: boolean;
  parent: string;
  /** Since when the current state holds (epoch ms). */
  since: number;
  lastError?: string;
  /** Failed attempts since the link was last up. */
  failedAttempts: number;
  telemetry: TelemetryEndpointMetrics;
}

/**
 * Passing a child gateway's batch to the parent as it came, without storing it here
 * (edge/direct-forward.ts). Only the AMQP link can: MQTT has no batches.
 */
export interface DirectTelemetry {
  /** The link is up and not backing off. */
  usable(): boolean;
  /** Resolves true as soon as the link is usable (at once when it is), false after `timeoutMs`. */
  whenUsable(timeoutMs: number): Promise<boolean>;
  /** Sends one batch for `identity`; resolves with the parent's outcome, rejects when nothing was sent. */
  send(identity: IdentityRef, payload: Buffer): Promise<SendOutcome>;
  /** The parent takes relay batches (a Strata parent's relay link) on the current connection. */
  relayUsable(): boolean;
  /** Sends a relay batch of `senders`' messages once each is authorized; like `send` otherwise. */
  sendRelay(senders: readonly IdentityRef[], payload: Buffer): Promise<SendOutcome>;
}

/** `$upstream` as the gateway's endpoint pump sees it. */
export type UpstreamEndpoint = DeliveryEndpoint & { metrics(): TelemetryEndpointMetrics; rewind(): void };

export interface ParentLink {
  /** The parent accepts the gateway's credentials now. */
  readonly connected: boolean;
  /** Where the link goes, e.g. `amqps://parent:5671` or `wss://parent:443/$iothub/websocket`. */
  describeParent(): string;
  status(): ParentLinkStatus;
  /**
   * Starts connecting and keeps the link up until close(). Resolves after the first attempt
   * (connected, or failed for a reason that may pass); rejects when the parent refused the
   * gateway's credentials or certificate, while the link keeps retrying in the background.
   */
  start(): Promise<void>;
  /** Signs the gateway's tokens with another key from now on (a certificate-provisioned gateway whose `$edgeHub` key changed). */
  setEdgeKey(key: string): void;
  /** Closes every connection and stops reconnecting. */
  close(): Promise<void>;
  /**
   * Opens `identity`'s telemetry link to the parent now, in the background, if the link is up:
   * a device that just connected then finds it attached when its first message is forwarded,
   * instead of that message (and every batch queued behind it) waiting for the attach.
   */
  prepareTelemetry?(identity: IdentityRef): void;
  /** `$upstream` for the gateway's endpoint pump (one per link). */
  telemetryEndpoint(): UpstreamEndpoint;
  /** Present when the link can pass child gateways' batches on as they came (AMQP). */
  readonly direct?: DirectTelemetry;
  /**
   * A downstream identity's twin, methods and C2D at the parent. Opening twice gives the same
   * object until it is closed. `authChain` is `{target};...;{this edge}`.
   */
  openIdentity(id: { deviceId: string; moduleId?: string; authChain: string }): UpstreamIdentity;
  /**
   * A downstream identity connected to this gateway (true) or left it (false), so the parent's
   * connection state follows it. Absent where the link does it by itself (MQTT closes idle ones).
   */
  identityPresent?(identity: IdentityRef, present: boolean): void;
  /** 'up': connected and authenticated; 'down' (reason); 'refused' (the parent refused the gateway's credentials or certificate). */
  on(event: 'up', listener: () => void): this;
  on(event: 'down', listener: (why: string) => void): this;
  on(event: 'refused', listener: (err: Error) => void): this;
  once(event: 'up', listener: () => void): this;
  once(event: 'down', listener: (why: string) => void): this;
  once(event: 'refused', listener: (err: Error) => void): this;
  // biome-ignore lint/suspicious/noExplicitAny: any event's listener must fit here; unknown[] parameters would refuse them
  off(event: 'up' | 'down' | 'refused', listener: (...args: any[]) => void): this;
}

/** A C2D message from the parent, locked until settled with `settleC2D(lockToken, ...)`. */
export interface UpstreamC2DDelivery {
  lockToken: string;
  message: Message;
  /** How often the parent has delivered it, this time included. */
  deliveryCount: number;
}

/**
 * One downstream identity at the parent, as the gateway acts for it: its twin, direct methods
 * and C2D. Callbacks registered with onDesired / onMethod / onC2D stay in force across
 * reconnects: the link subscribes them again whenever it comes back.
 */
export interface UpstreamIdentity {
  readonly deviceId: string;
  readonly moduleId?: string;
  readonly authChain: string;
  twinGet(): Promise<TwinProperties>;
  /** Merge patch (null deletes); resolves with the new reported `$version`. */
  twinPatchReported(patch: Record<string, unknown>): Promise<{ version: number }>;
  /**
   * Desired property patches pushed by the parent (`$version` included). `onLive` is called
   * each time the parent confirms the subscription (first time, after a reconnect or a link
   * attached again): patches made before that moment were not pushed here.
   */
  onDesired(cb: (patch: TwinCollection) => void, onLive?: () => void): void;
  /** Direct method calls for this identity; answer with methodResponse. */
  onMethod(cb: (req: MethodRequest) => void): void;
  methodResponse(requestId: string, status: number, payload: Buffer): void;
  /** Cloud-to-device messages (devices only); settle each with settleC2D. */
  onC2D(cb: (delivery: UpstreamC2DDelivery) => void): void;
  settleC2D(lockToken: string, outcome: C2DOutcome): Promise<void>;
  /**
   * Resolves once every registered callback's link is attached on the live connection (so the
   * parent routes methods, C2D and desired pushes here); rejects with the parent's refusal.
   */
  ready(): Promise<void>;
  /** Detaches this identity's links. */
  close(): Promise<void>;
}

/**
 * The auth chain of an identity nothing else names: a direct child of `edgeId` (`leaf;edge`,
 * `d/m;d;edge` for a module of one), or the edge device itself and its modules.
 */
export function directChildChain(id: IdentityRef, edgeId: string): string {
  if (id.deviceId === edgeId) return id.moduleId === undefined ? edgeId : `${edgeId}/${id.moduleId};${edgeId}`;
  return id.moduleId === undefined
    ? `${id.deviceId};${edgeId}`
    : `${id.deviceId}/${id.moduleId};${id.deviceId};${edgeId}`;
}
