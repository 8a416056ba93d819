import type { Engine } from '../engine/engine.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { httpStatusOf } from '../model/errors.ts';
import type { IdentityRef } from '../model/identity.ts';
import type { ScopeCache } from '../scope/cache.ts';
import type { ScopeSync } from '../scope/sync.ts';
import {
  AmqpParentLink,
  MqttParentLink,
  type ParentLink,
  type UpstreamC2DDelivery,
  type UpstreamTransport,
} from '../upstream/index.ts';
import { childLog } from '../util/log.ts';
import type { EdgeHubRoutes } from './edgehub-routes.ts';
import type { RelayHandlers } from './gateway-registry.ts';

/**
 * The gateway's side of its parent: the link (AMQP, or MQTT when UpstreamProtocol says so),
 * starting it without waiting long for a parent that is away, and what comes down it for the
 * devices here (direct methods, C2D, desired properties), handed to the engine.
 */

const log = childLog('gateway');

/** How long a direct method relayed from upstream may wait for the device (IoT Hub's maximum). */
const RELAYED_METHOD_TIMEOUT_S = 300;
/** Messages per upstream batch (senders within a batch go in parallel, each in order). */
const UPSTREAM_BATCH = 5000;

/** A certificate-provisioned gateway refused upstream reads its $edgeHub key again at most this often. */
const KEY_REREAD_MS = 15_000;

export interface ParentLinkParts {
  transport: UpstreamTransport;
  /** The parent gateway, or the IoT hub itself at the top. */
  parentHost: string;
  /** The trust bundle the parent's certificate must chain to. */
  trustPem: string;
  hubHostName: string;
  deviceId: string;
  edgeKey: string;
  scope: ScopeCache;
  /** The store's id: batches name where in it they come from. */
  originId: string;
  /** Absent: the transport's standard port. */
  port?: number;
}

export function createParentLink(p: ParentLinkParts): ParentLink {
  const { transport, parentHost, trustPem, hubHostName, deviceId, edgeKey, scope } = p;
  const upstreamOptions = {
    parentHost,
    trustPem,
    hubHostName,
    edgeDeviceId: deviceId,
    edgeKey,
    authChainOf: (id: IdentityRef) => scope.authChainOf(id.deviceId, id.moduleId),
    // Large batches: each rides one round trip (two are in flight).
    maxBatch: UPSTREAM_BATCH,
    ...(p.port !== undefined ? { port: p.port } : {}),
  };
  return transport === 'mqtt' || transport === 'mqttws'
    ? new MqttParentLink({ ...upstreamOptions, transport })
    : // Batches name where in this store they come from: the parent stores each message once.
      new AmqpParentLink({ ...upstreamOptions, transport, originId: p.originId });
}

/** Direct methods, C2D messages and desired patches from the parent, to the engine's sessions. */
export function upstreamRelays(engine: Engine): RelayHandlers {
  return {
    method: (identity, req, respond) => relayMethod(engine, identity, req, respond),
    c2d: (target, delivery, settle) => relayC2D(engine, target, delivery, settle),
    desired: (identity, patch) => engine.deliverDesired(identity, patch),
  };
}

export interface ConnectUpstreamParts {
  link: ParentLink;
  sync: ScopeSync;
  routes: EdgeHubRoutes;
  scope: ScopeCache;
  deviceId: string;
  edgeKey: string;
  /** A certificate-provisioned gateway reads its $edgeHub key again after a refusal. */
  rereadKey?: () => Promise<string>;
  print: (line: string) => void;
}

/**
 * Starts the link and follows the $edgeHub twin (the routes). Waits a short while for both, no
 * longer: a gateway starts, and serves devices, with its parent offline.
 */
export async function connectUpstream(p: ConnectUpstreamParts): Promise<void> {
  const { link, sync, routes, scope, deviceId, edgeKey, print } = p;
  link.on('up', () => log.info({ parent: link.describeParent() }, 'upstream link up'));
  link.on('refused', (err: Error) => print(`error: ${err.message}`));
  if (p.rereadKey) {
    const rereadKey = p.rereadKey;
    // The $edgeHub key may have changed at the parent (keys regenerated): read it again, at most every KEY_REREAD_MS.
    let current = edgeKey;
    let readAt = 0;
    link.on('refused', () => {
      if (Date.now() - readAt < KEY_REREAD_MS) return;
      readAt = Date.now();
      rereadKey().then(
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
  const edgeHubChannel = link.openIdentity({
    deviceId,
    moduleId: EDGE_HUB,
    authChain: scope.authChainOf(deviceId, EDGE_HUB) ?? `${deviceId}/${EDGE_HUB};${deviceId}`,
  });
  const firstRoutes = routes.follow(edgeHubChannel, link);
  // Not awaited past a short while: a gateway starts (and serves devices) with its parent offline.
  const shortly = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());
  await Promise.race([startLink, shortly(3000)]);
  if (link.connected) await Promise.race([firstRoutes, shortly(3000)]);
}

/** A direct method from upstream, to the connected device, and its answer back. */
function relayMethod(
  engine: Engine,
  identity: IdentityRef,
  req: { methodName: string; payload: Buffer },
  respond: (status: number, payload: Buffer) => void,
): void {
  let payload: unknown = null;
  if (req.payload.length > 0) {
    const text = req.payload.toString('utf8');
    try {
      payload = JSON.parse(text);
    } catch {
      payload = text;
    }
  }
  engine
    .invokeMethod(identity, { methodName: req.methodName, payload, responseTimeoutInSeconds: RELAYED_METHOD_TIMEOUT_S })
    .then(
      (r) => respond(r.status, Buffer.from(JSON.stringify(r.payload ?? null))),
      // Every refusal keeps its own status (the same table the device heads use), not just three.
      (err: unknown) => respond(httpStatusOf(err), Buffer.from(JSON.stringify({ message: (err as Error).message }))),
    );
}

/** A C2D message from upstream, to the connected device; its settlement goes back upstream. */
function relayC2D(
  engine: Engine,
  deviceId: string,
  delivery: UpstreamC2DDelivery,
  settle: (outcome: 'complete' | 'reject' | 'abandon') => void,
): void {
  const message = { ...delivery.message, properties: { ...delivery.message.properties } };
  const rawAck = message.properties['iothub-ack'];
  delete message.properties['iothub-ack'];
  const ack = rawAck === 'positive' || rawAck === 'negative' || rawAck === 'full' ? rawAck : 'none';
  const handed = engine.relayC2D(deviceId, { message, ack, deliveryCount: delivery.deliveryCount }, settle);
  if (!handed) settle('abandon');
}
