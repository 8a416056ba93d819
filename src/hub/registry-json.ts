/**
 * The registry's JSON mapping: stored devices, modules and twins as IoT Hub's REST API shows
 * them, and device / authentication bodies read back into what the store keeps.
 */
import type { AuthType, StoredAuthentication, StoredDevice, StoredModule } from '../store/registry-store.ts';
import type { AuthenticationJson, DeviceJson, ModuleJson, TwinJson } from './types.ts';
import { badRequest } from '../model/errors.ts';
import { generateKey } from '../identity/policies.ts';
import { isPlainObject, propertiesJson, twinEtag } from './twin-doc.ts';
import type { RuntimeJson } from './registry-runtime.ts';

/** How many cloud-to-device messages wait for a device or module. */
type CloudToDeviceCount = (deviceId: string, moduleId?: string) => number;

export function deviceJson(d: StoredDevice, rt: RuntimeJson, cloudToDeviceCount: CloudToDeviceCount): DeviceJson {
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
    cloudToDeviceMessageCount: cloudToDeviceCount(d.deviceId),
    authentication: authenticationJson(d.authentication),
    capabilities: { iotEdge: d.iotEdge },
    deviceScope: d.deviceScope,
    parentScopes: [...d.parentScopes],
  };
}

export function moduleJson(m: StoredModule, rt: RuntimeJson, cloudToDeviceCount: CloudToDeviceCount): ModuleJson {
  return {
    moduleId: m.moduleId,
    managedBy: m.managedBy,
    deviceId: m.deviceId,
    generationId: m.generationId,
    etag: m.etag,
    connectionState: rt.connectionState,
    connectionStateUpdatedTime: rt.connectionStateUpdatedTime,
    lastActivityTime: rt.lastActivityTime,
    cloudToDeviceMessageCount: cloudToDeviceCount(m.deviceId, m.moduleId),
    authentication: authenticationJson(m.authentication),
  };
}

/** The twin of device `d`, or of its module `m`; `rt` is the connection state of the same. */
export function twinJson(
  d: StoredDevice,
  m: StoredModule | undefined,
  rt: RuntimeJson,
  cloudToDeviceCount: CloudToDeviceCount,
): TwinJson {
  const owner = m ?? d;
  const twin = owner.twin;
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
    cloudToDeviceMessageCount: cloudToDeviceCount(d.deviceId, m?.moduleId),
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

export interface DeviceInput {
  status?: 'enabled' | 'disabled';
  statusReason?: string | null;
  authentication?: unknown;
  iotEdge?: boolean;
  deviceScope?: string | null;
  parentScopes?: string[] | null;
}

export function parseDeviceBody(deviceId: string, body: unknown): DeviceInput {
  if (!isPlainObject(body)) throw badRequest('the request body must be a device JSON object');
  if (body.deviceId !== undefined && body.deviceId !== deviceId) {
    throw badRequest(`the body names device ${JSON.stringify(body.deviceId)} but the path names ${deviceId}`);
  }
  const out: DeviceInput = {};
  if (body.status !== undefined && body.status !== null) {
    const s = String(body.status).toLowerCase();
    if (s !== 'enabled' && s !== 'disabled')
      throw badRequest(`status must be "enabled" or "disabled", not ${JSON.stringify(body.status)}`);
    out.status = s;
  }
  if (body.statusReason !== undefined) {
    if (body.statusReason !== null && typeof body.statusReason !== 'string')
      throw badRequest('statusReason must be a string');
    if (typeof body.statusReason === 'string' && body.statusReason.length > 128)
      throw badRequest('statusReason is longer than 128 characters');
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
    if (body.deviceScope !== null && typeof body.deviceScope !== 'string')
      throw badRequest('deviceScope must be a string');
    out.deviceScope = body.deviceScope;
  }
  if (body.parentScopes !== undefined) {
    const p = body.parentScopes;
    if (p !== null && (!Array.isArray(p) || p.some((s) => typeof s !== 'string')))
      throw badRequest('parentScopes must be an array of scope strings');
    out.parentScopes = p as string[] | null;
  }
  return out;
}

const AUTH_TYPES: readonly AuthType[] = ['sas', 'selfSigned', 'certificateAuthority', 'none'];

/**
 * Reads `authentication` from a device or module body. SAS keys left empty are generated on
 * create and kept on update (so a partial update never rotates keys by accident).
 */
export function parseAuthentication(
  raw: unknown,
  existing: StoredAuthentication | undefined,
  what: string,
): StoredAuthentication {
  if (raw === undefined || raw === null)
    return existing ?? { type: 'sas', primaryKey: generateKey(), secondaryKey: generateKey() };
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
    if (!t)
      throw badRequest(
        `authentication.type of ${what} must be one of ${AUTH_TYPES.join(', ')}, not ${JSON.stringify(raw.type)}`,
      );
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
    if (!primaryThumb)
      throw badRequest(`${what} uses selfSigned authentication but has no x509Thumbprint.primaryThumbprint`);
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
    throw badRequest(
      `authentication.x509Thumbprint.${name} of ${what} must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint`,
    );
  }
}

export function authenticationJson(a: StoredAuthentication): AuthenticationJson {
  return {
    symmetricKey: {
      primaryKey: a.type === 'sas' ? (a.primaryKey ?? null) : null,
      secondaryKey: a.type === 'sas' ? (a.secondaryKey ?? null) : null,
    },
    x509Thumbprint: {
      primaryThumbprint: a.type === 'selfSigned' ? (a.primaryThumbprint ?? null) : null,
      secondaryThumbprint: a.type === 'selfSigned' ? (a.secondaryThumbprint ?? null) : null,
    },
    type: a.type,
  } as AuthenticationJson;
}
