import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Engine } from '../engine/engine.ts';
import { identityKey } from '../model/identity.ts';
import { sendError } from '../protocols/http/rest-errors.ts';
import { attachWebSocketHeads, listenError, startDeviceHeads, type Closer } from '../protocols/listeners.ts';
import { GATED_TLS_OPTIONS, type PreAuthGate } from '../protocols/pre-auth.ts';
import type { IdentitySource } from '../scope/contract.ts';
import { ownModuleReader } from '../scope/own-modules.ts';
import { moduleRelay } from '../scope/module-relay.ts';
import { scopeApi } from '../scope/plugin.ts';
import type { ScopeSync } from '../scope/sync.ts';
import { childLog } from '../util/log.ts';
import { serveAgentRoutes } from './agent-routes.ts';
import { serveHealth, type HealthSources } from './health.ts';
import { registerRawPrefix, type RegistryHandler } from './registry-api.ts';
import type { SecurityManager } from './security-manager.ts';

/**
 * A gateway's listeners on its bind address: MQTT 8883, AMQP 5671, and HTTPS 443 (health, the
 * scope API and own-module reads for child gateways, MQTT and AMQP over WebSockets), all behind
 * the pre-authentication limits of `[strata]`, all with the server certificate the security
 * manager keeps current.
 */

export interface GatewayListenerParts {
  engine: Engine;
  bind: string;
  /** The ports asked for; updated to the ones bound. */
  ports: { mqtt: number; amqp: number; https: number };
  security: SecurityManager;
  preAuth: PreAuthGate;
  hubHostName: string;
  /** This gateway's own host names, shared with the engine (a reload changes them in place). */
  extraHostNames: string[];
  /**
   * A parent gateway answers its child gateways as the hub would: identities and on-behalf-of
   * claims come from this gateway's scope cache, and what it does not know is asked further up.
   */
  childScope: IdentitySource;
  sync: ScopeSync;
  health: HealthSources;
  /** The registry API (`/v2/`, registry-api.ts). */
  registryApi?: RegistryHandler;
  /** Blob uploads (`/storage/`, blob-api.ts). */
  blobApi?: RegistryHandler;
}

/** Opens every listener; each close goes to `onClose` as soon as what it closes exists. */
export async function startGatewayListeners(p: GatewayListenerParts, onClose: (fn: Closer) => void): Promise<void> {
  const { engine, bind, ports, security, preAuth, childScope, sync } = p;
  const tlsNow = security.tlsOptions();
  const heads = await startDeviceHeads(
    {
      engine,
      bind,
      ports,
      tls: tlsNow,
      preAuth,
      onBehalfOf: childScope,
      amqp: { hostName: p.hubHostName, extraHostNames: p.extraHostNames, policy: () => undefined },
      publicHost: security.currentHostname,
      listenError,
    },
    onClose,
  );
  for (const server of heads.servers) security.attach(server);
  ports.mqtt = heads.ports.mqtt;
  ports.amqp = heads.ports.amqp;

  const app: FastifyInstance = Fastify({
    https: { ...tlsNow, requestCert: true, rejectUnauthorized: false, ...GATED_TLS_OPTIONS },
    forceCloseConnections: true,
    logger: false,
  });
  onClose(() => app.close());
  preAuth.guardHttps(app.server as HttpsServer);
  serveHealth(app, p.health);
  if (p.registryApi) registerRawPrefix(app, '/v2', p.registryApi);
  if (p.blobApi) registerRawPrefix(app, '/storage', p.blobApi);
  if (p.health.agent) serveAgentRoutes(app, p.health.agent, p.health.tokenPath);
  // Module identities written on behalf of a child edge device go on to the parent, never the cache.
  await app.register(scopeApi, {
    source: childScope,
    modules: moduleRelay(sync.parentClient),
    log: childLog('scope-api'),
  });
  // A child edge device provisioned with a certificate reads its $edgeHub key here (own-modules.ts).
  const readOwnModule = ownModuleReader(childScope, {
    fetchUpstream: (d, m) => sync.fetchUpstream({ deviceId: d, moduleId: m }, [identityKey(d, m), d]),
  });
  await app.register(async (scoped) => {
    const apiLog = childLog('registry-api');
    scoped.setErrorHandler((err, req, reply) => sendError(reply, req, apiLog, err));
    scoped.get('/devices/:id/modules/:mid', (req) => {
      const { id, mid } = req.params as { id: string; mid: string };
      return readOwnModule(req, id, mid);
    });
  });
  const https = app.server as HttpsServer;
  const webSockets = attachWebSocketHeads(https, {
    engine,
    amqp: heads.amqp,
    preAuth,
    onBehalfOf: childScope,
    publicHost: security.currentHostname,
    httpsPort: ports.https,
  });
  onClose(() => webSockets.close());
  try {
    await app.listen({ port: ports.https, host: bind });
  } catch (err) {
    throw listenError(err, 'HTTPS', bind, ports.https);
  }
  security.attach(https);
  ports.https = (https.address() as AddressInfo).port;
}
