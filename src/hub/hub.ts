import type { Server as HttpsServer } from 'node:https';
import { mkdirSync } from 'node:fs';
import { isIP, type AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import type { EventStreamReader } from '../model/events.ts';
import { generateDefaultPolicies } from '../identity/policies.ts';
import { ConsumerGroups } from '../store/consumer-groups.ts';
import { openNodeDb, type NodeDb } from '../store/db.ts';
import { startFailure } from '../store/disk-headroom.ts';
import { SqliteRegistryStore } from '../store/registry-store.ts';
import { Engine } from '../engine/engine.ts';
import { deviceApi } from '../protocols/http/device-api.ts';
import { GATED_TLS_OPTIONS, PreAuthGate, type PreAuthLimits } from '../protocols/pre-auth.ts';
import { eventStreamSink, openEventStream } from './events.ts';
import { startDeviceListeners, startEventHubsEndpoint, type HeadSite } from './heads.ts';
import { hubFiles, releaseHubLock, takeHubLock, writeHubState } from './local.ts';
import { ownModuleReader, type OwnModuleReader } from '../scope/own-modules.ts';
import { Registry } from './registry.ts';
import { registryIdentitySource, registryModuleBackend, scopeApi, type IdentitySource } from './scope-api.ts';
import { serviceApi } from './service-api.ts';
import { sendError } from '../protocols/http/rest-errors.ts';
import { serviceMessaging } from './service-messaging.ts';
import { loadHubTls } from './tls.ts';
import { listenError } from '../protocols/listeners.ts';
import { warmUpMessagePath } from '../protocols/warm-up.ts';
import { warmUpAtStart } from '../util/warm-up.ts';

const log = childLog('hub');

export interface HubOptions {
  dataDir: string;
  /** The name clients dial and tokens name; the server certificate is issued for it. */
  hostname?: string;
  /** Address to listen on. Default: the host name when it is an IP address, else 127.0.0.1. */
  bind?: string;
  /** 443 by default (the service SDK always dials 443); 0 picks a free port. */
  httpsPort?: number;
  mqttPort?: number;
  amqpPort?: number;
  /** Event stream partitions, fixed when the stream is first created (default 4); issue 6. */
  partitions?: number;
  /** Use these instead of the hub's own PKI: server certificate (full chain), its key, and the CA clients trust. */
  tlsCert?: string;
  tlsKey?: string;
  trust?: string;
  /** Limits on clients before they authenticate (timeouts, caps); defaults in protocols/pre-auth.ts. */
  limits?: Partial<PreAuthLimits>;
  /** Free disk space kept for checkpoints; telemetry is refused below it (default 64 MiB, or env STRATA_DISK_RESERVE_MB). */
  diskReserveBytes?: number;
  /** Offer gateways below Strata's relay and presence links (default true); false answers as IoT Hub. */
  strataLinks?: boolean;
}

export interface HubNode extends HeadSite {
  registry: Registry;
  db: NodeDb;
  dataDir: string;
  app: FastifyInstance;
  tls: { certPem: string; keyPem: string; caPem: string };
  caPath: string;
  /** The device engine; its telemetry goes to the event stream. */
  engine: Engine;
  /** The event stream's read side (the service API, the Event Hubs endpoint and the CLI read it). */
  events: EventStreamReader;
  close(): Promise<void>;
}

function defaultBind(hostname: string): string {
  return isIP(hostname) ? hostname : '127.0.0.1';
}

/**
 * Starts a hub: the registry over DIR/hub.db, its TLS identity, the HTTPS service API, the device
 * engine with the event stream as its sink, and the protocol heads. The hub's one composition
 * root: every part is built here and handed to those that use it.
 */
export async function startHub(opts: HubOptions): Promise<HubNode> {
  const dataDir = resolve(opts.dataDir);
  const hostname = (opts.hostname ?? 'localhost').trim();
  if (!hostname)
    throw new UserError('the host name is empty', 'Pass --hostname NAME (a DNS name or IP address clients dial)');
  const bind = opts.bind ?? defaultBind(hostname);
  mkdirSync(dataDir, { recursive: true });
  try {
    takeHubLock(dataDir);
  } catch (err) {
    throw startFailure(err, dataDir, 'hub');
  }

  const closers: Array<() => Promise<void> | void> = [() => releaseHubLock(dataDir)];
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
    const db = openNodeDb(hubFiles(dataDir).db);
    closers.push(() => db.close());
    const store = new SqliteRegistryStore(db);
    if (store.listPolicies().length === 0) {
      store.transaction(() => generateDefaultPolicies().forEach((p) => store.putPolicy(p)));
      log.info('created the shared access policies iothubowner, service, device, registryRead, registryReadWrite');
    }
    const registry = new Registry(store, { hostname });
    const tls = await loadHubTls({ dataDir, hostname, tlsCert: opts.tlsCert, tlsKey: opts.tlsKey, trust: opts.trust });

    const app = Fastify({
      // X.509 devices present client certificates from CAs the TLS layer does not know; the
      // device API checks them itself, so the handshake asks for one but never fails on it.
      https: { cert: tls.certPem, key: tls.keyPem, requestCert: true, rejectUnauthorized: false, ...GATED_TLS_OPTIONS },
      routerOptions: { maxParamLength: 1024 },
      forceCloseConnections: true,
      logger: false,
    });
    closers.push(() => app.close());
    const preAuth = new PreAuthGate(opts.limits);
    preAuth.guardHttps(app.server as HttpsServer);
    const apiLog = childLog('service-api');
    app.setErrorHandler((err, req, reply) => sendError(reply, req, apiLog, err));
    app.setNotFoundHandler((req, reply) =>
      reply
        .code(404)
        .header('content-type', 'application/json; charset=utf-8')
        .send({
          Message: `ErrorCode:NotFound;no such resource: ${req.method} ${req.url.split('?')[0]!.replace(/;/g, ',')}`,
        }),
    );
    // An edge device reading its own modules with its own credential (own-modules.ts); no request
    // comes before the listener opens, when the identity source below is there.
    let identities: IdentitySource | undefined;
    let readOwnModule: OwnModuleReader | undefined;
    const ownModules: OwnModuleReader = (req, d, m) => (readOwnModule ??= ownModuleReader(identities!))(req, d, m);
    await app.register(serviceApi, { registry, log: apiLog, ownModules });

    // The device engine, its telemetry going to the event stream.
    const events = openEventStream(dataDir, { partitions: opts.partitions, diskReserveBytes: opts.diskReserveBytes });
    closers.push(() => events.close());
    const engine = new Engine({ registry, dataDir, hostName: hostname, telemetrySink: eventStreamSink(events) });
    await engine.start();
    closers.push(() => engine.close());
    registry.cloudToDeviceCount = (deviceId: string, moduleId?: string) => {
      try {
        return engine.c2d.depth(deviceId, moduleId ?? '');
      } catch {
        return 0;
      }
    };
    app.get('/health', async (_req, reply) => {
      // "store full": the event stream refuses telemetry until space is freed on its disk.
      const storeFull = engine.storeFull();
      if (storeFull) return reply.code(503).send({ status: 'store full', hostname, storeFull });
      return { status: 'ok', hostname };
    });
    // The registry as the scope API and the heads' on-behalf-of checks see it, with the CAs
    // registered with the engine: one for the hub, so one lookup memo.
    identities = registryIdentitySource(registry, {
      trustedCas: () => {
        try {
          return engine.trustedCas.certificates();
        } catch {
          return [];
        }
      },
    });

    const node: HubNode = {
      registry,
      db,
      hostname,
      bind,
      dataDir,
      https: app.server as HttpsServer,
      app,
      tls: { certPem: tls.certPem, keyPem: tls.keyPem, caPem: tls.caPem },
      caPath: tls.caPath,
      engine,
      events,
      preAuth,
      strataLinks: opts.strataLinks,
      ports: { https: opts.httpsPort ?? 443, mqtt: opts.mqttPort ?? 8883, amqp: opts.amqpPort ?? 5671 },
      listeners: [],
      onClose: (fn) => void closers.push(fn),
      close: async () => runClosers(),
    };

    // Before the first gateway or device can send: its first messages would otherwise run cold code.
    await warmUpAtStart('message path', process.env, () => warmUpMessagePath());
    // The heads bind before the HTTPS listener opens (the WebSocket transports ride on it).
    const amqp = await startDeviceListeners(node, engine, (name) => registry.getPolicy(name), identities);
    await app.register(deviceApi, { engine, sendError });
    await app.register(serviceMessaging, { engine, events, registry, onClose: node.onClose });
    const groups = new ConsumerGroups(db);
    startEventHubsEndpoint(node, amqp, events, (name) => groups.get(name)?.name);
    // Edge gateways: scope listing, on-behalf-of lookups, live change feed, module identities.
    await app.register(scopeApi, {
      source: identities,
      modules: registryModuleBackend(registry),
      log: childLog('scope-api'),
    });

    try {
      await app.listen({ port: node.ports.https, host: bind });
    } catch (err) {
      throw listenError(err, 'HTTPS', bind, node.ports.https);
    }
    node.ports.https = (app.server.address() as AddressInfo).port;
    node.listeners.unshift({
      name: 'HTTPS (service API)',
      url: `https://${hostname}${node.ports.https === 443 ? '' : `:${node.ports.https}`}`,
    });

    writeHubState(dataDir, {
      hostname,
      bind,
      ports: { ...node.ports },
      caPath: tls.caPath,
      pid: process.pid,
      startedAt: new Date().toISOString(),
    });
    log.info({ hostname, bind, ports: node.ports, dataDir }, 'hub started');
    return node;
  } catch (err) {
    await runClosers();
    throw startFailure(err, dataDir, 'hub');
  }
}
