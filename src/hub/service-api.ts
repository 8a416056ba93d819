import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { authenticatePolicyToken, requireRight, type AccessPolicy, type Right } from '../identity/policies.ts';
import { hasDeviceCredential, type OwnModuleReader } from '../scope/own-modules.ts';
import { badRequest, deviceNotFound, moduleNotFound } from '../model/errors.ts';
import { QueryError, runQuery } from './query.ts';
import type { Registry } from './registry.ts';
import { JSON_MAX_DEPTH, nestsDeeperThan, tooDeepMessage } from '../util/json-depth.ts';
import { sendError } from '../protocols/http/rest-errors.ts';

/** What a route needs from the caller's policy. */
interface Access {
  rights: Right[];
  what: string;
  /** An IoT Edge device may also read its own modules with its own credential (own-modules.ts). */
  ownDevice?: boolean;
}

const REGISTRY_READ: Access = { rights: ['RegistryRead'], what: 'read the identity registry' };
const REGISTRY_WRITE: Access = { rights: ['RegistryWrite'], what: 'change the identity registry' };
const OWN_MODULE_READ: Access = { ...REGISTRY_READ, ownDevice: true };
const TWIN_READ: Access = { rights: ['RegistryRead', 'ServiceConnect'], what: 'read twins' };
const TWIN_WRITE: Access = { rights: ['ServiceConnect', 'RegistryWrite'], what: 'change twins' };

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Service API routes name the rights they need; routes without it skip policy auth. */
    access?: Access;
  }
  interface FastifyRequest {
    /** The shared access policy a service API request proved. */
    policy?: AccessPolicy;
  }
}

const DEFAULT_PAGE = 1000;
const MAX_PAGE = 10_000;
const MAX_LIST = 1000;

type Params = { id: string; mid: string };

/**
 * The service REST API the `azure-iothub` Registry talks to: devices, modules, twins, bulk
 * operations, queries and edge deployments, authenticated with shared access policy tokens.
 */
export async function serviceApi(
  app: FastifyInstance,
  opts: { registry: Registry; log: Logger; ownModules?: OwnModuleReader },
): Promise<void> {
  const { registry, log, ownModules } = opts;

  app.decorateRequest('policy', undefined);

  app.addHook('onRequest', async (req) => {
    const access = req.routeOptions.config.access;
    if (!access) return;
    // Checked by the handler, against the device the path names.
    if (access.ownDevice && ownModules && hasDeviceCredential(req)) return;
    const { policy } = authenticatePolicyToken(req.headers.authorization, {
      hostnames: [registry.hostname],
      policy: (name) => registry.getPolicy(name),
      resourcePath: req.url.split('?')[0],
    });
    requireRight(policy, access.rights, access.what);
    req.policy = policy;
  });

  app.setErrorHandler((err, req, reply) => sendError(reply, req, log, err));

  // Registry records and deployments are cloned and serialised recursively; twins check their
  // own sections against IoT Hub's tighter limit with IoT Hub's message (twin-doc.ts).
  app.addHook('preValidation', async (req) => {
    if (req.routeOptions.config.access === TWIN_WRITE) return;
    if (nestsDeeperThan(req.body, JSON_MAX_DEPTH)) throw badRequest(tooDeepMessage('the request body', JSON_MAX_DEPTH));
  });

  const route = (
    method: 'GET' | 'PUT' | 'PATCH' | 'POST' | 'DELETE',
    url: string,
    access: Access,
    handler: (req: FastifyRequest, reply: FastifyReply) => unknown,
  ) => app.route({ method, url, config: { access }, handler: async (req, reply) => handler(req, reply) });

  // Devices
  // The SDK's list() asks for `/devices/` (an empty id appended), others `/devices`.
  route('GET', '/devices', REGISTRY_READ, (req) => registry.listDevices(listLimit(req)));
  route('GET', '/devices/', REGISTRY_READ, (req) => registry.listDevices(listLimit(req)));
  route('GET', '/devices/:id', REGISTRY_READ, (req, reply) => {
    const { id } = req.params as Params;
    const d = registry.getDevice(id);
    if (!d) throw deviceNotFound(id);
    return withEtag(reply, d.etag, d);
  });
  route('PUT', '/devices/:id', REGISTRY_WRITE, (req, reply) => {
    const { id } = req.params as Params;
    const d = registry.putDevice(id, req.body, ifMatch(req));
    return withEtag(reply, d.etag, d);
  });
  route('DELETE', '/devices/:id', REGISTRY_WRITE, (req, reply) => {
    const { id } = req.params as Params;
    const { orphaned } = registry.deleteDevice(id, ifMatch(req));
    if (orphaned.length > 0) {
      log.info(
        { deviceId: id, orphaned },
        `deleted edge device ${id}; its children ${orphaned.join(', ')} no longer have a parent`,
      );
      reply.header('x-strata-orphaned-children', orphaned.map(encodeURIComponent).join(','));
    }
    return reply.code(204).send();
  });
  route('POST', '/devices', REGISTRY_WRITE, (req) => registry.bulk(req.body));
  route('GET', '/statistics/devices', REGISTRY_READ, () => registry.statistics());

  // Modules
  route('GET', '/devices/:id/modules', REGISTRY_READ, (req) => registry.listModules((req.params as Params).id));
  route('GET', '/devices/:id/modules/:mid', OWN_MODULE_READ, (req, reply) => {
    const { id, mid } = req.params as Params;
    if (!req.policy && ownModules) return ownModules(req, id, mid);
    const m = registry.getModule(id, mid);
    if (!m) throw registry.getDevice(id) ? moduleNotFound(id, mid) : deviceNotFound(id);
    return withEtag(reply, m.etag, m);
  });
  route('PUT', '/devices/:id/modules/:mid', REGISTRY_WRITE, (req, reply) => {
    const { id, mid } = req.params as Params;
    const m = registry.putModule(id, mid, req.body, ifMatch(req));
    return withEtag(reply, m.etag, m);
  });
  route('DELETE', '/devices/:id/modules/:mid', REGISTRY_WRITE, (req, reply) => {
    const { id, mid } = req.params as Params;
    registry.deleteModule(id, mid, ifMatch(req));
    return reply.code(204).send();
  });

  // Twins
  const getTwin = (id: string, mid: string | undefined, reply: FastifyReply) => {
    const t = registry.getTwin(id, mid);
    if (!t) throw mid !== undefined && registry.getDevice(id) ? moduleNotFound(id, mid) : deviceNotFound(id);
    return withEtag(reply, t.etag, t);
  };
  route('GET', '/twins/:id', TWIN_READ, (req, reply) => getTwin((req.params as Params).id, undefined, reply));
  route('GET', '/twins/:id/modules/:mid', TWIN_READ, (req, reply) =>
    getTwin((req.params as Params).id, (req.params as Params).mid, reply),
  );
  for (const [method, mode] of [
    ['PATCH', 'patch'],
    ['PUT', 'replace'],
  ] as const) {
    route(method, '/twins/:id', TWIN_WRITE, (req, reply) => {
      const t = registry.updateTwin((req.params as Params).id, undefined, req.body, ifMatch(req), mode);
      return withEtag(reply, t.etag, t);
    });
    route(method, '/twins/:id/modules/:mid', TWIN_WRITE, (req, reply) => {
      const { id, mid } = req.params as Params;
      const t = registry.updateTwin(id, mid, req.body, ifMatch(req), mode);
      return withEtag(reply, t.etag, t);
    });
  }

  // Query, with paging: the continuation token is the next offset, bound to the query text.
  route('POST', '/devices/query', TWIN_READ, (req, reply) => {
    const body = req.body as { query?: unknown } | undefined;
    if (!body || typeof body.query !== 'string' || !body.query.trim())
      throw badRequest('the body must be {"query": "SELECT ..."}');
    const sql = body.query;
    const pageSize = pageSizeOf(req.headers['x-ms-max-item-count']);
    const offset = continuationOffset(req.headers['x-ms-continuation'], sql);
    let rows: object[];
    try {
      rows = runQuery(sql, registry.querySource());
    } catch (err) {
      if (err instanceof QueryError) throw badRequest(`invalid query: ${err.message}`);
      throw err;
    }
    const page = rows.slice(offset, offset + pageSize);
    if (offset + pageSize < rows.length) reply.header('x-ms-continuation', continuationToken(sql, offset + pageSize));
    reply.header('x-ms-item-type', isTwinQuery(sql) ? 'Twin' : 'JSON');
    return page;
  });

  // Edge deployments
  route('POST', '/devices/:id/applyConfigurationContent', TWIN_WRITE, (req, reply) => {
    registry.applyConfigurationContent((req.params as Params).id, req.body);
    return reply.code(204).send();
  });
}

function withEtag<T>(reply: FastifyReply, etag: string, body: T): T {
  reply.header('etag', `"${etag}"`);
  return body;
}

function ifMatch(req: FastifyRequest): string | undefined {
  const v = req.headers['if-match'];
  return Array.isArray(v) ? v[0] : v;
}

function listLimit(req: FastifyRequest): number {
  const top = (req.query as Record<string, string | undefined>).top;
  if (top === undefined) return MAX_LIST;
  const n = Number(top);
  if (!Number.isInteger(n) || n < 1 || n > MAX_LIST)
    throw badRequest(`top must be a whole number from 1 to ${MAX_LIST}`);
  return n;
}

function pageSizeOf(header: string | string[] | undefined): number {
  if (header === undefined) return DEFAULT_PAGE;
  const n = Number(Array.isArray(header) ? header[0] : header);
  if (!Number.isInteger(n) || n < 1) throw badRequest('x-ms-max-item-count must be a positive whole number');
  return Math.min(n, MAX_PAGE);
}

function queryKey(sql: string): string {
  return createHash('sha256').update(sql).digest('base64url').slice(0, 12);
}

function continuationToken(sql: string, offset: number): string {
  return Buffer.from(JSON.stringify({ q: queryKey(sql), o: offset })).toString('base64url');
}

function continuationOffset(header: string | string[] | undefined, sql: string): number {
  const token = Array.isArray(header) ? header[0] : header;
  if (!token) return 0;
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { q?: unknown; o?: unknown };
    if (parsed.q === queryKey(sql) && typeof parsed.o === 'number' && Number.isInteger(parsed.o) && parsed.o >= 0)
      return parsed.o;
  } catch {
    // fall through to the refusal below
  }
  throw badRequest('x-ms-continuation is not a continuation token of this query');
}

function isTwinQuery(sql: string): boolean {
  return /^\s*select\s+(top\s+\d+\s+)?\*\s/i.test(sql);
}
