/** The module write paths of the Registry: create, replace, delete, and the edge runtime's own modules. */
import type { StoredModule } from '../store/registry-store.ts';
import type { ModuleJson } from './types.ts';
import { HubError, badRequest, deviceNotFound, moduleNotFound } from '../model/errors.ts';
import { EDGE_SYSTEM_MODULES, isReservedModuleId, moduleIdProblem } from '../identity/device-id.ts';
import { generateKey } from '../identity/policies.ts';
import { isPlainObject, newTwin } from './twin-doc.ts';
import { checkEtag, newGenerationId, type RegistryTx } from './registry-core.ts';
import { parseAuthentication } from './registry-json.ts';

export function putModule(
  tx: RegistryTx,
  deviceId: string,
  moduleId: string,
  body: unknown,
  ifMatch?: string,
): ModuleJson {
  return tx.write(() => {
    const device = tx.store.getDevice(deviceId);
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
    if (body.managedBy !== undefined && body.managedBy !== null && typeof body.managedBy !== 'string')
      throw badRequest('managedBy must be a string');
    const existing = tx.store.getModule(deviceId, moduleId);
    const now = tx.stamp();
    let module: StoredModule;
    if (ifMatch === undefined) {
      if (existing)
        throw new HubError(
          409,
          'ModuleAlreadyExistsOnDevice',
          `module ${moduleId} already exists on device ${deviceId}`,
        );
      if (isReservedModuleId(moduleId))
        throw badRequest(`module ids starting with $ are reserved for the edge runtime (${moduleId})`);
      module = {
        deviceId,
        moduleId,
        generationId: newGenerationId(),
        etag: tx.newEtag(),
        managedBy: (body.managedBy as string | undefined) ?? '',
        authentication: parseAuthentication(body.authentication, undefined, `module ${deviceId}/${moduleId}`),
        twin: newTwin(now),
      };
      tx.queue('identity', deviceId, moduleId, 'created');
    } else {
      if (!existing) throw moduleNotFound(deviceId, moduleId);
      checkEtag(`module ${deviceId}/${moduleId}`, ifMatch, existing.etag);
      module = {
        ...existing,
        etag: tx.newEtag(),
        managedBy: body.managedBy === undefined ? existing.managedBy : ((body.managedBy as string | null) ?? ''),
        authentication: parseAuthentication(
          body.authentication,
          existing.authentication,
          `module ${deviceId}/${moduleId}`,
        ),
      };
      tx.queue('identity', deviceId, moduleId, 'updated');
    }
    tx.store.putModule(module);
    return tx.moduleJson(module);
  });
}

export function deleteModule(tx: RegistryTx, deviceId: string, moduleId: string, ifMatch?: string): void {
  tx.write(() => {
    const device = tx.store.getDevice(deviceId);
    if (!device) throw deviceNotFound(deviceId);
    const existing = tx.store.getModule(deviceId, moduleId);
    if (!existing) throw moduleNotFound(deviceId, moduleId);
    if (device.iotEdge && EDGE_SYSTEM_MODULES.includes(moduleId)) {
      throw badRequest(`${moduleId} belongs to the edge runtime of ${deviceId} and cannot be deleted`);
    }
    checkEtag(`module ${deviceId}/${moduleId}`, ifMatch ?? '*', existing.etag);
    tx.store.deleteModule(deviceId, moduleId);
    tx.forgetRuntime(deviceId, moduleId);
    tx.queue('identity', deviceId, moduleId, 'deleted');
  });
}

export function newModule(
  tx: RegistryTx,
  deviceId: string,
  moduleId: string,
  managedBy: string,
  now: string,
): StoredModule {
  return {
    deviceId,
    moduleId,
    generationId: newGenerationId(),
    etag: tx.newEtag(),
    managedBy,
    authentication: { type: 'sas', primaryKey: generateKey(), secondaryKey: generateKey() },
    twin: newTwin(now),
  };
}

/** Gives an edge device the runtime's system modules it lacks. */
export function ensureEdgeModules(tx: RegistryTx, deviceId: string, now: string): void {
  for (const moduleId of EDGE_SYSTEM_MODULES) {
    if (tx.store.getModule(deviceId, moduleId)) continue;
    tx.store.putModule(newModule(tx, deviceId, moduleId, '', now));
    tx.queue('identity', deviceId, moduleId, 'created');
  }
}
