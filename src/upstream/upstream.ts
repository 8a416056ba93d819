import type { IdentityRef } from '../model/identity.ts';
import type { DeliveryEndpoint } from '../routing/pump.ts';
import type { SendOutcome } from './links.ts';
import type { UpstreamIdentity } from './identity.ts';
import type { TelemetryEndpointMetrics } from './telemetry-endpoint.ts';

/**
 * What a gateway uses of its link to the parent, whatever the protocol: the AMQP link (one
 * multiplexed connection, amqp-link.ts) and the MQTT link (one connection per identity,
 * mqtt-link.ts) both implement it, and the gateway depends on nothing else.
 */

export type { UpstreamIdentity, UpstreamC2DDelivery } from './identity.ts';
export type { TelemetryEndpointMetrics } from './telemetry-endpoint.ts';
export { UpstreamError, UpstreamDownError } from './links.ts';

export interface UpstreamStatus {
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
}

/** `$upstream` as the gateway's endpoint pump sees it. */
export type UpstreamTelemetryEndpointOf = DeliveryEndpoint & { metrics(): TelemetryEndpointMetrics; rewind(): void };

export interface Upstream {
  /** The parent accepts the gateway's credentials now. */
  readonly connected: boolean;
  /** Where the link goes, e.g. `amqps://parent:5671` or `wss://parent:443/$iothub/websocket`. */
  describeParent(): string;
  status(): UpstreamStatus;
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
  /** `$upstream` for the gateway's endpoint pump (one per link). */
  telemetryEndpoint(): UpstreamTelemetryEndpointOf;
  /** Present when the link can pass child gateways' batches on as they came (AMQP). */
  readonly direct?: DirectTelemetry;
  /**
   * A downstream identity's twin, methods and C2D at the parent. Opening twice gives the same
   * object until it is closed. `authChain` is `{target};...;{this edge}`.
   */
  openIdentity(id: { deviceId: string; moduleId?: string; authChain: string }): UpstreamIdentity;
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
