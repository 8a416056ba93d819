/**
 * `strata edge start` and `strata edge config apply` with the configuration files of the
 * seeds: each invalid case stops start-up with its own error (line-numbered where it has a
 * line) and exit code 1; the seeds' example parent and child files are accepted as written
 * (their /var/secrets paths pointed at files of the same names in a temp dir), and a gateway
 * starts from the parent example with its parent offline.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import {
  createDeviceCert,
  createEdgeCa,
  createIntermediateCa,
  createRootCa,
  fullChainPem,
  type IssuedCert,
} from '../../src/pki/index.ts';
import { randomLoopback } from '../helpers/hub.ts';
import { exec, type Exec } from '../helpers/tls.ts';

const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

// The seeds' example files, as written there.
const SEED_PARENT = `hostname = "parent-vm.westus.cloudapp.azure.com"
trust_bundle_cert = "file:///var/secrets/azure-iot-test-only.root.ca.cert.pem"

[edge_ca]
cert = "file:///var/secrets/iot-edge-device-ca-gateway-full-chain.cert.pem"
pk = "file:///var/secrets/iot-edge-device-ca-gateway.key.pem"
`;
const SEED_CHILD = `parent_hostname = "parent-vm.westus.cloudapp.azure.com"
trust_bundle_cert = "file:///var/secrets/azure-iot-test-only.root.ca.cert.pem"

[edge_ca]
cert = "file:///var/secrets/iot-edge-device-downstream-full-chain.cert.pem"
pk = "file:///var/secrets/iot-edge-device-downstream.key.pem"
`;

let dir: string;
let secrets: string;
let root: IssuedCert;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-edge-config-'));
  secrets = join(dir, 'secrets');
  await mkdir(secrets);
  root = await createRootCa({ commonName: 'Azure_IoT_Hub_CA_Cert_Test_Only', keyAlgorithm: 'ec' });
  const inter = await createIntermediateCa({ commonName: 'intermediate', issuer: root, keyAlgorithm: 'ec' });
  const gatewayCa = await createEdgeCa({ commonName: 'gateway.ca', issuer: inter, keyAlgorithm: 'ec' });
  const downstreamCa = await createEdgeCa({ commonName: 'downstream.ca', issuer: inter, keyAlgorithm: 'ec' });
  const otherRoot = await createRootCa({ commonName: 'some other root', keyAlgorithm: 'ec' });
  const strangerCa = await createEdgeCa({ commonName: 'stranger.ca', issuer: otherRoot, keyAlgorithm: 'ec' });
  const leafCert = await createDeviceCert({ commonName: 'not-a-ca', issuer: inter, keyAlgorithm: 'ec' });
  const put = (name: string, text: string) => writeFile(join(secrets, name), text);
  await put('azure-iot-test-only.root.ca.cert.pem', root.certPem);
  await put(
    'iot-edge-device-ca-gateway-full-chain.cert.pem',
    fullChainPem(gatewayCa.certPem, inter.certPem, root.certPem),
  );
  await put('iot-edge-device-ca-gateway.key.pem', gatewayCa.keyPem);
  await put(
    'iot-edge-device-downstream-full-chain.cert.pem',
    fullChainPem(downstreamCa.certPem, inter.certPem, root.certPem),
  );
  await put('iot-edge-device-downstream.key.pem', downstreamCa.keyPem);
  await put('stranger-full-chain.cert.pem', fullChainPem(strangerCa.certPem, otherRoot.certPem));
  await put('stranger.key.pem', strangerCa.keyPem);
  await put('not-a-ca.cert.pem', fullChainPem(leafCert.certPem, inter.certPem));
  await put('not-a-ca.key.pem', leafCert.keyPem);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The seeds' text with /var/secrets pointing at the temp dir (file names as in the seeds). */
const located = (text: string) => text.replaceAll('file:///var/secrets/', `file://${secrets}/`);

const PROVISIONING = `
[provisioning]
source = "manual"
connection_string = "HostName=hub.example.local;DeviceId=gateway;SharedAccessKey=${Buffer.alloc(32, 7).toString('base64')}"
`;

function strata(args: string[], env: Record<string, string> = {}): Promise<Exec> {
  return exec(process.execPath, [STRATA_BIN, ...args], {
    env: { ...process.env, STRATA_LOG_LEVEL: 'error', ...env },
    timeoutMs: 30_000,
  });
}

async function start(name: string, text: string): Promise<Exec> {
  const path = join(dir, `${name}.toml`);
  await writeFile(path, text);
  return strata([
    'edge',
    'start',
    '--config',
    path,
    '--data',
    join(dir, `data-${name}`),
    '--bind',
    randomLoopback(),
    '--metrics-port',
    '0',
  ]);
}

/** The parent example with the provisioning a running gateway needs (the seeds set it earlier in the same file). */
const valid = () => `${located(SEED_PARENT)}${PROVISIONING}`;

describe('strata edge start refuses a bad config.toml with its specific error and exit code 1', () => {
  const cases: Array<{ name: string; text: () => string; error: RegExp }> = [
    {
      name: 'top-level key after a section header',
      text: () =>
        valid().replace('hostname = "parent-vm.westus.cloudapp.azure.com"\n', '') +
        'hostname = "parent-vm.westus.cloudapp.azure.com"\n',
      error:
        /line 1[0-9]: error: "hostname" is inside the section \[provisioning\], so it is read as provisioning\.hostname, not as the top-level setting\. Move the line above the first section header \(line 3\)/,
    },
    {
      name: 'hostname with invalid characters',
      text: () => valid().replace('parent-vm.westus.cloudapp.azure.com', 'parent_vm!.example.com'),
      error:
        /line 1: error: hostname "parent_vm!\.example\.com" has the label "parent_vm!" with characters other than letters, digits and hyphens/,
    },
    {
      name: 'hostname of 64 characters',
      text: () => valid().replace('parent-vm.westus.cloudapp.azure.com', `${'a'.repeat(60)}.com`),
      error: /line 1: error: hostname "a{60}\.com" is 64 characters long; it must be shorter than 64/,
    },
    {
      name: 'missing trust bundle file',
      text: () => valid().replace('azure-iot-test-only.root.ca.cert.pem', 'missing-root.pem'),
      error: /error: trust_bundle_cert not found: .*missing-root\.pem/,
    },
    {
      name: 'missing Edge CA key file',
      text: () => valid().replace('iot-edge-device-ca-gateway.key.pem', 'no-such-key.pem'),
      error: /error: edge_ca\.pk not found: .*no-such-key\.pem/,
    },
    {
      name: 'key not matching the Edge CA certificate',
      text: () => valid().replace('iot-edge-device-ca-gateway.key.pem', 'iot-edge-device-downstream.key.pem'),
      error:
        /error: edge_ca\.pk .*iot-edge-device-downstream\.key\.pem does not belong to the certificate .*iot-edge-device-ca-gateway-full-chain\.cert\.pem/,
    },
    {
      name: 'Edge CA that is not a CA',
      text: () =>
        valid()
          .replace('iot-edge-device-ca-gateway-full-chain.cert.pem', 'not-a-ca.cert.pem')
          .replace('iot-edge-device-ca-gateway.key.pem', 'not-a-ca.key.pem'),
      error: /error: edge_ca\.cert .*not-a-ca\.cert\.pem is not a CA certificate \(basicConstraints CA:false\)/,
    },
    {
      name: 'Edge CA that does not chain to the trust bundle',
      text: () =>
        valid()
          .replace('iot-edge-device-ca-gateway-full-chain.cert.pem', 'stranger-full-chain.cert.pem')
          .replace('iot-edge-device-ca-gateway.key.pem', 'stranger.key.pem'),
      error:
        /error: edge_ca\.cert .*stranger-full-chain\.cert\.pem does not chain to the trust bundle .*azure-iot-test-only\.root\.ca\.cert\.pem/,
    },
    {
      name: 'no provisioning',
      text: () => located(SEED_PARENT),
      error: /error: \[provisioning\] is missing: the gateway needs the identity of its edge device/,
    },
  ];

  test('each case, started in parallel', async () => {
    const results = await Promise.all(cases.map(async (c, i) => ({ c, r: await start(`bad-${i}`, c.text()) })));
    for (const { c, r } of results) {
      assert.equal(r.code, 1, `${c.name}: exit code 1\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stderr, c.error, `${c.name}: ${r.stderr}`);
      assert.doesNotMatch(r.stdout, /is running/, `${c.name}: it must not start`);
    }
  });
});

describe("the seeds' example configuration files are accepted", () => {
  test('`strata edge config apply` validates the parent and the child example as written', async () => {
    for (const [name, text] of [
      ['parent', SEED_PARENT],
      ['child', SEED_CHILD],
    ] as const) {
      const path = join(dir, `seed-${name}.toml`);
      await writeFile(path, located(text));
      const r = await strata(['edge', 'config', 'apply', '--config', path, '--data', join(dir, `applied-${name}`)]);
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
      assert.match(r.stdout, /is valid and recorded for the gateway in .*; it is not running/);
    }
  });

  test('hostnames mixing an IP address and a domain name are accepted with a warning', async () => {
    const path = join(dir, 'mixed.toml');
    await writeFile(path, located(SEED_CHILD).replace('parent_hostname', 'hostname = "10.0.0.4"\nparent_hostname'));
    const r = await strata(['edge', 'config', 'apply', '--config', path, '--data', join(dir, 'applied-mixed')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /line 2: warning: hostname and parent_hostname mix an IP address and a domain name\. Use one pattern/,
    );
  });

  test('a gateway starts from the parent example (with its provisioning), its parent offline', async () => {
    const path = join(dir, 'seed-parent-start.toml');
    await writeFile(path, valid());
    const address = randomLoopback();
    const { spawn } = await import('node:child_process');
    const proc = spawn(
      process.execPath,
      [
        STRATA_BIN,
        'edge',
        'start',
        '--config',
        path,
        '--data',
        join(dir, 'data-seed'),
        '--bind',
        address,
        '--metrics-port',
        '0',
      ],
      {
        env: { ...process.env, STRATA_LOG_LEVEL: 'error' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    proc.stdout.on('data', (c: Buffer) => (out += c.toString()));
    proc.stderr.on('data', (c: Buffer) => (out += c.toString()));
    try {
      const deadline = Date.now() + 30_000;
      while (!/Press Ctrl\+C/.test(out)) {
        if (proc.exitCode !== null) assert.fail(`it exited (${proc.exitCode}):\n${out}`);
        if (Date.now() > deadline) assert.fail(`not running after 30 s:\n${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.match(
        out,
        /hostname\s+parent-vm\.westus\.cloudapp\.azure\.com \(server certificate CN; SAN DNS:parent-vm\.westus\.cloudapp\.azure\.com, DNS:edgehub/,
      );
      assert.match(out, /Edge CA\s+CN=gateway\.ca/);
      assert.match(
        out,
        /upstream\s+amqps:\/\/hub\.example\.local:5671 \(IoT hub hub\.example\.local\): not connected yet/,
      );
      assert.match(out, /MaxConnectedClients\s+100 \(default\)/);
    } finally {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => proc.once('exit', r));
      }
    }
  });
});
