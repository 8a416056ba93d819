import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import { UpstreamDownError, UpstreamError } from './errors.ts';
import { ConnackRefusal, MqttConnection, type IncomingPublish } from './mqtt-connection.ts';

/**
 * One downstream identity at the parent over MQTT: IoT Hub's MQTT has no multiplexing, so the
 * gateway keeps one connection per identity (client id = the identity, the auth chain in the
 * user name, the gateway's `{edge}/$edgeHub` token as the password) and speaks the device SDKs'
 * topics on it. The connection opens when something needs it (telemetry, a twin call, a
 * registered callback), comes back with backoff after a loss while callbacks want it, is
 * re-made before the gateway's token expires (MQTT has no other way to renew a credential),
 * and is closed by the link when it has been idle a while.
 *
 * This file holds that connection's life (open on demand, refusals, renewal, loss);
 * MqttIdentityProxy (mqtt-identity-proxy.ts) adds the identity's traffic on it.
 */

/** What an identity proxy needs from the MqttParentLink that owns it. */
export interface MqttProxyOwner {
  readonly hubHostName: string;
  readonly edgeDeviceId: string;
  readonly operationTimeoutMs: number;
  readonly log: Logger;
  /** The parent accepts the gateway now (its own `$edgeHub` connection is up). */
  isUp(): boolean;
  /** A TLS or WebSocket stream to the parent, verified against the trust bundle. */
  openSocket(): Promise<Duplex>;
  /** Aborted when the link closes: connection attempts under way give up at once. */
  readonly closing: AbortSignal;
  /** The gateway's SAS token (audience `{hub}/devices/{edge}/modules/$edgeHub`) and when it expires. */
  token(): { text: string; expiresAt: number; ttlMs: number };
  /** The parent refused the gateway's own credential on a target's connection. */
  credentialsRefused(why: string): void;
  /** Subscribes to the link coming up; returns the unsubscribe. */
  onUp(listener: () => void): () => void;
}

const KEEP_ALIVE_SECS = 60;
/** A refused identity is not tried again sooner than this. */
const REFUSAL_KEPT_MS = 5000;

export abstract class MqttIdentityConnection {
  readonly who: string;
  /** When it was last used for telemetry or a request (epoch ms). */
  lastUsed = Date.now();
  protected wire?: MqttConnection;
  protected connecting?: Promise<MqttConnection>;
  private refusal?: { err: Error; at: number };
  private renewTimer?: NodeJS.Timeout;
  /** A renewal swaps the connection; the identity counts as connected meanwhile (it is not a loss). */
  private renewing = false;
  private downListeners: Array<(why: string) => void> = [];
  protected isClosed = false;

  constructor(
    protected readonly owner: MqttProxyOwner,
    readonly identity: IdentityRef,
    public authChain: string,
    /** The gateway's own `$edgeHub`: connected by the link's loop, with its own credential, never idle-closed. */
    readonly pinned = false,
  ) {
    this.who =
      identity.moduleId === undefined
        ? `device ${identity.deviceId}`
        : `module ${identity.deviceId}/${identity.moduleId}`;
  }

  /** Topic filters the identity's callbacks need subscribed. */
  protected abstract wanted(): string[];
  /** Nothing waits on this identity's connection. */
  abstract idle(): boolean;
  /** Connects and subscribes what the callbacks need, now. */
  abstract rearm(): void;
  /** The same after a backoff (the connection went). */
  protected abstract scheduleRearm(): void;
  /** Fails what waits on `wire`, which is gone. */
  protected abstract forgetWire(wire: MqttConnection, why: string): void;
  /** A PUBLISH from the parent on `wire`. */
  protected abstract incoming(wire: MqttConnection, p: IncomingPublish): void;

  get connected(): boolean {
    return this.renewing || (this.wire !== undefined && !this.wire.closed);
  }

  /** Resolves with why, the next time the connection is lost (a renewal's reconnect is not a loss). */
  nextDown(): Promise<string> {
    return new Promise((resolve) => this.downListeners.push(resolve));
  }

  // ---- the connection ----

  /**
   * The live connection, opened when there is none and the link is up. `fromLinkLoop`: the
   * link's own loop (re)connecting the pinned `$edgeHub` connection, which is what brings it up.
   */
  connection(fromLinkLoop = false): Promise<MqttConnection> {
    if (this.isClosed) return Promise.reject(new UpstreamError(`the upstream connection of ${this.who} was closed`));
    if (this.connecting) return this.connecting;
    if (this.wire && !this.wire.closed) return Promise.resolve(this.wire);
    if (!(this.pinned && fromLinkLoop) && !this.owner.isUp())
      return Promise.reject(new UpstreamDownError(`the link to the parent is down; ${this.who} cannot reach it now`));
    if (this.refusal && Date.now() - this.refusal.at < REFUSAL_KEPT_MS) return Promise.reject(this.refusal.err);
    const opening = this.open().finally(() => {
      if (this.connecting === opening) this.connecting = undefined;
    });
    this.connecting = opening;
    return opening;
  }

  private username(): string {
    const clientId = identityKey(this.identity);
    const chain = this.pinned ? '' : `&auth-chain=${encodeURIComponent(this.authChain)}`;
    return `${this.owner.hubHostName}/${clientId}/?api-version=2021-04-12&DeviceClientType=${encodeURIComponent('strata-edge-hub')}${chain}`;
  }

  private async open(): Promise<MqttConnection> {
    const socket = await this.owner.openSocket().catch((err: Error) => {
      throw this.pinned ? err : new UpstreamDownError(err.message);
    });
    const token = this.owner.token();
    let wire: MqttConnection;
    // The link closing while the parent has not answered CONNECT yet: cutting the socket ends the wait.
    const cut = () => socket.destroy();
    this.owner.closing.addEventListener('abort', cut, { once: true });
    try {
      wire = await MqttConnection.open(socket, {
        clientId: identityKey(this.identity),
        username: this.username(),
        password: token.text,
        keepAliveSecs: KEEP_ALIVE_SECS,
        operationTimeoutMs: this.owner.operationTimeoutMs,
        log: this.owner.log,
      });
    } catch (err) {
      socket.destroy();
      throw this.pinned ? err : this.targetError(err as Error);
    } finally {
      this.owner.closing.removeEventListener('abort', cut);
    }
    if (this.isClosed) {
      wire.close('the identity was closed');
      throw new UpstreamError(`the upstream connection of ${this.who} was closed`);
    }
    this.refusal = undefined;
    this.wire = wire;
    wire.onPublish = (p) => this.incoming(wire, p);
    void wire.lost.then((why) => this.lost(wire, why));
    // A credential cannot be renewed on an MQTT connection: a new connection brings a new token.
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(
      () => void this.renew(wire),
      Math.max(1000, token.expiresAt - Date.now() - token.ttlMs / 5),
    );
    this.renewTimer.unref();
    if (this.wanted().length > 0) setImmediate(() => this.rearm());
    return wire;
  }

  /** A target's connection refused: whose fault is it? */
  private targetError(err: Error): Error {
    if (!(err instanceof ConnackRefusal)) return new UpstreamDownError(err.message);
    if (err.returnCode === 4) {
      // The user name and password are the gateway's: the target is not to blame.
      this.owner.credentialsRefused(err.message);
      return new UpstreamDownError(err.message);
    }
    if (err.returnCode === 3) return new UpstreamError(err.message, 'com.microsoft:server-busy', 503);
    const e = new UpstreamError(
      `the parent refused to let ${this.owner.edgeDeviceId} act for ${this.who}: ${err.message}`,
      'amqp:unauthorized-access',
      err.returnCode === 2 ? 404 : 401,
    );
    this.refusal = { err: e, at: Date.now() };
    this.owner.log.warn(
      { identity: identityKey(this.identity), authChain: this.authChain, reason: err.message },
      'the parent refused a downstream identity',
    );
    return e;
  }

  private lost(wire: MqttConnection, why: string): void {
    if (this.wire !== wire) return;
    this.wire = undefined;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.forgetWire(wire, why);
    for (const fn of this.downListeners.splice(0)) fn(why);
    if (!this.pinned && !this.isClosed && this.wanted().length > 0) this.scheduleRearm();
  }

  /**
   * Re-made before the token runs out: what is waiting for an answer is given a moment, then
   * the connection ends politely and a new one (with a fresh token) takes its place. Connections
   * nobody needs now just close.
   */
  private async renew(wire: MqttConnection): Promise<void> {
    if (this.wire !== wire || wire.closed) return;
    if (!this.pinned && this.idle()) {
      wire.close('idle when its credential was due for renewal');
      return;
    }
    const renewing = (async () => {
      await Promise.race([wire.drained(), new Promise((r) => setTimeout(r, this.owner.operationTimeoutMs))]);
      this.wire = undefined;
      this.forgetWire(wire, 'the connection was renewed');
      wire.close('renewing the credential');
      return this.open();
    })();
    this.connecting = renewing;
    this.renewing = true;
    try {
      await renewing;
      this.owner.log.debug(
        { identity: identityKey(this.identity) },
        'upstream MQTT connection renewed with a fresh token',
      );
    } catch (err) {
      const why = `could not renew the upstream connection of ${this.who}: ${(err as Error).message}`;
      this.owner.log.warn({ identity: identityKey(this.identity) }, why);
      for (const fn of this.downListeners.splice(0)) fn(why);
      if (!this.pinned && this.wanted().length > 0) this.scheduleRearm();
    } finally {
      this.renewing = false;
      if (this.connecting === renewing) this.connecting = undefined;
    }
  }

  /** Ends the connection if it has publishes waiting (the parent stopped answering). */
  endIfWaiting(why: string): void {
    if (this.wire && this.wire.pending > 0) this.wire.end(why);
  }

  /** Closes the connection (idle, or the link closing); it may connect again later unless `forGood`. */
  close(why: string, forGood = false): void {
    if (forGood) this.isClosed = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.wire?.close(why);
  }
}
