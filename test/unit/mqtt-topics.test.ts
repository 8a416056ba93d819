import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createRequire } from 'node:module';
import {
  BagError,
  c2dTopic,
  decodeBag,
  identityFromClientId,
  parsePublishTopic,
  parseSubscription,
  parseUsername,
} from '../../src/protocols/mqtt/topics.ts';

test('publish topics: telemetry of devices and modules (bag, trailing slash), twin, method responses, unknown', () => {
  assert.deepEqual(parsePublishTopic('devices/d1/messages/events/'), {
    kind: 'telemetry',
    identity: { deviceId: 'd1' },
    bag: '',
  });
  assert.deepEqual(parsePublishTopic('devices/d1/messages/events'), {
    kind: 'telemetry',
    identity: { deviceId: 'd1' },
    bag: '',
  });
  assert.deepEqual(parsePublishTopic('devices/d1/modules/m/messages/events/%24.on=out/'), {
    kind: 'telemetry',
    identity: { deviceId: 'd1', moduleId: 'm' },
    bag: '%24.on=out',
  });
  assert.deepEqual(parsePublishTopic('$iothub/twin/GET/?$rid=42'), { kind: 'twin-get', rid: '42' });
  assert.deepEqual(parsePublishTopic('$iothub/twin/PATCH/properties/reported/?$rid=a-b'), {
    kind: 'twin-patch-reported',
    rid: 'a-b',
  });
  assert.deepEqual(parsePublishTopic('$iothub/methods/res/200/?$rid=7'), {
    kind: 'method-response',
    rid: '7',
    status: 200,
  });
  assert.equal(parsePublishTopic('$iothub/twin/GET/').kind, 'unknown');
  assert.equal(parsePublishTopic('devices/d1/messages/devicebound/x').kind, 'unknown');
  assert.equal(parsePublishTopic('hello').kind, 'unknown');
});

test('property bags: system keys ($ sent as %24), application properties, URL decoding, bad encoding', () => {
  const m = decodeBag(
    '%24.mid=m1&%24.cid=c1&%24.uid=u&%24.to=%2Fdevices%2Fx&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00.000Z&%24.sub=comp&%24.ifid=urn%3Ax&%24.on=o&k%20ey=v%26al&empty=',
    Buffer.from('b'),
  );
  assert.equal(m.messageId, 'm1');
  assert.equal(m.correlationId, 'c1');
  assert.equal(m.userId, 'u');
  assert.equal(m.to, '/devices/x');
  assert.equal(m.contentType, 'application/json');
  assert.equal(m.contentEncoding, 'utf-8');
  assert.equal(m.expiry, Date.parse('2030-01-01T00:00:00.000Z'));
  assert.equal(m.component, 'comp');
  assert.equal(m.interfaceId, 'urn:x');
  assert.equal(m.outputName, 'o');
  assert.deepEqual(m.properties, { 'k ey': 'v&al', empty: '' });
  assert.deepEqual(decodeBag('$.mid=raw', Buffer.alloc(0)).messageId, 'raw');
  assert.throws(() => decodeBag('a=%E0%A4%A', Buffer.alloc(0)), BagError);
  assert.throws(() => decodeBag('%24.exp=yesterday', Buffer.alloc(0)), BagError);
});

test('a devicebound topic reads back through the official SDK parser', () => {
  const require = createRequire(import.meta.url);
  const { Mqtt } = require('azure-iot-device-mqtt');
  const topic = c2dTopic(
    'dev',
    {
      body: Buffer.alloc(0),
      messageId: 'id/1',
      correlationId: 'c=1',
      expiry: Date.parse('2031-02-03T04:05:06.000Z'),
      properties: { 'a&b': 'c=d', x: 'é' },
    },
    'full',
  );
  assert.equal(topic.split('/').length, 5, 'the bag is one topic segment');
  const received: any[] = [];
  const fake = Object.create(Mqtt.prototype);
  fake.emit = (_e: string, msg: unknown) => received.push(msg);
  Mqtt.prototype._onC2DMessage.call(fake, topic, Buffer.from('x'));
  const msg = received[0];
  assert.equal(msg.messageId, 'id/1');
  assert.equal(msg.correlationId, 'c=1');
  assert.equal(msg.expiryTimeUtc, '2031-02-03T04:05:06.000Z');
  assert.equal(msg.properties.getValue('a&b'), 'c=d');
  assert.equal(msg.properties.getValue('x'), 'é');
  assert.equal(msg.properties.getValue('iothub-ack'), 'full');
});

test('subscriptions, client ids and user names', () => {
  assert.deepEqual(parseSubscription('devices/d/messages/devicebound/#'), { kind: 'c2d', identity: { deviceId: 'd' } });
  assert.deepEqual(parseSubscription('devices/d/modules/m/inputs/#'), {
    kind: 'inputs',
    identity: { deviceId: 'd', moduleId: 'm' },
  });
  assert.deepEqual(parseSubscription('$iothub/methods/POST/#'), { kind: 'methods' });
  assert.deepEqual(parseSubscription('$iothub/twin/res/#'), { kind: 'twin-responses' });
  assert.deepEqual(parseSubscription('$iothub/twin/PATCH/properties/desired/#'), { kind: 'desired' });
  assert.equal(parseSubscription('#'), undefined);
  assert.equal(parseSubscription('devices/d/messages/devicebound/+'), undefined);

  assert.deepEqual(identityFromClientId('d1'), { deviceId: 'd1' });
  assert.deepEqual(identityFromClientId('d1/m1'), { deviceId: 'd1', moduleId: 'm1' });
  assert.equal(identityFromClientId(''), undefined);
  assert.equal(identityFromClientId('d/m/x'), undefined);

  for (const u of [
    'hub.local/d1/?api-version=2021-04-12&DeviceClientType=x',
    'hub.local/d1/api-version=2021-04-12',
    'hub.local/d1',
    'hub.local/d1/',
  ]) {
    const p = parseUsername(u)!;
    assert.equal(p.host, 'hub.local');
    assert.equal(p.clientId, 'd1', u);
  }
  const mod = parseUsername('hub.local/d1/m1/?api-version=2021-04-12&model-id=dtmi%3Ax%3B1')!;
  assert.equal(mod.clientId, 'd1/m1');
  assert.equal(mod.query.get('model-id'), 'dtmi:x;1');
  assert.equal(parseUsername('nohost'), undefined);
});
