import type { IncomingMessage } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { WebSocketServer, createWebSocketStream, type WebSocket } from 'ws';
import { childLog, refusals, sourceAddress, wireText } from '../util/log.ts';

const log = childLog('websocket');

/** The path IoT Hub clients open WebSockets on. */
export const IOTHUB_WEBSOCKET_PATH = '/$iothub/websocket';
/** Where Event Hubs clients open AMQP WebSockets (issue 6); served like the IoT Hub path. */
export const SERVICEBUS_WEBSOCKET_PATH = '/$servicebus/websocket';

/** Receives an accepted WebSocket as a byte stream, with the upgrade request (for the TLS client certificate). */
export type WebSocketProtocolHandler = (stream: Duplex, req: IncomingMessage, ws: WebSocket) => void;

export interface WebSocketDispatcher {
  /** Routes WebSockets whose subprotocol is `subprotocol` (case-insensitive) to `handler`. */
  register(subprotocol: string, handler: WebSocketProtocolHandler): void;
  /** Closes every WebSocket this dispatcher accepted. */
  close(): void;
}

const dispatchers = new WeakMap<HttpsServer, WebSocketDispatcher>();

/**
 * One upgrade handler per HTTPS server for `/$iothub/websocket`, choosing the protocol head by
 * the subprotocol the client offers (`mqtt` for MQTT, `AMQPWSB10` for AMQP). Heads call
 * `webSocketDispatcher(server).register(...)`; the first call installs the handler.
 */
export function webSocketDispatcher(server: HttpsServer): WebSocketDispatcher {
  const existing = dispatchers.get(server);
  if (existing) return existing;
  const handlers = new Map<string, { name: string; handler: WebSocketProtocolHandler }>();
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 1024 * 1024,
    perMessageDeflate: false,
    handleProtocols: (offered) => pick(offered, handlers)?.name ?? false,
  });
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = (req.url ?? '').split('?')[0];
    const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    // issue 6: Event Hubs clients open their AMQP WebSockets on /$servicebus/websocket.
    if (path !== IOTHUB_WEBSOCKET_PATH && path !== SERVICEBUS_WEBSOCKET_PATH) {
      refusals.warn(
        log,
        sourceAddress(remote),
        { remote, path: wireText(path) },
        `WebSocket refused: no endpoint at ${wireText(path)} (use ${IOTHUB_WEBSOCKET_PATH})`,
      );
      return reject(socket, 404, 'Not Found');
    }
    const offered = new Set(
      String(req.headers['sec-websocket-protocol'] ?? '')
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    );
    const chosen = pick(offered, handlers);
    if (!chosen) {
      refusals.warn(
        log,
        sourceAddress(remote),
        { remote, offered: [...offered].slice(0, 8).map((p) => wireText(p)) },
        `WebSocket refused: none of the offered subprotocols is served (${[...handlers.values()].map((h) => h.name).join(', ') || 'none registered'})`,
      );
      return reject(socket, 400, 'Bad Request');
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const stream = createWebSocketStream(ws);
      stream.on('error', () => stream.destroy());
      try {
        chosen.handler(stream, req, ws);
      } catch (err) {
        log.error({ err, remote }, 'WebSocket protocol head failed');
        ws.terminate();
      }
    });
  });
  const d: WebSocketDispatcher = {
    register(subprotocol, handler) {
      handlers.set(subprotocol.toLowerCase(), { name: subprotocol, handler });
    },
    close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };
  dispatchers.set(server, d);
  return d;
}

function pick(
  offered: Set<string>,
  handlers: Map<string, { name: string; handler: WebSocketProtocolHandler }>,
): { name: string; handler: WebSocketProtocolHandler } | undefined {
  for (const p of offered) {
    const h = handlers.get(p.toLowerCase());
    if (h) return { name: p, handler: h.handler };
  }
  return undefined;
}

function reject(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  setTimeout(() => socket.destroy(), 1000).unref();
}
