/**
 * A gateway's link to its parent over MQTT (`UpstreamProtocol` Mqtt or MqttWs). IoT Hub's MQTT
 * carries one identity per connection, so where the AMQP link (amqp-parent-link.ts) multiplexes every
 * downstream identity on one connection, this link keeps one MQTT connection per identity that
 * has traffic, each acting on behalf of that identity:
 * - Transport: MQTT 3.1.1 over TLS on 8883 (ALPN `mqtt`), or over WebSockets on 443
 *   (`wss://{parent}/$iothub/websocket`, subprotocol `mqtt`). The parent's certificate must
 *   chain to the trust bundle and name the parent host (transport.ts, as for AMQP).
 * - The gateway's credential: a SAS token with audience `{hub}/devices/{edge}/modules/$edgeHub`,
 *   signed with the edge device's key, one hour long. A connection of the gateway's own
 *   `{edge}/$edgeHub` identity is kept open all the time: it proves the credential (the link is
 *   `connected` while it is up, and its refusal is the gateway's) and carries the `$edgeHub`
 *   twin (routes).
 * - Each downstream identity: client id = the identity (`leaf` or `dev/mod`), user name
 *   `{hub}/{clientId}/?api-version=2021-04-12&DeviceClientType=...&auth-chain={target;...;edge}`
 *   (URL-encoded), password = the gateway's token. Then the device SDKs' topics (telemetry,
 *   twin, methods, C2D): see mqtt-identity-proxy.ts and, for the parent's side, src/protocols/mqtt.
 * - Opened when first needed, closed after IDLE_MS without use, re-made (with a fresh token)
 *   at 80 % of the token's life, since MQTT cannot renew a credential on a live connection.
 *
 * Delivery: telemetry is at least once. Each message is a QoS 1 PUBLISH and counts as
 * delivered when its PUBACK comes; the AMQP link's batches name their origin so the parent
 * stores each message exactly once, but MQTT has nowhere to carry that, so a message whose
 * PUBACK was lost in a reconnect is sent again and may be stored twice upstream. Order per
 * sender holds (one connection per sender, messages in store order). C2D: complete = PUBACK,
 * reject = PUBACK as well (MQTT cannot reject: the parent records a completion), abandon = no
 * PUBACK (the parent delivers it again once that identity's connection is re-made).
 *
 * Reconnects: the shared backoff with jitter (1 s doubling to 30 s, reset after a connection
 * stayed up 10 s) for the `$edgeHub` connection, with the AMQP link's TCP probing while the
 * parent is unreachable, so the link is back within about half a second of the parent
 * listening again. Identity connections follow it: they come back on demand, or at once after
 * 'up' for identities with callbacks.
 *
 * Events: `'up'`, `'down'` (reason text), `'refused'` (the parent refused the gateway's
 * credentials or certificate; retried with backoff).
 */
import type { Duplex } from 'node:stream';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { ConnackRefusal } from './mqtt-connection.ts';
import type { MqttProxyOwner } from './mqtt-identity-connection.ts';
import { MqttIdentityHandle } from './mqtt-identity-handle.ts';
import { MqttIdentityProxy } from './mqtt-identity-proxy.ts';
import { directChildChain, type ParentLink, type UpstreamEndpoint, type UpstreamIdentity } from './parent-link.ts';
import { ParentLinkBase, type ParentLinkOptions } from './parent-link-base.ts';
import { UpstreamTelemetryEndpoint } from './telemetry-endpoint.ts';
import { UpstreamConnectError, openTransport, type UpstreamTransport } from './transport.ts';

/** What the MQTT link takes besides the common options (parent-link-base.ts; the port defaults to 8883, or 443 for `mqttws`). */
export interface MqttParentLinkOptions extends ParentLinkOptions {
  transport?: Extract<UpstreamTransport, 'mqtt' | 'mqttws'>;
  /** An identity connection unused this long is closed, default 60 s. */
  idleMs?: number;
}

/** A connection that stayed up this long resets the backoff. */
const STABLE_MS = 10_000;

export class MqttParentLink extends ParentLinkBase implements ParentLink {
  private readonly operationTimeoutMs: number;
  private readonly proxies = new Map<string, MqttIdentityProxy>();
  private readonly edgeHub: MqttIdentityProxy;
  private readonly owner: MqttProxyOwner;
  private up = false;
  private readonly aborts = new AbortController();
  private sweepTimer?: NodeJS.Timeout;

  constructor(readonly o: MqttParentLinkOptions) {
    super(o, o.transport ?? 'mqtt');
    this.operationTimeoutMs = o.operationTimeoutMs ?? 10_000;
    this.owner = {
      hubHostName: o.hubHostName,
      edgeDeviceId: o.edgeDeviceId,
      operationTimeoutMs: this.operationTimeoutMs,
      log: this.log,
      isUp: () => this.up,
      openSocket: () => this.openSocket(),
      closing: this.aborts.signal,
      token: () => this.gatewayToken(),
      credentialsRefused: (why) => {
        this.log.warn({ reason: why }, 'the parent no longer accepts the gateway credentials; reconnecting');
        this.edgeHub.close(why);
      },
      onUp: (listener) => this.addUpListener(listener),
    };
    const self: IdentityRef = { deviceId: o.edgeDeviceId, moduleId: EDGE_HUB };
    this.edgeHub = new MqttIdentityProxy(this.owner, self, `${o.edgeDeviceId}/${EDGE_HUB};${o.edgeDeviceId}`, true);
    this.proxies.set(identityKey(self), this.edgeHub);
  }

  get connected(): boolean {
    return this.up && this.edgeHub.connected;
  }

  protected override starting(): void {
    const idleMs = this.o.idleMs ?? 60_000;
    this.sweepTimer = setInterval(() => this.sweep(idleMs), Math.min(10_000, idleMs / 2));
    this.sweepTimer.unref();
  }

  async close(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.wakePause();
    this.aborts.abort();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const proxy of this.proxies.values()) proxy.close('the gateway is closing', true);
    this.proxies.clear();
    await this.loop;
  }

  telemetryEndpoint(): UpstreamEndpoint {
    this.endpoint ??= new UpstreamTelemetryEndpoint(
      {
        availability: this.availability,
        isConnected: () => this.connected,
        senderFor: (sender) => this.proxy(sender),
        describeParent: () => this.describeParent(),
        stalled: (why) => {
          this.log.warn({ reason: why }, 'the parent stopped answering; reconnecting the identities waiting for it');
          for (const proxy of this.proxies.values()) proxy.endIfWaiting(why);
        },
        stallMs: Math.min(25_000, this.operationTimeoutMs * 2),
        log: this.log,
      },
      this.o.maxBatch ?? 500,
    );
    return this.endpoint;
  }

  openIdentity(id: { deviceId: string; moduleId?: string; authChain: string }): UpstreamIdentity {
    const identity: IdentityRef =
      id.moduleId === undefined ? { deviceId: id.deviceId } : { deviceId: id.deviceId, moduleId: id.moduleId };
    const proxy = this.proxy(identity, id.authChain);
    if (proxy.handle && !proxy.handle.closed) return proxy.handle;
    const handle = new MqttIdentityHandle(proxy, () => this.up);
    proxy.handle = handle;
    return handle;
  }

  /** The proxy of an identity, made on first use; `authChain` updates a known one. */
  private proxy(identity: IdentityRef, authChain?: string): MqttIdentityProxy {
    const key = identityKey(identity);
    let proxy = this.proxies.get(key);
    if (!proxy) {
      proxy = new MqttIdentityProxy(
        this.owner,
        identity,
        authChain ?? this.o.authChainOf?.(identity) ?? directChildChain(identity, this.o.edgeDeviceId),
      );
      this.proxies.set(key, proxy);
    } else if (authChain && !proxy.pinned) {
      proxy.authChain = authChain;
    }
    return proxy;
  }

  /** Closes identity connections nobody used for `idleMs`, and forgets proxies with nothing left. */
  private sweep(idleMs: number): void {
    const now = Date.now();
    for (const [key, proxy] of this.proxies) {
      if (proxy.pinned || !proxy.idle() || now - proxy.lastUsed < idleMs) continue;
      if (proxy.connected) {
        this.log.debug({ identity: key }, 'closing an idle upstream connection');
        proxy.close('idle');
      } else if (!proxy.handle || proxy.handle.closed) {
        proxy.close('forgotten', true);
        this.proxies.delete(key);
      }
    }
  }

  // ---- credentials and sockets ----

  private gatewayToken(): { text: string; expiresAt: number; ttlMs: number } {
    return { ...this.currentToken(), ttlMs: this.tokenTtlSecs * 1000 };
  }

  private openSocket(): Promise<Duplex> {
    return openTransport({
      host: this.o.parentHost,
      port: this.port,
      transport: this.transport,
      ca: this.o.trustPem,
      timeoutMs: this.operationTimeoutMs,
      signal: this.aborts.signal,
    });
  }

  // ---- the connection loop (the gateway's own $edgeHub connection) ----

  protected async run(firstAttempt: (err?: unknown) => void): Promise<void> {
    let first: ((err?: unknown) => void) | undefined = firstAttempt;
    let failuresLogged = 0;
    while (this.running) {
      try {
        await this.edgeHub.connection(true);
      } catch (err) {
        if (!this.running) break;
        const e = this.classify(err);
        first?.(e);
        first = undefined;
        if (e.message !== this.lastError || failuresLogged === 0) {
          this.log.warn(
            { reason: e.message, attempt: this.backoff.attempts + 1 },
            'cannot connect to the parent; will retry',
          );
          failuresLogged++;
        }
        this.lastError = e.message;
        if (e.kind === 'refused' || e.kind === 'tls') this.emit('refused', e);
        await this.pause(this.backoff.next(), e.kind === 'unreachable');
        continue;
      }
      if (!this.running) break;
      first?.();
      first = undefined;
      failuresLogged = 0;
      const down = this.edgeHub.nextDown();
      const openedAt = Date.now();
      this.markUp();
      const why = await down;
      this.markDown(why);
      if (!this.running) break;
      if (Date.now() - openedAt >= STABLE_MS) this.backoff.reset();
      await this.pause(this.backoff.next(), false);
    }
    first?.();
  }

  private classify(err: unknown): UpstreamConnectError {
    if (err instanceof ConnackRefusal) {
      const e = new UpstreamConnectError(
        'refused',
        `the parent refused the credentials of ${this.o.edgeDeviceId}/${EDGE_HUB}: ${err.message}`,
      );
      return e;
    }
    return err instanceof UpstreamConnectError ? err : new UpstreamConnectError('lost', (err as Error).message);
  }

  private markUp(): void {
    this.up = true;
    this.announceUp();
  }

  private markDown(why: string): void {
    this.up = false;
    this.announceDown(why);
  }
}
