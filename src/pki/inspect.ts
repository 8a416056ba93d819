import { X509Certificate as NodeX509 } from 'node:crypto';
import type * as X509 from '@peculiar/x509';
import { UserError } from '../util/errors.ts';
import { x509 } from './x509-lib.ts';
import { parsePrivateKey } from './keys.ts';
import { readPemFile, splitPemCertificates } from './pem.ts';

/** One certificate seen through both libraries: node's for signatures and name checks, peculiar's for extensions. */
export interface ParsedCert {
  pem: string;
  node: NodeX509;
  x: X509.X509Certificate;
}

export function parseCertificate(pem: string, what = 'certificate'): ParsedCert {
  const [first] = splitPemCertificates(pem);
  if (!first)
    throw new UserError(
      `the ${what} contains no PEM certificate`,
      'Pass a file with a -----BEGIN CERTIFICATE----- block',
    );
  try {
    return { pem: first, node: new NodeX509(first), x: new (x509().X509Certificate)(first) };
  } catch {
    throw new UserError(
      `the ${what} is not a valid X.509 certificate`,
      'Check that the file was not truncated or edited',
    );
  }
}

export function parseCertificates(pem: string, what = 'certificate'): ParsedCert[] {
  return splitPemCertificates(pem).map((block) => parseCertificate(block, what));
}

/** SHA-1 and SHA-256 fingerprints of the first certificate, as IoT Hub shows them: upper-case hex, no colons. */
export function thumbprints(certPem: string): { sha1: string; sha256: string } {
  const { node } = parseCertificate(certPem);
  return {
    sha1: node.fingerprint.replace(/:/g, '').toUpperCase(),
    sha256: node.fingerprint256.replace(/:/g, '').toUpperCase(),
  };
}

export function keyMatchesCertificate(keyPem: string, certPem: string): boolean {
  try {
    return parseCertificate(certPem).node.checkPrivateKey(parsePrivateKey(keyPem));
  } catch {
    return false;
  }
}

export function isCa(cert: ParsedCert): boolean {
  return cert.x.getExtension(x509().BasicConstraintsExtension)?.ca === true;
}

function keyUsageNames(): Array<[X509.KeyUsageFlags, string]> {
  const flags = x509().KeyUsageFlags;
  return [
    [flags.digitalSignature, 'digitalSignature'],
    [flags.nonRepudiation, 'nonRepudiation'],
    [flags.keyEncipherment, 'keyEncipherment'],
    [flags.dataEncipherment, 'dataEncipherment'],
    [flags.keyAgreement, 'keyAgreement'],
    [flags.keyCertSign, 'keyCertSign'],
    [flags.cRLSign, 'cRLSign'],
    [flags.encipherOnly, 'encipherOnly'],
    [flags.decipherOnly, 'decipherOnly'],
  ];
}
const EKU_NAMES: Record<string, string> = {
  '1.3.6.1.5.5.7.3.1': 'serverAuth',
  '1.3.6.1.5.5.7.3.2': 'clientAuth',
  '1.3.6.1.5.5.7.3.3': 'codeSigning',
  '1.3.6.1.5.5.7.3.4': 'emailProtection',
  '1.3.6.1.5.5.7.3.8': 'timeStamping',
  '1.3.6.1.5.5.7.3.9': 'OCSPSigning',
  '2.5.29.37.0': 'anyExtendedKeyUsage',
};

/** Key usage names, or undefined when the certificate has no key usage extension (any usage allowed). */
export function keyUsageOf(cert: ParsedCert): string[] | undefined {
  const ext = cert.x.getExtension(x509().KeyUsagesExtension);
  if (!ext) return undefined;
  return keyUsageNames()
    .filter(([flag]) => (ext.usages & flag) !== 0)
    .map(([, name]) => name);
}

/** Extended key usage names (OIDs when unnamed), or undefined when the extension is absent (any purpose). */
export function extendedKeyUsageOf(cert: ParsedCert): string[] | undefined {
  const ext = cert.x.getExtension(x509().ExtendedKeyUsageExtension);
  if (!ext) return undefined;
  return ext.usages.map((u) => EKU_NAMES[String(u)] ?? String(u));
}

export function subjectAltNamesOf(cert: ParsedCert): string[] {
  const ext = cert.x.getExtension(x509().SubjectAlternativeNameExtension);
  if (!ext) return [];
  return ext.names.items.map((n) => `${n.type === 'ip' ? 'IP' : n.type === 'dns' ? 'DNS' : n.type}:${n.value}`);
}

export interface CertificateSummary {
  subject: string;
  issuer: string;
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  selfSigned: boolean;
  publicKey: string;
  subjectAltNames: string[];
  keyUsage?: string[];
  extendedKeyUsage?: string[];
  basicConstraints?: { ca: boolean; pathLength?: number; critical: boolean };
  thumbprints: { sha1: string; sha256: string };
}

function describeKey(cert: ParsedCert): string {
  const key = cert.node.publicKey;
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'rsa') return `RSA ${details?.modulusLength ?? '?'} bits`;
  if (key.asymmetricKeyType === 'ec') return `EC ${details?.namedCurve ?? '?'}`;
  return key.asymmetricKeyType ?? 'unknown';
}

export function summarizeCertificate(certPem: string): CertificateSummary {
  const cert = parseCertificate(certPem);
  const bc = cert.x.getExtension(x509().BasicConstraintsExtension);
  return {
    subject: cert.x.subject,
    issuer: cert.x.issuer,
    serialNumber: cert.x.serialNumber.toUpperCase(),
    notBefore: cert.x.notBefore,
    notAfter: cert.x.notAfter,
    selfSigned: cert.node.subject === cert.node.issuer && cert.node.verify(cert.node.publicKey),
    publicKey: describeKey(cert),
    subjectAltNames: subjectAltNamesOf(cert),
    keyUsage: keyUsageOf(cert),
    extendedKeyUsage: extendedKeyUsageOf(cert),
    basicConstraints: bc ? { ca: bc.ca, pathLength: bc.pathLength, critical: bc.critical } : undefined,
    thumbprints: thumbprints(cert.pem),
  };
}

/** Reads a PEM file that must hold at least one valid certificate; errors name the file and the fix. */
export function readCertificateFile(file: string, what: string, hintWhenMissing?: string): string {
  const pem = readPemFile(file, what, hintWhenMissing);
  const blocks = splitPemCertificates(pem);
  if (!blocks.length) {
    throw new UserError(
      `${what} ${file} holds no certificate${/PRIVATE KEY-----/.test(pem) ? ' (it is a private key)' : ''}`,
      'Pass a PEM file with a -----BEGIN CERTIFICATE----- block',
    );
  }
  for (const block of blocks) parseCertificate(block, `${what} ${file}`);
  return pem;
}
