/**
 * Authentication over MQTT with the official client: SAS token renewal on a persistent session,
 * X.509 self-signed (SHA-1 and SHA-256 thumbprints) and CA-signed devices (CA registered with
 * `strata hub ca add`), disabled identities, and the hub closing a connection whose token expired.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import {
  createDeviceCert,
  createIntermediateCa,
  createRootCa,
  fullChainPem,
  thumbprints,
  type IssuedCert,
} from '../../src/pki/index.ts';
import {
  createSasDevice,
  deviceToken,
  eventsOf,
  openClient,
  rawConnect,
  sdk,
  startTestHub,
  waitFor,
  within,
  type TestHub,
} from './mqtt-helpers.ts';

const { Client } = sdk.device;
const { Message } = sdk.common;
const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const run = promisify(execFile);

let hub: TestHub;
const cleanups: Array<() => unknown> = [];
before(async () => {
  hub = await startTestHub({ after: (fn) => cleanups.push(fn) });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

// The SDK retries on its own for minutes; a run that goes wrong should fail here, not hang.
test('SAS token renewal: the client reconnects with new tokens and keeps its subscriptions (persistent session)', {
  timeout: 90_000,
}, async (t) => {
  const id = 'renewing';
  const { connectionString } = createSasDevice(hub, id);
  const client = Client.fromConnectionString(connectionString, sdk.mqtt.Mqtt);
  const c2d: string[] = [];
  // Tokens valid 4 s, renewed 2 s before they expire: a reconnect every 2 s.
  await openClient(
    t,
    client,
    hub.caPem,
    { tokenRenewal: { tokenValidTimeInSeconds: 4, tokenRenewalMarginInSeconds: 2 } },
    (c) => {
      c.on('message', (m: any) => {
        c2d.push(m.data.toString());
        c.complete(m).catch(() => undefined);
      });
      c.onDeviceMethod('ping', (_req: any, res: any) => res.send(200, 'pong', () => undefined));
    },
  );
  await waitFor(() => hub.engine.sessionOf({ deviceId: id })?.subscriptions.has('methods'), 'the subscriptions');
  const first = hub.engine.sessionOf({ deviceId: id })!;
  await client.sendEvent(new Message('before renewal'));

  // Wait for two renewals: each is a new connection that resumes the session.
  const second = await waitFor(
    () => {
      const s = hub.engine.sessionOf({ deviceId: id });
      return s && s.id >= first.id + 2 ? s : undefined;
    },
    'two token renewals',
    12_000,
  );
  assert.equal(second.resumed, true, 'the reconnect resumed the persistent session');
  assert.equal(second.subscriptions.has('c2d'), true);

  await client.sendEvent(new Message('after renewal'));
  await hub.engine.sendC2D(id, { body: Buffer.from('still subscribed'), properties: {} });
  await waitFor(() => c2d.includes('still subscribed'), 'C2D after renewal without resubscribing');
  const r = await hub.engine.invokeMethod(
    { deviceId: id },
    { methodName: 'ping', responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 5 },
  );
  assert.deepEqual(r, { status: 200, payload: 'pong' });
  const events = await eventsOf(hub, id, 2);
  assert.deepEqual(
    events.map((e) => e.message.body.toString()),
    ['before renewal', 'after renewal'],
  );
});

test('a connection is closed when its SAS token expires; the expired token is then refused', async (t) => {
  const id = 'short-token';
  const { key } = createSasDevice(hub, id);
  const token = deviceToken(hub, id, key, 2);
  const c = await rawConnect(t, hub, { clientId: id, password: token });
  assert.equal(c.connack.returnCode, 0);
  assert.equal(await within(c.closed, 4000), true, 'the hub closed the connection at token expiry');
  assert.equal(hub.engine.isConnected({ deviceId: id }), false);
  const again = await rawConnect(t, hub, { clientId: id, password: token });
  assert.equal(again.connack.returnCode, 5, 'CONNACK: not authorized');
  await again.closed;
});

test('a disabled device is refused, and disabling a connected device closes its connection', async (t) => {
  const id = 'to-disable';
  const { connectionString, key } = createSasDevice(hub, id);
  const c = await rawConnect(t, hub, { clientId: id, password: deviceToken(hub, id, key) });
  assert.equal(c.connack.returnCode, 0);
  const dev = hub.node.registry.getDevice(id)!;
  hub.node.registry.putDevice(id, { ...dev, status: 'disabled' }, '*');
  assert.equal(await within(c.closed, 3000), true, 'the connection of the disabled device was closed');
  const client = Client.fromConnectionString(connectionString, sdk.mqtt.Mqtt);
  await client.setOptions({ ca: hub.caPem });
  await assert.rejects(client.open(), (err: Error) => err.name === 'UnauthorizedError');
});

describe('X.509', () => {
  let self1: IssuedCert;
  let self2: IssuedCert;
  before(async () => {
    [self1, self2] = await Promise.all([
      createDeviceCert({ commonName: 'x509-self-1', keyAlgorithm: 'ec' }),
      createDeviceCert({ commonName: 'x509-self-2', keyAlgorithm: 'ec' }),
    ]);
    hub.node.registry.createDevice({
      deviceId: 'x509-self-1',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: thumbprints(self1.certPem).sha1 } },
    });
    // SHA-256, lower case, as the secondary thumbprint.
    hub.node.registry.createDevice({
      deviceId: 'x509-self-2',
      authentication: {
        type: 'selfSigned',
        x509Thumbprint: {
          primaryThumbprint: 'AA'.repeat(20),
          secondaryThumbprint: thumbprints(self2.certPem).sha256.toLowerCase(),
        },
      },
    });
  });

  for (const { name, Transport } of [
    { name: 'Mqtt', Transport: sdk.mqtt.Mqtt },
    { name: 'MqttWs', Transport: sdk.mqtt.MqttWs },
  ]) {
    test(`self-signed devices by SHA-1 and SHA-256 thumbprint over ${name}`, async (t) => {
      for (const [id, cert] of [
        ['x509-self-1', self1],
        ['x509-self-2', self2],
      ] as const) {
        const client = Client.fromConnectionString(`HostName=${hub.address};DeviceId=${id};x509=true`, Transport);
        await openClient(t, client, hub.caPem, { cert: cert.certPem, key: cert.keyPem });
        await client.sendEvent(new Message(`hello from ${id} over ${name}`));
        const events = await eventsOf(hub, id, 1);
        const e = events.find((x) => x.message.body.toString() === `hello from ${id} over ${name}`);
        assert.ok(e, 'the event is stored');
        assert.equal(JSON.parse(e.authMethod).type, 'x509Certificate');
        await client.close();
      }
    });
  }

  test('a self-signed certificate whose thumbprint is not registered is refused', async (t) => {
    const other = await createDeviceCert({ commonName: 'x509-self-1', keyAlgorithm: 'ec' });
    const client = Client.fromConnectionString(`HostName=${hub.address};DeviceId=x509-self-1;x509=true`, sdk.mqtt.Mqtt);
    t.after(() => client.close().catch(() => undefined));
    await client.setOptions({ ca: hub.caPem, cert: other.certPem, key: other.keyPem });
    await assert.rejects(client.open(), (err: Error) => err.name === 'UnauthorizedError');
  });

  test('CA-signed devices: refused until the CA is added with `strata hub ca add`, then accepted (leaf + intermediate chain)', async (t) => {
    const root = await createRootCa({ commonName: 'Test device root', keyAlgorithm: 'ec' });
    const inter = await createIntermediateCa({
      commonName: 'Test device intermediate',
      issuer: root,
      keyAlgorithm: 'ec',
    });
    const direct = await createDeviceCert({ commonName: 'x509-ca-1', issuer: root, keyAlgorithm: 'ec' });
    const chained = await createDeviceCert({ commonName: 'x509-ca-2', issuer: inter, keyAlgorithm: 'ec' });
    const wrongCn = await createDeviceCert({ commonName: 'someone-else', issuer: root, keyAlgorithm: 'ec' });
    for (const id of ['x509-ca-1', 'x509-ca-2'])
      hub.node.registry.createDevice({ deviceId: id, authentication: { type: 'certificateAuthority' } });

    const tryOpen = async (id: string, certPem: string, keyPem: string, Transport = sdk.mqtt.Mqtt) => {
      const client = Client.fromConnectionString(`HostName=${hub.address};DeviceId=${id};x509=true`, Transport);
      t.after(() => client.close().catch(() => undefined));
      await client.setOptions({ ca: hub.caPem, cert: certPem, key: keyPem });
      await client.open();
      return client;
    };
    await assert.rejects(
      tryOpen('x509-ca-1', direct.certPem, direct.keyPem),
      (err: Error) => err.name === 'UnauthorizedError',
    );

    const rootFile = join(hub.node.dataDir, 'device-root.pem');
    await writeFile(rootFile, root.certPem);
    const added = await run(process.execPath, [
      STRATA,
      'hub',
      'ca',
      'add',
      rootFile,
      '--name',
      'device-root',
      '--data',
      hub.node.dataDir,
    ]);
    assert.match(added.stdout, /added CA "device-root"/);
    const listed = await run(process.execPath, [STRATA, 'hub', 'ca', 'list', '--json', '--data', hub.node.dataDir]);
    assert.deepEqual(
      JSON.parse(listed.stdout).map((c: { name: string }) => c.name),
      ['device-root'],
    );
    const dup = await run(process.execPath, [STRATA, 'hub', 'ca', 'add', rootFile, '--data', hub.node.dataDir]).catch(
      (e) => e,
    );
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /already registered as "device-root"/);
    const leaf = await run(process.execPath, [
      STRATA,
      'hub',
      'ca',
      'add',
      rootFile.replace('device-root.pem', 'leaf.pem'),
      '--data',
      hub.node.dataDir,
    ]).catch((e) => e);
    assert.equal(leaf.code, 1);

    // The running hub sees the CLI's change without a restart.
    const c1 = await tryOpen('x509-ca-1', direct.certPem, direct.keyPem);
    await c1.sendEvent(new Message('ca-signed'));
    const c2 = await tryOpen(
      'x509-ca-2',
      fullChainPem(chained.certPem, inter.certPem),
      chained.keyPem,
      sdk.mqtt.MqttWs,
    );
    await c2.sendEvent(new Message('ca-signed via intermediate'));
    assert.equal((await eventsOf(hub, 'x509-ca-1'))[0].message.body.toString(), 'ca-signed');
    assert.equal((await eventsOf(hub, 'x509-ca-2'))[0].message.body.toString(), 'ca-signed via intermediate');
    // Without the intermediate the chain is incomplete.
    await c2.close();
    await assert.rejects(
      tryOpen('x509-ca-2', chained.certPem, chained.keyPem),
      (err: Error) => err.name === 'UnauthorizedError',
    );
    // CN must be the device id.
    await assert.rejects(
      tryOpen('x509-ca-1', wrongCn.certPem, wrongCn.keyPem),
      (err: Error) => err.name === 'UnauthorizedError',
    );

    const removed = await run(process.execPath, [
      STRATA,
      'hub',
      'ca',
      'remove',
      'device-root',
      '--data',
      hub.node.dataDir,
    ]);
    assert.match(removed.stdout, /removed CA "device-root"/);
    await c1.close();
    await assert.rejects(
      tryOpen('x509-ca-1', direct.certPem, direct.keyPem),
      (err: Error) => err.name === 'UnauthorizedError',
    );
  });
});
