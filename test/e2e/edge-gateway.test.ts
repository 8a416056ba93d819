/**
 * A hub and a gateway (`strata edge start`, a child process on its own loopback address with
 * the standard ports) and official device SDK leaves that name the gateway in GatewayHostName
 * and trust the root CA: telemetry, twin, direct methods and C2D through the gateway over
 * Mqtt, MqttWs, Amqp and AmqpWs; scope (a stranger refused, a new child in at once);
 * MaxConnectedClients (default 100, from the environment, lowered live by `edge config apply`
 * together with a new Edge CA swapped in without dropping connections); the served chain, as
 * the seeds check it with openssl s_client; /health and /metrics.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import https from 'node:https';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import tls from 'node:tls';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { createEdgeCa, fullChainPem } from '../../src/pki/index.ts';
import { hubPkiPaths } from '../../src/hub/tls.ts';
import { waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import {
  createLeavesBulk,
  deploymentManifest,
  metricValue,
  setupEdge,
  startGatewayProcess,
  type EdgeSetup,
  type GatewayProcess,
  startHubWithGateway,
} from '../helpers/edge.ts';
import { randomLoopback, type HubProcess } from '../helpers/hub.ts';
import { connectMqttLeaf, type MqttLeaf } from '../helpers/mqtt-leaf.ts';
import { exec, opensslConnect } from '../helpers/tls.ts';
import { desiredPush, eventually, listenDesired, openSdkLeaf, updateReported } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Client, Message } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { NoRetry } = require('azure-iot-common');
const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

const transports = [
  { name: 'Mqtt', Transport: Mqtt },
  { name: 'MqttWs', Transport: MqttWs },
  { name: 'Amqp', Transport: Amqp },
  { name: 'AmqpWs', Transport: AmqpWs },
] as const;

let hub: HubProcess;
let edge: EdgeSetup;
let gw: GatewayProcess;
const cleanups: Array<() => unknown> = [];

before(async () => {
  ({ hub, edge, gw } = await startHubWithGateway('gw-e2e', cleanups));
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

const openLeaf = (
  t: { after(fn: () => unknown): void },
  connectionString: string,
  Transport: unknown,
  setup?: (c: any) => void,
) => openSdkLeaf(t, connectionString, Transport, edge.rootPem, setup);

describe('official SDK leaves through the gateway', () => {
  for (const { name, Transport } of transports) {
    test(`${name}: telemetry reaches the hub as the leaf's own; twin, direct method and C2D from the hub reach the leaf`, async (t) => {
      const leaf = await edge.createLeaf(`leaf-${name.toLowerCase()}`);
      const id = leaf.deviceId;
      await edge.svc.updateTwin(id, { properties: { desired: { interval: 5 } } });
      const c2d: any[] = [];
      const client = await openLeaf(t, leaf.connectionString, Transport, (c) =>
        c.on('message', (m: any) => {
          c2d.push(m);
          c.complete(m, () => undefined);
        }),
      );

      // Telemetry, with its properties, arrives under the leaf's own identity.
      const msg = new Message(JSON.stringify({ temperature: 21 }));
      msg.messageId = `tel-${name}`;
      msg.correlationId = 'corr-1';
      msg.contentType = 'application/json';
      msg.contentEncoding = 'utf-8';
      msg.properties.add('alert', 'high');
      await client.sendEvent(msg);
      const [ev] = await waitForEvents(edge.svc, { device: id }, 1);
      assert.equal(ev.annotations['iothub-connection-device-id'], id);
      assert.equal(ev.deviceId, id);
      assert.equal(Buffer.from(ev.body, 'base64').toString(), '{"temperature":21}');
      assert.equal(ev.systemProperties['message-id'], `tel-${name}`);
      assert.equal(ev.systemProperties['correlation-id'], 'corr-1');
      assert.equal(ev.systemProperties['content-type'], 'application/json');
      assert.equal(ev.properties.alert, 'high');

      // Twin: get, reported patch stored at the hub, desired push from the hub.
      const twin = await client.getTwin();
      assert.equal(twin.properties.desired.interval, 5);
      await updateReported(twin, { firmware: `fw-${name}` });
      const hubTwin = await edge.svc.getTwin(id);
      assert.equal(hubTwin.properties?.reported?.firmware, `fw-${name}`);
      // One patch, sent as soon as the subscription is acknowledged, must arrive.
      const pushed = await listenDesired(twin);
      const dv = twin.properties.desired.$version as number;
      await edge.svc.updateTwin(id, { properties: { desired: { mode: 'm1' } } });
      assert.equal((await desiredPush(pushed, dv + 1)).mode, 'm1');

      // Direct method from the hub, answered by the leaf.
      client.onDeviceMethod('echo', (req: any, res: any) =>
        res.send(200, { got: req.payload, via: name }, () => undefined),
      );
      const r = await edge.svc.request<{ status: number; payload: unknown }>('POST', `/twins/${id}/methods`, {
        body: { methodName: 'echo', payload: { x: 1 }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 },
      });
      assert.deepEqual(r.body, { status: 200, payload: { got: { x: 1 }, via: name } });

      // C2D from the hub, completed by the leaf: the hub's queue empties and feedback says Success.
      await edge.svc.request('POST', `/devices/${id}/messages/deviceBound`, {
        body: { body: 'to the leaf', messageId: `c2d-${name}`, properties: { colour: 'blue' }, ack: 'full' },
      });
      await eventually('the C2D message at the leaf', () => c2d.length >= 1);
      assert.equal(c2d[0].data.toString(), 'to the leaf');
      assert.equal(c2d[0].messageId, `c2d-${name}`);
      assert.equal(c2d[0].properties.getValue('colour'), 'blue');
      await eventually(
        'the hub to see the C2D message completed',
        async () => (await edge.svc.getDevice(id)).cloudToDeviceMessageCount === 0,
      );
    });
  }

  test('the gateway presents its full chain on 8883 (openssl s_client): CN = hostname, issued by its Edge CA, verified to the root', async () => {
    const r = await opensslConnect({ address: edge.address, port: 8883, caFile: edge.rootPath, host: edge.address });
    assert.match(r.stdout, /Verify return code: 0 \(ok\)/, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`0 s:\\s?CN\\s?=\\s?${edge.address.replace(/\./g, '\\.')}`));
    assert.match(r.stdout, /1 s:\s?CN\s?=\s?gw-e2e\.ca/);
    const leaf = await exec('openssl', ['x509', '-noout', '-ext', 'subjectAltName,extendedKeyUsage'], {
      input: r.stdout,
    });
    assert.match(leaf.stdout, new RegExp(`IP Address:${edge.address.replace(/\./g, '\\.')}`));
    assert.match(leaf.stdout, /DNS:edgehub/);
    assert.match(leaf.stdout, /TLS Web Server Authentication/);
  });

  test('a device that is not a child of this gateway is refused: "not in this gateway\'s scope"', async () => {
    const stranger = await edge.createLeaf('stranger', { parent: false });
    for (const Transport of [Mqtt, Amqp]) {
      const client = Client.fromConnectionString(stranger.connectionString, Transport);
      client.setRetryPolicy(new NoRetry());
      await client.setOptions({ ca: edge.rootPem });
      await assert.rejects(async () => {
        await client.open();
        await client.sendEvent(new Message('let me in'));
      });
      await client.close().catch(() => undefined);
    }
    const raw = await connectMqttLeaf({
      address: edge.address,
      ca: edge.rootPem,
      hubHostName: hub.hostname,
      deviceId: 'stranger',
      key: stranger.key,
    }).then(
      () => assert.fail('the stranger connected'),
      (err: Error & { code?: number }) => err,
    );
    assert.equal(raw.code, 5, `CONNACK 5 (not authorized), got ${raw.message}`);
    await eventually('the refusal in the gateway log', () =>
      /device stranger is not in this gateway's scope/.test(gw.output()),
    );
  });

  test('a child created at the hub connects through the gateway within 2 seconds', async (t) => {
    const t0 = Date.now();
    const leaf = await edge.createLeaf('newborn');
    await openLeaf(t, leaf.connectionString, Mqtt);
    const ms = Date.now() - t0;
    assert.ok(ms < 2000, `connected ${ms} ms after it was created`);
  });

  test('a child disabled at the hub loses its connection to the gateway within 2 seconds and cannot come back', async (t) => {
    const leaf = await edge.createLeaf('to-disable');
    const conn = await connectMqttLeaf({
      address: edge.address,
      ca: edge.rootPem,
      hubHostName: hub.hostname,
      deviceId: leaf.deviceId,
      key: leaf.key,
    });
    t.after(() => conn.end());
    const closed = new Promise<number>((resolve) => conn.client.once('close', () => resolve(Date.now())));
    const device = await edge.svc.getDevice(leaf.deviceId);
    const t0 = Date.now();
    await edge.svc.updateDevice({ ...device, status: 'disabled' });
    const at = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 5000))]);
    assert.ok(at > 0 && at - t0 < 2000, `dropped ${at - t0} ms after the hub disabled it`);
    const again = await connectMqttLeaf({
      address: edge.address,
      ca: edge.rootPem,
      hubHostName: hub.hostname,
      deviceId: leaf.deviceId,
      key: leaf.key,
    }).then(
      (l) => l.end().then(() => assert.fail('a disabled child connected')),
      (err: Error & { code?: number }) => err,
    );
    assert.equal(again.code, 5);
  });

  test('MaxConnectedClients defaults to 100: 100 leaves connect, the 101st is refused', async (t) => {
    const m = await gw.metrics();
    assert.equal(metricValue(m, 'edgehub_max_connected_clients'), 100);
    await eventually(
      'earlier leaves to be gone',
      async () => metricValue(await gw.metrics(), 'edgehub_connected_clients') === 0,
    );
    const { ids, key } = await createLeavesBulk(edge, 'crowd-', 101);
    const leaves: MqttLeaf[] = [];
    t.after(() => Promise.all(leaves.map((l) => l.end())));
    for (let i = 0; i < 100; i += 25) {
      const batch = await Promise.all(
        ids
          .slice(i, i + 25)
          .map((deviceId) =>
            connectMqttLeaf({ address: edge.address, ca: edge.rootPem, hubHostName: hub.hostname, deviceId, key }),
          ),
      );
      leaves.push(...batch);
    }
    assert.equal(metricValue(await gw.metrics(), 'edgehub_connected_clients'), 100);
    const refused = await connectMqttLeaf({
      address: edge.address,
      ca: edge.rootPem,
      hubHostName: hub.hostname,
      deviceId: ids[100]!,
      key,
    }).then(
      (l) => {
        leaves.push(l);
        return assert.fail('the 101st client connected');
      },
      (err: Error & { code?: number }) => err,
    );
    assert.equal(refused.code, 3, `CONNACK 3 (server unavailable), got ${refused.message}`);
    await eventually('the refusal in the gateway log', () =>
      /gateway has reached MaxConnectedClients=100/.test(gw.output()),
    );
  });

  test("`strata hub set-modules` applies the seeds' deployment format; a bad route is refused by the CLI and by the service API, and the previous routes stay in force", async (t) => {
    const health = async () =>
      new Promise<any>((resolve, reject) => {
        https
          .get({ host: edge.address, port: 443, path: '/health', ca: edge.rootPem }, (res) => {
            let text = '';
            res.on('data', (c: Buffer) => (text += c.toString()));
            res.on('end', () => resolve(JSON.parse(text)));
          })
          .on('error', reject);
      });
    const manifest = (routes: Record<string, unknown>) => JSON.stringify(deploymentManifest({ routes }), null, 2);
    const file = join(edge.dir, 'deployment.json');
    const cli = (args: string[]) =>
      exec(process.execPath, [
        STRATA_BIN,
        'hub',
        'set-modules',
        '--device',
        'gw-e2e',
        '--content',
        file,
        '--hub-connection-string',
        hub.connectionString,
        '--ca',
        hub.caPath,
        ...args,
      ]);

    await writeFile(
      file,
      manifest({ upstream: 'FROM /messages/* INTO $upstream', broken: 'FROM /messages/* WHER x = 1 INTO $upstream' }),
    );
    const refused = await cli([]);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      /the \$edgeHub routes of .*deployment\.json do not compile: route "broken": position \d+: expected/,
    );

    await writeFile(
      file,
      manifest({
        upstream: 'FROM /messages/* INTO $upstream',
        sensors: 'FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream',
      }),
    );
    const applied = await cli([]);
    assert.equal(applied.code, 0, applied.stderr);
    assert.match(
      applied.stdout,
      /deployment applied to gw-e2e: modules \$edgeAgent, \$edgeHub; routes upstream, sensors/,
    );
    await eventually('the gateway to take the new routes', async () => (await health()).routes === 2);

    // The service API refuses it too (edge-deployment.test.ts has the details); the routes in force stay.
    await assert.rejects(
      edge.svc.applyConfigurationContent(
        'gw-e2e',
        deploymentManifest({ routes: { upstream: 'FROM /messages/* INTO $nowhere' } }),
      ),
      { status: 400, code: 'InvalidConfigurationContent' },
    );
    assert.equal((await health()).routes, 2);
    const leaf = await edge.createLeaf('after-bad-routes');
    const client = await openLeaf(t, leaf.connectionString, Amqp);
    await client.sendEvent(new Message('still routed'));
    await waitForEvents(edge.svc, { device: leaf.deviceId }, 1);
  });

  test('GET /health on HTTPS and Prometheus /metrics', async () => {
    const health = await new Promise<{ status: number; body: any }>((resolve, reject) => {
      https
        .get({ host: edge.address, port: 443, path: '/health', ca: edge.rootPem, servername: undefined }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
        })
        .on('error', reject);
    });
    assert.equal(health.status, 200);
    assert.equal(health.body.status, 'ok');
    assert.equal(
      health.body.deviceId,
      undefined,
      'identities only for the holder of the health token (edge-exposure.test.ts)',
    );
    assert.equal(health.body.upstream.connected, true);
    const m = await gw.metrics();
    assert.ok((metricValue(m, 'edgehub_messages_received_total') ?? 0) >= 4, 'messages in');
    assert.ok((metricValue(m, 'edgehub_messages_sent_total', { endpoint: '$upstream' }) ?? 0) >= 4, 'messages out');
    assert.equal(metricValue(m, 'edgehub_queue_length', { endpoint: '$upstream' }), 0);
    assert.equal(metricValue(m, 'edgehub_upstream_connected'), 1);
  });
});

describe('MaxConnectedClients=3 from the environment, lowered live with `strata edge config apply`', () => {
  let lim: EdgeSetup;
  let gw2: GatewayProcess;
  before(async () => {
    const address = randomLoopback();
    lim = await setupEdge(hub, { gatewayId: 'gw-limit', address });
    cleanups.push(() => lim.cleanup());
    gw2 = await startGatewayProcess({
      configPath: lim.configPath,
      dataDir: lim.dataDir,
      address,
      env: { MaxConnectedClients: '3' },
    });
    cleanups.push(() => gw2.stop());
  });

  test('the 4th client is refused with a clear reason; apply lowers the limit to 2 (one connection closed) and swaps in a new Edge CA without dropping the rest', async (t) => {
    assert.match(gw2.output(), /MaxConnectedClients\s+3 \(env MaxConnectedClients\)/);
    const { ids, key } = await createLeavesBulk(lim, 'few-', 4);
    const leaves: MqttLeaf[] = [];
    t.after(() => Promise.all(leaves.map((l) => l.end())));
    for (const deviceId of ids.slice(0, 3))
      leaves.push(
        await connectMqttLeaf({ address: lim.address, ca: lim.rootPem, hubHostName: hub.hostname, deviceId, key }),
      );
    const refused = await connectMqttLeaf({
      address: lim.address,
      ca: lim.rootPem,
      hubHostName: hub.hostname,
      deviceId: ids[3]!,
      key,
    }).then(
      () => assert.fail('the 4th client connected'),
      (err: Error & { code?: number }) => err,
    );
    assert.equal(refused.code, 3);
    // The official AMQP client gets the reason itself.
    const amqpLeaf = await lim.createLeaf('few-amqp');
    const client = Client.fromConnectionString(amqpLeaf.connectionString, Amqp);
    client.setRetryPolicy(new NoRetry());
    await client.setOptions({ ca: lim.rootPem });
    t.after(() => client.close().catch(() => undefined));
    await assert.rejects(
      async () => {
        await client.open();
        await client.sendEvent(new Message('one too many'));
      },
      (err: Error) =>
        /MaxConnectedClients=3/.test(
          `${err.message} ${(err as any).amqpError?.description ?? ''} ${(err as any).transportError?.message ?? ''}`,
        ),
    );
    await client.close().catch(() => undefined);
    assert.match(gw2.output(), /gateway has reached MaxConnectedClients=3/);

    // A TLS connection made before the change, to show it survives the certificate swap.
    const before = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host: lim.address, port: 443, ca: lim.rootPem }, () => resolve(s));
      s.once('error', reject);
    });
    t.after(() => before.destroy());
    const oldCert = before.getPeerX509Certificate()!;

    // New config: another Edge CA (under the same root) and max_connected_clients = 2.
    const rootKey = await readFile(hubPkiPaths(hub.dataDir).rootKey, 'utf8');
    const newCa = await createEdgeCa({ commonName: 'gw-limit.ca2', issuer: { certPem: hub.caPem, keyPem: rootKey } });
    const caCert = join(lim.dir, 'certs', 'ca2-full-chain.cert.pem');
    const caKey = join(lim.dir, 'certs', 'private', 'ca2.key.pem');
    await writeFile(caCert, fullChainPem(newCa.certPem, hub.caPem));
    await writeFile(caKey, newCa.keyPem, { mode: 0o600 });
    const text = (await readFile(lim.configPath, 'utf8'))
      .replace(/^cert = ".*"$/m, `cert = "${pathToFileURL(caCert).href}"`)
      .replace(/^pk = ".*"$/m, `pk = "${pathToFileURL(caKey).href}"`);
    const config2 = join(lim.dir, 'config2.toml');
    await writeFile(
      config2,
      `${text}\n[strata]\nmax_connected_clients = 2\nupstream_protocol = "Mqtt"\nresend_window_secs = 30\nmqtt_connect_timeout_secs = 5\n`,
    );
    const closed = leaves.map((l) => new Promise<boolean>((resolve) => l.client.once('close', () => resolve(true))));
    const apply = await exec(
      process.execPath,
      [STRATA_BIN, 'edge', 'config', 'apply', '--config', config2, '--data', lim.dataDir],
      { env: { ...process.env, STRATA_LOG_LEVEL: 'warn' } },
    );
    assert.equal(apply.code, 0, apply.stderr + apply.stdout);
    assert.match(apply.stdout, /MaxConnectedClients 3 -> 2 \(closed 1 connection/);
    assert.match(apply.stdout, /server certificate re-issued/);
    // What only a restart changes is named as such.
    assert.match(apply.stdout, /needs a restart to take effect: UpstreamProtocol/);
    assert.match(apply.stdout, /needs a restart to take effect: .*\[strata\] resend_window_secs/);
    assert.match(apply.stdout, /needs a restart to take effect: .*\[strata\] mqtt_connect_timeout_secs/);
    assert.doesNotMatch(apply.stdout, /needs a restart to take effect: .*max_connected_clients/);
    assert.ok(
      await Promise.race([Promise.race(closed), new Promise<boolean>((r) => setTimeout(() => r(false), 10_000))]),
      `a connection over the new limit was closed:\n${gw2.output()}`,
    );
    await eventually(
      '2 connected clients',
      async () => metricValue(await gw2.metrics(), 'edgehub_connected_clients') === 2,
    );

    // New connections get a certificate from the new Edge CA; the old connection is still open.
    const after = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host: lim.address, port: 8883, ca: lim.rootPem }, () => resolve(s));
      s.once('error', reject);
    });
    t.after(() => after.destroy());
    const newCert = after.getPeerX509Certificate()!;
    assert.match(newCert.issuer, /CN=gw-limit\.ca2/);
    assert.notEqual(newCert.fingerprint256, oldCert.fingerprint256);
    assert.ok(!before.destroyed && before.writable, 'the connection made before the swap is still open');

    // A bad config is refused with its line-numbered error; the running one stays.
    const bad = join(lim.dir, 'bad.toml');
    await writeFile(bad, `${text.replace(/^hostname = .*$/m, '')}\n[strata]\nhostname = "misplaced"\n`);
    const refusedApply = await exec(process.execPath, [
      STRATA_BIN,
      'edge',
      'config',
      'apply',
      '--config',
      bad,
      '--data',
      lim.dataDir,
    ]);
    assert.equal(refusedApply.code, 1);
    assert.match(refusedApply.stderr, /line \d+: error: "hostname" is inside the section \[strata\]/);
  });
});
