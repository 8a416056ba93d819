import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { IdentityRef } from '../model/identity.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { createSasToken } from '../identity/sas.ts';
import { Availability } from '../routing/pump.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import { Backoff, ReconnectPause } from './backoff.ts';
import type { UpstreamTelemetryEndpoint } from './telemetry-endpoint.ts';
import { UpstreamConnectError, defaultPort, describeTarget, probe, type UpstreamTransport } from './transport.ts';
import type { ParentLinkStatus } from './parent-link.ts';

/** The options every link to the parent takes. */
export interface ParentLinkOptions {
  /** The parent's host name (or IP): where to connect and what its certificate must name. */
  parentHost: string;
  /** Default: the transport's standard port (5671, 8883, or 443 over WebSockets). */
  port?: number;
  /** The IoT hub's host name (SAS audiences), the same at every layer. */
  hubHostName: string;
  edgeDeviceId: string;
  /** The key the gateway's `$edgeHub` tokens are signed with (base64). */
  edgeKey: string;
  /** Lifetime of the gateway's SAS token, default 3600 s. */
  tokenTtlSecs?: number;
  /** First and longest reconnect wait, default 1 s and 30 s. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** PEM of the trust bundle the parent's certificate must chain to. */
  trustPem: string;
  /**
   * The auth chain of a telemetry sender (`leaf;...;edge`), for senders no `openIdentity` has
   * named. Default: `{sender};{edge}` (a direct child; `d/m;d;edge` for a module of one).
   */
  authChainOf?: (identity: IdentityRef) => string | undefined;
  /** Largest telemetry batch handed to the endpoint, default 500. */
  maxBatch?: number;
  /** How long to wait for the parent's answer to a connect, attach or request, default 10 s. */
  operationTimeoutMs?: number;
  log?: Logger;
}

/**
 * What the AMQP and the MQTT link to the parent have in common: the gateway's `$edgeHub`
 * token, the reconnect backoff and its probing pause, and the state the gateway reads and
 * hears about (`status()`, `'up'` / `'down'` / `'refused'`, availability for the pump). Each
 * link runs its own connection loop (`run`) and says when it is up or down.
 */
export abstract class ParentLinkBase extends EventEmitter {
  readonly availability = new Availability(false);
  readonly log: Logger;
  readonly hubHostName: string;
  readonly edgeDeviceId: string;
  protected readonly port: number;
  protected readonly backoff: Backoff;
  protected readonly tokenTtlSecs: number;
  protected readonly upListeners = new Set<() => void>();
  protected endpoint?: UpstreamTelemetryEndpoint;
  protected token?: { text: string; expiresAt: number };
  protected running = false;
  protected loop?: Promise<void>;
  protected since = Date.now();
  protected lastError?: string;
  private readonly parentHost: string;
  private edgeKey: string;
  private readonly pauser: ReconnectPause;

  constructor(
    base: ParentLinkOptions,
    protected readonly transport: UpstreamTransport,
  ) {
    super();
    if (!base.parentHost)
      throw new UserError(
        'the upstream link needs the parent host name',
        'Set parent_hostname (or the hub host name) in the configuration',
      );
    if (!base.edgeKey || Buffer.from(base.edgeKey, 'base64').length === 0)
      throw new UserError(
        'the upstream link needs the edge device key (base64)',
        'Check the SharedAccessKey of the provisioning connection string',
      );
    this.edgeKey = base.edgeKey;
    this.hubHostName = base.hubHostName;
    this.edgeDeviceId = base.edgeDeviceId;
    this.port = base.port ?? defaultPort(transport);
    this.pauser = new ReconnectPause((timeoutMs) => probe(base.parentHost, this.port, timeoutMs));
    this.tokenTtlSecs = base.tokenTtlSecs ?? 3600;
    this.backoff = new Backoff(base.minBackoffMs ?? 1000, base.maxBackoffMs ?? 30_000);
    this.parentHost = base.parentHost;
    this.log = (base.log ?? childLog('upstream')).child({ parent: this.describeParent() });
  }

  /** The parent accepts the gateway's credentials now. */
  abstract get connected(): boolean;

  /** The connection loop, until `running` is false; calls `firstAttempt` once, with the first failure or nothing. */
  protected abstract run(firstAttempt: (err?: unknown) => void): Promise<void>;

  describeParent(): string {
    return describeTarget({ host: this.parentHost, port: this.port, transport: this.transport });
  }

  status(): ParentLinkStatus {
    return {
      connected: this.connected,
      parent: this.describeParent(),
      since: this.since,
      ...(this.lastError !== undefined ? { lastError: this.lastError } : {}),
      failedAttempts: this.backoff.attempts,
      telemetry: this.endpoint?.metrics() ?? { sent: 0, undeliverable: 0, failedBatches: 0, relayed: 0 },
    };
  }

  /**
   * Starts connecting, and keeps the link up until close(). Resolves after the first attempt:
   * connected, or failed for a reason that may pass (parent unreachable: the gateway works
   * offline and the link comes up later by itself). Rejects when the parent refused the
   * gateway's credentials or certificate (a configuration error to report) while the link
   * keeps retrying in the background.
   */
  start(): Promise<void> {
    if (this.running) return Promise.resolve();
    this.running = true;
    this.starting();
    return new Promise((resolve, reject) => {
      this.loop = this.run((err) => {
        if (!err) resolve();
        else if (err instanceof UpstreamConnectError && (err.kind === 'refused' || err.kind === 'tls')) reject(err);
        else resolve();
      });
    });
  }

  /** What a link sets up when it starts, before its loop runs. */
  protected starting(): void {}

  /** Signs with another key from now on (the next token, the next connection). */
  setEdgeKey(key: string): void {
    this.edgeKey = key;
    this.token = undefined;
  }

  /** The gateway's token (audience `{hub}/devices/{edge}/modules/$edgeHub`), made anew when less than a fifth of its life is left. */
  protected currentToken(): { text: string; expiresAt: number } {
    const now = Date.now();
    if (!this.token || this.token.expiresAt - now < (this.tokenTtlSecs * 1000) / 5) {
      const se = Math.floor(now / 1000) + this.tokenTtlSecs;
      this.token = { text: createSasToken(this.edgeHubAudience(), this.edgeKey, se), expiresAt: se * 1000 };
    }
    return this.token;
  }

  protected edgeHubAudience(): string {
    return `${this.hubHostName}/devices/${this.edgeDeviceId}/modules/${EDGE_HUB}`;
  }

  /** A backoff wait of the connection loop (see ReconnectPause); none once the link is closing. */
  protected pause(ms: number, probing: boolean): Promise<void> {
    return this.running ? this.pauser.wait(ms, probing) : Promise.resolve();
  }

  /** Ends a backoff wait under way (the link is closing). */
  protected wakePause(): void {
    this.pauser.wake();
  }

  protected addUpListener(listener: () => void): () => void {
    this.upListeners.add(listener);
    return () => this.upListeners.delete(listener);
  }

  /** Tells everyone the parent accepts the gateway (logs, availability, 'up', the up listeners). */
  protected announceUp(): void {
    this.since = Date.now();
    this.lastError = undefined;
    this.log.info({ transport: this.transport, afterFailures: this.backoff.attempts }, 'connected to the parent');
    this.availability.set(true);
    this.emit('up');
    for (const l of [...this.upListeners]) {
      try {
        l();
      } catch (err) {
        this.log.error({ err }, 'upstream up listener failed');
      }
    }
  }

  /** Tells everyone the connection to the parent is gone, and why. */
  protected announceDown(why: string): void {
    this.since = Date.now();
    this.lastError = why;
    this.availability.set(false);
    if (this.running) this.log.warn({ reason: why }, 'connection to the parent lost; reconnecting');
    this.emit('down', why);
  }
}
