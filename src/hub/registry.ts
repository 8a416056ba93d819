import { EventEmitter } from 'node:events';
import { randomInt } from 'node:crypto';
import type { AuthType, RegistryStore, StoredAuthentication, StoredDevice, StoredModule, StoredTwin } from '../store/registry-store.ts';
import type { AuthenticationJson, BulkResultJson, ConnectionState, DeviceJson, IdentityChange, ModuleJson, TwinJson } from './types.ts';
import { HubError, badRequest, deviceNotFound, moduleNotFound, preconditionFailed } from '../model/errors.ts';
import { checkEdgeHubDesired } from './deployment-check.ts';
import { EDGE_SYSTEM_MODULES, deviceIdProblem, isReservedModuleId, moduleIdProblem } from '../identity/device-id.ts';
import {
  HierarchyError,
  ancestry,
  orphansOf,
  parentScopeOf,
  resolveScopes,
  type HierarchyNode,
  type HierarchyView,
} from '../identity/hierarchy.ts';
import { generateKey, type AccessPolicy } from '../identity/policies.ts';
import {
  NEVER,
  TWIN_LIMITS,
  applyPropertiesPatch,
  checkSize,
  cleanPatch,
  diffValues,
  isPlainObject,
  mergeValues,
  newTwin,
  propertiesJson,
  twinEtag,
  withoutNulls,
} from './twin-doc.ts';

export type { DeviceJson, ModuleJson, TwinJson } from './types.ts';

export interface RegistryEvents {
  /** Desired properties changed through the service side; `patch` carries `$version`. */
  desired: [deviceId: string, moduleId: string | undefined, patch: Record<string, unknown>];
  /** Reported properties changed by the device; `patch` carries `$version`. */
  reported: [deviceId: string, moduleId: string | undefined, patch: Record<string, unknown>];
  /** Any registry change of a device or module identity. */
  identity: [deviceId: string, moduleId: string | undefined, kind: IdentityChange];
}

interface RuntimeState {
  connected: boolean;
  connectionStateUpdatedTime: string;
  lastActivityTime: string;
}

type PendingEvent = { [K in keyof RegistryEvents]: [K, ...RegistryEvents[K]] }[keyof RegistryEvents];

export interface RegistryOptions {
  /** The hub's host name (service token audiences must name it). */
  hostname: string;
  now?: () => Date;
}

/** Import modes of `POST /devices`, matched case-insensitively. */
const IMPORT_MODES = ['create', 'update', 'updateifmatchetag', 'delete', 'deleteifmatchetag', 'createorupdate', 'createorupdateifmatchetag'] as const;

/**
 * The identity registry with IoT Hub's semantics: devices, modules, twins and the edge
 * hierarchy, over a RegistryStore. Every write runs in one store transaction; events are
 * emitted after it commits.
 */
export class Registry extends EventEmitter<RegistryEvents> {
  readonly hostname: string;
  /** Cloud-to-device messages waiting for a device; the message store replaces this. */
  cloudToDeviceCount: (deviceId: string, moduleId?: string) => number = () => 0;
  private readonly runtime = new Map<string, RuntimeState>();
  private readonly now: () => Date;
  private pending: PendingEvent[] | undefined;

  constructor(readonly store: RegistryStore, opts: RegistryOptions) {
    super();
    this.hostname = opts.hostname;
    this.now = opts.now ?? (() => new Date());
  }

  // ---------------------------------------------------------------------------------------
  // Reads

  getDevice(deviceId: string): DeviceJson | undefined {
    const d = this.store.getDevice(deviceId);
    return d ? this.deviceJson(d) : undefined;
  }

  listDevices(top?: number): DeviceJson[] {
    return this.store.listDevices(top).map((d) => this.deviceJson(d));
  }

  getModule(deviceId: string, moduleId: string): ModuleJson | undefined {
    const m = this.store.getModule(deviceId, moduleId);
    return m ? this.moduleJson(m) : undefined;
  }

  listModules(deviceId: string): ModuleJson[] {
    if (!this.store.getDevice(deviceId)) throw deviceNotFound(deviceId);
    return this.store.listModules(deviceId).map((m) => this.moduleJson(m));
  }

  getTwin(deviceId: string, moduleId?: string): TwinJson | undefined {
    const d = this.store.getDevice(deviceId);
    if (!d) return undefined;
    if (moduleId === undefined) return this.twinJson(d);
    const m = this.store.getModule(deviceId, moduleId);
    return m ? this.twinJson(d, m) : undefined;
  }

  /** Twins for the query language: `devices` and `devices.modules`. */
  querySource(): { devices(): Iterable<TwinJson>; modules(): Iterable<TwinJson> } {
    return {
      devices: () => this.store.allDevices().map((d) => this.twinJson(d)),
      modules: () => {
        const devices = new Map<string, StoredDevice>();
        for (const d of this.store.allDevices()) devices.set(d.deviceId, d);
        const out: TwinJson[] = [];
        for (const m of this.store.allModules()) {
          const d = devices.get(m.deviceId);
          if (d) out.push(this.twinJson(d, m));
        }
        return out;
      },
    };
  }

  statistics(): { totalDeviceCount: number; enabledDeviceCount: number; disabledDeviceCount: number } {
    const c = this.store.countDevices();
    return { totalDeviceCount: c.total, enabledDeviceCount: c.enabled, disabledDeviceCount: c.disabled };
  }

  /** The parent edge device, if the device has one. */
  getParent(deviceId: string): DeviceJson | undefined {
    const d = this.store.getDevice(deviceId);
    if (!d) throw deviceNotFound(deviceId);
    const scope = parentScopeOf(nodeOf(d));
    const parent = scope ? this.store.edgeByScope(scope) : undefined;
    return parent ? this.deviceJson(parent) : undefined;
  }

  /** Devices (leaves and edge devices) whose parent is `deviceId`. */
  getChildren(deviceId: string): DeviceJson[] {
    const d = this.store.getDevice(deviceId);
    if (!d) throw deviceNotFound(deviceId);
    if (!d.iotEdge) return [];
    return this.store.childrenOfScope(d.deviceScope).map((c) => this.deviceJson(c));
  }

  /** `[deviceId, parent, grandparent, ...]`: the ids an auth chain names, nearest first. */
  ancestry(deviceId: string): string[] {
    const d = this.store.getDevice(deviceId);
    if (!d) throw deviceNotFound(deviceId);
    return ancestry(this.view(), nodeOf(d));
  }

  getPolicy(keyName: string): AccessPolicy | undefined {
    return this.store.getPolicy(keyName);
  }

  listPolicies(): AccessPolicy[] {
    return this.store.listPolicies();
  }

  // ---------------------------------------------------------------------------------------
  // Devices

  /**
   * `PUT /devices/{id}`: without `ifMatch` it creates (409 when the device exists); with
   * `ifMatch` (`*` or an etag) it replaces the stored device (404 when missing, 412 on a stale
   * etag). Fields the body leaves out keep their stored values.
   */
  putDevice(deviceId: string, body: unknown, ifMatch?: string): DeviceJson {
    return this.write(() => this.putDeviceTx(deviceId, body, ifMatch, ifMatch === undefined ? 'create' : 'update'));
  }

  createDevice(body: unknown): DeviceJson {
    const id = isPlainObject(body) ? body.deviceId : undefined;
    if (typeof id !== 'string') throw badRequest('the device JSON has no deviceId');
    return this.putDevice(id, body);
  }

  /**
   * Deletes a device and its modules. Children of a deleted edge device lose their parent;
   * their ids are returned so callers can say which.
   */
  deleteDevice(deviceId: string, ifMatch?: string): { orphaned: string[] } {
    return this.write(() => this.deleteDeviceTx(deviceId, ifMatch));
  }

  /** `POST /devices`: up to 100 creates/updates/deletes, each succeeding or failing on its own. */
  bulk(body: unknown): BulkResultJson {
    if (!Array.isArray(body)) throw badRequest('the bulk request body must be a JSON array of devices');
    if (body.length === 0 || body.length > 100) throw badRequest(`a bulk request carries 1 to 100 devices, this one has ${body.length}`);
    const seen = new Set<string>();
    for (const item of body) {
      const id = isPlainObject(item) ? (item.id ?? item.deviceId) : undefined;
      if (typeof id !== 'string') throw badRequest('every device in a bulk request needs an "id"');
      if (seen.has(id)) throw badRequest(`device ${id} appears more than once in the bulk request`, 'DeviceDefinedMultipleTimes');
      seen.add(id);
    }
    const result: BulkResultJson = { isSuccessful: true, errors: [], warnings: [] };
    for (const raw of body as Array<Record<string, unknown>>) {
      const id = (raw.id ?? raw.deviceId) as string;
      const mode = String(raw.importMode ?? 'create').toLowerCase();
      const { id: _id, importMode: _mode, eTag, ...rest } = raw;
      const etag = typeof eTag === 'string' ? eTag : typeof rest.etag === 'string' ? rest.etag : undefined;
      try {
        if (!(IMPORT_MODES as readonly string[]).includes(mode)) {
          throw badRequest(`unknown importMode "${String(raw.importMode)}" (use create, update, updateIfMatchETag, delete or deleteIfMatchETag)`);
        }
        const needEtag = mode.endsWith('ifmatchetag');
        if (needEtag && !etag) throw badRequest(`importMode ${String(raw.importMode)} needs the device's eTag`);
        const match = needEtag ? etag! : '*';
        this.write(() => {
          if (mode.startsWith('delete')) this.deleteDeviceTx(id, match);
          else if (mode === 'create') this.putDeviceTx(id, { ...rest, deviceId: id }, undefined, 'create');
          else if (mode.startsWith('createorupdate')) {
            const exists = this.store.getDevice(id) !== undefined;
            this.putDeviceTx(id, { ...rest, deviceId: id }, exists ? match : undefined, exists ? 'update' : 'create');
          } else this.putDeviceTx(id, { ...rest, deviceId: id }, match, 'update');
        });
      } catch (err) {
        if (!(err instanceof HubError)) throw err;
        result.isSuccessful = false;
        result.errors.push({ deviceId: id, errorCode: err.code, errorStatus: err.message });
      }
    }
    return result;
  }

  // ---------------------------------------------------------------------------------------
  // Modules

  /** `PUT /devices/{d}/modules/{m}`: create without `ifMatch`, replace with it. */
  putModule(deviceId: string, moduleId: string, body: unknown, ifMatch?: string): ModuleJson {
    return this.write(() => {
      const device = this.store.getDevice(deviceId);
      if (!device) throw deviceNotFound(deviceId);
      const problem = moduleIdProblem(moduleId);
      if (problem) throw badRequest(problem);
      if (!isPlainObject(body)) throw badRequest('the request body must be a module JSON object');
      if (body.moduleId !== undefined && body.moduleId !== moduleId) {
        throw badRequest(`the body names module ${String(body.moduleId)} but the path names ${moduleId}`);
      }
      if (body.deviceId !== undefined && body.deviceId !== deviceId) {
        throw badRequest(`the body names device ${String(body.deviceId)} but the path names ${deviceId}`);
      }
      if (body.managedBy !== undefined && body.managedBy !== null && typeof body.managedBy !== 'string') throw badRequest('managedBy must be a string');
      const existing = this.store.getModule(deviceId, moduleId);
      const now = this.stamp();
      let module: StoredModule;
      if (ifMatch === undefined) {
        if (existing) throw new HubError(409, 'ModuleAlreadyExistsOnDevice', `module ${moduleId} already exists on device ${deviceId}`);
        if (isReservedModuleId(moduleId)) throw badRequest(`module ids starting with $ are reserved for the edge runtime (${moduleId})`);
        module = {
          deviceId,
          moduleId,
          generationId: newGenerationId(),
          etag: this.newEtag(),
          managedBy: (body.managedBy as string | undefined) ?? '',
          authentication: parseAuthentication(body.authentication, undefined, `module ${deviceId}/${moduleId}`),
          twin: newTwin(now),
        };
        this.queue('identity', deviceId, moduleId, 'created');
      } else {
        if (!existing) throw moduleNotFound(deviceId, moduleId);
        checkEtag(`module ${deviceId}/${moduleId}`, ifMatch, existing.etag);
        module = {
          ...existing,
          etag: this.newEtag(),
          managedBy: body.managedBy === undefined ? existing.managedBy : ((body.managedBy as string | null) ?? ''),
          authentication: parseAuthentication(body.authentication, existing.authentication, `module ${deviceId}/${moduleId}`),
        };
        this.queue('identity', deviceId, moduleId, 'updated');
      }
      this.store.putModule(module);
      return this.moduleJson(module);
    });
  }

  deleteModule(deviceId: string, moduleId: string, ifMatch?: string): void {
    this.write(() => {
      const device = this.store.getDevice(deviceId);
      if (!device) throw deviceNotFound(deviceId);
      const existing = this.store.getModule(deviceId, moduleId);
      if (!existing) throw moduleNotFound(deviceId, moduleId);
      if (device.iotEdge && EDGE_SYSTEM_MODULES.includes(moduleId)) {
        throw badRequest(`${moduleId} belongs to the edge runtime of ${deviceId} and cannot be deleted`);
      }
      checkEtag(`module ${deviceId}/${moduleId}`, ifMatch ?? '*', existing.etag);
      this.store.deleteModule(deviceId, moduleId);
      this.runtime.delete(runtimeKey(deviceId, moduleId));
      this.queue('identity', deviceId, moduleId, 'deleted');
    });
  }

  // ---------------------------------------------------------------------------------------
  // Twins

  /**
   * Service-side twin write: `patch` merges tags and desired properties (null deletes),
   * `replace` swaps them wholesale. Reported properties belong to the device and are refused.
   */
  updateTwin(deviceId: string, moduleId: string | undefined, body: unknown, ifMatch: string | undefined, mode: 'patch' | 'replace'): TwinJson {
    return this.write(() => {
      const device = this.store.getDevice(deviceId);
      if (!device) throw deviceNotFound(deviceId);
      const module = moduleId === undefined ? undefined : this.store.getModule(deviceId, moduleId);
      if (moduleId !== undefined && !module) throw moduleNotFound(deviceId, moduleId);
      const twin = module ? module.twin : device.twin;
      const what = moduleId === undefined ? `the twin of ${deviceId}` : `the twin of ${deviceId}/${moduleId}`;
      checkEtag(what, ifMatch ?? '*', twinEtag(twin.version));
      if (!isPlainObject(body)) throw badRequest('the twin patch must be a JSON object');
      const props = body.properties;
      if (props !== undefined && props !== null && !isPlainObject(props)) throw badRequest('properties must be a JSON object');
      if (isPlainObject(props) && props.reported !== undefined) {
        throw badRequest('reported properties can only be changed by the device itself');
      }
      const now = this.stamp();
      if (mode === 'patch') {
        // null for a whole section clears it (as IoT Hub does): a patch naming every property as null.
        if (body.tags === null) twin.tags = {};
        else if (body.tags !== undefined) {
          mergeValues(twin.tags, cleanPatch('tags', body.tags));
          checkSize('tags', twin.tags, TWIN_LIMITS.tagsBytes);
        }
        if (isPlainObject(props) && props.desired !== undefined) {
          const patch = props.desired === null ? clearAll(twin.desired.values) : cleanPatch('properties.desired', props.desired);
          applyPropertiesPatch(twin.desired, patch, now, true);
          checkSize('desired properties', twin.desired.values, TWIN_LIMITS.desiredBytes);
          this.queue('desired', deviceId, moduleId, { ...patch, $version: twin.desired.version });
        }
      } else {
        twin.tags = withoutNulls(body.tags === undefined || body.tags === null ? {} : cleanPatch('tags', body.tags));
        checkSize('tags', twin.tags, TWIN_LIMITS.tagsBytes);
        const desired = isPlainObject(props) && props.desired !== undefined && props.desired !== null ? cleanPatch('properties.desired', props.desired) : {};
        this.replaceDesired(deviceId, moduleId, twin, withoutNulls(desired), now);
      }
      checkEdgeHubDesired(moduleId, twin.desired.values, 'ArgumentInvalid');
      twin.version += 1;
      if (module) this.store.putModule(module);
      else this.store.putDevice(device);
      return this.twinJson(device, module);
    });
  }

  /** A device reports properties: a JSON merge patch (null deletes); reported `$version` +1. */
  updateReported(deviceId: string, moduleId: string | undefined, patch: object): { version: number } {
    return this.write(() => {
      const device = this.store.getDevice(deviceId);
      if (!device) throw deviceNotFound(deviceId);
      const module = moduleId === undefined ? undefined : this.store.getModule(deviceId, moduleId);
      if (moduleId !== undefined && !module) throw moduleNotFound(deviceId, moduleId);
      const twin = module ? module.twin : device.twin;
      const clean = cleanPatch('reported properties', patch);
      applyPropertiesPatch(twin.reported, clean, this.stamp(), false);
      checkSize('reported properties', twin.reported.values, TWIN_LIMITS.reportedBytes);
      twin.version += 1;
      if (module) this.store.putModule(module);
      else this.store.putDevice(device);
      this.queue('reported', deviceId, moduleId, { ...clean, $version: twin.reported.version });
      return { version: twin.reported.version };
    });
  }

  /**
   * `POST /devices/{id}/applyConfigurationContent`: each entry of `modulesContent` replaces the
   * desired properties of that module's twin (creating the module identity when the deployment
   * names one that does not exist yet); `deviceContent` does the same for the device twin.
   */
  applyConfigurationContent(deviceId: string, content: unknown): void {
    this.write(() => {
      const device = this.store.getDevice(deviceId);
      if (!device) throw deviceNotFound(deviceId);
      if (!isPlainObject(content)) throw badRequest('the configuration content must be a JSON object');
      const now = this.stamp();
      const modulesContent = content.modulesContent;
      if (modulesContent !== undefined && modulesContent !== null) {
        if (!isPlainObject(modulesContent)) throw badRequest('modulesContent must be a JSON object keyed by module id');
        if (!device.iotEdge) throw badRequest(`device ${deviceId} is not an IoT Edge device, so it cannot take modulesContent`);
        for (const [moduleId, entry] of Object.entries(modulesContent)) {
          const problem = moduleIdProblem(moduleId);
          if (problem) throw badRequest(`modulesContent: ${problem}`);
          const desired = desiredOf(`modulesContent.${moduleId}`, entry);
          checkEdgeHubDesired(moduleId, desired, 'InvalidConfigurationContent');
          let module = this.store.getModule(deviceId, moduleId);
          if (!module) {
            if (isReservedModuleId(moduleId) && !EDGE_SYSTEM_MODULES.includes(moduleId)) {
              throw badRequest(`modulesContent names ${moduleId}, but module ids starting with $ are reserved`);
            }
            module = this.newModule(deviceId, moduleId, 'IotEdge', now);
            this.queue('identity', deviceId, moduleId, 'created');
          }
          this.replaceDesired(deviceId, moduleId, module.twin, desired, now);
          module.twin.version += 1;
          this.store.putModule(module);
        }
      }
      if (content.deviceContent !== undefined && content.deviceContent !== null) {
        const desired = desiredOf('deviceContent', content.deviceContent);
        this.replaceDesired(deviceId, undefined, device.twin, desired, now);
        device.twin.version += 1;
        this.store.putDevice(device);
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // Runtime state (not persisted: after a restart nothing is connected)

  setConnectionState(deviceId: string, moduleId: string | undefined, connected: boolean): void {
    const now = this.stamp();
    const key = runtimeKey(deviceId, moduleId);
    const cur = this.runtime.get(key);
    if (cur && cur.connected === connected) {
      cur.lastActivityTime = now;
      return;
    }
    this.runtime.set(key, { connected, connectionStateUpdatedTime: now, lastActivityTime: now });
  }

  /** Marks activity (a message, a twin call) without changing the connection state. */
  recordActivity(deviceId: string, moduleId?: string): void {
    const cur = this.runtime.get(runtimeKey(deviceId, moduleId));
    if (cur) cur.lastActivityTime = this.stamp();
  }

  isConnected(deviceId: string, moduleId?: string): boolean {
    return this.runtime.get(runtimeKey(deviceId, moduleId))?.connected ?? false;
  }

  // ---------------------------------------------------------------------------------------
  // Internals

  private putDeviceTx(deviceId: string, body: unknown, ifMatch: string | undefined, intent: 'create' | 'update'): DeviceJson {
    const problem = deviceIdProblem(deviceId);
    if (problem) throw badRequest(problem);
    const input = parseDeviceBody(deviceId, body);
    const existing = this.store.getDevice(deviceId);
    const now = this.stamp();
    let device: StoredDevice;
    if (intent === 'create') {
      if (existing) throw new HubError(409, 'DeviceAlreadyExists', `device ${deviceId} already exists`);
      const generationId = newGenerationId();
      const isEdge = input.iotEdge ?? false;
      const scopes = this.resolve({ deviceId, generationId, isEdge, deviceScope: input.deviceScope, parentScopes: input.parentScopes });
      device = {
        deviceId,
        generationId,
        etag: this.newEtag(),
        status: input.status ?? 'enabled',
        statusReason: input.statusReason ?? null,
        statusUpdatedTime: NEVER,
        authentication: parseAuthentication(input.authentication, undefined, `device ${deviceId}`),
        iotEdge: isEdge,
        deviceScope: scopes.deviceScope,
        parentScopes: scopes.parentScopes,
        twin: newTwin(now),
      };
      this.store.putDevice(device);
      this.queue('identity', deviceId, undefined, 'created');
    } else {
      if (!existing) throw deviceNotFound(deviceId);
      checkEtag(`device ${deviceId}`, ifMatch ?? '*', existing.etag);
      const isEdge = input.iotEdge ?? existing.iotEdge;
      const scopes = this.resolve({
        deviceId,
        generationId: existing.generationId,
        isEdge,
        deviceScope: input.deviceScope,
        parentScopes: input.parentScopes,
        existing: nodeOf(existing),
      });
      const status = input.status ?? existing.status;
      device = {
        ...existing,
        etag: this.newEtag(),
        status,
        statusReason: input.statusReason === undefined ? existing.statusReason : input.statusReason,
        statusUpdatedTime: status !== existing.status ? now : existing.statusUpdatedTime,
        authentication: parseAuthentication(input.authentication, existing.authentication, `device ${deviceId}`),
        iotEdge: isEdge,
        deviceScope: scopes.deviceScope,
        parentScopes: scopes.parentScopes,
      };
      this.store.putDevice(device);
      this.queue('identity', deviceId, undefined, 'updated');
      if (existing.iotEdge && !isEdge) {
        for (const moduleId of EDGE_SYSTEM_MODULES) {
          if (!this.store.getModule(deviceId, moduleId)) continue;
          this.store.deleteModule(deviceId, moduleId);
          this.queue('identity', deviceId, moduleId, 'deleted');
        }
      }
    }
    if (device.iotEdge) this.ensureEdgeModules(deviceId, now);
    return this.deviceJson(device);
  }

  private deleteDeviceTx(deviceId: string, ifMatch: string | undefined): { orphaned: string[] } {
    const existing = this.store.getDevice(deviceId);
    if (!existing) throw deviceNotFound(deviceId);
    checkEtag(`device ${deviceId}`, ifMatch ?? '*', existing.etag);
    const orphaned: string[] = [];
    if (existing.iotEdge) {
      for (const o of orphansOf(this.view(), existing.deviceScope)) {
        const child = this.store.getDevice(o.node.deviceId);
        if (!child || child.deviceId === deviceId) continue;
        this.store.putDevice({ ...child, deviceScope: o.deviceScope, parentScopes: o.parentScopes, etag: this.newEtag() });
        this.queue('identity', child.deviceId, undefined, 'updated');
        orphaned.push(child.deviceId);
      }
    }
    const modules = this.store.listModules(deviceId);
    this.store.deleteDevice(deviceId);
    for (const m of modules) {
      this.runtime.delete(runtimeKey(deviceId, m.moduleId));
      this.queue('identity', deviceId, m.moduleId, 'deleted');
    }
    this.runtime.delete(runtimeKey(deviceId, undefined));
    this.queue('identity', deviceId, undefined, 'deleted');
    return { orphaned };
  }

  private ensureEdgeModules(deviceId: string, now: string): void {
    for (const moduleId of EDGE_SYSTEM_MODULES) {
      if (this.store.getModule(deviceId, moduleId)) continue;
      this.store.putModule(this.newModule(deviceId, moduleId, '', now));
      this.queue('identity', deviceId, moduleId, 'created');
    }
  }

  private newModule(deviceId: string, moduleId: string, managedBy: string, now: string): StoredModule {
    return {
      deviceId,
      moduleId,
      generationId: newGenerationId(),
      etag: this.newEtag(),
      managedBy,
      authentication: { type: 'sas', primaryKey: generateKey(), secondaryKey: generateKey() },
      twin: newTwin(now),
    };
  }

  private replaceDesired(deviceId: string, moduleId: string | undefined, twin: StoredTwin, desired: Record<string, unknown>, now: string): void {
    checkSize('desired properties', desired, TWIN_LIMITS.desiredBytes);
    const patch = diffValues(twin.desired.values, desired);
    applyPropertiesPatch(twin.desired, patch, now, true);
    this.queue('desired', deviceId, moduleId, { ...patch, $version: twin.desired.version });
  }

  private resolve(req: Parameters<typeof resolveScopes>[1]): { deviceScope: string; parentScopes: string[] } {
    try {
      return resolveScopes(this.view(), req);
    } catch (err) {
      if (err instanceof HierarchyError) {
        throw badRequest(err.message, err.code === 'InvalidDeviceScope' ? 'InvalidDeviceScope' : 'ArgumentInvalid');
      }
      throw err;
    }
  }

  private view(): HierarchyView {
    return {
      ownerOf: (scope) => {
        const d = this.store.edgeByScope(scope);
        return d ? nodeOf(d) : undefined;
      },
      childrenOf: (scope) => this.store.childrenOfScope(scope).map(nodeOf),
    };
  }

  /** Runs a write in one transaction and emits its events only once it has committed. */
  private write<T>(fn: () => T): T {
    if (this.pending) return this.store.transaction(fn);
    this.pending = [];
    let events: PendingEvent[];
    let result: T;
    try {
      result = this.store.transaction(fn);
      events = this.pending;
    } finally {
      this.pending = undefined;
    }
    for (const [name, ...args] of events) (this.emit as (n: string, ...a: unknown[]) => boolean)(name, ...args);
    return result;
  }

  private queue<K extends keyof RegistryEvents>(name: K, ...args: RegistryEvents[K]): void {
    this.pending?.push([name, ...args] as unknown as PendingEvent);
  }

  private newEtag(): string {
    return Buffer.from(String(this.store.nextSequence())).toString('base64');
  }

  private stamp(): string {
    return this.now().toISOString();
  }

  private runtimeJson(deviceId: string, moduleId?: string): { connectionState: ConnectionState; connectionStateUpdatedTime: string; lastActivityTime: string } {
    const r = this.runtime.get(runtimeKey(deviceId, moduleId));
    return {
      connectionState: r?.connected ? 'Connected' : 'Disconnected',
      connectionStateUpdatedTime: r?.connectionStateUpdatedTime ?? NEVER,
      lastActivityTime: r?.lastActivityTime ?? NEVER,
    };
  }

  private deviceJson(d: StoredDevice): DeviceJson {
    const rt = this.runtimeJson(d.deviceId);
    return {
      deviceId: d.deviceId,
      generationId: d.generationId,
      etag: d.etag,
      connectionState: rt.connectionState,
      status: d.status,
      statusReason: d.statusReason,
      connectionStateUpdatedTime: rt.connectionStateUpdatedTime,
      statusUpdatedTime: d.statusUpdatedTime,
      lastActivityTime: rt.lastActivityTime,
      cloudToDeviceMessageCount: this.cloudToDeviceCount(d.deviceId),
      authentication: authenticationJson(d.authentication),
      capabilities: { iotEdge: d.iotEdge },
      deviceScope: d.deviceScope,
      parentScopes: [...d.parentScopes],
    };
  }

  private moduleJson(m: StoredModule): ModuleJson {
    const rt = this.runtimeJson(m.deviceId, m.moduleId);
    return {
      moduleId: m.moduleId,
      managedBy: m.managedBy,
      deviceId: m.deviceId,
      generationId: m.generationId,
      etag: m.etag,
      connectionState: rt.connectionState,
      connectionStateUpdatedTime: rt.connectionStateUpdatedTime,
      lastActivityTime: rt.lastActivityTime,
      cloudToDeviceMessageCount: this.cloudToDeviceCount(m.deviceId, m.moduleId),
      authentication: authenticationJson(m.authentication),
    };
  }

  private twinJson(d: StoredDevice, m?: StoredModule): TwinJson {
    const owner = m ?? d;
    const twin = owner.twin;
    const rt = this.runtimeJson(d.deviceId, m?.moduleId);
    const auth = authenticationJson(owner.authentication);
    const out: TwinJson = {
      deviceId: d.deviceId,
      ...(m ? { moduleId: m.moduleId } : {}),
      etag: twinEtag(twin.version),
      deviceEtag: owner.etag,
      status: d.status,
      ...(m ? {} : { statusReason: d.statusReason }),
      statusUpdateTime: d.statusUpdatedTime,
      connectionState: rt.connectionState,
      lastActivityTime: rt.lastActivityTime,
      cloudToDeviceMessageCount: this.cloudToDeviceCount(d.deviceId, m?.moduleId),
      authenticationType: auth.type,
      x509Thumbprint: auth.x509Thumbprint,
      modelId: twin.modelId,
      version: twin.version,
      tags: structuredClone(twin.tags),
      properties: { desired: propertiesJson(twin.desired), reported: propertiesJson(twin.reported) },
    };
    if (!m) {
      out.capabilities = { iotEdge: d.iotEdge };
      out.deviceScope = d.deviceScope;
      out.parentScopes = [...d.parentScopes];
    }
    return out;
  }
}

function runtimeKey(deviceId: string, moduleId: string | undefined): string {
  return moduleId === undefined ? deviceId : `${deviceId}/${moduleId}`;
}

function nodeOf(d: StoredDevice): HierarchyNode {
  return { deviceId: d.deviceId, isEdge: d.iotEdge, deviceScope: d.deviceScope, parentScopes: d.parentScopes };
}

/** Like IoT Hub's generation ids: a long decimal number, new for every incarnation of an id. */
function newGenerationId(): string {
  return `${Date.now()}${String(randomInt(1_000_000)).padStart(6, '0')}`;
}

function checkEtag(what: string, ifMatch: string, current: string): void {
  const given = unquote(ifMatch.trim());
  if (given === '*' || given === current) return;
  throw preconditionFailed(what, given, current);
}

export function unquote(s: string): string {
  return s.length >= 2 && s.startsWith('"') && s.endsWith('"') ? s.slice(1, -1) : s;
}

/** The merge patch that removes every property of `values`. */
function clearAll(values: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.keys(values).map((k) => [k, null]));
}

function desiredOf(what: string, entry: unknown): Record<string, unknown> {
  if (!isPlainObject(entry)) throw badRequest(`${what} must be a JSON object with "properties.desired"`);
  const desired = entry['properties.desired'] ?? {};
  return withoutNulls(cleanPatch(`${what}["properties.desired"]`, desired));
}

interface DeviceInput {
  status?: 'enabled' | 'disabled';
  statusReason?: string | null;
  authentication?: unknown;
  iotEdge?: boolean;
  deviceScope?: string | null;
  parentScopes?: string[] | null;
}

function parseDeviceBody(deviceId: string, body: unknown): DeviceInput {
  if (!isPlainObject(body)) throw badRequest('the request body must be a device JSON object');
  if (body.deviceId !== undefined && body.deviceId !== deviceId) {
    throw badRequest(`the body names device ${JSON.stringify(body.deviceId)} but the path names ${deviceId}`);
  }
  const out: DeviceInput = {};
  if (body.status !== undefined && body.status !== null) {
    const s = String(body.status).toLowerCase();
    if (s !== 'enabled' && s !== 'disabled') throw badRequest(`status must be "enabled" or "disabled", not ${JSON.stringify(body.status)}`);
    out.status = s;
  }
  if (body.statusReason !== undefined) {
    if (body.statusReason !== null && typeof body.statusReason !== 'string') throw badRequest('statusReason must be a string');
    if (typeof body.statusReason === 'string' && body.statusReason.length > 128) throw badRequest('statusReason is longer than 128 characters');
    out.statusReason = body.statusReason;
  }
  out.authentication = body.authentication;
  const caps = body.capabilities;
  if (caps !== undefined && caps !== null) {
    if (!isPlainObject(caps)) throw badRequest('capabilities must be a JSON object');
    if (caps.iotEdge !== undefined && caps.iotEdge !== null) {
      if (typeof caps.iotEdge !== 'boolean') throw badRequest('capabilities.iotEdge must be true or false');
      out.iotEdge = caps.iotEdge;
    }
  }
  if (body.deviceScope !== undefined) {
    if (body.deviceScope !== null && typeof body.deviceScope !== 'string') throw badRequest('deviceScope must be a string');
    out.deviceScope = body.deviceScope;
  }
  if (body.parentScopes !== undefined) {
    const p = body.parentScopes;
    if (p !== null && (!Array.isArray(p) || p.some((s) => typeof s !== 'string'))) throw badRequest('parentScopes must be an array of scope strings');
    out.parentScopes = p as string[] | null;
  }
  return out;
}

const AUTH_TYPES: readonly AuthType[] = ['sas', 'selfSigned', 'certificateAuthority', 'none'];

/**
 * Reads `authentication` from a device or module body. SAS keys left empty are generated on
 * create and kept on update (so a partial update never rotates keys by accident).
 */
export function parseAuthentication(raw: unknown, existing: StoredAuthentication | undefined, what: string): StoredAuthentication {
  if (raw === undefined || raw === null) return existing ?? { type: 'sas', primaryKey: generateKey(), secondaryKey: generateKey() };
  if (!isPlainObject(raw)) throw badRequest(`authentication of ${what} must be a JSON object`);
  const sym = raw.symmetricKey ?? {};
  const x509 = raw.x509Thumbprint ?? {};
  if (!isPlainObject(sym)) throw badRequest(`authentication.symmetricKey of ${what} must be a JSON object`);
  if (!isPlainObject(x509)) throw badRequest(`authentication.x509Thumbprint of ${what} must be a JSON object`);
  const primaryThumb = optString(x509.primaryThumbprint, 'primaryThumbprint');
  const secondaryThumb = optString(x509.secondaryThumbprint, 'secondaryThumbprint');
  let type: AuthType;
  if (raw.type === undefined || raw.type === null || raw.type === '') {
    type = primaryThumb || secondaryThumb ? 'selfSigned' : 'sas';
  } else {
    const t = AUTH_TYPES.find((a) => a.toLowerCase() === String(raw.type).toLowerCase());
    if (!t) throw badRequest(`authentication.type of ${what} must be one of ${AUTH_TYPES.join(', ')}, not ${JSON.stringify(raw.type)}`);
    type = t;
  }
  if (type === 'sas') {
    let primaryKey = optString(sym.primaryKey, 'primaryKey');
    let secondaryKey = optString(sym.secondaryKey, 'secondaryKey');
    // The service SDK fills in exactly this blank SAS block when the caller gave no
    // authentication, so on an update it means "unchanged" (even for an X.509 device).
    if (!primaryKey && !secondaryKey && existing) return existing;
    primaryKey ||= generateKey();
    secondaryKey ||= generateKey();
    checkKey(what, 'primaryKey', primaryKey);
    checkKey(what, 'secondaryKey', secondaryKey);
    return { type, primaryKey, secondaryKey };
  }
  if (type === 'selfSigned') {
    if (!primaryThumb) throw badRequest(`${what} uses selfSigned authentication but has no x509Thumbprint.primaryThumbprint`);
    checkThumbprint(what, 'primaryThumbprint', primaryThumb);
    if (secondaryThumb) checkThumbprint(what, 'secondaryThumbprint', secondaryThumb);
    return { type, primaryThumbprint: primaryThumb, secondaryThumbprint: secondaryThumb || undefined };
  }
  return { type };
}

function optString(v: unknown, name: string): string {
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') throw badRequest(`${name} must be a string`);
  return v.trim();
}

function checkKey(what: string, name: string, key: string): void {
  const bytes = /^[A-Za-z0-9+/]+={0,2}$/.test(key) ? Buffer.from(key, 'base64').length : 0;
  if (bytes < 16 || bytes > 64) {
    throw badRequest(`authentication.symmetricKey.${name} of ${what} must be base64 of 16 to 64 bytes`);
  }
}

function checkThumbprint(what: string, name: string, t: string): void {
  if (!/^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})$/.test(t)) {
    throw badRequest(`authentication.x509Thumbprint.${name} of ${what} must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint`);
  }
}

export function authenticationJson(a: StoredAuthentication): AuthenticationJson {
  return {
    symmetricKey: { primaryKey: a.type === 'sas' ? (a.primaryKey ?? null) : null, secondaryKey: a.type === 'sas' ? (a.secondaryKey ?? null) : null },
    x509Thumbprint: {
      primaryThumbprint: a.type === 'selfSigned' ? (a.primaryThumbprint ?? null) : null,
      secondaryThumbprint: a.type === 'selfSigned' ? (a.secondaryThumbprint ?? null) : null,
    },
    type: a.type,
  } as AuthenticationJson;
}
