import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { EDGE_HUB } from '../identity/device-id.ts';
import { createSasToken } from '../identity/sas.ts';

/**
 * Where a gateway's `/v2/` requests go: the parent gateway's `/v2/` over the TLS trust the
 * gateway already has for its parent, signed in with its own identity (Basic: device id, and a
 * SAS token of its `$edgeHub`), or, at the top layer, the upstream registry of `[registry]` with
 * its credentials (Basic, or a bearer token fetched from the realm the registry names).
 */

export interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  /** Path and query, starting with `/v2/`. */
  path: string;
  headers?: Record<string, string | undefined>;
}

export interface RegistryUpstream {
  /** Names it in messages: "the parent 10.0.0.1" or "the upstream registry https://...". */
  readonly description: string;
  request(r: UpstreamRequest): Promise<IncomingMessage>;
  close(): void;
}

/** A network failure on the way to the upstream (not an HTTP answer). */
export class UpstreamUnreachable extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'UpstreamUnreachable';
  }
}

const TIMEOUT_MS = 30_000;
const MAX_REDIRECTS = 5;

function send(
  url: URL,
  r: UpstreamRequest,
  headers: Record<string, string>,
  extra: https.RequestOptions,
  what: string,
): Promise<IncomingMessage> {
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, { method: r.method, headers, timeout: TIMEOUT_MS, ...extra }, resolve);
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (err: NodeJS.ErrnoException) =>
      reject(new UpstreamUnreachable(`cannot reach ${what} (${err.code ?? err.message})`, err.code)),
    );
    req.end();
  });
}

function cleanHeaders(h: Record<string, string | undefined> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h ?? {})) if (v !== undefined) out[k] = v;
  return out;
}

/**
 * Sends, following redirects (registries send blobs to storage elsewhere): the credentials go
 * only to the origin they belong to.
 */
async function sendFollowing(
  base: URL,
  r: UpstreamRequest,
  auth: () => string | undefined,
  extra: https.RequestOptions,
  what: string,
): Promise<IncomingMessage> {
  let url = new URL(r.path, base);
  for (let i = 0; ; i++) {
    const headers: Record<string, string> = { 'User-Agent': 'strata-edge-registry', ...cleanHeaders(r.headers) };
    const sameOrigin = url.origin === base.origin;
    const a = sameOrigin ? auth() : undefined;
    if (a) headers.Authorization = a;
    const res = await send(url, r, headers, sameOrigin ? extra : {}, what);
    const location = res.headers.location;
    if (!location || ![301, 302, 303, 307, 308].includes(res.statusCode ?? 0) || i >= MAX_REDIRECTS) return res;
    res.resume();
    url = new URL(location, url);
  }
}

/** `https://parent:443`, an IPv6 address in brackets. */
export function parentBaseUrl(parentHost: string, port = 443): URL {
  const host = isIP(parentHost) === 6 ? `[${parentHost}]` : parentHost;
  return new URL(`https://${host}:${port}`);
}

/**
 * How a gateway signs in to its parent's HTTPS APIs (`/v2/`, `/storage/`): Basic with its device
 * id and a SAS token of its `$edgeHub`, made again before it nears expiry or when the key changes.
 */
export function edgeHubBasicAuth(o: { hubHostName: string; deviceId: string; edgeKey: () => string }): () => string {
  let token: { text: string; expires: number; key: string } | undefined;
  return () => {
    const now = Date.now();
    const key = o.edgeKey();
    if (!token || token.key !== key || token.expires - now < 5 * 60_000) {
      const expiry = Math.floor(now / 1000) + 3600;
      const audience = `${o.hubHostName}/devices/${encodeURIComponent(o.deviceId)}/modules/${encodeURIComponent(EDGE_HUB)}`;
      token = { text: createSasToken(audience, key, expiry), expires: expiry * 1000, key };
    }
    return `Basic ${Buffer.from(`${o.deviceId}:${token.text}`).toString('base64')}`;
  };
}

/** The parent gateway's `/v2/`: its certificate checked against the trust bundle, signed in as this gateway. */
export function parentGatewayUpstream(o: {
  parentHost: string;
  port?: number;
  trustPem: string;
  hubHostName: string;
  deviceId: string;
  /** The key this gateway signs its `$edgeHub` tokens with (may change: read each time). */
  edgeKey: () => string;
}): RegistryUpstream {
  const base = parentBaseUrl(o.parentHost, o.port);
  const agent = new https.Agent({ keepAlive: true, ca: o.trustPem, maxSockets: 16 });
  const auth = edgeHubBasicAuth(o);
  const description = `the parent ${o.parentHost}`;
  return {
    description,
    request: (r) => sendFollowing(base, r, auth, { agent }, description),
    close: () => agent.destroy(),
  };
}

/** A `Bearer realm="...",service="...",scope="..."` challenge's parameters, or undefined. */
export function parseBearerChallenge(header: string | undefined): Record<string, string> | undefined {
  if (!header || !/^bearer\s/i.test(header)) return undefined;
  const out: Record<string, string> = {};
  for (const m of header.slice(7).matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) out[m[1].toLowerCase()] = m[2];
  return out.realm ? out : undefined;
}

/** The user's registry, as the top layer reaches it. */
export function registryUpstream(o: { url: string; username?: string; password?: string }): RegistryUpstream {
  const base = new URL(`${o.url}/`);
  const agent = base.protocol === 'https:' ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  const basic =
    o.username !== undefined
      ? `Basic ${Buffer.from(`${o.username}:${o.password ?? ''}`).toString('base64')}`
      : undefined;
  // Bearer tokens by scope, from registries that hand them out (the realm's token service).
  const tokens = new Map<string, { token: string; expires: number }>();
  const description = `the upstream registry ${o.url}`;

  async function fetchToken(challenge: Record<string, string>): Promise<string | undefined> {
    const realm = new URL(challenge.realm);
    if (challenge.service) realm.searchParams.set('service', challenge.service);
    if (challenge.scope) realm.searchParams.set('scope', challenge.scope);
    const res = await send(
      realm,
      { method: 'GET', path: realm.pathname },
      { ...(basic ? { Authorization: basic } : {}), Accept: 'application/json' },
      {},
      `the token service ${realm.origin}`,
    );
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    if (res.statusCode !== 200) return undefined;
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
      const token = (body.token ?? body.access_token) as string | undefined;
      const ttl = typeof body.expires_in === 'number' ? body.expires_in : 60;
      if (token) tokens.set(challenge.scope ?? '', { token, expires: Date.now() + ttl * 1000 });
      return token;
    } catch {
      return undefined;
    }
  }

  return {
    description,
    async request(r) {
      const scopeKey = scopeOf(r.path);
      const cached = tokens.get(scopeKey);
      const bearer = cached && cached.expires - Date.now() > 10_000 ? `Bearer ${cached.token}` : undefined;
      const first = await sendFollowing(base, r, () => bearer ?? basic, { agent }, description);
      if (first.statusCode !== 401) return first;
      const challenge = parseBearerChallenge(first.headers['www-authenticate'] as string | undefined);
      if (!challenge) return first;
      first.resume();
      const token = await fetchToken(challenge);
      if (!token) return sendFollowing(base, r, () => basic, { agent }, description);
      return sendFollowing(base, r, () => `Bearer ${token}`, { agent }, description);
    },
    close: () => agent.destroy(),
  };
}

/** `repository:NAME:pull` for a repository path, as token services scope their tokens. */
function scopeOf(path: string): string {
  const m = /^\/v2\/(.+?)\/(?:manifests|blobs|tags)\//.exec(path);
  return m ? `repository:${m[1]}:pull` : '';
}
