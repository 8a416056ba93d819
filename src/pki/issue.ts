import { randomBytes, X509Certificate as NodeX509 } from 'node:crypto';
import { isIP } from 'node:net';
import type * as X509 from '@peculiar/x509';
import { UserError } from '../util/errors.ts';
import { x509 } from './x509-lib.ts';
import { generateKey, importSigningKey, parsePrivateKey, type KeyAlgorithm } from './keys.ts';
import { splitPemCertificates } from './pem.ts';

export interface IssuedCert {
  certPem: string;
  /** PKCS#8 PEM */
  keyPem: string;
}

export type KeyUsageName = 'digitalSignature' | 'keyEncipherment' | 'keyAgreement' | 'keyCertSign' | 'cRLSign';
export type ExtendedKeyUsageName = 'serverAuth' | 'clientAuth';

/** Everything a certificate can be made of; the create* functions below are the safe presets. */
export interface CertificateSpec {
  commonName: string;
  /** absent: self-signed */
  issuer?: IssuedCert;
  days?: number;
  /** exact notBefore; without it validity starts a few minutes ago to absorb clock skew */
  validFrom?: Date;
  keyAlgorithm?: KeyAlgorithm;
  /** a CA certificate (basicConstraints CA:true, critical); otherwise CA:false */
  ca?: boolean;
  pathLength?: number;
  keyUsage?: KeyUsageName[];
  extendedKeyUsage?: ExtendedKeyUsageName[];
  /** DNS names or IP addresses */
  subjectAltNames?: string[];
}

const CLOCK_SKEW_MS = 5 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;
const MAX_DAYS = 36_500;
/** RFC 5280's upper bound for a common name. */
export const MAX_COMMON_NAME = 64;

function keyUsageFlag(name: KeyUsageName): X509.KeyUsageFlags {
  const flags = x509().KeyUsageFlags;
  const byName: Record<KeyUsageName, X509.KeyUsageFlags> = {
    digitalSignature: flags.digitalSignature,
    keyEncipherment: flags.keyEncipherment,
    keyAgreement: flags.keyAgreement,
    keyCertSign: flags.keyCertSign,
    cRLSign: flags.cRLSign,
  };
  return byName[name];
}
function ekuOid(name: ExtendedKeyUsageName): string {
  return x509().ExtendedKeyUsage[name];
}
const CA_USAGE: KeyUsageName[] = ['keyCertSign', 'cRLSign', 'digitalSignature'];

function checkDays(days: number): void {
  if (!Number.isInteger(days) || days < 1 || days > MAX_DAYS) {
    throw new UserError(`invalid validity of ${days} days`, `Give a whole number of days between 1 and ${MAX_DAYS}`);
  }
}

/** Random, positive, 16 bytes: the high bit is cleared so the DER integer needs no padding byte. */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0] & 0x7f || 0x01;
  return bytes.toString('hex');
}

function generalName(name: string): X509.JsonGeneralName {
  return isIP(name) ? { type: 'ip', value: name } : { type: 'dns', value: name };
}

async function loadIssuer(
  issuer: IssuedCert,
): Promise<{ cert: X509.X509Certificate; signing: Awaited<ReturnType<typeof importSigningKey>> }> {
  const [first] = splitPemCertificates(issuer.certPem);
  if (!first)
    throw new UserError('the issuer certificate contains no PEM certificate', 'Pass the CA certificate in PEM form');
  let cert: X509.X509Certificate;
  try {
    cert = new (x509().X509Certificate)(first);
  } catch {
    throw new UserError(
      'the issuer certificate is not a valid X.509 certificate',
      'Pass the CA certificate in PEM form',
    );
  }
  let matches = false;
  try {
    matches = new NodeX509(first).checkPrivateKey(parsePrivateKey(issuer.keyPem, 'issuer private key'));
  } catch (err) {
    if (err instanceof UserError) throw err;
  }
  if (!matches) {
    throw new UserError(
      `the issuer private key does not belong to the issuer certificate (${cert.subject})`,
      'Pass the key file that was created together with that CA certificate',
    );
  }
  return { cert, signing: await importSigningKey(issuer.keyPem) };
}

/** Issues one certificate from a spec: a fresh key pair, signed by the issuer (or by itself). */
export async function issueCertificate(spec: CertificateSpec): Promise<IssuedCert> {
  const commonName = spec.commonName?.trim();
  if (!commonName) throw new UserError('a certificate needs a common name', 'Give a non-empty name');
  const days = spec.days ?? 365;
  checkDays(days);
  const notBefore = spec.validFrom ?? new Date(Date.now() - CLOCK_SKEW_MS);
  const notAfter = new Date((spec.validFrom ?? new Date()).getTime() + days * DAY_MS);

  const keys = await generateKey(spec.keyAlgorithm ?? 'rsa');
  const issuer = spec.issuer ? await loadIssuer(spec.issuer) : undefined;

  const extensions: X509.Extension[] = [
    new (x509().BasicConstraintsExtension)(spec.ca === true, spec.ca ? spec.pathLength : undefined, true),
    await x509().SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (issuer) {
    const issuerSki = issuer.cert.getExtension(x509().SubjectKeyIdentifierExtension);
    extensions.push(
      issuerSki
        ? new (x509().AuthorityKeyIdentifierExtension)(issuerSki.keyId)
        : await x509().AuthorityKeyIdentifierExtension.create(issuer.cert.publicKey),
    );
  } else {
    extensions.push(await x509().AuthorityKeyIdentifierExtension.create(keys.publicKey));
  }
  const usage = spec.keyUsage ?? (spec.ca ? CA_USAGE : []);
  if (usage.length) {
    extensions.push(
      new (x509().KeyUsagesExtension)(
        usage.reduce((acc, u) => acc | keyUsageFlag(u), 0),
        true,
      ),
    );
  }
  if (spec.extendedKeyUsage?.length) {
    extensions.push(new (x509().ExtendedKeyUsageExtension)(spec.extendedKeyUsage.map((u) => ekuOid(u))));
  }
  if (spec.subjectAltNames?.length) {
    extensions.push(new (x509().SubjectAlternativeNameExtension)(spec.subjectAltNames.map(generalName)));
  }

  const subject: X509.JsonName = [{ CN: [commonName] }];
  const cert = await x509().X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject,
    issuer: issuer ? issuer.cert.subjectName : subject,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: issuer ? issuer.signing.privateKey : keys.privateKey,
    signingAlgorithm: issuer ? issuer.signing.signingAlgorithm : keys.signingAlgorithm,
    extensions,
  });
  return { certPem: `${cert.toString('pem').replace(/\r\n/g, '\n').trim()}\n`, keyPem: keys.keyPem };
}

interface CaOptions {
  commonName: string;
  issuer: IssuedCert;
  days?: number;
  pathLength?: number;
  keyAlgorithm?: KeyAlgorithm;
  validFrom?: Date;
}

function checkPathLength(pathLength: number | undefined): void {
  if (pathLength !== undefined && (!Number.isInteger(pathLength) || pathLength < 0 || pathLength > 16)) {
    throw new UserError(`invalid path length ${pathLength}`, 'Give a whole number between 0 and 16');
  }
}

export async function createRootCa(o: {
  commonName: string;
  days?: number;
  keyAlgorithm?: KeyAlgorithm;
  validFrom?: Date;
}): Promise<IssuedCert> {
  return issueCertificate({ ...o, days: o.days ?? 3650, ca: true });
}

export async function createIntermediateCa(o: CaOptions): Promise<IssuedCert> {
  checkPathLength(o.pathLength);
  return issueCertificate({ ...o, days: o.days ?? 3650, ca: true });
}

/** The CA each gateway signs its own server certificates with; by default it may not create further CAs. */
export async function createEdgeCa(o: CaOptions): Promise<IssuedCert> {
  checkPathLength(o.pathLength);
  return issueCertificate({ ...o, days: o.days ?? 365, ca: true, pathLength: o.pathLength ?? 0 });
}

/** A DNS name or IP address as a certificate may carry it; throws a UserError naming the problem otherwise. */
export function checkHostName(name: string, asCommonName = false): void {
  if (isIP(name)) return;
  if (asCommonName && name.length >= MAX_COMMON_NAME) {
    throw new UserError(
      `host name "${name}" is ${name.length} characters long, but a server certificate's common name allows at most ${MAX_COMMON_NAME - 1}`,
      `Use a host name shorter than ${MAX_COMMON_NAME} characters (and configure the gateway with that name)`,
    );
  }
  const label = '[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?';
  if (name.length > 253 || !new RegExp(`^(\\*\\.)?${label}(\\.${label})*$`).test(name)) {
    throw new UserError(
      `"${name}" is not a valid host name or IP address`,
      'Use letters, digits, "-" and "." (for example gateway.example.com)',
    );
  }
}

export async function createServerCert(o: {
  hostname: string;
  extraNames?: string[];
  issuer: IssuedCert;
  days?: number;
  keyAlgorithm?: KeyAlgorithm;
  validFrom?: Date;
}): Promise<IssuedCert> {
  const hostname = o.hostname?.trim() ?? '';
  checkHostName(hostname, true);
  const names = [hostname];
  for (const extra of o.extraNames ?? []) {
    checkHostName(extra);
    if (!names.some((n) => n.toLowerCase() === extra.toLowerCase())) names.push(extra);
  }
  return issueCertificate({
    commonName: hostname,
    issuer: o.issuer,
    days: o.days ?? 365,
    validFrom: o.validFrom,
    keyAlgorithm: o.keyAlgorithm,
    keyUsage: (o.keyAlgorithm ?? 'rsa') === 'rsa' ? ['digitalSignature', 'keyEncipherment'] : ['digitalSignature'],
    extendedKeyUsage: ['serverAuth'],
    subjectAltNames: names,
  });
}

/** A device identity (X.509 authentication): CN = device id, clientAuth; self-signed when no issuer is given. */
export async function createDeviceCert(o: {
  commonName: string;
  issuer?: IssuedCert;
  days?: number;
  keyAlgorithm?: KeyAlgorithm;
  validFrom?: Date;
}): Promise<IssuedCert> {
  // IoT Hub device ids may be up to 128 characters and must equal the CN, so the RFC's 64 is not enforced here.
  if ((o.commonName ?? '').length > 128) {
    throw new UserError(
      `device id "${o.commonName}" is longer than 128 characters`,
      'Use a device id of at most 128 characters',
    );
  }
  return issueCertificate({
    commonName: o.commonName,
    issuer: o.issuer,
    days: o.days ?? 365,
    validFrom: o.validFrom,
    keyAlgorithm: o.keyAlgorithm,
    keyUsage: (o.keyAlgorithm ?? 'rsa') === 'rsa' ? ['digitalSignature', 'keyEncipherment'] : ['digitalSignature'],
    extendedKeyUsage: ['clientAuth'],
  });
}
