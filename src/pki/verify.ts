import { isIP } from 'node:net';
import { UserError } from '../util/errors.ts';
import { x509 } from './x509-lib.ts';
import { extendedKeyUsageOf, isCa, keyUsageOf, parseCertificates, type ParsedCert } from './inspect.ts';

export type VerifyFailure =
  | 'expired'
  | 'not-yet-valid'
  | 'unknown-issuer'
  | 'missing-intermediate'
  | 'not-a-ca'
  | 'wrong-key-usage'
  | 'name-mismatch'
  | 'bad-signature';

export interface ChainLink {
  subject: string;
  issuer: string;
  notAfter: Date;
}

export interface VerifyResult {
  ok: boolean;
  /** leaf first, as far as it could be built; ends at the trust anchor when ok */
  chain: ChainLink[];
  reason?: string;
  code?: VerifyFailure;
}

export interface VerifyOptions {
  /** the certificate to check; when it is a bundle, the certificates after the first are treated as untrusted */
  certPem: string;
  trustPems: string[];
  untrustedPems?: string[];
  hostname?: string;
  /** the extended key usage the leaf must allow; defaults to 'server' when a hostname is given */
  purpose?: 'server' | 'client';
  at?: Date;
}

const PURPOSE_EKU = { server: 'serverAuth', client: 'clientAuth' } as const;
const MAX_DEPTH = 10;

function selfSigned(c: ParsedCert): boolean {
  return c.node.subject === c.node.issuer && c.node.verify(c.node.publicKey);
}

function issuedBy(child: ParsedCert, parent: ParsedCert): boolean {
  return child.node.issuer === parent.node.subject && child.node.verify(parent.node.publicKey);
}

function sameCert(a: ParsedCert, b: ParsedCert): boolean {
  return a.node.raw.equals(b.node.raw);
}

/** True when the child's authority key id points at the candidate's key (or either id is absent). */
function keyIdsAgree(child: ParsedCert, candidate: ParsedCert): boolean {
  const aki = child.x.getExtension(x509().AuthorityKeyIdentifierExtension)?.keyId;
  const ski = candidate.x.getExtension(x509().SubjectKeyIdentifierExtension)?.keyId;
  return !aki || !ski || aki.toLowerCase() === ski.toLowerCase();
}

function name(c: ParsedCert): string {
  return `"${c.x.subject}"`;
}

function iso(d: Date): string {
  return d.toISOString().replace('.000Z', 'Z');
}

type Failure = { code: VerifyFailure; reason: string };

/** Builds the path from the leaf to a trust anchor; on failure says why no path exists. */
function buildPath(
  leaf: ParsedCert,
  trust: ParsedCert[],
  untrusted: ParsedCert[],
): { path: ParsedCert[]; failure?: Failure } {
  const path = [leaf];
  for (;;) {
    const cur = path[path.length - 1];
    if (trust.some((t) => sameCert(t, cur))) return { path };
    const anchor = trust.find((t) => issuedBy(cur, t));
    if (anchor) {
      path.push(anchor);
      return { path };
    }
    if (selfSigned(cur)) {
      return {
        path,
        failure: {
          code: 'unknown-issuer',
          reason: `${name(cur)} is a self-signed certificate that is not among the trusted roots`,
        },
      };
    }
    const next = untrusted.find((u) => !path.some((p) => sameCert(p, u)) && issuedBy(cur, u));
    if (next && path.length < MAX_DEPTH) {
      path.push(next);
      continue;
    }
    const issuerName = `"${cur.x.issuer}"`;
    const sameName = [...trust, ...untrusted].find((c) => c.node.subject === cur.node.issuer);
    if (sameName) {
      if (keyIdsAgree(cur, sameName)) {
        return {
          path,
          failure: {
            code: 'bad-signature',
            reason: `the signature of ${name(cur)} does not verify with the key of its issuer ${issuerName}`,
          },
        };
      }
      return {
        path,
        failure: {
          code: 'unknown-issuer',
          reason: `${name(cur)} was issued by a different ${issuerName} than the one given (same name, different key): it belongs to another certificate hierarchy`,
        },
      };
    }
    if (path.length === 1) {
      return {
        path,
        failure: {
          code: 'missing-intermediate',
          reason: `the issuer ${issuerName} of ${name(cur)} was not given: add the intermediate and Edge CA certificates (the full-chain file) as untrusted certificates, or trust that issuer`,
        },
      };
    }
    return {
      path,
      failure: {
        code: 'unknown-issuer',
        reason: `${name(cur)} was issued by ${issuerName}, which is not a trusted root (or an intermediate between them is missing)`,
      },
    };
  }
}

function checkPath(path: ParsedCert[], o: VerifyOptions): Failure | undefined {
  const at = o.at ?? new Date();
  for (const c of path) {
    if (at.getTime() > c.x.notAfter.getTime()) {
      return { code: 'expired', reason: `${name(c)} expired on ${iso(c.x.notAfter)}` };
    }
    if (at.getTime() < c.x.notBefore.getTime()) {
      return { code: 'not-yet-valid', reason: `${name(c)} is not valid before ${iso(c.x.notBefore)}` };
    }
  }
  for (let i = 1; i < path.length; i++) {
    const ca = path[i];
    if (!isCa(ca)) {
      return {
        code: 'not-a-ca',
        reason: `${name(ca)} signed ${name(path[i - 1])} but is not a CA certificate (basicConstraints CA:false or absent)`,
      };
    }
    const usage = keyUsageOf(ca);
    if (usage && !usage.includes('keyCertSign')) {
      return {
        code: 'wrong-key-usage',
        reason: `${name(ca)} is not allowed to sign certificates (its key usage lacks keyCertSign)`,
      };
    }
    // Certificates between the leaf and this CA, not counting self-issued ones, must fit its path length.
    const pathLength = ca.x.getExtension(x509().BasicConstraintsExtension)?.pathLength;
    const below = path.slice(1, i).filter((c) => c.node.subject !== c.node.issuer).length;
    if (pathLength !== undefined && below > pathLength) {
      return {
        code: 'not-a-ca',
        reason: `${name(ca)} may have at most ${pathLength} CA certificate(s) below it (path length ${pathLength}), but ${below} were found`,
      };
    }
  }
  const purpose = o.purpose ?? (o.hostname ? 'server' : undefined);
  if (purpose) {
    const wanted = PURPOSE_EKU[purpose];
    for (const c of path) {
      const eku = extendedKeyUsageOf(c);
      if (eku && !eku.includes(wanted) && !eku.includes('anyExtendedKeyUsage')) {
        return {
          code: 'wrong-key-usage',
          reason: `${name(c)} is not allowed for ${purpose} authentication (extended key usage: ${eku.join(', ')}; needs ${wanted})`,
        };
      }
    }
  }
  if (o.hostname) {
    const leaf = path[0];
    const matched = isIP(o.hostname) ? leaf.node.checkIP(o.hostname) : leaf.node.checkHost(o.hostname);
    if (!matched) {
      const sans = leaf.node.subjectAltName ?? 'none';
      return {
        code: 'name-mismatch',
        reason: `${name(leaf)} is not valid for host name "${o.hostname}" (subject alternative names: ${sans})`,
      };
    }
  }
  return undefined;
}

/** Verifies a certificate chain the way a TLS peer would, and names the first thing that is wrong. */
export function verifyChain(o: VerifyOptions): VerifyResult {
  const given = parseCertificates(o.certPem, 'certificate to verify');
  if (!given.length) throw new UserError('no certificate to verify', 'Pass a PEM certificate file');
  const trust = o.trustPems.flatMap((p) => parseCertificates(p, 'trusted certificate'));
  if (!trust.length) throw new UserError('no trusted root certificate given', 'Pass the root CA certificate to trust');
  const untrusted = [
    ...given.slice(1),
    ...(o.untrustedPems ?? []).flatMap((p) => parseCertificates(p, 'untrusted certificate')),
  ];

  const { path, failure } = buildPath(given[0], trust, untrusted);
  const chain = path.map((c) => ({ subject: c.x.subject, issuer: c.x.issuer, notAfter: c.x.notAfter }));
  const problem = failure ?? checkPath(path, o);
  return problem ? { ok: false, chain, ...problem } : { ok: true, chain };
}
