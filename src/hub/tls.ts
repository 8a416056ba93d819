import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import {
  createRootCa,
  createServerCert,
  fullChainPem,
  keyMatchesCertificate,
  readPemFile,
  splitPemCertificates,
  writeCertFile,
  writeKeyFile,
} from '../pki/index.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';

const log = childLog('hub-tls');

/** Where a hub keeps the PKI it makes for itself, under its data directory. */
export function hubPkiPaths(dataDir: string) {
  const pki = join(dataDir, 'pki');
  return {
    dir: pki,
    rootCert: join(pki, 'hub-root-ca.cert.pem'),
    rootKey: join(pki, 'private', 'hub-root-ca.key.pem'),
    serverCert: join(pki, 'hub-server.full-chain.cert.pem'),
    serverKey: join(pki, 'private', 'hub-server.key.pem'),
  };
}

export interface HubTls {
  /** The server certificate followed by its issuers. */
  certPem: string;
  keyPem: string;
  /** The root CA clients must trust. */
  caPem: string;
  caPath: string;
}

/** Re-issue the server certificate when less than this is left of it. */
const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;

/**
 * The hub's TLS identity: the certificates the user gave, or the hub's own PKI under
 * `DIR/pki` (a root CA made once, and a server certificate for `hostname`, re-issued when the
 * host name changes or it nears expiry).
 */
export async function loadHubTls(o: {
  dataDir: string;
  hostname: string;
  tlsCert?: string;
  tlsKey?: string;
  trust?: string;
}): Promise<HubTls> {
  if (o.tlsCert || o.tlsKey || o.trust) return loadGivenTls(o);
  const p = hubPkiPaths(o.dataDir);
  // Certificates are for everyone to read; only private/ is closed.
  mkdirSync(p.dir, { recursive: true, mode: 0o755 });
  let root: { certPem: string; keyPem: string };
  if (existsSync(p.rootCert) && existsSync(p.rootKey)) {
    root = {
      certPem: readPemFile(p.rootCert, 'hub root CA certificate'),
      keyPem: readPemFile(p.rootKey, 'hub root CA key'),
    };
  } else {
    root = await createRootCa({ commonName: 'Strata hub root CA' });
    writeKeyFile(p.rootKey, root.keyPem);
    writeCertFile(p.rootCert, root.certPem);
    log.info({ path: p.rootCert }, 'created the hub root CA');
  }
  let server: { certPem: string; keyPem: string } | undefined;
  if (existsSync(p.serverCert) && existsSync(p.serverKey)) {
    const certPem = readPemFile(p.serverCert, 'hub server certificate');
    const keyPem = readPemFile(p.serverKey, 'hub server key');
    if (serverCertFits(certPem, keyPem, o.hostname, root.certPem)) server = { certPem, keyPem };
  }
  if (!server) {
    const extraNames = o.hostname === 'localhost' ? ['127.0.0.1', '::1'] : [];
    const issued = await createServerCert({ hostname: o.hostname, extraNames, issuer: root });
    server = { certPem: fullChainPem(issued.certPem, root.certPem), keyPem: issued.keyPem };
    writeKeyFile(p.serverKey, server.keyPem);
    writeCertFile(p.serverCert, server.certPem);
    log.info({ hostname: o.hostname, path: p.serverCert }, 'issued the hub server certificate');
  }
  return { certPem: server.certPem, keyPem: server.keyPem, caPem: root.certPem, caPath: p.rootCert };
}

function serverCertFits(certPem: string, keyPem: string, hostname: string, rootPem: string): boolean {
  try {
    const [leafPem] = splitPemCertificates(certPem);
    if (!leafPem) return false;
    const leaf = new X509Certificate(leafPem);
    const covers = isIP(hostname) ? leaf.checkIP(hostname) !== undefined : leaf.checkHost(hostname) !== undefined;
    const fresh = new Date(leaf.validTo).getTime() - Date.now() > RENEW_BEFORE_MS;
    const ours = leaf.verify(new X509Certificate(rootPem).publicKey);
    return covers && fresh && ours && keyMatchesCertificate(keyPem, leafPem);
  } catch {
    return false;
  }
}

function loadGivenTls(o: { tlsCert?: string; tlsKey?: string; trust?: string }): HubTls {
  if (!o.tlsCert || !o.tlsKey || !o.trust) {
    throw new UserError(
      '--tls-cert, --tls-key and --trust go together',
      'Give the server certificate (full chain), its key, and the root CA clients trust',
    );
  }
  const certPem = readPemFile(o.tlsCert, 'server certificate');
  const keyPem = readPemFile(o.tlsKey, 'server key');
  const caPem = readPemFile(o.trust, 'trusted root CA');
  const [leaf] = splitPemCertificates(certPem);
  if (!leaf) throw new UserError(`${o.tlsCert} holds no certificate`, 'Pass the PEM server certificate (full chain)');
  if (!keyMatchesCertificate(keyPem, leaf)) {
    throw new UserError(
      `the key ${o.tlsKey} does not belong to the certificate ${o.tlsCert}`,
      'Pass the private key that was issued with the server certificate',
    );
  }
  return { certPem, keyPem, caPem, caPath: o.trust };
}
