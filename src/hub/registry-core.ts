/** What the Registry's parts share: its events, the write context, the hierarchy view, etags and generation ids. */
import { randomInt } from 'node:crypto';
import type { RegistryStore, StoredDevice, StoredModule } from '../store/registry-store.ts';
import type { DeviceJson, IdentityChange, ModuleJson, TwinJson } from './types.ts';
import { preconditionFailed } from '../model/errors.ts';
import type { HierarchyNode, HierarchyView } from '../identity/hierarchy.ts';

export interface RegistryEvents {
  /** Desired properties changed through the service side; `patch` carries `$version`. */
  desired: [deviceId: string, moduleId: string | undefined, patch: Record<string, unknown>];
  /** Reported properties changed by the device; `patch` carries `$version`. */
  reported: [deviceId: string, moduleId: string | undefined, patch: Record<string, unknown>];
  /** Any registry change of a device or module identity. */
  identity: [deviceId: string, moduleId: string | undefined, kind: IdentityChange];
}

/**
 * What the write paths (registry-devices, -modules, -twins) need of the Registry: its store,
 * etags and clock, the events it emits once a write commits, and the JSON it answers with.
 */
export interface RegistryTx {
  readonly store: RegistryStore;
  /** Runs a write in one transaction and emits its events only once it has committed. */
  write<T>(fn: () => T): T;
  queue<K extends keyof RegistryEvents>(name: K, ...args: RegistryEvents[K]): void;
  newEtag(): string;
  stamp(): string;
  /** Drops the connection state of a deleted device or module. */
  forgetRuntime(deviceId: string, moduleId: string | undefined): void;
  deviceJson(d: StoredDevice): DeviceJson;
  moduleJson(m: StoredModule): ModuleJson;
  twinJson(d: StoredDevice, m?: StoredModule): TwinJson;
}

export function nodeOf(d: StoredDevice): HierarchyNode {
  return { deviceId: d.deviceId, isEdge: d.iotEdge, deviceScope: d.deviceScope, parentScopes: d.parentScopes };
}

export function hierarchyView(store: RegistryStore): HierarchyView {
  return {
    ownerOf: (scope) => {
      const d = store.edgeByScope(scope);
      return d ? nodeOf(d) : undefined;
    },
    childrenOf: (scope) => store.childrenOfScope(scope).map(nodeOf),
  };
}

/** Like IoT Hub's generation ids: a long decimal number, new for every incarnation of an id. */
export function newGenerationId(): string {
  return `${Date.now()}${String(randomInt(1_000_000)).padStart(6, '0')}`;
}

export function checkEtag(what: string, ifMatch: string, current: string): void {
  const given = unquote(ifMatch.trim());
  if (given === '*' || given === current) return;
  throw preconditionFailed(what, given, current);
}

export function unquote(s: string): string {
  return s.length >= 2 && s.startsWith('"') && s.endsWith('"') ? s.slice(1, -1) : s;
}
