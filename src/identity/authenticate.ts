import { X509Certificate, createHash } from 'node:crypto';
import { EngineError } from '../model/errors.ts';
import type { AuthRequest, AuthResult, ClientCertificate, IdentityRef, RegistryIdentity } from '../model/identity.ts';
import { authMethodText } from './auth-method.ts';
import { isExpired, parseSasToken, signatureMatches, splitAudience, SasError } from './sas.ts';

/** What authentication needs to know about the hub. */
export interface AuthenticateDeps {
  getDevice(deviceId: string): Promise<RegistryIdentity | undefined | null> | RegistryIdentity | undefined | null;
  getModule(
    deviceId: string,
    moduleId: string,
  ): Promise<RegistryIdentity | undefined | null> | RegistryIdentity | undefined | null;
  /** Host names accepted as the SAS audience host (the hub's, and a gateway's own). */
  hostNames: string[];
  /** CA certificates registered for `certificateAuthority` devices. */
  trustedCas(): X509Certificate[];
  now?: () => number;
}

const MAX_CHAIN = 6;

/**
 * The single place where device and module credentials are checked, for every protocol head.
 * Throws EngineError with code unauthorized | not-found | disabled | expired; the message says
 * precisely why (for the log line), heads decide how much of it reaches the client.
 */
export async function authenticate(req: AuthRequest, deps: AuthenticateDeps): Promise<AuthResult> {
  const now = deps.now?.() ?? Date.now();
  const who = describe(req);
  if (!req.deviceId) throw new EngineError('unauthorized', 'no device id given');

  const device = await deps.getDevice(req.deviceId);
  if (!device) throw new EngineError('not-found', `${who} is not registered`);
  let identity: RegistryIdentity = device;
  if (req.moduleId !== undefined) {
    const mod = await deps.getModule(req.deviceId, req.moduleId);
    if (!mod) throw new EngineError('not-found', `${who} is not registered`);
    identity = mod;
  }

  let result: AuthResult;
  if (req.sasToken !== undefined && req.sasToken !== '') {
    result = checkSas(req, identity, device, deps, now, who);
  } else if (req.clientCertificate) {
    result = checkCertificate(req, req.clientCertificate, identity, deps, now, who);
  } else {
    throw new EngineError('unauthorized', `${who} presented neither a SAS token nor a client certificate`);
  }

  // Checked after the credential so that the status of an identity is not told to strangers.
  if (device.status === 'disabled') throw new EngineError('disabled', `device ${req.deviceId} is disabled`);
  if (identity !== device && identity.status === 'disabled') throw new EngineError('disabled', `${who} is disabled`);
  result.generationId = identity.generationId;
  return result;
}

function checkSas(
  req: AuthRequest,
  identity: RegistryIdentity,
  device: RegistryIdentity,
  deps: AuthenticateDeps,
  now: number,
  who: string,
): AuthResult {
  let token;
  try {
    token = parseSasToken(req.sasToken!);
  } catch (err) {
    throw new EngineError('unauthorized', `${who}: ${err instanceof SasError ? err.message : 'unreadable SAS token'}`);
  }
  if (token.skn)
    throw new EngineError(
      'unauthorized',
      `${who}: a shared access policy token (skn=${token.skn}) cannot authenticate a device`,
    );
  const { host, path } = splitAudience(token.sr);
  const hosts = [...deps.hostNames, ...(req.acceptedHostNames ?? [])].map((h) => h.toLowerCase());
  if (!hosts.includes(host.toLowerCase())) {
    throw new EngineError(
      'unauthorized',
      `${who}: SAS token audience host "${host}" is not this hub (${hosts.join(', ')})`,
    );
  }
  const audience = parseResourcePath(path);
  if (!audience || audience.deviceId !== req.deviceId || audience.moduleId !== req.moduleId) {
    throw new EngineError('unauthorized', `${who}: SAS token audience "${token.sr}" is for another identity`);
  }

  const ownKeys = sasKeys(identity);
  let signedWithDeviceKey = false;
  let ok = ownKeys.length > 0 && signatureMatches(token, ownKeys);
  if (!ok && req.moduleId !== undefined) {
    const deviceKeys = sasKeys(device);
    ok = deviceKeys.length > 0 && signatureMatches(token, deviceKeys);
    signedWithDeviceKey = ok;
  }
  if (!ok) {
    if (ownKeys.length === 0 && !signedWithDeviceKey) {
      throw new EngineError('unauthorized', `${who} uses ${authTypeOf(identity)} authentication, not SAS keys`);
    }
    throw new EngineError('unauthorized', `${who}: SAS token signature does not match its keys`);
  }
  if (isExpired(token, now)) {
    throw new EngineError('expired', `${who}: SAS token expired at ${new Date(token.se * 1000).toISOString()}`);
  }
  return {
    identity: ref(req),
    kind: 'sas',
    expiresAt: token.se * 1000,
    signedWithDeviceKey: signedWithDeviceKey || undefined,
    authMethod: authMethodText(req.moduleId !== undefined ? 'module' : 'device', 'sas'),
  };
}

function checkCertificate(
  req: AuthRequest,
  presented: ClientCertificate,
  identity: RegistryIdentity,
  deps: AuthenticateDeps,
  now: number,
  who: string,
): AuthResult {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(presented.raw);
  } catch {
    throw new EngineError('unauthorized', `${who}: the client certificate cannot be read`);
  }
  const type = authTypeOf(identity);
  if (type === 'selfSigned') {
    const sha1 = createHash('sha1').update(presented.raw).digest('hex').toUpperCase();
    const sha256 = createHash('sha256').update(presented.raw).digest('hex').toUpperCase();
    const thumbs = [
      identity.authentication?.x509Thumbprint?.primaryThumbprint,
      identity.authentication?.x509Thumbprint?.secondaryThumbprint,
    ]
      .filter((t): t is string => typeof t === 'string' && t.length > 0)
      .map((t) => t.replace(/[:\s]/g, '').toUpperCase());
    if (!thumbs.includes(sha1) && !thumbs.includes(sha256)) {
      throw new EngineError(
        'unauthorized',
        `${who}: client certificate thumbprint ${sha1} (SHA-1) / ${sha256} (SHA-256) is not registered`,
      );
    }
    checkValidity(leaf, now, who, 'client certificate');
    return {
      identity: ref(req),
      kind: 'x509-thumbprint',
      expiresAt: Date.parse(leaf.validTo),
      authMethod: authMethodText(scopeOf(req), 'x509Certificate'),
    };
  }
  if (type === 'certificateAuthority') {
    const expectedCn = req.moduleId !== undefined ? `${req.deviceId}/${req.moduleId}` : req.deviceId;
    const cn = commonName(leaf);
    if (cn !== expectedCn)
      throw new EngineError('unauthorized', `${who}: client certificate CN "${cn ?? ''}" is not "${expectedCn}"`);
    checkValidity(leaf, now, who, 'client certificate');
    verifyChain(leaf, presented.chain ?? [], deps.trustedCas(), now, who);
    return {
      identity: ref(req),
      kind: 'x509-ca',
      expiresAt: Date.parse(leaf.validTo),
      authMethod: authMethodText(scopeOf(req), 'x509Certificate'),
    };
  }
  throw new EngineError('unauthorized', `${who} uses ${type} authentication, not X.509 certificates`);
}

/** Walks leaf -> presented intermediates -> a registered CA, checking signatures, CA flags and validity. */
function verifyChain(
  leaf: X509Certificate,
  presented: Buffer[],
  trusted: X509Certificate[],
  now: number,
  who: string,
): void {
  if (trusted.length === 0)
    throw new EngineError('unauthorized', `${who}: no CA certificate is registered with the hub (strata hub ca add)`);
  const pool: X509Certificate[] = [];
  for (const der of presented) {
    try {
      pool.push(new X509Certificate(der));
    } catch {
      /* an unreadable extra certificate just cannot help build the chain */
    }
  }
  let current = leaf;
  for (let depth = 0; depth < MAX_CHAIN; depth++) {
    const anchor = trusted.find((ca) => issuedBy(current, ca));
    if (anchor) {
      checkValidity(anchor, now, who, `registered CA "${anchor.subject.replace(/\n/g, ', ')}"`);
      return;
    }
    const next = pool.find((c) => c !== current && c.ca && issuedBy(current, c));
    if (!next) {
      throw new EngineError(
        'unauthorized',
        `${who}: certificate "${current.subject.replace(/\n/g, ', ')}" does not chain to a CA registered with the hub (issuer "${current.issuer.replace(/\n/g, ', ')}")`,
      );
    }
    checkValidity(next, now, who, `intermediate "${next.subject.replace(/\n/g, ', ')}"`);
    current = next;
  }
  throw new EngineError('unauthorized', `${who}: certificate chain longer than ${MAX_CHAIN}`);
}

function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function checkValidity(cert: X509Certificate, now: number, who: string, what: string): void {
  if (Date.parse(cert.validFrom) > now)
    throw new EngineError('unauthorized', `${who}: ${what} is not valid before ${cert.validFrom}`);
  if (Date.parse(cert.validTo) <= now) throw new EngineError('expired', `${who}: ${what} expired at ${cert.validTo}`);
}

function commonName(cert: X509Certificate): string | undefined {
  for (const line of cert.subject.split('\n')) {
    if (line.startsWith('CN=')) return line.slice(3);
  }
  return undefined;
}

/** `/devices/{d}` or `/devices/{d}/modules/{m}`; ids decoded once more for SDKs that double-encode. */
export function parseResourcePath(path: string): IdentityRef | undefined {
  const m = /^\/devices\/([^/]+)(?:\/modules\/([^/]+))?$/.exec(path);
  if (!m) return undefined;
  const dec = (s: string): string => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  return m[2] === undefined ? { deviceId: dec(m[1]) } : { deviceId: dec(m[1]), moduleId: dec(m[2]) };
}

function sasKeys(identity: RegistryIdentity): string[] {
  const type = authTypeOf(identity);
  if (type !== 'sas') return [];
  const k = identity.authentication?.symmetricKey;
  return [k?.primaryKey, k?.secondaryKey].filter((x): x is string => typeof x === 'string' && x.length > 0);
}

function authTypeOf(identity: RegistryIdentity): string {
  return identity.authentication?.type ?? 'sas';
}

function scopeOf(req: IdentityRef): 'device' | 'module' {
  return req.moduleId !== undefined ? 'module' : 'device';
}

/** Where the heads have always found it. */
export { authMethodText };

function ref(req: IdentityRef): IdentityRef {
  return req.moduleId !== undefined ? { deviceId: req.deviceId, moduleId: req.moduleId } : { deviceId: req.deviceId };
}

function describe(req: IdentityRef): string {
  return req.moduleId !== undefined ? `module ${req.deviceId}/${req.moduleId}` : `device ${req.deviceId}`;
}
