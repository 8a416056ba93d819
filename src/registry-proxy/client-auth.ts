import { authenticate, type AuthenticateDeps } from '../identity/authenticate.ts';
import { parseSasToken, splitAudience } from '../identity/sas.ts';
import { EngineError } from '../model/errors.ts';
import type { ScopeCache } from '../scope/cache.ts';

/**
 * Who may use a gateway's registry API: HTTP Basic with user name = an IoT Edge device id in
 * the gateway's scope (or the gateway's own) and password = a SAS token for that device or one
 * of its modules (what its agent and edge hub sign with). The user name may name the module
 * (`device/module`); a bare device id with a module's token means that module.
 */

export type ClientVerdict =
  | { ok: true; who: string }
  | { ok: false; status: 401 | 403; code: 'UNAUTHORIZED' | 'DENIED'; message: string; reason: string };

export interface ClientAuthDeps {
  scope: ScopeCache;
  /** Credentials are checked against what the gateway knows of its scope (as the scope API does). */
  authDeps: AuthenticateDeps;
  /** Asks the parent once about an identity the cache does not know yet. */
  onDemand(deviceId: string, moduleId?: string): Promise<unknown>;
}

const unauthorized = (message: string, reason = 'unauthenticated'): ClientVerdict => ({
  ok: false,
  status: 401,
  code: 'UNAUTHORIZED',
  message,
  reason,
});
const denied = (message: string): ClientVerdict => ({
  ok: false,
  status: 403,
  code: 'DENIED',
  message,
  reason: 'denied',
});

/** Reads `Authorization: Basic ...` into user and password; undefined when absent or another scheme. */
export function basicCredentials(header: string | undefined): { user: string; password: string } | undefined {
  const m = /^basic\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

/** The module a SAS token's audience names (`.../devices/D/modules/M`), if any. */
function tokenModule(token: string, deviceId: string): string | undefined {
  try {
    const { path } = splitAudience(parseSasToken(token).sr);
    const m = /^\/devices\/([^/]+)\/modules\/([^/]+)$/.exec(path);
    return m && decodeURIComponent(m[1]) === deviceId ? decodeURIComponent(m[2]) : undefined;
  } catch {
    return undefined;
  }
}

export function clientAuthenticator(d: ClientAuthDeps): (authorization: string | undefined) => Promise<ClientVerdict> {
  return async (authorization) => {
    if (!authorization)
      return unauthorized(
        'authentication required: sign in with an IoT Edge device id as user name and a SAS token for it as password',
      );
    const creds = basicCredentials(authorization);
    if (!creds)
      return unauthorized(
        'only HTTP Basic authentication is accepted here (user name: an IoT Edge device id, password: its SAS token)',
      );
    const slash = creds.user.indexOf('/');
    const deviceId = slash < 0 ? creds.user : creds.user.slice(0, slash);
    const moduleId = slash < 0 ? tokenModule(creds.password, deviceId) : creds.user.slice(slash + 1);
    const who = moduleId === undefined ? `device ${deviceId}` : `module ${deviceId}/${moduleId}`;
    if (!deviceId) return unauthorized('the user name is empty: give an IoT Edge device id');

    let check = d.scope.check(deviceId, moduleId);
    if (!check.ok && check.reason === 'not-found') {
      try {
        await d.onDemand(deviceId, moduleId);
      } catch {
        // The parent is away: go by the cache.
      }
      check = d.scope.check(deviceId, moduleId);
    }
    if (!check.ok) return denied(check.message);
    const node = d.scope.view().device(deviceId);
    if (!node?.isEdge)
      return denied(
        `${who} may not pull images here: only IoT Edge devices (and their modules) pull through a gateway`,
      );
    try {
      await authenticate({ deviceId, moduleId, sasToken: creds.password }, d.authDeps);
    } catch (err) {
      if (err instanceof EngineError) {
        if (err.code === 'disabled') return denied(err.message);
        return unauthorized(err.message, 'bad_credentials');
      }
      throw err;
    }
    return { ok: true, who };
  };
}
