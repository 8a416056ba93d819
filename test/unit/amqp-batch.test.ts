import { test } from 'node:test';
import assert from 'node:assert/strict';
import rhea, { type Message as AmqpMessage } from 'rhea';
import {
  BatchError,
  batchHead,
  encodeBatch,
  encodeBatchOf,
  encodeBatchOfSections,
  messagesOfBatch,
  originOfBatch,
  RELAY_SENDERS,
  readBatch,
  readRelaySenders,
} from '../../src/protocols/amqp/batch.ts';
import { decodeBatch } from '../../src/protocols/amqp/decode-message.ts';
import { DATA_HEADER, encodeDataSections, encodeMessage } from '../../src/protocols/amqp/encode-message.ts';
import type { Message } from '../../src/model/message.ts';
import { fromAmqp, toAmqp } from '../../src/protocols/amqp/message.ts';

const encode = (m: AmqpMessage) => rhea.message.encode(m) as unknown as Buffer;

test('a batch carries whole messages and gives them back in order with every property', () => {
  const messages = [0, 1, 2].map((i) =>
    toAmqp({
      body: Buffer.from(`body-${i}`),
      properties: { n: String(i) },
      messageId: `m-${i}`,
      contentType: 'application/json',
      outputName: i === 2 ? 'out1' : undefined,
      component: i === 1 ? 'thermostat' : undefined,
    }),
  );
  const out = messagesOfBatch(encodeBatch(messages.map(encode))).map(fromAmqp);
  assert.equal(out.length, 3);
  assert.deepEqual(
    out.map((m) => m.body.toString()),
    ['body-0', 'body-1', 'body-2'],
  );
  assert.deepEqual(
    out.map((m) => m.messageId),
    ['m-0', 'm-1', 'm-2'],
  );
  assert.deepEqual(
    out.map((m) => m.properties),
    [{ n: '0' }, { n: '1' }, { n: '2' }],
  );
  assert.equal(out[1]!.component, 'thermostat');
  assert.equal(out[2]!.outputName, 'out1');
  assert.equal(out[0]!.contentType, 'application/json');
});

test('a batch names where its messages come from in its annotations, and reads the same as rhea would write it', () => {
  const encoded = [Buffer.alloc(300, 1), Buffer.from('x')].map((body) => encode(toAmqp({ body, properties: {} })));
  const origin = { stream: 'store-\u00e9/0', prev: 41, seqs: [42, 57] };
  const ours = encodeBatch(encoded, origin);
  const { messages, annotations } = readBatch(ours);
  assert.deepEqual(originOfBatch(annotations, messages.length), origin);
  assert.deepEqual(
    messages.map((m) => fromAmqp(m).body),
    [Buffer.alloc(300, 1), Buffer.from('x')],
  );
  // rhea's own encoding of the same batch decodes to the same message.
  const theirs = encode({
    body: rhea.message.data_sections([...encoded]),
    message_annotations: {
      'x-opt-strata-stream': origin.stream,
      'x-opt-strata-prev': '41',
      'x-opt-strata-seqs': '42,57',
    },
  } as unknown as AmqpMessage);
  assert.deepEqual(rhea.message.decode(ours), rhea.message.decode(theirs));
});

test('messages encoded back to back as data sections are the same bytes as encoded one by one and batched', () => {
  const messages: Message[] = [
    { body: Buffer.alloc(300, 7), properties: {} },
    {
      body: Buffer.from('{"t":21.5}'),
      messageId: 'a1b2c3d4-0000-4000-8000-00000000abcd',
      correlationId: 'c\u00e9',
      userId: 'u',
      to: '/devices/d/messages/events',
      expiry: 1_900_000_000_000,
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      outputName: 'out1',
      component: 'thermostat1',
      interfaceId: 'dtmi:com:example;1',
      properties: { '\u6e29\u5ea6': '\u{1F321}', k: '' },
    },
    { body: Buffer.alloc(0), properties: { only: 'app' } },
  ];
  const { buf, at } = encodeDataSections(messages);
  assert.equal(at.length, messages.length + 1);
  messages.forEach((m, i) =>
    assert.deepEqual(buf.subarray(at[i]! + DATA_HEADER, at[i + 1]), encodeMessage(m), `message ${i}`),
  );
  const origin = { stream: 's/0', prev: 3, seqs: [4, 5, 9] };
  assert.deepEqual(encodeBatchOfSections(buf, origin), encodeBatch(messages.map(encodeMessage), origin));
  // Room left in front for the head: head + sections in place are the same batch.
  const head = batchHead(origin);
  const roomy = encodeDataSections(messages, head.length);
  assert.equal(roomy.at[0], head.length);
  head.copy(roomy.buf, 0);
  assert.deepEqual(roomy.buf.subarray(0, roomy.at[3]), encodeBatch(messages.map(encodeMessage), origin));
  const back = messagesOfBatch(encodeBatchOfSections(buf.subarray(at[1], at[3]))).map(fromAmqp);
  assert.deepEqual(
    back.map((m) => m.properties),
    [messages[1]!.properties, { only: 'app' }],
  );
  assert.equal(back[0]!.outputName, 'out1');
  assert.equal(back[0]!.interfaceId, 'dtmi:com:example;1');
});

test('a batch of one message is a batch too', () => {
  const out = messagesOfBatch(encodeBatch([encode(toAmqp({ body: Buffer.from('only'), properties: {} }))]));
  assert.deepEqual(
    out.map((m) => fromAmqp(m).body.toString()),
    ['only'],
  );
});

test('what is not a batch is refused with the reason', () => {
  assert.throws(
    () => messagesOfBatch(encode({ body: 'a string value, not data sections' } as AmqpMessage)),
    (err: Error) => err instanceof BatchError && /body of data sections/.test(err.message),
  );
  assert.throws(
    () => messagesOfBatch(Buffer.from([0x00, 0x53])),
    (err: Error) => err instanceof BatchError && /cannot be decoded/.test(err.message),
  );
  const bad = encode({
    body: rhea.message.data_sections([
      Buffer.from([0xff, 0x01]),
      encode({ body: rhea.message.data_section(Buffer.from('x')) } as AmqpMessage),
    ]),
  } as AmqpMessage);
  assert.throws(
    () => messagesOfBatch(bad),
    (err: Error) => err instanceof BatchError && /message 0 of the batch/.test(err.message),
  );
});

test('a relay batch names the sender of each message, and a wrong list is refused with the reason', () => {
  const messages: Message[] = [0, 1, 2].map((i) => ({ body: Buffer.from(`r-${i}`), properties: {} }));
  const payload = encodeBatchOf(messages, {
    stream: 's/0',
    prev: 4,
    seqs: [5, 7, 9],
    senders: ['leaf-1', 'leaf-2/mod:a', 'leaf-1'],
  });
  const { annotations } = decodeBatch(payload);
  assert.deepEqual(readRelaySenders(annotations, 3).senders, [
    { deviceId: 'leaf-1' },
    { deviceId: 'leaf-2', moduleId: 'mod:a' },
    { deviceId: 'leaf-1' },
  ]);
  assert.deepEqual(originOfBatch(annotations, 3), { stream: 's/0', prev: 4, seqs: [5, 7, 9] });
  assert.match(readRelaySenders(annotations, 4).problem!, /names 3 senders for 4 messages/);
  assert.match(readRelaySenders(undefined, 1).problem!, /must name its senders/);
  for (const key of ['', 'd/', '/m', 'd/m/x'])
    assert.match(
      readRelaySenders({ [RELAY_SENDERS]: key }, 1).problem!,
      /not a device or module id/,
      `"${key}" is refused`,
    );
});
