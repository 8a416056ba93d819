import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { EDGE_HUB } from '../identity/device-id.ts';
import { createSasToken } from '../identity/sas.ts';
import { parseErrorBody } from '../protocols/http/rest-errors.ts';
import { SCOPE_API_VERSION } from './contract.ts';

/**
 * The HTTP side of a gateway's scope sync: requests to the parent's scope API signed as the
 * gateway's `$edgeHub`, and the parent's refusals and network failures as ScopeSyncErrors.
 */

/** Where the parent is and who this gateway is (the part of ScopeSyncOptions requests need). */
export interface ScopeParentOptions {
  /** The parent (the hub, or the parent gateway) as this gateway dials it. */
  parent: {
    /** The name the parent's certificate carries (checked), and the Host header. */
    host: string;
    port?: number;
    /** PEM of the CA(s) that issued the parent's certificate (the trust bundle). */
    ca: string | Buffer;
    /** Dial this address instead of resolving `host`. */
    address?: string;
  };
  /** The IoT hub's host name, which the SAS audience names (a parent gateway accepts it too). */
  hubHostName: string;
  /** The edge device this gateway is, and a key: its own or its `$edgeHub` module's. */
  edge: { deviceId: string; key: string };
  /** Per request (listing pages, on-behalf-of lookups). Default 30 s. */
  requestTimeoutMs?: number;
  tokenTtlSeconds?: number;
}

/** A refusal or failure talking to the parent; `status` is the HTTP status when there was one. */
export class ScopeSyncError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
    /** The parent's own words for a refusal, without this side's framing. */
    readonly reason?: string,
  ) {
    super(message);
    this.name = 'ScopeSyncError';
  }
}

export const MAX_BODY = 64 * 1024 * 1024;

export class ScopeParentClient {
  /** Requests under way, destroyed when the sync stops. */
  readonly active = new Set<ReturnType<typeof https.request>>();
  private token?: { text: string; expires: number };
  private readonly agent: https.Agent;

  constructor(private readonly o: ScopeParentOptions) {
    this.agent = new https.Agent({ keepAlive: true, ca: o.parent.ca });
  }

  /** Destroys the requests under way. */
  abort(): void {
    for (const req of this.active) req.destroy();
  }

  close(): void {
    this.agent.destroy();
  }

  /** The edge device this client signs as (its `$edgeHub`). */
  get edgeDeviceId(): string {
    return this.o.edge.deviceId;
  }

  where(): string {
    const port = this.o.parent.port ?? 443;
    return port === 443 ? this.o.parent.host : `${this.o.parent.host}:${port}`;
  }

  /** Signs with another key from now on. */
  setEdgeKey(key: string): void {
    this.o.edge.key = key;
    this.token = undefined;
  }

  private sasToken(): string {
    const now = Date.now();
    if (this.token && this.token.expires - now > 5 * 60_000) return this.token.text;
    const ttl = this.o.tokenTtlSeconds ?? 3600;
    const expiry = Math.floor(now / 1000) + ttl;
    const audience = `${this.o.hubHostName}/devices/${encodeURIComponent(this.o.edge.deviceId)}/modules/${encodeURIComponent(EDGE_HUB)}`;
    this.token = { text: createSasToken(audience, this.o.edge.key, expiry), expires: expiry * 1000 };
    return this.token.text;
  }

  headers(): Record<string, string> {
    return { Authorization: this.sasToken(), 'User-Agent': 'strata-edge-scope-sync' };
  }

  requestOptions(method: string, path: string): https.RequestOptions {
    const { host, address } = this.o.parent;
    return {
      method,
      host: address ?? host,
      port: this.o.parent.port ?? 443,
      path,
      ca: this.o.parent.ca,
      ...(isIP(host) ? {} : { servername: host }),
      // Dialling an explicit address must still check the certificate against the parent's name.
      ...(address
        ? { checkServerIdentity: (_h: string, cert: PeerCertificate) => checkServerIdentity(host, cert) }
        : {}),
    };
  }

  post<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('POST', path, body, {
      what: path.endsWith('OnBehalfOf') ? 'an on-behalf-of lookup' : 'the scope listing',
    });
  }

  /**
   * One JSON request to the parent. An answer without a body (204) resolves to undefined.
   * `what` names the request in refusals ("the parent X refused {what}: ...").
   */
  request<T>(method: 'POST' | 'PUT', path: string, body: unknown, o: { what: string; ifMatch?: string }): Promise<T> {
    const payload = Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = https.request(
        {
          ...this.requestOptions(method, `${path}?api-version=${SCOPE_API_VERSION}`),
          agent: this.agent,
          timeout: this.o.requestTimeoutMs ?? 30_000,
          headers: {
            ...this.headers(),
            'Content-Type': 'application/json; charset=utf-8',
            'Content-Length': payload.length,
            Accept: 'application/json',
            ...(o.ifMatch !== undefined ? { 'If-Match': o.ifMatch } : {}),
          },
        },
        (res) => {
          readBody(res)
            .then((text) => {
              const status = res.statusCode ?? 0;
              if (status < 200 || status >= 300) return reject(this.refusal(status, text, o.what));
              if (text.trim() === '') return resolve(undefined as T);
              try {
                resolve(JSON.parse(text) as T);
              } catch {
                reject(
                  new ScopeSyncError(`the parent ${this.where()} answered with something that is not JSON`, status),
                );
              }
            })
            .catch((err: Error) => reject(this.networkError(err)));
        },
      );
      this.active.add(req);
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      req.on('error', (err) => reject(this.networkError(err)));
      req.on('close', () => this.active.delete(req));
      req.end(payload);
    });
  }

  refusal(status: number, text: string, what: string): ScopeSyncError {
    const { code, text: why } = parseErrorBody(text, status);
    const hint =
      status === 401
        ? ` (check the edge device id and key this gateway uses, and that ${this.o.edge.deviceId} and its ${EDGE_HUB} are enabled)`
        : '';
    return new ScopeSyncError(
      `the parent ${this.where()} refused ${what}: ${why} (${code}, HTTP ${status})${hint}`,
      status,
      code,
      why,
    );
  }

  networkError(err: Error): ScopeSyncError {
    if (err instanceof ScopeSyncError) return err;
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (
      code === 'ECONNREFUSED' ||
      code === 'EHOSTUNREACH' ||
      code === 'ENOTFOUND' ||
      code === 'ETIMEDOUT' ||
      code === 'ECONNRESET' ||
      code === 'EAI_AGAIN'
    ) {
      return new ScopeSyncError(`cannot reach the parent ${this.where()} (${code})`, undefined, code);
    }
    if (/CERT|SELF_SIGNED|UNABLE_TO|ALTNAME/.test(code)) {
      return new ScopeSyncError(
        `the parent ${this.where()} presented a certificate this gateway does not trust (${code}): check trust_bundle_cert and the parent's hostname`,
        undefined,
        code,
      );
    }
    return new ScopeSyncError(
      `talking to the parent ${this.where()} failed: ${err.message}`,
      undefined,
      code || undefined,
    );
  }
}

export function readBody(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        res.destroy(new Error('the answer is too large'));
        return;
      }
      chunks.push(c);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
    res.on('aborted', () => reject(new Error('the answer was cut off')));
  });
}

/** One server-sent event: `event:` and `data:` lines (comments and ids ignored). */
export function parseSseBlock(block: string): { event: string; data: string } | undefined {
  let event = 'message';
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  return data.length > 0 ? { event, data: data.join('\n') } : undefined;
}
