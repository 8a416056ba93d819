import http from 'node:http';
import https from 'node:https';

/**
 * Asking a running node how it is: its HTTPS `/health` (checked against the hierarchy's root
 * CA, as a device would) and its Prometheus `/metrics`.
 */

export interface HttpAnswer {
  status: number;
  body: string;
}

/** GET a URL; http: or https: (then trusting only `ca`). Rejects on network errors and timeouts. */
export function httpGet(
  url: string,
  o: { ca?: string; timeoutMs?: number; headers?: Record<string, string> } = {},
): Promise<HttpAnswer> {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(u, { ca: o.ca, timeout: o.timeoutMs ?? 2000, agent: false, headers: o.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () =>
      req.destroy(
        Object.assign(new Error(`no answer from ${u.host} within ${o.timeoutMs ?? 2000} ms`), { code: 'ETIMEDOUT' }),
      ),
    );
    req.on('error', reject);
  });
}

export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition format (comments and malformed lines skipped). */
export function parsePrometheus(text: string): MetricSample[] {
  const out: MetricSample[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[2]) {
      for (const l of m[2].matchAll(/([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]!] = l[2]!.replace(/\\n/g, '\n').replace(/\\(.)/g, '$1');
      }
    }
    const v = m[3]!;
    const value = v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v);
    if (Number.isNaN(value) && v !== 'NaN') continue;
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}

/** The sum of every sample of the metric, or undefined when the endpoint does not have it. */
export function sumOf(
  samples: MetricSample[],
  name: string,
  where: (labels: Record<string, string>) => boolean = () => true,
): number | undefined {
  let found = false;
  let total = 0;
  for (const s of samples) {
    if (s.name !== name || !where(s.labels)) continue;
    found = true;
    total += s.value;
  }
  return found ? total : undefined;
}
