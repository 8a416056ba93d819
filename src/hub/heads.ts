import type { Server as HttpsServer } from 'node:https';
import type { Engine } from '../engine/engine.ts';
import type { OnBehalfOfSource } from '../identity/on-behalf-of.ts';
import type { AccessPolicy } from '../identity/policies.ts';
import type { AmqpHead } from '../protocols/amqp/index.ts';
import { EventHubsEndpoint } from '../protocols/amqp/event-hubs/index.ts'; // issue 6
import { attachWebSocketHeads, startDeviceHeads } from '../protocols/listeners.ts';
import type { PreAuthGate } from '../protocols/pre-auth.ts';
import type { EventStream } from '../store/event-stream.ts';
import { UserError } from '../util/errors.ts';

/**
 * The hub's protocol heads over its engine, from the same listeners a gateway opens: MQTT and
 * AMQP over TLS and over WebSockets, and the Event Hubs compatible endpoint on the AMQP head. They
 * bind before the HTTPS listener opens, record their ports and listener lines, and register
 * their closes.
 */

/** Where the heads listen and what they record there (the hub being assembled). */
export interface HeadSite {
  hostname: string;
  bind: string;
  tls: { certPem: string; keyPem: string };
  /** The HTTPS server, whose `/$iothub/websocket` upgrades carry MQTT and AMQP. */
  https: HttpsServer;
  /** Timeouts and caps for unauthenticated connections, shared by every listener of the hub. */
  preAuth: PreAuthGate;
  /** Actual ports once listening (each head updates its own when it binds). */
  ports: { https: number; mqtt: number; amqp: number };
  /** What start-up prints: one line per listener. */
  listeners: Array<{ name: string; url: string }>;
  /** Registers cleanup run by the hub's close(), most recent first. */
  onClose(fn: () => Promise<void> | void): void;
  /** Offer gateways below Strata's relay and presence links (AmqpHeadOptions.strataLinks). */
  strataLinks?: boolean;
}

const PORT_FLAG: Record<string, string> = { MQTT: '--mqtt-port', AMQP: '--amqp-port' };

/** A port the hub cannot take, named with the `strata hub start` flag that moves it. */
function hubListenError(err: unknown, what: string, host: string, port: number): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
    return new UserError(
      `cannot listen for ${what} on ${host}:${port}: ${(err as Error).message}`,
      `Choose another ${PORT_FLAG[what] ?? 'port'} or --bind address`,
    );
  }
  return err;
}

/**
 * MQTT and AMQP, each over TLS and over WebSockets on the HTTPS server. Edge hubs below connect
 * for the identities in their scope (on-behalf-of), checked against `onBehalfOf`.
 */
export async function startDeviceListeners(
  site: HeadSite,
  engine: Engine,
  policy: (keyName: string) => AccessPolicy | undefined,
  onBehalfOf: OnBehalfOfSource,
): Promise<AmqpHead> {
  const heads = await startDeviceHeads(
    {
      engine,
      bind: site.bind,
      ports: site.ports,
      tls: { cert: site.tls.certPem, key: site.tls.keyPem },
      preAuth: site.preAuth,
      onBehalfOf,
      amqp: {
        hostName: site.hostname,
        policy,
        maxMessageBytes: engine.options.maxMessageBytes,
        strataLinks: site.strataLinks,
        // issue 6: Event Hubs clients put the port into token audiences when it is not their default 5671.
        extraHostNames:
          site.ports.amqp && site.ports.amqp !== 5671 ? [`${site.hostname}:${site.ports.amqp}`] : undefined,
      },
      publicHost: site.hostname,
      listenError: hubListenError,
    },
    site.onClose,
  );
  site.ports.mqtt = heads.ports.mqtt;
  site.ports.amqp = heads.ports.amqp;
  const webSockets = attachWebSocketHeads(site.https, {
    engine,
    amqp: heads.amqp,
    preAuth: site.preAuth,
    onBehalfOf,
    publicHost: site.hostname,
    httpsPort: site.ports.https,
  });
  site.onClose(() => webSockets.close());
  site.listeners.push(...heads.listeners, ...webSockets.listeners);
  return heads.amqp;
}

/**
 * issue 6: the Event Hubs compatible receive side ($management, partition receivers) on the AMQP
 * head, over the event stream, listed among the hub's listeners.
 */
export function startEventHubsEndpoint(
  site: HeadSite,
  head: AmqpHead,
  stream: EventStream,
  consumerGroup: (name: string) => string | undefined,
): EventHubsEndpoint {
  const endpoint = new EventHubsEndpoint({
    hostName: site.hostname,
    stream,
    log: head.log,
    createdAt: () => stream.createdAt(),
    consumerGroup,
  });
  head.addRoutes(endpoint.routes);
  site.onClose(() => endpoint.close());
  const port = site.ports.amqp === 5671 ? '' : `:${site.ports.amqp}`;
  site.listeners.push({
    name: 'Event Hubs endpoint',
    url: `sb://${site.hostname}${port}/ EntityPath=${endpoint.entity} (${stream.partitionCount()} partitions; strata hub connection-string --event-hubs)`,
  });
  return endpoint;
}
