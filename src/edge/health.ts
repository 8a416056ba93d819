import type { FastifyInstance } from 'fastify';
import type { EdgeAgent } from '../agent/agent.ts';
import type { Engine } from '../engine/engine.ts';
import { listenError } from '../protocols/listeners.ts';
import type { ScopeCache } from '../scope/cache.ts';
import type { ScopeSync } from '../scope/sync.ts';
import type { MessageStore } from '../store/message-store.ts';
import type { ParentLink } from '../upstream/index.ts';
import { childLog } from '../util/log.ts';
import type { EdgeHubRoutes } from './edgehub-routes.ts';
import { healthToken, presentsHealthToken } from './health-access.ts';
import { serveMetrics, type GatewayMetrics } from './metrics.ts';
import type { SecurityManager } from './security-manager.ts';
import { isLoopback } from './settings.ts';

/**
 * What a gateway tells about itself: `GET /health` on its HTTPS listener (the identities only to
 * the holder of health.token), and Prometheus metrics on a port of their own.
 */

const log = childLog('gateway');

/** What /health reads when asked. */
export interface HealthSources {
  deviceId: string;
  /** health.token in the data directory. */
  tokenPath: string;
  engine: Engine;
  store: MessageStore;
  security: SecurityManager;
  link: ParentLink;
  sync: ScopeSync;
  routes: EdgeHubRoutes;
  scope: ScopeCache;
  /** The edge agent, when this gateway runs one: its modules are listed too. */
  agent?: EdgeAgent;
}

export function serveHealth(app: FastifyInstance, sources: HealthSources): void {
  const { deviceId, engine, store, security, link, sync, routes, scope } = sources;
  // Identities (and endpoint names, which carry module ids) only for the holder of the token (health-access.ts).
  const healthSecret = healthToken(sources.tokenPath, (err) =>
    log.warn({ err: err.message }, 'could not write health.token: /health lists no identities until a restart'),
  );
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
      serverCertificate: {
        notAfter: security.identity.notAfter.toISOString(),
        fingerprint: security.identity.fingerprint,
      },
    };
    if (!presentsHealthToken(req.headers.authorization, healthSecret)) return open;
    return {
      ...open,
      deviceId,
      connected: engine.connectedIdentities(),
      modules: scope.listModules(deviceId).map((m) => m.moduleId),
      queues,
      ...(sources.agent ? { agentModules: await sources.agent.moduleViews() } : {}),
    };
  });
}

/** Serves the metrics on `bind` (loopback unless [strata] metrics_bind says otherwise); warns when that is not this machine only. */
export async function startMetricsEndpoint(
  metrics: GatewayMetrics,
  bind: string,
  port: number,
  print: (line: string) => void,
): Promise<{ port: number; close(): Promise<void> }> {
  if (!isLoopback(bind)) print(`warning: metrics are served without authentication on ${bind} ([strata] metrics_bind)`);
  try {
    return await serveMetrics(metrics, bind, port);
  } catch (err) {
    throw listenError(err, 'metrics', bind, port);
  }
}
