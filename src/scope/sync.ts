import { EventEmitter } from 'node:events';
import https from 'node:https';
import type { Logger } from 'pino';
import { identityKey, type IdentityRef } from '../model/identity.ts';
import type { ScopeDevice, ScopeModule } from '../identity/scope.ts';
import { childLog } from '../util/log.ts';
import type { ScopeCache } from './cache.ts';
import {
  SCOPE_API_VERSION,
  formatPosition,
  scopePaths,
  type FeedEvent,
  type FeedPosition,
  type OnBehalfOfResult,
  type ScopeListResult,
} from './contract.ts';
import {
  MAX_BODY,
  ScopeParentClient,
  ScopeSyncError,
  parseSseBlock,
  readBody,
  type ScopeParentOptions,
} from './parent-client.ts';
import { ScopeRecordError } from './records.ts';

export { ScopeSyncError } from './parent-client.ts';

/**
 * The gateway's side of the scope API: reads the whole scope from the parent on start and
 * whenever the parent says to, then follows the parent's change feed, resuming from the last
 * change it applied. Authenticates as the gateway's `$edgeHub` (a SAS token signed with the
 * module's or the edge device's key). While the parent is unreachable the cache keeps
 * answering; reconnects back off exponentially with jitter.
 */

export interface ScopeSyncOptions extends ScopeParentOptions {
  cache: ScopeCache;
  pageSize?: number;
  /** Reconnect delays: from initialMs doubling up to maxMs, each with jitter. Default 1 s .. 30 s. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** The feed counts as dead after this long without a byte (the parent speaks every 15 s). Default 45 s. */
  idleTimeoutMs?: number;
  log?: Logger;
}

export type ScopeSyncState = 'idle' | 'syncing' | 'live' | 'backoff' | 'stopped';

export interface ScopeSyncEvents {
  state: [state: ScopeSyncState];
  /** A full listing was applied. */
  synced: [summary: { devices: number; modules: number; created: number; updated: number; deleted: number }];
  /** Something went wrong; the sync keeps retrying. */
  failure: [err: ScopeSyncError];
}

export type OnDemandResult =
  | { status: 'found'; device: ScopeDevice; module?: ScopeModule; authChain: string }
  | { status: 'not-found' | 'not-in-scope'; message: string };

interface StreamOutcome {
  live: boolean;
  resync: boolean;
  reason: string;
}

export class ScopeSync extends EventEmitter<ScopeSyncEvents> {
  readonly stats = { fullSyncs: 0, feedEvents: 0, connects: 0 };
  private current: ScopeSyncState = 'idle';
  private stopped = true;
  private loop?: Promise<void>;
  private wake?: () => void;
  private needFullSync = false;
  private readonly client: ScopeParentClient;
  private readonly log: Logger;
  private readonly paths: ReturnType<typeof scopePaths>;
  private readonly inflight = new Map<string, Promise<OnDemandResult>>();
  private firstSync?: { promise: Promise<void>; resolve: () => void };
  private syncing?: Promise<{ devices: number; modules: number }>;

  constructor(private readonly o: ScopeSyncOptions) {
    super();
    if (o.cache.edgeDeviceId !== o.edge.deviceId) {
      throw new ScopeSyncError(
        `the scope cache belongs to edge device ${o.cache.edgeDeviceId}, not ${o.edge.deviceId}`,
      );
    }
    this.client = new ScopeParentClient(o);
    this.log = o.log ?? childLog('scope-sync');
    this.paths = scopePaths(o.edge.deviceId);
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.firstSync = { promise, resolve };
  }

  get state(): ScopeSyncState {
    return this.current;
  }

  /** Starts syncing in the background; the cache answers from disk meanwhile. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop = this.run();
  }

  /**
   * Resolves once the cache is current with the parent (a full listing applied, or the feed
   * resumed). Rejects after `timeoutMs` if that has not happened.
   */
  async ready(timeoutMs = 30_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.firstSync!.promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new ScopeSyncError(
                  `the scope of ${this.o.edge.deviceId} was not synced from ${this.client.where()} within ${timeoutMs} ms`,
                ),
              ),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.client.abort();
    this.wake?.();
    await this.loop;
    this.setState('stopped');
    this.client.close();
  }

  /** Signs with another key from now on. */
  setEdgeKey(key: string): void {
    this.client.setEdgeKey(key);
  }

  /**
   * The HTTP client to the parent's scope API this sync uses (same key, same connections),
   * for the other requests a gateway makes there: module identities (module-identities.ts).
   */
  get parentClient(): ScopeParentClient {
    return this.client;
  }

  /** An adapter for IdentitySource.fetchUpstream (a parent gateway asking on behalf of a child). */
  async fetchUpstream(target: IdentityRef, claimedChain: readonly string[]): Promise<void> {
    await this.onDemand(target.deviceId, target.moduleId, claimedChain);
  }

  /**
   * Asks the parent for one identity this gateway does not know (yet), e.g. a device created
   * a moment ago that tries to connect before the feed told us. The answer is stored in the
   * cache; `not-found` and `not-in-scope` remove any stale copy. Throws ScopeSyncError when the
   * parent cannot be asked (the caller then goes by the cache).
   *
   * `claimedChain` is the chain a child gateway presented (ending with that child); this
   * gateway adds itself. Without it the chain claimed is `target;thisEdge`.
   */
  onDemand(deviceId: string, moduleId?: string, claimedChain?: readonly string[]): Promise<OnDemandResult> {
    const key = identityKey(deviceId, moduleId);
    const chain = claimedChain && claimedChain.length > 0 ? [...claimedChain] : [key];
    if (chain[chain.length - 1] !== this.o.edge.deviceId) chain.push(this.o.edge.deviceId);
    const flightKey = `${key}|${chain.join(';')}`;
    const existing = this.inflight.get(flightKey);
    if (existing) return existing;
    const p = this.lookup(deviceId, moduleId, chain).finally(() => this.inflight.delete(flightKey));
    this.inflight.set(flightKey, p);
    return p;
  }

  private async lookup(deviceId: string, moduleId: string | undefined, chain: string[]): Promise<OnDemandResult> {
    const key = identityKey(deviceId, moduleId);
    let res: OnBehalfOfResult;
    try {
      res = await this.client.post<OnBehalfOfResult>(this.paths.onBehalfOf, {
        authChain: chain.join(';'),
        targetDeviceId: deviceId,
        ...(moduleId !== undefined ? { targetModuleId: moduleId } : {}),
      });
    } catch (err) {
      if (
        err instanceof ScopeSyncError &&
        (err.status === 404 || (err.status === 403 && err.code === 'DeviceNotInScope'))
      ) {
        const gone =
          err.status === 404 && err.code === 'ModuleNotFound'
            ? { deviceId, moduleId }
            : { deviceId, moduleId: err.status === 404 ? undefined : moduleId };
        if (this.o.cache.has(gone.deviceId, gone.moduleId)) {
          this.log.info(
            { target: key, why: err.message },
            'the parent no longer has this identity in scope; removed it from the cache',
          );
          this.o.cache.remove(gone.deviceId, gone.moduleId);
        }
        return { status: err.status === 404 ? 'not-found' : 'not-in-scope', message: err.message };
      }
      throw err;
    }
    if (!res || !Array.isArray(res.devices) || !Array.isArray(res.modules)) {
      throw new ScopeSyncError(
        `the parent ${this.client.where()} answered an on-behalf-of lookup with something that is not a scope result`,
      );
    }
    try {
      this.o.cache.upsertMany(res.devices, res.modules);
    } catch (err) {
      if (err instanceof ScopeRecordError)
        throw new ScopeSyncError(`the parent ${this.client.where()} sent a bad identity record: ${err.message}`);
      throw err;
    }
    const device = res.devices.find((d) => d.deviceId === deviceId);
    const module =
      moduleId === undefined ? undefined : res.modules.find((m) => m.deviceId === deviceId && m.moduleId === moduleId);
    if (!device || (moduleId !== undefined && !module)) {
      return { status: 'not-found', message: `the parent ${this.client.where()} did not return ${key}` };
    }
    this.log.info({ target: key, authChain: res.authChain }, 'identity fetched from the parent on demand');
    return { status: 'found', device, ...(module ? { module } : {}), authChain: res.authChain };
  }

  /** Reads the whole scope and makes the cache exactly that. */
  fullSync(): Promise<{ devices: number; modules: number }> {
    if (!this.syncing) {
      this.syncing = this.readAll().finally(() => (this.syncing = undefined));
    }
    return this.syncing;
  }

  private async readAll(): Promise<{ devices: number; modules: number }> {
    const devices: ScopeDevice[] = [];
    const modules: ScopeModule[] = [];
    let position: FeedPosition | undefined;
    let link: string | null = null;
    const seen = new Set<string>();
    for (;;) {
      const page: ScopeListResult = await this.client.post<ScopeListResult>(this.paths.list, {
        authChain: this.o.edge.deviceId,
        pageSize: this.o.pageSize ?? 500,
        ...(link ? { continuationLink: link } : {}),
      });
      if (!page || !Array.isArray(page.devices) || !Array.isArray(page.modules) || !page.feed) {
        throw new ScopeSyncError(
          `the parent ${this.client.where()} answered the scope listing with something that is not a scope page`,
        );
      }
      // Changes made while the pages are read come from the feed, followed from here.
      position ??= page.feed;
      devices.push(...page.devices);
      modules.push(...page.modules);
      link = page.continuationLink ?? null;
      if (!link) break;
      if (seen.has(link))
        throw new ScopeSyncError(
          `the parent ${this.client.where()} repeated a continuation link; stopping instead of looping`,
        );
      seen.add(link);
    }
    let changes;
    try {
      changes = this.o.cache.replaceAll(devices, modules, position);
    } catch (err) {
      if (err instanceof ScopeRecordError)
        throw new ScopeSyncError(`the parent ${this.client.where()} sent a bad identity record: ${err.message}`);
      throw err;
    }
    this.stats.fullSyncs++;
    this.needFullSync = false;
    const summary = { devices: devices.length, modules: modules.length, ...changes };
    this.log.info(summary, `scope of ${this.o.edge.deviceId} synced from ${this.client.where()}`);
    this.emit('synced', summary);
    this.firstSync?.resolve();
    return { devices: devices.length, modules: modules.length };
  }

  // ---------------------------------------------------------------------------------------

  private setState(s: ScopeSyncState): void {
    if (this.current === s) return;
    this.current = s;
    this.emit('state', s);
  }

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      try {
        if (this.needFullSync || !this.o.cache.position()) {
          this.setState('syncing');
          await this.fullSync();
        }
        if (this.stopped) break;
        const outcome = await this.follow();
        if (outcome.live) attempt = 0;
        if (outcome.resync) {
          this.log.info({ reason: outcome.reason }, 'the parent asked for a full resync of the scope');
          this.needFullSync = true;
          continue;
        }
        if (!this.stopped) this.log.info({ reason: outcome.reason }, 'scope feed ended; reconnecting');
      } catch (err) {
        if (this.stopped) break;
        const e =
          err instanceof ScopeSyncError
            ? err
            : new ScopeSyncError(`scope sync with ${this.client.where()} failed: ${(err as Error).message}`);
        const level = e.status === 401 || e.status === 403 ? 'error' : 'warn';
        this.log[level]({ status: e.status, code: e.code, err: e.message, attempt }, 'scope sync failed; retrying');
        this.emit('failure', e);
      }
      if (this.stopped) break;
      this.setState('backoff');
      await this.sleep(this.delay(attempt++));
    }
  }

  private delay(attempt: number): number {
    const initial = this.o.backoff?.initialMs ?? 1000;
    const max = this.o.backoff?.maxMs ?? 30_000;
    const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
    // Half fixed, half random: spread out the gateways that lost their parent together.
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    }).then(() => {
      this.wake = undefined;
    });
  }

  /** Follows the feed from the cache's position until it ends. */
  private follow(): Promise<StreamOutcome> {
    const position = this.o.cache.position()!;
    const path = `${this.paths.changes}?since=${encodeURIComponent(formatPosition(position))}&api-version=${SCOPE_API_VERSION}`;
    return new Promise<StreamOutcome>((resolve, reject) => {
      let settled = false;
      const outcome: StreamOutcome = { live: false, resync: false, reason: 'the parent closed the feed' };
      const finish = (err?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(idle);
        this.client.active.delete(req);
        if (err && !outcome.live) reject(err);
        else {
          if (err) outcome.reason = err.message;
          resolve(outcome);
        }
      };
      const idleMs = this.o.idleTimeoutMs ?? 45_000;
      let idle: NodeJS.Timeout | undefined;
      const touch = () => {
        clearTimeout(idle);
        idle = setTimeout(
          () =>
            req.destroy(new ScopeSyncError(`the scope feed from ${this.client.where()} was silent for ${idleMs} ms`)),
          idleMs,
        );
      };
      const req = https.request(
        {
          ...this.client.requestOptions('GET', path),
          headers: { ...this.client.headers(), Accept: 'text/event-stream' },
          agent: false,
        },
        (res) => {
          if (res.statusCode !== 200) {
            readBody(res)
              .then((text) => finish(this.client.refusal(res.statusCode ?? 0, text, 'the scope feed')))
              .catch((err: Error) => finish(this.client.networkError(err)));
            return;
          }
          this.stats.connects++;
          touch();
          res.setEncoding('utf8');
          let buffer = '';
          res.on('data', (chunk: string) => {
            touch();
            buffer += chunk;
            // The events of one read go into one transaction; what one of them breaks ends the
            // stream with a resync, which fetches everything again.
            let failed: Error | undefined;
            let applied = false;
            try {
              applied = this.o.cache.batch(() => {
                let cut: number;
                while ((cut = buffer.indexOf('\n\n')) >= 0) {
                  const block = buffer.slice(0, cut);
                  buffer = buffer.slice(cut + 2);
                  const event = parseSseBlock(block);
                  if (!event) continue;
                  // An event that cannot be applied undoes the whole read (the resync fetches it all again).
                  this.handle(event, position.epoch, outcome);
                  if (outcome.resync) return false;
                }
                return true;
              });
            } catch (err) {
              // Nothing of this read was applied (a bad event, or the commit failed on a full disk).
              failed = err as Error;
            }
            if (failed) {
              this.log.error({ err: failed.message }, 'a scope feed event could not be applied; resyncing');
              outcome.resync = true;
              outcome.reason = failed.message;
            }
            if (!applied) {
              req.destroy();
              return;
            }
            if (buffer.length > MAX_BODY) req.destroy(new ScopeSyncError('a scope feed event is too large'));
          });
          res.on('end', () => finish());
          res.on('close', () => finish());
          res.on('error', (err) => finish(this.client.networkError(err)));
        },
      );
      this.client.active.add(req);
      req.on('error', (err) => finish(err instanceof ScopeSyncError ? err : this.client.networkError(err)));
      req.on('close', () => finish());
      req.end();
    });
  }

  private handle(text: { event: string; data: string }, epoch: string, outcome: StreamOutcome): void {
    let e: FeedEvent;
    try {
      e = JSON.parse(text.data) as FeedEvent;
    } catch {
      throw new ScopeSyncError(`the scope feed sent an event that is not JSON (${text.event})`);
    }
    this.stats.feedEvents++;
    const cache = this.o.cache;
    switch (e.op) {
      case 'position':
        if (e.epoch !== epoch) {
          outcome.resync = true;
          outcome.reason = 'the feed epoch changed';
          return;
        }
        cache.setPosition({ epoch, sequence: e.sequence });
        if (!outcome.live) {
          outcome.live = true;
          this.setState('live');
          this.firstSync?.resolve();
          this.log.info(
            { position: formatPosition({ epoch, sequence: e.sequence }) },
            `following the scope feed of ${this.client.where()}`,
          );
        }
        return;
      case 'upsert':
        if ('device' in e) cache.upsertDevice(e.device, { epoch, sequence: e.sequence });
        else if ('module' in e) cache.upsertModule(e.module, { epoch, sequence: e.sequence });
        return;
      case 'remove':
        cache.remove(e.deviceId, e.moduleId, { epoch, sequence: e.sequence });
        return;
      case 'resync':
        outcome.resync = true;
        outcome.reason = e.reason;
        return;
      case 'bye':
        outcome.reason = e.reason;
        return;
      default:
        this.log.debug({ event: text.event }, 'unknown scope feed event ignored');
    }
  }
}
