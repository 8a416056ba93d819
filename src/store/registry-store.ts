import type { NodeDb } from './db.ts';
import type { AccessPolicy, Right } from '../identity/policies.ts';

/** How a device or module proves who it is. */
export type AuthType = 'sas' | 'selfSigned' | 'certificateAuthority' | 'none';

export interface StoredAuthentication {
  type: AuthType;
  primaryKey?: string;
  secondaryKey?: string;
  primaryThumbprint?: string;
  secondaryThumbprint?: string;
}

/** Per-property update times, shaped like the properties they describe. */
export interface MetaNode {
  $lastUpdated: string;
  $lastUpdatedVersion?: number;
  [key: string]: MetaNode | string | number | undefined;
}

export interface StoredProperties {
  values: Record<string, unknown>;
  meta: MetaNode;
  version: number;
}

export interface StoredTwin {
  /** +1 on every change of tags, desired or reported; the twin etag is derived from it. */
  version: number;
  tags: Record<string, unknown>;
  desired: StoredProperties;
  reported: StoredProperties;
  modelId: string;
}

export interface StoredDevice {
  deviceId: string;
  generationId: string;
  etag: string;
  status: 'enabled' | 'disabled';
  statusReason: string | null;
  statusUpdatedTime: string;
  authentication: StoredAuthentication;
  iotEdge: boolean;
  deviceScope: string;
  parentScopes: string[];
  twin: StoredTwin;
}

export interface StoredModule {
  deviceId: string;
  moduleId: string;
  generationId: string;
  etag: string;
  managedBy: string;
  authentication: StoredAuthentication;
  twin: StoredTwin;
}

/** The registry's persistence; small on purpose so another backend can stand in later. */
export interface RegistryStore {
  transaction<T>(fn: () => T): T;
  getDevice(deviceId: string): StoredDevice | undefined;
  putDevice(device: StoredDevice): void;
  /** Also removes the device's modules. */
  deleteDevice(deviceId: string): void;
  listDevices(limit?: number): StoredDevice[];
  countDevices(): { total: number; enabled: number; disabled: number };
  /** The edge device owning `scope`. */
  edgeByScope(scope: string): StoredDevice | undefined;
  /** Devices whose parent is the edge device owning `scope`. */
  childrenOfScope(scope: string): StoredDevice[];
  getModule(deviceId: string, moduleId: string): StoredModule | undefined;
  putModule(module: StoredModule): void;
  deleteModule(deviceId: string, moduleId: string): void;
  listModules(deviceId: string): StoredModule[];
  allModules(): StoredModule[];
  allDevices(): StoredDevice[];
  /** A number that grows with every call, across restarts (etags are made from it). */
  nextSequence(): number;
  getPolicy(keyName: string): AccessPolicy | undefined;
  listPolicies(): AccessPolicy[];
  putPolicy(policy: AccessPolicy): void;
  getMeta(key: string): string | undefined;
  setMeta(key: string, value: string): void;
}

const SCHEMA: readonly string[] = [
  `CREATE TABLE devices (
     device_id TEXT PRIMARY KEY,
     is_edge INTEGER NOT NULL,
     device_scope TEXT NOT NULL,
     parent_scope TEXT NOT NULL,
     status TEXT NOT NULL,
     doc TEXT NOT NULL
   );
   CREATE INDEX devices_scope ON devices (device_scope);
   CREATE INDEX devices_parent ON devices (parent_scope);
   CREATE TABLE modules (
     device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
     module_id TEXT NOT NULL,
     doc TEXT NOT NULL,
     PRIMARY KEY (device_id, module_id)
   );
   CREATE TABLE policies (
     key_name TEXT PRIMARY KEY,
     primary_key TEXT NOT NULL,
     secondary_key TEXT NOT NULL,
     rights TEXT NOT NULL
   );
   CREATE TABLE registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);`,
];

/** The registry store over the node's SQLite file. */
export class SqliteRegistryStore implements RegistryStore {
  private readonly q: ReturnType<typeof prepareStatements>;

  constructor(private readonly db: NodeDb) {
    db.migrate('registry', SCHEMA);
    this.q = prepareStatements(db.sqlite);
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn);
  }

  getDevice(deviceId: string): StoredDevice | undefined {
    return parse(this.q.getDevice.get(deviceId));
  }

  putDevice(d: StoredDevice): void {
    const parent = d.iotEdge ? (d.parentScopes[0] ?? '') : '';
    this.q.putDevice.run(d.deviceId, d.iotEdge ? 1 : 0, d.deviceScope, parent, d.status, JSON.stringify(d));
  }

  deleteDevice(deviceId: string): void {
    this.q.deleteDevice.run(deviceId);
  }

  listDevices(limit = -1): StoredDevice[] {
    return this.q.listDevices.all(limit).map((r) => parse<StoredDevice>(r)!);
  }

  countDevices(): { total: number; enabled: number; disabled: number } {
    const r = this.q.count.get() as { total: number; enabled: number };
    return { total: r.total, enabled: r.enabled, disabled: r.total - r.enabled };
  }

  edgeByScope(scope: string): StoredDevice | undefined {
    if (!scope) return undefined;
    return parse(this.q.edgeByScope.get(scope));
  }

  childrenOfScope(scope: string): StoredDevice[] {
    if (!scope) return [];
    return this.q.children.all({ scope }).map((r) => parse<StoredDevice>(r)!);
  }

  getModule(deviceId: string, moduleId: string): StoredModule | undefined {
    return parse(this.q.getModule.get(deviceId, moduleId));
  }

  putModule(m: StoredModule): void {
    this.q.putModule.run(m.deviceId, m.moduleId, JSON.stringify(m));
  }

  deleteModule(deviceId: string, moduleId: string): void {
    this.q.deleteModule.run(deviceId, moduleId);
  }

  listModules(deviceId: string): StoredModule[] {
    return this.q.listModules.all(deviceId).map((r) => parse<StoredModule>(r)!);
  }

  // Read eagerly: an open better-sqlite3 iterator blocks every other statement on the connection.
  allModules(): StoredModule[] {
    return this.q.allModules.all().map((r) => parse<StoredModule>(r)!);
  }

  allDevices(): StoredDevice[] {
    return this.q.allDevices.all().map((r) => parse<StoredDevice>(r)!);
  }

  nextSequence(): number {
    return this.transaction(() => {
      const next = Number(this.getMeta('sequence') ?? '0') + 1;
      this.setMeta('sequence', String(next));
      return next;
    });
  }

  getPolicy(keyName: string): AccessPolicy | undefined {
    const r = this.q.getPolicy.get(keyName) as PolicyRow | undefined;
    return r ? policyFromRow(r) : undefined;
  }

  listPolicies(): AccessPolicy[] {
    return (this.q.listPolicies.all() as PolicyRow[]).map(policyFromRow);
  }

  putPolicy(p: AccessPolicy): void {
    this.q.putPolicy.run(p.keyName, p.primaryKey, p.secondaryKey, JSON.stringify(p.rights));
  }

  getMeta(key: string): string | undefined {
    return (this.q.getMeta.get(key) as { value: string } | undefined)?.value;
  }

  setMeta(key: string, value: string): void {
    this.q.setMeta.run(key, value);
  }
}

function prepareStatements(s: NodeDb['sqlite']) {
  return {
    getDevice: s.prepare('SELECT doc FROM devices WHERE device_id = ?'),
    putDevice: s.prepare(
      `INSERT INTO devices (device_id, is_edge, device_scope, parent_scope, status, doc) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT(device_id) DO UPDATE SET is_edge = excluded.is_edge, device_scope = excluded.device_scope,
         parent_scope = excluded.parent_scope, status = excluded.status, doc = excluded.doc`,
    ),
    deleteDevice: s.prepare('DELETE FROM devices WHERE device_id = ?'),
    listDevices: s.prepare('SELECT doc FROM devices ORDER BY device_id LIMIT ?'),
    count: s.prepare(`SELECT COUNT(*) AS total, COALESCE(SUM(status = 'enabled'), 0) AS enabled FROM devices`),
    edgeByScope: s.prepare('SELECT doc FROM devices WHERE device_scope = ? AND is_edge = 1 LIMIT 1'),
    children: s.prepare(
      `SELECT doc FROM devices WHERE (is_edge = 1 AND parent_scope = @scope) OR (is_edge = 0 AND device_scope = @scope) ORDER BY device_id`,
    ),
    getModule: s.prepare('SELECT doc FROM modules WHERE device_id = ? AND module_id = ?'),
    putModule: s.prepare(
      'INSERT INTO modules (device_id, module_id, doc) VALUES (?, ?, ?) ON CONFLICT(device_id, module_id) DO UPDATE SET doc = excluded.doc',
    ),
    deleteModule: s.prepare('DELETE FROM modules WHERE device_id = ? AND module_id = ?'),
    listModules: s.prepare('SELECT doc FROM modules WHERE device_id = ? ORDER BY module_id'),
    allModules: s.prepare('SELECT doc FROM modules ORDER BY device_id, module_id'),
    allDevices: s.prepare('SELECT doc FROM devices ORDER BY device_id'),
    getMeta: s.prepare('SELECT value FROM registry_meta WHERE key = ?'),
    setMeta: s.prepare(
      'INSERT INTO registry_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
    ),
    getPolicy: s.prepare('SELECT * FROM policies WHERE key_name = ?'),
    listPolicies: s.prepare('SELECT * FROM policies ORDER BY rowid'),
    putPolicy: s.prepare(
      `INSERT INTO policies (key_name, primary_key, secondary_key, rights) VALUES (?, ?, ?, ?)
       ON CONFLICT(key_name) DO UPDATE SET primary_key = excluded.primary_key, secondary_key = excluded.secondary_key, rights = excluded.rights`,
    ),
  };
}

interface PolicyRow {
  key_name: string;
  primary_key: string;
  secondary_key: string;
  rights: string;
}

function policyFromRow(r: PolicyRow): AccessPolicy {
  return {
    keyName: r.key_name,
    primaryKey: r.primary_key,
    secondaryKey: r.secondary_key,
    rights: JSON.parse(r.rights) as Right[],
  };
}

function parse<T>(row: unknown): T | undefined {
  if (!row) return undefined;
  return JSON.parse((row as { doc: string }).doc) as T;
}
