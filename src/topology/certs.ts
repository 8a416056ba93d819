import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  createEdgeCa,
  createIntermediateCa,
  createRootCa,
  createServerCert,
  fullChainPem,
  keyMatchesCertificate,
  parseCertificate,
  writeCertFile,
  writeKeyFile,
  type IssuedCert,
} from '../pki/index.ts';

/**
 * The topology's certificates, laid out as `strata certs --out DIR/certs` lays them out (the
 * seeds' file names), so `strata certs create-device X --out DIR/certs` issues more from the
 * same root. One root for the whole hierarchy; it is kept across `up`s so anything that
 * already trusts it keeps working.
 */

export const ROOT_NAME = 'azure-iot-test-only';

export interface RootSet {
  rootCert: string;
  rootPem: string;
  /** The intermediate, which signs the Edge CAs and the hub's server certificate. */
  issuer: IssuedCert;
  intermediateChainPem: string;
}

export interface CertAndKey {
  /** Certificate followed by its issuers up to the root. */
  fullChain: string;
  key: string;
}

const certPath = (out: string, base: string) => join(out, 'certs', `${base}.cert.pem`);
const keyPath = (out: string, base: string) => join(out, 'private', `${base}.key.pem`);

export function rootCertPath(out: string): string {
  return join(out, 'certs', `${ROOT_NAME}.root.ca.cert.pem`);
}

function stillGood(certPem: string, keyPem: string): boolean {
  try {
    const cert = parseCertificate(certPem);
    return keyMatchesCertificate(keyPem, certPem) && cert.x.notAfter.getTime() - Date.now() > 7 * 86_400_000;
  } catch {
    return false;
  }
}

function tryRead(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** The root and intermediate in `out`, made when missing, unreadable or close to expiry. */
export async function ensureRootSet(out: string): Promise<{ set: RootSet; created: boolean }> {
  const rootCert = rootCertPath(out);
  const rootKey = join(out, 'private', `${ROOT_NAME}.root.ca.key.pem`);
  const interBase = `${ROOT_NAME}.intermediate`;
  const existing = {
    rootPem: tryRead(rootCert),
    rootKey: tryRead(rootKey),
    interPem: tryRead(certPath(out, interBase)),
    interKey: tryRead(keyPath(out, interBase)),
  };
  if (
    existing.rootPem &&
    existing.rootKey &&
    existing.interPem &&
    existing.interKey &&
    stillGood(existing.rootPem, existing.rootKey) &&
    stillGood(existing.interPem, existing.interKey)
  ) {
    const issuer = { certPem: existing.interPem, keyPem: existing.interKey };
    return {
      set: {
        rootCert,
        rootPem: existing.rootPem,
        issuer,
        intermediateChainPem: fullChainPem(issuer.certPem, existing.rootPem),
      },
      created: false,
    };
  }
  const root = await createRootCa({ commonName: `${ROOT_NAME} Root CA` });
  const inter = await createIntermediateCa({ commonName: `${ROOT_NAME} Intermediate CA`, issuer: root });
  writeKeyFile(rootKey, root.keyPem);
  writeCertFile(rootCert, root.certPem);
  writeKeyFile(keyPath(out, interBase), inter.keyPem);
  writeCertFile(certPath(out, interBase), inter.certPem);
  writeCertFile(certPath(out, `${ROOT_NAME}.intermediate-full-chain`), fullChainPem(inter.certPem, root.certPem));
  return {
    set: {
      rootCert,
      rootPem: root.certPem,
      issuer: inter,
      intermediateChainPem: fullChainPem(inter.certPem, root.certPem),
    },
    created: true,
  };
}

function writeIssued(out: string, base: string, issued: IssuedCert, chainPem: string): CertAndKey {
  const fullChain = certPath(out, `${base}-full-chain`);
  writeKeyFile(keyPath(out, base), issued.keyPem);
  writeCertFile(certPath(out, base), issued.certPem);
  writeCertFile(fullChain, chainPem);
  return { fullChain, key: keyPath(out, base) };
}

/** A gateway's Edge CA (`iot-edge-device-ca-ID`), issued fresh on every `up`. */
export async function issueEdgeCa(out: string, set: RootSet, gatewayId: string): Promise<CertAndKey> {
  const base = `iot-edge-device-ca-${gatewayId}`;
  const ca = await createEdgeCa({ commonName: base, issuer: set.issuer });
  return writeIssued(out, base, ca, fullChainPem(ca.certPem, set.intermediateChainPem));
}

/** The hub's TLS server certificate for its address, from the shared root (not the hub's own PKI). */
export async function issueHubServerCert(out: string, set: RootSet, address: string): Promise<CertAndKey> {
  const server = await createServerCert({ hostname: address, issuer: set.issuer });
  return writeIssued(out, `server-${address}`, server, fullChainPem(server.certPem, set.intermediateChainPem));
}
