/**
 * Property-based fuzzing of the MQTT head over real TLS with fast-check: random bytes, valid
 * packets mutated byte by byte, and, after a good CONNECT, random packets of every kind (twin,
 * method and telemetry topics with random and hostile payloads, odd subscriptions, wrong packet
 * ids) go to a live hub's MQTT listener. The hub stays up, closes each connection once the
 * client has ended it, and a bystander connected throughout and a new client are still served.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import mqttPacket from 'mqtt-packet';
import {
  connectPacket,
  createSasDevice,
  deviceToken,
  rawConnect,
  startTestHub,
  type RawClient,
  type TestHub,
} from '../e2e/mqtt-helpers.ts';
import { checkProperty, fuzzParams, fuzzTimeoutMs, objectPrototypeAdditions } from './fuzz-budget.ts';
import { writeAndEnd } from './wire.ts';

let hub: TestHub;
let fuzzKey: string;
let bystander: RawClient;
const cleanups: Array<() => unknown> = [];
const ctx = { after: (fn: () => unknown) => cleanups.push(fn) };

before(async () => {
  hub = await startTestHub(ctx);
  fuzzKey = createSasDevice(hub, 'fuzzer').key;
  const { key } = createSasDevice(hub, 'bystander');
  bystander = await rawConnect(ctx, hub, { clientId: 'bystander', password: deviceToken(hub, 'bystander', key) });
  // A long run (npm run fuzz) outlasts the keep-alive: the hub rightly drops a silent client.
  const ping = setInterval(() => bystander.send({ cmd: 'pingreq' }), 20_000);
  cleanups.push(() => clearInterval(ping));
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

const CLOSE_WITHIN_MS = 10_000;

function fuzzerConnect(): Buffer {
  return mqttPacket.generate(connectPacket(hub, { clientId: 'fuzzer', password: deviceToken(hub, 'fuzzer', fuzzKey) }));
}

const hostileJson = fc.oneof(
  fc.json({ depthSize: 'small' }),
  fc.integer({ min: 1, max: 20_000 }).map((n) => `{"a":${'['.repeat(n)}${']'.repeat(n)}}`),
  fc.constantFrom(
    '{"a":{"__proto__":{"polluted":1}}}',
    '{"$version":1}',
    '{"a.b":1}',
    'null',
    '[]',
    '{',
    '',
    '{"x":"' + 'y'.repeat(40_000) + '"}',
  ),
);

const topic = fc.oneof(
  fc.constantFrom(
    'devices/fuzzer/messages/events/',
    'devices/fuzzer/messages/events/a=b&$.ct=application%2Fjson&$.ce=utf-8',
    'devices/fuzzer/messages/events/%ZZ=%',
    'devices/other/messages/events/',
    'devices/fuzzer/modules/m/messages/events/',
    '$iothub/twin/PATCH/properties/reported/?$rid=1',
    '$iothub/twin/PATCH/properties/reported/?$rid=',
    '$iothub/twin/GET/?$rid=2',
    '$iothub/twin/GET/',
    '$iothub/methods/res/200/?$rid=1',
    '$iothub/methods/res/abc/?$rid=',
    '$iothub/twin/PATCH/properties/desired/?$rid=3',
    '#',
    '',
  ),
  fc.string({ maxLength: 80 }),
  fc.string({ maxLength: 40 }).map((s) => `devices/fuzzer/messages/events/${s}`),
);

const filter = fc.oneof(
  fc.constantFrom(
    'devices/fuzzer/messages/devicebound/#',
    '$iothub/twin/res/#',
    '$iothub/methods/POST/#',
    '$iothub/twin/PATCH/properties/desired/#',
    '#',
    '+/+',
    'devices/other/messages/devicebound/#',
    '',
  ),
  fc.string({ maxLength: 40 }),
);

const packetId = fc.oneof(fc.integer({ min: 1, max: 65_535 }), fc.constant(0));

/** Packets a connected client may send, including ones it must not. */
/** Twin requests with hostile documents (one packet the hub must answer, not close on). */
const twinRequest = fc.record({
  cmd: fc.constant('publish'),
  topic: fc.constantFrom('$iothub/twin/PATCH/properties/reported/?$rid=9', '$iothub/twin/GET/?$rid=8'),
  payload: hostileJson.map((x) => Buffer.from(x)),
  qos: fc.constantFrom(0, 1),
  messageId: fc.integer({ min: 1, max: 65_535 }),
});

const afterConnect = fc.oneof(
  twinRequest,
  fc.record({
    cmd: fc.constant('publish'),
    topic,
    payload: fc.oneof(
      hostileJson.map((s) => Buffer.from(s)),
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
    ),
    qos: fc.constantFrom(0, 1, 2),
    messageId: packetId,
    retain: fc.boolean(),
    dup: fc.boolean(),
  }),
  fc.record({
    cmd: fc.constant('subscribe'),
    messageId: packetId,
    subscriptions: fc.array(fc.record({ topic: filter, qos: fc.constantFrom(0, 1, 2) }), {
      minLength: 1,
      maxLength: 4,
    }),
  }),
  fc.record({
    cmd: fc.constant('unsubscribe'),
    messageId: packetId,
    unsubscriptions: fc.array(filter, { minLength: 1, maxLength: 3 }),
  }),
  fc.record({ cmd: fc.constantFrom('puback', 'pubrec', 'pubrel', 'pubcomp'), messageId: packetId }),
  fc.record({ cmd: fc.constantFrom('pingreq', 'disconnect', 'pingresp') }),
  fc.constant({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'again', clean: true, keepalive: 0 }),
);

function encode(p: object): Buffer {
  try {
    return mqttPacket.generate(p as mqttPacket.Packet);
  } catch {
    // mqtt-packet refuses some shapes outright; send its first byte alone, a truncated packet.
    return Buffer.from([0x30]);
  }
}

/** Valid bytes with a few of them replaced, cut or repeated. */
const mutate = (bytes: fc.Arbitrary<Buffer>) =>
  fc
    .tuple(
      bytes,
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('set', 'cut', 'dup')), {
        maxLength: 5,
      }),
    )
    .map(([b, edits]) => {
      let out = Buffer.from(b);
      for (const [at, value, kind] of edits) {
        if (out.length === 0) break;
        const i = at % out.length;
        if (kind === 'set') out[i] = value;
        else if (kind === 'cut') out = out.subarray(0, i);
        else out = Buffer.concat([out.subarray(0, i), out.subarray(i - Math.min(i, 8))]);
      }
      return out;
    });

const session = fc.oneof(
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 512 }).map((b) => [Buffer.from(b)]) },
  { weight: 2, arbitrary: mutate(fc.constant(null).map(() => fuzzerConnect())).map((b) => [b]) },
  {
    weight: 5,
    arbitrary: fc
      .tuple(fc.array(afterConnect, { maxLength: 8 }), fc.boolean(), fc.uint8Array({ maxLength: 64 }))
      .map(([packets, garbageTail, tail]) => [
        fuzzerConnect(),
        // Twin answers go only to a client subscribed to them.
        encode({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$iothub/twin/res/#', qos: 0 }] }),
        ...packets.map(encode),
        ...(garbageTail ? [Buffer.from(tail)] : []),
      ]),
  },
  {
    weight: 1,
    arbitrary: fc.array(afterConnect, { minLength: 1, maxLength: 4 }).map((packets) => packets.map(encode)),
  },
  // Well-formed twin traffic only: nothing else closes the connection before the hub answers.
  {
    weight: 2,
    arbitrary: fc
      .array(twinRequest, { minLength: 1, maxLength: 4 })
      .map((packets) => [
        fuzzerConnect(),
        encode({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$iothub/twin/res/#', qos: 0 }] }),
        ...packets.map(encode),
      ]),
  },
);

test('random and mutated MQTT to a live hub: every connection is closed after the client ends it, the hub keeps serving', {
  timeout: fuzzTimeoutMs(120_000),
}, async () => {
  await checkProperty(
    fc.asyncProperty(session, async (chunks) => {
      // A moment before ending: twin answers come after a registry write.
      const out = await writeAndEnd({
        address: hub.address,
        port: hub.mqttPort,
        ca: hub.caPem,
        chunks,
        closeWithinMs: CLOSE_WITHIN_MS,
        lingerMs: 150,
      });
      assert.ok(out.connected, 'the TLS handshake completed');
      assert.ok(out.closed, `the hub kept the connection open ${CLOSE_WITHIN_MS} ms after the client ended it`);
      // Bad input is the client's fault: a twin answer is never a 5xx.
      const answers: string[] = [];
      const parser = mqttPacket.parser({ protocolVersion: 4 });
      parser.on('packet', (p) => {
        if (p.cmd === 'publish') answers.push(p.topic);
      });
      parser.on('error', () => undefined);
      parser.parse(out.received);
      const serverErrors = answers.filter((t) => /^\$iothub\/twin\/res\/5\d\d\//.test(t));
      assert.deepEqual(serverErrors, [], 'twin answers with a server error');
      // The hub runs in this process: input that reached a merge would show here.
      assert.deepEqual(objectPrototypeAdditions(), [], 'Object.prototype of the hub process changed');
    }),
    fuzzParams(60),
  );

  // A bystander connected all along still gets its telemetry acknowledged...
  bystander.send({
    cmd: 'publish',
    topic: 'devices/bystander/messages/events/',
    payload: Buffer.from('still here'),
    qos: 1,
    messageId: 7,
  });
  assert.equal((await bystander.next('puback', 10_000, (p) => p.messageId === 7)).messageId, 7);
  // ...and a new client connects and is served.
  const { key } = createSasDevice(hub, 'after-fuzz');
  const c = await rawConnect(ctx, hub, { clientId: 'after-fuzz', password: deviceToken(hub, 'after-fuzz', key) });
  assert.equal(c.connack.returnCode, 0);
  c.send({
    cmd: 'publish',
    topic: 'devices/after-fuzz/messages/events/',
    payload: Buffer.from('hello'),
    qos: 1,
    messageId: 1,
  });
  assert.equal((await c.next('puback', 10_000)).messageId, 1);
  c.end();
});
