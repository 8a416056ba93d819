import net, { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import WebSocket, { createWebSocketStream } from 'ws';

/**
 * The byte stream under an upstream connection: AMQP over TLS on 5671 (ALPN `amqp`), MQTT over
 * TLS on 8883 (ALPN `mqtt`), or either over WebSockets on 443 (`wss://{parent}/$iothub/websocket`,
 * subprotocol `AMQPWSB10` or `mqtt`). Whichever, the parent's certificate must chain to the trust
 * bundle and name the parent host (DNS or IP SAN).
 */

export type UpstreamTransport = 'amqp' | 'amqpws' | 'mqtt' | 'mqttws';

export const AMQP_WS_PATH = '/$iothub/websocket';
export const AMQP_WS_SUBPROTOCOL = 'AMQPWSB10';
export const MQTT_WS_SUBPROTOCOL = 'mqtt';

const isWebSocket = (t: UpstreamTransport): boolean => t === 'amqpws' || t === 'mqttws';
const isMqtt = (t: UpstreamTransport): boolean => t === 'mqtt' || t === 'mqttws';

/** The port a transport uses unless told otherwise: what the official clients dial. */
export function defaultPort(t: UpstreamTransport): number {
  return isWebSocket(t) ? 443 : isMqtt(t) ? 8883 : 5671;
}

export interface TransportTarget {
  host: string;
  port: number;
  transport: UpstreamTransport;
  /** PEM of the certificates to trust (the trust bundle). */
  ca: string;
  timeoutMs: number;
  /** Gives up (and closes the socket) when aborted. */
  signal?: AbortSignal;
}

/**
 * Why a connection attempt failed. `unreachable`: nothing listens (or no route) — the only
 * kind a port probe can see end; `tls`: the parent's certificate is not acceptable;
 * `refused`: the parent answered and refused (AMQP close, authentication); `lost`: an open
 * connection went away; `timeout`: no answer in time.
 */
export type FailureKind = 'unreachable' | 'tls' | 'refused' | 'lost' | 'timeout';

export class UpstreamConnectError extends Error {
  constructor(
    readonly kind: FailureKind,
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'UpstreamConnectError';
  }
}

const UNREACHABLE = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ECONNRESET',
]);
const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS|ERR_SSL|HOSTNAME|ALTNAME|DEPTH_ZERO|ISSUER/;

/** Sorts a socket error into a FailureKind with a message that says what to check. */
export function classifyError(err: unknown, where: string): UpstreamConnectError {
  if (err instanceof UpstreamConnectError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = e?.code ?? '';
  const text = e?.message ?? String(err);
  if (UNREACHABLE.has(code))
    return new UpstreamConnectError('unreachable', `cannot reach the parent at ${where}: ${text}`, code);
  if (TLS_CODES.test(code) || /certificate/i.test(text)) {
    return new UpstreamConnectError(
      'tls',
      `the parent at ${where} presented a certificate the trust bundle does not accept: ${text}`,
      code,
    );
  }
  if (code === 'ETIMEDOUT')
    return new UpstreamConnectError('timeout', `no answer from the parent at ${where}: ${text}`, code);
  return new UpstreamConnectError('lost', `connection to the parent at ${where} failed: ${text}`, code);
}

export function describeTarget(t: { host: string; port: number; transport: UpstreamTransport }): string {
  const host = isIP(t.host) === 6 ? `[${t.host}]` : t.host;
  if (isWebSocket(t.transport)) return `wss://${host}:${t.port}${AMQP_WS_PATH}`;
  return `${isMqtt(t.transport) ? 'mqtts' : 'amqps'}://${host}:${t.port}`;
}

/** Opens the transport; resolves once TLS (and the WebSocket upgrade) succeeded and the peer verified. */
export async function openTransport(t: TransportTarget): Promise<Duplex> {
  if (t.signal?.aborted) throw new UpstreamConnectError('lost', 'the link is closing');
  const opening = isWebSocket(t.transport) ? openWebSocket(t) : openTls(t);
  if (!t.signal) return opening;
  const signal = t.signal;
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(new UpstreamConnectError('lost', 'the link is closing'));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([opening, aborted]);
  } catch (err) {
    // A socket that opens after all is not wanted any more.
    opening.then(
      (s) => s.destroy(),
      () => undefined,
    );
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}

function openTls(t: TransportTarget): Promise<Duplex> {
  const where = describeTarget(t);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: t.host,
      port: t.port,
      ca: t.ca,
      // SNI carries names only; an IP address is still checked against the certificate's IP SANs.
      ...(isIP(t.host) ? {} : { servername: t.host }),
      ALPNProtocols: [isMqtt(t.transport) ? 'mqtt' : 'amqp'],
      rejectUnauthorized: true,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new UpstreamConnectError('timeout', `no TLS handshake with the parent at ${where} within ${t.timeoutMs} ms`),
      );
    }, t.timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(classifyError(err, where));
    };
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('error', fail);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

function openWebSocket(t: TransportTarget): Promise<Duplex> {
  const where = describeTarget(t);
  const subprotocol = isMqtt(t.transport) ? MQTT_WS_SUBPROTOCOL : AMQP_WS_SUBPROTOCOL;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(where, [subprotocol], {
      ca: t.ca,
      ...(isIP(t.host) ? {} : { servername: t.host }),
      rejectUnauthorized: true,
      handshakeTimeout: t.timeoutMs,
      perMessageDeflate: false,
    });
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      ws.terminate();
      reject(classifyError(err, where));
    };
    ws.once('error', fail);
    ws.once('unexpected-response', (_req, res) => {
      fail(
        new UpstreamConnectError(
          'refused',
          `the parent at ${where} refused the WebSocket upgrade (HTTP ${res.statusCode ?? '?'})`,
        ),
      );
    });
    ws.once('open', () => {
      if (settled) return;
      settled = true;
      ws.off('error', fail);
      if (ws.protocol !== subprotocol) {
        ws.terminate();
        reject(
          new UpstreamConnectError('refused', `the parent at ${where} did not accept the ${subprotocol} subprotocol`),
        );
        return;
      }
      const stream = createWebSocketStream(ws);
      // The socket layer reports errors on the stream; a late one must not go unhandled.
      stream.on('error', () => {});
      resolve(stream);
    });
  });
}

/**
 * Whether something accepts TCP connections at host:port now. Cheap (no TLS, no AMQP/MQTT): used
 * while waiting out a backoff after the parent was unreachable, so the link comes back the
 * moment the parent listens again instead of at the end of a long wait.
 */
export function probe(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
