import { randomBytes } from 'node:crypto';
import { type SasError, isExpired, parseSasToken, signatureMatches, splitAudience, type SasToken } from './sas.ts';

/** The rights an IoT Hub shared access policy can grant. */
export type Right = 'RegistryRead' | 'RegistryWrite' | 'ServiceConnect' | 'DeviceConnect';
export const ALL_RIGHTS: readonly Right[] = ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect'];

export interface AccessPolicy {
  keyName: string;
  primaryKey: string;
  secondaryKey: string;
  rights: Right[];
}

/** The policies every IoT hub starts with. */
export const DEFAULT_POLICY_RIGHTS: ReadonlyArray<{ keyName: string; rights: Right[] }> = [
  { keyName: 'iothubowner', rights: ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect'] },
  { keyName: 'service', rights: ['ServiceConnect'] },
  { keyName: 'device', rights: ['DeviceConnect'] },
  { keyName: 'registryRead', rights: ['RegistryRead'] },
  { keyName: 'registryReadWrite', rights: ['RegistryRead', 'RegistryWrite'] },
];

/** A 256-bit key, base64, as IoT Hub generates them. */
export function generateKey(): string {
  return randomBytes(32).toString('base64');
}

export function generateDefaultPolicies(): AccessPolicy[] {
  return DEFAULT_POLICY_RIGHTS.map((p) => ({
    keyName: p.keyName,
    primaryKey: generateKey(),
    secondaryKey: generateKey(),
    rights: [...p.rights],
  }));
}

/** RegistryWrite includes reading, as in IoT Hub. */
export function hasRight(policy: Pick<AccessPolicy, 'rights'>, right: Right): boolean {
  if (policy.rights.includes(right)) return true;
  return right === 'RegistryRead' && policy.rights.includes('RegistryWrite');
}

export function hasAnyRight(policy: Pick<AccessPolicy, 'rights'>, rights: readonly Right[]): boolean {
  return rights.some((r) => hasRight(policy, r));
}

/** Why a service token was refused; `status` is the HTTP status IoT Hub answers with. */
export class AccessDenied extends Error {
  readonly status = 401;
  readonly code = 'IotHubUnauthorizedAccess';
  constructor(message: string) {
    super(message);
    this.name = 'AccessDenied';
  }
}

export interface PolicyAuthOptions {
  /** Host names the token audience may name (the hub's own; compared case-insensitively). */
  hostnames: string[];
  policy(keyName: string): AccessPolicy | undefined;
  /** The resource being accessed, e.g. `/devices/d1`: a token scoped to a path must cover it. */
  resourcePath?: string;
  nowMs?: number;
}

/**
 * Checks a `SharedAccessSignature ...skn=...` policy token and returns the policy it proves.
 * Device tokens (no `skn`) and anything malformed, expired, mis-addressed or badly signed are
 * refused with an AccessDenied that says which.
 */
export function authenticatePolicyToken(
  header: string | undefined,
  opts: PolicyAuthOptions,
): { policy: AccessPolicy; token: SasToken } {
  if (!header)
    throw new AccessDenied(
      'no Authorization header: send a SharedAccessSignature made with a shared access policy key',
    );
  let token: SasToken;
  try {
    token = parseSasToken(header.trim());
  } catch (err) {
    throw new AccessDenied(`malformed Authorization header: ${(err as SasError).message}`);
  }
  if (!token.skn) {
    throw new AccessDenied('this API needs a token signed with a shared access policy (skn=...), not a device key');
  }
  const { host, path } = splitAudience(token.sr);
  if (!opts.hostnames.some((h) => h.toLowerCase() === host.toLowerCase())) {
    throw new AccessDenied(`token audience ${host} does not name this hub (${opts.hostnames[0]})`);
  }
  if (path && opts.resourcePath !== undefined && !pathCovers(path, opts.resourcePath)) {
    throw new AccessDenied(`token audience ${token.sr} does not cover ${opts.resourcePath}`);
  }
  const policy = opts.policy(token.skn);
  if (!policy) throw new AccessDenied(`unknown shared access policy "${token.skn}"`);
  if (
    !signatureMatches(token, [policy.primaryKey, policy.secondaryKey]) &&
    !serviceBusSignatureMatches(token, policy)
  ) {
    throw new AccessDenied(`token signature does not match the keys of policy ${policy.keyName}`);
  }
  if (isExpired(token, opts.nowMs)) {
    throw new AccessDenied(`token expired at ${new Date(token.se * 1000).toISOString()}`);
  }
  return { policy, token };
}

/**
 * Issue 6: Event Hubs clients (token audience `sb://...` or `amqps://...`) sign as Service Bus
 * does, keyed with the text of the key rather than its base64-decoded bytes.
 */
function serviceBusSignatureMatches(token: SasToken, policy: AccessPolicy): boolean {
  if (!/^(sb|amqps?):\/\//i.test(token.sr)) return false;
  const asText = (key: string) => Buffer.from(key, 'utf8').toString('base64');
  return signatureMatches(token, [asText(policy.primaryKey), asText(policy.secondaryKey)]);
}

function pathCovers(scope: string, resource: string): boolean {
  const a = scope.toLowerCase();
  const b = resource.toLowerCase();
  return b === a || b.startsWith(a.endsWith('/') ? a : `${a}/`);
}

/** Throws AccessDenied unless the policy holds one of `rights`. */
export function requireRight(policy: AccessPolicy, rights: readonly Right[], what: string): void {
  if (!hasAnyRight(policy, rights)) {
    throw new AccessDenied(`policy ${policy.keyName} may not ${what}: it needs ${rights.join(' or ')}`);
  }
}
