import type { IdentityRef } from '../../model/identity.ts';

/**
 * Link addresses as IoT Hub knows them. Fixed words are matched case-insensitively (clients
 * differ in how they spell `serviceBound`); device and module ids keep their case, as they do
 * in the registry.
 */

/** What a device-scoped address names. `kind` says which link it is from the client's side. */
export type DeviceLinkKind =
  | 'events' // /devices/{d}[/modules/{m}]/messages/events (telemetry, or module inputs when the client receives)
  | 'devicebound' // /devices/{d}/messages/devicebound (C2D)
  | 'methods' // /devices/{d}[/modules/{m}]/methods/devicebound
  | 'twin'; // /devices/{d}[/modules/{m}]/twin

export interface DeviceAddress {
  kind: DeviceLinkKind;
  identity: IdentityRef;
}

/**
 * The path part of an address: clients may send `amqps://host/devices/...`, a bare path, or one
 * with a query (`?api-version=...`).
 */
export function addressPath(address: string | undefined | null): string {
  if (!address) return '';
  let path = String(address).trim();
  const scheme = /^[a-z][a-z0-9+.-]*:\/\/[^/]*/i.exec(path);
  if (scheme) path = path.slice(scheme[0].length);
  const q = path.indexOf('?');
  if (q >= 0) path = path.slice(0, q);
  if (path.length > 1) path = path.replace(/\/+$/, '');
  return path;
}

function segment(s: string, decode: boolean): string | undefined {
  if (s === '') return undefined;
  if (!decode) return s;
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * Parses a device or module link address; undefined when the path is not one. The device SDKs
 * put ids into link addresses as they are, the service SDK URL-encodes them in `to`: `decode`
 * says which.
 */
export function parseDeviceAddress(address: string | undefined | null, decode = false): DeviceAddress | undefined {
  const parts = addressPath(address).split('/');
  // ['', 'devices', d, ...rest]
  if (parts.length < 4 || parts[0] !== '' || parts[1]!.toLowerCase() !== 'devices') return undefined;
  const deviceId = segment(parts[2]!, decode);
  if (!deviceId) return undefined;
  let rest = parts.slice(3);
  let moduleId: string | undefined;
  if (rest[0]?.toLowerCase() === 'modules' && rest.length >= 3) {
    moduleId = segment(rest[1]!, decode);
    if (!moduleId) return undefined;
    rest = rest.slice(2);
  }
  const tail = rest.join('/').toLowerCase();
  const identity: IdentityRef = moduleId === undefined ? { deviceId } : { deviceId, moduleId };
  switch (tail) {
    case 'messages/events':
      return { kind: 'events', identity };
    case 'messages/devicebound':
      // Modules have no C2D queue in IoT Hub.
      return moduleId === undefined ? { kind: 'devicebound', identity } : undefined;
    case 'methods/devicebound':
      return { kind: 'methods', identity };
    case 'twin':
      return { kind: 'twin', identity };
    default:
      return undefined;
  }
}

/** The service-side addresses of IoT Hub's messaging endpoint. */
export type ServiceLinkKind = 'c2d' | 'feedback' | 'file-notifications';

export function parseServiceAddress(address: string | undefined | null): ServiceLinkKind | undefined {
  const p = addressPath(address).toLowerCase();
  if (p === '/messages/devicebound') return 'c2d';
  if (p === '/messages/servicebound/feedback') return 'feedback';
  if (p === '/messages/servicebound/filenotifications') return 'file-notifications';
  return undefined;
}

/** `to` of a service C2D message: `/devices/{id}/messages/devicebound`, the id URL-encoded by the service SDK. */
export function parseC2DTarget(to: string | undefined | null): string | undefined {
  const parsed = parseDeviceAddress(to, true);
  return parsed?.kind === 'devicebound' ? parsed.identity.deviceId : undefined;
}

export function isCbsAddress(address: string | undefined | null): boolean {
  return addressPath(address).toLowerCase() === '$cbs';
}
