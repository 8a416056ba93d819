import { randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { writeFileAtomic } from '../util/atomic-file.ts';

/**
 * `/health` answers anyone with the gateway's state, but names the connected devices and
 * modules (identities an attacker could aim at) only to a caller that shows the bearer token
 * the gateway keeps in its data directory, readable by its owner only. Whoever can
 * read the data directory can read far more than that already; `strata edge list` does so.
 */

/**
 * The token kept in `path`, made on first use. A gateway that cannot write it (a full disk)
 * still starts: it uses a token nobody can read, so identities stay hidden until a restart.
 */
export function healthToken(path: string, onError: (err: Error) => void): string {
  const kept = readHealthToken(path);
  if (kept && /^[A-Za-z0-9_-]{43}$/.test(kept)) return kept;
  const token = randomBytes(32).toString('base64url');
  try {
    writeFileAtomic(path, `${token}\n`, 0o600);
  } catch (err) {
    onError(err as Error);
  }
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
