import type { IncomingMessage } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import type { Engine } from '../engine/engine.ts';
import type { OnBehalfOfSource } from '../identity/on-behalf-of.ts';
import type { AccessPolicy } from '../identity/policies.ts';
import { AMQP_WS_SUBPROTOCOL, AmqpHead } from '../protocols/amqp/index.ts';
import { EventHubsEndpoint } from '../protocols/amqp/event-hubs/index.ts'; // issue 6
import { clientCertificateOf } from '../protocols/http/client-cert.ts';
import { attachMqttWebSocket, startMqttListener } from '../protocols/mqtt/server.ts';
import { preAuthOf, type PreAuthGate } from '../protocols/pre-auth.ts';
import { webSocketDispatcher } from '../protocols/ws.ts';
import type { EventStream } from '../store/event-stream.ts';
import { UserError } from '../util/errors.ts';

/**
 * The hub's protocol heads over its engine: MQTT over TLS and over WebSockets, AMQP over TLS and
 * over WebSockets, and the Event Hubs compatible endpoint on the AMQP head. Each binds before the
 * HTTPS listener opens, records its port and listener line, and registers its close.
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
}

function webSocketUrl(site: HeadSite): string {
  const httpsPort = site.ports.https;
  return `wss://${site.hostname}${httpsPort === 443 || httpsPort === 0 ? '' : `:${httpsPort}`}/$iothub/websocket`;
}

/**
 * MQTT over TLS on `site.ports.mqtt` and MQTT over WebSockets on the HTTPS server. Edge hubs
 * below connect for the identities in their scope (on-behalf-of), checked against `onBehalfOf`.
 */
export async function startMqttHeads(site: HeadSite, engine: Engine, onBehalfOf: OnBehalfOfSource): Promise<void> {
  let mqtt;
  try {
    mqtt = await startMqttListener({
      engine,
      host: site.bind,
      port: site.ports.mqtt,
      certPem: site.tls.certPem,
      keyPem: site.tls.keyPem,
      onBehalfOf,
      preAuth: site.preAuth,
    });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      throw new UserError(
        `cannot listen for MQTT on ${site.bind}:${site.ports.mqtt}: ${(err as Error).message}`,
        'Choose another --mqtt-port or --bind address',
      );
    }
    throw err;
  }
  site.onClose(() => mqtt.close());
  site.ports.mqtt = mqtt.port;
  site.listeners.push({ name: 'MQTT (TLS)', url: `mqtts://${site.hostname}:${mqtt.port}` });

  const ws = attachMqttWebSocket(site.https, engine, undefined, onBehalfOf, site.preAuth);
  site.onClose(() => ws.close());
  site.listeners.push({ name: 'MQTT over WebSockets', url: webSocketUrl(site) });
}

/** AMQP over TLS on `site.ports.amqp` and AMQP over WebSockets on the HTTPS server's `/$iothub/websocket`. */
export async function startAmqpHead(
  site: HeadSite,
  engine: Engine,
  policy: (keyName: string) => AccessPolicy | undefined,
  onBehalfOf: OnBehalfOfSource,
): Promise<AmqpHead> {
  const head = new AmqpHead({
    engine,
    hostName: site.hostname,
    policy,
    maxMessageBytes: engine.options.maxMessageBytes,
    preAuth: site.preAuth,
    // Edge hubs below act for the identities in their scope (on-behalf-of), checked against the registry.
    onBehalfOf,
    // issue 6: Event Hubs clients put the port into token audiences when it is not their default 5671.
    extraHostNames: site.ports.amqp && site.ports.amqp !== 5671 ? [`${site.hostname}:${site.ports.amqp}`] : undefined,
  });
  let addr;
  try {
    addr = await head.listen({ host: site.bind, port: site.ports.amqp, cert: site.tls.certPem, key: site.tls.keyPem });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') {
      throw new UserError(
        `cannot listen for AMQP on ${site.bind}:${site.ports.amqp}: ${(err as Error).message}`,
        'Choose another --amqp-port or --bind address',
      );
    }
    throw err;
  }
  site.onClose(() => head.close());
  site.ports.amqp = addr.port;
  site.listeners.push({ name: 'AMQP (TLS)', url: `amqps://${site.hostname}:${addr.port}` });

  webSocketDispatcher(site.https).register(AMQP_WS_SUBPROTOCOL, (stream: Duplex, req: IncomingMessage) => {
    const remote = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
    head.accept(stream, {
      transport: 'amqp-ws',
      remote,
      clientCertificate: clientCertificateOf(req.socket),
      preAuth: preAuthOf(req.socket),
    });
  });
  site.listeners.push({ name: 'AMQP over WebSockets', url: webSocketUrl(site) });
  return head;
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
