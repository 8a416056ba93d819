import type { ScopeDevice, ScopeModule } from '../identity/scope.ts';

/**
 * Identity records as a parent sends them: checked before the scope cache stores them (a record
 * offline authentication cannot use is refused), and compared whatever their key order.
 */

/** A record from upstream that cannot be an identity. */
export class ScopeRecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScopeRecordError';
  }
}

const AUTH_TYPES = ['sas', 'selfSigned', 'certificateAuthority', 'none'];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkAuthentication(a: unknown, who: string): void {
  if (!isObject(a)) throw new ScopeRecordError(`${who} has no authentication`);
  if (typeof a.type !== 'string' || !AUTH_TYPES.includes(a.type))
    throw new ScopeRecordError(`${who} has an unknown authentication type ${JSON.stringify(a.type)}`);
  if (a.symmetricKey !== undefined && a.symmetricKey !== null && !isObject(a.symmetricKey))
    throw new ScopeRecordError(`${who}: symmetricKey must be an object`);
  if (a.x509Thumbprint !== undefined && a.x509Thumbprint !== null && !isObject(a.x509Thumbprint))
    throw new ScopeRecordError(`${who}: x509Thumbprint must be an object`);
}

/** Throws ScopeRecordError unless `d` has what offline authentication and scope rules need. */
export function checkScopeDevice(d: unknown): asserts d is ScopeDevice {
  if (!isObject(d) || typeof d.deviceId !== 'string' || d.deviceId === '')
    throw new ScopeRecordError('a device record has no deviceId');
  const who = `device ${d.deviceId}`;
  if (d.status !== 'enabled' && d.status !== 'disabled')
    throw new ScopeRecordError(`${who} has status ${JSON.stringify(d.status)}, not enabled or disabled`);
  if (typeof d.generationId !== 'string') throw new ScopeRecordError(`${who} has no generationId`);
  if (!isObject(d.capabilities) || typeof d.capabilities.iotEdge !== 'boolean')
    throw new ScopeRecordError(`${who} has no capabilities.iotEdge`);
  if (typeof d.deviceScope !== 'string') throw new ScopeRecordError(`${who} has no deviceScope`);
  if (!Array.isArray(d.parentScopes) || d.parentScopes.some((s) => typeof s !== 'string'))
    throw new ScopeRecordError(`${who} has no parentScopes list`);
  checkAuthentication(d.authentication, who);
}

export function checkScopeModule(m: unknown): asserts m is ScopeModule {
  if (
    !isObject(m) ||
    typeof m.deviceId !== 'string' ||
    m.deviceId === '' ||
    typeof m.moduleId !== 'string' ||
    m.moduleId === ''
  ) {
    throw new ScopeRecordError('a module record has no deviceId or moduleId');
  }
  const who = `module ${m.deviceId}/${m.moduleId}`;
  if (typeof m.generationId !== 'string') throw new ScopeRecordError(`${who} has no generationId`);
  checkAuthentication(m.authentication, who);
}

/** Equal as JSON values, whatever the key order (a resync must not report unchanged identities). */
export function sameRecord(a: unknown, b: unknown): boolean {
  return canonical(a) === canonical(b);
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isObject(v)) {
    return `{${Object.keys(v)
      .filter((k) => v[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}
