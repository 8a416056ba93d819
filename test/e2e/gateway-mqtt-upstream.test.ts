/**
 * A gateway whose upstream is MQTT (`UpstreamProtocol=Mqtt`, one connection per identity, on
 * behalf of it), between a hub process and official SDK leaves (MQTT and AMQP): telemetry
 * arrives as the leaf's own and in order; twin, direct method and C2D round trips; MqttWs; a
 * second layer whose MQTT upstream ends at the first gateway's MQTT head; and a hub outage
 * during which the gateway keeps acknowledging, after which everything arrives.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { EventJson, EventPageJson } from '../../src/hub/service-messaging.ts';
import { waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import { metricValue, setupEdge, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { setupLayer } from '../helpers/nested.ts';
import { desiredPush, eventually, listenDesired, openSdkLeaf, updateReported } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');
const { NoRetry } = require('azure-iot-common');

let hubDir: string;
let hubAddress: string;
let hub: HubProcess | undefined;
let edge: EdgeSetup;
let gw: GatewayProcess;
const cleanups: Array<() => unknown> = [];

before(async () => {
  hubDir = await mkdtemp(join(tmpdir(), 'strata-hub-mqtt-up-'));
  hubAddress = randomLoopback();
  hub = await startHubProcess({ dataDir: hubDir, address: hubAddress });
  const address = randomLoopback();
  edge = await setupEdge(hub, { gatewayId: 'gw-mqtt-up', address });
  cleanups.push(() => edge.cleanup());
  gw = await startGatewayProcess({
    configPath: edge.configPath,
    dataDir: edge.dataDir,
    address,
    env: { UpstreamProtocol: 'Mqtt' },
  });
  cleanups.push(() => gw.stop());
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  await hub?.stop();
  await rm(hubDir, { recursive: true, force: true });
});

const openLeaf = (
  t: { after(fn: () => unknown): void },
  setup: EdgeSetup,
  connectionString: string,
  Transport: unknown,
  prepare?: (c: any) => void,
) => openSdkLeaf(t, connectionString, Transport, setup.rootPem, prepare);

/** Every event of a device at the hub so far. */
async function eventsOf(setup: EdgeSetup, deviceId: string): Promise<EventJson[]> {
  const out: EventJson[] = [];
  let from = 0;
  for (;;) {
    const page = (
      await setup.svc.request<EventPageJson>(
        'GET',
        `/events?device=${encodeURIComponent(deviceId)}&from=${from}&limit=1000`,
      )
    ).body;
    out.push(...page.events);
    if (page.events.length === 0 || page.nextSequenceNumber === from) return out;
    from = page.nextSequenceNumber;
  }
}

const bodyOf = (e: EventJson): string => Buffer.from(e.body, 'base64').toString();

describe('UpstreamProtocol=Mqtt', () => {
  test('the gateway starts without a warning and reports an MQTT upstream', () => {
    assert.doesNotMatch(gw.output(), /not available yet/);
    assert.match(gw.output(), /upstream\s+mqtts:\/\/[\d.]+:8883 .*connected/);
  });

  for (const [name, Transport] of [
    ['Mqtt', Mqtt],
    ['Amqp', Amqp],
  ] as const) {
    test(`${name} leaf: telemetry arrives at the hub as the leaf's own, in order, with its properties`, async (t) => {
      const leaf = await edge.createLeaf(`mq-tel-${name.toLowerCase()}`);
      const client = await openLeaf(t, edge, leaf.connectionString, Transport);
      const N = 40;
      for (let i = 0; i < N; i++) {
        const m = new Message(JSON.stringify({ i }));
        m.messageId = `m-${i}`;
        m.correlationId = `c-${i}`;
        m.contentType = 'application/json';
        m.contentEncoding = 'utf-8';
        m.properties.add('seq', String(i));
        m.properties.add('odd key&=/', 'value with spaces/&=%');
        await client.sendEvent(m);
      }
      const events = await waitForEvents(edge.svc, { device: leaf.deviceId }, N);
      assert.deepEqual(
        events.map(bodyOf),
        Array.from({ length: N }, (_, i) => JSON.stringify({ i })),
        'in the order sent',
      );
      for (const [i, e] of events.entries()) {
        assert.equal(e.deviceId, leaf.deviceId);
        assert.equal(e.annotations['iothub-connection-device-id'], leaf.deviceId);
        assert.equal(e.systemProperties['message-id'], `m-${i}`);
        assert.equal(e.systemProperties['correlation-id'], `c-${i}`);
        assert.equal(e.systemProperties['content-type'], 'application/json');
        assert.equal(e.systemProperties['content-encoding'], 'utf-8');
        assert.equal(e.properties.seq, String(i));
        assert.equal(e.properties['odd key&=/'], 'value with spaces/&=%');
      }
    });
  }

  test("twin (get, reported patch, desired push), a direct method and C2D round trip through the gateway's MQTT upstream", async (t) => {
    const leaf = await edge.createLeaf('mq-ops');
    const id = leaf.deviceId;
    await edge.svc.updateTwin(id, { properties: { desired: { interval: 5 } } });
    const c2d: any[] = [];
    const client = await openLeaf(t, edge, leaf.connectionString, Mqtt, (c) =>
      c.on('message', (m: any) => {
        c2d.push(m);
        c.complete(m, () => undefined);
      }),
    );

    const twin = await client.getTwin();
    assert.equal(twin.properties.desired.interval, 5);
    await updateReported(twin, { firmware: 'fw-mqtt-up' });
    assert.equal((await edge.svc.getTwin(id)).properties?.reported?.firmware, 'fw-mqtt-up');
    // One patch, sent as soon as the subscription is acknowledged, must arrive.
    const pushed = await listenDesired(twin);
    const dv = twin.properties.desired.$version as number;
    await edge.svc.updateTwin(id, { properties: { desired: { mode: 'm1' } } });
    assert.equal((await desiredPush(pushed, dv + 1)).mode, 'm1');

    client.onDeviceMethod('echo', (req: any, res: any) => res.send(200, { got: req.payload }, () => undefined));
    const r = await eventually('the method to reach the leaf', async () => {
      const res = await edge.svc
        .request<{ status: number; payload: unknown }>('POST', `/twins/${id}/methods`, {
          body: { methodName: 'echo', payload: { x: 1 }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 },
        })
        .catch(() => undefined);
      return res?.body.status === 200 ? res : undefined;
    });
    assert.deepEqual(r.body, { status: 200, payload: { got: { x: 1 } } });

    await edge.svc.request('POST', `/devices/${id}/messages/deviceBound`, {
      body: { body: 'to the leaf', messageId: 'c2d-mq', properties: { colour: 'blue' }, ack: 'full' },
    });
    await eventually('the C2D message at the leaf', () => c2d.length >= 1);
    assert.equal(c2d[0].data.toString(), 'to the leaf');
    assert.equal(c2d[0].messageId, 'c2d-mq');
    assert.equal(c2d[0].properties.getValue('colour'), 'blue');
    await eventually(
      'the hub to see the C2D message completed',
      async () => (await edge.svc.getDevice(id)).cloudToDeviceMessageCount === 0,
    );
  });
});

describe('UpstreamProtocol=MqttWs', () => {
  let ws: EdgeSetup;
  let gwWs: GatewayProcess;
  before(async () => {
    const address = randomLoopback();
    ws = await setupEdge(hub!, { gatewayId: 'gw-mqttws-up', address });
    cleanups.push(() => ws.cleanup());
    gwWs = await startGatewayProcess({
      configPath: ws.configPath,
      dataDir: ws.dataDir,
      address,
      env: { UpstreamProtocol: 'MqttWs' },
    });
    cleanups.push(() => gwWs.stop());
  });

  test('telemetry and a twin read go over MQTT over WebSockets to the hub', async (t) => {
    assert.match(gwWs.output(), /upstream\s+wss:\/\/[\d.]+:443\/\$iothub\/websocket .*connected/);
    const leaf = await ws.createLeaf('mqws-leaf');
    await ws.svc.updateTwin(leaf.deviceId, { properties: { desired: { over: 'websockets' } } });
    const client = await openLeaf(t, ws, leaf.connectionString, Mqtt);
    for (let i = 0; i < 10; i++) await client.sendEvent(new Message(`ws-${i}`));
    const events = await waitForEvents(ws.svc, { device: leaf.deviceId }, 10);
    assert.deepEqual(
      events.map(bodyOf),
      Array.from({ length: 10 }, (_, i) => `ws-${i}`),
    );
    assert.equal(events[0]!.annotations['iothub-connection-device-id'], leaf.deviceId);
    assert.equal((await client.getTwin()).properties.desired.over, 'websockets');
  });
});

describe('two layers, MQTT all the way: a child gateway connects on behalf of its leaf to the MQTT head of its parent gateway', () => {
  let l2: EdgeSetup;
  let gwL2: GatewayProcess;
  before(async () => {
    const address = randomLoopback();
    l2 = await setupLayer(hub!, { gatewayId: 'gw-mqtt-l2', address, parent: edge });
    cleanups.push(() => l2.cleanup());
    gwL2 = await startGatewayProcess({
      configPath: l2.configPath,
      dataDir: l2.dataDir,
      address,
      env: { UpstreamProtocol: 'Mqtt' },
    });
    cleanups.push(() => gwL2.stop());
  });

  test('a leaf two layers down: telemetry reaches the hub as its own, in order; its twin and a direct method round trip', async (t) => {
    assert.match(
      gwL2.output(),
      new RegExp(`upstream\\s+mqtts://${edge.address.replace(/\./g, '\\.')}:8883 .*connected`),
    );
    const leaf = await l2.createLeaf('mq-deep-leaf');
    await l2.svc.updateTwin(leaf.deviceId, { properties: { desired: { depth: 2 } } });
    const client = await openLeaf(t, l2, leaf.connectionString, Mqtt);
    for (let i = 0; i < 20; i++) await client.sendEvent(new Message(`deep-${i}`));
    const events = await waitForEvents(l2.svc, { device: leaf.deviceId }, 20);
    assert.deepEqual(
      events.map(bodyOf),
      Array.from({ length: 20 }, (_, i) => `deep-${i}`),
    );
    assert.equal(events[0]!.annotations['iothub-connection-device-id'], leaf.deviceId);
    assert.equal((await client.getTwin()).properties.desired.depth, 2);
    client.onDeviceMethod('where', (_req: any, res: any) => res.send(200, { layer: 2 }, () => undefined));
    const r = await eventually('the method two layers down', async () => {
      const res = await l2.svc
        .request<{ status: number; payload: unknown }>('POST', `/twins/${leaf.deviceId}/methods`, {
          body: { methodName: 'where', responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 },
        })
        .catch(() => undefined);
      return res?.body.status === 200 ? res : undefined;
    });
    assert.deepEqual(r.body.payload, { layer: 2 });
  });
});

describe('hub outage', () => {
  test('messages the gateway acknowledged while the hub was down all arrive once it is back', async (t) => {
    const leaf = await edge.createLeaf('mq-outage');
    const client = Client.fromConnectionString(leaf.connectionString, Mqtt);
    client.setRetryPolicy(new NoRetry());
    await client.setOptions({ ca: edge.rootPem });
    t.after(() => client.close().catch(() => undefined));
    await client.open();
    await client.sendEvent(new Message(JSON.stringify({ i: -1 })));
    await waitForEvents(edge.svc, { device: leaf.deviceId }, 1);

    await hub!.stop();
    hub = undefined;
    await eventually(
      'the gateway to see its upstream down',
      async () => metricValue(await gw.metrics(), 'edgehub_upstream_connected') === 0,
    );
    const N = 500;
    for (let i = 0; i < N; i += 50)
      await Promise.all(
        Array.from({ length: 50 }, (_, k) => client.sendEvent(new Message(JSON.stringify({ i: i + k })))),
      );
    assert.ok(
      (metricValue(await gw.metrics(), 'edgehub_queue_length', { endpoint: '$upstream' }) ?? 0) >= N,
      'all are queued at the gateway',
    );

    hub = await startHubProcess({ dataDir: hubDir, address: hubAddress });
    const got = await eventually(
      'every acknowledged message at the hub',
      async () => {
        const seen = new Set(
          (await eventsOf(edge, leaf.deviceId)).map((e) => (JSON.parse(bodyOf(e)) as { i: number }).i),
        );
        return Array.from({ length: N }, (_, i) => i).every((i) => seen.has(i)) ? seen : undefined;
      },
      40_000,
    );
    assert.ok(got.has(-1));
    await eventually(
      'the queue to drain',
      async () => metricValue(await gw.metrics(), 'edgehub_queue_length', { endpoint: '$upstream' }) === 0,
    );
  });
});
