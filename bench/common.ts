/**
 * What the benchmarks share: the hub's event stream read from its end, a process's CPU time
 * from /proc, quantiles, and how fast the disk syncs.
 */
import https from 'node:https';
import { closeSync, fdatasyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSasToken } from '../src/identity/sas.ts';

export function quantile(sorted: number[], f: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))] ?? NaN;
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/**
 * p50 and p99 (ms) of `n` fdatasyncs of a 4 KiB append in the temp directory, where the nodes
 * keep their stores: every message waits for such a sync at its gateway and at the hub, and on
 * a shared machine their time moves from one run to the next.
 */
export function diskSyncProbe(n = 100): { p50: number; p99: number } {
  const dir = mkdtempSync(join(tmpdir(), 'strata-disk-probe-'));
  const fd = openSync(join(dir, 'probe'), 'a');
  const block = Buffer.alloc(4096, 1);
  const took: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      writeSync(fd, block);
      const t0 = performance.now();
      fdatasyncSync(fd);
      took.push(performance.now() - t0);
    }
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  took.sort((a, b) => a - b);
  const ms = (x: number) => Math.round(x * 100) / 100;
  return { p50: ms(quantile(took, 0.5)), p99: ms(quantile(took, 0.99)) };
}

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
