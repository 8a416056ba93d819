import type { AddressInfo } from 'node:net';
import { createServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { Server as HttpsServer } from 'node:https';
import type { Engine } from '../../engine/engine.ts';
import { childLog } from '../../util/log.ts';
import { clientCertificateOf } from '../http/client-cert.ts';
import { webSocketDispatcher } from '../ws.ts';
import type { OnBehalfOfSource } from '../../identity/on-behalf-of.ts';
import { MqttConnection, type MqttConnectionOptions } from './connection.ts';
import { GATED_TLS_OPTIONS, PreAuthGate, preAuthOf } from '../pre-auth.ts';

const log = childLog('mqtt');

export interface MqttListenerOptions {
  engine: Engine;
  host: string;
  port: number;
  /** Server certificate (full chain) and key. */
  certPem: string;
  keyPem: string;
  connection?: Partial<Pick<MqttConnectionOptions, 'connectTimeoutMs' | 'maxPacketBytes' | 'keepAliveFactor'>>;
  /** Identities an edge hub below may connect on behalf of (the hub's registry, a gateway's scope). */
  onBehalfOf?: OnBehalfOfSource;
  /** The node's limits on unauthenticated connections (shared by its listeners); default: a gate of its own. */
  preAuth?: PreAuthGate;
}

export interface MqttListener {
  port: number;
  server: TlsServer;
  /** Live connections. */
  connections(): number;
  close(): Promise<void>;
}

/** MQTT over TLS. Client certificates are requested but judged by the engine, never by the handshake. */
export async function startMqttListener(o: MqttListenerOptions): Promise<MqttListener> {
  const live = new Set<MqttConnection>();
  const gate = o.preAuth ?? new PreAuthGate();
  const server = createServer(
    { cert: o.certPem, key: o.keyPem, requestCert: true, rejectUnauthorized: false, ...GATED_TLS_OPTIONS },
    (socket: TLSSocket) => {
      socket.setNoDelay(true);
      const preAuth = preAuthOf(socket);
      // The gate read the address from the TCP socket already; asking the TLS socket again would
      // keep a second copy of it on every connection.
      const remote = preAuth?.remote ?? `${socket.remoteAddress}:${socket.remotePort}`;
      new MqttConnection(socket, o.engine, {
        connectTimeoutMs: gate.limits.mqttConnectTimeoutMs,
        ...o.connection,
        preAuth,
        ...(o.onBehalfOf ? { onBehalfOf: o.onBehalfOf } : {}),
        protocol: 'mqtt',
        remote,
        clientCertificate: clientCertificateOf(socket),
        live,
      });
    },
  );
  gate.guardTls(server, 'MQTT');
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'MQTT listener error'));
  return {
    port: (server.address() as AddressInfo).port,
    server,
    connections: () => live.size,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of [...live]) c.close();
      await closed;
    },
  };
}

/** MQTT over WebSockets on the HTTPS server, subprotocol `mqtt`, at `/$iothub/websocket`. */
export function attachMqttWebSocket(
  https: HttpsServer,
  engine: Engine,
  connection?: MqttListenerOptions['connection'],
  onBehalfOf?: OnBehalfOfSource,
  preAuth?: PreAuthGate,
): { close(): void } {
  const live = new Set<MqttConnection>();
  webSocketDispatcher(https).register('mqtt', (stream, req) => {
    const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    new MqttConnection(stream, engine, {
      ...(preAuth ? { connectTimeoutMs: preAuth.limits.mqttConnectTimeoutMs } : {}),
      ...connection,
      ...(onBehalfOf ? { onBehalfOf } : {}),
      preAuth: preAuthOf(req.socket),
      protocol: 'mqtt-ws',
      remote,
      clientCertificate: clientCertificateOf(req.socket),
      live,
    });
  });
  return {
    close() {
      for (const c of [...live]) c.close();
    },
  };
}
