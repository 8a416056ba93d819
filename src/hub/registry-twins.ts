/** The twin write paths of the Registry: service-side patches, device reports, deployments. */
import { diffValues } from '../util/merge-patch.ts';
import type { StoredTwin } from '../store/registry-store.ts';
import type { TwinJson } from './types.ts';
import { badRequest, deviceNotFound, moduleNotFound } from '../model/errors.ts';
import { checkEdgeHubDesired } from './deployment-check.ts';
import { EDGE_SYSTEM_MODULES, isReservedModuleId, moduleIdProblem } from '../identity/device-id.ts';
import {
  TWIN_LIMITS,
  applyPropertiesPatch,
  checkSize,
  cleanPatch,
  isPlainObject,
  mergeValues,
  twinEtag,
  withoutNulls,
} from './twin-doc.ts';
import { checkEtag, type RegistryTx } from './registry-core.ts';
import { newModule } from './registry-modules.ts';

export function updateTwin(
  tx: RegistryTx,
  deviceId: string,
  moduleId: string | undefined,
  body: unknown,
  ifMatch: string | undefined,
  mode: 'patch' | 'replace',
): TwinJson {
  return tx.write(() => {
    const device = tx.store.getDevice(deviceId);
    if (!device) throw deviceNotFound(deviceId);
    const module = moduleId === undefined ? undefined : tx.store.getModule(deviceId, moduleId);
    if (moduleId !== undefined && !module) throw moduleNotFound(deviceId, moduleId);
    const twin = module ? module.twin : device.twin;
    const what = moduleId === undefined ? `the twin of ${deviceId}` : `the twin of ${deviceId}/${moduleId}`;
    checkEtag(what, ifMatch ?? '*', twinEtag(twin.version));
    if (!isPlainObject(body)) throw badRequest('the twin patch must be a JSON object');
    const props = body.properties;
    if (props !== undefined && props !== null && !isPlainObject(props))
      throw badRequest('properties must be a JSON object');
    if (isPlainObject(props) && props.reported !== undefined) {
      throw badRequest('reported properties can only be changed by the device itself');
    }
    const now = tx.stamp();
    if (mode === 'patch') {
      // null for a whole section clears it (as IoT Hub does): a patch naming every property as null.
      if (body.tags === null) twin.tags = {};
      else if (body.tags !== undefined) {
        mergeValues(twin.tags, cleanPatch('tags', body.tags));
        checkSize('tags', twin.tags, TWIN_LIMITS.tagsBytes);
      }
      if (isPlainObject(props) && props.desired !== undefined) {
        const patch =
          props.desired === null ? clearAll(twin.desired.values) : cleanPatch('properties.desired', props.desired);
        applyPropertiesPatch(twin.desired, patch, now, true);
        checkSize('desired properties', twin.desired.values, TWIN_LIMITS.desiredBytes);
        tx.queue('desired', deviceId, moduleId, { ...patch, $version: twin.desired.version });
      }
    } else {
      twin.tags = withoutNulls(body.tags === undefined || body.tags === null ? {} : cleanPatch('tags', body.tags));
      checkSize('tags', twin.tags, TWIN_LIMITS.tagsBytes);
      const desired =
        isPlainObject(props) && props.desired !== undefined && props.desired !== null
          ? cleanPatch('properties.desired', props.desired)
          : {};
      replaceDesired(tx, deviceId, moduleId, twin, withoutNulls(desired), now);
    }
    checkEdgeHubDesired(moduleId, twin.desired.values, 'ArgumentInvalid');
    twin.version += 1;
    if (module) tx.store.putModule(module);
    else tx.store.putDevice(device);
    return tx.twinJson(device, module);
  });
}

export function updateReported(
  tx: RegistryTx,
  deviceId: string,
  moduleId: string | undefined,
  patch: object,
): { version: number } {
  return tx.write(() => {
    const device = tx.store.getDevice(deviceId);
    if (!device) throw deviceNotFound(deviceId);
    const module = moduleId === undefined ? undefined : tx.store.getModule(deviceId, moduleId);
    if (moduleId !== undefined && !module) throw moduleNotFound(deviceId, moduleId);
    const twin = module ? module.twin : device.twin;
    const clean = cleanPatch('reported properties', patch);
    applyPropertiesPatch(twin.reported, clean, tx.stamp(), false);
    checkSize('reported properties', twin.reported.values, TWIN_LIMITS.reportedBytes);
    twin.version += 1;
    if (module) tx.store.putModule(module);
    else tx.store.putDevice(device);
    tx.queue('reported', deviceId, moduleId, { ...clean, $version: twin.reported.version });
    return { version: twin.reported.version };
  });
}

export function applyConfigurationContent(tx: RegistryTx, deviceId: string, content: unknown): void {
  tx.write(() => {
    const device = tx.store.getDevice(deviceId);
    if (!device) throw deviceNotFound(deviceId);
    if (!isPlainObject(content)) throw badRequest('the configuration content must be a JSON object');
    const now = tx.stamp();
    const modulesContent = content.modulesContent;
    if (modulesContent !== undefined && modulesContent !== null) {
      if (!isPlainObject(modulesContent)) throw badRequest('modulesContent must be a JSON object keyed by module id');
      if (!device.iotEdge)
        throw badRequest(`device ${deviceId} is not an IoT Edge device, so it cannot take modulesContent`);
      for (const [moduleId, entry] of Object.entries(modulesContent)) {
        const problem = moduleIdProblem(moduleId);
        if (problem) throw badRequest(`modulesContent: ${problem}`);
        const desired = desiredOf(`modulesContent.${moduleId}`, entry);
        checkEdgeHubDesired(moduleId, desired, 'InvalidConfigurationContent');
        let module = tx.store.getModule(deviceId, moduleId);
        if (!module) {
          if (isReservedModuleId(moduleId) && !EDGE_SYSTEM_MODULES.includes(moduleId)) {
            throw badRequest(`modulesContent names ${moduleId}, but module ids starting with $ are reserved`);
          }
          module = newModule(tx, deviceId, moduleId, 'IotEdge', now);
          tx.queue('identity', deviceId, moduleId, 'created');
        }
        replaceDesired(tx, deviceId, moduleId, module.twin, desired, now);
        module.twin.version += 1;
        tx.store.putModule(module);
      }
    }
    if (content.deviceContent !== undefined && content.deviceContent !== null) {
      const desired = desiredOf('deviceContent', content.deviceContent);
      replaceDesired(tx, deviceId, undefined, device.twin, desired, now);
      device.twin.version += 1;
      tx.store.putDevice(device);
    }
  });
}

export function replaceDesired(
  tx: RegistryTx,
  deviceId: string,
  moduleId: string | undefined,
  twin: StoredTwin,
  desired: Record<string, unknown>,
  now: string,
): void {
  checkSize('desired properties', desired, TWIN_LIMITS.desiredBytes);
  const patch = diffValues(twin.desired.values, desired);
  applyPropertiesPatch(twin.desired, patch, now, true);
  tx.queue('desired', deviceId, moduleId, { ...patch, $version: twin.desired.version });
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
