import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import deviceSdk from 'azure-iot-device';
import httpSdk from 'azure-iot-device-http';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import type { EventPageJson } from '../../src/hub/service-messaging.ts';
import {
  createSasDevice,
  deviceToken,
  newKey,
  rawRequest,
  serviceClient,
  serviceToken,
  until,
  waitForEvents,
} from '../fixtures/service-messaging-helpers.ts';

/**
 * The device HTTPS API with the official `azure-iot-device` client on its `Http` transport,
 * against a real hub process over TLS, read back through the service event-stream endpoint.
 */

const { Client, Message } = deviceSdk;
const { Http } = httpSdk;
type DeviceClient = InstanceType<typeof Client>;
type SdkMessage = InstanceType<typeof Message>;

let hub: HubProcess;
let svc: ServiceClient;
const clients: DeviceClient[] = [];

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
});

after(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  svc?.close();
  await hub?.stop();
});

/**
 * The Http transport only calls back from setOptions when receiver options are among them,
 * so every client here passes a receive policy with its CA.
 */
const RECEIVE_EVERY_SECOND = { http: { receivePolicy: { interval: 1 } } };

async function httpClient(cs: string, extra: Record<string, unknown> = {}): Promise<DeviceClient> {
  const client = Client.fromConnectionString(cs, Http);
  clients.push(client);
  await client.setOptions({ ca: hub.caPem, ...RECEIVE_EVERY_SECOND, ...extra });
  return client;
}

async function eventsOf(deviceId: string): Promise<EventPageJson> {
  return (await svc.request<EventPageJson>('GET', `/events?${new URLSearchParams({ device: deviceId, from: '0' })}`))
    .body;
}

test('sendEvent over HTTPS with properties arrives in the event stream with the system properties', async () => {
  const { cs } = await createSasDevice(svc, hub, 'http-tel-1');
  const client = await httpClient(cs);
  const msg = new Message(JSON.stringify({ temperature: 21.5 }));
  msg.messageId = 'mid-1';
  msg.correlationId = 'cid-1';
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('alert', 'high');
  msg.properties.add('Mixed-Case', 'kept');
  const before = Date.now();
  await client.sendEvent(msg);
  const after = Date.now();

  const [e] = await waitForEvents(svc, { device: 'http-tel-1' }, 1);
  assert.ok(e);
  assert.equal(e.deviceId, 'http-tel-1');
  assert.equal(e.moduleId, undefined);
  assert.deepEqual(JSON.parse(Buffer.from(e.body, 'base64').toString('utf8')), { temperature: 21.5 });
  assert.deepEqual(e.properties, { alert: 'high', 'Mixed-Case': 'kept' });
  assert.equal(e.systemProperties['message-id'], 'mid-1');
  assert.equal(e.systemProperties['correlation-id'], 'cid-1');
  assert.equal(e.systemProperties['content-type'], 'application/json');
  assert.equal(e.systemProperties['content-encoding'], 'utf-8');
  assert.ok(Number.isInteger(e.sequenceNumber) && e.sequenceNumber >= 1, `sequence number ${e.sequenceNumber}`);
  assert.equal(e.annotations['iothub-connection-device-id'], 'http-tel-1');
  assert.equal(e.annotations['iothub-connection-module-id'], undefined);
  const enqueued = e.annotations['iothub-enqueuedtime'] as number;
  assert.ok(
    enqueued >= before - 1000 && enqueued <= after + 1000,
    `enqueued ${enqueued} outside [${before}, ${after}]`,
  );
  assert.equal(new Date(e.enqueuedTime).getTime(), enqueued);
  const authMethod = JSON.parse(String(e.annotations['iothub-connection-auth-method']));
  assert.equal(authMethod.scope, 'device');
  assert.equal(authMethod.type, 'sas');
  assert.equal(e.annotations['iothub-message-source'], 'Telemetry');
});

test('sendEventBatch over HTTPS stores every message in order with its properties', async () => {
  const { cs } = await createSasDevice(svc, hub, 'http-batch-1');
  const client = await httpClient(cs);
  const messages: SdkMessage[] = [];
  for (let i = 0; i < 3; i++) {
    const m = new Message(`reading ${i}`);
    m.properties.add('index', String(i));
    if (i === 1) m.properties.add('extra', 'yes');
    messages.push(m);
  }
  await client.sendEventBatch(messages);

  const events = await waitForEvents(svc, { device: 'http-batch-1' }, 3);
  assert.deepEqual(
    events.map((e) => Buffer.from(e.body, 'base64').toString('utf8')),
    ['reading 0', 'reading 1', 'reading 2'],
  );
  assert.deepEqual(
    events.map((e) => e.properties),
    [{ index: '0' }, { index: '1', extra: 'yes' }, { index: '2' }],
  );
  const seqs = events.map((e) => e.sequenceNumber);
  assert.ok(seqs[0]! < seqs[1]! && seqs[1]! < seqs[2]!, `sequence numbers ${seqs} not increasing`);
  for (const e of events) {
    assert.equal(e.annotations['iothub-connection-device-id'], 'http-batch-1');
    assert.equal(typeof e.annotations['iothub-enqueuedtime'], 'number');
    assert.match(String(e.annotations['iothub-connection-auth-method']), /"type":"sas"/);
  }
});

test('a module posts telemetry on its own path with its own token; the event names the module', async () => {
  // The SDK's Http transport only knows the device path, so this is the wire request a module client makes.
  const { moduleKey } = await createSasDevice(svc, hub, 'http-mod-1', { moduleId: 'filter' });
  const res = await rawRequest(hub, {
    method: 'POST',
    path: '/devices/http-mod-1/modules/filter/messages/events?api-version=2021-04-12',
    headers: {
      authorization: deviceToken(hub, moduleKey!, 'http-mod-1', 'filter'),
      'iothub-app-stage': 'filtered',
      'IoTHub-MessageId': 'm-mod',
    },
    body: 'from a module',
  });
  assert.equal(res.status, 204, res.text);
  const [e] = await waitForEvents(svc, { device: 'http-mod-1', module: 'filter' }, 1);
  assert.equal(e!.moduleId, 'filter');
  assert.equal(e!.annotations['iothub-connection-module-id'], 'filter');
  assert.equal(e!.annotations['iothub-connection-device-id'], 'http-mod-1');
  assert.equal(JSON.parse(String(e!.annotations['iothub-connection-auth-method'])).scope, 'module');
  assert.deepEqual(e!.properties, { stage: 'filtered' });
  assert.equal(e!.systemProperties['message-id'], 'm-mod');
});

async function sendC2D(deviceId: string, body: Record<string, unknown>): Promise<string> {
  const res = await svc.request<{ messageId: string }>('POST', `/devices/${deviceId}/messages/deviceBound`, { body });
  return res.body.messageId;
}

test('C2D over HTTPS: complete, reject and abandon with the SDK; abandon redelivers; feedback recorded', async () => {
  const { cs } = await createSasDevice(svc, hub, 'http-c2d-1');
  await sendC2D('http-c2d-1', {
    body: 'first',
    messageId: 'c-complete',
    correlationId: 'corr-1',
    properties: { color: 'red' },
    ack: 'full',
  });
  await sendC2D('http-c2d-1', { body: 'second', messageId: 'c-reject', ack: 'full' });
  await sendC2D('http-c2d-1', { body: 'third', messageId: 'c-abandon', ack: 'full' });

  const client = await httpClient(cs, { http: { receivePolicy: { interval: 0.1 } } });
  const received: SdkMessage[] = [];
  const errors: Error[] = [];
  client.on('message', (m: SdkMessage) => received.push(m));
  client.on('error', (e: Error) => errors.push(e));

  await until('three C2D messages', () => received.length >= 3);
  const byId = (id: string) => received.find((m) => m.messageId === id);
  const first = byId('c-complete')!;
  assert.ok(first, `got ${received.map((m) => m.messageId)}`);
  assert.equal(first.data.toString(), 'first');
  assert.equal(first.correlationId, 'corr-1');
  assert.ok(first.lockToken, 'the ETag gives the lock token');
  // The Node SDK keeps the header name as the property key.
  assert.equal(first.properties.getValue('iothub-app-color'), 'red');

  await client.complete(first);
  await client.reject(byId('c-reject')!);
  const abandoned = byId('c-abandon')!;
  await client.abandon(abandoned);

  // Abandon puts it back: the poller receives it again, with a new lock.
  await until('the abandoned message again', () => received.filter((m) => m.messageId === 'c-abandon').length >= 2);
  const again = received.filter((m) => m.messageId === 'c-abandon')[1]!;
  assert.equal(again.data.toString(), 'third');
  assert.notEqual(again.lockToken, abandoned.lockToken);
  await client.complete(again);
  // A settled lock is gone: settling it again is refused.
  await assert.rejects(client.complete(first));

  // Nothing else is delivered: the other two were settled for good.
  await new Promise((r) => setTimeout(r, 400));
  assert.deepEqual(received.map((m) => m.messageId).sort(), ['c-abandon', 'c-abandon', 'c-complete', 'c-reject']);
  assert.deepEqual(errors, []);

  // Feedback for the three acks: Success, Rejected, Success.
  const deadline = Date.now() + 10_000;
  let records: Array<{ originalMessageId: string; statusCode: string; deviceId: string }> = [];
  let etag = '';
  while (Date.now() < deadline) {
    const res = await svc.request<typeof records>('GET', '/messages/serviceBound/feedback');
    records = (res.body ?? []).filter((r) => r.deviceId === 'http-c2d-1');
    etag = String(res.headers.etag ?? '');
    if (records.length >= 3) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const status = Object.fromEntries(records.map((r) => [r.originalMessageId, r.statusCode]));
  assert.deepEqual(status, { 'c-complete': 'Success', 'c-reject': 'Rejected', 'c-abandon': 'Success' });
  await svc.request('DELETE', `/messages/serviceBound/feedback/${encodeURIComponent(etag.replace(/"/g, ''))}`);
  const left = await svc.request<typeof records>('GET', '/messages/serviceBound/feedback');
  assert.ok(
    left.status === 204 || !(left.body ?? []).some((r) => r.deviceId === 'http-c2d-1'),
    'completed feedback is not handed out again',
  );
});

test('an empty C2D queue answers 204 with no body', async () => {
  const { key } = await createSasDevice(svc, hub, 'http-c2d-empty');
  const res = await rawRequest(hub, {
    method: 'GET',
    path: '/devices/http-c2d-empty/messages/devicebound?api-version=2021-04-12',
    headers: { authorization: deviceToken(hub, key, 'http-c2d-empty') },
  });
  assert.equal(res.status, 204);
  assert.equal(res.body.length, 0);
});

test('C2D sent as a raw body with IoT Hub headers reaches the device with its properties, ack and expiry', async () => {
  const { key } = await createSasDevice(svc, hub, 'http-c2d-raw');
  const owner = serviceToken(svc);
  const sent = await rawRequest(hub, {
    method: 'POST',
    path: '/devices/http-c2d-raw/messages/deviceBound?api-version=2021-04-12&ack=positive',
    headers: {
      authorization: owner,
      'content-type': 'text/plain; charset=utf-8',
      'iothub-app-Zone': 'north',
      'IoTHub-MessageId': 'raw-1',
      'IoTHub-CorrelationId': 'raw-c',
      'IoTHub-Expiry': new Date(Date.now() + 60_000).toISOString(),
    },
    body: 'raw payload',
  });
  assert.equal(sent.status, 200, sent.text);
  assert.deepEqual(JSON.parse(sent.text), { deviceId: 'http-c2d-raw', messageId: 'raw-1' });
  const before = Date.now();
  const got = await rawRequest(hub, {
    method: 'GET',
    path: '/devices/http-c2d-raw/messages/devicebound?api-version=2021-04-12',
    headers: { authorization: deviceToken(hub, key, 'http-c2d-raw') },
  });
  assert.equal(got.status, 200, got.text);
  assert.equal(got.text, 'raw payload');
  assert.equal(got.headers['iothub-messageid'], 'raw-1');
  assert.equal(got.headers['iothub-correlationid'], 'raw-c');
  assert.equal(got.headers['iothub-app-zone'], 'north');
  assert.equal(got.headers['iothub-contenttype'], 'text/plain; charset=utf-8');
  assert.equal(got.headers['iothub-ack'], 'positive');
  assert.equal(got.headers['iothub-deliverycount'], '1');
  const expiry = Date.parse(String(got.headers['iothub-expiry']));
  assert.ok(
    expiry > before + 50_000 && expiry <= before + 61_000,
    `expiry ${got.headers['iothub-expiry']} is not about 60 s out`,
  );

  // Malformed sends are refused with the reason, and nothing is queued.
  const post = (body: string, contentType = 'application/json') =>
    rawRequest(hub, {
      method: 'POST',
      path: '/devices/http-c2d-raw/messages/deviceBound?api-version=2021-04-12',
      headers: { authorization: owner, 'content-type': contentType },
      body,
    });
  for (const [body, reason] of [
    ['{"body": "x", "ack": "sometimes"}', /ack/],
    ['{"bodyBase64": "!!"}', /base64/],
    ['{"body": "x", "properties": ["a"]}', /properties/],
    ['{"body": "x", "expiryTimeUtc": "whenever"}', /expiryTimeUtc/],
    ['{"body": "x", "ttlSeconds": -1}', /ttlSeconds/],
    ['[1, 2]', /body must be/],
    ['{"body": ', /not valid JSON/],
  ] as const) {
    const r = await post(body);
    assert.equal(r.status, 400, `${body}: ${r.text}`);
    assert.match(JSON.parse(r.text).Message, reason);
  }
  const good = await post('{"body": "only this one"}');
  assert.equal(good.status, 200, good.text);
  const receive = () =>
    rawRequest(hub, {
      method: 'GET',
      path: '/devices/http-c2d-raw/messages/devicebound?api-version=2021-04-12',
      headers: { authorization: deviceToken(hub, key, 'http-c2d-raw') },
    });
  // The first message is still locked by the earlier receive; the refused ones were never queued.
  assert.equal((await receive()).text, 'only this one');
  assert.equal((await receive()).status, 204);
  const ghost = await rawRequest(hub, {
    method: 'POST',
    path: '/devices/http-nobody/messages/deviceBound',
    headers: { authorization: owner, 'content-type': 'application/json' },
    body: '{"body": "x"}',
  });
  assert.equal(ghost.status, 404, ghost.text);
  assert.match(JSON.parse(ghost.text).Message, /^ErrorCode:DeviceNotFound;/);
});

test('a wrong key gives the SDK UnauthorizedError and stores nothing', async () => {
  await createSasDevice(svc, hub, 'http-badkey');
  const client = await httpClient(`HostName=${hub.hostname};DeviceId=http-badkey;SharedAccessKey=${newKey()}`);
  await assert.rejects(client.sendEvent(new Message('should not be stored')), (err: Error) => {
    assert.equal(err.name, 'UnauthorizedError', `${err.name}: ${err.message}`);
    return true;
  });
  // An unknown device is refused the same way.
  const ghost = await httpClient(`HostName=${hub.hostname};DeviceId=http-ghost;SharedAccessKey=${newKey()}`);
  await assert.rejects(
    ghost.sendEvent(new Message('x')),
    (err: Error) => err.name === 'UnauthorizedError' || err.name === 'DeviceNotFoundError',
  );
  assert.equal((await eventsOf('http-badkey')).events.length, 0);
});

test('bad input over HTTPS gets clear IoT Hub errors, nothing is stored, and the hub keeps serving', async () => {
  const { key, cs } = await createSasDevice(svc, hub, 'http-bad-1');
  const { key: otherKey } = await createSasDevice(svc, hub, 'http-bad-2');
  const auth = deviceToken(hub, key, 'http-bad-1');
  const path = '/devices/http-bad-1/messages/events?api-version=2021-04-12';
  const post = (headers: Record<string, string>, body: string | Buffer) =>
    rawRequest(hub, { method: 'POST', path, headers: { authorization: auth, ...headers }, body });
  const refusal = (r: { status: number; text: string }, status: number, code: string, text?: RegExp) => {
    assert.equal(r.status, status, r.text);
    const m = (JSON.parse(r.text) as { Message: string }).Message;
    assert.ok(m.startsWith(`ErrorCode:${code};`), m);
    if (text) assert.match(m, text);
  };
  const batch = { 'content-type': 'application/vnd.microsoft.iothub.json' };

  refusal(
    await post(batch, '[{"body": "aGk=", "properties": {"iothub-app-a": "has "quote"}}]'),
    400,
    'ArgumentInvalid',
    /not valid JSON/,
  );
  refusal(await post(batch, '{"body": "aGk="}'), 400, 'ArgumentInvalid', /JSON array/);
  refusal(await post(batch, '[]'), 400, 'ArgumentInvalid', /no messages/);
  refusal(await post(batch, '[{"body": "%%% not base64"}]'), 400, 'ArgumentInvalid', /base64/);
  refusal(await post(batch, '[{"body": "aGk="}, {"properties": {}}]'), 400, 'ArgumentInvalid', /batch message 1/);
  refusal(await post({ 'IoTHub-Expiry': 'next tuesday-ish' }, 'x'), 400, 'ArgumentInvalid', /IoTHub-Expiry/);
  refusal(await post({}, Buffer.alloc(300 * 1024, 1)), 413, 'MessageTooLarge');
  // One oversized message refuses the whole batch: none of it is stored.
  refusal(
    await post(batch, JSON.stringify([{ body: 'c21hbGw=' }, { body: Buffer.alloc(300 * 1024).toString('base64') }])),
    413,
    'MessageTooLarge',
  );
  refusal(await rawRequest(hub, { method: 'POST', path, body: 'no credentials' }), 401, 'IotHubUnauthorizedAccess');
  // Another device's valid token does not open this device's path.
  refusal(
    await rawRequest(hub, {
      method: 'POST',
      path,
      headers: { authorization: deviceToken(hub, otherKey, 'http-bad-2') },
      body: 'x',
    }),
    401,
    'IotHubUnauthorizedAccess',
  );
  refusal(
    await rawRequest(hub, {
      method: 'POST',
      path,
      headers: { authorization: deviceToken(hub, key, 'http-bad-1', undefined, -60) },
      body: 'x',
    }),
    401,
    'IotHubUnauthorizedAccess',
  );
  refusal(
    await rawRequest(hub, {
      method: 'DELETE',
      path: '/devices/http-bad-1/messages/devicebound/no-such-lock?api-version=2021-04-12',
      headers: { authorization: auth },
    }),
    412,
    'DeviceMessageLockLost',
  );

  assert.equal((await eventsOf('http-bad-1')).events.length, 0, 'refused requests store nothing');

  // The SDK sees the size refusal as its own error type, and the same device still works.
  const client = await httpClient(cs);
  await assert.rejects(
    client.sendEvent(new Message(Buffer.alloc(300 * 1024, 2))),
    (err: Error) => err.name === 'MessageTooLargeError',
  );
  await client.sendEvent(new Message('still fine'));
  const [e] = await waitForEvents(svc, { device: 'http-bad-1' }, 1);
  assert.equal(Buffer.from(e!.body, 'base64').toString(), 'still fine');
});

test('an X.509 self-signed device sends telemetry over HTTPS with its client certificate', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-http-x509-'));
  try {
    const keyPath = join(dir, 'key.pem');
    const certPath = join(dir, 'cert.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        keyPath,
        '-out',
        certPath,
        '-subj',
        '/CN=http-x509-1',
        '-days',
        '2',
      ],
      { stdio: 'ignore' },
    );
    const fingerprint = execFileSync('openssl', ['x509', '-in', certPath, '-noout', '-fingerprint', '-sha1'], {
      encoding: 'utf8',
    });
    const thumbprint = fingerprint.split('=')[1]!.trim().replace(/:/g, '');
    await svc.createDevice({
      deviceId: 'http-x509-1',
      authentication: {
        type: 'selfSigned',
        x509Thumbprint: { primaryThumbprint: thumbprint, secondaryThumbprint: null },
      },
    });
    const [cert, key] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]);

    const client = Client.fromConnectionString(`HostName=${hub.hostname};DeviceId=http-x509-1;x509=true`, Http);
    clients.push(client);
    await client.setOptions({ ca: hub.caPem, cert, key, ...RECEIVE_EVERY_SECOND });
    await client.sendEvent(new Message('signed by my own key'));
    const [e] = await waitForEvents(svc, { device: 'http-x509-1' }, 1);
    assert.equal(Buffer.from(e!.body, 'base64').toString(), 'signed by my own key');
    assert.notEqual(JSON.parse(String(e!.annotations['iothub-connection-auth-method'])).type, 'sas');

    // The same certificate does not open another device.
    const res = await rawRequest(hub, {
      method: 'POST',
      path: '/devices/http-tel-1/messages/events?api-version=2021-04-12',
      cert,
      key,
      body: 'x',
    });
    assert.equal(res.status, 401, res.text);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
