import { existsSync } from 'node:fs';
import { UserError } from '../util/errors.ts';
import { readCertificateFile, splitPemCertificates, summarizeCertificate, verifyChain } from '../pki/index.ts';
import { rootFiles, findRootName } from './certs-files.ts';

/** `strata certs verify` and `strata certs show`. */

export function verifyCmd(
  certFile: string,
  flags: {
    out: string;
    trust?: string;
    untrusted: string[];
    hostname?: string;
    purpose?: 'server' | 'client';
    at?: string;
    root?: string;
  },
): void {
  const certPem = readCertificateFile(certFile, 'certificate to verify');
  let trustFile = flags.trust;
  if (!trustFile) {
    const root = rootFiles(flags.out, findRootName(flags.out, flags.root)).cert;
    if (!existsSync(root)) {
      throw new UserError(
        `no --trust given and no root CA in ${flags.out}`,
        'Pass the root CA certificate with --trust FILE',
      );
    }
    trustFile = root;
  }
  const trustPem = readCertificateFile(trustFile, 'trusted root certificate');
  const untrustedPems = flags.untrusted.map((f) => readCertificateFile(f, 'untrusted chain certificate'));
  let at: Date | undefined;
  if (flags.at !== undefined) {
    at = new Date(flags.at);
    if (Number.isNaN(at.getTime())) {
      throw new UserError(`--at ${flags.at} is not a date`, 'Give an ISO 8601 date such as 2030-01-31T12:00:00Z');
    }
  }
  const result = verifyChain({
    certPem,
    trustPems: [trustPem],
    untrustedPems,
    hostname: flags.hostname,
    purpose: flags.purpose,
    at,
  });
  process.stdout.write('chain:\n');
  result.chain.forEach((link, i) => {
    const last = i === result.chain.length - 1;
    const role = result.ok && last ? ' [trusted root]' : '';
    process.stdout.write(
      `  ${i}: ${link.subject}${role}\n     issued by ${link.issuer}, valid until ${link.notAfter.toISOString()}\n`,
    );
  });
  if (result.ok) {
    process.stdout.write(
      `OK: ${certFile} chains to a trusted root${flags.hostname ? ` and is valid for ${flags.hostname}` : ''}\n`,
    );
    return;
  }
  process.stderr.write(`strata: verification failed (${result.code}): ${result.reason}\n`);
  process.exitCode = 1;
}

export function showCmd(certFile: string): void {
  const blocks = splitPemCertificates(readCertificateFile(certFile, 'certificate'));
  const now = Date.now();
  blocks.forEach((block, i) => {
    const s = summarizeCertificate(block);
    const state = now > s.notAfter.getTime() ? 'EXPIRED' : now < s.notBefore.getTime() ? 'NOT YET VALID' : 'valid now';
    const bc = s.basicConstraints
      ? `CA:${s.basicConstraints.ca ? 'TRUE' : 'FALSE'}${s.basicConstraints.pathLength !== undefined ? `, pathlen:${s.basicConstraints.pathLength}` : ''}${s.basicConstraints.critical ? ' (critical)' : ''}`
      : 'none';
    const rows: Array<[string, string]> = [
      ['subject', s.subject],
      ['issuer', `${s.issuer}${s.selfSigned ? ' (self-signed)' : ''}`],
      ['serial', s.serialNumber],
      ['valid from', s.notBefore.toISOString()],
      ['valid until', `${s.notAfter.toISOString()} (${state})`],
      ['public key', s.publicKey],
      ['subject alt names', s.subjectAltNames.join(', ') || 'none'],
      ['key usage', s.keyUsage?.join(', ') ?? 'none (any)'],
      ['extended key usage', s.extendedKeyUsage?.join(', ') ?? 'none (any)'],
      ['basic constraints', bc],
      ['SHA-1 thumbprint', s.thumbprints.sha1],
      ['SHA-256 thumbprint', s.thumbprints.sha256],
    ];
    if (blocks.length > 1) process.stdout.write(`${i ? '\n' : ''}certificate ${i + 1} of ${blocks.length}:\n`);
    for (const [k, v] of rows) process.stdout.write(`  ${`${k}:`.padEnd(20)}${v}\n`);
  });
}
