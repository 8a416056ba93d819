import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type tls from 'node:tls';
import type { Engine } from '../engine/engine.ts';
import type { OnBehalfOfSource } from '../identity/on-behalf-of.ts';
import { UserError } from '../util/errors.ts';
import { AMQP_WS_SUBPROTOCOL, AmqpHead, type AmqpHeadOptions } from './amqp/head.ts';
import { clientCertificateOf } from './http/client-cert.ts';
import { attachMqttWebSocket, startMqttListener, type MqttListener } from './mqtt/server.ts';
import { type PreAuthGate, preAuthOf } from './pre-auth.ts';
import { IOTHUB_WEBSOCKET_PATH, webSocketDispatcher } from './ws.ts';

/**
 * The device-facing listeners of a node, whatever its role: MQTT and AMQP over TLS on the bind
 * address, and both over WebSockets on the node's HTTPS server. Every one shares the node's
 * pre-authentication gate and serves one engine. The role keeps the HTTPS server itself (its
 * routes differ) and says how a failure to listen reads.
 */

/** What start-up prints about one listener. */
export interface ListenerEntry {
  name: string;
  url: string;
}

export type Closer = () => Promise<void> | void;

/** Says why a port could not be opened, in the role's words (which option to change). */
export type ListenErrorMapper = (err: unknown, what: string, host: string, port: number) => unknown;

export interface DeviceHeadsOptions {
  engine: Engine;
  /** The address to listen on. */
  bind: string;
  /** The ports asked for; 0 picks a free one. */
  ports: { mqtt: number; amqp: number };
  /** Server certificate (full chain) and key, PEM. */
  tls: { cert: string; key: string };
  /** The node's limits on unauthenticated connections, shared by all its listeners. */
  preAuth: PreAuthGate;
  /** Identities an edge hub below may act for (the hub's registry, a gateway's scope). */
  onBehalfOf?: OnBehalfOfSource;
  /** The AMQP head's host names and policies. */
  amqp: Pick<AmqpHeadOptions, 'hostName' | 'extraHostNames' | 'policy' | 'maxMessageBytes' | 'strataLinks'>;
  /** The host name clients dial, for the listener list. */
  publicHost: string;
  /** Default: the error as it came. */
  listenError?: ListenErrorMapper;
}

export interface DeviceHeads {
  mqtt: MqttListener;
  amqp: AmqpHead;
  /** The TLS servers (MQTT, AMQP), for a role that swaps in a renewed certificate. */
  servers: tls.Server[];
  /** The ports bound. */
  ports: { mqtt: number; amqp: number };
  listeners: ListenerEntry[];
}

/**
 * MQTT over TLS and AMQP over TLS. Each close is handed to `onClose` as soon as what it closes
 * exists, so a start that fails half way closes what it opened.
 */
export async function startDeviceHeads(o: DeviceHeadsOptions, onClose: (fn: Closer) => void): Promise<DeviceHeads> {
  const mapError = o.listenError ?? ((err: unknown) => err);
  const { engine, bind, preAuth } = o;
  let mqtt: MqttListener;
  try {
    mqtt = await startMqttListener({
      engine,
      host: bind,
      port: o.ports.mqtt,
      certPem: o.tls.cert,
      keyPem: o.tls.key,
      onBehalfOf: o.onBehalfOf,
      preAuth,
    });
  } catch (err) {
    throw mapError(err, 'MQTT', bind, o.ports.mqtt);
  }
  onClose(() => mqtt.close());

  const amqp = new AmqpHead({ engine, ...o.amqp, onBehalfOf: o.onBehalfOf, preAuth });
  onClose(() => amqp.close());
  let amqpServer: tls.Server;
  try {
    amqpServer = await amqp.listen({ host: bind, port: o.ports.amqp, cert: o.tls.cert, key: o.tls.key });
  } catch (err) {
    throw mapError(err, 'AMQP', bind, o.ports.amqp);
  }

  const ports = { mqtt: mqtt.port, amqp: (amqpServer.address() as AddressInfo).port };
  return {
    mqtt,
    amqp,
    servers: [mqtt.server, amqpServer],
    ports,
    listeners: [
      { name: 'MQTT (TLS)', url: `mqtts://${o.publicHost}:${ports.mqtt}` },
      { name: 'AMQP (TLS)', url: `amqps://${o.publicHost}:${ports.amqp}` },
    ],
  };
}

/**
 * MQTT and AMQP over WebSockets on the node's HTTPS server (`/$iothub/websocket`, chosen by
 * subprotocol). Call before the HTTPS server listens; `httpsPort` is the port it will use.
 */
export function attachWebSocketHeads(
  https: HttpsServer,
  o: {
    engine: Engine;
    amqp: AmqpHead;
    preAuth: PreAuthGate;
    onBehalfOf?: OnBehalfOfSource;
    publicHost: string;
    httpsPort: number;
  },
): { listeners: ListenerEntry[]; close(): Promise<void> } {
  const mqttWs = attachMqttWebSocket(https, o.engine, undefined, o.onBehalfOf, o.preAuth);
  webSocketDispatcher(https).register(AMQP_WS_SUBPROTOCOL, (stream, req) => {
    const remote = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
    o.amqp.accept(stream, {
      transport: 'amqp-ws',
      remote,
      clientCertificate: clientCertificateOf(req.socket),
      preAuth: preAuthOf(req.socket),
    });
  });
  const url = `wss://${o.publicHost}${o.httpsPort === 443 || o.httpsPort === 0 ? '' : `:${o.httpsPort}`}${IOTHUB_WEBSOCKET_PATH}`;
  return {
    listeners: [
      { name: 'MQTT over WebSockets', url },
      { name: 'AMQP over WebSockets', url },
    ],
    // The HTTPS server's close waits for upgraded sockets too: the AMQP head ends its own.
    close: async () => {
      mqttWs.close();
      await o.amqp.close();
    },
  };
}

/** Turns the usual listen failures into one line that says what to do. */
export function listenError(err: unknown, what: string, host: string, port: number): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EADDRINUSE')
    return new UserError(
      `cannot listen for ${what} on ${host}:${port}: the port is in use`,
      'Stop whatever holds it, or choose another port',
    );
  if (code === 'EACCES') {
    return new UserError(
      `cannot listen for ${what} on ${host}:${port}: permission denied`,
      'Ports below 1024 need root (or CAP_NET_BIND_SERVICE); note that the azure-iothub service SDK only dials 443',
    );
  }
  if (code === 'EADDRNOTAVAIL')
    return new UserError(
      `cannot listen on ${host}: no network interface has that address`,
      'Pass --bind with an address of this machine',
    );
  return err;
}
