import { randomBytes, type X509Certificate } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { EngineError } from '../model/errors.ts';
import type { AuthResult } from '../model/identity.ts';
import { authenticate, type AuthenticateDeps } from '../identity/authenticate.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import { ScopeError, chainVoidReason, formatAuthChain, lineage, parseAuthChain, parseIdentityKey, scopeMembers, scopeOwners, toScopeNode, scopeViewOf, validateAuthChain, type ScopeDevice, type ScopeModule, type ScopeNode, type ScopeView } from '../identity/scope.ts';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import { clientCertificateOf } from '../protocols/http/client-cert.ts';
import type { StoredDevice, StoredModule } from '../store/registry-store.ts';
import { childLog } from '../util/log.ts';
import { HubError, badRequest } from '../model/errors.ts';
import { authenticationJson, type Registry } from './registry.ts';
import { sendError } from './service-api.ts';
import { FrozenLookups } from '../util/frozen-lookups.ts';

/**
 * The scope API a parent serves to the edge hubs below it: the identities in the caller's
 * scope (paged), one identity on behalf of an auth chain, and a live change feed of the scope.
 * The hub serves it from its registry; a parent gateway serves it, unchanged, from its scope
 * cache. Callers authenticate as `{edge}/$edgeHub`.
 *
 * Paths follow the original's nested scope API where it has one:
 *   POST /devices/{edge}/modules/$edgeHub/devicesAndModulesInTargetDeviceScope
 *        {authChain, pageSize?, continuationLink?} -> {devices, modules, continuationLink, feed}
 *   POST /devices/{edge}/modules/$edgeHub/getDeviceAndModuleOnBehalfOf
 *        {authChain, targetDeviceId, targetModuleId?} -> {devices, modules, authChain}
 *   GET  /devices/{edge}/modules/$edgeHub/deviceScopeChanges?since={epoch}:{sequence}
 *        text/event-stream of `upsert`, `remove`, `position`, `resync` and `bye` events.
 */

export const SCOPE_API_VERSION = '2020-06-30-preview';
export const DEFAULT_SCOPE_PAGE = 500;
export const MAX_SCOPE_PAGE = 1000;

export function scopePaths(edgeDeviceId: string) {
  const base = `/devices/${encodeURIComponent(edgeDeviceId)}/modules/${EDGE_HUB}`;
  return {
    list: `${base}/devicesAndModulesInTargetDeviceScope`,
    onBehalfOf: `${base}/getDeviceAndModuleOnBehalfOf`,
    changes: `${base}/deviceScopeChanges`,
  };
}

/** Where a reader is in a change feed. The epoch changes whenever the feed starts over (a restart). */
export interface FeedPosition {
  epoch: string;
  sequence: number;
}

export function formatPosition(p: FeedPosition): string {
  return `${p.epoch}:${p.sequence}`;
}

export function parsePosition(text: string): FeedPosition | undefined {
  const m = /^([A-Za-z0-9_-]{1,64}):(\d{1,15})$/.exec(text.trim());
  return m ? { epoch: m[1]!, sequence: Number(m[2]) } : undefined;
}

export interface ScopeListRequest {
  authChain: string;
  pageSize?: number;
  continuationLink?: string | null;
}

export interface ScopeListResult {
  devices: ScopeDevice[];
  modules: ScopeModule[];
  /** Pass back to get the next page; null on the last one. */
  continuationLink: string | null;
  /** The feed position this page was read at: follow the feed from the first page's. */
  feed: FeedPosition;
}

export interface OnBehalfOfRequest {
  authChain: string;
  targetDeviceId: string;
  targetModuleId?: string | null;
}

export interface OnBehalfOfResult {
  /** The target device and the edge devices between it and the caller. */
  devices: ScopeDevice[];
  modules: ScopeModule[];
  /** The target's chain as the server knows it, ending with the caller. */
  authChain: string;
}

/** Feed events, as carried in the `data:` line (the SSE event name is `op`). */
export type FeedEvent =
  | { op: 'upsert'; sequence: number; device: ScopeDevice }
  | { op: 'upsert'; sequence: number; module: ScopeModule }
  | { op: 'remove'; sequence: number; deviceId: string; moduleId?: string }
  | { op: 'position'; sequence: number; epoch: string }
  | { op: 'resync'; reason: string; epoch: string; sequence: number }
  | { op: 'bye'; reason: string };

/**
 * Where a scope API gets its identities: the hub's registry, or a gateway's scope cache.
 * Everything is synchronous except fetchUpstream, which only gateways have.
 */
export interface IdentitySource {
  /** Host names a `$edgeHub` SAS token may name as its audience host. */
  readonly hostNames: readonly string[];
  getDevice(deviceId: string): ScopeDevice | undefined;
  getModule(deviceId: string, moduleId: string): ScopeModule | undefined;
  listModules(deviceId: string): ScopeModule[];
  allDevices(): Iterable<ScopeDevice>;
  /** The edge device whose own scope is `scope`. */
  edgeByScope(scope: string): ScopeDevice | undefined;
  /** Devices whose parent is the edge device owning `scope`. */
  childrenOfScope(scope: string): ScopeDevice[];
  /** Called after every committed change of a device or module; returns the unsubscribe. */
  onIdentity(listener: (deviceId: string, moduleId: string | undefined) => void): () => void;
  /** CA certificates for `certificateAuthority` edge devices. */
  trustedCas?(): X509Certificate[];
  /**
   * A gateway asks its own parent for an identity it does not know yet, on behalf of a child
   * (`claimedChain` is the chain the child presented). Resolves once stored (or found absent).
   */
  fetchUpstream?(target: IdentityRef, claimedChain: readonly string[]): Promise<void>;
}


// -------------------------------------------------------------------------------------------
// The change feed

interface FeedEntry {
  sequence: number;
  key: string;
  /** Edge devices that had or have the identity in their scope. */
  edges: string[];
}

/**
 * A numbered log of identity changes, each tagged with the edge devices whose scope it
 * touches (before and after the change, so an identity leaving a scope is announced to the
 * edge that loses it). Readers get the current state of each identity, never a stale copy,
 * so replaying any suffix of the log converges. Kept in memory: a restart starts a new epoch
 * and readers resynchronise, which is also the safe answer to anything lost in a crash.
 */
export class ScopeFeed {
  readonly epoch = randomBytes(6).toString('base64url');
  private seq = 0;
  private entries: FeedEntry[] = [];
  private readonly owners = new Map<string, string[]>();
  private readonly moduleKeys = new Map<string, Set<string>>();
  private readonly listeners = new Set<(e: FeedEntry) => void>();
  private unsubscribe?: () => void;
  private readonly view: ScopeView;

  constructor(private readonly source: IdentitySource, private readonly maxEntries = 10_000, private readonly log?: Logger) {
    this.view = scopeViewOf(source);
  }

  start(): void {
    for (const d of this.source.allDevices()) {
      const owners = scopeOwners(this.view, toScopeNode(d));
      this.setOwners(d.deviceId, owners);
      for (const m of this.source.listModules(d.deviceId)) this.setOwners(identityKey(d.deviceId, m.moduleId), owners);
    }
    this.unsubscribe = this.source.onIdentity((d, m) => {
      try {
        this.changed(d, m);
      } catch (err) {
        this.log?.error({ err, deviceId: d, moduleId: m }, 'scope feed could not record an identity change');
      }
    });
  }

  stop(): void {
    this.unsubscribe?.();
    this.listeners.clear();
  }

  get position(): FeedPosition {
    return { epoch: this.epoch, sequence: this.seq };
  }

  /**
   * The entries after `sequence` that concern `edge`, the latest per identity (each is read as
   * the identity's current state, so earlier ones add nothing), or undefined when they are no
   * longer all kept.
   */
  since(sequence: number, edge: string): FeedEntry[] | undefined {
    const oldest = this.entries[0]?.sequence ?? this.seq + 1;
    if (sequence > this.seq || sequence < oldest - 1) return undefined;
    const latest = new Map<string, FeedEntry>();
    for (const e of this.entries) if (e.sequence > sequence && e.edges.includes(edge)) latest.set(e.key, e);
    return [...latest.values()].sort((a, b) => a.sequence - b.sequence);
  }

  subscribe(fn: (e: FeedEntry) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** What an entry means to `edge` now: the identity as it is, or its removal from the scope. */
  eventFor(entry: FeedEntry, edge: string): FeedEvent {
    const ref = parseIdentityKey(entry.key);
    const remove: FeedEvent = { op: 'remove', sequence: entry.sequence, deviceId: ref.deviceId, ...(ref.moduleId ? { moduleId: ref.moduleId } : {}) };
    if (!(this.owners.get(entry.key) ?? []).includes(edge)) return remove;
    if (ref.moduleId !== undefined) {
      const m = this.source.getModule(ref.deviceId, ref.moduleId);
      return m ? { op: 'upsert', sequence: entry.sequence, module: m } : remove;
    }
    const d = this.source.getDevice(ref.deviceId);
    return d ? { op: 'upsert', sequence: entry.sequence, device: d } : remove;
  }

  private setOwners(key: string, owners: string[]): void {
    const ref = parseIdentityKey(key);
    if (owners.length === 0) {
      this.owners.delete(key);
      if (ref.moduleId !== undefined) this.moduleKeys.get(ref.deviceId)?.delete(key);
      return;
    }
    this.owners.set(key, owners);
    if (ref.moduleId !== undefined) {
      let set = this.moduleKeys.get(ref.deviceId);
      if (!set) this.moduleKeys.set(ref.deviceId, (set = new Set()));
      set.add(key);
    }
  }

  /** Recomputes the owners of one identity; appends an entry when forced or when they changed. */
  private refresh(key: string, force: boolean): string[] {
    const ref = parseIdentityKey(key);
    const old = this.owners.get(key) ?? [];
    let now: string[] = [];
    const device = this.source.getDevice(ref.deviceId);
    const exists = device !== undefined && (ref.moduleId === undefined || this.source.getModule(ref.deviceId, ref.moduleId) !== undefined);
    if (exists) now = scopeOwners(this.view, toScopeNode(device));
    this.setOwners(key, now);
    if (force) this.append(key, [...new Set([...old, ...now])]);
    else {
      // Carried along by a move: only the edge devices that gained or lost it need to hear.
      const changed = [...old.filter((e) => !now.includes(e)), ...now.filter((e) => !old.includes(e))];
      if (changed.length > 0) this.append(key, changed);
    }
    return now;
  }

  private changed(deviceId: string, moduleId: string | undefined): void {
    if (moduleId !== undefined) {
      this.refresh(identityKey(deviceId, moduleId), true);
      return;
    }
    const before = this.owners.get(deviceId) ?? [];
    const after = this.refresh(deviceId, true);
    const moved = before.length !== after.length || before.some((e, i) => e !== after[i]);
    if (!moved) return;
    // The device changed place: its modules and, for an edge device, its whole subtree move too.
    const keys = new Set<string>();
    const addModules = (d: string) => {
      for (const k of this.moduleKeys.get(d) ?? []) keys.add(k);
      for (const m of this.source.listModules(d)) keys.add(identityKey(d, m.moduleId));
    };
    addModules(deviceId);
    if (before.includes(deviceId) || after.includes(deviceId)) {
      for (const [key, owners] of this.owners) if (owners.includes(deviceId) && key !== deviceId) keys.add(key);
      for (const n of scopeMembers(this.view, deviceId)) {
        if (n.deviceId === deviceId) continue;
        keys.add(n.deviceId);
        addModules(n.deviceId);
      }
    }
    // Devices before their modules, so a reader never sees a module of a device it lacks.
    const ordered = [...keys].sort((a, b) => Number(a.includes('/')) - Number(b.includes('/')));
    for (const key of ordered) this.refresh(key, false);
  }

  private append(key: string, edges: string[]): void {
    if (edges.length === 0) return;
    const entry: FeedEntry = { sequence: ++this.seq, key, edges };
    this.entries.push(entry);
    // Trimmed in steps, not on every append.
    if (this.entries.length > this.maxEntries + Math.max(1, Math.floor(this.maxEntries / 10))) {
      this.entries.splice(0, this.entries.length - this.maxEntries);
    }
    for (const fn of [...this.listeners]) {
      try {
        fn(entry);
      } catch (err) {
        this.log?.error({ err }, 'scope feed reader failed');
      }
    }
  }
}

// -------------------------------------------------------------------------------------------
// The HTTP API

export interface ScopeApiOptions {
  source: IdentitySource;
  log?: Logger;
  /** How often an idle feed gets a `position` event (which also keeps proxies from timing out). */
  keepAliveMs?: number;
  /** Changes kept for readers that reconnect; older positions must resynchronise. */
  maxFeedEntries?: number;
}

const notInScope = (message: string) => new HubError(403, 'DeviceNotInScope', message);
const chainInvalid = (message: string) => new HubError(403, 'AuthChainInvalid', message);
const unauthorized = (message: string) => new HubError(401, 'IotHubUnauthorizedAccess', message);

/** Maps a refusal of the scope rules onto the status and code a caller can act on. */
function scopeRefusal(err: ScopeError): HubError {
  switch (err.code) {
    case 'not-found':
      return new HubError(404, 'DeviceNotFound', err.message);
    case 'out-of-scope':
      return notInScope(err.message);
    case 'bad-chain':
      return badRequest(err.message);
    default:
      return chainInvalid(err.message);
  }
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
  throw badRequest('continuationLink is not one this API gave for this edge device; start the listing again without it');
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
      .send({ Message: `ErrorCode:${err.code};${err.message}`, ExceptionMessage: `Tracking ID:${req.id}-TimeStamp:${new Date().toISOString()}` });
  });

  const authDeps = authDepsOf(source);

  /** Proves the caller is `{id}/$edgeHub` of an enabled edge device whose chain upwards is usable. */
  async function edgeHubCaller(req: FastifyRequest): Promise<{ edge: ScopeNode; auth: AuthResult }> {
    const { id, mid } = req.params as Params;
    if (mid !== EDGE_HUB) {
      throw new HubError(403, 'IotHubUnauthorizedAccess', `only an edge hub (${id}/${EDGE_HUB}) may use the scope API, not module ${id}/${mid}`);
    }
    const header = req.headers.authorization;
    const token = Array.isArray(header) ? header[0] : header;
    const cert = token ? undefined : clientCertificateOf(req.raw.socket);
    let auth: AuthResult;
    try {
      auth = await authenticate({ deviceId: id, moduleId: EDGE_HUB, sasToken: token, clientCertificate: cert }, authDeps);
    } catch (err) {
      if (err instanceof EngineError) throw unauthorized(err.message);
      throw err;
    }
    const edge = view.device(id);
    if (!edge) throw unauthorized(`device ${id} is not registered`);
    if (!edge.isEdge) throw notInScope(`device ${id} is not an IoT Edge device, so it has no scope`);
    const voided = chainVoidReason(view, lineage(view, edge).map((n) => n.deviceId));
    if (voided) throw chainInvalid(`edge device ${id} cannot act: ${voided}`);
    return { edge, auth };
  }

  function bodyOf(req: FastifyRequest): Record<string, unknown> {
    const b = req.body;
    if (typeof b !== 'object' || b === null || Array.isArray(b)) throw badRequest('the request body must be a JSON object');
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
      throw notInScope(`edge device ${edge.deviceId} may only read its own scope, but the auth chain asks for ${chain[0]}`);
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
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_SCOPE_PAGE) throw badRequest(`pageSize must be a whole number from 1 to ${MAX_SCOPE_PAGE}`);
      pageSize = n;
    }
    const link = body.continuationLink;
    if (link !== undefined && link !== null && typeof link !== 'string') throw badRequest('continuationLink must be a string');
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
    if (moduleRaw !== undefined && moduleRaw !== null && typeof moduleRaw !== 'string') throw badRequest('targetModuleId must be a string');
    const moduleId = moduleRaw ? moduleRaw : undefined;
    const target: IdentityRef = moduleId ? { deviceId, moduleId } : { deviceId };
    const key = identityKey(deviceId, moduleId);
    if (claimed[0] !== key) throw chainInvalid(`the auth chain ${formatAuthChain(claimed)} must start with the target ${key}`);
    if (claimed[claimed.length - 1] !== edge.deviceId) {
      throw chainInvalid(`the auth chain ${formatAuthChain(claimed)} must end with the calling edge device ${edge.deviceId}`);
    }

    let upstreamProblem: string | undefined;
    const known = () => source.getDevice(deviceId) !== undefined && (moduleId === undefined || source.getModule(deviceId, moduleId) !== undefined);
    if (!known() && source.fetchUpstream) {
      try {
        await source.fetchUpstream(target, claimed);
      } catch (err) {
        upstreamProblem = err instanceof Error ? err.message : String(err);
        log.warn({ target: key, err: upstreamProblem }, 'could not ask the parent for an identity on behalf of a child');
      }
    }
    let real: string[];
    try {
      real = validateAuthChain(view, claimed, edge.deviceId, target);
    } catch (err) {
      if (err instanceof ScopeError) {
        const refusal = scopeRefusal(err);
        if (refusal.status === 404 && upstreamProblem) throw new HubError(404, refusal.code, `${refusal.message}, and the parent could not be asked (${upstreamProblem})`);
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
    log.info({ actor: edge.deviceId, target: key, authChain: formatAuthChain(real) }, 'identity sent on behalf of a child');
    return { devices, modules, authChain: formatAuthChain(real) };
  });

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

  function openStream(res: ServerResponse, edgeId: string, since: FeedPosition | undefined, expiresAt: number | undefined): void {
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
    const expiry = expiresAt !== undefined ? setTimeout(() => end('the SAS token expired'), Math.max(0, Math.min(expiresAt - Date.now(), 2 ** 31 - 1))) : undefined;
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
      if (since.epoch !== feed.epoch) return resync(`the feed started over (epoch ${since.epoch} ended); read the scope again`);
      const missed = feed.since(since.sequence, edgeId);
      if (!missed) return resync(`changes after ${since.sequence} are no longer kept; read the scope again`);
      for (const entry of missed) deliver(entry);
    }
    send({ op: 'position', ...feed.position });
    log.debug({ edge: edgeId, since }, 'scope feed opened');
  }
}

// -------------------------------------------------------------------------------------------
// The hub's side

function scopeDeviceOf(d: StoredDevice): ScopeDevice {
  return {
    deviceId: d.deviceId,
    generationId: d.generationId,
    etag: d.etag,
    status: d.status,
    statusReason: d.statusReason,
    authentication: authenticationJson(d.authentication),
    capabilities: { iotEdge: d.iotEdge },
    deviceScope: d.deviceScope,
    parentScopes: [...d.parentScopes],
  };
}

function scopeModuleOf(m: StoredModule): ScopeModule {
  return {
    deviceId: m.deviceId,
    moduleId: m.moduleId,
    generationId: m.generationId,
    etag: m.etag,
    managedBy: m.managedBy,
    authentication: authenticationJson(m.authentication),
  };
}

/**
 * The hub's registry as an IdentitySource (reads the store directly: no twins, no runtime state).
 * Single lookups are kept in memory, frozen, until the registry announces any identity change
 * (and for a second at most, should a change ever go unannounced): every identity a gateway
 * relays has its auth chain checked when its links open, each check a handful of lookups.
 */
export function registryIdentitySource(registry: Registry, opts: { trustedCas?: () => X509Certificate[] } = {}): IdentitySource {
  const store = registry.store;
  const known = new FrozenLookups<ScopeDevice | ScopeModule>();
  let knownSince = 0;
  registry.on('identity', () => known.clear());
  const remembered = <T extends ScopeDevice | ScopeModule>(key: string, read: () => T | undefined): T | undefined => {
    const now = Date.now();
    if (now - knownSince > KNOWN_FOR_MS) {
      known.clear();
      knownSince = now;
    }
    return known.get(key, read) as T | undefined;
  };
  return {
    hostNames: [registry.hostname],
    getDevice: (id) =>
      remembered(`d\0${id}`, () => {
        const d = store.getDevice(id);
        return d ? scopeDeviceOf(d) : undefined;
      }),
    getModule: (d, m) =>
      remembered(`m\0${d}\0${m}`, () => {
        const mod = store.getModule(d, m);
        return mod ? scopeModuleOf(mod) : undefined;
      }),
    listModules: (d) => store.listModules(d).map(scopeModuleOf),
    allDevices: () => store.allDevices().map(scopeDeviceOf),
    edgeByScope: (scope) =>
      remembered(`e\0${scope}`, () => {
        const d = store.edgeByScope(scope);
        return d ? scopeDeviceOf(d) : undefined;
      }),
    childrenOfScope: (scope) => store.childrenOfScope(scope).map(scopeDeviceOf),
    onIdentity: (fn) => {
      const listener = (d: string, m: string | undefined) => fn(d, m ?? undefined);
      registry.on('identity', listener);
      return () => registry.off('identity', listener);
    },
    trustedCas: opts.trustedCas,
  };
}

/** Authentication against what an IdentitySource knows (the hub's registry, a gateway's scope cache). */
export function authDepsOf(source: IdentitySource): AuthenticateDeps {
  return {
    getDevice: (d) => source.getDevice(d),
    getModule: (d, m) => source.getModule(d, m),
    get hostNames() {
      return [...source.hostNames];
    },
    trustedCas: () => source.trustedCas?.() ?? [],
  };
}

/** The longest a lookup is kept, announced changes aside. */
const KNOWN_FOR_MS = 1000;
