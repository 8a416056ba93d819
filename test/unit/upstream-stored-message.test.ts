import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AuthResult } from '../../src/model/identity.ts';
import type { Message } from '../../src/model/message.ts';
import {
  messageOfStored,
  reviveSenderMessage,
  routeSourceOf,
  senderIdentity,
  storedMessageOf,
} from '../../src/store/sender-message.ts';
import { Backoff } from '../../src/upstream/backoff.ts';
import { basePath } from '../../src/upstream/amqp-identity-links.ts';
import { audienceOf } from '../../src/upstream/amqp-target-auth.ts';

const moduleAuth: AuthResult = {
  identity: { deviceId: 'leaf-1', moduleId: 'filter' },
  kind: 'sas',
  generationId: '6373',
  authMethod: '{"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}',
};

test('a stored message gives back exactly the message its sender sent', () => {
  const sent: Message = {
    body: Buffer.from([0, 1, 2, 255]),
    messageId: 'm-1',
    correlationId: 'c-1',
    userId: 'u-1',
    to: '/devices/leaf-1/messages/events',
    expiry: 1_900_000_000_123,
    contentType: 'application/json',
    contentEncoding: 'utf-8',
    outputName: 'out1',
    component: 'thermostat1',
    interfaceId: 'dtmi:com:example;1',
    creationTime: '2024-05-01T10:00:00.000Z',
    properties: { temperatureAlert: 'true', 'with space': 'a&b=c' },
  };
  const stored = storedMessageOf(moduleAuth, sent, Date.parse('2024-05-01T10:00:01.000Z'));
  assert.equal(stored.sender, 'leaf-1/filter');
  assert.equal(stored.source, '/messages/modules/filter/outputs/out1');
  // Routes read these by their route-language names.
  assert.equal(stored.systemProperties.connectionDeviceId, 'leaf-1');
  assert.equal(stored.systemProperties.connectionModuleId, 'filter');
  assert.equal(stored.systemProperties.connectionDeviceGenerationId, '6373');
  assert.equal(stored.systemProperties.contentType, 'application/json');
  assert.equal(stored.systemProperties.enqueuedTime, '2024-05-01T10:00:01.000Z');
  assert.deepEqual(messageOfStored(stored), sent);
});

test('absent fields stay absent, and the store record round trip changes nothing', () => {
  const plain: Message = { body: Buffer.from('x'), properties: {} };
  const stored = storedMessageOf(
    { identity: { deviceId: 'd' }, kind: 'sas', authMethod: '{}' },
    plain,
    1_700_000_000_000,
  );
  assert.equal(stored.source, '/messages');
  assert.equal(stored.sender, 'd');
  assert.equal(stored.systemProperties.connectionModuleId, undefined);
  assert.equal('connectionDeviceGenerationId' in stored.systemProperties, false);
  const full: Message = {
    body: Buffer.from('{"t":1}'),
    messageId: 'm"1',
    correlationId: 'c\\1',
    userId: 'u',
    to: '/x',
    expiry: 1_900_000_000_000,
    contentType: 'application/json',
    contentEncoding: 'utf-8',
    outputName: 'o',
    component: 'c',
    interfaceId: 'dtmi:x;1',
    creationTime: '2024-05-01T10:00:00.000Z',
    properties: { 'a b': 'é', empty: '' },
  };
  for (const [auth, sent] of [
    [moduleAuth, full],
    [{ identity: { deviceId: 'd' }, kind: 'sas', authMethod: '{}' } as AuthResult, plain],
  ] as const) {
    const original = storedMessageOf(auth, sent, 1_700_000_000_123);
    const record = original.record();
    assert.notEqual(record[0], '{', 'a record is told apart from the store JSON by its first character');
    const back = reviveSenderMessage(record, sent.body);
    assert.deepEqual(messageOfStored(back), sent);
    assert.equal(back.sender, original.sender);
    assert.equal(back.source, original.source);
    assert.equal(back.enqueuedTime, original.enqueuedTime);
    assert.deepEqual(back.systemProperties, original.systemProperties);
  }
  assert.throws(() => reviveSenderMessage('9[]', Buffer.alloc(0)), /unknown stored message form/);
});

test('route sources, senders and addresses', () => {
  assert.equal(routeSourceOf({ identity: { deviceId: 'd', moduleId: 'm' } }, {}), '/messages/modules/m');
  assert.deepEqual(senderIdentity('d/m'), { deviceId: 'd', moduleId: 'm' });
  assert.deepEqual(senderIdentity('d'), { deviceId: 'd' });
  assert.equal(basePath({ deviceId: 'd', moduleId: 'm' }), '/devices/d/modules/m');
  assert.equal(
    audienceOf('hub.example', { deviceId: 'a b', moduleId: '$edgeHub' }),
    'hub.example/devices/a%20b/modules/%24edgeHub',
  );
});

test('the reconnect backoff doubles from 1 s to 30 s with jitter, and resets', () => {
  let r = 0;
  const b = new Backoff(1000, 30_000, () => r);
  const low = Array.from({ length: 8 }, () => b.next());
  assert.deepEqual(low, [1000, 1600, 3200, 6400, 12800, 24000, 24000, 24000]);
  b.reset();
  r = 1;
  const high = Array.from({ length: 7 }, () => b.next());
  assert.deepEqual(high, [1200, 2400, 4800, 9600, 19200, 30000, 30000]);
  assert.equal(b.attempts, 7);
});
