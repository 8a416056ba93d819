import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Connection } from 'rhea';
import deviceSdk from 'azure-iot-device';
import amqpSdk from 'azure-iot-device-amqp';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import {
  createSasDevice,
  deviceToken,
  newKey,
  serviceClient,
  waitForEvents,
} from '../fixtures/service-messaging-helpers.ts';
import {
  openReceiver,
  openSender,
  putToken,
  rawTls,
  rheaConnect,
  sendAndSettle,
  waitFor,
} from '../fixtures/amqp-helpers.ts';
import { BATCH_FORMAT, encodeBatch } from '../../src/protocols/amqp/batch.ts';
import { encodeMessage } from '../../src/protocols/amqp/encode-message.ts';

/**
 * What a broken or hostile client gets: garbage bytes, a broken frame, a wrong token, an
 * unknown link address, an oversized message, a frame size no one should buffer. Each gets a
 * clear AMQP answer and a log line; the hub keeps serving everyone else.
 */

const { Client, Message } = deviceSdk;
const { Amqp } = amqpSdk;
type DeviceClient = InstanceType<typeof Client>;

let hub: HubProcess;
let svc: ServiceClient;
let healthy: DeviceClient;
let sent = 0;
const conns: Connection[] = [];
const clients: DeviceClient[] = [];

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
  const { cs } = await createSasDevice(svc, hub, 'bad-healthy');
  healthy = Client.fromConnectionString(cs, Amqp);
  clients.push(healthy);
  await healthy.setOptions({ ca: hub.caPem });
  await healthy.open();
});

after(async () => {
  for (const c of conns) c.close();
  for (const c of clients) await c.close().catch(() => undefined);
  svc?.close();
  await hub?.stop();
});

/** The hub still serves the device connected before the trouble, and new connections. */
async function stillServing(): Promise<void> {
  await healthy.sendEvent(new Message(`still ${++sent}`));
  const events = await waitForEvents(svc, { device: 'bad-healthy' }, sent);
  assert.equal(Buffer.from(events[sent - 1]!.body, 'base64').toString(), `still ${sent}`);
  const c = await rheaConnect(hub);
  conns.push(c);
  await openSender(c, '$cbs');
}

function logHas(re: RegExp): boolean {
  return hub
    .output()
    .split('\n')
    .some((l) => re.test(l));
}

test('garbage bytes get the AMQP protocol header back, the connection closes, a log line says why', async () => {
  const { answer, closed } = await rawTls(hub, 5671, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  assert.ok(closed, 'the hub closed the connection');
  assert.equal(answer.subarray(0, 4).toString('latin1'), 'AMQP', 'answered with the header it speaks');
  assert.equal(answer.length, 8);
  await waitFor('the log line', () => logHas(/AMQP protocol error/) || undefined);
  assert.ok(logHas(/Invalid protocol header for AMQP/));
  await stillServing();
});

test('a broken frame after a valid header is closed with amqp:decode-error', async () => {
  const header = Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 1, 0, 0]);
  // A frame of 16 bytes whose type (0x77) is no AMQP frame type.
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 16, 2, 0x77, 0, 0]), randomBytes(8)]);
  const { answer, closed } = await rawTls(hub, 5671, Buffer.concat([header, frame]));
  assert.ok(closed);
  assert.equal(answer.subarray(0, 8).toString('hex'), header.toString('hex'), 'the hub answered the header');
  assert.ok(
    answer.includes(Buffer.from('amqp:decode-error')),
    `a close with amqp:decode-error: ${answer.toString('latin1')}`,
  );
  await stillServing();
});

test('a frame size no one should buffer closes the connection with amqp:connection:framing-error', async () => {
  const header = Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 1, 0, 0]);
  // Announces a 1 GB frame, then sends a little of it.
  const frame = Buffer.concat([Buffer.from([0x40, 0, 0, 0, 2, 0, 0, 0]), randomBytes(1024)]);
  const { answer, closed } = await rawTls(hub, 5671, Buffer.concat([header, frame]));
  assert.ok(closed);
  assert.ok(answer.includes(Buffer.from('amqp:connection:framing-error')), answer.toString('latin1'));
  await stillServing();
});

test('a wrong token: the device SDK sees UnauthorizedError and the CBS answer is 401', async () => {
  await createSasDevice(svc, hub, 'bad-token');
  const client = Client.fromConnectionString(
    `HostName=${hub.hostname};DeviceId=bad-token;SharedAccessKey=${newKey()}`,
    Amqp,
  );
  clients.push(client);
  await client.setOptions({ ca: hub.caPem });
  await assert.rejects(client.open(), { name: 'UnauthorizedError' });

  const c = await rheaConnect(hub);
  conns.push(c);
  const r = await putToken(c, deviceToken(hub, newKey(), 'bad-token'), `${hub.hostname}/devices/bad-token`);
  assert.equal(r.status, 401);
  assert.match(r.description, /signature does not match/);
  const garbage = await putToken(c, 'not a token at all', `${hub.hostname}/devices/bad-token`);
  assert.equal(garbage.status, 401);
  assert.match(garbage.description, /SharedAccessSignature/);
  const unknown = await putToken(c, deviceToken(hub, newKey(), 'nobody-here'), `${hub.hostname}/devices/nobody-here`);
  assert.equal(unknown.status, 404);
  await waitFor('the log line', () => logHas(/CBS put-token refused/) || undefined);
  await stillServing();
});

test('an unknown link address is refused with amqp:not-found naming the address; the connection stays usable', async () => {
  const c = await rheaConnect(hub);
  conns.push(c);
  await assert.rejects(openSender(c, '/no/such/node'), (err: Error & { condition?: string }) => {
    assert.equal(err.condition, 'amqp:not-found');
    assert.match(err.message, /\/no\/such\/node/);
    return true;
  });
  await assert.rejects(openReceiver(c, '/devices/x/bogus'), { condition: 'amqp:not-found' });
  await assert.rejects(openSender(c, ''), { condition: 'amqp:not-found' });
  const cbs = await openSender(c, '$cbs');
  assert.ok(cbs.is_open(), 'the same connection still attaches links');
  // The hub's log reaches this process through a pipe: wait for the line, do not race it.
  await waitFor('the refused-link log line', () => logHas(/refused link/) || undefined);
  await stillServing();
});

test('an oversized message is rejected with amqp:link:message-size-exceeded (MessageTooLargeError in the SDK); the link keeps working', async () => {
  const { cs } = await createSasDevice(svc, hub, 'bad-big');
  const client = Client.fromConnectionString(cs, Amqp);
  clients.push(client);
  await client.setOptions({ ca: hub.caPem });
  await client.open();
  await assert.rejects(client.sendEvent(new Message(Buffer.alloc(300 * 1024, 0x61))), { name: 'MessageTooLargeError' });
  await client.sendEvent(new Message('small'));
  const [e] = await waitForEvents(svc, { device: 'bad-big' }, 1);
  assert.equal(Buffer.from(e!.body, 'base64').toString(), 'small');

  // A raw client sees the condition itself.
  const d = await createSasDevice(svc, hub, 'bad-big-raw');
  const c = await rheaConnect(hub);
  conns.push(c);
  assert.equal(
    (await putToken(c, deviceToken(hub, d.key, 'bad-big-raw'), `${hub.hostname}/devices/bad-big-raw`)).status,
    200,
  );
  const s = await openSender(c, '/devices/bad-big-raw/messages/events');
  const r = await sendAndSettle(s, { body: Buffer.alloc(257 * 1024) });
  assert.equal(r.outcome, 'rejected');
  assert.equal(r.condition, 'amqp:link:message-size-exceeded');
  assert.match(r.description ?? '', /limit/);
  assert.equal((await sendAndSettle(s, { body: 'fits' })).outcome, 'accepted');

  // A message far beyond any limit is not buffered: the connection goes, with the reason.
  const closedWith = new Promise<string | undefined>((resolve) =>
    c.once('connection_error', (ctx) => resolve(ctx.connection.error?.condition)),
  );
  s.send({ body: Buffer.alloc(3 * 1024 * 1024) });
  assert.equal(await closedWith, 'amqp:link:message-size-exceeded');
  await stillServing();
});

test('IoT Hub batches: whole ones are stored in order; a broken message or a body that is no batch refuses the whole batch with amqp:decode-error; the link keeps working', async () => {
  const d = await createSasDevice(svc, hub, 'bad-batch');
  const c = await rheaConnect(hub);
  conns.push(c);
  assert.equal(
    (await putToken(c, deviceToken(hub, d.key, 'bad-batch'), `${hub.hostname}/devices/bad-batch`)).status,
    200,
  );
  const s = await openSender(c, '/devices/bad-batch/messages/events');
  const good = (text: string) => encodeMessage({ body: Buffer.from(text), properties: { k: text }, messageId: text });

  const whole = await sendAndSettle(s, encodeBatch([good('b1'), good('b2')]), BATCH_FORMAT);
  assert.equal(whole.outcome, 'accepted');

  const truncated = good('never');
  const broken = await sendAndSettle(
    s,
    encodeBatch([good('lost-1'), truncated.subarray(0, truncated.length - 3)]),
    BATCH_FORMAT,
  );
  assert.equal(broken.outcome, 'rejected');
  assert.equal(broken.condition, 'amqp:decode-error');
  assert.match(broken.description ?? '', /message 1 of the batch cannot be decoded/);

  const notBatch = await sendAndSettle(
    s,
    encodeMessage({ body: Buffer.from('plain'), properties: {} }).subarray(0, 5),
    BATCH_FORMAT,
  );
  assert.equal(notBatch.outcome, 'rejected');
  assert.equal(notBatch.condition, 'amqp:decode-error');

  assert.equal(
    (await sendAndSettle(s, encodeBatch([good('b3')]), BATCH_FORMAT)).outcome,
    'accepted',
    'the same link still takes batches',
  );
  const events = await waitForEvents(svc, { device: 'bad-batch' }, 3);
  assert.deepEqual(
    events.map((e) => Buffer.from(e.body, 'base64').toString()),
    ['b1', 'b2', 'b3'],
    'nothing of a refused batch was stored',
  );
  assert.deepEqual(
    events.map((e) => e.properties.k),
    ['b1', 'b2', 'b3'],
  );
  assert.ok(
    logHas(/unreadable telemetry refused.*message 1 of the batch|message 1 of the batch.*unreadable telemetry refused/),
    'a log line says why',
  );
  await stillServing();
});
