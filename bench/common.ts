/**
 * What the benchmarks share: the hub's event stream read from its end, a process's CPU time
 * from /proc, and quantiles.
 */
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { createSasToken } from '../src/identity/sas.ts';

export function quantile(sorted: number[], f: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))] ?? NaN;
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Reads the hub's event stream (server-sent events) from its end; calls `onEvent` with each body. */
export function followEvents(
  host: string,
  ca: string,
  cs: { host: string; key: string; policy: string },
  onEvent: (body: Buffer) => void,
): { ready: Promise<void>; stop(): void } {
  const token = createSasToken(cs.host, cs.key, Math.floor(Date.now() / 1000) + 3600, cs.policy);
  let stop = () => {};
  const ready = new Promise<void>((resolveReady, reject) => {
    const req = https.request(
      {
        host,
        port: 443,
        path: '/events?from=end&api-version=2021-04-12',
        ca,
        headers: { authorization: token, accept: 'text/event-stream' },
        agent: false,
      },
      (res) => {
        if (res.statusCode !== 200) return reject(new Error(`GET /events answered ${res.statusCode}`));
        resolveReady();
        res.setEncoding('utf8');
        // The reader only needs each event's body: it takes the `"body":"..."` member (base64,
        // never escaped) instead of parsing the whole event, so that on a two-core machine the
        // harness spends about what the anchor's MQTT subscriber does on a message.
        const BODY = '"body":"';
        let buf = '';
        res.on('data', (chunk: string) => {
          buf = buf.length === 0 ? chunk : buf + chunk;
          let from = 0;
          let cut: number;
          while ((cut = buf.indexOf('\n\n', from)) >= 0) {
            const at = buf.indexOf(BODY, from);
            if (at >= 0 && at < cut)
              onEvent(Buffer.from(buf.slice(at + BODY.length, buf.indexOf('"', at + BODY.length)), 'base64'));
            from = cut + 2;
          }
          buf = buf.slice(from);
        });
      },
    );
    req.on('error', reject);
    req.end();
    stop = () => req.destroy();
  });
  return { ready, stop: () => stop() };
}

/** CPU time (user + system, ms) a process has used so far, from /proc. */
export function cpuMsOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}
