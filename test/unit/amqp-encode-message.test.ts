import { test } from 'node:test';
import assert from 'node:assert/strict';
import rhea, { type Message as AmqpMessage } from 'rhea';
import type { Message } from '../../src/model/message.ts';
import { encodeMessage } from '../../src/protocols/amqp/encode-message.ts';
import { fromAmqp, toAmqp } from '../../src/protocols/amqp/message.ts';

const viaRhea = (m: Message) =>
  fromAmqp(rhea.message.decode(rhea.message.encode(toAmqp(m)) as unknown as Buffer) as unknown as AmqpMessage);
const viaOurs = (m: Message) => fromAmqp(rhea.message.decode(encodeMessage(m)) as unknown as AmqpMessage);

const cases: Array<[string, Message]> = [
  ['body only', { body: Buffer.from('hello'), properties: {} }],
  ['empty body', { body: Buffer.alloc(0), properties: {} }],
  [
    'every system property',
    {
      body: Buffer.alloc(300, 7),
      properties: { a: '1', 'space key': 'vålue ✓', empty: '' },
      messageId: 'msg-1',
      correlationId: 'corr-1',
      userId: 'user-1',
      to: '/devices/d1/messages/events',
      expiry: Date.UTC(2030, 0, 2, 3, 4, 5, 678),
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      outputName: 'out1',
      component: 'thermostat1',
      interfaceId: 'dtmi:com:example:Thermostat;1',
    },
  ],
  [
    'uuid ids',
    {
      body: Buffer.from('x'),
      properties: {},
      messageId: '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
      correlationId: 'C0FFEE00-0000-4000-8000-000000000001',
    },
  ],
  ['only a late property (gaps are nulls)', { body: Buffer.from('x'), properties: {}, contentEncoding: 'utf-8' }],
  [
    'non-ASCII everywhere',
    {
      body: Buffer.from('温度'),
      properties: { ключ: '值 😀' },
      messageId: 'идентификатор',
      component: 'コンポーネント',
    },
  ],
  ['large body', { body: Buffer.alloc(200 * 1024, 3), properties: { n: '1' } }],
  ['only a user id', { body: Buffer.from('x'), properties: {}, userId: 'u' }],
  ['only a to', { body: Buffer.from('x'), properties: {}, to: '/devices/d/messages/events' }],
  ['only a correlation id', { body: Buffer.from('x'), properties: {}, correlationId: 'c' }],
  ['only a content type', { body: Buffer.from('x'), properties: {}, contentType: 'text/plain' }],
  ['only an expiry', { body: Buffer.from('x'), properties: {}, expiry: Date.UTC(2031, 5, 6) }],
  ['message id and expiry', { body: Buffer.from('x'), properties: {}, messageId: 'm', expiry: Date.UTC(2031, 5, 6) }],
];

for (const [name, m] of cases) {
  test(`encodeMessage reads back as rhea's encoding does: ${name}`, () => {
    assert.deepEqual(viaOurs(m), viaRhea(m));
    const back = viaOurs(m);
    assert.deepEqual(back.body, m.body);
    assert.deepEqual(back.properties, m.properties);
    for (const k of [
      'messageId',
      'userId',
      'to',
      'expiry',
      'contentType',
      'contentEncoding',
      'outputName',
      'component',
      'interfaceId',
    ] as const) {
      assert.equal(back[k], m[k], k);
    }
    assert.equal(back.correlationId?.toLowerCase(), m.correlationId?.toLowerCase());
  });
}

test('uuid-shaped ids go out as AMQP uuids', () => {
  const bytes = encodeMessage({
    body: Buffer.from('x'),
    properties: {},
    messageId: '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
  });
  assert.ok(bytes.includes(Buffer.from('981b4e28ba2fa111d2883f0016d3cca427', 'hex')));
});
