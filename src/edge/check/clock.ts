/** The clock group: this host's clock against the upstream's HTTP Date (or its certificate's dates). */
import type { X509Certificate } from 'node:crypto';
import https from 'node:https';
import { isIP } from 'node:net';
import { result, type CheckResult } from './checks.ts';
import { iso } from './describe.ts';

export const CLOCK_SKEW_LIMIT_MS = 5 * 60 * 1000;

/** The upstream's clock as its HTTP Date header says (second resolution), with the local time at the moment it was read. */
export function fetchUpstreamDate(
  host: string,
  timeoutMs: number,
  port = 443,
): Promise<{ remote: Date; local: number } | undefined> {
  return new Promise((resolveDate) => {
    const started = Date.now();
    // Only the time is read, nothing is sent: the certificate is judged by the connectivity checks.
    const req = https.request(
      {
        host,
        port,
        method: 'HEAD',
        path: '/',
        agent: false,
        rejectUnauthorized: false,
        ...(isIP(host) ? {} : { servername: host }),
      },
      (res) => {
        const local = (started + Date.now()) / 2;
        const header = res.headers.date;
        res.resume();
        done(header && !Number.isNaN(Date.parse(header)) ? { remote: new Date(header), local } : undefined);
      },
    );
    const done = (v: { remote: Date; local: number } | undefined) => {
      clearTimeout(timer);
      req.destroy();
      resolveDate(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    req.once('error', () => done(undefined));
    req.end();
  });
}

function formatSkew(ms: number): string {
  const s = Math.abs(ms) / 1000;
  return s >= 120 ? `${Math.round(s / 60)} minutes` : `${Math.round(s)} s`;
}

export function checkClock(
  host: string | undefined,
  date: { remote: Date; local: number } | undefined,
  leaves: X509Certificate[],
): CheckResult {
  const id = 'clock';
  const fix =
    'Set the clock right (enable NTP: `timedatectl set-ntp true`); certificates and SAS tokens are judged by it';
  if (!host) return result(id, 'skipped', 'no upstream to compare with');
  if (date) {
    const skew = date.remote.getTime() - date.local;
    // The Date header has whole seconds: up to a second of difference is noise.
    const text = `the clock of ${host} reads ${iso(date.remote)}`;
    if (Math.abs(skew) > CLOCK_SKEW_LIMIT_MS)
      return result(
        id,
        'warning',
        `${text}; this host's clock is ${formatSkew(skew)} ${skew > 0 ? 'behind' : 'ahead'}`,
        fix,
      );
    return result(id, 'pass', `${text}; within ${formatSkew(Math.max(0, Math.abs(skew) - 1000))} of this host`);
  }
  const now = new Date();
  for (const leaf of leaves) {
    const from = new Date(leaf.validFrom);
    const to = new Date(leaf.validTo);
    if (now < from)
      return result(
        id,
        'warning',
        `the certificate of ${host} is not valid before ${iso(from)}, but this host's clock reads ${iso(now)}: the clock is probably behind`,
        fix,
      );
    if (now > to)
      return result(
        id,
        'warning',
        `the certificate of ${host} expired on ${iso(to)} by this host's clock (${iso(now)}): the clock may be ahead, or the certificate old`,
        fix,
      );
  }
  if (leaves.length > 0)
    return result(
      id,
      'pass',
      `no Date header from ${host}; this host's time lies within the validity of its certificate`,
    );
  return result(id, 'skipped', `could not reach ${host} to compare clocks`);
}
