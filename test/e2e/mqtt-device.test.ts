/**
 * The official azure-iot-device client over MQTT (TLS, port 8883) and MQTT over WebSockets
 * (port 443, /$iothub/websocket) against a hub: telemetry, C2D, twins, direct methods, modules,
 * a wrong key.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { isEngineError } from '../../src/model/errors.ts';
import {
  createSasDevice,
  createSasModule,
  eventsOf,
  openClient,
  sdk,
  startTestHub,
  updateReported,
  waitFor,
  type TestHub,
} from './mqtt-helpers.ts';

const { Client, ModuleClient } = sdk.device;
const { Message } = sdk.common;

const transports = [
  { name: 'Mqtt', Transport: sdk.mqtt.Mqtt, protocol: 'mqtt' },
  { name: 'MqttWs', Transport: sdk.mqtt.MqttWs, protocol: 'mqtt-ws' },
] as const;

let hub: TestHub;
const cleanups: Array<() => unknown> = [];
before(async () => {
  hub = await startTestHub({ after: (fn) => cleanups.push(fn) });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

for (const { name, Transport, protocol } of transports) {
  describe(`azure-iot-device over ${name}`, () => {
    test('sendEvent with properties lands in the event stream with the system properties', async (t) => {
      const id = `tel-${name}`;
      const { connectionString } = createSasDevice(hub, id);
      const client = await openClient(t, Client.fromConnectionString(connectionString, Transport), hub.caPem);
      assert.equal(hub.engine.sessionOf({ deviceId: id })?.protocol, protocol);
      const before = Date.now();
      const msg = new Message(JSON.stringify({ temperature: 21.5 }));
      msg.messageId = 'msg-1';
      msg.correlationId = 'corr-1';
      msg.userId = 'user-1';
      msg.contentType = 'application/json';
      msg.contentEncoding = 'utf-8';
      msg.properties.add('alert', 'high');
      msg.properties.add('odd key/&=', 'väl ue&x=1/2');
      await client.sendEvent(msg);
      // Acknowledged only once durable: it must be readable right away.
      const [e] = await eventsOf(hub, id, 1, 1);
      assert.equal(e.deviceId, id);
      assert.equal(e.moduleId, undefined);
      assert.equal(e.message.body.toString(), '{"temperature":21.5}');
      assert.equal(e.message.messageId, 'msg-1');
      assert.equal(e.message.correlationId, 'corr-1');
      assert.equal(e.message.userId, 'user-1');
      assert.equal(e.message.contentType, 'application/json');
      assert.equal(e.message.contentEncoding, 'utf-8');
      assert.deepEqual(e.message.properties, { alert: 'high', 'odd key/&=': 'väl ue&x=1/2' });
      assert.ok(
        e.enqueuedTime >= before - 5 && e.enqueuedTime <= Date.now(),
        'iothub-enqueuedtime is the time it was stored',
      );
      assert.deepEqual(JSON.parse(e.authMethod), {
        scope: 'device',
        type: 'sas',
        issuer: 'iothub',
        acceptingIpFilterRule: null,
      });
      assert.ok(e.sequenceNumber >= 1);
      assert.ok(e.partition >= 0 && e.partition < hub.events.partitionCount());

      await client.sendEvent(new Message('second'));
      const two = await eventsOf(hub, id, 2, 1);
      assert.ok(two[1].sequenceNumber > two[0].sequenceNumber, 'sequence numbers increase');
    });

    test('C2D: delivered with its properties and completed (PUBACK); feedback recorded; reject/abandon do not exist over MQTT', async (t) => {
      const id = `c2d-${name}`;
      const { connectionString } = createSasDevice(hub, id);
      const client = Client.fromConnectionString(connectionString, Transport);
      const received: any[] = [];
      await openClient(t, client, hub.caPem, {}, (c) =>
        c.on('message', (m: any) => {
          received.push(m);
          c.complete(m).catch(() => undefined);
        }),
      );
      await hub.engine.sendC2D(
        id,
        {
          body: Buffer.from('to the device'),
          messageId: 'c2d-1',
          correlationId: 'c-1',
          properties: { colour: 'blue', 'a b': 'c&d' },
        },
        { ack: 'full' },
      );
      await waitFor(() => received.length === 1, 'the C2D message');
      const m = received[0];
      assert.equal(m.data.toString(), 'to the device');
      assert.equal(m.messageId, 'c2d-1');
      assert.equal(m.correlationId, 'c-1');
      assert.equal(m.properties.getValue('colour'), 'blue');
      assert.equal(m.properties.getValue('a b'), 'c&d');
      assert.equal(m.properties.getValue('iothub-ack'), 'full');
      await waitFor(() => hub.engine.c2d.depth(id) === 0, 'the queue to empty after PUBACK');
      const fb = hub.engine.pendingFeedback(1000).filter((f) => f.deviceId === id);
      assert.deepEqual(
        fb.map((f) => [f.originalMessageId, f.statusCode]),
        [['c2d-1', 'Success']],
      );
      hub.engine.acknowledgeFeedback(fb.map((f) => f.id));
      // IoT Hub's MQTT has no reject/abandon; the SDK says so itself.
      await assert.rejects(
        async () => client.reject(m),
        (err: Error) => err.name === 'NotImplementedError',
      );
      await assert.rejects(
        async () => client.abandon(m),
        (err: Error) => err.name === 'NotImplementedError',
      );
    });

    test('twin: get, reported patch (merge, null deletes, version bump), desired push', async (t) => {
      const id = `twin-${name}`;
      const { connectionString } = createSasDevice(hub, id);
      hub.node.registry.updateTwin(id, undefined, { properties: { desired: { interval: 10 } } }, '*', 'patch');
      const client = await openClient(t, Client.fromConnectionString(connectionString, Transport), hub.caPem);
      const twin = await client.getTwin();
      assert.equal(twin.properties.desired.interval, 10);
      const v0 = twin.properties.reported.$version;
      await updateReported(twin, { firmware: '1.0', gone: 'soon', nested: { a: 1, b: 2 } });
      await updateReported(twin, { gone: null, nested: { b: null } });
      const reported = hub.node.registry.getTwin(id)!.properties!.reported as Record<string, unknown>;
      assert.equal(reported.firmware, '1.0');
      assert.equal('gone' in reported, false);
      assert.deepEqual(reported.nested, { a: 1 });
      assert.equal(reported.$version, v0 + 2);

      const pushed: any[] = [];
      twin.on('properties.desired', (p: any) => pushed.push(p));
      await waitFor(() => pushed.length >= 1, 'the initial desired event');
      hub.node.registry.updateTwin(
        id,
        undefined,
        { properties: { desired: { interval: 30, mode: 'eco' } } },
        '*',
        'patch',
      );
      const patch = await waitFor(() => pushed.find((p) => p.mode === 'eco'), 'the desired push');
      assert.equal(patch.interval, 30);
      assert.equal(typeof patch.$version, 'number');
      const again = await client.getTwin();
      assert.equal(again.properties.desired.mode, 'eco');
    });

    test('direct method round trip; 404 for a device that is not connected', async (t) => {
      const id = `meth-${name}`;
      const { connectionString } = createSasDevice(hub, id);
      const client = Client.fromConnectionString(connectionString, Transport);
      await openClient(t, client, hub.caPem);
      client.onDeviceMethod('reboot', (req: any, res: any) => {
        res.send(200, { delay: req.payload.delay, method: req.methodName }, () => undefined);
      });
      await waitFor(
        () => hub.engine.sessionOf({ deviceId: id })?.subscriptions.has('methods'),
        'the methods subscription',
      );
      const r = await hub.engine.invokeMethod(
        { deviceId: id },
        { methodName: 'reboot', payload: { delay: 5 }, responseTimeoutInSeconds: 10 },
      );
      assert.deepEqual(r, { status: 200, payload: { delay: 5, method: 'reboot' } });

      createSasDevice(hub, `${id}-offline`);
      await assert.rejects(hub.engine.invokeMethod({ deviceId: `${id}-offline` }, { methodName: 'reboot' }), (err) =>
        isEngineError(err, 'not-connected'),
      );
    });

    test('a module client: telemetry, output, twin, method', async (t) => {
      const id = `mod-${name}`;
      createSasDevice(hub, id);
      const { connectionString } = createSasModule(hub, id, 'filter');
      const client = ModuleClient.fromConnectionString(connectionString, Transport);
      await openClient(t, client, hub.caPem);
      await client.sendEvent(new Message('from the module'));
      await client.sendOutputEvent('alerts', new Message('to an output'));
      const events = await eventsOf(hub, id, 2, 1);
      assert.deepEqual(
        events.map((e) => [e.moduleId, e.message.outputName, e.message.body.toString()]),
        [
          ['filter', undefined, 'from the module'],
          ['filter', 'alerts', 'to an output'],
        ],
      );
      assert.equal(JSON.parse(events[0].authMethod).scope, 'module');

      const twin = await client.getTwin();
      await updateReported(twin, { ready: true });
      assert.equal(
        (hub.node.registry.getTwin(id, 'filter')!.properties!.reported as Record<string, unknown>).ready,
        true,
      );
      assert.equal(
        (hub.node.registry.getTwin(id)!.properties!.reported as Record<string, unknown>).ready,
        undefined,
        'the device twin is untouched',
      );

      client.onMethod('ping', (_req: any, res: any) => res.send(201, 'pong', () => undefined));
      await waitFor(
        () => hub.engine.sessionOf({ deviceId: id, moduleId: 'filter' })?.subscriptions.has('methods'),
        'the methods subscription',
      );
      const r = await hub.engine.invokeMethod(
        { deviceId: id, moduleId: 'filter' },
        { methodName: 'ping', responseTimeoutInSeconds: 10 },
      );
      assert.deepEqual(r, { status: 201, payload: 'pong' });
    });

    test('a wrong key gives the SDK an UnauthorizedError', async () => {
      const id = `badkey-${name}`;
      createSasDevice(hub, id);
      const wrong = Buffer.alloc(32, 7).toString('base64');
      const client = Client.fromConnectionString(
        `HostName=${hub.address};DeviceId=${id};SharedAccessKey=${wrong}`,
        Transport,
      );
      await client.setOptions({ ca: hub.caPem });
      await assert.rejects(
        client.open(),
        (err: Error) => err.name === 'UnauthorizedError' || err.constructor.name === 'UnauthorizedError',
      );
      await client.close().catch(() => undefined);
      assert.equal(hub.engine.isConnected({ deviceId: id }), false);
    });
  });
}

test('a method the device does not answer times out with 504 (timeout)', async (t) => {
  const id = 'meth-silent';
  const { connectionString } = createSasDevice(hub, id);
  const client = Client.fromConnectionString(connectionString, sdk.mqtt.Mqtt);
  await openClient(t, client, hub.caPem);
  client.onDeviceMethod('hang', () => undefined);
  await waitFor(() => hub.engine.sessionOf({ deviceId: id })?.subscriptions.has('methods'), 'the methods subscription');
  const started = Date.now();
  await assert.rejects(
    hub.engine.invokeMethod({ deviceId: id }, { methodName: 'hang', responseTimeoutInSeconds: 5 }),
    (err) => isEngineError(err, 'timeout'),
  );
  assert.ok(Date.now() - started >= 4900);
});
