import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate as NodeX509 } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import {
  createDeviceCert,
  createEdgeCa,
  createIntermediateCa,
  createRootCa,
  createServerCert,
  fullChainPem,
  issueCertificate,
  keyMatchesCertificate,
  readPemFile,
  splitPemCertificates,
  thumbprints,
  verifyChain,
  writeCertFile,
  writeKeyFile,
  type IssuedCert,
} from '../../src/pki/index.ts';
import { UserError } from '../../src/util/errors.ts';

const DAY = 86_400_000;

function parse(pem: string): x509.X509Certificate {
  return new x509.X509Certificate(splitPemCertificates(pem)[0]);
}
function basic(c: x509.X509Certificate) {
  return c.getExtension(x509.BasicConstraintsExtension);
}
function usages(c: x509.X509Certificate): number | undefined {
  return c.getExtension(x509.KeyUsagesExtension)?.usages;
}
function eku(c: x509.X509Certificate): string[] | undefined {
  const u = c.getExtension(x509.ExtendedKeyUsageExtension)?.usages;
  return u ? [...u].map(String) : undefined;
}
function sans(c: x509.X509Certificate): string[] {
  return c.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.map((n) => `${n.type}:${n.value}`) ?? [];
}
function ski(c: x509.X509Certificate): string | undefined {
  return c.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
}
function aki(c: x509.X509Certificate): string | undefined {
  return c.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId;
}

let root: IssuedCert;
let inter: IssuedCert;
let edge: IssuedCert;
let server: IssuedCert;
let device: IssuedCert;
let dir: string;

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'strata-pki-'));
  root = await createRootCa({ commonName: 'Unit Root' });
  inter = await createIntermediateCa({ commonName: 'Unit Intermediate', issuer: root, keyAlgorithm: 'ec' });
  edge = await createEdgeCa({ commonName: 'Unit Edge CA', issuer: inter, keyAlgorithm: 'ec' });
  server = await createServerCert({
    hostname: 'gw.unit.test',
    extraNames: ['edgehub', '127.0.0.9'],
    issuer: edge,
    keyAlgorithm: 'ec',
  });
  device = await createDeviceCert({ commonName: 'device-1', issuer: inter, keyAlgorithm: 'ec' });
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('root CA: self-signed RSA-2048, CA:true critical, keyCertSign+cRLSign, key ids, skewed start, days', () => {
  const c = parse(root.certPem);
  assert.equal(c.subject, 'CN=Unit Root');
  assert.equal(c.issuer, 'CN=Unit Root');
  assert.equal(basic(c)?.ca, true);
  assert.equal(basic(c)?.critical, true);
  assert.equal(basic(c)?.pathLength, undefined);
  const ku = usages(c) ?? 0;
  assert.ok(ku & x509.KeyUsageFlags.keyCertSign && ku & x509.KeyUsageFlags.cRLSign);
  assert.ok(ski(c));
  assert.equal(aki(c), ski(c));
  const node = new NodeX509(root.certPem);
  assert.equal(node.publicKey.asymmetricKeyType, 'rsa');
  assert.equal(node.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
  assert.ok(node.verify(node.publicKey));
  const now = Date.now();
  assert.ok(c.notBefore.getTime() < now - 60_000, 'validity starts a little in the past');
  assert.ok(c.notBefore.getTime() > now - 3_600_000);
  assert.ok(Math.abs(c.notAfter.getTime() - (now + 3650 * DAY)) < 120_000, 'root default is 3650 days');
  assert.match(root.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
});

test('serial numbers are random and positive', async () => {
  const a = parse(root.certPem).serialNumber;
  const b = parse(inter.certPem).serialNumber;
  assert.notEqual(a, b);
  for (const s of [a, b, parse(server.certPem).serialNumber]) {
    assert.ok(s.length >= 30, `serial ${s} carries ~128 random bits`);
    assert.ok(parseInt(s.slice(0, 2), 16) < 0x80, `serial ${s} is positive`);
  }
});

test('intermediate CA: issued by the root (name and key id), EC P-256, optional path length', async () => {
  const c = parse(inter.certPem);
  assert.equal(c.issuer, 'CN=Unit Root');
  assert.equal(aki(c), ski(parse(root.certPem)));
  assert.equal(basic(c)?.ca, true);
  assert.equal(basic(c)?.pathLength, undefined);
  const node = new NodeX509(inter.certPem);
  assert.equal(node.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.ok(node.verify(new NodeX509(root.certPem).publicKey));
  const limited = await createIntermediateCa({
    commonName: 'Limited',
    issuer: root,
    pathLength: 1,
    keyAlgorithm: 'ec',
    days: 10,
  });
  assert.equal(basic(parse(limited.certPem))?.pathLength, 1);
  assert.ok(Math.abs(parse(limited.certPem).notAfter.getTime() - (Date.now() + 10 * DAY)) < 120_000);
});

test('Edge CA: CA:true with path length 0 by default, or the one given', async () => {
  const c = parse(edge.certPem);
  assert.equal(basic(c)?.ca, true);
  assert.equal(basic(c)?.critical, true);
  assert.equal(basic(c)?.pathLength, 0);
  assert.ok((usages(c) ?? 0) & x509.KeyUsageFlags.keyCertSign);
  const two = await createEdgeCa({ commonName: 'Edge 2', issuer: inter, pathLength: 2, keyAlgorithm: 'ec' });
  assert.equal(basic(parse(two.certPem))?.pathLength, 2);
});

test('server certificate: CN = host, SAN DNS and IP, serverAuth, not a CA', async () => {
  const c = parse(server.certPem);
  assert.equal(c.subject, 'CN=gw.unit.test');
  assert.equal(c.issuer, 'CN=Unit Edge CA');
  assert.deepEqual(sans(c), ['dns:gw.unit.test', 'dns:edgehub', 'ip:127.0.0.9']);
  assert.deepEqual(eku(c), [x509.ExtendedKeyUsage.serverAuth]);
  assert.equal(basic(c)?.ca, false);
  const byIp = await createServerCert({ hostname: '10.1.2.3', issuer: edge, keyAlgorithm: 'ec' });
  assert.equal(parse(byIp.certPem).subject, 'CN=10.1.2.3');
  assert.deepEqual(sans(parse(byIp.certPem)), ['ip:10.1.2.3']);
});

test('server certificate host name: 63 characters is accepted, 64 is a UserError naming the limit', async () => {
  const ok = `${'a'.repeat(59)}.com`;
  assert.equal(ok.length, 63);
  await createServerCert({ hostname: ok, issuer: edge, keyAlgorithm: 'ec' });
  const long = `${'a'.repeat(60)}.com`;
  await assert.rejects(createServerCert({ hostname: long, issuer: edge, keyAlgorithm: 'ec' }), (err: unknown) => {
    assert.ok(err instanceof UserError);
    assert.match(err.message, /64 characters/);
    assert.match(err.hint ?? '', /shorter than 64/);
    return true;
  });
  await assert.rejects(createServerCert({ hostname: 'bad host!', issuer: edge, keyAlgorithm: 'ec' }), UserError);
});

test('device certificate: CN = device id, clientAuth; self-signed without an issuer', async () => {
  const c = parse(device.certPem);
  assert.equal(c.subject, 'CN=device-1');
  assert.equal(c.issuer, 'CN=Unit Intermediate');
  assert.deepEqual(eku(c), [x509.ExtendedKeyUsage.clientAuth]);
  assert.equal(basic(c)?.ca, false);
  const self = await createDeviceCert({ commonName: 'lonely', keyAlgorithm: 'ec' });
  const s = new NodeX509(self.certPem);
  assert.equal(parse(self.certPem).issuer, 'CN=lonely');
  assert.ok(s.verify(s.publicKey));
});

test('an issuer whose key does not match its certificate is refused', async () => {
  await assert.rejects(
    createServerCert({
      hostname: 'x.test',
      issuer: { certPem: edge.certPem, keyPem: device.keyPem },
      keyAlgorithm: 'ec',
    }),
    (err: unknown) => err instanceof UserError && /does not belong/.test(err.message),
  );
});

test('thumbprints equal openssl x509 -fingerprint (upper-case hex, no colons)', () => {
  for (const pem of [root.certPem, server.certPem]) {
    const tp = thumbprints(pem);
    const sha1 = execFileSync('openssl', ['x509', '-noout', '-fingerprint', '-sha1'], { input: pem }).toString();
    const sha256 = execFileSync('openssl', ['x509', '-noout', '-fingerprint', '-sha256'], { input: pem }).toString();
    assert.equal(tp.sha1, sha1.split('=')[1].trim().replace(/:/g, ''));
    assert.equal(tp.sha256, sha256.split('=')[1].trim().replace(/:/g, ''));
    assert.match(tp.sha1, /^[0-9A-F]{40}$/);
    assert.match(tp.sha256, /^[0-9A-F]{64}$/);
  }
});

test('keyMatchesCertificate: own key yes, another key no, garbage no', () => {
  assert.equal(keyMatchesCertificate(server.keyPem, server.certPem), true);
  assert.equal(keyMatchesCertificate(root.keyPem, root.certPem), true);
  assert.equal(keyMatchesCertificate(device.keyPem, server.certPem), false);
  assert.equal(keyMatchesCertificate('not a key', server.certPem), false);
});

test('fullChainPem and splitPemCertificates keep order and drop repeats', () => {
  const chain = fullChainPem(server.certPem, edge.certPem, fullChainPem(inter.certPem, root.certPem), root.certPem);
  const parts = splitPemCertificates(chain);
  assert.equal(parts.length, 4);
  assert.deepEqual(
    parts.map((p) => parse(p).subject),
    ['CN=gw.unit.test', 'CN=Unit Edge CA', 'CN=Unit Intermediate', 'CN=Unit Root'],
  );
  assert.ok(chain.endsWith('-----END CERTIFICATE-----\n'));
  assert.deepEqual(splitPemCertificates('no pem here'), []);
});

test('verifyChain accepts a good chain and lists each link', () => {
  const r = verifyChain({
    certPem: server.certPem,
    trustPems: [root.certPem],
    untrustedPems: [edge.certPem, inter.certPem],
    hostname: 'gw.unit.test',
  });
  assert.equal(r.ok, true, r.reason);
  assert.deepEqual(
    r.chain.map((l) => l.subject),
    ['CN=gw.unit.test', 'CN=Unit Edge CA', 'CN=Unit Intermediate', 'CN=Unit Root'],
  );
  assert.ok(r.chain[0].notAfter instanceof Date);
  // a full-chain bundle brings its own intermediates; the IP SAN matches too
  const r2 = verifyChain({
    certPem: fullChainPem(server.certPem, edge.certPem, inter.certPem),
    trustPems: [root.certPem],
    hostname: '127.0.0.9',
  });
  assert.equal(r2.ok, true, r2.reason);
  assert.equal(
    verifyChain({
      certPem: device.certPem,
      trustPems: [root.certPem],
      untrustedPems: [inter.certPem],
      purpose: 'client',
    }).ok,
    true,
  );
});

function expectFailure(r: ReturnType<typeof verifyChain>, code: string, reason: RegExp): void {
  assert.equal(r.ok, false);
  assert.equal(r.code, code, r.reason);
  assert.match(r.reason ?? '', reason);
}

test('verifyChain: expired and not-yet-valid, with the at option and with a past validity', async () => {
  const chain = { certPem: server.certPem, trustPems: [root.certPem], untrustedPems: [edge.certPem, inter.certPem] };
  expectFailure(
    verifyChain({ ...chain, at: new Date(Date.now() + 400 * DAY) }),
    'expired',
    /"CN=gw.unit.test" expired on/,
  );
  expectFailure(verifyChain({ ...chain, at: new Date(Date.now() - DAY) }), 'not-yet-valid', /not valid before/);
  const old = await createServerCert({
    hostname: 'old.test',
    issuer: edge,
    validFrom: new Date(Date.now() - 10 * DAY),
    days: 2,
    keyAlgorithm: 'ec',
  });
  expectFailure(verifyChain({ ...chain, certPem: old.certPem }), 'expired', /old\.test/);
  const future = await createServerCert({
    hostname: 'future.test',
    issuer: edge,
    validFrom: new Date(Date.now() + DAY),
    keyAlgorithm: 'ec',
  });
  expectFailure(verifyChain({ ...chain, certPem: future.certPem }), 'not-yet-valid', /future\.test/);
});

test('verifyChain: unknown issuer (self-signed, or another root of the same name)', async () => {
  const self = await createDeviceCert({ commonName: 'self', keyAlgorithm: 'ec' });
  expectFailure(verifyChain({ certPem: self.certPem, trustPems: [root.certPem] }), 'unknown-issuer', /self-signed/);
  assert.equal(verifyChain({ certPem: self.certPem, trustPems: [self.certPem] }).ok, true);
  const impostor = await createRootCa({ commonName: 'Unit Root', keyAlgorithm: 'ec' });
  expectFailure(
    verifyChain({
      certPem: server.certPem,
      trustPems: [impostor.certPem],
      untrustedPems: [edge.certPem, inter.certPem],
    }),
    'unknown-issuer',
    /different key/,
  );
  const other = await createRootCa({ commonName: 'Other Root', keyAlgorithm: 'ec' });
  expectFailure(
    verifyChain({ certPem: server.certPem, trustPems: [other.certPem], untrustedPems: [edge.certPem, inter.certPem] }),
    'unknown-issuer',
    /not a trusted root/,
  );
});

test('verifyChain: missing intermediate', () => {
  expectFailure(
    verifyChain({ certPem: server.certPem, trustPems: [root.certPem] }),
    'missing-intermediate',
    /"CN=Unit Edge CA"/,
  );
});

test('verifyChain: not a CA (leaf used as issuer, path length exceeded)', async () => {
  const bogus = await issueCertificate({ commonName: 'signed-by-a-leaf', issuer: server, keyAlgorithm: 'ec' });
  expectFailure(
    verifyChain({
      certPem: bogus.certPem,
      trustPems: [root.certPem],
      untrustedPems: [server.certPem, edge.certPem, inter.certPem],
    }),
    'not-a-ca',
    /"CN=gw.unit.test" signed "CN=signed-by-a-leaf" but is not a CA/,
  );
  const subCa = await createIntermediateCa({ commonName: 'Below Edge', issuer: edge, keyAlgorithm: 'ec' });
  const leaf = await createServerCert({ hostname: 'deep.test', issuer: subCa, keyAlgorithm: 'ec' });
  expectFailure(
    verifyChain({
      certPem: leaf.certPem,
      trustPems: [root.certPem],
      untrustedPems: [subCa.certPem, edge.certPem, inter.certPem],
    }),
    'not-a-ca',
    /path length 0/,
  );
});

test('verifyChain: wrong key usage (client cert as server, CA without keyCertSign)', async () => {
  expectFailure(
    verifyChain({
      certPem: device.certPem,
      trustPems: [root.certPem],
      untrustedPems: [inter.certPem],
      purpose: 'server',
    }),
    'wrong-key-usage',
    /not allowed for server authentication/,
  );
  expectFailure(
    verifyChain({
      certPem: server.certPem,
      trustPems: [root.certPem],
      untrustedPems: [edge.certPem, inter.certPem],
      purpose: 'client',
    }),
    'wrong-key-usage',
    /needs clientAuth/,
  );
  const noSign = await issueCertificate({
    commonName: 'No Sign CA',
    issuer: inter,
    ca: true,
    keyUsage: ['digitalSignature'],
    keyAlgorithm: 'ec',
  });
  const leaf = await createDeviceCert({ commonName: 'under-nosign', issuer: noSign, keyAlgorithm: 'ec' });
  expectFailure(
    verifyChain({ certPem: leaf.certPem, trustPems: [root.certPem], untrustedPems: [noSign.certPem, inter.certPem] }),
    'wrong-key-usage',
    /keyCertSign/,
  );
});

test('verifyChain: name mismatch', () => {
  expectFailure(
    verifyChain({
      certPem: server.certPem,
      trustPems: [root.certPem],
      untrustedPems: [edge.certPem, inter.certPem],
      hostname: 'other.unit.test',
    }),
    'name-mismatch',
    /"other\.unit\.test"/,
  );
  expectFailure(
    verifyChain({
      certPem: server.certPem,
      trustPems: [root.certPem],
      untrustedPems: [edge.certPem, inter.certPem],
      hostname: '127.0.0.10',
    }),
    'name-mismatch',
    /127\.0\.0\.10/,
  );
});

test('verifyChain: bad signature (a tampered certificate)', () => {
  const der = Buffer.from(splitPemCertificates(server.certPem)[0].replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
  der[der.length - 5] ^= 0xff;
  const tampered = `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`;
  expectFailure(
    verifyChain({ certPem: tampered, trustPems: [root.certPem], untrustedPems: [edge.certPem, inter.certPem] }),
    'bad-signature',
    /signature of "CN=gw.unit.test" does not verify/,
  );
});

test('readPemFile: missing, directory, not PEM, DER each give a UserError naming the file', () => {
  const missing = path.join(dir, 'nope.pem');
  assert.throws(
    () => readPemFile(missing, 'CA certificate'),
    (e: unknown) => e instanceof UserError && e.message.includes(missing),
  );
  assert.throws(
    () => readPemFile(dir, 'CA certificate'),
    (e: unknown) => e instanceof UserError && /directory/.test(e.message),
  );
  const text = path.join(dir, 'text.pem');
  writeFileSync(text, 'hello\n');
  assert.throws(
    () => readPemFile(text, 'CA certificate'),
    (e: unknown) => e instanceof UserError && /not a PEM file/.test(e.message) && e.message.includes(text),
  );
  const der = path.join(dir, 'cert.der');
  writeFileSync(der, new NodeX509(root.certPem).raw);
  assert.throws(
    () => readPemFile(der, 'CA certificate'),
    (e: unknown) => e instanceof UserError && /DER/.test(e.message) && /openssl x509 -inform der/.test(e.hint ?? ''),
  );
  const good = path.join(dir, 'good.pem');
  writeFileSync(good, root.certPem);
  assert.equal(readPemFile(good, 'CA certificate'), root.certPem);
});

test('writeKeyFile is 0600, writeCertFile is 0644, both create parent directories', () => {
  const key = path.join(dir, 'out', 'private', 'k.key.pem');
  const cert = path.join(dir, 'out', 'certs', 'c.cert.pem');
  writeKeyFile(key, server.keyPem);
  writeCertFile(cert, server.certPem);
  assert.equal(statSync(key).mode & 0o777, 0o600);
  assert.equal(statSync(cert).mode & 0o777, 0o644);
  // an existing file with loose permissions is tightened on rewrite
  const loose = path.join(dir, 'loose.key.pem');
  mkdirSync(path.dirname(loose), { recursive: true });
  writeFileSync(loose, 'x', { mode: 0o666 });
  writeKeyFile(loose, server.keyPem);
  assert.equal(statSync(loose).mode & 0o777, 0o600);
});

test('openssl agrees: every kind of certificate verifies against the root', () => {
  const files = {
    root: path.join(dir, 'r.pem'),
    chain: path.join(dir, 'chain.pem'),
    server: path.join(dir, 's.pem'),
    device: path.join(dir, 'd.pem'),
  };
  writeFileSync(files.root, root.certPem);
  writeFileSync(files.chain, fullChainPem(edge.certPem, inter.certPem));
  writeFileSync(files.server, server.certPem);
  writeFileSync(files.device, device.certPem);
  const out = execFileSync('openssl', [
    'verify',
    '-CAfile',
    files.root,
    '-untrusted',
    files.chain,
    files.server,
    files.device,
  ]).toString();
  assert.match(out, /s\.pem: OK/);
  assert.match(out, /d\.pem: OK/);
});
