type Scope = 'device' | 'module' | 'hub';
type Type = 'sas' | 'x509Certificate';

const SHORT_AUTH_METHODS = new Map<string, string>();
const FULL_AUTH_METHODS = new Map<string, string>();
for (const scope of ['device', 'module', 'hub'] as const) {
  for (const type of ['sas', 'x509Certificate'] as const) {
    const text = JSON.stringify({ scope, type, issuer: 'iothub', acceptingIpFilterRule: null });
    SHORT_AUTH_METHODS.set(text, `${scope}.${type}`);
    FULL_AUTH_METHODS.set(`${scope}.${type}`, text);
  }
}

/**
 * The JSON text IoT Hub stamps as `iothub-connection-auth-method`: one shared string per form,
 * so that each connected identity does not hold a copy of its own.
 */
export function authMethodText(scope: Scope, type: Type): string {
  return FULL_AUTH_METHODS.get(`${scope}.${type}`)!;
}

/**
 * An auth method text as stores keep it: the standard forms by a short name (the full text is
 * about a fifth of every stored message's or event's row), anything else as it is. The short
 * names never start with `{`, so rows written before keep reading the same.
 */
export function compactAuthMethod(text: string): string {
  return SHORT_AUTH_METHODS.get(text) ?? text;
}

/** The auth method text a stored one (short name or full text) stands for. */
export function expandAuthMethod(stored: string): string {
  return FULL_AUTH_METHODS.get(stored) ?? stored;
}
