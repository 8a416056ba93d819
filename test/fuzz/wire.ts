/** Pieces the wire fuzzers share: one TLS connection that writes bytes and reports how the server took them. */
import { connect as tlsConnect } from 'node:tls';

/** In a list of chunks: wait here for the server's next answer (up to a second), as a client waits for a SASL outcome. */
export const AWAIT_REPLY = 'await-reply' as const;
export type WireStep = Buffer | typeof AWAIT_REPLY;

export interface WireOutcome {
  /** The TLS handshake completed (the fuzz bytes went out). */
  connected: boolean;
  /** Bytes the server sent back. */
  received: Buffer;
  /** The server closed (or reset) the connection within the wait. */
  closed: boolean;
}

/**
 * Opens TLS to `address:port`, writes `chunks` one by one (each in its own write, so frames
 * arrive split as a slow client's would), waits `lingerMs` for answers, then half-closes and
 * waits up to `closeWithinMs` for the server to close. A server that neither answers nor
 * closes after the client has ended holds the socket forever, which is what the fuzzers check.
 */
export function writeAndEnd(o: {
  address: string;
  port: number;
  ca: string;
  chunks: WireStep[];
  closeWithinMs: number;
  lingerMs?: number;
}): Promise<WireOutcome> {
  return new Promise((resolve) => {
    const received: Buffer[] = [];
    let connected = false;
    let done = false;
    const socket = tlsConnect({ host: o.address, port: o.port, ca: o.ca, servername: undefined });
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ connected, received: Buffer.concat(received), closed });
    };
    let timer = setTimeout(() => finish(false), o.closeWithinMs + 10_000);
    let onData: (() => void) | undefined;
    socket.on('data', (d: Buffer) => {
      received.push(d);
      onData?.();
    });
    const nextReply = () =>
      new Promise<void>((res) => {
        const t = setTimeout(() => res(), 1000);
        onData = () => {
          clearTimeout(t);
          onData = undefined;
          // The rest of this answer is usually in the same flight.
          setTimeout(res, 20);
        };
      });
    socket.on('error', () => finish(true));
    socket.on('close', () => finish(true));
    socket.once('secureConnect', async () => {
      connected = true;
      for (const c of o.chunks) {
        if (done) return;
        if (c === AWAIT_REPLY) await nextReply();
        else if (c.length > 0) socket.write(c);
      }
      const end = () => {
        if (done) return;
        socket.end();
        clearTimeout(timer);
        timer = setTimeout(() => finish(false), o.closeWithinMs);
      };
      if (o.lingerMs) setTimeout(end, o.lingerMs);
      else end();
    });
  });
}
