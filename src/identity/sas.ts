import { createHmac, timingSafeEqual } from 'node:crypto';

/** A parsed `SharedAccessSignature sr=...&sig=...&se=...[&skn=...]` token. */
export interface SasToken {
  /** The audience exactly as it appears in the token (still URL-encoded): the signature covers this text. */
  srRaw: string;
  /** The decoded audience, e.g. `myhub.local/devices/dev1`. */
  sr: string;
  /** The signature, decoded from its URL encoding (base64 text). */
  sig: string;
  /** Expiry, seconds since the epoch. */
  se: number;
  /** Policy (key) name, for service tokens. */
  skn?: string;
}

export class SasError extends Error {
  constructor(
    message: string,
    readonly code: 'malformed' | 'expired' | 'bad-signature' | 'wrong-audience',
  ) {
    super(message);
    this.name = 'SasError';
  }
}

const PREFIX = 'SharedAccessSignature ';

export function parseSasToken(token: string): SasToken {
  if (typeof token !== 'string' || !token.startsWith(PREFIX)) {
    throw new SasError('not a SAS token: it must start with "SharedAccessSignature "', 'malformed');
  }
  const fields = new Map<string, string>();
  for (const part of token.slice(PREFIX.length).trim().split('&')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new SasError(`malformed SAS token field "${part}"`, 'malformed');
    fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const srRaw = fields.get('sr');
  const sigRaw = fields.get('sig');
  const seRaw = fields.get('se');
  if (!srRaw || !sigRaw || !seRaw) throw new SasError('SAS token must carry sr, sig and se', 'malformed');
  const se = Number(seRaw);
  if (!Number.isFinite(se) || !/^\d+$/.test(seRaw))
    throw new SasError(`SAS token expiry "${seRaw}" is not a number`, 'malformed');
  let sr: string;
  let sig: string;
  try {
    sr = decodeURIComponent(srRaw);
    sig = decodeURIComponent(sigRaw);
  } catch {
    throw new SasError('SAS token has invalid URL encoding', 'malformed');
  }
  const skn = fields.get('skn');
  return { srRaw, sr, sig, se, skn: skn === undefined ? undefined : decodeURIComponent(skn) };
}

/** HMAC-SHA256 over `{sr}\n{se}` with the base64-decoded key, base64 encoded. */
export function computeSignature(srRaw: string, se: number, keyBase64: string): string {
  return createHmac('sha256', Buffer.from(keyBase64, 'base64')).update(`${srRaw}\n${se}`).digest('base64');
}

/** Builds a token as the official SDKs do: the audience URL-encoded, fields sr, sig, [skn,] se. */
export function createSasToken(
  audience: string,
  keyBase64: string,
  expirySeconds: number,
  policyName?: string,
): string {
  const srRaw = encodeURIComponent(audience);
  const sig = encodeURIComponent(computeSignature(srRaw, expirySeconds, keyBase64));
  const skn = policyName ? `&skn=${encodeURIComponent(policyName)}` : '';
  return `${PREFIX}sr=${srRaw}&sig=${sig}${skn}&se=${expirySeconds}`;
}

/** True when the signature matches one of the keys (primary first, then secondary). */
export function signatureMatches(token: SasToken, keys: Array<string | undefined>): boolean {
  const given = Buffer.from(token.sig, 'base64');
  for (const key of keys) {
    if (!key) continue;
    const expected = Buffer.from(computeSignature(token.srRaw, token.se, key), 'base64');
    if (expected.length === given.length && timingSafeEqual(expected, given)) return true;
  }
  return false;
}

export function isExpired(token: SasToken, nowMs = Date.now()): boolean {
  return token.se * 1000 <= nowMs;
}

/**
 * Splits an audience into host and resource path: `hub.local/devices/d1` -> host `hub.local`,
 * path `/devices/d1`. Host names are compared case-insensitively by callers.
 */
export function splitAudience(sr: string): { host: string; path: string } {
  const noScheme = sr.replace(/^[a-z]+:\/\//i, '');
  const slash = noScheme.indexOf('/');
  if (slash < 0) return { host: noScheme, path: '' };
  return { host: noScheme.slice(0, slash), path: noScheme.slice(slash).replace(/\/+$/, '') };
}
