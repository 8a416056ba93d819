/**
 * Gateways whose edge device is provisioned with an X.509 certificate (`[provisioning.authentication]
 * method = "x509"`), certificates made with openssl. The gateway proves itself with the certificate
 * to its parent, reads its `$edgeHub` module key there and signs its upstream tokens with it:
 * - self-signed (thumbprint registered at the hub): an official SDK leaf's telemetry reaches the
 *   hub under the leaf's id; the key is kept (0600) and equals the module's; with the hub down the
 *   gateway restarts on the kept key, takes messages, and they arrive once the hub is back;
 * - CA-signed (`certificateAuthority`, the CA added with `strata hub ca add`);
 * - a certificate the hub does not know: the start is refused, saying why and what to do;
 * - nested: a certificate-provisioned child gateway reads its key from its parent gateway, and
 *   signs the tokens of its MQTT upstream with it;
 * - keys regenerated at the hub: refused with the old key, the gateway reads the new one;
 * - the device-scope module read answers an edge device about its own modules only;
 * - a CA-signed leaf under a gateway is checked against the gateway's trust bundle.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { statSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import { newKey, startGatewayProcess, type EdgeSetup } from '../helpers/edge.ts';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { setupLayer } from '../helpers/nested.ts';
import { exec } from '../helpers/tls.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import https from 'node:https';

const require = createRequire(import.meta.url);
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
const first = randomInt(2, 240);
const addr = (i: number) => `${base}.${first + i}`;

let hub: HubProcess;
let hubDir: string;
let certDir: string;
const cleanups: Array<() => unknown> = [];

before(async () => {
  hubDir = await mkdtemp(join(tmpdir(), 'strata-x509-hub-'));
  certDir = await mkdtemp(join(tmpdir(), 'strata-x509-certs-'));
  hub = await startHubProcess({ address: addr(0), dataDir: hubDir });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  await hub.stop();
  await rm(hubDir, { recursive: true, force: true });
  await rm(certDir, { recursive: true, force: true });
});

async function openssl(args: string[]): Promise<string> {
  const r = await exec('openssl', args);
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A self-signed identity certificate (CN = device id) and its SHA-256 thumbprint. */
async function selfSigned(name: string): Promise<{ cert: string; key: string; thumbprint: string }> {
  const cert = join(certDir, `${name}.cert.pem`);
  const key = join(certDir, `${name}.key.pem`);
  await openssl(['req', '-x509', ...EC, '-keyout', key, '-out', cert, '-subj', `/CN=${name}`, '-days', '30']);
  const fp = await openssl(['x509', '-in', cert, '-noout', '-fingerprint', '-sha256']);
  return { cert, key, thumbprint: fp.split('=')[1]!.trim().replace(/:/g, '') };
}

/** A CA, and an identity certificate (CN = device id) it signed for client authentication. */
async function caSigned(name: string): Promise<{ cert: string; key: string; caCert: string }> {
  const caCert = join(certDir, `${name}-ca.cert.pem`);
  const caKey = join(certDir, `${name}-ca.key.pem`);
  await openssl([
    'req',
    '-x509',
    ...EC,
    '-keyout',
    caKey,
    '-out',
    caCert,
    '-subj',
    `/CN=${name} test CA`,
    '-days',
    '30',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const cert = join(certDir, `${name}.cert.pem`);
  const key = join(certDir, `${name}.key.pem`);
  const csr = join(certDir, `${name}.csr`);
  const ext = join(certDir, `${name}.ext`);
  await writeFile(ext, 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n');
  await openssl(['req', '-new', ...EC, '-keyout', key, '-out', csr, '-subj', `/CN=${name}`]);
  await openssl([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    caCert,
    '-CAkey',
    caKey,
    '-CAcreateserial',
    '-out',
    cert,
    '-days',
    '30',
    '-extfile',
    ext,
  ]);
  return { cert, key, caCert };
}

/** Rewrites the gateway's config.toml to provision it with the certificate instead of its connection string. */
async function provisionWithCertificate(edge: EdgeSetup, files: { cert: string; key: string }): Promise<void> {
  const text = await readFile(edge.configPath, 'utf8');
  const replaced = text.replace(
    /^connection_string = .*$/m,
    [
      `iothub_hostname = "${hub.hostname}"`,
      `device_id = "${edge.gatewayId}"`,
      '',
      '[provisioning.authentication]',
      'method = "x509"',
      `identity_cert = "${pathToFileURL(files.cert).href}"`,
      `identity_pk = "${pathToFileURL(files.key).href}"`,
    ].join('\n'),
  );
  assert.notEqual(replaced, text);
  await writeFile(edge.configPath, replaced);
}

async function setAuthentication(edge: EdgeSetup, authentication: Record<string, unknown>): Promise<void> {
  const device = await edge.svc.getDevice(edge.gatewayId);
  await edge.svc.updateDevice({ ...device, authentication: authentication as never });
}

/** Registers the gateway at the hub as self-signed with a new certificate and provisions its config.toml with it. */
async function provisionSelfSigned(edge: EdgeSetup): Promise<void> {
  const id = await selfSigned(edge.gatewayId);
  await setAuthentication(edge, { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: id.thumbprint } });
  await provisionWithCertificate(edge, id);
}

const startGateway = (edge: EdgeSetup, env?: Record<string, string>) =>
  startGatewayProcess({
    configPath: edge.configPath,
    dataDir: edge.dataDir,
    address: edge.address,
    ...(env ? { env } : {}),
  });

async function sendFromLeaf(edge: EdgeSetup, leaf: { connectionString: string }, bodies: string[]): Promise<void> {
  const client = Client.fromConnectionString(leaf.connectionString, Mqtt);
  await client.setOptions({ ca: edge.rootPem });
  await client.open();
  try {
    for (const b of bodies) await client.sendEvent(new Message(b));
  } finally {
    await client.close().catch(() => undefined);
  }
}

const bodiesAt = async (edge: EdgeSetup, deviceId: string, n: number) =>
  (await waitForEvents(edge.svc, { device: deviceId }, n)).map((e) => Buffer.from(e.body, 'base64').toString());

describe('gateways provisioned with X.509 certificates', { timeout: 120_000 }, () => {
  test('self-signed: the gateway reads its $edgeHub key with its certificate and relays a leaf; with the hub down it restarts on the kept key', async (t) => {
    const edge = await setupLayer(hub, { gatewayId: 'x509-self-gw', address: addr(1) });
    t.after(() => edge.cleanup());
    await provisionSelfSigned(edge);
    let gw = await startGateway(edge);
    t.after(() => gw.stop());

    const leaf = await edge.createLeaf('x509-self-leaf');
    await sendFromLeaf(edge, leaf, ['via a certificate-provisioned gateway']);
    const [ev] = await waitForEvents(edge.svc, { device: leaf.deviceId }, 1);
    assert.equal(ev.annotations['iothub-connection-device-id'], leaf.deviceId);
    assert.equal(Buffer.from(ev.body, 'base64').toString(), 'via a certificate-provisioned gateway');

    // The key it signs with is the module's own, kept where only the gateway's user reads it.
    const keyFile = join(edge.dataDir, 'edgehub-key.json');
    assert.equal(statSync(keyFile).mode & 0o777, 0o600);
    const module = await edge.svc.getModule(edge.gatewayId, '$edgeHub');
    assert.equal(
      JSON.parse(readFileSync(keyFile, 'utf8')).primaryKey,
      (module.authentication as any).symmetricKey.primaryKey,
    );

    // Hub down: the gateway restarts on the kept key and takes the leaf's messages.
    await gw.stop();
    await hub.stop();
    gw = await startGateway(edge);
    assert.match(gw.output(), /using the key kept from an earlier start/);
    await sendFromLeaf(edge, leaf, ['offline 1', 'offline 2']);
    hub = await startHubProcess({ address: addr(0), dataDir: hubDir });
    assert.deepEqual(await bodiesAt(edge, leaf.deviceId, 3), [
      'via a certificate-provisioned gateway',
      'offline 1',
      'offline 2',
    ]);
  });

  test('the $edgeHub keys regenerated at the hub: refused with the old key, the gateway reads the new one and goes on', async (t) => {
    const edge = await setupLayer(hub, { gatewayId: 'x509-rekey-gw', address: addr(8) });
    t.after(() => edge.cleanup());
    await provisionSelfSigned(edge);
    const gw = await startGateway(edge);
    t.after(() => gw.stop());
    const leaf = await edge.createLeaf('x509-rekey-leaf');
    await sendFromLeaf(edge, leaf, ['before the new keys']);
    assert.deepEqual(await bodiesAt(edge, leaf.deviceId, 1), ['before the new keys']);

    const module = await edge.svc.getModule(edge.gatewayId, '$edgeHub');
    const fresh = newKey();
    await edge.svc.request('PUT', `/devices/${edge.gatewayId}/modules/$edgeHub`, {
      body: { ...module, authentication: { type: 'sas', symmetricKey: { primaryKey: fresh, secondaryKey: newKey() } } },
      headers: { 'If-Match': '*' },
    });
    // A live connection keeps its credential until it renews; a restart of the hub makes the gateway sign in again.
    await hub.stop();
    hub = await startHubProcess({ address: addr(0), dataDir: hubDir });
    await sendFromLeaf(edge, leaf, ['after the new keys']);
    assert.deepEqual(await bodiesAt(edge, leaf.deviceId, 2), ['before the new keys', 'after the new keys']);
    assert.equal(JSON.parse(readFileSync(join(edge.dataDir, 'edgehub-key.json'), 'utf8')).primaryKey, fresh);
    assert.match(gw.output(), /the \$edgeHub key of x509-rekey-gw changed at the parent; signing with the new one/);
  });

  test('CA-signed: a certificate under a CA added with `strata hub ca add` (CN = device id)', async (t) => {
    const edge = await setupLayer(hub, { gatewayId: 'x509-ca-gw', address: addr(2) });
    t.after(() => edge.cleanup());
    const id = await caSigned('x509-ca-gw');
    const added = await exec(process.execPath, [STRATA_BIN, 'hub', 'ca', 'add', id.caCert, '--data', hubDir]);
    assert.equal(added.code, 0, added.stderr);
    await setAuthentication(edge, { type: 'certificateAuthority' });
    await provisionWithCertificate(edge, id);
    const gw = await startGateway(edge);
    t.after(() => gw.stop());
    const leaf = await edge.createLeaf('x509-ca-leaf');
    await sendFromLeaf(edge, leaf, ['via a CA-signed gateway']);
    assert.deepEqual(await bodiesAt(edge, leaf.deviceId, 1), ['via a CA-signed gateway']);
  });

  test('a certificate the hub does not know: the start is refused with the reason and what to do', async (t) => {
    const edge = await setupLayer(hub, { gatewayId: 'x509-unknown-gw', address: addr(3) });
    t.after(() => edge.cleanup());
    const registered = await selfSigned('x509-unknown-registered');
    const presented = await selfSigned('x509-unknown-gw');
    await setAuthentication(edge, { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: registered.thumbprint } });
    await provisionWithCertificate(edge, presented);
    await assert.rejects(startGateway(edge), (err: Error) => {
      assert.match(err.message, /refused the identity certificate of edge device x509-unknown-gw/);
      assert.match(err.message, /thumbprint/);
      assert.match(err.message, /Register the certificate at the hub/);
      return true;
    });
  });

  test('nested: a certificate-provisioned child gateway reads its key from its parent gateway (and speaks MQTT to it)', async (t) => {
    const parent = await setupLayer(hub, { gatewayId: 'x509-parent-gw', address: addr(4) });
    t.after(() => parent.cleanup());
    const child = await setupLayer(hub, { gatewayId: 'x509-child-gw', address: addr(5), parent });
    t.after(() => child.cleanup());
    await provisionSelfSigned(child);
    const pgw = await startGateway(parent);
    t.after(() => pgw.stop());
    const cgw = await startGateway(child, { UpstreamProtocol: 'Mqtt' });
    t.after(() => cgw.stop());
    const leaf = await child.createLeaf('x509-nested-leaf');
    await sendFromLeaf(child, leaf, ['two layers, the lower one on a certificate']);
    assert.deepEqual(await bodiesAt(child, leaf.deviceId, 1), ['two layers, the lower one on a certificate']);
  });

  test('the device-scope module read: an edge device reads its own modules with its own key, nothing else', async (t) => {
    const edge = await setupLayer(hub, { gatewayId: 'x509-scope-gw', address: addr(6) });
    t.after(() => edge.cleanup());
    const leaf = await edge.createLeaf('x509-scope-leaf');
    const get = (path: string, deviceId: string, key: string) =>
      new Promise<{ status: number; body: any }>((resolve, reject) => {
        const token = createSasToken(`${hub.hostname}/devices/${deviceId}`, key, Math.floor(Date.now() / 1000) + 600);
        https
          .get(
            {
              host: hub.address,
              port: hub.httpsPort,
              path: `${path}?api-version=2021-04-12`,
              ca: hub.caPem,
              headers: { Authorization: token },
            },
            (res) => {
              let text = '';
              res.on('data', (c: Buffer) => (text += c.toString()));
              res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
            },
          )
          .on('error', reject);
      });
    const own = await get(`/devices/${edge.gatewayId}/modules/$edgeHub`, edge.gatewayId, edge.gatewayKey);
    assert.equal(own.status, 200);
    const module = await edge.svc.getModule(edge.gatewayId, '$edgeHub');
    assert.equal(
      own.body.authentication.symmetricKey.primaryKey,
      (module.authentication as any).symmetricKey.primaryKey,
    );
    // Another device's modules: its credential does not prove this one.
    const other = await get(`/devices/${edge.gatewayId}/modules/$edgeHub`, leaf.deviceId, leaf.key);
    assert.equal(other.status, 401);
    assert.match(other.body.Message, /IotHubUnauthorizedAccess/);
    // A leaf device (no edge runtime) has no modules to read this way.
    const notEdge = await get(`/devices/${leaf.deviceId}/modules/$edgeHub`, leaf.deviceId, leaf.key);
    assert.equal(notEdge.status, 403);
    assert.match(notEdge.body.Message, /not an IoT Edge device/);
    const missing = await get(`/devices/${edge.gatewayId}/modules/nosuch`, edge.gatewayId, edge.gatewayKey);
    assert.equal(missing.status, 404);
  });

  test("a CA-signed leaf under a gateway is checked against the gateway's trust bundle", async (t) => {
    const edge = await setupLayer(hub, { gatewayId: 'x509-bundle-gw', address: addr(7) });
    t.after(() => edge.cleanup());
    const trusted = await caSigned('x509-bundle-leaf');
    const stranger = await caSigned('x509-stranger-leaf');
    // The bundle: the hierarchy's root, and the CA of the devices below.
    const bundle = join(certDir, 'x509-bundle.pem');
    await writeFile(bundle, `${hub.caPem.trim()}\n${(await readFile(trusted.caCert, 'utf8')).trim()}\n`);
    const text = await readFile(edge.configPath, 'utf8');
    await writeFile(
      edge.configPath,
      text.replace(/^trust_bundle_cert = .*$/m, `trust_bundle_cert = "${pathToFileURL(bundle).href}"`),
    );
    for (const deviceId of ['x509-bundle-leaf', 'x509-stranger-leaf']) {
      await edge.svc.createDevice({
        deviceId,
        authentication: { type: 'certificateAuthority' },
        deviceScope: edge.gateway.deviceScope,
        parentScopes: [edge.gateway.deviceScope!],
      } as never);
    }
    const gw = await startGateway(edge);
    t.after(() => gw.stop());

    const open = async (deviceId: string, files: { cert: string; key: string }) => {
      // The Node SDK's X.509 provider has no GatewayHostName: such a device names the gateway as its host.
      const client = Client.fromConnectionString(`HostName=${edge.address};DeviceId=${deviceId};x509=true`, Mqtt);
      t.after(() => client.close().catch(() => undefined));
      await client.setOptions({
        cert: await readFile(files.cert, 'utf8'),
        key: await readFile(files.key, 'utf8'),
        ca: edge.rootPem,
      });
      await client.open();
      return client;
    };
    const client = await open('x509-bundle-leaf', trusted);
    await client.sendEvent(new Message('signed by a CA in the bundle'));
    assert.deepEqual(await bodiesAt(edge, 'x509-bundle-leaf', 1), ['signed by a CA in the bundle']);
    await assert.rejects(open('x509-stranger-leaf', stranger), (err: Error) => err.name === 'UnauthorizedError');
  });
});
