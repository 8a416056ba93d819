/** The certificate group: trust bundle, Edge CA (certificate, key, chain) and the identity certificate. */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import {
  isCa,
  keyMatchesCertificate,
  parseCertificate,
  readCertificateFile,
  readKeyFile,
  splitPemCertificates,
  verifyChain,
} from '../../pki/index.ts';
import type { EdgeConfig } from '../config.ts';
import { QUICKSTART_CA_DAYS, edgePkiPaths } from '../security-manager.ts';
import { result, type CheckResult } from './checks.ts';
import { subjectOf, userMessage, validity, worst } from './describe.ts';

export function checkTrustBundle(config: EdgeConfig, now: Date): { check: CheckResult; pems: string[] } {
  const id = 'trust-bundle';
  if (!config.trustBundleCert) {
    return {
      check: result(
        id,
        'error',
        'trust_bundle_cert is not set: the gateway cannot verify the certificate of its upstream (parent or hub)',
        'Set trust_bundle_cert = "file:///.../azure-iot-test-only.root.ca.cert.pem" at the top of config.toml (before any [section]) to the root CA of the hierarchy',
      ),
      pems: [],
    };
  }
  let pem: string;
  try {
    pem = readCertificateFile(
      config.trustBundleCert,
      'trust_bundle_cert',
      'Point trust_bundle_cert at the root CA of the hierarchy',
    );
  } catch (err) {
    const m = userMessage(err);
    return { check: result(id, 'error', m.message, m.hint), pems: [] };
  }
  const pems = splitPemCertificates(pem);
  const states = pems.map((p) => {
    const c = new X509Certificate(p);
    return validity(c, now, `"${subjectOf(c)}"`);
  });
  const status = worst(...states.map((s) => s.status));
  const detail = `${config.trustBundleCert}: ${pems.length} certificate(s); ${states.map((s) => s.text).join('; ')}`;
  return {
    check: result(
      id,
      status,
      detail,
      status === 'pass' ? undefined : 'Renew the root CA and give every node of the hierarchy the new one',
    ),
    pems,
  };
}

export interface EdgeCaState {
  /** The configured Edge CA chain (first = the Edge CA), when it is readable. */
  chainPems?: string[];
}

export function checkEdgeCaPresent(config: EdgeConfig, dataDir: string | undefined, now: Date): CheckResult {
  const id = 'edge-ca';
  if (config.edgeCa) return result(id, 'pass', `cert ${config.edgeCa.cert}, key ${config.edgeCa.pk}`);
  let current = '';
  const quickstart = dataDir ? edgePkiPaths(dataDir).quickstartCaCert : undefined;
  if (quickstart && existsSync(quickstart)) {
    try {
      const c = new X509Certificate(readFileSync(quickstart));
      current = `; ${validity(c, now, `the current one (${quickstart})`).text}`;
    } catch {
      current = `; ${quickstart} is unreadable (the gateway makes a new one on start)`;
    }
  }
  return result(
    id,
    'warning',
    `no [edge_ca]: the gateway uses a quickstart Edge CA it generates itself (self-signed, valid ${QUICKSTART_CA_DAYS} days, renewed automatically); downstream devices must trust it directly${current}`,
    "For production, issue an Edge CA under the hierarchy's root CA (`strata certs create-edge-ca NAME`) and set [edge_ca] cert and pk; downstream devices then only need the root CA",
  );
}

export function checkEdgeCaCertificate(config: EdgeConfig, now: Date, state: EdgeCaState): CheckResult {
  const id = 'edge-ca-cert';
  if (!config.edgeCa) return result(id, 'skipped', 'no [edge_ca] configured (quickstart Edge CA)');
  const { cert, pk } = config.edgeCa;
  let certPem: string;
  let keyPem: string;
  try {
    certPem = readCertificateFile(cert, 'edge_ca.cert');
    keyPem = readKeyFile(pk, 'edge_ca.pk');
  } catch (err) {
    const m = userMessage(err);
    return result(id, 'error', m.message, m.hint);
  }
  const chain = splitPemCertificates(certPem);
  state.chainPems = chain;
  const leaf = new X509Certificate(chain[0]);
  const problems: Array<{ status: 'warning' | 'error'; text: string; fix: string }> = [];
  if (!keyMatchesCertificate(keyPem, chain[0]))
    problems.push({
      status: 'error',
      text: `edge_ca.pk ${pk} is not the key of ${cert}`,
      fix: 'Give the private key made together with that Edge CA certificate',
    });
  if (!isCa(parseCertificate(chain[0])))
    problems.push({
      status: 'error',
      text: `${cert} is not a CA certificate (basicConstraints CA:false), so it cannot issue the gateway's server certificate`,
      fix: 'Make an Edge CA with `strata certs create-edge-ca NAME` and use its -full-chain file',
    });
  const v = validity(leaf, now, `the Edge CA "${subjectOf(leaf)}"`);
  if (v.status !== 'pass')
    problems.push({
      status: v.status,
      text: v.text,
      fix: 'Issue a new Edge CA (`strata certs create-edge-ca NAME`) and `strata edge config apply`: the gateway re-issues its server certificate without dropping connections',
    });
  try {
    const mode = statSync(pk).mode & 0o777;
    if (mode & 0o077)
      problems.push({
        status: 'warning',
        text: `the Edge CA key ${pk} can be read by other users (mode ${mode.toString(8)})`,
        fix: `chmod 600 ${pk}`,
      });
  } catch {
    /* readKeyFile already read it; a stat failure here changes nothing */
  }
  if (problems.length === 0) return result(id, 'pass', `${v.text}; its key matches`);
  return result(
    id,
    worst(...problems.map((p) => p.status)),
    problems.map((p) => p.text).join('; '),
    [...new Set(problems.map((p) => p.fix))].join('; '),
  );
}

export function checkEdgeCaChain(config: EdgeConfig, trustPems: string[], state: EdgeCaState, now: Date): CheckResult {
  const id = 'edge-ca-chain';
  if (!config.edgeCa)
    return result(id, 'skipped', 'the quickstart Edge CA is self-signed: downstream devices must trust it directly');
  if (!state.chainPems) return result(id, 'skipped', 'the Edge CA certificate is not readable (see above)');
  if (trustPems.length === 0) return result(id, 'skipped', 'the trust bundle is not readable (see above)');
  const [leaf, ...rest] = state.chainPems;
  const v = verifyChain({ certPem: leaf, trustPems, untrustedPems: rest, at: now });
  const path = v.chain.map((l) => `"${l.subject}"`).join(' -> ');
  if (v.ok) return result(id, 'pass', path);
  return result(
    id,
    'error',
    `${config.edgeCa.cert} does not chain to ${config.trustBundleCert}: ${v.reason}`,
    v.code === 'missing-intermediate'
      ? "Use the Edge CA's -full-chain file (Edge CA followed by its intermediates)"
      : 'Use an Edge CA issued under the root CA in trust_bundle_cert (one root for the whole hierarchy)',
  );
}

export function checkIdentityCert(config: EdgeConfig, now: Date): CheckResult {
  const id = 'identity-cert';
  const auth = config.provisioning?.authentication;
  if (auth?.method !== 'x509') return result(id, 'skipped', 'the edge device authenticates with a SAS key');
  let certPem: string;
  let keyPem: string;
  try {
    certPem = readCertificateFile(auth.identityCert, 'identity_cert');
    keyPem = readKeyFile(auth.identityPk, 'identity_pk');
  } catch (err) {
    const m = userMessage(err);
    return result(id, 'error', m.message, m.hint);
  }
  if (!keyMatchesCertificate(keyPem, certPem))
    return result(
      id,
      'error',
      `identity_pk ${auth.identityPk} is not the key of ${auth.identityCert}`,
      'Give the key made together with the identity certificate',
    );
  const v = validity(new X509Certificate(splitPemCertificates(certPem)[0]), now, 'the identity certificate');
  return result(
    id,
    v.status,
    v.text,
    v.status === 'pass' ? undefined : 'Issue a new identity certificate (`strata certs create-edge-identity NAME`)',
  );
}
