/**
 * Property-based fuzzing of the AMQP head over real TLS with fast-check: random bytes with and
 * without a protocol header, and, after a valid SASL PLAIN exchange, open and begin, random
 * frames of every performative (attaches to device, twin, method and service addresses,
 * transfers with random and hostile messages, dispositions, flows) with bytes mutated. The hub
 * stays up, closes each connection once the client has ended it, and a client that does it
 * right still authenticates and is served.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { createSasDevice, deviceToken, startTestHub, type TestHub } from '../e2e/mqtt-helpers.ts';
import { checkProperty, fuzzParams, fuzzTimeoutMs, objectPrototypeAdditions } from './fuzz-budget.ts';
import { AWAIT_REPLY, writeAndEnd, type WireStep } from './wire.ts';

const require = createRequire(import.meta.url);
const frames = require('rhea/lib/frames.js') as any;
const terminus = require('rhea/lib/terminus.js') as any;
const rhea = require('rhea') as any;

let hub: TestHub;
let fuzzKey: string;
const cleanups: Array<() => unknown> = [];
const ctx = { after: (fn: () => unknown) => cleanups.push(fn) };

before(async () => {
  hub = await startTestHub(ctx);
  fuzzKey = createSasDevice(hub, 'fuzzer').key;
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

const CLOSE_WITHIN_MS = 10_000;
const SASL_HEADER = Buffer.from('AMQP\x03\x01\x00\x00', 'latin1');
const AMQP_HEADER = Buffer.from('AMQP\x00\x01\x00\x00', 'latin1');
const amqpPort = () => hub.node.ports.amqp;

const amqpFrame = (channel: number, performative: unknown, payload?: Buffer): Buffer =>
  frames.write_frame(frames.amqp_frame(channel, performative, payload));

/** A valid start: SASL PLAIN as device `fuzzer` (waiting for the outcome, as clients do), the AMQP header, open and begin on channel 0. */
function validStart(): WireStep[] {
  const user = `fuzzer@sas.${hub.address.split('.')[0]}`;
  const token = deviceToken(hub, 'fuzzer', fuzzKey);
  const plain = Buffer.concat([Buffer.from([0]), Buffer.from(user), Buffer.from([0]), Buffer.from(token)]);
  return [
    SASL_HEADER,
    frames.write_frame(
      frames.sasl_frame(frames.sasl_init({ mechanism: 'PLAIN', initial_response: plain, hostname: hub.address })),
    ),
    AWAIT_REPLY,
    AMQP_HEADER,
    amqpFrame(0, frames.open({ container_id: 'fuzz', hostname: hub.address, max_frame_size: 65_536, channel_max: 8 })),
    amqpFrame(0, frames.begin({ next_outgoing_id: 0, incoming_window: 2048, outgoing_window: 2048 })),
    AWAIT_REPLY,
  ];
}

const address = fc.oneof(
  fc.constantFrom(
    '/devices/fuzzer/messages/events',
    '/devices/fuzzer/messages/deviceBound',
    '/devices/fuzzer/twin',
    '/devices/fuzzer/methods/devicebound',
    '/devices/other/messages/events',
    '/messages/events',
    '$cbs',
    '/messages/serviceBound/feedback',
    '$management',
    'amqps://x/devices/fuzzer/messages/events',
    '',
  ),
  fc.string({ maxLength: 60 }),
);

const hostileBody = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc.integer({ min: 1, max: 20_000 }).map((n) => Buffer.from(`{"a":${'['.repeat(n)}${']'.repeat(n)}}`)),
  fc.constantFrom('{"a":{"__proto__":{"polluted":1}}}', '{"$version":1}', 'null', '{').map((s) => Buffer.from(s)),
);

const message = fc
  .record({
    body: hostileBody,
    operation: fc.constantFrom('GET', 'PATCH', 'PUT', 'DELETE', 'put-token', 'x'),
    resource: fc.constantFrom('/properties/reported', '/notifications/twin/properties/desired', '', '/x'),
    correlationId: fc.oneof(fc.string({ maxLength: 10 }), fc.constant(undefined)),
    props: fc.dictionary(
      fc.string({ maxLength: 8 }),
      fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.boolean()),
    ),
  })
  .map((m) => {
    try {
      return rhea.message.encode({
        body: rhea.message.data_section(m.body),
        message_annotations: { operation: m.operation, resource: m.resource },
        application_properties: {
          ...m.props,
          operation: m.operation,
          type: 'servicebus.windows.net:sastoken',
          name: hub.address,
        },
        ...(m.correlationId !== undefined ? { correlation_id: m.correlationId } : {}),
      }) as Buffer;
    } catch {
      return m.body;
    }
  });

const handle = fc.integer({ min: 0, max: 5 });
const performative = fc.oneof(
  fc
    .record({
      name: fc.string({ maxLength: 10 }),
      handle,
      role: fc.boolean(),
      address,
      props: fc.constantFrom(undefined, { 'com.microsoft:client-version': 'fuzz' }),
    })
    .map((a) =>
      frames.attach({
        name: a.name,
        handle: a.handle,
        role: a.role,
        source: terminus.source({ address: a.address }).described(),
        target: terminus.target({ address: a.address }).described(),
        initial_delivery_count: 0,
        ...(a.props ? { properties: a.props } : {}),
      }),
    ),
  fc
    .record({
      handle,
      link_credit: fc.integer({ min: 0, max: 1000 }),
      delivery_count: fc.nat(),
      next_outgoing_id: fc.nat(),
      incoming_window: fc.nat(),
      outgoing_window: fc.nat(),
      drain: fc.boolean(),
    })
    .map((f) => frames.flow(f)),
  fc
    .record({ handle, delivery_id: fc.nat(), settled: fc.boolean(), more: fc.boolean() })
    .map((t) => ({ t, isTransfer: true })),
  fc
    .record({ role: fc.boolean(), first: fc.nat(), last: fc.nat(), settled: fc.boolean() })
    .map((d) => frames.disposition({ ...d, state: rhea.message.accepted().described() })),
  fc.record({ handle, closed: fc.boolean() }).map((d) => frames.detach(d)),
  fc.constantFrom(frames.end({}), frames.close({})),
);

const frameBytes = fc.tuple(fc.integer({ min: 0, max: 3 }), performative, message).map(([channel, p, payload]) => {
  try {
    if (p && (p as { isTransfer?: boolean }).isTransfer) {
      const t = (p as { t: Record<string, unknown> }).t;
      return amqpFrame(channel, frames.transfer({ ...t, delivery_tag: Buffer.from([1]), message_format: 0 }), payload);
    }
    return amqpFrame(channel, p);
  } catch {
    return Buffer.from([0, 0, 0, 8, 2, 0, 0, 0]);
  }
});

/** Bytes with a few replaced or cut off. */
const mutateAll = (chunks: WireStep[], edits: Array<[number, number, number]>): WireStep[] => {
  const out = chunks.map((c) => (c === AWAIT_REPLY ? c : Buffer.from(c)));
  for (const [which, at, value] of edits) {
    const c = out[which % out.length]!;
    if (c === AWAIT_REPLY || c.length === 0) continue;
    if (value < 0) out[which % out.length] = c.subarray(0, at % c.length);
    else c[at % c.length] = value;
  }
  return out;
};
const edits = fc.array(fc.tuple(fc.nat(), fc.nat(), fc.integer({ min: -1, max: 255 })), { maxLength: 4 });

const session = fc.oneof(
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 512 }).map((b) => [Buffer.from(b)]) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom(SASL_HEADER, AMQP_HEADER), fc.uint8Array({ maxLength: 512 }))
      .map(([h, b]) => [h, Buffer.from(b)]),
  },
  { weight: 2, arbitrary: fc.tuple(edits).map(([e]) => mutateAll(validStart(), e)) },
  {
    weight: 6,
    arbitrary: fc
      .tuple(fc.array(frameBytes, { maxLength: 8 }), edits, fc.boolean())
      .map(([fs, e, mutated]) => [
        ...validStart(),
        ...(mutated ? mutateAll(fs.length ? fs : [Buffer.alloc(0)], e) : fs),
      ]),
  },
);

test('the valid start the fuzzer builds on is accepted (SASL PLAIN outcome ok, open, begin)', async () => {
  const out = await writeAndEnd({
    address: hub.address,
    port: amqpPort(),
    ca: hub.caPem,
    chunks: validStart(),
    closeWithinMs: CLOSE_WITHIN_MS,
    lingerMs: 1500,
  });
  assert.ok(out.connected);
  // sasl-mechanisms, sasl-outcome (code 0), the AMQP header and open: the server's open names its container.
  assert.ok(
    out.received.includes(AMQP_HEADER),
    `no AMQP header after SASL: ${out.received.toString('latin1').slice(0, 200)}`,
  );
  // The server's open (descriptor 0x10) and begin (0x11) follow its AMQP header.
  const after = out.received.subarray(out.received.indexOf(AMQP_HEADER) + AMQP_HEADER.length);
  assert.ok(
    after.includes(Buffer.from([0x53, 0x10])) && after.includes(Buffer.from([0x53, 0x11])),
    `no open and begin: ${after.toString('latin1').slice(0, 200)}`,
  );
});

test('random and mutated AMQP to a live hub: every connection is closed after the client ends it, the hub keeps serving', {
  timeout: fuzzTimeoutMs(120_000),
}, async () => {
  await checkProperty(
    fc.asyncProperty(session, async (chunks) => {
      const out = await writeAndEnd({
        address: hub.address,
        port: amqpPort(),
        ca: hub.caPem,
        chunks,
        closeWithinMs: CLOSE_WITHIN_MS,
      });
      assert.ok(out.connected, 'the TLS handshake completed');
      assert.ok(out.closed, `the hub kept the connection open ${CLOSE_WITHIN_MS} ms after the client ended it`);
      assert.deepEqual(objectPrototypeAdditions(), [], 'Object.prototype of the hub process changed');
    }),
    fuzzParams(60),
  );

  // A real client still authenticates and gets a message accepted.
  const { key } = createSasDevice(hub, 'after-fuzz');
  const container = rhea.create_container();
  const conn = container.connect({
    host: hub.address,
    port: amqpPort(),
    transport: 'tls',
    ca: hub.caPem,
    servername: undefined,
    username: `after-fuzz@sas.${hub.address.split('.')[0]}`,
    password: deviceToken(hub, 'after-fuzz', key),
    hostname: hub.address,
    reconnect: false,
  });
  try {
    const sender = conn.open_sender({ target: { address: '/devices/after-fuzz/messages/events' } });
    await new Promise<void>((resolve, reject) => {
      sender.once('sendable', () => {
        const d = sender.send({ body: rhea.message.data_section(Buffer.from('hello')), message_id: 'after-fuzz-1' });
        void d;
      });
      sender.once('accepted', () => resolve());
      sender.once('rejected', (c: any) => reject(new Error(`rejected: ${JSON.stringify(c.delivery.remote_state)}`)));
      conn.once('connection_error', (c: any) =>
        reject(new Error(`connection error: ${JSON.stringify(c.connection.error)}`)),
      );
      conn.once('disconnected', (c: any) => reject(new Error(`disconnected: ${c.error?.message ?? ''}`)));
      setTimeout(() => reject(new Error('no acceptance within 15 s')), 15_000).unref();
    });
  } finally {
    conn.close();
  }
});
