import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import deviceSdk from 'azure-iot-device';
import amqpSdk from 'azure-iot-device-amqp';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import {
  createSasDevice,
  invokeWithSdk,
  serviceClient,
  until,
  waitForEvents,
} from '../fixtures/service-messaging-helpers.ts';

/**
 * The official device SDK on its AMQP transports (`Amqp` over TLS on 5671, `AmqpWs` over
 * WebSockets on 443) against a real hub process: telemetry into the event stream, C2D with
 * each settlement, twin, direct methods and a module client.
 */

const { Client, ModuleClient, Message } = deviceSdk;
const { Amqp, AmqpWs } = amqpSdk;
type DeviceClient = InstanceType<typeof Client>;
type Closable = { close(): Promise<unknown> };
type SdkMessage = InstanceType<typeof Message>;

let hub: HubProcess;
let svc: ServiceClient;
const open: Closable[] = [];

before(async () => {
  hub = await startHubProcess({ env: { STRATA_LOG_LEVEL: process.env.HUB_LOG ?? 'warn' } });
  svc = serviceClient(hub);
});

after(async () => {
  for (const c of open) await c.close().catch(() => undefined);
  svc?.close();
  if (process.env.HUB_LOG) console.log(hub?.output());
  await hub?.stop();
});

const TRANSPORTS = [
  { name: 'Amqp', ctor: Amqp },
  { name: 'AmqpWs', ctor: AmqpWs },
] as const;

async function deviceClient(cs: string, transport: (typeof TRANSPORTS)[number]['ctor']): Promise<DeviceClient> {
  const client = Client.fromConnectionString(cs, transport);
  open.push(client);
  await client.setOptions({ ca: hub.caPem });
  await client.open();
  return client;
}

function sendC2D(deviceId: string, body: Record<string, unknown>): Promise<unknown> {
  return svc.request('POST', `/devices/${encodeURIComponent(deviceId)}/messages/deviceBound`, { body });
}

interface FeedbackJson {
  originalMessageId: string;
  deviceId: string;
  statusCode: string;
}

async function feedbackFor(messageIds: string[]): Promise<Map<string, FeedbackJson>> {
  const found = new Map<string, FeedbackJson>();
  const deadline = Date.now() + 10_000;
  while (!messageIds.every((id) => found.has(id))) {
    if (Date.now() > deadline) throw new Error(`feedback arrived only for ${[...found.keys()].join(', ')}`);
    const r = await svc.request<FeedbackJson[]>('GET', '/messages/serviceBound/feedback');
    for (const f of r.body ?? []) found.set(f.originalMessageId, f);
    if (!messageIds.every((id) => found.has(id))) await new Promise((res) => setTimeout(res, 50));
  }
  return found;
}

for (const t of TRANSPORTS) {
  test(`${t.name}: telemetry with properties reaches the event stream with its system properties`, async () => {
    const id = `amqp-tel-${t.name}`;
    const { cs } = await createSasDevice(svc, hub, id);
    const client = await deviceClient(cs, t.ctor);
    const msg = new Message(JSON.stringify({ temperature: 22.5 }));
    msg.messageId = 'mid-42';
    msg.correlationId = 'cid-7';
    msg.contentType = 'application/json';
    msg.contentEncoding = 'utf-8';
    msg.properties.add('alert', 'high');
    await client.sendEvent(msg);
    await client.sendEvent(new Message('second'));

    const events = await waitForEvents(svc, { device: id }, 2);
    const [e, e2] = events;
    assert.ok(e && e2);
    assert.deepEqual(JSON.parse(Buffer.from(e.body, 'base64').toString('utf8')), { temperature: 22.5 });
    assert.deepEqual(e.properties, { alert: 'high' });
    assert.equal(e.systemProperties['message-id'], 'mid-42');
    assert.equal(e.systemProperties['correlation-id'], 'cid-7');
    assert.equal(e.systemProperties['content-type'], 'application/json');
    assert.equal(e.systemProperties['content-encoding'], 'utf-8');
    assert.equal(e.annotations['iothub-connection-device-id'], id);
    assert.match(String(e.annotations['iothub-connection-auth-method']), /"type":"sas"/);
    assert.equal(Buffer.from(e2.body, 'base64').toString('utf8'), 'second');
    assert.ok(e2.sequenceNumber > e.sequenceNumber, 'stored in the order sent');
  });

  test(`${t.name}: C2D messages are completed, rejected, and abandoned then redelivered`, async () => {
    const id = `amqp-c2d-${t.name}`;
    const { cs } = await createSasDevice(svc, hub, id);
    const client = await deviceClient(cs, t.ctor);
    const seen: Array<{ messageId: string; body: string; props: Record<string, string> }> = [];
    client.on('message', (m: SdkMessage) => {
      const props: Record<string, string> = {};
      for (let i = 0; i < m.properties.count(); i++) {
        const p = m.properties.getItem(i);
        props[p.key] = String(p.value);
      }
      const body = m.getData().toString();
      seen.push({ messageId: String(m.messageId), body, props });
      // The body says what to do with it; 'abandon' is completed on its second delivery.
      const times = seen.filter((s) => s.messageId === m.messageId).length;
      // One settlement per turn: the rhea 1.x inside the device SDK merges the dispositions of
      // consecutive deliveries settled in the same tick into the first one's outcome.
      setImmediate(() => {
        if (body === 'reject') client.reject(m).catch(() => undefined);
        else if (body === 'abandon' && times === 1) client.abandon(m).catch(() => undefined);
        else client.complete(m).catch(() => undefined);
      });
    });
    const ids = { complete: `c-${t.name}`, reject: `r-${t.name}`, abandon: `a-${t.name}` };
    await sendC2D(id, { body: 'complete', messageId: ids.complete, ack: 'full', properties: { color: 'blue' } });
    await sendC2D(id, { body: 'reject', messageId: ids.reject, ack: 'full' });
    await sendC2D(id, { body: 'abandon', messageId: ids.abandon, ack: 'full' });

    await until('four deliveries (the abandoned one twice)', () => seen.length >= 4 || undefined, 15_000);
    assert.deepEqual(seen.find((s) => s.messageId === ids.complete)?.props, { color: 'blue' });
    assert.equal(
      seen.filter((s) => s.messageId === ids.abandon).length,
      2,
      'released = abandon: the message comes again',
    );
    assert.equal(seen.filter((s) => s.messageId === ids.reject).length, 1, 'rejected: never again');

    const fb = await feedbackFor([ids.complete, ids.reject, ids.abandon]);
    assert.equal(fb.get(ids.complete)!.statusCode, 'Success');
    assert.equal(fb.get(ids.abandon)!.statusCode, 'Success');
    assert.equal(fb.get(ids.reject)!.statusCode, 'Rejected');
    assert.equal(fb.get(ids.reject)!.deviceId, id);
  });

  test(`${t.name}: twin get, reported patch, and desired property pushes`, async () => {
    const id = `amqp-twin-${t.name}`;
    const { cs } = await createSasDevice(svc, hub, id);
    const client = await deviceClient(cs, t.ctor);
    await svc.updateTwin(id, { properties: { desired: { interval: 5 } } });
    const twin = await client.getTwin();
    assert.equal(twin.properties.desired.interval, 5);
    const firstVersion = twin.properties.desired.$version as number;
    assert.ok(typeof firstVersion === 'number');

    await new Promise<void>((resolve, reject) =>
      twin.properties.reported.update({ firmware: '1.2.3', nested: { a: 1 } }, (err?: Error) =>
        err ? reject(err) : resolve(),
      ),
    );
    const after = await svc.getTwin(id);
    assert.equal((after.properties?.reported as Record<string, unknown> | undefined)?.firmware, '1.2.3');
    assert.deepEqual((after.properties?.reported as Record<string, unknown> | undefined)?.nested, { a: 1 });

    const pushes: Array<Record<string, unknown>> = [];
    twin.on('properties.desired', (patch: Record<string, unknown>) => pushes.push(patch));
    // The SDK emits the current desired properties once when it subscribes; wait for that first.
    await until('the first desired event', () => pushes.length >= 1 || undefined);
    await new Promise((r) => setTimeout(r, 200));
    await svc.updateTwin(id, { properties: { desired: { interval: 10, mode: 'eco' } } });
    const push = await until('a desired push', () => pushes.find((p) => p.mode === 'eco'));
    assert.equal(push.interval, 10);
    assert.ok(
      typeof push.$version === 'number' && push.$version > firstVersion,
      `pushed $version ${push.$version} after ${firstVersion}`,
    );
  });

  test(`${t.name}: direct methods invoked by the service SDK reach the device and its answer comes back`, async () => {
    const id = `amqp-method-${t.name}`;
    const { cs } = await createSasDevice(svc, hub, id);
    const client = await deviceClient(cs, t.ctor);
    const calls: unknown[] = [];
    client.onDeviceMethod(
      'reboot',
      (req: { payload: unknown }, res: { send(status: number, payload: unknown, cb?: (e?: Error) => void): void }) => {
        calls.push(req.payload);
        res.send(201, { rebooting: true, echo: req.payload });
      },
    );
    // onDeviceMethod attaches the method links in the background; invoke waits until the device subscribed.
    const answer = await invokeWithSdk(hub, id, {
      methodName: 'reboot',
      payload: { delay: 3 },
      responseTimeoutInSeconds: 10,
      connectTimeoutInSeconds: 10,
    });
    assert.ok(answer.ok, JSON.stringify(answer));
    assert.equal(answer.result.status, 201);
    assert.deepEqual(answer.result.payload, { rebooting: true, echo: { delay: 3 } });
    assert.deepEqual(calls, [{ delay: 3 }]);
  });

  test(`${t.name}: a module client sends output telemetry, reads its twin, answers methods and opens its input link`, async () => {
    const deviceId = `amqp-mod-${t.name}`;
    const { moduleCs } = await createSasDevice(svc, hub, deviceId, { moduleId: 'filter' });
    const mod = ModuleClient.fromConnectionString(moduleCs!, t.ctor);
    open.push(mod);
    await mod.setOptions({ ca: hub.caPem });
    await mod.open();

    await mod.sendOutputEvent('out1', new Message('from-module'));
    const [e] = await waitForEvents(svc, { device: deviceId, module: 'filter' }, 1);
    assert.ok(e);
    assert.equal(Buffer.from(e.body, 'base64').toString('utf8'), 'from-module');
    assert.equal(e.annotations['iothub-connection-module-id'], 'filter');
    assert.equal(e.systemProperties['iothub-outputname'], 'out1');
    assert.deepEqual(e.properties, {}, 'the output name is a system property, not an application one');

    await svc.updateTwin(deviceId, { properties: { desired: { threshold: 3 } } }, '*', 'filter');
    const twin = await mod.getTwin();
    assert.equal(twin.properties.desired.threshold, 3);

    mod.onMethod('ping', (_req, res) => void res!.send(200, 'pong'));
    const answer = await invokeWithSdk(
      hub,
      deviceId,
      { methodName: 'ping', payload: null, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 },
      'filter',
    );
    assert.ok(answer.ok, JSON.stringify(answer));
    assert.deepEqual(answer.result, { status: 200, payload: 'pong' });

    // The input link (/devices/{d}/modules/{m}/messages/events, received by the module) attaches.
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      mod.once('error', onError);
      mod.on('inputMessage', () => undefined);
      setTimeout(() => {
        mod.off('error', onError);
        resolve();
      }, 500);
    });
    const m = await svc.getModule(deviceId, 'filter');
    assert.equal(m.connectionState, 'Connected');
  });
}
