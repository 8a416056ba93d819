/**
 * MQTT session rules, with a raw MQTT 3.1.1 client over TLS: persistent sessions keep
 * subscriptions and unacknowledged C2D messages, clean sessions do not, one connection per
 * identity, keep-alive at 1.5x, subscription QoS.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startHub } from '../../src/hub/hub.ts';
import { randomLoopback } from '../helpers/hub.ts';
import {
  createSasDevice,
  deviceToken,
  rawConnect,
  startTestHub,
  waitFor,
  within,
  type TestHub,
} from './mqtt-helpers.ts';

let hub: TestHub;
const cleanups: Array<() => unknown> = [];
before(async () => {
  hub = await startTestHub({ after: (fn) => cleanups.push(fn) });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

function device(id: string): { id: string; token: string } {
  const { key } = createSasDevice(hub, id);
  return { id, token: deviceToken(hub, id, key) };
}

test('CleanSession=0: subscriptions survive a reconnect; C2D sent while offline arrives without resubscribing', async (t) => {
  const d = device('persistent');
  const a = await rawConnect(t, hub, { clientId: d.id, password: d.token, clean: false });
  assert.equal(a.connack.returnCode, 0);
  assert.equal(a.connack.sessionPresent, false);
  a.send({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: [
      { topic: `devices/${d.id}/messages/devicebound/#`, qos: 1 },
      { topic: '$iothub/methods/POST/#', qos: 0 },
    ],
  });
  assert.deepEqual((await a.next('suback')).granted, [1, 0]);
  a.send({ cmd: 'disconnect' });
  await a.closed;

  await hub.engine.sendC2D(d.id, {
    body: Buffer.from('while you were away'),
    messageId: 'away-1',
    properties: { k: 'v' },
  });
  const b = await rawConnect(t, hub, { clientId: d.id, password: d.token, clean: false });
  assert.equal(b.connack.sessionPresent, true);
  const pub = await b.next('publish');
  assert.equal(pub.qos, 1);
  assert.equal(pub.payload.toString(), 'while you were away');
  assert.match(pub.topic, new RegExp(`^devices/${d.id}/messages/devicebound/`));
  assert.match(pub.topic, /%24\.mid=away-1/);
  assert.match(pub.topic, /k=v/);
  b.send({ cmd: 'puback', messageId: pub.messageId });
  await waitFor(() => hub.engine.c2d.depth(d.id) === 0, 'completion by PUBACK');

  // The methods subscription came back too.
  const call = hub.engine.invokeMethod(
    { deviceId: d.id },
    { methodName: 'hello', payload: { n: 1 }, responseTimeoutInSeconds: 10 },
  );
  const req = await b.next('publish', 5000, (p) => p.topic.startsWith('$iothub/methods/POST/'));
  assert.equal(req.qos, 0);
  assert.deepEqual(JSON.parse(req.payload.toString()), { n: 1 });
  const rid = /\$rid=([^&]+)/.exec(req.topic)![1];
  assert.match(req.topic, /^\$iothub\/methods\/POST\/hello\/\?\$rid=/);
  b.send({
    cmd: 'publish',
    topic: `$iothub/methods/res/200/?$rid=${rid}`,
    payload: Buffer.from('{"ok":true}'),
    qos: 0,
  });
  assert.deepEqual(await call, { status: 200, payload: { ok: true } });
});

test('an unacknowledged QoS 1 C2D message is delivered again (DUP) after a reconnect of a persistent session', async (t) => {
  const d = device('redeliver');
  const a = await rawConnect(t, hub, { clientId: d.id, password: d.token, clean: false });
  a.send({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: [{ topic: `devices/${d.id}/messages/devicebound/#`, qos: 1 }],
  });
  await a.next('suback');
  await hub.engine.sendC2D(d.id, { body: Buffer.from('ack me'), properties: {} }, { ack: 'full' });
  const first = await a.next('publish');
  assert.equal(first.dup, false);
  a.socket.destroy(); // no PUBACK: as if the device crashed
  await a.closed;
  await waitFor(() => !hub.engine.isConnected({ deviceId: d.id }), 'the hub to see the drop');

  const b = await rawConnect(t, hub, { clientId: d.id, password: d.token, clean: false });
  const again = await b.next('publish');
  assert.equal(again.payload.toString(), 'ack me');
  assert.equal(again.dup, true);
  assert.equal(hub.engine.c2d.depth(d.id), 1, 'still queued until acknowledged');
  b.send({ cmd: 'puback', messageId: again.messageId });
  await waitFor(() => hub.engine.c2d.depth(d.id) === 0, 'completion');
});

test('CleanSession=1 starts afresh: no subscriptions, C2D stays queued until the device subscribes', async (t) => {
  const d = device('clean');
  const a = await rawConnect(t, hub, { clientId: d.id, password: d.token, clean: false });
  a.send({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: [{ topic: `devices/${d.id}/messages/devicebound/#`, qos: 1 }],
  });
  await a.next('suback');
  a.send({ cmd: 'disconnect' });
  await a.closed;
  await hub.engine.sendC2D(d.id, { body: Buffer.from('later'), properties: {} });

  const b = await rawConnect(t, hub, { clientId: d.id, password: d.token, clean: true });
  assert.equal(b.connack.sessionPresent, false);
  await assert.rejects(b.next('publish', 500), /no publish/);
  b.send({
    cmd: 'subscribe',
    messageId: 2,
    subscriptions: [{ topic: `devices/${d.id}/messages/devicebound/#`, qos: 2 }],
  });
  assert.deepEqual((await b.next('suback')).granted, [1], 'QoS 2 subscription granted as QoS 1');
  const pub = await b.next('publish');
  assert.equal(pub.payload.toString(), 'later');
  b.send({ cmd: 'puback', messageId: pub.messageId });
});

test('one connection per identity: a new connection closes the old one; connectionState follows', async (t) => {
  const d = device('twice');
  const a = await rawConnect(t, hub, { clientId: d.id, password: d.token });
  assert.equal(hub.node.registry.isConnected(d.id), true);
  const b = await rawConnect(t, hub, { clientId: d.id, password: d.token });
  assert.equal(b.connack.returnCode, 0);
  assert.equal(await within(a.closed, 2000), true, 'the first connection was closed');
  assert.equal(b.isClosed(), false);
  assert.equal(hub.node.registry.isConnected(d.id), true);
  b.send({ cmd: 'disconnect' });
  await b.closed;
  await waitFor(() => !hub.node.registry.isConnected(d.id), 'connectionState Disconnected');
});

test('keep-alive is enforced at 1.5x the interval; PINGREQ keeps a connection open', async (t) => {
  const quiet = device('quiet');
  const pinger = device('pinger');
  const q = await rawConnect(t, hub, { clientId: quiet.id, password: quiet.token, keepalive: 1 });
  const p = await rawConnect(t, hub, { clientId: pinger.id, password: pinger.token, keepalive: 1 });
  const started = Date.now();
  const timer = setInterval(() => p.send({ cmd: 'pingreq' }), 700);
  t.after(() => clearInterval(timer));
  assert.equal(await within(q.closed, 3000), true, 'the silent connection was closed');
  const after = Date.now() - started;
  assert.ok(after >= 1400, `closed after ${after} ms, not before 1.5 s`);
  await p.next('pingresp');
  await new Promise((r) => setTimeout(r, 1200));
  assert.equal(p.isClosed(), false, 'the pinging connection is still open');
});

test("subscriptions: unknown filters get 0x80, another device's C2D topic closes the connection", async (t) => {
  const d = device('subscriber');
  const c = await rawConnect(t, hub, { clientId: d.id, password: d.token });
  c.send({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: [
      { topic: 'some/thing/#', qos: 1 },
      { topic: '$iothub/twin/res/#', qos: 0 },
    ],
  });
  assert.deepEqual((await c.next('suback')).granted, [0x80, 0]);
  c.send({
    cmd: 'subscribe',
    messageId: 2,
    subscriptions: [{ topic: 'devices/someone-else/messages/devicebound/#', qos: 1 }],
  });
  assert.equal(await within(c.closed, 2000), true);
});

test('twin over raw MQTT: GET answered on $iothub/twin/res/200, PATCH on 204 with $version, a bad patch gets 400', async (t) => {
  const d = device('raw-twin');
  const c = await rawConnect(t, hub, { clientId: d.id, password: d.token });
  c.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$iothub/twin/res/#', qos: 0 }] });
  await c.next('suback');
  c.send({ cmd: 'publish', topic: '$iothub/twin/GET/?$rid=1', payload: Buffer.from(' '), qos: 0 });
  const got = await c.next('publish');
  assert.equal(got.topic, '$iothub/twin/res/200/?$rid=1');
  const twin = JSON.parse(got.payload.toString());
  assert.equal(typeof twin.desired.$version, 'number');
  assert.equal(typeof twin.reported.$version, 'number');
  c.send({
    cmd: 'publish',
    topic: '$iothub/twin/PATCH/properties/reported/?$rid=2',
    payload: Buffer.from('{"x":1}'),
    qos: 1,
    messageId: 7,
  });
  await c.next('puback');
  const patched = await c.next('publish');
  assert.equal(patched.topic, `$iothub/twin/res/204/?$rid=2&$version=${twin.reported.$version + 1}`);
  c.send({
    cmd: 'publish',
    topic: '$iothub/twin/PATCH/properties/reported/?$rid=3',
    payload: Buffer.from('not json'),
    qos: 0,
  });
  const bad = await c.next('publish');
  assert.equal(bad.topic, '$iothub/twin/res/400/?$rid=3');
  assert.ok(JSON.parse(bad.payload.toString()).errorCode);
  assert.equal(c.isClosed(), false);
});

test('a persistent session survives a hub restart: subscriptions and queued C2D are there after it', async (t) => {
  const address = randomLoopback();
  const dataDir = await mkdtemp(join(tmpdir(), 'strata-mqtt-restart-'));
  t.after(() => rm(dataDir, { recursive: true, force: true }));
  const start = async () => {
    const node = await startHub({ dataDir, hostname: address, bind: address, httpsPort: 0, mqttPort: 0 });
    t.after(() => node.close());
    return {
      node,
      engine: node.engine,
      events: node.events,
      address,
      caPem: node.tls.caPem,
      mqttPort: node.ports.mqtt,
    };
  };
  let h = await start();
  const { key } = createSasDevice(h, 'survivor');
  const a = await rawConnect(t, h, { clientId: 'survivor', password: deviceToken(h, 'survivor', key), clean: false });
  a.send({
    cmd: 'subscribe',
    messageId: 1,
    subscriptions: [{ topic: 'devices/survivor/messages/devicebound/#', qos: 1 }],
  });
  await a.next('suback');
  await h.engine.sendC2D('survivor', { body: Buffer.from('queued before the restart'), properties: {} });
  await a.next('publish'); // delivered, never acknowledged
  await h.node.close();
  await a.closed;

  h = await start();
  const b = await rawConnect(t, h, { clientId: 'survivor', password: deviceToken(h, 'survivor', key), clean: false });
  assert.equal(b.connack.sessionPresent, true);
  const pub = await b.next('publish');
  assert.equal(pub.payload.toString(), 'queued before the restart');
  b.send({ cmd: 'puback', messageId: pub.messageId });
  await waitFor(() => h.engine.c2d.depth('survivor') === 0, 'completion after the restart');
});

test('QoS 0 telemetry is stored without a PUBACK; the retain flag is ignored', async (t) => {
  const d = device('qos0');
  const c = await rawConnect(t, hub, { clientId: d.id, password: d.token });
  c.send({
    cmd: 'publish',
    topic: `devices/${d.id}/messages/events/%24.mid=q0&x=1`,
    payload: Buffer.from('fire and forget'),
    qos: 0,
    retain: true,
  });
  const events = await waitFor(async () => {
    const r = await hub.events.read({ deviceId: d.id });
    return r.events.length > 0 ? r.events : undefined;
  }, 'the QoS 0 event');
  assert.equal(events[0].message.body.toString(), 'fire and forget');
  assert.equal(events[0].message.messageId, 'q0');
  assert.deepEqual(events[0].message.properties, { x: '1' });
  assert.equal(
    c.packets.some((p) => p.cmd === 'puback'),
    false,
  );
  assert.equal(c.isClosed(), false);
});
