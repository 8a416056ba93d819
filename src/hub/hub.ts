import type { Server as HttpsServer } from 'node:https';
import { mkdirSync } from 'node:fs';
import { isIP, type AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { generateDefaultPolicies } from '../identity/policies.ts';
import { openNodeDb, type NodeDb } from '../store/db.ts';
import { SqliteRegistryStore } from '../store/registry-store.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import { hubFiles, releaseHubLock, takeHubLock, writeHubState } from './local.ts';
import { Registry } from './registry.ts';
import { sendError, serviceApi } from './service-api.ts';
import { loadHubTls } from './tls.ts';
import { attachDeviceEngine, engineOf } from '../engine/hub-attach.ts';
import { startFailure } from '../store/disk-headroom.ts';
import { attachMessaging } from './service-messaging.ts';
import { attachAmqp } from '../protocols/amqp/index.ts';
import { attachScopeApi, hubIdentitySource } from './scope-api.ts';
import { ownModuleReader, type OwnModuleReader } from './own-modules.ts';
import { GATED_TLS_OPTIONS, PreAuthGate, type PreAuthLimits } from '../protocols/pre-auth.ts';

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
  /** Run after the service API is registered and before the listener opens (device API routes, protocol heads). */
  plugins?: Array<(node: HubNode) => Promise<void>>;
  /** Free disk space kept for checkpoints; telemetry is refused below it (default 64 MiB, or env STRATA_DISK_RESERVE_MB). */
  diskReserveBytes?: number;
}

export interface HubNode {
  registry: Registry;
  db: NodeDb;
  hostname: string;
  bind: string;
  dataDir: string;
  https: HttpsServer;
  app: FastifyInstance;
  tls: { certPem: string; keyPem: string; caPem: string };
  caPath: string;
  /** Timeouts and caps for unauthenticated connections, shared by every listener of the hub. */
  preAuth: PreAuthGate;
  /** Actual ports once listening (the MQTT/AMQP heads update theirs when they bind). */
  ports: { https: number; mqtt: number; amqp: number };
  /** What start-up prints: one line per listener. */
  listeners: Array<{ name: string; url: string }>;
  /** Registers cleanup run by close(), most recent first. */
  onClose(fn: () => Promise<void> | void): void;
  close(): Promise<void>;
}

function defaultBind(hostname: string): string {
  return isIP(hostname) ? hostname : '127.0.0.1';
}

/** Starts a hub: the registry over DIR/hub.db, its TLS identity, and the HTTPS service API. */
export async function startHub(opts: HubOptions): Promise<HubNode> {
  const dataDir = resolve(opts.dataDir);
  const hostname = (opts.hostname ?? 'localhost').trim();
  if (!hostname) throw new UserError('the host name is empty', 'Pass --hostname NAME (a DNS name or IP address clients dial)');
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
        .send({ Message: `ErrorCode:NotFound;no such resource: ${req.method} ${req.url.split('?')[0]!.replace(/;/g, ',')}` }),
    );
    app.get('/health', async (_req, reply) => {
      // "store full": the event stream refuses telemetry until space is freed on its disk.
      const storeFull = engineOf(node)?.storeFull();
      if (storeFull) return reply.code(503).send({ status: 'store full', hostname, storeFull });
      return { status: 'ok', hostname };
    });
    // An edge device reading its own modules with its own credential (own-modules.ts).
    let readOwnModule: OwnModuleReader | undefined;
    const ownModules: OwnModuleReader = (req, d, m) => (readOwnModule ??= ownModuleReader(hubIdentitySource(node)))(req, d, m);
    await app.register(serviceApi, { registry, log: apiLog, ownModules });

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
      preAuth,
      ports: { https: opts.httpsPort ?? 443, mqtt: opts.mqttPort ?? 8883, amqp: opts.amqpPort ?? 5671 },
      listeners: [],
      onClose: (fn) => void closers.push(fn),
      close: async () => runClosers(),
    };

    for (const plugin of opts.plugins ?? []) await plugin(node);

    // ---- protocol heads are attached here ----
    // The MQTT (node.ports.mqtt) and AMQP (node.ports.amqp) listeners and the WebSocket upgrade
    // on node.https (`/$iothub/websocket`) bind here, before the HTTPS listener opens, each
    // pushing its entry to node.listeners, updating node.ports and registering its close.
    await attachDeviceEngine(node, { partitions: opts.partitions, diskReserveBytes: opts.diskReserveBytes }); // device engine + MQTT over TLS and WebSockets (engineOf(node) gives it)
    await attachMessaging(node); // HTTPS device API + service side: methods, C2D, feedback, event stream
    await attachAmqp(node); // AMQP over TLS (node.ports.amqp) and over WebSockets (AMQPWSB10)
    await attachScopeApi(node); // scope API for edge gateways: scope listing, on-behalf-of lookups, live change feed

    try {
      await app.listen({ port: node.ports.https, host: bind });
    } catch (err) {
      throw listenError(err, 'HTTPS', bind, node.ports.https);
    }
    node.ports.https = (app.server.address() as AddressInfo).port;
    node.listeners.unshift({ name: 'HTTPS (service API)', url: `https://${hostname}${node.ports.https === 443 ? '' : `:${node.ports.https}`}` });

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

/** Turns the usual listen failures into one line that says what to do. */
export function listenError(err: unknown, what: string, host: string, port: number): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EADDRINUSE') return new UserError(`cannot listen for ${what} on ${host}:${port}: the port is in use`, 'Stop whatever holds it, or choose another port');
  if (code === 'EACCES') {
    return new UserError(
      `cannot listen for ${what} on ${host}:${port}: permission denied`,
      'Ports below 1024 need root (or CAP_NET_BIND_SERVICE); note that the azure-iothub service SDK only dials 443',
    );
  }
  if (code === 'EADDRNOTAVAIL') return new UserError(`cannot listen on ${host}: no network interface has that address`, 'Pass --bind with an address of this machine');
  return err;
}
