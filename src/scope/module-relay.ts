import { HubError } from '../model/errors.ts';
import { formatAuthChain } from '../identity/scope.ts';
import { scopePaths, type ModuleIdentityBackend, type ModuleOnBehalfOfJson } from './contract.ts';
import { ScopeSyncError, type ScopeParentClient } from './parent-client.ts';

/**
 * A gateway's backend for the module routes: each request goes on to its own parent, signed
 * as this gateway's `$edgeHub`, with the checked chain extended by this gateway, as nested
 * IoT Edge relays them. The parent's refusal comes back with its status, code and words; a
 * parent that cannot be reached is a 502 naming it.
 */
export function moduleRelay(client: ScopeParentClient): ModuleIdentityBackend {
  const paths = scopePaths(client.edgeDeviceId);
  const upward = (chain: readonly string[]) => formatAuthChain([...chain, client.edgeDeviceId]);

  async function relay<T>(
    method: 'POST' | 'PUT',
    path: string,
    body: Record<string, unknown>,
    what: string,
    ifMatch?: string,
  ): Promise<T> {
    try {
      return await client.request<T>(method, path, body, { what, ...(ifMatch !== undefined ? { ifMatch } : {}) });
    } catch (err) {
      if (err instanceof ScopeSyncError && err.status !== undefined && err.status >= 400) {
        throw new HubError(err.status, err.code ?? `HTTP${err.status}`, err.reason ?? err.message);
      }
      const why = err instanceof Error ? err.message : String(err);
      throw new HubError(502, 'ParentUnreachable', `gateway ${client.edgeDeviceId} could not relay ${what}: ${why}`);
    }
  }

  return {
    put: (chain, module, ifMatch) =>
      relay<ModuleOnBehalfOfJson>(
        'PUT',
        paths.putModule,
        { authChain: upward(chain), module },
        `writing module ${String(module.moduleId)} of ${chain[0]}`,
        ifMatch,
      ),
    get: (chain, moduleId) =>
      relay<ModuleOnBehalfOfJson>(
        'POST',
        paths.getModule,
        { authChain: upward(chain), targetModuleId: moduleId },
        `reading module ${moduleId} of ${chain[0]}`,
      ),
    list: (chain) =>
      relay<ModuleOnBehalfOfJson[]>(
        'POST',
        paths.listModules,
        { authChain: upward(chain) },
        `listing the modules of ${chain[0]}`,
      ),
    delete: async (chain, moduleId, ifMatch) => {
      await relay<void>(
        'POST',
        paths.deleteModule,
        { authChain: upward(chain), moduleId },
        `deleting module ${moduleId} of ${chain[0]}`,
        ifMatch,
      );
    },
  };
}
