import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import rhea from 'rhea';
import { SEPARATE_PAYLOAD_BYTES } from '../../src/protocols/amqp/rhea-writer.ts';

const require = createRequire(import.meta.url);
const frames = require('rhea/lib/frames.js') as {
  write_frame(f: unknown): Buffer;
  read_frame(b: Buffer): { payload?: Buffer; performative: { handle: number; delivery_id: number } };
  amqp_frame(channel: number, performative: unknown, payload: Buffer): unknown;
  transfer(fields: Record<string, unknown>): unknown;
};

test('rhea still writes what it wrote before once its writer grows without zero-filling', () => {
  // A transfer frame whose payload is far larger than the writer's first buffer, and a message
  // with many small values (the writer grows step by step, with sizes filled in afterwards).
  const payload = randomBytes(300 * 1024);
  const frame = frames.write_frame(
    frames.amqp_frame(
      3,
      frames.transfer({ handle: 1, delivery_id: 7, delivery_tag: Buffer.from('t'), message_format: 0 }),
      payload,
    ),
  );
  assert.equal(frame.readUInt32BE(0), frame.length, 'the frame size is filled in');
  const read = frames.read_frame(frame);
  assert.deepEqual([read.performative.handle, read.performative.delivery_id], [1, 7]);
  assert.deepEqual(read.payload, payload);

  const properties = Object.fromEntries(
    Array.from({ length: 500 }, (_, i) => [`key-${i}`, `value-${i}-${'x'.repeat(i % 40)}`]),
  );
  const message = {
    message_id: 'm-1',
    application_properties: properties,
    body: rhea.message.data_section(randomBytes(70 * 1024)),
  };
  const decoded = rhea.message.decode(
    rhea.message.encode(message as never) as unknown as Buffer,
  ) as unknown as typeof message;
  assert.deepEqual(decoded.application_properties, properties);
  assert.equal(decoded.message_id, 'm-1');
});

test('a large transfer payload goes to the socket as it is, after its frame head; the bytes are those of the whole frame', () => {
  const Transport = require('rhea/lib/transport.js') as new (
    id: string,
    protocol: number,
    frameType: number,
    handler: unknown,
  ) => {
    header_sent: unknown;
    encode(frame: unknown): void;
    write(socket: { write(b: Buffer): void }): void;
  };
  const t = new Transport('test', 0, 0, {});
  t.header_sent = { protocol_id: 0 };
  const large = randomBytes(SEPARATE_PAYLOAD_BYTES + 1);
  const small = randomBytes(100);
  const f1 = frames.amqp_frame(
    1,
    frames.transfer({ handle: 0, delivery_id: 1, delivery_tag: Buffer.from('a'), message_format: 0x80013700 }),
    large,
  );
  const f2 = frames.amqp_frame(
    1,
    frames.transfer({ handle: 0, delivery_id: 2, delivery_tag: Buffer.from('b'), message_format: 0 }),
    small,
  );
  const written: Buffer[] = [];
  t.encode(f1);
  t.encode(f2);
  t.write({ write: (b) => written.push(b) });
  assert.equal(written.length, 3, 'head, payload, then the small frame whole');
  assert.equal(written[1], large, 'the payload itself, not a copy');
  assert.deepEqual(Buffer.concat(written), Buffer.concat([frames.write_frame(f1), frames.write_frame(f2)]));
  const read = frames.read_frame(Buffer.concat(written.slice(0, 2)));
  assert.equal(read.performative.delivery_id, 1);
  assert.deepEqual(read.payload, large);
});
