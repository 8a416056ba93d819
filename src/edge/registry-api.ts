import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { ContentCache } from '../registry-proxy/cache.ts';
import { clientAuthenticator } from '../registry-proxy/client-auth.ts';
import { defaultRegistrySettings } from '../registry-proxy/config.ts';
import { RegistryMetrics } from '../registry-proxy/metrics.ts';
import { registryProxy } from '../registry-proxy/proxy.ts';
import { parentGatewayUpstream, registryUpstream, type RegistryUpstream } from '../registry-proxy/upstream.ts';
import type { ScopeCache } from '../scope/cache.ts';
import { authDepsOf, type IdentitySource } from '../scope/contract.ts';
import type { ScopeSync } from '../scope/sync.ts';
import { childLog } from '../util/log.ts';
import type { EdgeConfig } from './config.ts';

/**
 * The gateway's `/v2/` (../registry-proxy/): a lower layer forwards to its parent gateway, the
 * top layer (whose parent is the hub) to the registry of `[registry] upstream`. Clients sign in
 * as edge devices of this gateway's scope; the cache lives in the data directory.
 */

export type RegistryHandler = (req: IncomingMessage, res: ServerResponse) => void;

/** What the gateway's HTTPS APIs for its scope (`/v2/`, `/storage/`) are built from. */
export interface GatewayApiParts {
  config: EdgeConfig;
  deviceId: string;
  parentHost: string;
  /** The parent's HTTPS port: 443, or [strata] parent_https_port. */
  parentHttpsPort?: number;
  hubHostName: string;
  trustPem: string;
  scope: ScopeCache;
  sync: ScopeSync;
  childScope: IdentitySource;
}

/** Who may use those APIs: an IoT Edge device of the scope with a SAS token (client-auth.ts). */
export function gatewayClientAuth(p: GatewayApiParts): ReturnType<typeof clientAuthenticator> {
  return clientAuthenticator({
    scope: p.scope,
    authDeps: authDepsOf(p.childScope),
    onDemand: (d, m) => p.sync.onDemand(d, m),
  });
}

export function gatewayRegistryApi(
  p: GatewayApiParts & { dataDir: string },
  q: { edgeKey: () => string; metrics: Registry; hostname: () => string; onClose(fn: () => void): void },
): RegistryHandler {
  const log = childLog('registry-api');
  const settings = p.config.registry ?? defaultRegistrySettings();
  const top = p.config.parentHostname === undefined;
  let upstream: RegistryUpstream | undefined;
  if (!top) {
    upstream = parentGatewayUpstream({
      parentHost: p.parentHost,
      port: p.parentHttpsPort,
      trustPem: p.trustPem,
      hubHostName: p.hubHostName,
      deviceId: p.deviceId,
      edgeKey: q.edgeKey,
    });
  } else if (settings.upstream) {
    upstream = registryUpstream({ url: settings.upstream, username: settings.username, password: settings.password });
  }
  const cache = new ContentCache(join(p.dataDir, 'registry-cache'), settings.cacheMaxBytes, log);
  const handle = registryProxy({
    cache,
    upstream,
    noUpstream: `gateway ${p.deviceId} is the top layer and its config.toml names no [registry] upstream, so it has no registry to pull from`,
    authenticate: gatewayClientAuth(p),
    metrics: new RegistryMetrics(q.metrics, () => ({ bytes: cache.bytes, count: cache.count })),
    tagCacheMs: settings.tagCacheSecs * 1000,
    realm: q.hostname,
    log,
  });
  q.onClose(() => upstream?.close());
  return handle;
}

/**
 * Hands every request under `prefix` (`/v2`, `/storage`) to `handle` before Fastify reads a
 * body: the registry proxy and the blob relay stream.
 */
export function registerRawPrefix(app: FastifyInstance, prefix: string, handle: RegistryHandler): void {
  for (const url of [prefix, `${prefix}/*`]) {
    app.route({
      method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
      url,
      onRequest: (req, reply) => {
        reply.hijack();
        handle(req.raw, reply.raw);
      },
      handler: () => undefined,
    });
  }
}
