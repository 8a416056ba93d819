import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { action } from './run.ts';
import { UserError } from '../util/errors.ts';
import {
  createDeviceCert,
  createEdgeCa,
  createIntermediateCa,
  createRootCa,
  createServerCert,
  fullChainPem,
  isCa,
  keyMatchesCertificate,
  parseCertificate,
  parseCertificates,
  readCertificateFile,
  readKeyFile,
  splitPemCertificates,
  summarizeCertificate,
  thumbprints,
  verifyChain,
  writeCertFile,
  writeKeyFile,
  type IssuedCert,
  type KeyAlgorithm,
  type ParsedCert,
} from '../pki/index.ts';

/**
 * `strata certs ...`: the test-certificate toolkit. File names follow the seeds' scripts so their
 * instructions (config.toml paths, `openssl` checks) work verbatim against the output directory.
 */

const DEFAULT_OUT = './certs-out';
const DEFAULT_ROOT_NAME = 'azure-iot-test-only';

interface CommonFlags {
  out: string;
  days?: string;
  keyAlgorithm: KeyAlgorithm;
}

function withCommon(cmd: Command, defaultDays: number): Command {
  return cmd
    .option('--out <dir>', 'directory holding certs/ and private/', DEFAULT_OUT)
    .option('--days <n>', `validity in days (default ${defaultDays})`)
    .addOption(
      new Option('--key-algorithm <alg>', 'key type: rsa (RSA-2048) or ec (ECDSA P-256)')
        .choices(['rsa', 'ec'])
        .default('rsa'),
    );
}

function parseDays(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const days = Number(value);
  if (!/^\d+$/.test(value.trim()) || days < 1 || days > 36_500) {
    throw new UserError(`--days ${value} is not a valid number of days`, 'Give a whole number between 1 and 36500');
  }
  return days;
}

/** Names end up in file names and subjects, so keep them to what a device id may contain, minus path tricks. */
function checkName(name: string, what: string): void {
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

function files(out: string, base: string, fullChainBase = `${base}-full-chain`): CertFiles {
  return {
    cert: path.join(certsDir(out), `${base}.cert.pem`),
    fullChain: path.join(certsDir(out), `${fullChainBase}.cert.pem`),
    key: path.join(privateDir(out), `${base}.key.pem`),
  };
}

const rootFiles = (out: string, name: string) => ({
  cert: path.join(certsDir(out), `${name}.root.ca.cert.pem`),
  key: path.join(privateDir(out), `${name}.root.ca.key.pem`),
});
const intermediateFiles = (out: string, name: string) =>
  files(out, `${name}.intermediate`, `${name}.intermediate-full-chain`);

function writeIssued(f: CertFiles, issued: IssuedCert, chainPem: string): void {
  writeKeyFile(f.key, issued.keyPem);
  writeCertFile(f.cert, issued.certPem);
  writeCertFile(f.fullChain, chainPem);
}

function printFiles(title: string, paths: string[]): void {
  process.stdout.write(`${title}\n${paths.map((p) => `  ${p}\n`).join('')}`);
}

function validUntil(certPem: string): string {
  return parseCertificate(certPem).x.notAfter.toISOString().slice(0, 10);
}

// ---------------------------------------------------------------------------------------------
// Loading an issuer the user (or an earlier command) made

/** Checks that a CA certificate and key can issue today; every problem becomes one line naming the file and the fix. */
function checkIssuer(certFile: string, keyFile: string, certPem: string, keyPem: string): ParsedCert {
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
function findRootName(out: string, requested: string | undefined): string {
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

function loadRootSet(out: string, requested: string | undefined): RootSet {
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
function completeChain(caBundlePem: string, out: string): string {
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

async function createRoot(flags: CommonFlags & { name: string; force?: boolean }): Promise<void> {
  checkName(flags.name, 'root name');
  const days = parseDays(flags.days) ?? 3650;
  const root = rootFiles(flags.out, flags.name);
  const inter = intermediateFiles(flags.out, flags.name);
  if (existsSync(root.cert) && !flags.force) {
    throw new UserError(
      `a root CA already exists: ${root.cert}`,
      'Everything issued from it would stop verifying if it were replaced; pass --force to replace it anyway, or use another --out',
    );
  }
  const rootCa = await createRootCa({ commonName: `${flags.name} Root CA`, days, keyAlgorithm: flags.keyAlgorithm });
  const intermediate = await createIntermediateCa({
    commonName: `${flags.name} Intermediate CA`,
    issuer: rootCa,
    days,
    keyAlgorithm: flags.keyAlgorithm,
  });
  writeKeyFile(root.key, rootCa.keyPem);
  writeCertFile(root.cert, rootCa.certPem);
  writeIssued(inter, intermediate, fullChainPem(intermediate.certPem, rootCa.certPem));
  printFiles(
    `created root CA "${flags.name} Root CA" and its intermediate (valid until ${validUntil(rootCa.certPem)}):`,
    [root.cert, inter.cert, inter.fullChain, root.key, inter.key],
  );
}

async function createEdgeCaCmd(
  name: string,
  flags: CommonFlags & { root?: string; pathLength?: string },
): Promise<void> {
  checkName(name, 'Edge CA name');
  const days = parseDays(flags.days);
  let pathLength: number | undefined;
  if (flags.pathLength !== undefined) {
    pathLength = Number(flags.pathLength);
    if (!/^\d+$/.test(flags.pathLength) || pathLength > 16) {
      throw new UserError(`--path-length ${flags.pathLength} is not valid`, 'Give a whole number between 0 and 16');
    }
  }
  const set = loadRootSet(flags.out, flags.root);
  const f = files(flags.out, `iot-edge-device-ca-${name}`);
  const edgeCa = await createEdgeCa({
    commonName: `iot-edge-device-ca-${name}`,
    issuer: set.issuer,
    days,
    pathLength,
    keyAlgorithm: flags.keyAlgorithm,
  });
  writeIssued(f, edgeCa, fullChainPem(edgeCa.certPem, set.intermediateChainPem));
  printFiles(`created Edge CA "iot-edge-device-ca-${name}" (valid until ${validUntil(edgeCa.certPem)}):`, [
    f.cert,
    f.fullChain,
    f.key,
  ]);
}

async function createIdentity(
  kind: 'edge-identity' | 'device',
  name: string,
  flags: CommonFlags & { root?: string; selfSigned?: boolean },
): Promise<void> {
  checkName(name, 'device id');
  const days = parseDays(flags.days);
  const base = kind === 'device' ? `iot-device-${name}` : `iot-edge-device-identity-${name}`;
  const f = files(flags.out, base);
  let issued: IssuedCert;
  let chain: string;
  if (flags.selfSigned) {
    issued = await createDeviceCert({ commonName: name, days, keyAlgorithm: flags.keyAlgorithm });
    chain = issued.certPem;
  } else {
    const set = loadRootSet(flags.out, flags.root);
    issued = await createDeviceCert({ commonName: name, issuer: set.issuer, days, keyAlgorithm: flags.keyAlgorithm });
    chain = fullChainPem(issued.certPem, set.intermediateChainPem);
  }
  writeIssued(f, issued, chain);
  const what = kind === 'device' ? 'device' : 'edge device identity';
  printFiles(
    `created ${flags.selfSigned ? 'self-signed ' : ''}${what} certificate for "${name}" (valid until ${validUntil(issued.certPem)}):`,
    [f.cert, f.fullChain, f.key],
  );
  const tp = thumbprints(issued.certPem);
  process.stdout.write(`SHA-1 thumbprint:   ${tp.sha1}\nSHA-256 thumbprint: ${tp.sha256}\n`);
}

function collect(value: string, previous: string[]): string[] {
  return [
    ...previous,
    ...value
      .split(',')
      .map((v) => v.trim())
      .filter(Boolean),
  ];
}

async function createServer(
  hostname: string,
  flags: CommonFlags & { root?: string; ca?: string; caKey?: string; san: string[] },
): Promise<void> {
  const days = parseDays(flags.days);
  if (Boolean(flags.ca) !== Boolean(flags.caKey)) {
    throw new UserError(
      '--ca and --ca-key go together',
      'Give both the CA certificate and its private key, or neither to use the intermediate in --out',
    );
  }
  let issuer: IssuedCert;
  let caChain: string;
  if (flags.ca && flags.caKey) {
    const certPem = readCertificateFile(
      flags.ca,
      'CA certificate',
      'Check the --ca path (an Edge CA is made with `strata certs create-edge-ca NAME`)',
    );
    const keyPem = readKeyFile(flags.caKey, 'CA private key', 'Check the --ca-key path');
    const ca = checkIssuer(flags.ca, flags.caKey, certPem, keyPem);
    issuer = { certPem: ca.pem, keyPem };
    caChain = completeChain(certPem, flags.out);
  } else {
    const set = loadRootSet(flags.out, flags.root);
    issuer = set.issuer;
    caChain = set.intermediateChainPem;
  }
  const server = await createServerCert({
    hostname,
    extraNames: flags.san,
    issuer,
    days,
    keyAlgorithm: flags.keyAlgorithm,
  });
  const f = files(flags.out, `server-${hostname.replace(/\*/g, 'wildcard')}`);
  writeIssued(f, server, fullChainPem(server.certPem, caChain));
  const sans = summarizeCertificate(server.certPem).subjectAltNames.join(', ');
  printFiles(`created server certificate for "${hostname}" (${sans}; valid until ${validUntil(server.certPem)}):`, [
    f.cert,
    f.fullChain,
    f.key,
  ]);
}

function verifyCmd(
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

function showCmd(certFile: string): void {
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

export function registerCertsCommands(program: Command): void {
  const certs = program
    .command('certs')
    .description('create and check the certificates of a gateway hierarchy (root, Edge CAs, servers, devices)');

  withCommon(certs.command('create-root'), 3650)
    .description('create the shared root CA and an intermediate CA that signs everything else')
    .option('--name <name>', 'name used in the file names and subjects', DEFAULT_ROOT_NAME)
    .option('--force', 'replace an existing root (everything issued from the old one stops verifying)')
    .action(action(createRoot));

  withCommon(certs.command('create-edge-ca').argument('<name>', 'gateway name, used in the file names'), 365)
    .description("create a gateway's Edge CA, signed by the intermediate in --out")
    .option('--root <name>', 'which root set in --out to use (default: the only one)')
    .option('--path-length <n>', 'how many CA levels may exist below the Edge CA (default 0)')
    .action(action(createEdgeCaCmd));

  withCommon(certs.command('create-edge-identity').argument('<name>', 'device id of the edge device'), 365)
    .description('create the X.509 identity certificate an edge device authenticates with (clientAuth, CN = device id)')
    .option('--root <name>', 'which root set in --out to use (default: the only one)')
    .action(
      action((name: string, flags: CommonFlags & { root?: string }) => createIdentity('edge-identity', name, flags)),
    );

  withCommon(certs.command('create-device').argument('<name>', 'device id'), 365)
    .description('create a device identity certificate (clientAuth, CN = device id) and print its thumbprints')
    .option('--self-signed', 'self-signed (for thumbprint authentication) instead of signed by the intermediate')
    .option('--root <name>', 'which root set in --out to use (default: the only one)')
    .action(
      action((name: string, flags: CommonFlags & { root?: string; selfSigned?: boolean }) =>
        createIdentity('device', name, flags),
      ),
    );

  withCommon(
    certs
      .command('create-server')
      .argument('<hostname>', 'host name (or IP address) clients connect to; under 64 characters'),
    365,
  )
    .description('create a TLS server certificate (serverAuth, CN and SAN = host name)')
    .option('--ca <file>', 'CA certificate to sign with, e.g. an Edge CA (default: the intermediate in --out)')
    .option('--ca-key <file>', 'private key of --ca')
    .option(
      '--san <name>',
      'extra DNS name or IP address (repeatable, or comma-separated), e.g. edgehub',
      collect,
      [] as string[],
    )
    .option('--root <name>', 'which root set in --out to use when --ca is not given')
    .action(action(createServer));

  certs
    .command('verify')
    .argument('<cert>', 'certificate to check (a full-chain file brings its own intermediates)')
    .description('verify a certificate chain up to a trusted root; prints each link and, on failure, why')
    .option('--trust <file>', 'trusted root CA certificate (default: the root in --out)')
    .option(
      '--untrusted <file>',
      'intermediate certificates to build the chain with (repeatable)',
      (v: string, p: string[]) => [...p, v],
      [] as string[],
    )
    .option(
      '--hostname <host>',
      'also check the certificate is valid for this host name or IP (implies --purpose server)',
    )
    .addOption(new Option('--purpose <purpose>', 'also check the extended key usage').choices(['server', 'client']))
    .option('--at <date>', 'check validity at this date instead of now (ISO 8601)')
    .option('--out <dir>', 'directory whose root is trusted when --trust is not given', DEFAULT_OUT)
    .option('--root <name>', 'which root set in --out to trust')
    .action(action(verifyCmd));

  certs
    .command('show')
    .argument('<cert>', 'PEM certificate file (all certificates of a bundle are shown)')
    .description('show subject, issuer, validity, names, key usage, basic constraints and thumbprints')
    .action(action(showCmd));
}
