import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import {
  createDeviceCert,
  createEdgeCa,
  fullChainPem,
  issueCertificate,
  type IssuedCert,
} from '../../src/pki/index.ts';
import { exec, opensslConnect, randomLoopbackAddress, type Exec } from '../helpers/tls.ts';

/**
 * `strata certs`, run as a user runs it, checked by openssl: the chains it makes verify, the fields
 * are what the seeds need, a TLS server using them is accepted (and refused when it should be), and
 * `strata certs verify` reaches the same verdict as `openssl verify` on good and broken chains.
 */

const BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const DAY = 86_400_000;

let work: string;
let out: string;
let host: string;
let ip: string;

function strata(...args: string[]): Promise<Exec> {
  // Cases run side by side, a dozen CLI processes at once: on a busy two-core machine one can
  // take well over the helper's default 20 s to start, which is not what these tests check.
  return exec(process.execPath, [BIN, 'certs', ...args], {
    cwd: work,
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn' },
    timeoutMs: 120_000,
  });
}
function openssl(...args: string[]): Promise<Exec> {
  return exec('openssl', args, { cwd: work });
}
const cert = (name: string) => path.join(out, 'certs', name);
const key = (name: string) => path.join(out, 'private', name);
const ROOT = () => cert('azure-iot-test-only.root.ca.cert.pem');
const OTHER_ROOT = () => path.join(work, 'other', 'certs', 'azure-iot-test-only.root.ca.cert.pem');

function assertOk(r: Exec, what: string): void {
  assert.equal(r.code, 0, `${what} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
}

function issued(certFile: string, keyFile: string): IssuedCert {
  return { certPem: readFileSync(certFile, 'utf8'), keyPem: readFileSync(keyFile, 'utf8') };
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'strata-certs-'));
  out = path.join(work, 'certs-out');
  ip = randomLoopbackAddress();
  host = 'gateway.strata.test';
  // No --out: the default ./certs-out under the working directory is used.
  assertOk(await strata('create-root'), 'create-root');
  const made = await Promise.all([
    strata('create-edge-ca', 'gateway'),
    strata('create-edge-identity', 'gateway'),
    strata('create-device', 'dev1'),
    strata('create-device', 'dev2', '--self-signed', '--key-algorithm', 'ec'),
    strata('create-root', '--out', path.join(work, 'other'), '--key-algorithm', 'ec'),
  ]);
  made.forEach((r, i) => assertOk(r, `command ${i}`));
  assertOk(
    await strata(
      'create-server',
      host,
      '--ca',
      cert('iot-edge-device-ca-gateway.cert.pem'),
      '--ca-key',
      key('iot-edge-device-ca-gateway.key.pem'),
      '--san',
      'edgehub',
      '--san',
      ip,
    ),
    'create-server',
  );
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

test("files carry the seeds' names; keys are 0600, certificates 0644", () => {
  const certs = [
    'azure-iot-test-only.root.ca.cert.pem',
    'azure-iot-test-only.intermediate.cert.pem',
    'azure-iot-test-only.intermediate-full-chain.cert.pem',
    'iot-edge-device-ca-gateway.cert.pem',
    'iot-edge-device-ca-gateway-full-chain.cert.pem',
    'iot-edge-device-identity-gateway.cert.pem',
    'iot-edge-device-identity-gateway-full-chain.cert.pem',
    'iot-device-dev1.cert.pem',
    'iot-device-dev1-full-chain.cert.pem',
    'iot-device-dev2.cert.pem',
    `server-${host}.cert.pem`,
    `server-${host}-full-chain.cert.pem`,
  ];
  const keys = [
    'azure-iot-test-only.root.ca.key.pem',
    'azure-iot-test-only.intermediate.key.pem',
    'iot-edge-device-ca-gateway.key.pem',
    'iot-edge-device-identity-gateway.key.pem',
    'iot-device-dev1.key.pem',
    'iot-device-dev2.key.pem',
    `server-${host}.key.pem`,
  ];
  for (const c of certs) assert.equal(statSync(cert(c)).mode & 0o777, 0o644, c);
  for (const k of keys) assert.equal(statSync(key(k)).mode & 0o777, 0o600, k);
});

test('openssl verify accepts every chain the toolkit made', async () => {
  const chains: Array<[string, string]> = [
    ['azure-iot-test-only.intermediate.cert.pem', 'azure-iot-test-only.intermediate-full-chain.cert.pem'],
    ['iot-edge-device-ca-gateway.cert.pem', 'azure-iot-test-only.intermediate.cert.pem'],
    ['iot-edge-device-ca-gateway.cert.pem', 'iot-edge-device-ca-gateway-full-chain.cert.pem'],
    ['iot-edge-device-identity-gateway.cert.pem', 'iot-edge-device-identity-gateway-full-chain.cert.pem'],
    ['iot-device-dev1.cert.pem', 'iot-device-dev1-full-chain.cert.pem'],
    [`server-${host}.cert.pem`, `server-${host}-full-chain.cert.pem`],
  ];
  const results = await Promise.all(
    chains.map(([c, chain]) => openssl('verify', '-CAfile', ROOT(), '-untrusted', cert(chain), cert(c))),
  );
  results.forEach((r, i) => {
    assertOk(r, `openssl verify ${chains[i][0]}`);
    assert.match(r.stdout, /: OK$/m);
  });
  // Purpose-specific checks as a TLS peer would make them.
  const server = await openssl(
    'verify',
    '-CAfile',
    ROOT(),
    '-untrusted',
    cert(`server-${host}-full-chain.cert.pem`),
    '-purpose',
    'sslserver',
    '-verify_hostname',
    host,
    cert(`server-${host}.cert.pem`),
  );
  assertOk(server, 'server purpose');
  const client = await openssl(
    'verify',
    '-CAfile',
    ROOT(),
    '-untrusted',
    cert('iot-device-dev1-full-chain.cert.pem'),
    '-purpose',
    'sslclient',
    cert('iot-device-dev1.cert.pem'),
  );
  assertOk(client, 'client purpose');
  // The self-signed device certificate is its own anchor.
  assertOk(
    await openssl('verify', '-CAfile', cert('iot-device-dev2.cert.pem'), cert('iot-device-dev2.cert.pem')),
    'self-signed',
  );
});

test('openssl x509 -text shows the expected CN, SAN, EKU and basic constraints', async () => {
  const text = async (name: string) => {
    const r = await openssl('x509', '-in', cert(name), '-text', '-noout');
    assertOk(r, name);
    return r.stdout;
  };
  const root = await text('azure-iot-test-only.root.ca.cert.pem');
  assert.match(root, /Subject: CN ?= ?azure-iot-test-only Root CA/);
  assert.match(root, /Basic Constraints: critical\s+CA:TRUE\n/);
  assert.match(root, /Key Usage: critical\s+.*Certificate Sign, CRL Sign/);

  const edge = await text('iot-edge-device-ca-gateway.cert.pem');
  assert.match(edge, /Subject: CN ?= ?iot-edge-device-ca-gateway/);
  assert.match(edge, /Issuer: CN ?= ?azure-iot-test-only Intermediate CA/);
  assert.match(edge, /Basic Constraints: critical\s+CA:TRUE, pathlen:0/);

  const server = await text(`server-${host}.cert.pem`);
  assert.match(server, new RegExp(`Subject: CN ?= ?${host.replace(/\./g, '\\.')}\\n`));
  assert.match(
    server,
    new RegExp(`DNS:${host.replace(/\./g, '\\.')}, DNS:edgehub, IP Address:${ip.replace(/\./g, '\\.')}\\n`),
  );
  assert.match(server, /Extended Key Usage: \s+TLS Web Server Authentication\n/);
  assert.match(server, /Basic Constraints: critical\s+CA:FALSE/);
  assert.match(server, /Issuer: CN ?= ?iot-edge-device-ca-gateway/);

  const device = await text('iot-device-dev1.cert.pem');
  assert.match(device, /Subject: CN ?= ?dev1\n/);
  assert.match(device, /Extended Key Usage: \s+TLS Web Client Authentication\n/);
  assert.match(device, /CA:FALSE/);
  const identity = await text('iot-edge-device-identity-gateway.cert.pem');
  assert.match(identity, /Subject: CN ?= ?gateway\n/);
  assert.match(identity, /TLS Web Client Authentication/);
  const selfSigned = await text('iot-device-dev2.cert.pem');
  assert.match(selfSigned, /Issuer: CN ?= ?dev2\n/);
  assert.match(selfSigned, /ASN1 OID: prime256v1/);
});

test('create-device and show print the thumbprints openssl computes', async () => {
  const r = await strata('create-device', 'dev3');
  assertOk(r, 'create-device');
  const sha1 = (
    await openssl('x509', '-in', cert('iot-device-dev3.cert.pem'), '-noout', '-fingerprint', '-sha1')
  ).stdout
    .split('=')[1]
    .trim()
    .replace(/:/g, '');
  const sha256 = (
    await openssl('x509', '-in', cert('iot-device-dev3.cert.pem'), '-noout', '-fingerprint', '-sha256')
  ).stdout
    .split('=')[1]
    .trim()
    .replace(/:/g, '');
  assert.match(r.stdout, new RegExp(`SHA-1 thumbprint: +${sha1}\\n`));
  assert.match(r.stdout, new RegExp(`SHA-256 thumbprint: +${sha256}\\n`));
  const show = await strata('show', cert('iot-device-dev3.cert.pem'));
  assertOk(show, 'show');
  assert.match(show.stdout, new RegExp(sha1));
  assert.match(show.stdout, new RegExp(sha256));
  assert.match(show.stdout, /subject: +CN=dev3/);
  assert.match(show.stdout, /extended key usage: +clientAuth/);
  assert.match(show.stdout, /basic constraints: +CA:FALSE/);
  const edge = await strata('show', cert('iot-edge-device-ca-gateway.cert.pem'));
  assert.match(edge.stdout, /basic constraints: +CA:TRUE, pathlen:0 \(critical\)/);
  assert.match(edge.stdout, /key usage: +.*keyCertSign, cRLSign/);
});

test('a TLS server with the Strata server full chain: accepted by s_client, refused with another root or host name', async (t) => {
  const server = tls.createServer({
    key: readFileSync(key(`server-${host}.key.pem`)),
    cert: readFileSync(cert(`server-${host}-full-chain.cert.pem`)),
  });
  server.on('secureConnection', (socket) => socket.on('error', () => {}));
  server.on('tlsClientError', () => {});
  server.listen(0, ip);
  await once(server, 'listening');
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;

  const [good, byIp, otherRoot, wrongHost] = await Promise.all([
    opensslConnect({ address: ip, port, caFile: ROOT(), host }),
    opensslConnect({ address: ip, port, caFile: ROOT(), host: ip }),
    opensslConnect({ address: ip, port, caFile: OTHER_ROOT(), host }),
    opensslConnect({ address: ip, port, caFile: ROOT(), host: 'other.strata.test' }),
  ]);
  assertOk(good, 's_client with the right root and host');
  assert.match(good.stdout, /Verify return code: 0 \(ok\)/);
  assertOk(byIp, 's_client by IP address');
  assert.notEqual(otherRoot.code, 0, 'another root must be refused');
  assert.match(otherRoot.stdout + otherRoot.stderr, /unable to get local issuer certificate|certificate verify failed/);
  assert.notEqual(wrongHost.code, 0, 'a wrong host name must be refused');
  assert.match(wrongHost.stdout + wrongHost.stderr, /hostname mismatch|certificate verify failed/);
});

interface Case {
  name: string;
  strata: string[];
  openssl: string[];
  /** undefined: both must accept */
  code?: string;
}

test('verify agrees with openssl on good chains and on each broken case', async () => {
  const bad = path.join(work, 'bad');
  mkdirSync(bad, { recursive: true });
  const intermediate = issued(
    cert('azure-iot-test-only.intermediate.cert.pem'),
    key('azure-iot-test-only.intermediate.key.pem'),
  );
  const edge = issued(cert('iot-edge-device-ca-gateway.cert.pem'), key('iot-edge-device-ca-gateway.key.pem'));
  const serverCert = issued(cert(`server-${host}.cert.pem`), key(`server-${host}.key.pem`));
  const [expired, signedByLeaf, noSignCa] = await Promise.all([
    createDeviceCert({
      commonName: 'expired-dev',
      issuer: intermediate,
      validFrom: new Date(Date.now() - 30 * DAY),
      days: 2,
      keyAlgorithm: 'ec',
    }),
    issueCertificate({ commonName: 'signed-by-leaf', issuer: serverCert, keyAlgorithm: 'ec' }),
    issueCertificate({
      commonName: 'no-sign CA',
      issuer: intermediate,
      ca: true,
      keyUsage: ['digitalSignature'],
      keyAlgorithm: 'ec',
    }),
  ]);
  const underNoSign = await createDeviceCert({ commonName: 'under-no-sign', issuer: noSignCa, keyAlgorithm: 'ec' });
  const f = (name: string, pem: string) => {
    const p = path.join(bad, name);
    writeFileSync(p, pem);
    return p;
  };
  const expiredFile = f('expired.pem', expired.certPem);
  const interChain = cert('azure-iot-test-only.intermediate-full-chain.cert.pem');
  const leafSignedFile = f('leaf-signed.pem', signedByLeaf.certPem);
  const leafChain = f('leaf-chain.pem', fullChainPem(serverCert.certPem, edge.certPem, intermediate.certPem));
  const underNoSignFile = f('under-no-sign.pem', underNoSign.certPem);
  const noSignChain = f('no-sign-chain.pem', fullChainPem(noSignCa.certPem, intermediate.certPem));

  const serverPem = cert(`server-${host}.cert.pem`);
  const serverChain = cert(`server-${host}-full-chain.cert.pem`);
  const dev = cert('iot-device-dev1.cert.pem');
  const devChain = cert('iot-device-dev1-full-chain.cert.pem');
  const epoch = (d: string) => String(Math.floor(new Date(d).getTime() / 1000));

  const cases: Case[] = [
    {
      name: 'good server chain + host',
      strata: [serverPem, '--untrusted', serverChain, '--hostname', host],
      openssl: ['-untrusted', serverChain, '-verify_hostname', host, '-purpose', 'sslserver', serverPem],
    },
    {
      name: 'good server by IP',
      strata: [serverChain, '--hostname', ip],
      openssl: ['-untrusted', serverChain, '-verify_ip', ip, serverPem],
    },
    {
      name: 'good device chain',
      strata: [devChain, '--purpose', 'client'],
      openssl: ['-untrusted', devChain, '-purpose', 'sslclient', dev],
    },
    {
      name: 'good edge CA',
      strata: [cert('iot-edge-device-ca-gateway-full-chain.cert.pem')],
      openssl: ['-untrusted', interChain, cert('iot-edge-device-ca-gateway.cert.pem')],
    },
    {
      name: 'expired (--at)',
      code: 'expired',
      strata: [devChain, '--at', '2040-01-01T00:00:00Z'],
      openssl: ['-untrusted', devChain, '-attime', epoch('2040-01-01T00:00:00Z'), dev],
    },
    {
      name: 'expired (past validity)',
      code: 'expired',
      strata: [expiredFile, '--untrusted', interChain],
      openssl: ['-untrusted', interChain, expiredFile],
    },
    {
      name: 'not yet valid',
      code: 'not-yet-valid',
      strata: [devChain, '--at', '2020-01-01T00:00:00Z'],
      openssl: ['-untrusted', devChain, '-attime', epoch('2020-01-01T00:00:00Z'), dev],
    },
    {
      name: 'unknown issuer (other root)',
      code: 'unknown-issuer',
      strata: [serverChain, '--trust', OTHER_ROOT()],
      openssl: ['-untrusted', serverChain, serverPem],
    },
    {
      name: 'unknown issuer (self-signed)',
      code: 'unknown-issuer',
      strata: [cert('iot-device-dev2.cert.pem')],
      openssl: [cert('iot-device-dev2.cert.pem')],
    },
    { name: 'missing intermediate', code: 'missing-intermediate', strata: [serverPem], openssl: [serverPem] },
    {
      name: 'not a CA',
      code: 'not-a-ca',
      strata: [leafSignedFile, '--untrusted', leafChain],
      openssl: ['-untrusted', leafChain, leafSignedFile],
    },
    {
      name: 'wrong key usage (client cert as server)',
      code: 'wrong-key-usage',
      strata: [devChain, '--purpose', 'server'],
      openssl: ['-untrusted', devChain, '-purpose', 'sslserver', dev],
    },
    {
      name: 'wrong key usage (CA without keyCertSign)',
      code: 'wrong-key-usage',
      strata: [underNoSignFile, '--untrusted', noSignChain],
      openssl: ['-untrusted', noSignChain, underNoSignFile],
    },
    {
      name: 'name mismatch',
      code: 'name-mismatch',
      strata: [serverChain, '--hostname', 'wrong.strata.test'],
      openssl: ['-untrusted', serverChain, '-verify_hostname', 'wrong.strata.test', serverPem],
    },
  ];
  const results = await Promise.all(
    cases.map(async (c) => {
      const trust = c.name.includes('other root') ? OTHER_ROOT() : ROOT();
      const [s, o] = await Promise.all([
        strata('verify', ...c.strata),
        openssl('verify', '-CAfile', trust, ...c.openssl),
      ]);
      return { c, s, o };
    }),
  );
  for (const { c, s, o } of results) {
    if (c.code === undefined) {
      assertOk(o, `openssl on ${c.name}`);
      assertOk(s, `strata verify on ${c.name}`);
      assert.match(s.stdout, /^OK: /m, c.name);
      assert.match(s.stdout, /\[trusted root\]/, c.name);
    } else {
      assert.notEqual(o.code, 0, `openssl must reject ${c.name}: ${o.stdout}`);
      assert.equal(s.code, 1, `strata verify must reject ${c.name}: ${s.stdout}${s.stderr}`);
      assert.match(s.stderr, new RegExp(`verification failed \\(${c.code}\\): `), `${c.name}: ${s.stderr}`);
      assert.match(s.stdout, /^chain:\n {2}0: CN=/, `${c.name} prints the links`);
    }
  }
});

test('bad input: one line naming the problem and the fix, non-zero exit, no stack trace', async () => {
  const empty = path.join(work, 'empty-out');
  const notPem = path.join(work, 'not-pem.txt');
  writeFileSync(notPem, 'this is not a certificate\n');
  const intermediate = issued(
    cert('azure-iot-test-only.intermediate.cert.pem'),
    key('azure-iot-test-only.intermediate.key.pem'),
  );
  const expiredCa = await createEdgeCa({
    commonName: 'expired edge',
    issuer: intermediate,
    validFrom: new Date(Date.now() - 30 * DAY),
    days: 1,
    keyAlgorithm: 'ec',
  });
  const expiredCert = path.join(work, 'expired-ca.pem');
  const expiredKey = path.join(work, 'expired-ca.key.pem');
  writeFileSync(expiredCert, expiredCa.certPem);
  writeFileSync(expiredKey, expiredCa.keyPem);
  const edgeCa = cert('iot-edge-device-ca-gateway.cert.pem');
  const edgeKey = key('iot-edge-device-ca-gateway.key.pem');

  const cases: Array<{ name: string; args: string[]; says: RegExp }> = [
    {
      name: 'missing file',
      args: ['verify', path.join(work, 'nope.pem')],
      says: /not found: .*nope\.pem\. Check the path/,
    },
    {
      name: 'missing CA file',
      args: ['create-server', 'gw.test', '--ca', path.join(work, 'nope.pem'), '--ca-key', edgeKey],
      says: /CA certificate not found: .*nope\.pem/,
    },
    {
      name: 'not PEM',
      args: ['show', notPem],
      says: /not-pem\.txt is not a PEM file.*Pass the PEM-encoded certificate/,
    },
    {
      name: 'not PEM key',
      args: ['create-server', 'gw.test', '--ca', edgeCa, '--ca-key', notPem],
      says: /not-pem\.txt is not a PEM file/,
    },
    {
      name: 'key not matching',
      args: ['create-server', 'gw.test', '--ca', edgeCa, '--ca-key', key('iot-device-dev1.key.pem')],
      says: /does not belong to the certificate .*Pass the private key file/,
    },
    {
      name: 'expired certificate',
      args: ['create-server', 'gw.test', '--ca', expiredCert, '--ca-key', expiredKey],
      says: /expired on .*Create a new CA certificate/,
    },
    {
      name: 'host name of 64 characters',
      args: ['create-server', `${'h'.repeat(60)}.com`, '--ca', edgeCa, '--ca-key', edgeKey],
      says: /is 64 characters long.*shorter than 64/,
    },
    {
      name: 'no root yet',
      args: ['create-edge-ca', 'gw', '--out', empty],
      says: /no root CA in .*Run `strata certs create-root --out .*` first/,
    },
    {
      name: 'no root for a device',
      args: ['create-device', 'd1', '--out', empty],
      says: /Run `strata certs create-root/,
    },
    {
      name: 'no root for a server',
      args: ['create-server', 'gw.test', '--out', empty],
      says: /Run `strata certs create-root/,
    },
    { name: 'key given as certificate', args: ['show', edgeKey], says: /holds no certificate \(it is a private key\)/ },
    {
      name: 'certificate given as key',
      args: ['create-server', 'gw.test', '--ca', edgeCa, '--ca-key', edgeCa],
      says: /holds no private key/,
    },
    { name: 'bad --days', args: ['create-device', 'd1', '--days', 'soon'], says: /--days soon is not a valid number/ },
  ];
  const results = await Promise.all(cases.map((c) => strata(...c.args)));
  results.forEach((r, i) => {
    const c = cases[i];
    assert.notEqual(r.code, 0, `${c.name} must fail`);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, `${c.name}: exactly one line, got:\n${r.stderr}`);
    assert.match(lines[0], /^strata: /, c.name);
    assert.match(lines[0], c.says, c.name);
    assert.doesNotMatch(r.stderr + r.stdout, /\n\s{4}at /, `${c.name}: no stack trace`);
  });
  assert.equal(existsSync(path.join(empty, 'certs')), false, 'nothing is written when the root is missing');
});
