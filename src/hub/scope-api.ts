import type { X509Certificate } from 'node:crypto';
import type { ScopeDevice, ScopeModule } from '../identity/scope.ts';
import type { StoredDevice, StoredModule } from '../store/registry-store.ts';
import { FrozenLookups } from '../util/frozen-lookups.ts';
import type { IdentitySource, ModuleIdentityBackend } from '../scope/contract.ts';
import { moduleNotFound } from '../model/errors.ts';
import { authenticationJson, type Registry } from './registry.ts';

/**
 * The hub's side of the scope API (src/scope/): its registry as the IdentitySource the API
 * serves from. The contract, the feed and the plugin are re-exported for existing callers.
 */
export {
  DEFAULT_SCOPE_PAGE,
  MAX_SCOPE_PAGE,
  SCOPE_API_VERSION,
  authDepsOf,
  formatPosition,
  parsePosition,
  scopePaths,
  type FeedEvent,
  type FeedPosition,
  type IdentitySource,
  type ModuleIdentityBackend,
  type ModuleOnBehalfOfJson,
  type OnBehalfOfRequest,
  type OnBehalfOfResult,
  type ScopeListRequest,
  type ScopeListResult,
} from '../scope/contract.ts';
export { ScopeFeed } from '../scope/feed.ts';
export { scopeApi, type ScopeApiOptions } from '../scope/plugin.ts';

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
export function registryIdentitySource(
  registry: Registry,
  opts: { trustedCas?: () => X509Certificate[] } = {},
): IdentitySource {
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

/**
 * The module routes of the scope API, at the hub: the registry writes what the chain, checked by
 * the plugin, allows (keys generated on create and kept on update, as for any module).
 */
export function registryModuleBackend(registry: Registry): ModuleIdentityBackend {
  return {
    put: async (chain, module, ifMatch) => registry.putModule(chain[0]!, String(module.moduleId), module, ifMatch),
    get: async (chain, moduleId) => {
      const m = registry.getModule(chain[0]!, moduleId);
      if (!m) throw moduleNotFound(chain[0]!, moduleId);
      return m;
    },
    list: async (chain) => registry.listModules(chain[0]!),
    delete: async (chain, moduleId, ifMatch) => registry.deleteModule(chain[0]!, moduleId, ifMatch),
  };
}

/** The longest a lookup is kept, announced changes aside. */
const KNOWN_FOR_MS = 1000;
