/** The device write paths of the Registry: create or replace, delete (orphaning children), bulk import. */
import type { StoredDevice } from '../store/registry-store.ts';
import type { BulkResultJson, DeviceJson } from './types.ts';
import { HubError, badRequest, deviceNotFound } from '../model/errors.ts';
import { EDGE_SYSTEM_MODULES, deviceIdProblem } from '../identity/device-id.ts';
import { HierarchyError, orphansOf, resolveScopes } from '../identity/hierarchy.ts';
import { NEVER, isPlainObject, newTwin } from './twin-doc.ts';
import { checkEtag, hierarchyView, newGenerationId, nodeOf, type RegistryTx } from './registry-core.ts';
import { parseAuthentication, parseDeviceBody } from './registry-json.ts';
import { ensureEdgeModules } from './registry-modules.ts';

/** Import modes of `POST /devices`, matched case-insensitively. */
const IMPORT_MODES = [
  'create',
  'update',
  'updateifmatchetag',
  'delete',
  'deleteifmatchetag',
  'createorupdate',
  'createorupdateifmatchetag',
] as const;

export function bulk(tx: RegistryTx, body: unknown): BulkResultJson {
  if (!Array.isArray(body)) throw badRequest('the bulk request body must be a JSON array of devices');
  if (body.length === 0 || body.length > 100)
    throw badRequest(`a bulk request carries 1 to 100 devices, this one has ${body.length}`);
  const seen = new Set<string>();
  for (const item of body) {
    const id = isPlainObject(item) ? (item.id ?? item.deviceId) : undefined;
    if (typeof id !== 'string') throw badRequest('every device in a bulk request needs an "id"');
    if (seen.has(id))
      throw badRequest(`device ${id} appears more than once in the bulk request`, 'DeviceDefinedMultipleTimes');
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
        throw badRequest(
          `unknown importMode "${String(raw.importMode)}" (use create, update, updateIfMatchETag, delete or deleteIfMatchETag)`,
        );
      }
      const needEtag = mode.endsWith('ifmatchetag');
      if (needEtag && !etag) throw badRequest(`importMode ${String(raw.importMode)} needs the device's eTag`);
      const match = needEtag ? etag! : '*';
      tx.write(() => {
        if (mode.startsWith('delete')) deleteDeviceTx(tx, id, match);
        else if (mode === 'create') putDeviceTx(tx, id, { ...rest, deviceId: id }, undefined, 'create');
        else if (mode.startsWith('createorupdate')) {
          const exists = tx.store.getDevice(id) !== undefined;
          putDeviceTx(tx, id, { ...rest, deviceId: id }, exists ? match : undefined, exists ? 'update' : 'create');
        } else putDeviceTx(tx, id, { ...rest, deviceId: id }, match, 'update');
      });
    } catch (err) {
      if (!(err instanceof HubError)) throw err;
      result.isSuccessful = false;
      result.errors.push({ deviceId: id, errorCode: err.code, errorStatus: err.message });
    }
  }
  return result;
}

/** Creates or replaces a device inside the caller's write (see Registry.putDevice). */
export function putDeviceTx(
  tx: RegistryTx,
  deviceId: string,
  body: unknown,
  ifMatch: string | undefined,
  intent: 'create' | 'update',
): DeviceJson {
  const problem = deviceIdProblem(deviceId);
  if (problem) throw badRequest(problem);
  const input = parseDeviceBody(deviceId, body);
  const existing = tx.store.getDevice(deviceId);
  const now = tx.stamp();
  let device: StoredDevice;
  if (intent === 'create') {
    if (existing) throw new HubError(409, 'DeviceAlreadyExists', `device ${deviceId} already exists`);
    const generationId = newGenerationId();
    const isEdge = input.iotEdge ?? false;
    const scopes = resolveScopesOf(tx, {
      deviceId,
      generationId,
      isEdge,
      deviceScope: input.deviceScope,
      parentScopes: input.parentScopes,
    });
    device = {
      deviceId,
      generationId,
      etag: tx.newEtag(),
      status: input.status ?? 'enabled',
      statusReason: input.statusReason ?? null,
      statusUpdatedTime: NEVER,
      authentication: parseAuthentication(input.authentication, undefined, `device ${deviceId}`),
      iotEdge: isEdge,
      deviceScope: scopes.deviceScope,
      parentScopes: scopes.parentScopes,
      twin: newTwin(now),
    };
    tx.store.putDevice(device);
    tx.queue('identity', deviceId, undefined, 'created');
  } else {
    if (!existing) throw deviceNotFound(deviceId);
    checkEtag(`device ${deviceId}`, ifMatch ?? '*', existing.etag);
    const isEdge = input.iotEdge ?? existing.iotEdge;
    const scopes = resolveScopesOf(tx, {
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
      etag: tx.newEtag(),
      status,
      statusReason: input.statusReason === undefined ? existing.statusReason : input.statusReason,
      statusUpdatedTime: status !== existing.status ? now : existing.statusUpdatedTime,
      authentication: parseAuthentication(input.authentication, existing.authentication, `device ${deviceId}`),
      iotEdge: isEdge,
      deviceScope: scopes.deviceScope,
      parentScopes: scopes.parentScopes,
    };
    tx.store.putDevice(device);
    tx.queue('identity', deviceId, undefined, 'updated');
    if (existing.iotEdge && !isEdge) {
      for (const moduleId of EDGE_SYSTEM_MODULES) {
        if (!tx.store.getModule(deviceId, moduleId)) continue;
        tx.store.deleteModule(deviceId, moduleId);
        tx.queue('identity', deviceId, moduleId, 'deleted');
      }
    }
  }
  if (device.iotEdge) ensureEdgeModules(tx, deviceId, now);
  return tx.deviceJson(device);
}

/** Deletes a device inside the caller's write (see Registry.deleteDevice). */
export function deleteDeviceTx(tx: RegistryTx, deviceId: string, ifMatch: string | undefined): { orphaned: string[] } {
  const existing = tx.store.getDevice(deviceId);
  if (!existing) throw deviceNotFound(deviceId);
  checkEtag(`device ${deviceId}`, ifMatch ?? '*', existing.etag);
  const orphaned: string[] = [];
  if (existing.iotEdge) {
    for (const o of orphansOf(hierarchyView(tx.store), existing.deviceScope)) {
      const child = tx.store.getDevice(o.node.deviceId);
      if (!child || child.deviceId === deviceId) continue;
      tx.store.putDevice({ ...child, deviceScope: o.deviceScope, parentScopes: o.parentScopes, etag: tx.newEtag() });
      tx.queue('identity', child.deviceId, undefined, 'updated');
      orphaned.push(child.deviceId);
    }
  }
  const modules = tx.store.listModules(deviceId);
  tx.store.deleteDevice(deviceId);
  for (const m of modules) {
    tx.forgetRuntime(deviceId, m.moduleId);
    tx.queue('identity', deviceId, m.moduleId, 'deleted');
  }
  tx.forgetRuntime(deviceId, undefined);
  tx.queue('identity', deviceId, undefined, 'deleted');
  return { orphaned };
}

function resolveScopesOf(
  tx: RegistryTx,
  req: Parameters<typeof resolveScopes>[1],
): { deviceScope: string; parentScopes: string[] } {
  try {
    return resolveScopes(hierarchyView(tx.store), req);
  } catch (err) {
    if (err instanceof HierarchyError) {
      throw badRequest(err.message, err.code === 'InvalidDeviceScope' ? 'InvalidDeviceScope' : 'ArgumentInvalid');
    }
    throw err;
  }
}
