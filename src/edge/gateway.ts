import { X509Certificate } from 'node:crypto';
import type { EdgeAgent } from '../agent/agent.ts';
import { mkdirSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { Engine } from '../engine/engine.ts';
import type { AuthorizeHook } from '../engine/types.ts';
import { splitPemCertificates } from '../pki/index.ts';
import { ScopeCache } from '../scope/cache.ts';
import { ScopeSync } from '../scope/sync.ts';
import { startFailure } from '../store/disk-headroom.ts';
import { MessageStore } from '../store/message-store.ts';
import { warmUpMessageStore } from '../store/warm-up.ts';
import { warmUpAtStart } from '../util/warm-up.ts';
import type { ParentLink } from '../upstream/index.ts';
import { warmUpMessagePath } from '../protocols/warm-up.ts';
import { childLog } from '../util/log.ts';
import { agentEnabled, createAgentHost } from './agent-host.ts';
import type { EdgeConfig } from './config.ts';
import { edgeHubKey, readEdgeHubKey } from './edge-hub-key.ts';
import { EdgeHubRoutes } from './edgehub-routes.ts';
import { GatewayRegistry } from './gateway-registry.ts';
import { startMetricsEndpoint } from './health.ts';
import { startGatewayListeners } from './listeners.ts';
import { diagnosticLines, loadEdgeConfigFile } from './load-config.ts';
import {
  defaultEdgeDataDir,
  edgeFiles,
  releaseGatewayLock,
  takeGatewayLock,
  writeGatewayState,
  type ReloadStatus,
} from './local.ts';
import { GatewayMetrics } from './metrics.ts';
import { configReloader, type RunningConfig } from './reload.ts';
import { gatewayBlobApi } from './blob-api.ts';
import { gatewayRegistryApi } from './registry-api.ts';
import { SecurityManager } from './security-manager.ts';
import {
  DEFAULT_METRICS_PORT,
  diskReserveSetting,
  maxClientsSetting,
  metricsBindSetting,
  httpsPortSetting,
  metricsPortSetting,
  preAuthGateOf,
  resendWindowSetting,
  upstreamTransport,
} from './settings.ts';
import { gatewaySummary } from './summary.ts';
import { telemetryPath } from './telemetry-path.ts';
import { TwinCache } from './twin-cache.ts';
import { connectUpstream, createParentLink, upstreamRelays } from './parent-link.ts';

/**
 * The gateway's composition root: it reads config.toml, builds each part (README.md names them)
 * and hands each the instances it needs. The parts know nothing of one another's construction.
 */

const log = childLog('gateway');

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
  readonly link: ParentLink;
  readonly security: SecurityManager;
  readonly metrics: GatewayMetrics;
  readonly routes: EdgeHubRoutes;
  /** The edge agent, when config.toml enables it. */
  readonly agent?: EdgeAgent;
  hostname(): string;
  config(): EdgeConfig;
  /** Re-reads a config file (default: the applied one, else the one it started with) and applies what changed. */
  reload(configPath?: string, requestId?: string): Promise<ReloadStatus>;
  /** The start-up summary lines. */
  summary(): string[];
  close(): Promise<void>;
}

/**
 * Starts a gateway: the edge hub of one edge device, acting as a transparent gateway for the
 * devices below it. See the module comment of each part for the details.
 */
export async function startGateway(o: GatewayOptions): Promise<GatewayNode> {
  const print = o.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const env = o.env ?? process.env;
  const loaded = loadEdgeConfigFile(o.configPath, { provisioning: true });
  for (const line of diagnosticLines(loaded.path, loaded.diagnostics)) print(line);
  // As started: settings read once come from here; a reload changes `running` only.
  const config = loaded.config;
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
  const parentHost = config.parentHostname ?? hubHostName;
  // The parent's HTTPS port (scope API, key, /v2/, WebSocket upstream): 443 unless it runs unprivileged.
  const parentHttpsPort = httpsPortSetting(config, 'parent_https_port') ?? 443;

  const closers: Array<() => Promise<void> | void> = [() => releaseGatewayLock(dataDir)];
  const onClose = (fn: () => Promise<void> | void) => void closers.push(fn);
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
    // ---- state on disk: certificates, the scope cache, twins, the message store ----
    const security = await SecurityManager.start({ dataDir, hostname, deviceId, edgeCa: loaded.files.edgeCa });
    onClose(() => security.close());
    const scope = ScopeCache.open(files.scopeDb, { edgeDeviceId: deviceId });
    onClose(() => scope.close());
    const twins = TwinCache.open(files.gatewayDb);
    onClose(() => twins.close());
    const reserve = diskReserveSetting(config, env);
    const store = MessageStore.open({
      path: files.storeDb,
      resendWindowMs: resendWindow.value * 1000,
      diskReserveBytes: reserve.bytes,
      diskReserveSetting: reserve.name,
    });
    onClose(() => store.close());

    // ---- the parent: this gateway's key, scope sync, the link ----
    const keySource = {
      config,
      files: loaded.files,
      parent: { host: parentHost, port: parentHttpsPort, ca: trustPem },
      dataDir,
      log,
    };
    const edgeKey = await edgeHubKey({ ...keySource, print });
    const sync = new ScopeSync({
      cache: scope,
      parent: { host: parentHost, port: parentHttpsPort, ca: trustPem },
      hubHostName,
      edge: { deviceId, key: edgeKey },
    });
    const link: ParentLink = createParentLink({
      transport,
      parentHost,
      trustPem,
      hubHostName,
      deviceId,
      edgeKey,
      scope,
      originId: store.id,
      ...(transport === 'amqpws' || transport === 'mqttws' ? { port: parentHttpsPort } : {}),
    });

    const registry = new GatewayRegistry({ scope, twins, upstream: link });
    onClose(() => registry.close());
    const routes = new EdgeHubRoutes({ edgeDeviceId: deviceId, twins, lastGoodPath: files.routes });
    routes.loadCached();

    // ---- telemetry: routes -> store (acknowledged once durable) -> one pump per endpoint ----
    // The engine's gauges are read at scrape time, once the engine below exists.
    const metrics = new GatewayMetrics(
      {
        connectedClients: () => engine.connectedCount(),
        maxConnectedClients: () => engine.maxConnectedClients,
        endpoints: () =>
          store.endpoints().map((e) => {
            const m = store.metrics(e);
            return { endpoint: e, queueLength: m.queueLength, expired: m.expired, setAside: store.setAsideCount(e) };
          }),
        upstreamConnected: () => link.connected,
      },
      { edge_device: deviceId },
    );
    const telemetry = telemetryPath({ deviceId, store, routes, link, metrics });

    const extraHostNames = [hostname];
    const engine = new Engine({
      registry,
      extraTrustedCas: () => trustedCas,
      dataDir,
      hostName: hubHostName,
      extraHostNames,
      telemetrySink: telemetry.sink,
      maxConnectedClients: maxClients.value,
      authorize: scopeAuthorizer(scope, sync),
      // A leaf's upstream telemetry link is attached as it connects, off its first message's path.
      onSessionOpened: (identity) => {
        if (identity.deviceId !== deviceId) link.prepareTelemetry?.(identity);
      },
      onSubscriptionChange: (identity, kind, subscribed) => {
        registry.subscriptionChanged(identity, kind, subscribed);
        if (kind === 'inputs' && identity.deviceId === deviceId) telemetry.pokeModuleInputs(identity.moduleId);
      },
    });
    await engine.start();
    onClose(() => engine.close());
    registry.setRelay(upstreamRelays(engine));
    telemetry.startPumps(engine);
    onClose(() => telemetry.stopPumps());

    // ---- listeners: MQTT 8883, AMQP 5671, HTTPS 443 (health, MQTT and AMQP over WebSockets); metrics ----
    const ports = {
      mqtt: o.ports?.mqtt ?? 8883,
      amqp: o.ports?.amqp ?? 5671,
      https: o.ports?.https ?? httpsPortSetting(config, 'https_port') ?? 443,
      metrics: o.ports?.metrics ?? metricsPortSetting(config.settings.metrics_port) ?? DEFAULT_METRICS_PORT,
    };
    const preAuth = preAuthGateOf(config);
    const childScope = scope.identitySource({
      hostNames: [hubHostName, ...extraHostNames],
      fetchUpstream: (target, chain) => sync.fetchUpstream(target, chain),
      trustedCas: () => trustedCas,
    });
    // The registry API (/v2/) on 443: to the parent's /v2/, or at the top to [registry] upstream.
    const registryApi = gatewayRegistryApi(
      { config, dataDir, deviceId, parentHost, parentHttpsPort, hubHostName, trustPem, scope, sync, childScope },
      { edgeKey: () => edgeKey, metrics: metrics.registry, hostname: () => security.currentHostname, onClose },
    );
    // Blob uploads (/storage/) on 443: to the parent's, or at the top into [blob] dir.
    const blobApi = gatewayBlobApi(
      { config, deviceId, parentHost, parentHttpsPort, hubHostName, trustPem, scope, sync, childScope },
      { edgeKey: () => edgeKey, metrics: metrics.registry, hostname: () => security.currentHostname, onClose },
    );
    // ---- the edge agent (config.toml [agent] or [moby_runtime]): modules, $edgeAgent twin ----
    const agentParts = {
      config,
      deviceId,
      hubHostName,
      hostname,
      dataDir,
      trustPem,
      link,
      scope,
      sync,
      edgeKey: () => edgeKey,
    };
    const agentHost = agentEnabled(config) ? createAgentHost(agentParts) : undefined;
    const agent = agentHost?.agent;
    const tokenPath = files.healthToken;
    const health = { deviceId, tokenPath, engine, store, security, link, sync, routes, scope, agent };
    // Before the first device can send: its first messages would otherwise run cold code.
    await warmUpAtStart('message path', env, () => warmUpMessagePath());
    await warmUpAtStart('message store', env, () => warmUpMessageStore());
    await startGatewayListeners(
      {
        engine,
        bind,
        ports,
        security,
        preAuth,
        hubHostName,
        extraHostNames,
        childScope,
        sync,
        health,
        registryApi,
        blobApi,
      },
      onClose,
    );
    const metricsServer = await startMetricsEndpoint(metrics, metricsBind, ports.metrics, print);
    onClose(() => metricsServer.close());
    ports.metrics = metricsServer.port;

    // ---- upstream: scope sync, the link, the $edgeHub twin (routes) ----
    sync.start();
    onClose(() => sync.stop());
    onClose(() => link.close());
    const rereadKey = prov.authentication?.method === 'x509' ? () => readEdgeHubKey(keySource) : undefined;
    await connectUpstream({ link, sync, routes, scope, deviceId, edgeKey, rereadKey, print });
    if (agentHost) {
      agentHost.start();
      onClose(() => agentHost.close());
    }

    const running: RunningConfig = { loaded, config, maxClientsSource: maxClients.source };
    const started = { deviceId, hubHostName, parentHost, credentials: JSON.stringify(prov.authentication), transport };
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
      agent,
      hostname: () => security.currentHostname,
      config: () => running.config,
      reload: configReloader({ dataDir, started, env, security, engine, extraHostNames, running }),
      summary: () =>
        gatewaySummary({
          deviceId,
          dataDir,
          bind,
          metricsBind,
          ports,
          hubHostName,
          security,
          link,
          engine,
          routes,
          running,
          agent: agentHost !== undefined,
        }),
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
    log.info({ deviceId, hostname, bind, ports, dataDir, upstream: link.describeParent() }, 'gateway started');
    return node;
  } catch (err) {
    await runClosers();
    throw startFailure(err, dataDir, 'gateway');
  }
}

/** Lets in only identities of this gateway's scope, asking the parent once about one it does not know yet. */
function scopeAuthorizer(scope: ScopeCache, sync: ScopeSync): AuthorizeHook {
  return async (identity, { live }) => {
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
}
