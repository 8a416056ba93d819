import https from 'node:https';
import { isIP } from 'node:net';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { parseConnectionString } from '../identity/connection-string.ts';
import { createSasToken } from '../identity/sas.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import { parseErrorBody } from '../protocols/http/rest-errors.ts';

/**
 * A small client for the hub's service REST API: the same paths, api-version, headers and
 * bodies the official service SDK uses, authenticated with a shared access policy token.
 */

export const SERVICE_API_VERSION = '2021-04-12';

const log = childLog('service-client');

/** A device identity as the registry returns it (fields beyond these are kept as they come). */
export interface DeviceJson {
  deviceId: string;
  generationId?: string;
  etag?: string;
  status?: 'enabled' | 'disabled';
  statusReason?: string;
  connectionState?: string;
  authentication?: {
    type?: 'sas' | 'selfSigned' | 'certificateAuthority' | 'none';
    symmetricKey?: { primaryKey?: string | null; secondaryKey?: string | null };
    x509Thumbprint?: { primaryThumbprint?: string | null; secondaryThumbprint?: string | null };
  };
  capabilities?: { iotEdge?: boolean };
  deviceScope?: string;
  parentScopes?: string[];
  [key: string]: unknown;
}

export interface ModuleJson {
  deviceId: string;
  moduleId: string;
  generationId?: string;
  etag?: string;
  managedBy?: string;
  connectionState?: string;
  authentication?: DeviceJson['authentication'];
  [key: string]: unknown;
}

export interface TwinJson {
  deviceId: string;
  moduleId?: string;
  etag?: string;
  version?: number;
  status?: string;
  tags?: Record<string, unknown>;
  properties?: { desired?: Record<string, unknown>; reported?: Record<string, unknown> };
  capabilities?: { iotEdge?: boolean };
  deviceScope?: string;
  parentScopes?: string[];
  [key: string]: unknown;
}

/** What a service connection string names. */
export interface ServiceConnection {
  /** HostName exactly as written, possibly with `:port`. */
  hostName: string;
  /** The host part of HostName: the hub's name, which signed tokens name as their audience. */
  host: string;
  port: number;
  policyName: string;
  key: string;
}

const CONNECTION_STRING_SHAPE = 'Expected HostName=...;SharedAccessKeyName=...;SharedAccessKey=...';

/** Parses `HostName=h[:port];SharedAccessKeyName=p;SharedAccessKey=k`, with clear errors. */
export function parseServiceConnectionString(text: string): ServiceConnection {
  if (typeof text !== 'string' || !text.trim()) {
    throw new UserError('the hub connection string is empty', CONNECTION_STRING_SHAPE);
  }
  const fields = parseConnectionString(text);
  if (fields.DeviceId !== undefined) {
    throw new UserError(
      'this is a device connection string, not a service one',
      `Use a shared access policy's connection string. ${CONNECTION_STRING_SHAPE}`,
    );
  }
  const missing = ['HostName', 'SharedAccessKeyName', 'SharedAccessKey'].filter((k) => !fields[k]);
  if (missing.length) {
    throw new UserError(`the hub connection string lacks ${missing.join(' and ')}`, CONNECTION_STRING_SHAPE);
  }
  const hostName = fields.HostName!;
  const { host, port } = splitHostPort(hostName);
  const key = fields.SharedAccessKey!;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(key) || Buffer.from(key, 'base64').length === 0) {
    throw new UserError('the SharedAccessKey in the hub connection string is not base64', CONNECTION_STRING_SHAPE);
  }
  return { hostName, host, port, policyName: fields.SharedAccessKeyName!, key };
}

function splitHostPort(hostName: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s/]+)(?::(\d+))?$/.exec(hostName);
  if (!m)
    throw new UserError(
      `the HostName "${hostName}" in the hub connection string is not a host name`,
      'Write it as host or host:port',
    );
  const port = m[2] === undefined ? 443 : Number(m[2]);
  if (!(port > 0 && port < 65536))
    throw new UserError(`the port in HostName "${hostName}" is out of range`, 'Use a port between 1 and 65535');
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

/** A refusal from the hub, with the IoT Hub error code it sent. */
export class ServiceError extends UserError {
  constructor(
    message: string,
    hint: string | undefined,
    readonly status: number,
    readonly code: string,
  ) {
    super(message, hint);
    this.name = 'ServiceError';
  }
}

function hintFor(status: number, code: string): string | undefined {
  switch (code) {
    case 'DeviceNotFound':
      return 'List the devices with `strata device list`';
    case 'ModuleNotFound':
      return 'List the modules with `strata device module list DEVICE`';
    case 'DeviceAlreadyExists':
      return 'Pick another id, or delete the existing device first';
    case 'ModuleAlreadyExistsOnDevice':
      return 'Pick another id, or delete the existing module first';
    case 'PreconditionFailed':
      return 'It changed since it was read; run the command again';
    case 'InvalidDeviceScope':
      return 'The scope must be that of an existing IoT Edge device';
    case 'IotHubUnauthorizedAccess':
    case 'IotHubUnauthorized':
      return status === 403
        ? 'Use a shared access policy with the needed permission (e.g. iothubowner)'
        : 'Check the SharedAccessKeyName and SharedAccessKey of the hub connection string';
    case 'ThrottlingException':
      return 'Wait a moment and try again';
  }
  if (status === 401) return 'Check the SharedAccessKeyName and SharedAccessKey of the hub connection string';
  if (status === 403) return 'Use a shared access policy with the needed permission (e.g. iothubowner)';
  if (status === 412) return 'It changed since it was read; run the command again';
  if (status === 429) return 'Wait a moment and try again';
  if (status >= 500) return 'The hub failed; see its log';
  return undefined;
}

function firstLine(s: string): string {
  const line = s.split(/\r?\n/)[0]!.trim();
  return line.length > 300 ? `${line.slice(0, 297)}...` : line;
}

const TLS_TRUST_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);

function networkError(err: NodeJS.ErrnoException, where: string): UserError {
  const code = err.code ?? '';
  if (TLS_TRUST_CODES.has(code)) {
    return new UserError(
      `the hub at ${where} presented a certificate this machine does not trust (${code})`,
      "Give the hub's CA with --ca FILE or STRATA_CA",
    );
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return new UserError(
      `the hub's certificate does not name the host in the connection string (${firstLine(err.message)})`,
      'Use the host name the hub was started with',
    );
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    return new UserError(`the hub's certificate is not valid now (${code})`, "Renew the hub's server certificate");
  }
  if (
    code === 'ECONNREFUSED' ||
    code === 'ENOTFOUND' ||
    code === 'EHOSTUNREACH' ||
    code === 'ECONNRESET' ||
    code === 'EAI_AGAIN' ||
    code === 'ETIMEDOUT'
  ) {
    return new UserError(
      `cannot reach the hub at ${where} (${code})`,
      'Is `strata hub start` running there? Check HostName in the connection string',
    );
  }
  return new UserError(`request to the hub at ${where} failed: ${firstLine(err.message)}`);
}

export interface ServiceClientOptions {
  /** PEM of the CA(s) to trust instead of the system store. */
  ca?: string | Buffer;
  /** Connect to this address instead of resolving the host (TLS still checks the host name). */
  address?: string;
  /** Per request, default 30 s. */
  timeoutMs?: number;
}

export interface ServiceResponse<T> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
}

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
}

/** `"etag"` as the SDK sends it: quoted unless it already is. */
function quoteEtag(etag: string): string {
  return etag.startsWith('"') && etag.endsWith('"') && etag.length >= 2 ? etag : `"${etag}"`;
}

const enc = encodeURIComponent;

export class ServiceClient {
  readonly connection: ServiceConnection;
  private readonly agent: https.Agent;

  constructor(
    connectionString: string,
    private readonly options: ServiceClientOptions = {},
  ) {
    this.connection = parseServiceConnectionString(connectionString);
    this.agent = new https.Agent({ keepAlive: true, ca: options.ca });
  }

  /** Closes kept-alive sockets so a CLI process can exit at once. */
  close(): void {
    this.agent.destroy();
  }

  private token(): string {
    const expiry = Math.floor(Date.now() / 1000) + 3600;
    return createSasToken(this.connection.host, this.connection.key, expiry, this.connection.policyName);
  }

  /** One call to the service API; non-2xx answers become a ServiceError. */
  request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<ServiceResponse<T>> {
    const { host, port, hostName } = this.connection;
    const sep = path.includes('?') ? '&' : '?';
    const fullPath = `${path}${sep}api-version=${SERVICE_API_VERSION}`;
    const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    const headers: Record<string, string | number> = {
      Authorization: this.token(),
      Accept: 'application/json',
      'User-Agent': 'strata-cli',
      ...opts.headers,
    };
    if (payload) {
      headers['Content-Type'] = 'application/json; charset=utf-8';
      headers['Content-Length'] = payload.length;
    }
    const where = port === 443 ? host : `${host}:${port}`;
    log.debug({ method, path }, 'service request');
    return new Promise((resolve, reject) => {
      const req = https.request(
        {
          method,
          host: this.options.address ?? host,
          port,
          path: fullPath,
          headers: { ...headers, Host: hostName },
          agent: this.agent,
          timeout: this.options.timeoutMs ?? 30_000,
          ...(isIP(host) ? {} : { servername: host }),
          // Dialling an explicit address must still check the certificate against the hub's name.
          ...(this.options.address
            ? { checkServerIdentity: (_h: string, cert: PeerCertificate) => checkServerIdentity(host, cert) }
            : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (err) => reject(networkError(err, where)));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            if (status < 200 || status >= 300) {
              const { code, text: why } = parseErrorBody(text, status);
              log.debug({ method, path, status, code }, 'service request refused');
              reject(
                new ServiceError(`${firstLine(why)} (${code}, HTTP ${status})`, hintFor(status, code), status, code),
              );
              return;
            }
            let body: unknown;
            if (text.trim()) {
              try {
                body = JSON.parse(text);
              } catch {
                reject(
                  new UserError(
                    `the hub answered ${method} ${path} with something that is not JSON`,
                    'Is HostName pointing at a Strata or IoT hub?',
                  ),
                );
                return;
              }
            }
            resolve({ status, headers: res.headers, body: body as T });
          });
        },
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      req.on('error', (err) =>
        reject(err instanceof UserError ? err : networkError(err as NodeJS.ErrnoException, where)),
      );
      req.end(payload);
    });
  }

  // --- devices ------------------------------------------------------------------------------

  async getDevice(deviceId: string): Promise<DeviceJson> {
    return (await this.request<DeviceJson>('GET', `/devices/${enc(deviceId)}`)).body;
  }

  /** Creates; the hub fills in keys left empty. */
  async createDevice(device: DeviceJson): Promise<DeviceJson> {
    return (await this.request<DeviceJson>('PUT', `/devices/${enc(device.deviceId)}`, { body: device })).body;
  }

  /** Replaces the identity if its etag still matches (`*` to overwrite unconditionally). */
  async updateDevice(device: DeviceJson, etag = device.etag ?? '*'): Promise<DeviceJson> {
    return (
      await this.request<DeviceJson>('PUT', `/devices/${enc(device.deviceId)}`, {
        body: device,
        headers: { 'If-Match': quoteEtag(etag) },
      })
    ).body;
  }

  /**
   * Deletes the identity. A Strata hub names the children the deletion left without a parent
   * (header `x-strata-orphaned-children`); `orphaned` is undefined when the hub does not say.
   */
  async deleteDevice(deviceId: string, etag = '*'): Promise<{ orphaned?: string[] }> {
    const res = await this.request('DELETE', `/devices/${enc(deviceId)}`, { headers: { 'If-Match': quoteEtag(etag) } });
    const header = res.headers['x-strata-orphaned-children'];
    if (typeof header !== 'string') return {};
    return {
      orphaned: header
        .split(',')
        .filter(Boolean)
        .map((s) => decodeURIComponent(s)),
    };
  }

  async listDevices(): Promise<DeviceJson[]> {
    return (await this.request<DeviceJson[]>('GET', '/devices')).body ?? [];
  }

  /** Runs a query and follows continuation tokens to the end. */
  async query<T = TwinJson>(sql: string, pageSize = 1000): Promise<T[]> {
    const out: T[] = [];
    let continuation: string | undefined;
    const seen = new Set<string>();
    for (;;) {
      const headers: Record<string, string> = { 'x-ms-max-item-count': String(pageSize) };
      if (continuation) headers['x-ms-continuation'] = continuation;
      const res = await this.request<T[]>('POST', '/devices/query', { body: { query: sql }, headers });
      if (!Array.isArray(res.body)) throw new UserError('the hub answered a query with something that is not a list');
      out.push(...res.body);
      const next = res.headers['x-ms-continuation'];
      continuation = Array.isArray(next) ? next[0] : next;
      if (!continuation) return out;
      if (seen.has(continuation))
        throw new UserError('the hub repeated a query continuation token; stopping instead of looping');
      seen.add(continuation);
    }
  }

  // --- twins --------------------------------------------------------------------------------

  private twinPath(deviceId: string, moduleId?: string): string {
    return moduleId === undefined ? `/twins/${enc(deviceId)}` : `/twins/${enc(deviceId)}/modules/${enc(moduleId)}`;
  }

  async getTwin(deviceId: string, moduleId?: string): Promise<TwinJson> {
    return (await this.request<TwinJson>('GET', this.twinPath(deviceId, moduleId))).body;
  }

  /** Merges a patch (`{tags, properties: {desired}}`) into the twin. */
  async updateTwin(deviceId: string, patch: object, etag = '*', moduleId?: string): Promise<TwinJson> {
    return (
      await this.request<TwinJson>('PATCH', this.twinPath(deviceId, moduleId), {
        body: patch,
        headers: { 'If-Match': quoteEtag(etag) },
      })
    ).body;
  }

  // --- modules ------------------------------------------------------------------------------

  private modulePath(deviceId: string, moduleId: string): string {
    return `/devices/${enc(deviceId)}/modules/${enc(moduleId)}`;
  }

  async createModule(module: ModuleJson): Promise<ModuleJson> {
    return (await this.request<ModuleJson>('PUT', this.modulePath(module.deviceId, module.moduleId), { body: module }))
      .body;
  }

  async getModule(deviceId: string, moduleId: string): Promise<ModuleJson> {
    return (await this.request<ModuleJson>('GET', this.modulePath(deviceId, moduleId))).body;
  }

  async listModules(deviceId: string): Promise<ModuleJson[]> {
    return (await this.request<ModuleJson[]>('GET', `/devices/${enc(deviceId)}/modules`)).body ?? [];
  }

  async deleteModule(deviceId: string, moduleId: string, etag = '*'): Promise<void> {
    await this.request('DELETE', this.modulePath(deviceId, moduleId), { headers: { 'If-Match': quoteEtag(etag) } });
  }

  // --- deployments ----------------------------------------------------------------------------

  /** Applies a deployment to one edge device (`modulesContent`: desired properties per module). */
  async applyConfigurationContent(deviceId: string, content: object): Promise<void> {
    await this.request('POST', `/devices/${enc(deviceId)}/applyConfigurationContent`, { body: content });
  }
}
