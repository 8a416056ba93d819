import type { ModuleIdentities, ModuleIdentity } from '../agent/ports.ts';
import type { ScopeCache } from '../scope/cache.ts';
import type { ScopeSync } from '../scope/sync.ts';

/**
 * Module identities as the gateway's scope knows them: read from the scope cache, asking the
 * parent once for one it does not know yet. This reads only: a module whose identity nobody
 * created at the hub is named as such. (Creating them through the parent chain, as nested IoT
 * Edge does, replaces this.)
 */
export class ScopeModuleIdentities implements ModuleIdentities {
  constructor(private readonly o: { deviceId: string; scope: ScopeCache; sync: ScopeSync }) {}

  async ensure(moduleId: string): Promise<ModuleIdentity> {
    const { deviceId, scope, sync } = this.o;
    let m = scope.getModule(deviceId, moduleId);
    if (!m) {
      await sync.onDemand(deviceId, moduleId).catch(() => undefined);
      m = scope.getModule(deviceId, moduleId);
    }
    if (!m)
      throw new Error(
        `the module identity ${deviceId}/${moduleId} does not exist at the hub (create it, e.g. \`strata device module create\`)`,
      );
    const keys = m.authentication?.symmetricKey;
    if (m.authentication?.type !== 'sas' || !keys?.primaryKey)
      throw new Error(`the module identity ${deviceId}/${moduleId} has no SAS keys for the workload API to sign with`);
    return {
      moduleId,
      generationId: m.generationId,
      primaryKey: keys.primaryKey,
      secondaryKey: keys.secondaryKey ?? keys.primaryKey,
    };
  }

  /** Left to the user: this reader does not delete identities at the hub. */
  async remove(): Promise<void> {}

  /** Nothing is listed for removal by this reader. */
  async list(): Promise<string[]> {
    return [];
  }
}
