/**
 * A gateway's link to its parent (the IoT hub, or a parent gateway, which speaks the same
 * protocol): ONE multiplexed AMQP 1.0 connection carrying every downstream identity on behalf
 * of the gateway.
 *
 * Wire format (on-behalf-of, as the IoT Edge hub sends it through the C# device SDK):
 * - Transport: AMQP over TLS on 5671 (ALPN `amqp`), or AMQP over WebSockets on 443
 *   (`wss://{parent}/$iothub/websocket`, subprotocol `AMQPWSB10`). The parent's certificate must
 *   chain to the trust bundle and name the parent host. No SASL layer (as the device SDKs): the
 *   AMQP open names the IoT hub host as `hostname`; authentication is claims-based (CBS).
 * - The gateway's credential: a SAS token with audience `{hub}/devices/{edge}/modules/$edgeHub`,
 *   signed with the edge device's key (a module may sign with its device's key), one hour long,
 *   renewed (put again on `$cbs`, for the gateway and every identity) at 80 % of its life.
 * - Right after the open, a CBS put-token for the gateway itself (`name` = its own audience)
 *   proves the credential; a refusal there is an authentication failure of the whole link.
 * - For each downstream identity, before its first link: a CBS put-token with `name` = the
 *   TARGET's audience (`{hub}/devices/{leaf}` or `{hub}/devices/{d}/modules/{m}`, ids
 *   URL-encoded) and the GATEWAY's token as the body (type `servicebus.windows.net:sastoken`).
 *   This is what the C# SDK does for a client whose token provider is the edge hub's: the CBS
 *   name is the client's audience, the token comes from the provider. Renewed with the
 *   gateway's token (amqp-target-auth.ts).
 * - Every link of a downstream identity names the identity in its address
 *   (`/devices/{id}/messages/events`, `/devices/{id}/twin`, `/devices/{id}/methods/devicebound`,
 *   `/devices/{id}/messages/devicebound`, module forms `/devices/{d}/modules/{m}/...`) and carries
 *   the link properties `com.microsoft:auth-chain` = `{target};...;{edge}` (target first, acting
 *   edge last), `com.microsoft:api-version`, `com.microsoft:client-version`, and for twin and
 *   methods `com.microsoft:channel-correlation-id` (`twin:{uuid}` / `methods:{uuid}`) pairing the
 *   sender with its receiver.
 * - Everything else (telemetry properties, twin operations, method and C2D framing) is the
 *   device SDKs' AMQP format: see src/protocols/amqp for the parent's side.
 *
 * Reconnects: one shared exponential backoff with jitter (1 s doubling to 30 s, reset only after
 * a connection stayed up 10 s, so a flapping parent cannot cause a reconnect storm). While the
 * parent is unreachable (nothing listening), a TCP probe (no TLS, no AMQP) checks every ~0.5 s
 * whether it listens again and cuts the wait short, so the link is back — and `'up'` fires and
 * the telemetry drain resumes — within about half a second of the parent accepting
 * connections, however long the outage was. A parent that accepts TCP but refuses us gets the
 * full backoff.
 *
 * Events: `'up'` (connected and authenticated), `'down'` (reason text), `'refused'` (the parent
 * refused the gateway's credentials or certificate; retried with backoff).
 */
import type { Duplex } from 'node:stream';
import { randomUUID } from 'node:crypto';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { AmqpConnection } from './amqp-connection.ts';
import type { AmqpProxyOwner } from './amqp-identity-links.ts';
import { AmqpIdentityProxy } from './amqp-identity-proxy.ts';
import { PresenceAnnouncer } from './amqp-presence.ts';
import { TargetAuthorizations } from './amqp-target-auth.ts';
import { type SendOutcome, UpstreamDownError } from './errors.ts';
import {
  directChildChain,
  type DirectTelemetry,
  type ParentLink,
  type UpstreamEndpoint,
  type UpstreamIdentity,
} from './parent-link.ts';
import { ParentLinkBase, type ParentLinkOptions } from './parent-link-base.ts';
import { type RelayTelemetry, UpstreamTelemetryEndpoint } from './telemetry-endpoint.ts';
import { sendInBatches } from './amqp-batches.ts';
import type { OutLink } from './amqp-links.ts';
import { RELAY_CAPABILITY, relayAddress } from '../protocols/amqp/relay-link.ts';
import { CONDITION } from '../protocols/amqp/errors.ts';
import { BATCH_FORMAT } from '../protocols/amqp/batch.ts';
import { senderIdentity } from '../store/sender-message.ts';
import type { SenderOptions } from 'rhea';
import { UpstreamConnectError, openTransport, type UpstreamTransport } from './transport.ts';
import { took, tracing } from '../util/latency-trace.ts';
import { FewAtATime } from './few-at-a-time.ts';

/** What the AMQP link takes besides the common options (parent-link-base.ts; the port defaults to 5671, or 443 for `amqpws`). */
export interface AmqpParentLinkOptions extends ParentLinkOptions {
  transport?: Extract<UpstreamTransport, 'amqp' | 'amqpws'>;
  /** The id of the store telemetry comes from: batches then name their origin, for exactly-once storage upstream. */
  originId?: string;
}

/** A connection that stayed up this long resets the backoff. */
const STABLE_MS = 10_000;
/** How often the telemetry senders of identities that left are looked at (and closed when idle). */
const GONE_SWEEP_MS = 2000;

/** Telemetry links attached ahead of a device's first message at once, at most. */
const PREPARE_CONCURRENCY = 8;

export class AmqpParentLink extends ParentLinkBase implements ParentLink {
  readonly operationTimeoutMs: number;
  private pc?: AmqpConnection;
  private readonly targets: TargetAuthorizations;
  /** What openIdentity gave out (twin, methods, C2D), by identity key. */
  private readonly identities = new Map<string, AmqpIdentityProxy>();
  /** The proxies the telemetry endpoint sends with, by sender (apart from those openIdentity gave out). */
  private readonly senders = new Map<string, AmqpIdentityProxy>();
  /** Devices that connected, whose telemetry link is to be attached ahead of their first message. */
  private readonly preparing = new Set<string>();
  private readonly attaches = new FewAtATime<IdentityRef>(PREPARE_CONCURRENCY, async (identity) => {
    try {
      if (this.connected) await this.senderProxy(identity).prepareTelemetry();
    } finally {
      this.preparing.delete(identityKey(identity));
    }
  });
  /** Downstream identities that left this gateway: their telemetry senders close once idle. */
  private readonly gone = new Set<string>();
  private goneSweep?: NodeJS.Timeout;
  private abortAttempt?: () => void;
  /** The relay link of a connection (a Strata parent's, relay-link.ts), once attached. */
  private relay?: { pc: AmqpConnection; link: Promise<OutLink>; attached: boolean };
  private renewTimer?: NodeJS.Timeout;
  private readonly owner: AmqpProxyOwner;
  /** Who is connected below, told to a Strata parent on its presence link. */
  private readonly presence: PresenceAnnouncer;

  constructor(readonly o: AmqpParentLinkOptions) {
    super(o, o.transport ?? 'amqp');
    this.operationTimeoutMs = o.operationTimeoutMs ?? 10_000;
    this.targets = new TargetAuthorizations({
      hubHostName: this.hubHostName,
      edgeDeviceId: this.edgeDeviceId,
      log: this.log,
      gatewayToken: () => this.gatewayToken(),
      putGatewayToken: (pc) => this.putGatewayToken(pc),
    });
    this.owner = {
      hubHostName: this.hubHostName,
      edgeDeviceId: this.edgeDeviceId,
      operationTimeoutMs: this.operationTimeoutMs,
      log: this.log,
      current: () => this.pc,
      authorize: (pc, identity) => this.targets.authorize(pc, identity),
      forgetAuthorization: (pc, identity) => this.targets.forget(pc, identity),
      onUp: (listener) => this.addUpListener(listener),
    };
    this.presence = new PresenceAnnouncer({
      edgeDeviceId: this.edgeDeviceId,
      log: this.log,
      authorize: (pc, identity) => this.targets.authorize(pc, identity),
      forgetAuthorization: (pc, identity) => this.targets.forget(pc, identity),
      authChainOf: (identity) => this.authChainFor(identity),
    });
  }

  get connected(): boolean {
    return this.pc !== undefined && !this.pc.closed;
  }

  /** Closes the connection and stops reconnecting. */
  async close(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.wakePause();
    this.abortAttempt?.();
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (this.goneSweep) clearInterval(this.goneSweep);
    for (const ch of [...this.identities.values(), ...this.senders.values()]) await ch.close();
    this.identities.clear();
    this.senders.clear();
    await this.pc?.close();
    await this.loop;
  }

  /** `$upstream` for the gateway's endpoint pump (one per link). */
  telemetryEndpoint(): UpstreamEndpoint {
    this.endpoint ??= new UpstreamTelemetryEndpoint(
      {
        availability: this.availability,
        isConnected: () => this.connected,
        senderFor: (sender) => this.senderProxy(sender),
        relay: () => this.relayTelemetry(),
        describeParent: () => this.describeParent(),
        stalled: (why) => {
          this.log.warn({ reason: why }, 'the parent stopped answering; reconnecting');
          this.pc?.end(why);
        },
        // Under the pump's default send timeout (30 s), so the link gives up first.
        stallMs: Math.min(25_000, this.operationTimeoutMs * 2),
        log: this.log,
        ...(this.o.originId !== undefined ? { originId: this.o.originId } : {}),
      },
      this.o.maxBatch ?? 500,
    );
    return this.endpoint;
  }

  readonly direct: DirectTelemetry = {
    usable: () => this.connected && this.availability.isAvailable(),
    whenUsable: (timeoutMs) => {
      if (this.direct.usable()) return Promise.resolve(true);
      return new Promise<boolean>((resolve) => {
        const done = (usable: boolean) => {
          clearTimeout(timer);
          off();
          resolve(usable);
        };
        const timer = setTimeout(() => done(false), timeoutMs);
        const off = this.availability.onAvailable(() => {
          if (this.direct.usable()) done(true);
        });
      });
    },
    send: (identity, payload) => this.withStallCheck(this.senderProxy(identity).sendBatchPayload(payload)),
    relayUsable: () => this.pc !== undefined && !this.pc.closed && this.pc.offers(RELAY_CAPABILITY),
    sendRelay: (senders, payload) => this.withStallCheck(this.sendRelayPayload(senders, payload)),
  };

  private async sendRelayPayload(senders: readonly IdentityRef[], payload: Buffer): Promise<SendOutcome> {
    const pc = this.pc;
    if (!pc || pc.closed) throw new UpstreamDownError(`the link to the parent (${this.describeParent()}) is down`);
    const t0 = tracing ? performance.now() : 0;
    await Promise.all(senders.map((sender) => this.targets.authorize(pc, sender)));
    const t1 = tracing ? performance.now() : 0;
    const outcome = await (await this.relayLink(pc)).sendEncoded(payload, BATCH_FORMAT);
    if (tracing) {
      took('pass.auth', t1 - t0);
      took('pass.send', performance.now() - t1);
    }
    if (!outcome.ok && outcome.condition === CONDITION.unauthorized)
      for (const sender of senders) this.targets.forget(pc, sender);
    return outcome;
  }

  /** The parent's relay link on the current connection, when the parent offers one. */
  private relayTelemetry(): RelayTelemetry | undefined {
    const pc = this.pc;
    if (!pc || pc.closed || !pc.offers(RELAY_CAPABILITY)) return undefined;
    return {
      authorize: (sender) => this.targets.authorize(pc, sender),
      forward: async (messages, origin) => {
        const t0 = tracing ? performance.now() : 0;
        const outcomes = await sendInBatches(await this.relayLink(pc), messages, origin);
        if (tracing) took('relay.send', performance.now() - t0);
        // The parent dropped a sender's claim (moved out of scope, disabled): put its token again
        // before the next try, which then drops what the parent refuses for good.
        if (outcomes.some((o) => !o.ok && o.condition === CONDITION.unauthorized))
          for (const sender of new Set(origin.senders)) this.targets.forget(pc, senderIdentity(sender));
        return outcomes;
      },
    };
  }

  /** True while the relay link of the current connection is attached (a Strata parent's, for a link naming its store). */
  get relayAttached(): boolean {
    return this.relay !== undefined && this.relay.pc === this.pc && this.relay.attached && !this.relay.pc.closed;
  }

  /** The relay link on `pc`, attached on first use (and as the connection comes up: see up). */
  private relayLink(pc: AmqpConnection): Promise<OutLink> {
    if (this.relay?.pc === pc) return this.relay.link;
    const tAttach = tracing ? performance.now() : 0;
    const link = pc.openSender(
      {
        name: `relay-${randomUUID()}`,
        target: { address: relayAddress(this.edgeDeviceId) },
        source: { address: `relay-${this.edgeDeviceId}` },
        snd_settle_mode: 0,
        rcv_settle_mode: 0,
      } as SenderOptions,
      'relay',
    );
    const entry = { pc, link, attached: false };
    this.relay = entry;
    const forget = () => {
      if (this.relay === entry) this.relay = undefined;
    };
    link.then((l) => {
      entry.attached = true;
      l.onGone(forget);
    }, forget);
    if (tracing)
      void link.then(
        () => took('up.relayAttach', performance.now() - tAttach),
        () => {},
      );
    return link;
  }

  private withStallCheck(sending: Promise<SendOutcome>): Promise<SendOutcome> {
    // A parent that stops answering without closing the connection: drop it, so what is in
    // flight fails (the child sends it again) and the link reconnects.
    const stallMs = Math.min(25_000, this.operationTimeoutMs * 2);
    const timer = setTimeout(() => {
      const why = `the parent (${this.describeParent()}) did not settle a passed-on batch within ${stallMs} ms`;
      this.log.warn({ reason: why }, 'the parent stopped answering; reconnecting');
      this.pc?.end(why);
    }, stallMs);
    return sending.finally(() => clearTimeout(timer));
  }

  /**
   * A downstream identity's twin, methods and C2D at the parent. Opening twice gives the same
   * object until it is closed. `authChain` is `{target};...;{this edge}`.
   */
  openIdentity(id: { deviceId: string; moduleId?: string; authChain: string }): UpstreamIdentity {
    const identity: IdentityRef =
      id.moduleId === undefined ? { deviceId: id.deviceId } : { deviceId: id.deviceId, moduleId: id.moduleId };
    const key = identityKey(identity);
    const existing = this.identities.get(key);
    if (existing && !existing.closed) {
      existing.authChain = id.authChain;
      return existing;
    }
    const ch = new AmqpIdentityProxy(this.owner, identity, id.authChain);
    this.identities.set(key, ch);
    const close = ch.close.bind(ch);
    ch.close = async () => {
      if (this.identities.get(key) === ch) this.identities.delete(key);
      await close();
    };
    const sender = this.senders.get(key);
    if (sender) sender.authChain = id.authChain;
    return ch;
  }

  prepareTelemetry(identity: IdentityRef): void {
    // A parent that takes presence shows the identity connected without its link (identityPresent).
    if (!this.connected || PresenceAnnouncer.usable(this.pc)) return;
    const key = identityKey(identity);
    if (this.preparing.has(key)) return;
    this.preparing.add(key);
    this.attaches.push(identity);
  }

  /**
   * A downstream identity connected to this gateway, or left it. A Strata parent is told so on
   * the presence link. Otherwise the parent counts an identity connected while its links are
   * attached, so the telemetry links of one that left are closed (checked every few seconds,
   * once no send of its stored messages is under way); a backlog sent later opens them again for
   * as long as it takes.
   */
  identityPresent(identity: IdentityRef, present: boolean): void {
    const key = identityKey(identity);
    // The gateway's own modules are not announced, as their links are not attached ahead either.
    if (identity.deviceId !== this.edgeDeviceId) this.presence.set(identity, present);
    if (present) {
      this.gone.delete(key);
      return;
    }
    this.gone.add(key);
    this.goneSweep ??= setInterval(() => this.closeGoneSenders(), GONE_SWEEP_MS);
    this.goneSweep.unref();
  }

  private closeGoneSenders(): void {
    for (const key of this.gone) {
      // A link still being attached ahead of a first message is looked at once that is over.
      if (this.preparing.has(key)) continue;
      const ch = this.senders.get(key);
      if (ch && !ch.idle) continue;
      if (ch) {
        this.senders.delete(key);
        void ch.close().catch((err: unknown) => this.log.debug({ err: String(err) }, 'closing a sender failed'));
      }
      // Forgotten once its sender is closed: a backlog drained later reopens one that stays (rare, and harmless).
      if (!ch) this.gone.delete(key);
    }
    if (this.gone.size === 0 && this.goneSweep) {
      clearInterval(this.goneSweep);
      this.goneSweep = undefined;
    }
  }

  private senderProxy(identity: IdentityRef): AmqpIdentityProxy {
    const key = identityKey(identity);
    let ch = this.senders.get(key);
    if (!ch) {
      ch = new AmqpIdentityProxy(this.owner, identity, this.authChainFor(identity));
      this.senders.set(key, ch);
    }
    return ch;
  }

  private authChainFor(identity: IdentityRef): string {
    const given = this.o.authChainOf?.(identity);
    if (given) return given;
    const known = this.identities.get(identityKey(identity));
    if (known) return known.authChain;
    return directChildChain(identity, this.edgeDeviceId);
  }

  // ---- credentials ----

  private gatewayToken(): string {
    return this.currentToken().text;
  }

  private async putGatewayToken(pc: AmqpConnection): Promise<void> {
    const r = await pc.putToken(this.edgeHubAudience(), this.gatewayToken());
    if (r.status !== 200) {
      throw new UpstreamConnectError(
        'refused',
        `the parent refused the credentials of ${this.edgeDeviceId}/${EDGE_HUB} (${r.status}): ${r.description || 'no reason given'}`,
      );
    }
  }

  /** Renews the gateway's token and every downstream identity's when a fifth of the token's life is left. */
  private scheduleRenewal(pc: AmqpConnection): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    // From the token's real expiry: `se` is whole seconds, so a token lives up to 1 s less than its TTL.
    const expiresAt = this.token?.expiresAt ?? Date.now() + this.tokenTtlSecs * 1000;
    const wait = Math.max(500, expiresAt - Date.now() - this.tokenTtlSecs * 200);
    this.renewTimer = setTimeout(() => void this.renew(pc), wait);
    this.renewTimer.unref();
  }

  private async renew(pc: AmqpConnection): Promise<void> {
    if (pc.closed || pc !== this.pc) return;
    this.token = undefined;
    try {
      await this.putGatewayToken(pc);
      const renewed = await this.targets.renew(pc);
      this.log.debug({ identities: renewed }, 'upstream tokens renewed');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'token renewal failed; reconnecting');
      pc.end(`token renewal failed: ${(err as Error).message}`);
      return;
    }
    this.scheduleRenewal(pc);
  }

  // ---- the connection loop ----

  private async connectOnce(): Promise<AmqpConnection> {
    const abort = new AbortController();
    this.abortAttempt = () => abort.abort();
    const { signal } = abort;
    const socket = await openTransport({
      host: this.o.parentHost,
      port: this.port,
      transport: this.transport,
      ca: this.o.trustPem,
      timeoutMs: this.operationTimeoutMs,
      signal,
    });
    // close() during the AMQP open or the CBS exchange: cutting the socket fails them at once.
    const cut = () => socket.destroy();
    signal.addEventListener('abort', cut, { once: true });
    try {
      return await this.openOn(socket);
    } finally {
      signal.removeEventListener('abort', cut);
      this.abortAttempt = undefined;
    }
  }

  private async openOn(socket: Duplex): Promise<AmqpConnection> {
    const pc = await AmqpConnection.open(socket, {
      containerId: `${this.edgeDeviceId}-upstream-${randomUUID().slice(0, 8)}`,
      hubHostName: this.hubHostName,
      // The parent sends something every 15 s; 60 s of silence (rhea waits twice this) ends the connection.
      idleTimeoutMs: 30_000,
      operationTimeoutMs: this.operationTimeoutMs,
      log: this.log,
    });
    try {
      await this.putGatewayToken(pc);
    } catch (err) {
      pc.end((err as Error).message);
      throw err instanceof UpstreamConnectError ? err : new UpstreamConnectError('lost', (err as Error).message);
    }
    return pc;
  }

  protected async run(firstAttempt: (err?: unknown) => void): Promise<void> {
    let first: ((err?: unknown) => void) | undefined = firstAttempt;
    let unreachable = false;
    let failuresLogged = 0;
    while (this.running) {
      let pc: AmqpConnection;
      try {
        pc = await this.connectOnce();
      } catch (err) {
        first?.(err);
        first = undefined;
        if (!this.running) break;
        const e = err instanceof UpstreamConnectError ? err : new UpstreamConnectError('lost', (err as Error).message);
        unreachable = e.kind === 'unreachable';
        if (e.message !== this.lastError || failuresLogged === 0) {
          this.log.warn(
            { reason: e.message, attempt: this.backoff.attempts + 1 },
            'cannot connect to the parent; will retry',
          );
          failuresLogged++;
        }
        this.lastError = e.message;
        if (e.kind === 'refused' || e.kind === 'tls') this.emit('refused', e);
        await this.pause(this.backoff.next(), unreachable);
        continue;
      }
      if (!this.running) {
        await pc.close();
        break;
      }
      first?.();
      first = undefined;
      failuresLogged = 0;
      this.up(pc);
      const why = await pc.lost;
      this.down(pc, why);
      if (!this.running) break;
      if (Date.now() - pc.openedAt >= STABLE_MS) this.backoff.reset();
      await this.pause(this.backoff.next(), false);
    }
    first?.();
  }

  private up(pc: AmqpConnection): void {
    this.pc = pc;
    this.scheduleRenewal(pc);
    // The relay link now, not with the first batch: at each layer of a chain its attach was
    // 3 to 34 ms more on the first batch's way, and a start-up backlog grows behind it.
    if (this.o.originId !== undefined && pc.offers(RELAY_CAPABILITY))
      this.relayLink(pc).catch((err: unknown) =>
        this.log.debug({ err: (err as Error).message }, 'attaching the relay link failed; the first batch tries again'),
      );
    this.presence.connected(pc);
    // Without presence (IoT Hub) a parent sees a device below by its link: attach those of all
    // still connected again, as a Strata parent is told again who is below.
    if (!PresenceAnnouncer.usable(pc))
      for (const identity of this.presence.identities()) this.prepareTelemetry(identity);
    this.announceUp();
  }

  private down(pc: AmqpConnection, why: string): void {
    if (this.pc === pc) this.pc = undefined;
    this.presence.disconnected(pc);
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.announceDown(why);
  }
}
