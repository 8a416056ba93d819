import { UserError } from '../util/errors.ts';
import {
  keyMatchesCertificate,
  parseCertificate,
  isCa,
  readCertificateFile,
  readKeyFile,
  splitPemCertificates,
  verifyChain,
} from '../pki/index.ts';
import type { Diagnostic, EdgeConfig } from './config.ts';

export interface LoadedEdgeFiles {
  trustBundlePem?: string;
  edgeCa?: { certPem: string; keyPem: string };
  identity?: { certPem: string; keyPem: string };
}

/**
 * Reads and checks every file a config names: readable, PEM, key matching its certificate, the Edge CA a
 * CA that chains to the trust bundle and is in date. Each problem is a diagnostic naming the file and
 * the fix; the files that passed are returned for the caller to use.
 */
export function checkConfigFiles(
  config: EdgeConfig,
  now = new Date(),
): { files: LoadedEdgeFiles; diagnostics: Diagnostic[] } {
  const diagnostics: Diagnostic[] = [];
  const files: LoadedEdgeFiles = {};
  const attempt = <T>(fn: () => T): T | undefined => {
    try {
      return fn();
    } catch (err) {
      if (!(err instanceof UserError)) throw err;
      diagnostics.push({ level: 'error', message: err.message, fix: err.hint });
      return undefined;
    }
  };

  if (config.trustBundleCert) {
    files.trustBundlePem = attempt(() =>
      readCertificateFile(
        config.trustBundleCert!,
        'trust_bundle_cert',
        'Point trust_bundle_cert at the root CA of the hierarchy',
      ),
    );
  } else if (config.parentHostname) {
    diagnostics.push({
      level: 'error',
      message: 'a gateway with a parent_hostname needs trust_bundle_cert to verify its parent',
      fix: 'Set trust_bundle_cert = "file:///.../azure-iot-test-only.root.ca.cert.pem" at the top of the file',
    });
  }

  if (config.edgeCa) {
    const { cert, pk } = config.edgeCa;
    const certPem = attempt(() => readCertificateFile(cert, 'edge_ca.cert'));
    const keyPem = attempt(() => readKeyFile(pk, 'edge_ca.pk'));
    if (certPem && keyPem) {
      const [leaf, ...rest] = splitPemCertificates(certPem);
      const parsed = parseCertificate(leaf, 'edge_ca.cert');
      let ok = true;
      const fail = (message: string, fix: string) => {
        ok = false;
        diagnostics.push({ level: 'error', message, fix });
      };
      if (!keyMatchesCertificate(keyPem, leaf))
        fail(
          `edge_ca.pk ${pk} does not belong to the certificate ${cert}`,
          'Give the private key that was made with that Edge CA certificate',
        );
      if (!isCa(parsed))
        fail(
          `edge_ca.cert ${cert} is not a CA certificate (basicConstraints CA:false)`,
          'Make one with `strata certs create-edge-ca NAME` and use its -full-chain file',
        );
      if (new Date(parsed.node.validTo) < now)
        fail(
          `edge_ca.cert ${cert} expired on ${parsed.node.validTo}`,
          'Issue a new Edge CA with `strata certs create-edge-ca NAME`',
        );
      if (ok && files.trustBundlePem) {
        const result = verifyChain({
          certPem: leaf,
          trustPems: splitPemCertificates(files.trustBundlePem),
          untrustedPems: rest,
          at: now,
        });
        // The Edge CA is a CA, so the usage check is about signing certificates, not TLS purposes.
        if (!result.ok && result.code !== 'wrong-key-usage') {
          fail(
            `edge_ca.cert ${cert} does not chain to the trust bundle ${config.trustBundleCert}: ${result.reason}`,
            'Use an Edge CA issued under the root CA in trust_bundle_cert, with its full chain',
          );
        }
      }
      if (ok) files.edgeCa = { certPem, keyPem };
    }
  }

  const auth = config.provisioning?.authentication;
  if (auth?.method === 'x509') {
    const certPem = attempt(() => readCertificateFile(auth.identityCert, 'provisioning identity_cert'));
    const keyPem = attempt(() => readKeyFile(auth.identityPk, 'provisioning identity_pk'));
    if (certPem && keyPem) {
      if (!keyMatchesCertificate(keyPem, certPem)) {
        diagnostics.push({
          level: 'error',
          message: `identity_pk ${auth.identityPk} does not belong to identity_cert ${auth.identityCert}`,
          fix: 'Give the key that was made with the identity certificate',
        });
      } else files.identity = { certPem, keyPem };
    }
  }
  return { files, diagnostics };
}
