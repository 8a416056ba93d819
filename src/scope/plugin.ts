import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { authenticate } from '../identity/authenticate.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import {
  ScopeError,
  chainVoidReason,
  formatAuthChain,
  lineage,
  parseAuthChain,
  scopeMembers,
  scopeViewOf,
  validateAuthChain,
  type ScopeDevice,
  type ScopeModule,
  type ScopeNode,
} from '../identity/scope.ts';
import { EngineError, HubError, badRequest } from '../model/errors.ts';
import { identityKey, type AuthResult, type IdentityRef } from '../model/identity.ts';
import { clientCertificateOf } from '../protocols/http/client-cert.ts';
import { sendError } from '../protocols/http/rest-errors.ts';
import { childLog } from '../util/log.ts';
import {
  DEFAULT_SCOPE_PAGE,
  MAX_SCOPE_PAGE,
  authDepsOf,
  parsePosition,
  type FeedEvent,
  type FeedPosition,
  type IdentitySource,
  type ModuleIdentityBackend,
  type OnBehalfOfResult,
  type ScopeListResult,
} from './contract.ts';
import { ScopeFeed, type FeedEntry } from './feed.ts';
import { moduleRoutes } from './module-routes.ts';
import { chainInvalid, notInScope, scopeRefusal, unauthorized } from './refusals.ts';

/**
 * The scope API as a fastify plugin: the routes of contract.ts, served from an IdentitySource
 * (the hub's registry, or a parent gateway's scope cache).
 */

export interface ScopeApiOptions {
  source: IdentitySource;
  log?: Logger;
  /** How often an idle feed gets a `position` event (which also keeps proxies from timing out). */
  keepAliveMs?: number;
  /** Changes kept for readers that reconnect; older positions must resynchronise. */
  maxFeedEntries?: number;
  /**
   * Where module identities written on behalf of an edge device go (the hub's registry, or a
   * gateway's parent). Without it the module routes are not served.
   */
  modules?: ModuleIdentityBackend;
}

type Params = { id: string; mid: string };

interface Cursor {
  edge: string;
  deviceId: string;
  moduleId: string;
}

function encodeCursor(c: Cursor): string {
  return Buffer.from(JSON.stringify([c.edge, c.deviceId, c.moduleId])).toString('base64url');
}

function decodeCursor(text: string, edge: string): Cursor {
  try {
    const v = JSON.parse(Buffer.from(text, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 3 && v.every((s) => typeof s === 'string') && v[0] === edge) {
      return { edge: v[0], deviceId: v[1], moduleId: v[2] };
    }
  } catch {
    // refused below
  }
  throw badRequest(
    'continuationLink is not one this API gave for this edge device; start the listing again without it',
  );
}

/** Plain code-unit order, the same on every node (no locale). */
function compareKey(a: { deviceId: string; moduleId: string }, b: { deviceId: string; moduleId: string }): number {
  if (a.deviceId !== b.deviceId) return a.deviceId < b.deviceId ? -1 : 1;
  if (a.moduleId !== b.moduleId) return a.moduleId < b.moduleId ? -1 : 1;
  return 0;
}

/** The scope API as a fastify plugin over an IdentitySource. */
export async function scopeApi(app: FastifyInstance, opts: ScopeApiOptions): Promise<void> {
  const { source } = opts;
  const log = opts.log ?? childLog('scope-api');
  const keepAliveMs = opts.keepAliveMs ?? 15_000;
  const view = scopeViewOf(source);
  const feed = new ScopeFeed(source, opts.maxFeedEntries, log);
  feed.start();
  const streams = new Set<(reason: string) => void>();

  app.addHook('preClose', async () => {
    for (const end of [...streams]) end('the server is shutting down');
  });
  app.addHook('onClose', async () => feed.stop());
  // IoT Hub's error shape, but with the text kept whole: auth chains are written with ';', and
  // the only reader (ScopeSync) takes everything after the code as the text.
  app.setErrorHandler((err, req, reply) => {
    if (!(err instanceof HubError)) return sendError(reply, req, log, err);
    log.info({ method: req.method, url: req.url, status: err.status, code: err.code }, err.message);
    return reply
      .code(err.status)
      .header('content-type', 'application/json; charset=utf-8')
      .send({
        Message: `ErrorCode:${err.code};${err.message}`,
        ExceptionMessage: `Tracking ID:${req.id}-TimeStamp:${new Date().toISOString()}`,
      });
  });

  const authDeps = authDepsOf(source);

  /** Proves the caller is `{id}/$edgeHub` of an enabled edge device whose chain upwards is usable. */
  async function edgeHubCaller(req: FastifyRequest): Promise<{ edge: ScopeNode; auth: AuthResult }> {
    const { id, mid } = req.params as Params;
    if (mid !== EDGE_HUB) {
      throw new HubError(
        403,
        'IotHubUnauthorizedAccess',
        `only an edge hub (${id}/${EDGE_HUB}) may use the scope API, not module ${id}/${mid}`,
      );
    }
    const header = req.headers.authorization;
    const token = Array.isArray(header) ? header[0] : header;
    const cert = token ? undefined : clientCertificateOf(req.raw.socket);
    let auth: AuthResult;
    try {
      auth = await authenticate(
        { deviceId: id, moduleId: EDGE_HUB, sasToken: token, clientCertificate: cert },
        authDeps,
      );
    } catch (err) {
      if (err instanceof EngineError) throw unauthorized(err.message);
      throw err;
    }
    const edge = view.device(id);
    if (!edge) throw unauthorized(`device ${id} is not registered`);
    if (!edge.isEdge) throw notInScope(`device ${id} is not an IoT Edge device, so it has no scope`);
    const voided = chainVoidReason(
      view,
      lineage(view, edge).map((n) => n.deviceId),
    );
    if (voided) throw chainInvalid(`edge device ${id} cannot act: ${voided}`);
    return { edge, auth };
  }

  function bodyOf(req: FastifyRequest): Record<string, unknown> {
    const b = req.body;
    if (typeof b !== 'object' || b === null || Array.isArray(b))
      throw badRequest('the request body must be a JSON object');
    return b as Record<string, unknown>;
  }

  function chainOf(body: Record<string, unknown>): string[] {
    try {
      return parseAuthChain(body.authChain);
    } catch (err) {
      if (err instanceof ScopeError) throw badRequest(`authChain: ${err.message}`);
      throw err;
    }
  }

  // The identities in the caller's own scope, a page at a time, in (deviceId, moduleId) order.
  // The cursor is the last key sent, so identities created or deleted between pages never make
  // the listing skip one that stayed; the feed, followed from the first page's position,
  // delivers whatever changed meanwhile.
  app.post('/devices/:id/modules/:mid/devicesAndModulesInTargetDeviceScope', async (req): Promise<ScopeListResult> => {
    const { edge } = await edgeHubCaller(req);
    const body = bodyOf(req);
    const chain = chainOf(body);
    if (chain[0] !== edge.deviceId) {
      throw notInScope(
        `edge device ${edge.deviceId} may only read its own scope, but the auth chain asks for ${chain[0]}`,
      );
    }
    try {
      validateAuthChain(view, chain, edge.deviceId, { deviceId: edge.deviceId });
    } catch (err) {
      if (err instanceof ScopeError) throw scopeRefusal(err);
      throw err;
    }
    let pageSize = DEFAULT_SCOPE_PAGE;
    if (body.pageSize !== undefined && body.pageSize !== null && body.pageSize !== 0) {
      const n = body.pageSize;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_SCOPE_PAGE)
        throw badRequest(`pageSize must be a whole number from 1 to ${MAX_SCOPE_PAGE}`);
      pageSize = n;
    }
    const link = body.continuationLink;
    if (link !== undefined && link !== null && typeof link !== 'string')
      throw badRequest('continuationLink must be a string');
    const after = link ? decodeCursor(link, edge.deviceId) : undefined;

    const position = feed.position;
    const members = scopeMembers(view, edge.deviceId)
      .map((n) => n.deviceId)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const devices: ScopeDevice[] = [];
    const modules: ScopeModule[] = [];
    let last: Cursor | undefined;
    let more = false;
    outer: for (const deviceId of members) {
      if (after && deviceId < after.deviceId) continue;
      const items: Array<{ moduleId: string; put: () => void }> = [];
      const d = source.getDevice(deviceId);
      if (!d) continue;
      items.push({ moduleId: '', put: () => devices.push(d) });
      for (const m of source.listModules(deviceId)) items.push({ moduleId: m.moduleId, put: () => modules.push(m) });
      items.sort((a, b) => compareKey({ deviceId, moduleId: a.moduleId }, { deviceId, moduleId: b.moduleId }));
      for (const item of items) {
        const key = { deviceId, moduleId: item.moduleId };
        if (after && compareKey(key, after) <= 0) continue;
        if (devices.length + modules.length >= pageSize) {
          more = true;
          break outer;
        }
        item.put();
        last = { edge: edge.deviceId, ...key };
      }
    }
    log.debug({ edge: edge.deviceId, devices: devices.length, modules: modules.length, more }, 'scope page');
    return { devices, modules, continuationLink: more && last ? encodeCursor(last) : null, feed: position };
  });

  // One identity for a child gateway, checked against the chain as this node knows it. A
  // gateway that does not know the identity yet asks its own parent first.
  app.post('/devices/:id/modules/:mid/getDeviceAndModuleOnBehalfOf', async (req): Promise<OnBehalfOfResult> => {
    const { edge } = await edgeHubCaller(req);
    const body = bodyOf(req);
    const claimed = chainOf(body);
    const deviceId = body.targetDeviceId;
    const moduleRaw = body.targetModuleId;
    if (typeof deviceId !== 'string' || deviceId === '') throw badRequest('targetDeviceId is missing');
    if (moduleRaw !== undefined && moduleRaw !== null && typeof moduleRaw !== 'string')
      throw badRequest('targetModuleId must be a string');
    const moduleId = moduleRaw ? moduleRaw : undefined;
    const target: IdentityRef = moduleId ? { deviceId, moduleId } : { deviceId };
    const key = identityKey(deviceId, moduleId);
    if (claimed[0] !== key)
      throw chainInvalid(`the auth chain ${formatAuthChain(claimed)} must start with the target ${key}`);
    if (claimed[claimed.length - 1] !== edge.deviceId) {
      throw chainInvalid(
        `the auth chain ${formatAuthChain(claimed)} must end with the calling edge device ${edge.deviceId}`,
      );
    }

    let upstreamProblem: string | undefined;
    const known = () =>
      source.getDevice(deviceId) !== undefined &&
      (moduleId === undefined || source.getModule(deviceId, moduleId) !== undefined);
    if (!known() && source.fetchUpstream) {
      try {
        await source.fetchUpstream(target, claimed);
      } catch (err) {
        upstreamProblem = err instanceof Error ? err.message : String(err);
        log.warn(
          { target: key, err: upstreamProblem },
          'could not ask the parent for an identity on behalf of a child',
        );
      }
    }
    let real: string[];
    try {
      real = validateAuthChain(view, claimed, edge.deviceId, target);
    } catch (err) {
      if (err instanceof ScopeError) {
        const refusal = scopeRefusal(err);
        if (refusal.status === 404 && upstreamProblem)
          throw new HubError(
            404,
            refusal.code,
            `${refusal.message}, and the parent could not be asked (${upstreamProblem})`,
          );
        throw refusal;
      }
      throw err;
    }
    const modules: ScopeModule[] = [];
    if (moduleId !== undefined) {
      const m = source.getModule(deviceId, moduleId);
      if (!m) throw new HubError(404, 'ModuleNotFound', `module ${moduleId} does not exist on device ${deviceId}`);
      modules.push(m);
    }
    const devices = real
      .filter((k) => !k.includes('/'))
      .map((k) => source.getDevice(k))
      .filter((d): d is ScopeDevice => d !== undefined);
    log.info(
      { actor: edge.deviceId, target: key, authChain: formatAuthChain(real) },
      'identity sent on behalf of a child',
    );
    return { devices, modules, authChain: formatAuthChain(real) };
  });

  if (opts.modules) moduleRoutes(app, { source, view, log, backend: opts.modules, edgeHubCaller, bodyOf, chainOf });

  // The live feed: server-sent events from a position, or from now.
  app.get('/devices/:id/modules/:mid/deviceScopeChanges', async (req, reply: FastifyReply) => {
    const { edge, auth } = await edgeHubCaller(req);
    const sinceRaw = (req.query as Record<string, unknown>).since;
    let since: FeedPosition | undefined;
    if (sinceRaw !== undefined && sinceRaw !== '') {
      since = typeof sinceRaw === 'string' ? parsePosition(sinceRaw) : undefined;
      if (!since) throw badRequest('since must be a feed position EPOCH:SEQUENCE as given by the listing or the feed');
    }
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    openStream(res, edge.deviceId, since, auth.expiresAt);
    return reply;
  });

  function openStream(
    res: ServerResponse,
    edgeId: string,
    since: FeedPosition | undefined,
    expiresAt: number | undefined,
  ): void {
    let ended = false;
    const write = (e: FeedEvent) => res.write(`event: ${e.op}\ndata: ${JSON.stringify(e)}\n\n`);
    const send = (e: FeedEvent) => {
      if (ended) return;
      write(e);
      // A reader that does not keep up is cut off; it resumes from its position.
      if (res.writableLength > 8 * 1024 * 1024) end('the reader is too slow');
    };
    const end = (reason: string, event?: FeedEvent) => {
      if (ended) return;
      ended = true;
      write(event ?? { op: 'bye', reason });
      cleanup();
      res.end();
      log.debug({ edge: edgeId, reason }, 'scope feed closed');
    };
    const resync = (reason: string) => end(reason, { op: 'resync', reason, ...feed.position });

    const stillAllowed = (): string | undefined => {
      const d = source.getDevice(edgeId);
      if (!d) return `edge device ${edgeId} was deleted`;
      if (d.status === 'disabled') return `edge device ${edgeId} was disabled`;
      if (!source.getModule(edgeId, EDGE_HUB)) return `module ${edgeId}/${EDGE_HUB} was deleted`;
      return undefined;
    };
    const deliver = (entry: FeedEntry) => {
      if (!entry.edges.includes(edgeId)) return;
      send(feed.eventFor(entry, edgeId));
      if (entry.key === edgeId || entry.key === identityKey(edgeId, EDGE_HUB)) {
        const gone = stillAllowed();
        if (gone) end(gone);
      }
    };

    const unsubscribe = feed.subscribe(deliver);
    const keepAlive = setInterval(() => send({ op: 'position', ...feed.position }), keepAliveMs);
    keepAlive.unref();
    // The token's end is the stream's end: the reader comes back with a fresh one.
    const expiry =
      expiresAt !== undefined
        ? setTimeout(() => end('the SAS token expired'), Math.max(0, Math.min(expiresAt - Date.now(), 2 ** 31 - 1)))
        : undefined;
    expiry?.unref();
    const onGone = () => {
      ended = true;
      cleanup();
    };
    const cleanup = () => {
      unsubscribe();
      clearInterval(keepAlive);
      if (expiry) clearTimeout(expiry);
      streams.delete(end);
      res.off('close', onGone);
    };
    res.on('close', onGone);
    streams.add(end);

    if (since) {
      if (since.epoch !== feed.epoch)
        return resync(`the feed started over (epoch ${since.epoch} ended); read the scope again`);
      const missed = feed.since(since.sequence, edgeId);
      if (!missed) return resync(`changes after ${since.sequence} are no longer kept; read the scope again`);
      for (const entry of missed) deliver(entry);
    }
    send({ op: 'position', ...feed.position });
    log.debug({ edge: edgeId, since }, 'scope feed opened');
  }
}
