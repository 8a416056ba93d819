import { test } from 'node:test';
import assert from 'node:assert/strict';
import rhea, { type Message as AmqpMessage } from 'rhea';
import { BatchError, encodeBatch, messagesOfBatch } from '../../src/protocols/amqp/batch.ts';
import { fromAmqp, toAmqp } from '../../src/protocols/amqp/message.ts';

const encode = (m: AmqpMessage) => rhea.message.encode(m) as unknown as Buffer;

test('a batch carries whole messages and gives them back in order with every property', () => {
  const messages = [0, 1, 2].map((i) =>
    toAmqp({ body: Buffer.from(`body-${i}`), properties: { n: String(i) }, messageId: `m-${i}`, contentType: 'application/json', outputName: i === 2 ? 'out1' : undefined, component: i === 1 ? 'thermostat' : undefined }),
  );
  const out = messagesOfBatch(encodeBatch(messages.map(encode))).map(fromAmqp);
  assert.equal(out.length, 3);
  assert.deepEqual(out.map((m) => m.body.toString()), ['body-0', 'body-1', 'body-2']);
  assert.deepEqual(out.map((m) => m.messageId), ['m-0', 'm-1', 'm-2']);
  assert.deepEqual(out.map((m) => m.properties), [{ n: '0' }, { n: '1' }, { n: '2' }]);
  assert.equal(out[1]!.component, 'thermostat');
  assert.equal(out[2]!.outputName, 'out1');
  assert.equal(out[0]!.contentType, 'application/json');
});

test('a batch of one message is a batch too', () => {
  const out = messagesOfBatch(encodeBatch([encode(toAmqp({ body: Buffer.from('only'), properties: {} }))]));
  assert.deepEqual(out.map((m) => fromAmqp(m).body.toString()), ['only']);
});

test('what is not a batch is refused with the reason', () => {
  assert.throws(() => messagesOfBatch(encode({ body: 'a string value, not data sections' } as AmqpMessage)), (err: Error) => err instanceof BatchError && /body of data sections/.test(err.message));
  assert.throws(() => messagesOfBatch(Buffer.from([0x00, 0x53])), (err: Error) => err instanceof BatchError && /cannot be decoded/.test(err.message));
  const bad = encode({ body: rhea.message.data_sections([Buffer.from([0xff, 0x01]), encode({ body: rhea.message.data_section(Buffer.from('x')) } as AmqpMessage)]) } as AmqpMessage);
  assert.throws(() => messagesOfBatch(bad), (err: Error) => err instanceof BatchError && /message 0 of the batch/.test(err.message));
});
