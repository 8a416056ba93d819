import { existsSync } from 'node:fs';
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
  readCertificateFile,
  readKeyFile,
  summarizeCertificate,
  thumbprints,
  writeCertFile,
  writeKeyFile,
  type IssuedCert,
} from '../pki/index.ts';
import {
  DEFAULT_OUT,
  DEFAULT_ROOT_NAME,
  type CommonFlags,
  withCommon,
  parseDays,
  checkName,
  files,
  rootFiles,
  intermediateFiles,
  writeIssued,
  printFiles,
  validUntil,
  checkIssuer,
  loadRootSet,
  completeChain,
} from './certs-files.ts';
import { showCmd, verifyCmd } from './certs-inspect.ts';

/**
 * `strata certs ...`: the test-certificate toolkit. File names follow the seeds' scripts so their
 * instructions (config.toml paths, `openssl` checks) work verbatim against the output directory.
 */

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
