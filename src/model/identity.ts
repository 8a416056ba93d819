/**
 * Who is speaking: identities, the credentials they present and what a successful
 * authentication says about them. The vocabulary every layer shares.
 */

/** A device (`moduleId` undefined) or a module identity. */
export interface IdentityRef {
  deviceId: string;
  moduleId?: string;
}

/** How an identity proved itself; `x509` covers both self-signed (thumbprint) and CA-signed. */
export type AuthKind = 'sas' | 'x509-thumbprint' | 'x509-ca';

/** What a head hands to `Engine.authenticate`. Give a SAS token, a client certificate, or both. */
export interface AuthRequest extends IdentityRef {
  /** `SharedAccessSignature sr=...&sig=...&se=...` as the client sent it. */
  sasToken?: string;
  /** The TLS client certificate (DER), with whatever intermediates the client presented. */
  clientCertificate?: ClientCertificate;
  /** Extra host names accepted as the audience host (a gateway also accepts its own). */
  acceptedHostNames?: string[];
}

export interface ClientCertificate {
  /** DER of the leaf certificate. */
  raw: Buffer;
  /** DER of the further certificates the client presented, leaf's issuer first. */
  chain?: Buffer[];
}

/** A successful authentication. */
export interface AuthResult {
  identity: IdentityRef;
  kind: AuthKind;
  /** When the credential stops being valid (epoch ms): the SAS `se`, or the certificate's notAfter. */
  expiresAt?: number;
  /** The identity's generationId in the registry, when it has one. */
  generationId?: string;
  /** For SAS: whether a module signed with its device's key. */
  signedWithDeviceKey?: boolean;
  /**
   * The value IoT Hub puts in `iothub-connection-auth-method`: a JSON text such as
   * `{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`.
   */
  authMethod: string;
}

/** The registry's device/module record, as far as the engine reads it (IoT Hub JSON shape). */
export interface RegistryIdentity {
  deviceId: string;
  moduleId?: string;
  generationId?: string;
  status?: 'enabled' | 'disabled' | string;
  authentication?: {
    type?: 'sas' | 'selfSigned' | 'certificateAuthority' | 'none' | string;
    symmetricKey?: { primaryKey?: string | null; secondaryKey?: string | null } | null;
    x509Thumbprint?: { primaryThumbprint?: string | null; secondaryThumbprint?: string | null } | null;
  };
}

/** The one key of an identity: `dev` or `dev/mod` (device ids cannot hold a slash). */
export function identityKey(id: IdentityRef): string;
export function identityKey(deviceId: string, moduleId?: string): string;
export function identityKey(a: IdentityRef | string, moduleId?: string): string {
  const deviceId = typeof a === 'string' ? a : a.deviceId;
  const mod = typeof a === 'string' ? moduleId : a.moduleId;
  return mod === undefined || mod === '' ? deviceId : `${deviceId}/${mod}`;
}

/** The identity an identity key names, or undefined when it names none (read off the wire, so checked). */
export function identityOfKey(key: string): IdentityRef | undefined {
  const slash = key.indexOf('/');
  const deviceId = slash < 0 ? key : key.slice(0, slash);
  const moduleId = slash < 0 ? undefined : key.slice(slash + 1);
  if (deviceId === '' || moduleId === '' || moduleId?.includes('/') || key.length > 257) return undefined;
  return moduleId === undefined ? { deviceId } : { deviceId, moduleId };
}

/** `device d` or `module d/m`, as errors and logs name an identity. */
export function describeIdentity(id: IdentityRef): string {
  return id.moduleId === undefined ? `device ${id.deviceId}` : `module ${id.deviceId}/${id.moduleId}`;
}
