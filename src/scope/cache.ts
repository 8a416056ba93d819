import { EventEmitter } from 'node:events';
import type { X509Certificate } from 'node:crypto';
import type { FeedPosition, IdentitySource } from './contract.ts';
import {
  MAX_EDGE_LAYERS,
  buildAuthChain,
  chainVoidReason,
  formatAuthChain,
  lineage,
  parentScopeOfNode,
  toScopeNode,
  type ScopeDevice,
  type ScopeModule,
  type ScopeView,
} from '../identity/scope.ts';
import type { IdentityRef } from '../model/identity.ts';
import { openNodeDb, type NodeDb } from '../store/db.ts';
import { UserError } from '../util/errors.ts';
import { FrozenLookups } from '../util/frozen-lookups.ts';
import { checkScopeDevice, checkScopeModule, sameRecord } from './records.ts';

/**
 * A gateway's durable copy of the identities in its scope, synced from its parent, so that
 * downstream devices authenticate while the parent is unreachable. One SQLite file (WAL,
 * synchronous=FULL): a change is on disk before its event fires, and the feed position is
 * written in the same transaction as the changes it covers.
 */

/**
 * What happened to an identity. `disabled` is a status change to disabled; re-enabling is an
 * `updated`. An event for a device also concerns its modules (they go with it), and a disabled
 * or deleted edge device voids the chains of everything below it (see authChainOf).
 */
export type ScopeChangeKind = 'created' | 'updated' | 'deleted' | 'disabled';

export interface ScopeCacheEvents {
  identity: [deviceId: string, moduleId: string | undefined, kind: ScopeChangeKind];
}

export type ScopeCheck =
  | { ok: true; authChain: string }
  | { ok: false; reason: 'not-found' | 'out-of-scope' | 'void'; message: string };

const SCHEMA: readonly string[] = [
  `CREATE TABLE scope_devices (
     device_id TEXT PRIMARY KEY,
     is_edge INTEGER NOT NULL,
     device_scope TEXT NOT NULL,
     parent_scope TEXT NOT NULL,
     doc TEXT NOT NULL
   );
   CREATE INDEX scope_devices_scope ON scope_devices (device_scope);
   CREATE INDEX scope_devices_parent ON scope_devices (parent_scope);
   CREATE TABLE scope_modules (
     device_id TEXT NOT NULL,
     module_id TEXT NOT NULL,
     doc TEXT NOT NULL,
     PRIMARY KEY (device_id, module_id)
   );
   CREATE TABLE scope_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);`,
];

type Pending = [deviceId: string, moduleId: string | undefined, kind: ScopeChangeKind];

export class ScopeCache extends EventEmitter<ScopeCacheEvents> {
  private readonly q: ReturnType<typeof prepare>;
  private pending: Pending[] | undefined;
  private closed = false;

  private constructor(
    private readonly db: NodeDb,
    readonly edgeDeviceId: string,
  ) {
    super();
    this.q = prepare(db);
  }

  /**
   * Opens (or creates) the cache of `edgeDeviceId` in the SQLite file `path`. A file made for
   * another edge device is refused: its identities belong to another scope.
   */
  static open(path: string, opts: { edgeDeviceId: string }): ScopeCache {
    if (!opts.edgeDeviceId) throw new UserError('the scope cache needs the edge device id it belongs to');
    let db: NodeDb;
    try {
      db = openNodeDb(path);
      db.migrate('scope-cache', SCHEMA);
    } catch (err) {
      throw new UserError(
        `cannot open the scope cache ${path}: ${(err as Error).message}`,
        'Check that the directory is writable and the file is not damaged',
      );
    }
    const cache = new ScopeCache(db, opts.edgeDeviceId);
    const owner = cache.meta('edge_device_id');
    if (owner === undefined) cache.setMeta('edge_device_id', opts.edgeDeviceId);
    else if (owner !== opts.edgeDeviceId) {
      db.close();
      throw new UserError(
        `the scope cache ${path} belongs to edge device ${owner}, not ${opts.edgeDeviceId}`,
        'Give each gateway its own data directory, or delete the file so it is synced again',
      );
    }
    return cache;
  }

  get path(): string {
    return this.db.path;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }

  // ---------------------------------------------------------------------------------------
  // Reads

  // Single lookups are answered from memory once read: every identity a gateway relays is
  // checked (and its auth chain built) when its links open, a hundred lookups and parses each.
  // Any write empties the memory.
  private readonly known = new FrozenLookups<ScopeDevice | ScopeModule>();

  private remembered<T extends ScopeDevice | ScopeModule>(key: string, read: () => unknown): T | undefined {
    return this.known.get(key, () => parse<T>(read())) as T | undefined;
  }

  getDevice(deviceId: string): ScopeDevice | undefined {
    return this.remembered<ScopeDevice>(`d\0${deviceId}`, () => this.q.getDevice.get(deviceId));
  }

  getModule(deviceId: string, moduleId: string): ScopeModule | undefined {
    return this.remembered<ScopeModule>(`m\0${deviceId}\0${moduleId}`, () => this.q.getModule.get(deviceId, moduleId));
  }

  has(deviceId: string, moduleId?: string): boolean {
    return (moduleId === undefined ? this.getDevice(deviceId) : this.getModule(deviceId, moduleId)) !== undefined;
  }

  listModules(deviceId: string): ScopeModule[] {
    return this.q.listModules.all(deviceId).map((r) => parse<ScopeModule>(r)!);
  }

  allDevices(): ScopeDevice[] {
    return this.q.allDevices.all().map((r) => parse<ScopeDevice>(r)!);
  }

  all(): { devices: ScopeDevice[]; modules: ScopeModule[] } {
    return { devices: this.allDevices(), modules: this.q.allModules.all().map((r) => parse<ScopeModule>(r)!) };
  }

  edgeByScope(scope: string): ScopeDevice | undefined {
    if (!scope) return undefined;
    return this.remembered<ScopeDevice>(`e\0${scope}`, () => this.q.edgeByScope.get(scope));
  }

  childrenOfScope(scope: string): ScopeDevice[] {
    if (!scope) return [];
    return this.q.children.all(scope).map((r) => parse<ScopeDevice>(r)!);
  }

  view(): ScopeView {
    return {
      device: (id) => {
        const d = this.getDevice(id);
        return d ? toScopeNode(d) : undefined;
      },
      ownerOf: (scope) => {
        const d = this.edgeByScope(scope);
        return d ? toScopeNode(d) : undefined;
      },
      childrenOf: (scope) => this.childrenOfScope(scope).map(toScopeNode),
    };
  }

  /**
   * Whether this gateway may let the identity in: known, below this gateway (or the gateway
   * itself and its modules), and with no disabled edge device on its chain. The identity's
   * own credentials and status are authenticate()'s business.
   */
  check(deviceId: string, moduleId?: string): ScopeCheck {
    const who = moduleId === undefined ? `device ${deviceId}` : `module ${deviceId}/${moduleId}`;
    if (!this.has(deviceId) || (moduleId !== undefined && !this.has(deviceId, moduleId))) {
      return {
        ok: false,
        reason: 'not-found',
        message: `${who} is not in this gateway's scope (not known to edge device ${this.edgeDeviceId})`,
      };
    }
    const view = this.view();
    const target: IdentityRef = moduleId === undefined ? { deviceId } : { deviceId, moduleId };
    const chain = buildAuthChain(view, target, this.edgeDeviceId);
    if (!chain) {
      const line = lineage(view, view.device(deviceId)!);
      const why = line.some((n) => n.deviceId === this.edgeDeviceId)
        ? `more than ${MAX_EDGE_LAYERS} edge layers below edge device ${this.edgeDeviceId}`
        : `not below edge device ${this.edgeDeviceId}`;
      return { ok: false, reason: 'out-of-scope', message: `${who} is not in this gateway's scope (${why})` };
    }
    const voided = chainVoidReason(view, chain);
    if (voided) return { ok: false, reason: 'void', message: `${who} cannot connect: ${voided}` };
    return { ok: true, authChain: formatAuthChain(chain) };
  }

  /** `target;...;thisEdge`, or undefined when the identity is unknown, out of scope or its chain is void. */
  authChainOf(deviceId: string, moduleId?: string): string | undefined {
    const c = this.check(deviceId, moduleId);
    return c.ok ? c.authChain : undefined;
  }

  /** Where the last applied change came from in the parent's feed. */
  position(): FeedPosition | undefined {
    const epoch = this.meta('feed_epoch');
    const seq = this.meta('feed_sequence');
    if (epoch === undefined || seq === undefined) return undefined;
    return { epoch, sequence: Number(seq) };
  }

  // ---------------------------------------------------------------------------------------
  // Writes (each in one transaction; events fire after it commits)

  setPosition(p: FeedPosition): void {
    const cur = this.position();
    if (cur && cur.epoch === p.epoch && cur.sequence === p.sequence) return;
    this.write(() => this.putPosition(p));
  }

  /** Forgets the feed position, so the next sync reads the whole scope. */
  forgetPosition(): void {
    this.write(() => {
      this.q.deleteMeta.run('feed_epoch');
      this.q.deleteMeta.run('feed_sequence');
    });
  }

  upsertDevice(d: ScopeDevice, position?: FeedPosition): void {
    checkScopeDevice(d);
    this.write(() => {
      this.putDevice(d);
      if (position) this.putPosition(position);
    });
  }

  upsertModule(m: ScopeModule, position?: FeedPosition): void {
    checkScopeModule(m);
    this.write(() => {
      this.putModule(m);
      if (position) this.putPosition(position);
    });
  }

  /** Removes a device (with its modules) or one module. */
  remove(deviceId: string, moduleId?: string, position?: FeedPosition): void {
    this.write(() => {
      if (moduleId === undefined) this.removeDevice(deviceId);
      else this.removeModule(deviceId, moduleId);
      if (position) this.putPosition(position);
    });
  }

  /** Stores identities learnt one at a time (on-behalf-of answers), devices first. */
  upsertMany(devices: ScopeDevice[], modules: ScopeModule[]): void {
    devices.forEach((d) => checkScopeDevice(d));
    modules.forEach((m) => checkScopeModule(m));
    this.write(() => {
      for (const d of devices) this.putDevice(d);
      for (const m of modules) this.putModule(m);
    });
  }

  /**
   * Makes the cache exactly this listing (a full sync): new and changed identities are
   * stored, missing ones removed, and the position set, in one transaction. Returns what
   * changed.
   */
  replaceAll(
    devices: ScopeDevice[],
    modules: ScopeModule[],
    position: FeedPosition,
  ): { created: number; updated: number; deleted: number } {
    devices.forEach((d) => checkScopeDevice(d));
    modules.forEach((m) => checkScopeModule(m));
    const keepDevices = new Set(devices.map((d) => d.deviceId));
    const keepModules = new Set(modules.map((m) => `${m.deviceId}/${m.moduleId}`));
    return this.write(() => {
      for (const m of this.q.allModules.all().map((r) => parse<ScopeModule>(r)!)) {
        if (!keepModules.has(`${m.deviceId}/${m.moduleId}`)) this.removeModule(m.deviceId, m.moduleId);
      }
      for (const d of this.allDevices()) if (!keepDevices.has(d.deviceId)) this.removeDevice(d.deviceId);
      for (const d of devices) this.putDevice(d);
      for (const m of modules) this.putModule(m);
      this.putPosition(position);
      const counts = { created: 0, updated: 0, deleted: 0 };
      for (const [, , kind] of this.pending ?? []) {
        if (kind === 'created') counts.created++;
        else if (kind === 'deleted') counts.deleted++;
        else counts.updated++;
      }
      return counts;
    });
  }

  /** The cache as an IdentitySource, so a gateway serves the scope API to its own children. */
  identitySource(o: {
    hostNames: readonly string[];
    fetchUpstream?: IdentitySource['fetchUpstream'];
    trustedCas?: () => X509Certificate[];
  }): IdentitySource {
    return {
      hostNames: o.hostNames,
      getDevice: (id) => this.getDevice(id),
      getModule: (d, m) => this.getModule(d, m),
      listModules: (d) => this.listModules(d),
      allDevices: () => this.allDevices(),
      edgeByScope: (s) => this.edgeByScope(s),
      childrenOfScope: (s) => this.childrenOfScope(s),
      onIdentity: (fn) => {
        const l = (d: string, m: string | undefined) => fn(d, m);
        this.on('identity', l);
        return () => this.off('identity', l);
      },
      trustedCas: o.trustedCas,
      fetchUpstream: o.fetchUpstream,
    };
  }

  /**
   * Runs `fn`'s changes in one transaction, their events fired once it committed: the feed's
   * events of one read, so that a hundred devices created upstream cost one fsync here, not a
   * hundred on the event loop.
   */
  batch<T>(fn: () => T): T {
    return this.write(fn);
  }

  // ---------------------------------------------------------------------------------------
  // Internals

  private write<T>(fn: () => T): T {
    if (this.closed) throw new Error(`the scope cache ${this.db.path} is closed`);
    if (this.pending) return this.db.transaction(fn);
    this.pending = [];
    let events: Pending[];
    let result: T;
    this.known.clear();
    try {
      result = this.db.transaction(fn);
      events = this.pending;
    } finally {
      this.pending = undefined;
      // Also what was read inside the transaction: it may have been rolled back.
      this.known.clear();
    }
    for (const [d, m, kind] of events) this.emit('identity', d, m, kind);
    return result;
  }

  private putDevice(d: ScopeDevice): void {
    const old = this.getDevice(d.deviceId);
    const doc = JSON.stringify(d);
    if (old && sameRecord(old, d)) return;
    const node = toScopeNode(d);
    this.q.putDevice.run(d.deviceId, node.isEdge ? 1 : 0, node.deviceScope, parentScopeOfNode(node), doc);
    const kind: ScopeChangeKind = !old
      ? 'created'
      : old.status !== 'disabled' && d.status === 'disabled'
        ? 'disabled'
        : 'updated';
    this.pending?.push([d.deviceId, undefined, kind]);
  }

  private putModule(m: ScopeModule): void {
    const old = this.getModule(m.deviceId, m.moduleId);
    const doc = JSON.stringify(m);
    if (old && sameRecord(old, m)) return;
    this.q.putModule.run(m.deviceId, m.moduleId, doc);
    const kind: ScopeChangeKind = !old
      ? 'created'
      : old.status !== 'disabled' && m.status === 'disabled'
        ? 'disabled'
        : 'updated';
    this.pending?.push([m.deviceId, m.moduleId, kind]);
  }

  private removeDevice(deviceId: string): void {
    for (const m of this.listModules(deviceId)) this.removeModule(deviceId, m.moduleId);
    if (this.q.deleteDevice.run(deviceId).changes > 0) this.pending?.push([deviceId, undefined, 'deleted']);
  }

  private removeModule(deviceId: string, moduleId: string): void {
    if (this.q.deleteModule.run(deviceId, moduleId).changes > 0) this.pending?.push([deviceId, moduleId, 'deleted']);
  }

  private putPosition(p: FeedPosition): void {
    this.q.setMeta.run('feed_epoch', p.epoch);
    this.q.setMeta.run('feed_sequence', String(p.sequence));
  }

  private meta(key: string): string | undefined {
    return (this.q.getMeta.get(key) as { value: string } | undefined)?.value;
  }

  private setMeta(key: string, value: string): void {
    this.q.setMeta.run(key, value);
  }
}

function parse<T>(row: unknown): T | undefined {
  return row ? (JSON.parse((row as { doc: string }).doc) as T) : undefined;
}

function prepare(db: NodeDb) {
  const s = db.sqlite;
  return {
    getDevice: s.prepare('SELECT doc FROM scope_devices WHERE device_id = ?'),
    putDevice: s.prepare(
      `INSERT INTO scope_devices (device_id, is_edge, device_scope, parent_scope, doc) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT(device_id) DO UPDATE SET is_edge = excluded.is_edge, device_scope = excluded.device_scope,
         parent_scope = excluded.parent_scope, doc = excluded.doc`,
    ),
    deleteDevice: s.prepare('DELETE FROM scope_devices WHERE device_id = ?'),
    allDevices: s.prepare('SELECT doc FROM scope_devices ORDER BY device_id'),
    edgeByScope: s.prepare('SELECT doc FROM scope_devices WHERE device_scope = ? AND is_edge = 1 LIMIT 1'),
    children: s.prepare('SELECT doc FROM scope_devices WHERE parent_scope = ? ORDER BY device_id'),
    getModule: s.prepare('SELECT doc FROM scope_modules WHERE device_id = ? AND module_id = ?'),
    putModule: s.prepare(
      'INSERT INTO scope_modules (device_id, module_id, doc) VALUES (?, ?, ?) ON CONFLICT(device_id, module_id) DO UPDATE SET doc = excluded.doc',
    ),
    deleteModule: s.prepare('DELETE FROM scope_modules WHERE device_id = ? AND module_id = ?'),
    listModules: s.prepare('SELECT doc FROM scope_modules WHERE device_id = ? ORDER BY module_id'),
    allModules: s.prepare('SELECT doc FROM scope_modules ORDER BY device_id, module_id'),
    getMeta: s.prepare('SELECT value FROM scope_meta WHERE key = ?'),
    setMeta: s.prepare(
      'INSERT INTO scope_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
    ),
    deleteMeta: s.prepare('DELETE FROM scope_meta WHERE key = ?'),
  };
}
