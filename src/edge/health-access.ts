import { randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { writeFileDurably } from '../util/durable-file.ts';

/**
 * `/health` answers anyone with the gateway's state, but names the connected devices and
 * modules (identities an attacker could aim at) only to a caller that shows the bearer token
 * the gateway writes into its data directory at start, readable by its owner only. Whoever can
 * read the data directory can read far more than that already; `strata edge list` does so.
 */

export function issueHealthToken(path: string): string {
  const token = randomBytes(32).toString('base64url');
  writeFileDurably(path, `${token}\n`, 0o600);
  return token;
}

export function readHealthToken(path: string): string | undefined {
  if (!existsSync(path)) return undefined;
  try {
    return readFileSync(path, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Whether an Authorization header carries `Bearer <token>`. */
export function presentsHealthToken(authorization: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
  if (!m) return false;
  const given = Buffer.from(m[1]!);
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}
