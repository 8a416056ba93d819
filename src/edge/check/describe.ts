/** Wording the checks share: dates, certificate names, validity windows, the worst of several findings. */
import type { X509Certificate } from 'node:crypto';
import { UserError } from '../../util/errors.ts';
import type { CheckStatus } from './checks.ts';

export const EXPIRY_WARNING_DAYS = 7;

const DAY_MS = 24 * 3600 * 1000;

export function iso(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function daysBetween(a: Date, b: Date): number {
  return Math.round(((b.getTime() - a.getTime()) / DAY_MS) * 10) / 10;
}

export function subjectOf(cert: X509Certificate): string {
  return cert.subject.replace(/\n/g, ', ');
}

export function commonNameOf(cert: X509Certificate): string | undefined {
  return /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
}

export function namesOf(cert: X509Certificate): string {
  return cert.subjectAltName ?? 'none';
}

/** How a certificate's validity window stands at `now`: an error when outside it, a warning in its last week. */
export function validity(
  cert: X509Certificate,
  now: Date,
  what: string,
): { status: 'pass' | 'warning' | 'error'; text: string } {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (now < from)
    return { status: 'error', text: `${what} is not valid before ${iso(from)} (is this host's clock behind?)` };
  if (now > to) return { status: 'error', text: `${what} expired on ${iso(to)}` };
  const left = to.getTime() - now.getTime();
  if (left < EXPIRY_WARNING_DAYS * DAY_MS)
    return { status: 'warning', text: `${what} expires in ${daysBetween(now, to)} days (${iso(to)})` };
  return { status: 'pass', text: `${what} is valid until ${iso(to)}` };
}

export function worst(...statuses: CheckStatus[]): CheckStatus {
  for (const s of ['error', 'warning', 'pass', 'skipped'] as const) if (statuses.includes(s)) return s;
  return 'skipped';
}

export function userMessage(err: unknown): { message: string; hint?: string } {
  if (err instanceof UserError) return { message: err.message, hint: err.hint };
  return { message: err instanceof Error ? err.message : String(err) };
}
