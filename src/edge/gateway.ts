import { createHash, randomUUID, X509Certificate } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import { isIP, type AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import tls, { type TLSSocket } from 'node:tls';
import Fastify, { type FastifyInstance } from 'fastify';
import { Engine } from '../engine/engine.ts';
import { EngineError, httpStatusOf } from '../model/errors.ts';
import type { AuthResult, IdentityRef } from '../model/identity.ts';
import type { AuthorizeHook, TelemetryItem, TelemetrySink } from '../engine/types.ts';
import { appendOnce } from '../engine/telemetry.ts';
import type { Message } from '../model/message.ts';
import { listenError } from '../hub/hub.ts';
import { ownModuleReader } from '../hub/own-modules.ts';
import { scopeApi } from '../hub/scope-api.ts';
import { sendError } from '../hub/service-api.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { identityKey } from '../model/identity.ts';
import { splitPemCertificates } from '../pki/index.ts';
import { AMQP_WS_SUBPROTOCOL, AmqpHead } from '../protocols/amqp/index.ts';
import { clientCertificateOf } from '../protocols/http/client-cert.ts';
import { attachMqttWebSocket, startMqttListener } from '../protocols/mqtt/server.ts';
import { webSocketDispatcher } from '../protocols/ws.ts';
import { GATED_TLS_OPTIONS, PRE_AUTH_SETTINGS, PreAuthGate, preAuthLimitsFrom, preAuthOf } from '../protocols/pre-auth.ts';
import { EndpointPump, type DeliveryEndpoint } from '../routing/pump.ts';
import { countedEndpoint } from '../routing/counted-endpoint.ts';
import type { Delivery, RouteTable } from '../routing/route-table.ts';
import { DEFAULT_RESEND_WINDOW_MS, MessageStore, StoreFullError, type AppendEntry, type AppendTarget } from '../store/message-store.ts';
import type { ForwardedOrigin } from '../model/message.ts';
import type { ResendKey } from '../store/resend-window.ts';
import { UpstreamLink } from '../upstream/amqp-link.ts';
import { MqttUpstream } from '../upstream/mqtt-link.ts';
import type { UpstreamTransport } from '../upstream/transport.ts';
import type { Upstream, UpstreamC2DDelivery } from '../upstream/upstream.ts';
import { storedMessageOf } from '../store/sender-message.ts';
import { UserError } from '../util/errors.ts';
import { DEFAULT_DISK_RESERVE_BYTES, reserveBytesOf, startFailure } from '../store/disk-headroom.ts';
import { childLog } from '../util/log.ts';
import type { EdgeConfig } from './config.ts';
import { edgeHubKey, readEdgeHubKey } from './edge-hub-key.ts';
import { DEFAULT_ROUTE, EdgeHubRoutes } from './edgehub-routes.ts';
import { DirectForwarder } from './direct-forward.ts';
import { GatewayRegistry } from './gateway-registry.ts';
import { diagnosticLines, loadEdgeConfigFile, type LoadedConfig } from './load-config.ts';
import {
  defaultEdgeDataDir,
  edgeFiles,
  readAppliedConfig,
  releaseGatewayLock,
  takeGatewayLock,
  writeGatewayState,
  writeReloadStatus,
  type ReloadStatus,
} from './local.ts';
import { healthToken, presentsHealthToken } from './health-access.ts';
import { GatewayMetrics, serveMetrics } from './metrics.ts';
import { ModuleInputEndpoint } from './module-endpoint.ts';
import { ScopeCache } from './scope-cache.ts';
import { ScopeSync } from './scope-sync.ts';
import { SecurityManager } from './security-manager.ts';
import { TwinCache } from './twin-cache.ts';

const log = childLog('gateway');

/** The original edge hub's default. */
export const DEFAULT_MAX_CONNECTED_CLIENTS = 100;
/** The original's metrics port. */
export const DEFAULT_METRICS_PORT = 9600;
/** How long a direct method relayed from upstream may wait for the device (IoT Hub's maximum). */
const RELAYED_METHOD_TIMEOUT_S = 300;
/** Messages per upstream batch (senders within a batch go in parallel, each in order). */
const UPSTREAM_BATCH = 5000;
/** At most one "not forwarded: no route" line this often. */
const NO_ROUTE_LOG_MS = 10_000;

export interface GatewayPorts {
  mqtt?: number;
  amqp?: number;
  https?: number;
  metrics?: number;
}

export interface GatewayOptions {
  configPath: string;
  /** Default ./.strata/edge-{deviceId}. */
  dataDir?: string;
  /** Address to listen on; default the hostname when it is an IP address, else 127.0.0.1. */
  bind?: string;
  /** 8883, 5671, 443 and 9600 by default; 0 picks a free port. */
  ports?: GatewayPorts;
  /** Where MaxConnectedClients and UpstreamProtocol are read from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Lines for the person who started the gateway (warnings, the start-up summary). */
  print?: (line: string) => void;
}

export interface GatewayNode {
  readonly deviceId: string;
  readonly dataDir: string;
  readonly bind: string;
  readonly ports: { mqtt: number; amqp: number; https: number; metrics: number };
  readonly engine: Engine;
  readonly store: MessageStore;
  readonly scope: ScopeCache;
  readonly link: Upstream;
  readonly security: SecurityManager;
  readonly metrics: GatewayMetrics;
  readonly routes: EdgeHubRoutes;
  hostname(): string;
  config(): EdgeConfig;
  /** Re-reads a config file (default: the applied one, else the one it started with) and applies what changed. */
  reload(configPath?: string, requestId?: string): Promise<ReloadStatus>;
  /** The start-up summary lines. */
  summary(): string[];
  close(): Promise<void>;
}

type Setting<T> = { value: T; source: string };

function maxClientsSetting(config: EdgeConfig, env: NodeJS.ProcessEnv): Setting<number> {
  const fromConfig = config.settings.max_connected_clients;
  const fromEnv = env.MaxConnectedClients;
  const check = (v: unknown, where: string): number => {
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
      throw new UserError(`MaxConnectedClients from ${where} must be a whole number of 0 or more, got ${JSON.stringify(v)}`, 'Set it to e.g. 100 (the default)');
    }
    return n;
  };
  if (fromConfig !== undefined) return { value: check(fromConfig, '[strata] max_connected_clients'), source: '[strata] max_connected_clients' };
  if (fromEnv !== undefined && fromEnv !== '') return { value: check(fromEnv, 'the environment variable MaxConnectedClients'), source: 'env MaxConnectedClients' };
  return { value: DEFAULT_MAX_CONNECTED_CLIENTS, source: 'default' };
}

/** A digest of a message's body and application properties (store/resend-window.ts tells a resend from a reused id by it). */
function contentPrint(message: Message): string {
  const h = createHash('sha256').update(message.body);
  for (const name in message.properties) h.update(`\0${name}\0${message.properties[name]}`);
  return h.digest('base64').slice(0, 22);
}

/** How long a device's message id is remembered to recognise its resend: `[strata] resend_window_secs`, default 60, 0 disables. */
function resendWindowSetting(config: EdgeConfig): Setting<number> {
  const v = config.settings.resend_window_secs;
  if (v === undefined) return { value: DEFAULT_RESEND_WINDOW_MS / 1000, source: 'default' };
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 86_400) {
    throw new UserError(`[strata] resend_window_secs must be a number of seconds from 0 to 86400, got ${JSON.stringify(v)}`, 'Set it to e.g. 60 (the default), or 0 to store every resend of a device again');
  }
  return { value: v, source: '[strata] resend_window_secs' };
}

function upstreamTransport(config: EdgeConfig, env: NodeJS.ProcessEnv): UpstreamTransport {
  const raw = String(config.settings.upstream_protocol ?? env.UpstreamProtocol ?? 'Amqp');
  const v = raw.trim().toLowerCase();
  if (v === 'amqp' || v === 'amqpws' || v === 'mqtt' || v === 'mqttws') return v;
  throw new UserError(`UpstreamProtocol "${raw}" is not one of Amqp, AmqpWs, Mqtt, MqttWs`, 'Set UpstreamProtocol (env) or [strata] upstream_protocol to Amqp, AmqpWs, Mqtt or MqttWs');
}

function portText(port: number, dflt: number): string {
  return port === dflt ? '' : `:${port}`;
}

/** A certificate-provisioned gateway refused upstream reads its $edgeHub key again at most this often. */
const KEY_REREAD_MS = 15_000;

/**
 * Starts a gateway: the edge hub of one edge device, acting as a transparent gateway for the
 * devices below it. See the module comment of each part for the details.
 */
export async function startGateway(o: GatewayOptions): Promise<GatewayNode> {
  const print = o.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const env = o.env ?? process.env;
  let loaded: LoadedConfig = loadEdgeConfigFile(o.configPath, { provisioning: true });
  for (const line of diagnosticLines(loaded.path, loaded.diagnostics)) print(line);
  let config = loaded.config;
  const prov = config.provisioning!;
  const deviceId = prov.deviceId;
  const hubHostName = prov.iothubHostname;
  const trustPem = loaded.files.trustBundlePem!;
  // Children with CA-signed certificates are checked against the trust bundle, as an edge hub does.
  const trustedCas = splitPemCertificates(trustPem).map((p) => new X509Certificate(p));
  const dataDir = resolve(o.dataDir ?? defaultEdgeDataDir(deviceId));
  mkdirSync(dataDir, { recursive: true });
  try {
    takeGatewayLock(dataDir);
  } catch (err) {
    throw startFailure(err, dataDir, 'gateway');
  }
  const files = edgeFiles(dataDir);
  const hostname = config.hostname;
  const bind = o.bind ?? (isIP(hostname) ? hostname : '127.0.0.1');
  const maxClients = maxClientsSetting(config, env);
  // Metrics are plain HTTP without authentication: loopback unless [strata] metrics_bind says otherwise.
  const metricsBind = metricsBindSetting(config.settings.metrics_bind);
  const transport = upstreamTransport(config, env);
  const resendWindow = resendWindowSetting(config);
  const startedCredentials = JSON.stringify(prov.authentication);
  const parentHost = config.parentHostname ?? hubHostName;

  const closers: Array<() => Promise<void> | void> = [() => releaseGatewayLock(dataDir)];
  const runClosers = async () => {
    while (closers.length > 0) {
      const fn = closers.pop()!;
      try {
        await fn();
      } catch (err) {
        log.warn({ err }, 'error during shutdown');
      }
    }
  };

  try {
    const security = await SecurityManager.start({ dataDir, hostname, deviceId, edgeCa: loaded.files.edgeCa });
    closers.push(() => security.close());

    const scope = ScopeCache.open(files.scopeDb, { edgeDeviceId: deviceId });
    closers.push(() => scope.close());
    const twins = TwinCache.open(files.gatewayDb);
    closers.push(() => twins.close());
    const reserve = diskReserveSetting(config, env);
    const store = MessageStore.open({ path: files.storeDb, resendWindowMs: resendWindow.value * 1000, diskReserveBytes: reserve.bytes, diskReserveSetting: reserve.name });
    closers.push(() => store.close());

    const keySource = { config, files: loaded.files, parent: { host: parentHost, port: 443, ca: trustPem }, dataDir, log };
    const edgeKey = await edgeHubKey({ ...keySource, print });
    const sync = new ScopeSync({ cache: scope, parent: { host: parentHost, port: 443, ca: trustPem }, hubHostName, edge: { deviceId, key: edgeKey } });
    const upstreamOptions = {
      parentHost,
      trustPem,
      hubHostName,
      edgeDeviceId: deviceId,
      edgeKey,
      authChainOf: (id: IdentityRef) => scope.authChainOf(id.deviceId, id.moduleId),
      // Large batches: each rides one round trip (two are in flight).
      maxBatch: UPSTREAM_BATCH,
    };
    const link: Upstream =
      transport === 'mqtt' || transport === 'mqttws'
        ? new MqttUpstream({ ...upstreamOptions, transport })
        : // Batches name where in this store they come from: the parent stores each message once.
          new UpstreamLink({ ...upstreamOptions, transport, originId: store.id });

    const registry = new GatewayRegistry({ scope, twins, upstream: link });
    closers.push(() => registry.close());
    const routes = new EdgeHubRoutes({ edgeDeviceId: deviceId, twins, lastGoodPath: files.routes });
    routes.loadCached();

    // ---- telemetry: routes -> store (acknowledged once durable) -> one pump per endpoint ----
    let noRoute = { count: 0, lastLog: 0 };
    const notForwarded = (sender: string) => {
      metrics.dropped.inc({ reason: 'no_route' });
      noRoute.count++;
      const now = Date.now();
      if (now - noRoute.lastLog < NO_ROUTE_LOG_MS) return;
      const why = routes.configured ? 'no route matches it' : `no routes are configured; ${routes.howToConfigure}`;
      log.warn({ sender, notForwardedSinceLastLine: noRoute.count }, `message from ${sender} not forwarded: ${why}`);
      noRoute = { count: 0, lastLog: now };
    };
    const storeError = (err: unknown): never => {
      if (err instanceof StoreFullError) {
        const until = err.limit === 'disk' ? 'until space is freed on its disk' : 'until the upstream drains it';
        throw new EngineError('store-full', `the gateway's message store is full (${err.message}); messages are refused ${until}`);
      }
      throw new EngineError('unavailable', `the gateway could not store the message: ${(err as Error).message}`);
    };
    // The route table hands out the same deliveries for every message of a source: so do we.
    const targetLists = new WeakMap<readonly Delivery[], AppendTarget[]>();
    const targetsOf = (deliveries: readonly Delivery[]): AppendTarget[] => {
      let targets = targetLists.get(deliveries);
      if (!targets) {
        targets = deliveries.map((d) => ({ endpoint: d.endpoint.id, priority: d.priority, ttlSecs: d.ttlSecs }));
        targetLists.set(deliveries, targets);
      }
      return targets;
    };
    /**
     * Where one message goes: an entry to store, the storing of its first copy to wait for (a
     * device's resend), or undefined (it goes nowhere). `via` names the connection it came on.
     * A child gateway's resends were taken out before (the engine's appendOnce).
     */
    const routeOne = (auth: AuthResult, message: Message, origin?: ForwardedOrigin, via?: string): AppendEntry | Promise<unknown> | undefined => {
      // Taken by the parent already, passed on as it came: nothing more to do.
      if (origin && direct?.isPassed(origin)) return undefined;
      const stored = storedMessageOf(auth, message);
      // A device sending again what is stored already, its acknowledgement lost (store/resend-window.ts).
      let resend: ResendKey | undefined;
      if (!origin && via !== undefined && message.messageId) {
        resend = { sender: stored.sender, messageId: message.messageId, via, print: contentPrint(message) };
        const original = store.resendOriginal(resend);
        if (original) {
          metrics.resends.inc();
          return original;
        }
      }
      const deliveries = routes.table.match(stored);
      if (deliveries.length === 0) notForwarded(stored.sender);
      // Going nowhere, a forwarded message still has its origin recorded: its stream stays unbroken.
      if (deliveries.length === 0 && !origin) return undefined;
      const entry: AppendEntry = { message: stored, targets: targetsOf(deliveries) };
      if (origin) entry.origin = origin;
      if (resend) entry.resend = resend;
      return entry;
    };
    const runId = randomUUID().slice(0, 8);
    let requests = 0;
    // A child gateway's batch is stored in one commit and answered once.
    const storeItems = (items: readonly TelemetryItem[]): Promise<void> => {
      const entries: AppendEntry[] = [];
      const waits: Array<Promise<unknown>> = [];
      // Unique across runs: after a restart every connection is a new one.
      const request = items.some((i) => i.via === undefined) ? `${runId}/r${++requests}` : undefined;
      for (const i of items) {
        const r = routeOne(i.auth, i.message, i.origin, i.via === undefined ? request : `${runId}/${i.via}`);
        if (r === undefined) continue;
        if (r instanceof Promise) waits.push(r);
        else entries.push(r);
      }
      if (entries.length > 0) waits.push(entries.length === 1 ? store.append(entries[0]!) : store.appendAll(entries));
      if (waits.length === 0) return Promise.resolve();
      return (waits.length === 1 ? waits[0]! : Promise.all(waits)).then(() => undefined, storeError);
    };
    // ... unless it can go to the parent as it came (edge/direct-forward.ts).
    const direct = link.direct && new DirectForwarder({
      direct: link.direct,
      store,
      upstreamOnly: (auth, message) => {
        const deliveries = routes.table.match(storedMessageOf(auth, message));
        return deliveries.length === 1 && deliveries[0]!.endpoint.id === '$upstream';
      },
      storeBatch: (items) => appendOnce(sink, items).then(() => undefined),
      passed: (n) => {
        metrics.passedOn.inc(n);
        metrics.sent.inc({ endpoint: '$upstream' }, n);
      },
      log,
    });
    // The engine's sink over the store: its failures reach senders as EngineErrors (storeError),
    // those of the first copy a resend waits for included.
    const sink: TelemetrySink = {
      offer: (items, batch) => {
        metrics.received.inc(items.length);
        return batch && direct?.forward(items, batch);
      },
      append: storeItems,
      whenDurable: () => store.whenDurable().catch(storeError),
      isForwardedStored: (origin) => store.isForwardedStored(origin),
      forwardedInFlight: (origin) => store.forwardedInFlight(origin)?.catch(storeError),
      storeFull: () => store.storeFull(),
    };

    const authorize: AuthorizeHook = async (identity, { live }) => {
      let c = scope.check(identity.deviceId, identity.moduleId);
      if (!c.ok && c.reason === 'not-found' && !live) {
        // Created a moment ago, before the scope feed told us: ask the parent once.
        try {
          await sync.onDemand(identity.deviceId, identity.moduleId);
        } catch (err) {
          log.debug({ err: (err as Error).message }, 'on-demand identity lookup failed; going by the cache');
        }
        c = scope.check(identity.deviceId, identity.moduleId);
      }
      return c.ok ? undefined : c.message;
    };

    const moduleEndpoints = new Map<string, ModuleInputEndpoint>();
    const extraHostNames = [hostname];
    const engine = new Engine({
      registry,
      extraTrustedCas: () => trustedCas,
      dataDir,
      hostName: hubHostName,
      extraHostNames,
      telemetrySink: sink,
      maxConnectedClients: maxClients.value,
      authorize,
      onSubscriptionChange: (identity, kind, subscribed) => {
        registry.subscriptionChanged(identity, kind, subscribed);
        if (kind === 'inputs' && identity.deviceId === deviceId) for (const ep of moduleEndpoints.values()) if (ep.moduleId === identity.moduleId) ep.poke();
      },
    });
    await engine.start();
    closers.push(() => engine.close());

    registry.setRelay({
      method: (identity, req, respond) => relayMethod(engine, identity, req, respond),
      c2d: (target, delivery, settle) => relayC2D(engine, target, delivery, settle),
      desired: (identity, patch) => engine.deliverDesired(identity, patch),
    });

    const metrics = new GatewayMetrics(
      {
        connectedClients: () => engine.connectedCount(),
        maxConnectedClients: () => engine.maxConnectedClients,
        endpoints: () => store.endpoints().map((e) => {
          const m = store.metrics(e);
          return { endpoint: e, queueLength: m.queueLength, expired: m.expired, setAside: store.setAsideCount(e) };
        }),
        upstreamConnected: () => link.connected,
      },
      { edge_device: deviceId },
    );

    const pumps = new Map<string, EndpointPump>();
    const counted = (ep: DeliveryEndpoint): DeliveryEndpoint => countedEndpoint(ep, (n) => metrics.sent.inc({ endpoint: ep.name }, n));
    const ensurePump = (name: string) => {
      if (pumps.has(name)) return;
      let ep: DeliveryEndpoint;
      if (name === '$upstream') ep = link.telemetryEndpoint();
      else {
        const m = /^\/modules\/([^/]+)\/inputs\/([^/]+)$/.exec(name);
        if (!m) {
          log.error({ endpoint: name }, 'the store holds messages for an endpoint this gateway cannot deliver to; they stay stored');
          return;
        }
        const mep = new ModuleInputEndpoint(engine, deviceId, m[1]!, m[2]!);
        moduleEndpoints.set(name, mep);
        ep = mep;
      }
      const pump = new EndpointPump(store, counted(ep));
      pumps.set(name, pump);
      pump.start();
    };
    const pumpsFor = (table: RouteTable) => table.endpoints().forEach((e) => ensurePump(e.id));
    // Leftovers of earlier runs drain too, whatever the routes say now.
    for (const e of store.endpoints()) ensurePump(e);
    pumpsFor(routes.table);
    routes.on('changed', pumpsFor);
    closers.push(async () => {
      await Promise.all([...pumps.values()].map((p) => p.stop()));
    });

    // ---- listeners: MQTT 8883, AMQP 5671, HTTPS 443 (health, MQTT and AMQP over WebSockets) ----
    const ports = { mqtt: o.ports?.mqtt ?? 8883, amqp: o.ports?.amqp ?? 5671, https: o.ports?.https ?? 443, metrics: o.ports?.metrics ?? numberSetting(config.settings.metrics_port) ?? DEFAULT_METRICS_PORT };
    const tlsNow = security.tlsOptions();
    const preAuth = preAuthGateOf(config);

    // A parent gateway answers its child gateways as the hub would: identities and on-behalf-of
    // claims come from this gateway's scope cache, and what it does not know is asked further up.
    const childScope = scope.identitySource({ hostNames: [hubHostName, ...extraHostNames], fetchUpstream: (target, chain) => sync.fetchUpstream(target, chain), trustedCas: () => trustedCas });
    let mqtt;
    try {
      mqtt = await startMqttListener({ engine, host: bind, port: ports.mqtt, certPem: tlsNow.cert, keyPem: tlsNow.key, onBehalfOf: childScope, preAuth });
    } catch (err) {
      throw listenError(err, 'MQTT', bind, ports.mqtt);
    }
    closers.push(() => mqtt.close());
    security.attach(mqtt.server);
    ports.mqtt = mqtt.port;

    const amqp = new AmqpHead({ engine, hostName: hubHostName, extraHostNames, policy: () => undefined, onBehalfOf: childScope, preAuth });
    closers.push(() => amqp.close());
    const amqpServer = tls.createServer({ ...tlsNow, requestCert: true, rejectUnauthorized: false, ALPNProtocols: ['amqp'], ...GATED_TLS_OPTIONS });
    amqpServer.on('secureConnection', (socket: TLSSocket) => {
      socket.setNoDelay(true);
      const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
      try {
        amqp.accept(socket, { transport: 'amqp', remote, clientCertificate: clientCertificateOf(socket), preAuth: preAuthOf(socket) });
      } catch (err) {
        log.error({ err, remote }, 'could not serve an AMQP connection');
        socket.destroy();
      }
    });
    preAuth.guardTls(amqpServer, 'AMQP');
    await listen(amqpServer, bind, ports.amqp, 'AMQP');
    amqpServer.on('error', (err) => log.error({ err }, 'AMQP listener error'));
    closers.push(() => new Promise<void>((r) => amqpServer.close(() => r())));
    security.attach(amqpServer);
    ports.amqp = (amqpServer.address() as AddressInfo).port;

    const app: FastifyInstance = Fastify({ https: { ...tlsNow, requestCert: true, rejectUnauthorized: false, ...GATED_TLS_OPTIONS }, forceCloseConnections: true, logger: false });
    closers.push(() => app.close());
    preAuth.guardHttps(app.server as HttpsServer);
    // Identities (and endpoint names, which carry module ids) only for the holder of the token (health-access.ts).
    const healthSecret = healthToken(files.healthToken, (err) => log.warn({ err: err.message }, 'could not write health.token: /health lists no identities until a restart'));
    app.get('/health', async (req, reply) => {
      const queues = Object.fromEntries(store.endpoints().map((e) => [e, store.queueLength(e)]));
      // "store full": telemetry is refused until space is freed (or the queues drain).
      const storeFull = store.storeFull();
      if (storeFull) reply.code(503);
      const open = {
        status: storeFull ? 'store full' : 'ok',
        ...(storeFull ? { storeFull } : {}),
        hostname: security.currentHostname,
        upstream: { parent: link.describeParent(), connected: link.connected },
        scopeSync: sync.state,
        connectedClients: engine.connectedCount(),
        maxConnectedClients: engine.maxConnectedClients,
        routes: routes.table.routes.length,
        queued: Object.values(queues).reduce((a, b) => a + b, 0),
        serverCertificate: { notAfter: security.identity.notAfter.toISOString(), fingerprint: security.identity.fingerprint },
      };
      if (!presentsHealthToken(req.headers.authorization, healthSecret)) return open;
      return { ...open, deviceId, connected: engine.connectedIdentities(), modules: scope.listModules(deviceId).map((m) => m.moduleId), queues };
    });
    await app.register(scopeApi, { source: childScope, log: childLog('scope-api') });
    // A child edge device provisioned with a certificate reads its $edgeHub key here (own-modules.ts).
    const readOwnModule = ownModuleReader(childScope, { fetchUpstream: (d, m) => sync.fetchUpstream({ deviceId: d, moduleId: m }, [identityKey(d, m), d]) });
    await app.register(async (scoped) => {
      const apiLog = childLog('registry-api');
      scoped.setErrorHandler((err, req, reply) => sendError(reply, req, apiLog, err));
      scoped.get('/devices/:id/modules/:mid', (req) => {
        const { id, mid } = req.params as { id: string; mid: string };
        return readOwnModule(req, id, mid);
      });
    });
    const https = app.server as HttpsServer;
    const mqttWs = attachMqttWebSocket(https, engine, undefined, childScope, preAuth);
    closers.push(() => mqttWs.close());
    webSocketDispatcher(https).register(AMQP_WS_SUBPROTOCOL, (stream, req) => {
      const remote = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
      amqp.accept(stream, { transport: 'amqp-ws', remote, clientCertificate: clientCertificateOf(req.socket), preAuth: preAuthOf(req.socket) });
    });
    try {
      await app.listen({ port: ports.https, host: bind });
    } catch (err) {
      throw listenError(err, 'HTTPS', bind, ports.https);
    }
    security.attach(https);
    ports.https = (https.address() as AddressInfo).port;

    if (!isLoopback(metricsBind)) print(`warning: metrics are served without authentication on ${metricsBind} ([strata] metrics_bind)`);
    let metricsServer;
    try {
      metricsServer = await serveMetrics(metrics, metricsBind, ports.metrics);
    } catch (err) {
      throw listenError(err, 'metrics', metricsBind, ports.metrics);
    }
    closers.push(() => metricsServer.close());
    ports.metrics = metricsServer.port;

    // ---- upstream: scope sync, the link, the $edgeHub twin (routes) ----
    sync.start();
    closers.push(() => sync.stop());
    closers.push(() => link.close());
    link.on('up', () => log.info({ parent: link.describeParent() }, 'upstream link up'));
    link.on('refused', (err: Error) => print(`error: ${err.message}`));
    if (prov.authentication?.method === 'x509') {
      // The $edgeHub key may have changed at the parent (keys regenerated): read it again, at most every KEY_REREAD_MS.
      let current = edgeKey;
      let readAt = 0;
      link.on('refused', () => {
        if (Date.now() - readAt < KEY_REREAD_MS) return;
        readAt = Date.now();
        readEdgeHubKey(keySource).then(
          (key) => {
            if (key === current) return;
            current = key;
            link.setEdgeKey(key);
            sync.setEdgeKey(key);
            log.warn(`the ${EDGE_HUB} key of ${deviceId} changed at the parent; signing with the new one`);
          },
          (err: Error) => log.warn({ err: err.message }, `could not read the ${EDGE_HUB} key again after a refusal`),
        );
      });
    }
    const startLink = link.start().catch((err: unknown) => {
      print(`error: the parent refused this gateway: ${(err as Error).message} (still retrying)`);
    });
    const edgeHubChannel = link.openIdentity({ deviceId, moduleId: EDGE_HUB, authChain: scope.authChainOf(deviceId, EDGE_HUB) ?? `${deviceId}/${EDGE_HUB};${deviceId}` });
    const firstRoutes = routes.follow(edgeHubChannel, link);
    // Not awaited past a short while: a gateway starts (and serves devices) with its parent offline.
    const shortly = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());
    await Promise.race([startLink, shortly(3000)]);
    if (link.connected) await Promise.race([firstRoutes, shortly(3000)]);

    let currentLoaded = loaded;
    const maxSource = { value: maxClients.source };
    const describeTrust = () => (security.usingQuickstartCa ? `the quickstart Edge CA ${security.quickstartCaPath}` : `the root of trust_bundle_cert ${config.trustBundleCert}`);
    const summary = (): string[] => {
      const h = security.currentHostname;
      const caSubject = new X509Certificate(security.edgeCaPem).subject.replace(/\n/g, ', ');
      return [
        `strata edge gateway ${deviceId} is running (data: ${dataDir}, listening on ${bind})`,
        `  hostname                 ${h} (server certificate CN; SAN ${isIP(h) ? 'IP' : 'DNS'}:${h}, DNS:edgehub; valid until ${security.identity.notAfter.toISOString()})`,
        `  MQTT (TLS)               mqtts://${h}${portText(ports.mqtt, 8883) || ':8883'}`,
        `  AMQP (TLS)               amqps://${h}${portText(ports.amqp, 5671) || ':5671'}`,
        `  HTTPS                    https://${h}${portText(ports.https, 443)}/health`,
        `  MQTT/AMQP over WebSockets wss://${h}${portText(ports.https, 443)}/$iothub/websocket`,
        `  metrics                  http://${metricsBind.includes(':') ? `[${metricsBind}]` : metricsBind}:${ports.metrics}/metrics`,
        `  Edge CA                  ${security.usingQuickstartCa ? `quickstart (self-signed, ${security.quickstartCaPath})` : `${caSubject} (${config.edgeCa?.cert})`}`,
        `  devices must trust       ${describeTrust()}`,
        `  trusts upstream          ${config.trustBundleCert}`,
        `  upstream                 ${link.describeParent()} (${config.parentHostname ? `parent gateway ${config.parentHostname}` : `IoT hub ${hubHostName}`}): ${link.connected ? 'connected' : 'not connected yet (devices are served offline; messages are stored)'}`,
        `  MaxConnectedClients      ${engine.maxConnectedClients} (${maxSource.value})`,
        `  routes                   ${routes.usingDefault ? `the default route until a deployment is read (${DEFAULT_ROUTE.route}); ${routes.howToConfigure}` : routes.configured ? routes.table.routes.map((r) => r.name).join(', ') : `none in the deployment: messages are not forwarded; ${routes.howToConfigure}`}`,
      ];
    };

    const reload = async (configPath?: string, requestId?: string): Promise<ReloadStatus> => {
      const path = configPath ?? readAppliedConfig(dataDir)?.configPath ?? currentLoaded.path;
      const status: ReloadStatus = { requestId, ok: false, changes: [], errors: [], at: new Date().toISOString() };
      let next: LoadedConfig;
      try {
        next = loadEdgeConfigFile(path, { provisioning: true });
      } catch (err) {
        status.errors = (err as Error).message.split('\n');
        log.error({ config: path, errors: status.errors }, 'configuration not applied: it has errors; the running configuration stays');
        writeReloadStatus(dataDir, status);
        return status;
      }
      const c = next.config;
      const restartFor: string[] = [];
      if (c.provisioning?.deviceId !== deviceId) restartFor.push('the edge device id');
      if (c.provisioning?.iothubHostname !== hubHostName) restartFor.push('the IoT hub host name');
      if ((c.parentHostname ?? hubHostName) !== parentHost) restartFor.push('parent_hostname');
      if (JSON.stringify(c.provisioning?.authentication) !== startedCredentials) restartFor.push("the edge device's credentials");
      try {
        if (upstreamTransport(c, env) !== transport) restartFor.push('UpstreamProtocol');
      } catch (err) {
        status.errors.push((err as Error).message);
      }
      for (const k of START_ONLY_SETTINGS) {
        if (JSON.stringify(c.settings[k]) !== JSON.stringify(config.settings[k])) restartFor.push(`[strata] ${k}`);
      }
      if (restartFor.length > 0) status.changes.push(`needs a restart to take effect: ${restartFor.join(', ')}`);
      try {
        const oldHost = security.currentHostname;
        if (await security.update({ hostname: c.hostname, edgeCa: next.files.edgeCa })) {
          if (c.hostname !== oldHost) {
            extraHostNames.splice(0, extraHostNames.length, c.hostname);
            status.changes.push(`hostname ${oldHost} -> ${c.hostname}`);
          }
          status.changes.push(`server certificate re-issued (CN ${c.hostname}, valid until ${security.identity.notAfter.toISOString()}) and swapped in on every listener`);
        }
        const max = maxClientsSetting(c, env);
        if (max.value !== engine.maxConnectedClients) {
          const before = engine.maxConnectedClients;
          const closed = engine.setMaxConnectedClients(max.value);
          status.changes.push(`MaxConnectedClients ${before} -> ${max.value}${closed > 0 ? ` (closed ${closed} connection(s) over the new limit)` : ''}`);
        }
        maxSource.value = max.source;
      } catch (err) {
        status.errors.push((err as Error).message);
        writeReloadStatus(dataDir, status);
        log.error({ err: (err as Error).message }, 'applying the configuration failed');
        return status;
      }
      currentLoaded = next;
      config = c;
      status.ok = true;
      if (status.changes.length === 0) status.changes.push('nothing changed');
      log.info({ config: path, changes: status.changes }, 'configuration applied');
      writeReloadStatus(dataDir, status);
      return status;
    };

    const node: GatewayNode = {
      deviceId,
      dataDir,
      bind,
      ports,
      engine,
      store,
      scope,
      link,
      security,
      metrics,
      routes,
      hostname: () => security.currentHostname,
      config: () => config,
      reload,
      summary,
      close: runClosers,
    };
    writeGatewayState(dataDir, {
      deviceId,
      hostname,
      bind,
      metricsBind,
      ports: { ...ports },
      configPath: loaded.path,
      upstream: link.describeParent(),
      pid: process.pid,
      startedAt: new Date().toISOString(),
    });
    loaded = undefined as never;
    log.info({ deviceId, hostname, bind, ports, dataDir, upstream: link.describeParent() }, 'gateway started');
    return node;
  } catch (err) {
    await runClosers();
    throw startFailure(err, dataDir, 'gateway');
  }
}

/** [strata] settings read once at start (listeners, stores): `config apply` names them as needing a restart. */
const START_ONLY_SETTINGS: readonly string[] = [
  'metrics_bind',
  'metrics_port',
  'disk_reserve_mb',
  'resend_window_secs',
  ...Object.values(PRE_AUTH_SETTINGS).map((s) => s.setting),
];

/** Where Prometheus metrics listen by default: this machine only. */
export const DEFAULT_METRICS_BIND = '127.0.0.1';

function metricsBindSetting(v: unknown): string {
  if (v === undefined) return DEFAULT_METRICS_BIND;
  if (typeof v !== 'string' || isIP(v) === 0) {
    throw new UserError(`[strata] metrics_bind must be an IP address to serve metrics on, got ${JSON.stringify(v)}`, `Leave it out for ${DEFAULT_METRICS_BIND} (this machine only), or give the address a Prometheus server reaches`);
  }
  return v;
}

function isLoopback(address: string): boolean {
  return address.startsWith('127.') || address === '::1' || address === '::ffff:127.0.0.1';
}

/** Limits on unauthenticated clients from [strata] (tls_handshake_timeout_secs, max_unauthenticated, ...). */
function preAuthGateOf(config: EdgeConfig): PreAuthGate {
  try {
    return new PreAuthGate(preAuthLimitsFrom((k) => config.settings[k], (k) => `[strata] ${k}`));
  } catch (err) {
    throw new UserError((err as Error).message, 'Timeouts are seconds (e.g. 10 or 0.5); caps are whole numbers of connections');
  }
}

/** [strata] disk_reserve_mb, else the environment variable STRATA_DISK_RESERVE_MB, else the default. */
function diskReserveSetting(config: EdgeConfig, env: NodeJS.ProcessEnv): { bytes: number; name: string } {
  const name = '[strata] disk_reserve_mb';
  try {
    if (config.settings.disk_reserve_mb !== undefined) return { bytes: reserveBytesOf(config.settings.disk_reserve_mb, name), name };
    const raw = env.STRATA_DISK_RESERVE_MB;
    if (raw !== undefined && raw.trim() !== '') return { bytes: reserveBytesOf(raw, 'the environment variable STRATA_DISK_RESERVE_MB'), name };
  } catch (err) {
    throw new UserError((err as Error).message, 'Set it to a number of MiB, e.g. 64 (the default)');
  }
  return { bytes: DEFAULT_DISK_RESERVE_BYTES, name };
}

function numberSetting(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 65535) throw new UserError(`[strata] metrics_port must be a port number, got ${JSON.stringify(v)}`);
  return v;
}

function listen(server: tls.Server, host: string, port: number, what: string): Promise<void> {
  return new Promise<void>((resolvePromise, reject) => {
    server.once('error', (err) => reject(listenError(err, what, host, port)));
    server.listen(port, host, () => resolvePromise());
  });
}

/** A direct method from upstream, to the connected device, and its answer back. */
function relayMethod(engine: Engine, identity: IdentityRef, req: { methodName: string; payload: Buffer }, respond: (status: number, payload: Buffer) => void): void {
  let payload: unknown = null;
  if (req.payload.length > 0) {
    const text = req.payload.toString('utf8');
    try {
      payload = JSON.parse(text);
    } catch {
      payload = text;
    }
  }
  engine.invokeMethod(identity, { methodName: req.methodName, payload, responseTimeoutInSeconds: RELAYED_METHOD_TIMEOUT_S }).then(
    (r) => respond(r.status, Buffer.from(JSON.stringify(r.payload ?? null))),
    // Every refusal keeps its own status (the same table the device heads use), not just three.
    (err: unknown) => respond(httpStatusOf(err), Buffer.from(JSON.stringify({ message: (err as Error).message }))),
  );
}

/** A C2D message from upstream, to the connected device; its settlement goes back upstream. */
function relayC2D(engine: Engine, deviceId: string, delivery: UpstreamC2DDelivery, settle: (outcome: 'complete' | 'reject' | 'abandon') => void): void {
  const message = { ...delivery.message, properties: { ...delivery.message.properties } };
  const rawAck = message.properties['iothub-ack'];
  delete message.properties['iothub-ack'];
  const ack = rawAck === 'positive' || rawAck === 'negative' || rawAck === 'full' ? rawAck : 'none';
  const handed = engine.relayC2D(deviceId, { message, ack, deliveryCount: delivery.deliveryCount }, settle);
  if (!handed) settle('abandon');
}
