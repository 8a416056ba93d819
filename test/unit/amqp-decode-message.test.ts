import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import rhea, { type Message as AmqpMessage } from 'rhea';
import { BatchError, encodeBatch, readBatch } from '../../src/protocols/amqp/batch.ts';
import { decodeBatch } from '../../src/protocols/amqp/decode-message.ts';
import { encodeMessage } from '../../src/protocols/amqp/encode-message.ts';
import { fromAmqp } from '../../src/protocols/amqp/message.ts';
import type { Message } from '../../src/model/message.ts';

const encode = (m: AmqpMessage) => rhea.message.encode(m) as unknown as Buffer;
const uuid = () => rhea.string_to_uuid('0f8fad5b-d9cb-469f-a165-70867728950e');

/** What rhea and fromAmqp make of the same bytes: the reference the fast reader must match. */
function viaRhea(bytes: Buffer) {
  return readBatch(encodeBatch([bytes])).messages.map(fromAmqp)[0];
}

const shapes: Array<[string, AmqpMessage]> = [
  ['body only', { body: rhea.message.data_section(Buffer.from('x')) }],
  ['no body at all', { message_id: 'm' } as AmqpMessage],
  [
    'every property',
    {
      message_id: 'id-1',
      user_id: Buffer.from('user') as never,
      to: '/devices/d/messages/events',
      subject: 's',
      reply_to: 'r',
      correlation_id: 'c-1',
      content_type: 'application/json',
      content_encoding: 'utf-8',
      absolute_expiry_time: new Date(1_900_000_000_123),
      creation_time: new Date(1_700_000_000_456),
      group_id: 'g',
      group_sequence: 4,
      reply_to_group_id: 'rg',
      application_properties: {
        a: 'b',
        'iothub-outputname': 'out1',
        '\u6e29\u5ea6': '\u{1F321}',
        '2': 'numeric-looking key',
        empty: '',
      },
      message_annotations: { 'dt-subject': 'thermostat1', 'iothub-interface-id': 'dtmi:x;1', 'x-opt-other': 5 },
      body: rhea.message.data_section(randomBytes(300)),
    } as AmqpMessage,
  ],
  [
    'uuid ids, 16-byte user id',
    {
      message_id: uuid(),
      correlation_id: uuid(),
      user_id: randomBytes(16) as never,
      body: rhea.message.data_section(Buffer.alloc(0)),
    } as AmqpMessage,
  ],
  [
    'binary ids',
    {
      message_id: Buffer.from('bin-id') as never,
      correlation_id: randomBytes(16) as never,
      body: rhea.message.data_section(Buffer.from('y')),
    } as AmqpMessage,
  ],
  [
    'empty strings where fromAmqp tests truthiness',
    {
      message_id: '',
      to: '',
      content_type: '',
      application_properties: { 'iothub-outputname': '' },
      body: rhea.message.data_section(Buffer.from('z')),
    } as AmqpMessage,
  ],
  [
    'null annotation and property values',
    {
      message_annotations: { 'dt-subject': null },
      application_properties: { k: null },
      body: rhea.message.data_section(Buffer.from('n')),
    } as never,
  ],
  [
    'header, delivery annotations and footer around',
    {
      header: { durable: true, priority: 4, ttl: 1000 },
      delivery_annotations: { 'x-opt-d': 'v' },
      footer: { f: 'x' },
      body: rhea.message.data_section(Buffer.from('h')),
    } as never,
  ],
  ['several data sections', { body: rhea.message.data_sections([Buffer.from('ab'), Buffer.from('cd')]) } as never],
  // Kinds the fast reader leaves to rhea: still the same result.
  [
    'numeric and boolean properties',
    {
      application_properties: { n: 5, t: true, big: 2 ** 40 },
      body: rhea.message.data_section(Buffer.from('p')),
    } as never,
  ],
  [
    'ulong message id',
    { message_id: rhea.types.wrap_ulong(42), body: rhea.message.data_section(Buffer.from('u')) } as never,
  ],
  ['amqp-value body', { body: 'a string value' } as never],
  ['map body', { body: { a: 1 } } as never],
];

for (const [name, message] of shapes) {
  test(`the fast reader gives what rhea gives: ${name}`, () => {
    const bytes = encode(message);
    const { messages } = decodeBatch(encodeBatch([bytes]));
    assert.deepEqual(messages[0], viaRhea(bytes));
  });
}

test("Strata's own encoder round-trips through the fast reader, with the batch's annotations", () => {
  const sent: Message[] = [
    { body: Buffer.alloc(256, 3), properties: {} },
    {
      body: Buffer.from('{}'),
      messageId: 'a1b2c3d4-0000-4000-8000-00000000abcd',
      correlationId: 'c',
      userId: 'u',
      to: '/t',
      expiry: 1_900_000_000_000,
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      outputName: 'o',
      component: 'c1',
      interfaceId: 'dtmi:y;1',
      properties: { p: 'q' },
    },
  ];
  const origin = { stream: 'store/0', prev: 7, seqs: [8, 9] };
  const { messages, annotations } = decodeBatch(encodeBatch(sent.map(encodeMessage), origin));
  assert.deepEqual(
    messages,
    sent.map((m) => viaRhea(encodeMessage(m))),
  );
  assert.deepEqual(messages[1], sent[1]);
  assert.deepEqual(annotations, {
    'x-opt-strata-stream': 'store/0',
    'x-opt-strata-prev': '7',
    'x-opt-strata-seqs': '8,9',
  });
});

test('broken bytes are refused as before: truncated messages, a batch that is not one', () => {
  const good = encode({
    message_id: 'x',
    application_properties: { a: 'b' },
    body: rhea.message.data_section(Buffer.from('body')),
  } as AmqpMessage);
  for (let cut = 1; cut < good.length; cut += 3) {
    const batch = encodeBatch([good.subarray(0, cut)]);
    let fast: unknown;
    let slow: unknown;
    try {
      fast = decodeBatch(batch).messages;
    } catch (err) {
      fast = err instanceof BatchError ? 'BatchError' : err;
    }
    try {
      slow = readBatch(batch).messages.map(fromAmqp);
    } catch (err) {
      slow = err instanceof BatchError ? 'BatchError' : err;
    }
    assert.deepEqual(fast, slow, `cut at ${cut}`);
  }
  assert.throws(
    () => decodeBatch(encode({ body: 'not data sections' } as AmqpMessage)),
    (err: Error) => err instanceof BatchError && /body of data sections/.test(err.message),
  );
  assert.throws(() => decodeBatch(Buffer.from([0x00, 0x53])), BatchError);
});
