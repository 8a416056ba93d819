import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { UserError } from '../util/errors.ts';
import {
  fullChainPem,
  isCa,
  keyMatchesCertificate,
  parseCertificate,
  parseCertificates,
  readCertificateFile,
  readKeyFile,
  writeCertFile,
  writeKeyFile,
  type IssuedCert,
  type KeyAlgorithm,
  type ParsedCert,
} from '../pki/index.ts';

/** Where `strata certs` writes and finds its files, and the checks shared by its commands. */

export const DEFAULT_OUT = './certs-out';
export const DEFAULT_ROOT_NAME = 'azure-iot-test-only';

export interface CommonFlags {
  out: string;
  days?: string;
  keyAlgorithm: KeyAlgorithm;
}

export function withCommon(cmd: Command, defaultDays: number): Command {
  return cmd
    .option('--out <dir>', 'directory holding certs/ and private/', DEFAULT_OUT)
    .option('--days <n>', `validity in days (default ${defaultDays})`)
    .addOption(
      new Option('--key-algorithm <alg>', 'key type: rsa (RSA-2048) or ec (ECDSA P-256)')
        .choices(['rsa', 'ec'])
        .default('rsa'),
    );
}

export function parseDays(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const days = Number(value);
  if (!/^\d+$/.test(value.trim()) || days < 1 || days > 36_500) {
    throw new UserError(`--days ${value} is not a valid number of days`, 'Give a whole number between 1 and 36500');
  }
  return days;
}

/** Names end up in file names and subjects, so keep them to what a device id may contain, minus path tricks. */
export function checkName(name: string, what: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9\-._%*?!(),:=@$']{0,127}$/.test(name)) {
    throw new UserError(
      `"${name}" is not a usable ${what}`,
      'Use up to 128 letters, digits and - . _ : @ (starting with a letter or digit, no "/")',
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Where things live in the output directory

const certsDir = (out: string) => path.join(out, 'certs');
const privateDir = (out: string) => path.join(out, 'private');

interface CertFiles {
  cert: string;
  fullChain: string;
  key: string;
}

export function files(out: string, base: string, fullChainBase = `${base}-full-chain`): CertFiles {
  return {
    cert: path.join(certsDir(out), `${base}.cert.pem`),
    fullChain: path.join(certsDir(out), `${fullChainBase}.cert.pem`),
    key: path.join(privateDir(out), `${base}.key.pem`),
  };
}

export const rootFiles = (out: string, name: string) => ({
  cert: path.join(certsDir(out), `${name}.root.ca.cert.pem`),
  key: path.join(privateDir(out), `${name}.root.ca.key.pem`),
});
export const intermediateFiles = (out: string, name: string) =>
  files(out, `${name}.intermediate`, `${name}.intermediate-full-chain`);

export function writeIssued(f: CertFiles, issued: IssuedCert, chainPem: string): void {
  writeKeyFile(f.key, issued.keyPem);
  writeCertFile(f.cert, issued.certPem);
  writeCertFile(f.fullChain, chainPem);
}

export function printFiles(title: string, paths: string[]): void {
  process.stdout.write(`${title}\n${paths.map((p) => `  ${p}\n`).join('')}`);
}

export function validUntil(certPem: string): string {
  return parseCertificate(certPem).x.notAfter.toISOString().slice(0, 10);
}

// ---------------------------------------------------------------------------------------------
// Loading an issuer the user (or an earlier command) made

/** Checks that a CA certificate and key can issue today; every problem becomes one line naming the file and the fix. */
export function checkIssuer(certFile: string, keyFile: string, certPem: string, keyPem: string): ParsedCert {
  const cert = parseCertificate(certPem, `CA certificate ${certFile}`);
  if (!isCa(cert)) {
    throw new UserError(
      `${certFile} ("${cert.x.subject}") is not a CA certificate, so it cannot sign others`,
      'Pass an Edge CA or intermediate CA certificate',
    );
  }
  if (!keyMatchesCertificate(keyPem, cert.pem)) {
    throw new UserError(
      `the key ${keyFile} does not belong to the certificate ${certFile}`,
      'Pass the private key file that was created together with that certificate',
    );
  }
  const now = Date.now();
  if (cert.x.notAfter.getTime() < now) {
    throw new UserError(
      `the CA certificate ${certFile} expired on ${cert.x.notAfter.toISOString()}`,
      'Create a new CA certificate (or a new root with `strata certs create-root --force`) and issue from that',
    );
  }
  if (cert.x.notBefore.getTime() > now) {
    throw new UserError(
      `the CA certificate ${certFile} is not valid before ${cert.x.notBefore.toISOString()}`,
      "Check this machine's clock, or wait until then",
    );
  }
  return cert;
}

/** Finds the root set (root + intermediate) in the output directory. */
export function findRootName(out: string, requested: string | undefined): string {
  if (requested) return requested;
  if (existsSync(rootFiles(out, DEFAULT_ROOT_NAME).cert)) return DEFAULT_ROOT_NAME;
  let names: string[] = [];
  try {
    names = readdirSync(certsDir(out))
      .filter((f) => f.endsWith('.root.ca.cert.pem'))
      .map((f) => f.slice(0, -'.root.ca.cert.pem'.length));
  } catch {
    // no certs directory: handled as "no root" below
  }
  if (names.length > 1) {
    throw new UserError(`${out} holds several roots (${names.join(', ')})`, 'Choose one with --root NAME');
  }
  return names[0] ?? DEFAULT_ROOT_NAME;
}

interface RootSet {
  rootCertPem: string;
  /** the intermediate, which signs everything the toolkit issues below the root */
  issuer: IssuedCert;
  intermediateChainPem: string;
}

export function loadRootSet(out: string, requested: string | undefined): RootSet {
  const name = findRootName(out, requested);
  const root = rootFiles(out, name);
  const inter = intermediateFiles(out, name);
  if (!existsSync(root.cert)) {
    throw new UserError(
      `no root CA in ${out} (looked for ${root.cert})`,
      `Run \`strata certs create-root${out === DEFAULT_OUT ? '' : ` --out ${out}`}\` first`,
    );
  }
  const rootCertPem = readCertificateFile(root.cert, 'root CA certificate');
  const certPem = readCertificateFile(
    inter.cert,
    'intermediate CA certificate',
    'Recreate the root set with `strata certs create-root --force`',
  );
  const keyPem = readKeyFile(
    inter.key,
    'intermediate CA key',
    'Recreate the root set with `strata certs create-root --force`',
  );
  checkIssuer(inter.cert, inter.key, certPem, keyPem);
  return { rootCertPem, issuer: { certPem, keyPem }, intermediateChainPem: fullChainPem(certPem, rootCertPem) };
}

/** Every CA certificate in the output directory, used to complete a chain the user gave only part of. */
function casIn(out: string): ParsedCert[] {
  let entries: string[] = [];
  try {
    entries = readdirSync(certsDir(out)).filter((f) => f.endsWith('.pem'));
  } catch {
    return [];
  }
  const cas: ParsedCert[] = [];
  for (const f of entries) {
    try {
      for (const c of parseCertificates(readCertificateFile(path.join(certsDir(out), f), 'certificate')))
        if (isCa(c)) cas.push(c);
    } catch {
      // unrelated or broken files in the directory do not stop issuing
    }
  }
  return cas;
}

/** The CA bundle followed by whatever issuers of its last certificate the output directory holds, up to a root. */
export function completeChain(caBundlePem: string, out: string): string {
  const chain = parseCertificates(caBundlePem);
  const known = casIn(out);
  for (let i = 0; i < 8; i++) {
    const last = chain[chain.length - 1];
    if (last.node.subject === last.node.issuer) break;
    const parent = known.find((c) => last.node.issuer === c.node.subject && last.node.verify(c.node.publicKey));
    if (!parent || chain.some((c) => c.node.raw.equals(parent.node.raw))) break;
    chain.push(parent);
  }
  return fullChainPem(...chain.map((c) => c.pem));
}

// ---------------------------------------------------------------------------------------------
// Commands
