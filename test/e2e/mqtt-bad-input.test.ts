/**
 * Bad input over MQTT, each in its own test: the offending connection is closed as IoT Hub does
 * (or refused with the CONNACK code), nothing of it is stored, and a well-behaved device
 * connected all along keeps being served.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import mqtt from 'mqtt-packet';
import {
  connectPacket,
  countEvents,
  createSasDevice,
  deviceToken,
  eventsOf,
  rawConnect,
  rawSocket,
  startTestHub,
  within,
  type RawClient,
  type TestHub,
} from './mqtt-helpers.ts';

let hub: TestHub;
let bystander: RawClient & { connack: any };
let nextId = 100;
const cleanups: Array<() => unknown> = [];
const ctx = { after: (fn: () => unknown) => cleanups.push(fn) };

before(async () => {
  hub = await startTestHub(ctx);
  const { key } = createSasDevice(hub, 'bystander');
  bystander = await rawConnect(ctx, hub, { clientId: 'bystander', password: deviceToken(hub, 'bystander', key) });
  assert.equal(bystander.connack.returnCode, 0);
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

/** The bystander still gets its QoS 1 telemetry stored and acknowledged. */
async function bystanderStillServed(): Promise<void> {
  const before = await countEvents(hub, 'bystander');
  const messageId = nextId++;
  bystander.send({
    cmd: 'publish',
    topic: 'devices/bystander/messages/events/',
    payload: Buffer.from('still here'),
    qos: 1,
    messageId,
  });
  const ack = await bystander.next('puback', 5000, (p) => p.messageId === messageId);
  assert.equal(ack.messageId, messageId);
  assert.equal(await countEvents(hub, 'bystander'), before + 1);
}

async function connected(t: { after(fn: () => unknown): void }, id: string): Promise<RawClient> {
  const { key } = createSasDevice(hub, id);
  const c = await rawConnect(t, hub, { clientId: id, password: deviceToken(hub, id, key) });
  assert.equal(c.connack.returnCode, 0);
  return c;
}

test('malformed packets close only that connection', async (t) => {
  // A remaining length longer than four bytes, after a good CONNECT.
  const a = await connected(t, 'malformed-1');
  a.writeRaw(Buffer.from([0x32, 0xff, 0xff, 0xff, 0xff, 0x01]));
  assert.equal(await within(a.closed, 2000), true);
  // Garbage instead of CONNECT.
  const b = await rawSocket(t, hub);
  b.writeRaw(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  assert.equal(await within(b.closed, 2000), true);
  // A packet announcing 100 MB is refused before it is buffered.
  const c = await connected(t, 'malformed-2');
  c.writeRaw(Buffer.from([0x32, 0x80, 0x80, 0x80, 0x30]));
  assert.equal(await within(c.closed, 2000), true);
  assert.equal(await countEvents(hub, 'malformed-1'), 0);
  assert.equal(await countEvents(hub, 'malformed-2'), 0);
  await bystanderStillServed();
});

test('a QoS 2 PUBLISH closes the connection and stores nothing', async (t) => {
  const c = await connected(t, 'qos2');
  c.send({
    cmd: 'publish',
    topic: 'devices/qos2/messages/events/',
    payload: Buffer.from('exactly once?'),
    qos: 2,
    messageId: 1,
  });
  assert.equal(await within(c.closed, 2000), true);
  assert.equal(
    c.packets.some((p) => p.cmd === 'pubrec'),
    false,
  );
  assert.equal(await countEvents(hub, 'qos2'), 0);
  await bystanderStillServed();
});

test('an oversized message (body + properties over 256 KiB) closes the connection and stores nothing; exactly 256 KiB is accepted', async (t) => {
  const c = await connected(t, 'big');
  c.send({
    cmd: 'publish',
    topic: 'devices/big/messages/events/',
    payload: Buffer.alloc(256 * 1024, 0x61),
    qos: 1,
    messageId: 1,
  });
  assert.equal((await c.next('puback')).messageId, 1, 'a 256 KiB body without properties fits');
  // The same body with one property is over the limit: properties count.
  c.send({
    cmd: 'publish',
    topic: 'devices/big/messages/events/a=b',
    payload: Buffer.alloc(256 * 1024, 0x61),
    qos: 1,
    messageId: 2,
  });
  assert.equal(await within(c.closed, 3000), true);
  assert.equal(
    c.packets.some((p) => p.cmd === 'puback' && p.messageId === 2),
    false,
  );
  assert.equal(await countEvents(hub, 'big'), 1);

  const d = await connected(t, 'bigger');
  d.send({
    cmd: 'publish',
    topic: 'devices/bigger/messages/events/',
    payload: Buffer.alloc(300 * 1024, 0x62),
    qos: 1,
    messageId: 1,
  });
  assert.equal(await within(d.closed, 3000), true);
  assert.equal(await countEvents(hub, 'bigger'), 0);
  await bystanderStillServed();
});

test("publishing on another device's topic disconnects and stores nothing", async (t) => {
  createSasDevice(hub, 'victim');
  const c = await connected(t, 'impostor');
  c.send({
    cmd: 'publish',
    topic: 'devices/victim/messages/events/',
    payload: Buffer.from('forged'),
    qos: 1,
    messageId: 1,
  });
  assert.equal(await within(c.closed, 2000), true);
  assert.equal(await countEvents(hub, 'victim'), 0);
  assert.equal(await countEvents(hub, 'impostor'), 0);
  // A module topic of the same device is another identity as well.
  const m = await connected(t, 'impostor-2');
  m.send({
    cmd: 'publish',
    topic: 'devices/impostor-2/modules/x/messages/events/',
    payload: Buffer.from('forged'),
    qos: 0,
  });
  assert.equal(await within(m.closed, 2000), true);
  assert.equal(await countEvents(hub, 'impostor-2'), 0);
  await bystanderStillServed();
});

/** A QoS 1 PUBLISH with its topic given as raw bytes, which mqtt-packet's generator would not write. */
function publishRaw(topic: Buffer, messageId: number, payload: Buffer): Buffer {
  const length = 2 + topic.length + 2 + payload.length;
  return Buffer.concat([
    Buffer.from([0x32, length, topic.length >> 8, topic.length & 255]),
    topic,
    Buffer.from([messageId >> 8, messageId & 255]),
    payload,
  ]);
}

test('a topic name 3.1.1 forbids (not UTF-8, U+0000) or packet id 0 closes the connection; nothing is stored', async (t) => {
  const base = 'devices/forbidden/messages/events/';
  const cases: Array<[string, Buffer]> = [
    ['not UTF-8', publishRaw(Buffer.concat([Buffer.from(base), Buffer.from([0x6b, 0x3d, 0xff])]), 1, Buffer.from('x'))],
    ['U+0000', publishRaw(Buffer.from(`${base}k=\u0000`), 1, Buffer.from('x'))],
    ['packet id 0', publishRaw(Buffer.from(base), 0, Buffer.from('x'))],
  ];
  const { key } = createSasDevice(hub, 'forbidden');
  for (const [name, bytes] of cases) {
    const c = await rawConnect(t, hub, { clientId: 'forbidden', password: deviceToken(hub, 'forbidden', key) });
    assert.equal(c.connack.returnCode, 0);
    c.writeRaw(bytes);
    assert.equal(await within(c.closed, 2000), true, name);
    assert.equal(
      c.packets.some((p) => p.cmd === 'puback'),
      false,
      name,
    );
  }
  assert.equal(await countEvents(hub, 'forbidden'), 0);
  await bystanderStillServed();
});

test('a PUBLISH written a byte at a time, and several in one write, are stored and acknowledged', async (t) => {
  const c = await connected(t, 'chunks');
  const one = publishRaw(Buffer.from('devices/chunks/messages/events/k=%C3%A9'), 1, Buffer.from('{"n":1}'));
  for (const b of one) {
    c.writeRaw(Buffer.from([b]));
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.equal((await c.next('puback', 5000, (p) => p.messageId === 1)).messageId, 1);
  c.writeRaw(
    Buffer.concat(
      [2, 3, 4].map((id) => publishRaw(Buffer.from('devices/chunks/messages/events/'), id, Buffer.from('x'))),
    ),
  );
  for (const id of [2, 3, 4]) await c.next('puback', 5000, (p) => p.messageId === id);
  // A `+` in a property bag (3.1.1 calls it a wildcard) is taken as before, read as a space.
  c.writeRaw(publishRaw(Buffer.from('devices/chunks/messages/events/k=a+b'), 5, Buffer.from('x')));
  await c.next('puback', 5000, (p) => p.messageId === 5);
  const events = await eventsOf(hub, 'chunks', 5);
  assert.equal(events.length, 5);
  assert.equal(events[4]!.message.properties.k, 'a b');
  await bystanderStillServed();
});

test('PUBLISHes pipelined behind CONNECT, one cut across the CONNACK, are all stored and acknowledged', async (t) => {
  // The connection reads with mqtt-packet until connected and hands over once nothing is half read.
  const { key } = createSasDevice(hub, 'pipelined');
  const c = await rawSocket(t, hub);
  const topic = Buffer.from('devices/pipelined/messages/events/');
  const second = publishRaw(topic, 2, Buffer.from('two'));
  c.writeRaw(
    Buffer.concat([
      mqtt.generate(connectPacket(hub, { clientId: 'pipelined', password: deviceToken(hub, 'pipelined', key) })),
      publishRaw(topic, 1, Buffer.from('one')),
      second.subarray(0, 10),
    ]),
  );
  assert.equal((await c.next('connack')).returnCode, 0);
  c.writeRaw(Buffer.concat([second.subarray(10), publishRaw(topic, 3, Buffer.from('three'))]));
  for (const id of [1, 2, 3]) await c.next('puback', 5000, (p) => p.messageId === id);
  c.writeRaw(publishRaw(topic, 4, Buffer.from('four')));
  await c.next('puback', 5000, (p) => p.messageId === 4);
  const events = await eventsOf(hub, 'pipelined', 4);
  assert.deepEqual(
    events.map((e) => Buffer.from(e.message.body).toString()),
    ['one', 'two', 'three', 'four'],
  );
});

test('an unknown topic closes the connection', async (t) => {
  const c = await connected(t, 'lost');
  c.send({ cmd: 'publish', topic: 'devices/lost/somewhere', payload: Buffer.from('x'), qos: 1, messageId: 1 });
  assert.equal(await within(c.closed, 2000), true);
  assert.equal(await countEvents(hub, 'lost'), 0);
  await bystanderStillServed();
});

test('an expired token is refused with CONNACK 5 (not authorized); a wrong signature too; a bad protocol level with 1', async (t) => {
  const { key } = createSasDevice(hub, 'expired');
  const expired = await rawConnect(t, hub, { clientId: 'expired', password: deviceToken(hub, 'expired', key, -10) });
  assert.equal(expired.connack.returnCode, 5);
  assert.equal(await within(expired.closed, 2000), true);
  const forged = await rawConnect(t, hub, {
    clientId: 'expired',
    password: deviceToken(hub, 'expired', Buffer.alloc(32).toString('base64')),
  });
  assert.equal(forged.connack.returnCode, 5);
  // A token for another device does not open this one.
  const { key: otherKey } = createSasDevice(hub, 'expired-other');
  const swapped = await rawConnect(t, hub, {
    clientId: 'expired',
    password: deviceToken(hub, 'expired-other', otherKey),
  });
  assert.equal(swapped.connack.returnCode, 5);
  const none = await rawConnect(t, hub, { clientId: 'expired' });
  assert.equal(none.connack.returnCode, 4, 'no credentials: bad user name or password');
  const old = await rawSocket(t, hub);
  old.send({
    cmd: 'connect',
    protocolId: 'MQIsdp',
    protocolVersion: 3,
    clientId: 'expired',
    clean: true,
    keepalive: 60,
    password: Buffer.from('x'),
    username: 'u',
  });
  assert.equal((await old.next('connack')).returnCode, 1);
  assert.equal(await countEvents(hub, 'expired'), 0);
  await bystanderStillServed();
});
