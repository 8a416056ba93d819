import { EventEmitter } from 'node:events';
import type { RegistryStore, StoredDevice } from '../store/registry-store.ts';
import type { BulkResultJson, DeviceJson, ModuleJson, TwinJson } from './types.ts';
import { badRequest, deviceNotFound } from '../model/errors.ts';
import { ancestry, parentScopeOf } from '../identity/hierarchy.ts';
import type { AccessPolicy } from '../identity/policies.ts';
import { isPlainObject } from './twin-doc.ts';
import { hierarchyView, nodeOf, type RegistryEvents, type RegistryTx } from './registry-core.ts';
import { bulk, deleteDeviceTx, putDeviceTx } from './registry-devices.ts';
import { deviceJson, moduleJson, twinJson } from './registry-json.ts';
import { deleteModule, putModule } from './registry-modules.ts';
import { ConnectionStates } from './registry-runtime.ts';
import { applyConfigurationContent, updateReported, updateTwin } from './registry-twins.ts';

export type { DeviceJson, ModuleJson, TwinJson } from './types.ts';
export type { RegistryEvents } from './registry-core.ts';
export { authenticationJson, parseAuthentication } from './registry-json.ts';
export { unquote } from './registry-core.ts';

type PendingEvent = { [K in keyof RegistryEvents]: [K, ...RegistryEvents[K]] }[keyof RegistryEvents];

export interface RegistryOptions {
  /** The hub's host name (service token audiences must name it). */
  hostname: string;
  now?: () => Date;
}

/**
 * The identity registry with IoT Hub's semantics: devices, modules, twins and the edge
 * hierarchy, over a RegistryStore. Every write runs in one store transaction; events are
 * emitted after it commits. The write paths live in registry-devices, -modules and -twins,
 * the JSON mapping in registry-json.
 */
export class Registry extends EventEmitter<RegistryEvents> {
  readonly hostname: string;
  /** Cloud-to-device messages waiting for a device; the message store replaces this. */
  cloudToDeviceCount: (deviceId: string, moduleId?: string) => number = () => 0;
  private readonly runtime = new ConnectionStates();
  private readonly now: () => Date;
  private pending: PendingEvent[] | undefined;
  /** What the write paths use of this registry; kept off its public API. */
  private readonly tx: RegistryTx;

  constructor(
    readonly store: RegistryStore,
    opts: RegistryOptions,
  ) {
    super();
    this.hostname = opts.hostname;
    this.now = opts.now ?? (() => new Date());
    const c2d = (deviceId: string, moduleId?: string) => this.cloudToDeviceCount(deviceId, moduleId);
    this.tx = {
      store,
      write: (fn) => this.write(fn),
      queue: (name, ...args) => this.queue(name, ...args),
      newEtag: () => this.newEtag(),
      stamp: () => this.stamp(),
      forgetRuntime: (deviceId, moduleId) => this.runtime.forget(deviceId, moduleId),
      deviceJson: (d) => deviceJson(d, this.runtime.json(d.deviceId, undefined), c2d),
      moduleJson: (m) => moduleJson(m, this.runtime.json(m.deviceId, m.moduleId), c2d),
      twinJson: (d, m) => twinJson(d, m, this.runtime.json(d.deviceId, m?.moduleId), c2d),
    };
  }

  // ---------------------------------------------------------------------------------------
  // Reads

  getDevice(deviceId: string): DeviceJson | undefined {
    const d = this.store.getDevice(deviceId);
    return d ? this.tx.deviceJson(d) : undefined;
  }

  listDevices(top?: number): DeviceJson[] {
    return this.store.listDevices(top).map((d) => this.tx.deviceJson(d));
  }

  getModule(deviceId: string, moduleId: string): ModuleJson | undefined {
    const m = this.store.getModule(deviceId, moduleId);
    return m ? this.tx.moduleJson(m) : undefined;
  }

  listModules(deviceId: string): ModuleJson[] {
    if (!this.store.getDevice(deviceId)) throw deviceNotFound(deviceId);
    return this.store.listModules(deviceId).map((m) => this.tx.moduleJson(m));
  }

  getTwin(deviceId: string, moduleId?: string): TwinJson | undefined {
    const d = this.store.getDevice(deviceId);
    if (!d) return undefined;
    if (moduleId === undefined) return this.tx.twinJson(d);
    const m = this.store.getModule(deviceId, moduleId);
    return m ? this.tx.twinJson(d, m) : undefined;
  }

  /** Twins for the query language: `devices` and `devices.modules`. */
  querySource(): { devices(): Iterable<TwinJson>; modules(): Iterable<TwinJson> } {
    return {
      devices: () => this.store.allDevices().map((d) => this.tx.twinJson(d)),
      modules: () => {
        const devices = new Map<string, StoredDevice>();
        for (const d of this.store.allDevices()) devices.set(d.deviceId, d);
        const out: TwinJson[] = [];
        for (const m of this.store.allModules()) {
          const d = devices.get(m.deviceId);
          if (d) out.push(this.tx.twinJson(d, m));
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
    return parent ? this.tx.deviceJson(parent) : undefined;
  }

  /** Devices (leaves and edge devices) whose parent is `deviceId`. */
  getChildren(deviceId: string): DeviceJson[] {
    const d = this.store.getDevice(deviceId);
    if (!d) throw deviceNotFound(deviceId);
    if (!d.iotEdge) return [];
    return this.store.childrenOfScope(d.deviceScope).map((c) => this.tx.deviceJson(c));
  }

  /** `[deviceId, parent, grandparent, ...]`: the ids an auth chain names, nearest first. */
  ancestry(deviceId: string): string[] {
    const d = this.store.getDevice(deviceId);
    if (!d) throw deviceNotFound(deviceId);
    return ancestry(hierarchyView(this.store), nodeOf(d));
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
    return this.write(() => putDeviceTx(this.tx, deviceId, body, ifMatch, ifMatch === undefined ? 'create' : 'update'));
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
    return this.write(() => deleteDeviceTx(this.tx, deviceId, ifMatch));
  }

  /** `POST /devices`: up to 100 creates/updates/deletes, each succeeding or failing on its own. */
  bulk(body: unknown): BulkResultJson {
    return bulk(this.tx, body);
  }

  // ---------------------------------------------------------------------------------------
  // Modules

  /** `PUT /devices/{d}/modules/{m}`: create without `ifMatch`, replace with it. */
  putModule(deviceId: string, moduleId: string, body: unknown, ifMatch?: string): ModuleJson {
    return putModule(this.tx, deviceId, moduleId, body, ifMatch);
  }

  deleteModule(deviceId: string, moduleId: string, ifMatch?: string): void {
    deleteModule(this.tx, deviceId, moduleId, ifMatch);
  }

  // ---------------------------------------------------------------------------------------
  // Twins

  /**
   * Service-side twin write: `patch` merges tags and desired properties (null deletes),
   * `replace` swaps them wholesale. Reported properties belong to the device and are refused.
   */
  updateTwin(
    deviceId: string,
    moduleId: string | undefined,
    body: unknown,
    ifMatch: string | undefined,
    mode: 'patch' | 'replace',
  ): TwinJson {
    return updateTwin(this.tx, deviceId, moduleId, body, ifMatch, mode);
  }

  /** A device reports properties: a JSON merge patch (null deletes); reported `$version` +1. */
  updateReported(deviceId: string, moduleId: string | undefined, patch: object): { version: number } {
    return updateReported(this.tx, deviceId, moduleId, patch);
  }

  /**
   * `POST /devices/{id}/applyConfigurationContent`: each entry of `modulesContent` replaces the
   * desired properties of that module's twin (creating the module identity when the deployment
   * names one that does not exist yet); `deviceContent` does the same for the device twin.
   */
  applyConfigurationContent(deviceId: string, content: unknown): void {
    applyConfigurationContent(this.tx, deviceId, content);
  }

  // ---------------------------------------------------------------------------------------
  // Runtime state (not persisted: after a restart nothing is connected)

  setConnectionState(deviceId: string, moduleId: string | undefined, connected: boolean): void {
    this.runtime.set(deviceId, moduleId, connected, this.stamp());
  }

  /** Marks activity (a message, a twin call) without changing the connection state. */
  recordActivity(deviceId: string, moduleId?: string): void {
    this.runtime.touch(deviceId, moduleId, () => this.stamp());
  }

  isConnected(deviceId: string, moduleId?: string): boolean {
    return this.runtime.isConnected(deviceId, moduleId);
  }

  // ---------------------------------------------------------------------------------------
  // Internals

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
}
