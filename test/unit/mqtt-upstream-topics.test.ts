import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import type { Message } from '../../src/model/message.ts';
import {
  decodeBag,
  encodeTelemetryBag,
  parseParentPublish,
  parsePublishTopic,
  telemetryTopic,
} from '../../src/protocols/mqtt/topics.ts';

/** The topic a gateway forwards a message on, read back by the parent's own parser. */
function roundTrip(
  identity: { deviceId: string; moduleId?: string },
  m: Message,
): { identity: unknown; message: Message } {
  const target = parsePublishTopic(telemetryTopic(identity, m));
  assert.equal(target.kind, 'telemetry');
  if (target.kind !== 'telemetry') throw new Error('unreachable');
  return { identity: target.identity, message: decodeBag(target.bag, m.body) };
}

test('every system property and awkward application properties survive the trip through a telemetry topic', () => {
  const m: Message = {
    body: Buffer.from('{"t":1}'),
    messageId: 'id/with?odd&chars=',
    correlationId: 'c;1 2',
    userId: 'user@x',
    to: '/devices/d1/messages/events',
    expiry: Date.parse('2031-02-03T04:05:06.789Z'),
    contentType: 'application/json',
    contentEncoding: 'utf-8',
    outputName: 'out 1',
    component: 'thermostat1',
    interfaceId: 'dtmi:com:example:Thermostat;1',
    creationTime: '2030-01-01T00:00:00.000Z',
    properties: { 'a&b': 'c=d', 'sl/ash': 'x/y', plus: '1+1', pct: '100%', '%24.not-system': 'x', empty: '', é: 'ü' },
  };
  const { identity, message } = roundTrip({ deviceId: 'd1' }, m);
  assert.deepEqual(identity, { deviceId: 'd1' });
  assert.deepEqual(message, m);
  assert.equal(telemetryTopic({ deviceId: 'd1' }, m).split('/').length, 5, 'the bag is one topic segment');
});

test('module telemetry and a message without properties', () => {
  const bare: Message = { body: Buffer.from('x'), properties: {} };
  assert.equal(telemetryTopic({ deviceId: 'd', moduleId: 'm' }, bare), 'devices/d/modules/m/messages/events/');
  const { identity, message } = roundTrip({ deviceId: 'd', moduleId: 'm' }, { ...bare, outputName: 'o' });
  assert.deepEqual(identity, { deviceId: 'd', moduleId: 'm' });
  assert.equal(message.outputName, 'o');
  assert.equal(encodeTelemetryBag(bare), '');
});

test('what the official device SDK puts in a telemetry topic decodes to what our encoder writes for the same message', () => {
  const require = createRequire(import.meta.url);
  const { Mqtt } = require('azure-iot-device-mqtt');
  const { Message: SdkMessage } = require('azure-iot-device');
  const sdk = new SdkMessage('body');
  sdk.messageId = 'm 1';
  sdk.correlationId = 'c&1';
  sdk.userId = 'u';
  sdk.to = '/x';
  sdk.contentType = 'application/json';
  sdk.contentEncoding = 'utf-8';
  sdk.expiryTimeUtc = new Date('2032-01-01T00:00:00.000Z');
  sdk.properties.add('k=1', 'v&2');
  sdk.properties.add('dt-subject', 'comp');
  const fake = Object.create(Mqtt.prototype);
  fake._topicTelemetryPublish = 'devices/dev/messages/events/';
  const sdkTopic: string = Mqtt.prototype._getEventTopicFromMessage.call(fake, sdk);
  const fromSdk = parsePublishTopic(sdkTopic);
  assert.equal(fromSdk.kind, 'telemetry');
  if (fromSdk.kind !== 'telemetry') return;
  const decoded = decodeBag(fromSdk.bag, Buffer.from('body'));
  const ours = parsePublishTopic(telemetryTopic({ deviceId: 'dev' }, decoded));
  assert.equal(ours.kind, 'telemetry');
  if (ours.kind !== 'telemetry') return;
  assert.deepEqual(decodeBag(ours.bag, Buffer.from('body')), decoded);
  assert.equal(decoded.component, 'comp');
  assert.equal(decoded.properties['k=1'], 'v&2');
});

test('topics the parent publishes to a device, as the gateway reads them', () => {
  assert.deepEqual(parseParentPublish('$iothub/twin/res/204/?$rid=7&$version=12'), {
    kind: 'twin-response',
    status: 204,
    rid: '7',
    version: 12,
  });
  assert.deepEqual(parseParentPublish('$iothub/twin/res/200/?$rid=a%20b'), {
    kind: 'twin-response',
    status: 200,
    rid: 'a b',
    version: undefined,
  });
  assert.deepEqual(parseParentPublish('$iothub/twin/PATCH/properties/desired/?$version=3'), {
    kind: 'desired',
    version: 3,
  });
  assert.deepEqual(parseParentPublish('$iothub/methods/POST/reboot/?$rid=42'), {
    kind: 'method',
    methodName: 'reboot',
    rid: '42',
  });
  assert.deepEqual(parseParentPublish('devices/d1/messages/devicebound/%24.mid=1&k=v'), {
    kind: 'c2d',
    deviceId: 'd1',
    bag: '%24.mid=1&k=v',
  });
  assert.deepEqual(parseParentPublish('devices/d1/modules/m/inputs/in1/k=v'), {
    kind: 'input',
    deviceId: 'd1',
    moduleId: 'm',
    inputName: 'in1',
    bag: 'k=v',
  });
  assert.equal(parseParentPublish('$iothub/methods/POST/x').kind, 'unknown');
  assert.equal(parseParentPublish('elsewhere/x').kind, 'unknown');
});
