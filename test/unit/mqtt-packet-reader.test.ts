/**
 * The MQTT head's PacketReader against mqtt-packet's parser, differentially: random streams of
 * valid and invalid packets, each cut into chunks at random points, fed to both. Valid streams
 * give the same packets; faults mqtt-packet detects give the same error after the same packets;
 * faults only the reader detects (3.1.1 requires a close; mqtt-packet lets them through) stop the
 * reader at exactly that packet.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt from 'mqtt-packet';
import { PacketReader } from '../../src/protocols/mqtt/packet-reader.ts';

const MAX = 1 << 20;
const TOO_LARGE = 'too large';

interface Outcome {
  packets: Record<string, unknown>[];
  error?: string;
}

/** mqtt-packet alone, as the connection used it for every packet (oversize check after each chunk). */
function viaMqttPacket(chunks: Buffer[], max = MAX): Outcome {
  const parser = mqtt.parser({ protocolVersion: 4 });
  const out: Outcome = { packets: [] };
  parser.on('packet', (p) => {
    if (out.error === undefined) out.packets.push({ ...p });
  });
  parser.on('error', (err) => {
    out.error ??= err.message;
  });
  for (const chunk of chunks) {
    parser.parse(chunk);
    if (out.error !== undefined) break;
    const pending = (parser as unknown as { packet: { length: number } }).packet;
    if (pending.length > max) out.error = TOO_LARGE;
    if (out.error !== undefined) break;
  }
  return out;
}

/** The reader, handing other frames to mqtt-packet as the connection does. */
function viaReader(chunks: Buffer[], max = MAX): Outcome {
  const out: Outcome = { packets: [] };
  const parser = mqtt.parser({ protocolVersion: 4 });
  parser.on('packet', (p) => out.packets.push({ ...p }));
  parser.on('error', (err) => {
    out.error ??= err.message;
  });
  const reader = new PacketReader(
    {
      get closed() {
        return out.error !== undefined;
      },
      packet: (p) => out.packets.push({ ...p }),
      frame: (bytes) => parser.parse(bytes),
      malformed: (err) => {
        out.error ??= err.message;
      },
      tooLarge: () => {
        out.error ??= TOO_LARGE;
      },
    },
    max,
  );
  for (const chunk of chunks) {
    reader.feed(chunk);
    if (out.error !== undefined) break;
  }
  return out;
}

/** Deterministic random numbers (mulberry32), so a failing seed can be replayed. */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const TOPIC_PIECES = ['devices', 'd1', 'messages', 'events', '%24.mid=7&k=v', 'é', '€', '😀', '$iothub', 'twin', ''];

function randomTopic(r: (n: number) => number): string {
  const parts: string[] = [];
  for (let i = 0, n = 1 + r(6); i < n; i++) parts.push(TOPIC_PIECES[r(TOPIC_PIECES.length)]!);
  const t = parts.join('/');
  return t === '' ? 'x' : t;
}

function randomPayload(r: (n: number) => number): Buffer {
  const size = r(10) === 0 ? r(20_000) : r(300);
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i += 97) b[i] = r(256);
  return b;
}

/** One valid packet a connected client may send. */
function validPacket(r: (n: number) => number): Buffer {
  switch (r(10)) {
    case 0:
      return mqtt.generate({ cmd: 'puback', messageId: 1 + r(65535) });
    case 1:
      return mqtt.generate({ cmd: 'pingreq' });
    case 2:
      return mqtt.generate({
        cmd: 'subscribe',
        messageId: 1 + r(65535),
        subscriptions: [{ topic: randomTopic(r), qos: r(2) as 0 | 1 }],
      });
    case 3:
      return mqtt.generate({ cmd: 'unsubscribe', messageId: 1 + r(65535), unsubscriptions: [randomTopic(r)] });
    default: {
      const qos = [0, 1, 1, 1, 2][r(5)] as 0 | 1 | 2;
      return mqtt.generate({
        cmd: 'publish',
        topic: randomTopic(r),
        payload: randomPayload(r),
        qos,
        dup: r(4) === 0,
        retain: r(4) === 0,
        ...(qos > 0 ? { messageId: 1 + r(65535) } : {}),
      });
    }
  }
}

/** Cuts a stream at random points: a few big chunks, many small ones, or one byte each. */
function chop(bytes: Buffer, r: (n: number) => number): Buffer[] {
  const mode = r(4);
  if (mode === 0) return [bytes];
  if (mode === 1) return [...bytes].map((b) => Buffer.from([b]));
  const cuts = new Set<number>();
  const n = mode === 2 ? 1 + r(6) : 1 + r(Math.max(1, bytes.length >> 2));
  for (let i = 0; i < n; i++) cuts.add(r(bytes.length + 1));
  const sorted = [...cuts].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const at of sorted) {
    out.push(bytes.subarray(from, at));
    from = at;
  }
  out.push(bytes.subarray(from));
  return out;
}

function validStream(r: (n: number) => number, count: number): Buffer[] {
  const packets: Buffer[] = [];
  for (let i = 0; i < count; i++) packets.push(validPacket(r));
  return packets;
}

/** What a handler reads of the packets of types mqtt-packet still parses (the rest close the connection). */
function handled(p: Record<string, unknown>): unknown {
  switch (p.cmd) {
    case 'publish':
    case 'puback':
    case 'pingreq':
      return p;
    case 'subscribe':
      return { cmd: p.cmd, messageId: p.messageId, subscriptions: p.subscriptions };
    case 'unsubscribe':
      return { cmd: p.cmd, messageId: p.messageId, unsubscriptions: p.unsubscriptions };
    default:
      return { cmd: p.cmd };
  }
}

test('valid streams cut anywhere give exactly the packets mqtt-packet gives, fields and types alike', () => {
  for (let seed = 1; seed <= 400; seed++) {
    const r = rng(seed);
    const stream = Buffer.concat(validStream(r, 1 + r(30)));
    const chunks = chop(stream, r);
    const old = viaMqttPacket(chunks);
    const now = viaReader(chunks);
    assert.equal(old.error, undefined, `seed ${seed}`);
    assert.equal(now.error, undefined, `seed ${seed}`);
    assert.deepStrictEqual(now.packets, old.packets, `seed ${seed}`);
    for (const p of now.packets) {
      if (p.cmd === 'publish') {
        assert.ok(Buffer.isBuffer(p.payload) && typeof p.topic === 'string', `seed ${seed}`);
        assert.deepEqual(Object.keys(p).sort(), Object.keys(old.packets[now.packets.indexOf(p)]!).sort());
      }
    }
  }
});

/** A PUBLISH with its topic given as raw bytes (mqtt-packet's generator would refuse some). */
function rawPublish(
  topic: Buffer,
  opts: { qos?: number; id?: number; payload?: Buffer; lengthDelta?: number } = {},
): Buffer {
  const qos = opts.qos ?? 1;
  const payload = opts.payload ?? Buffer.from('{"t":1}');
  const body = Buffer.concat([
    Buffer.from([topic.length >> 8, topic.length & 255]),
    topic,
    qos > 0 ? Buffer.from([(opts.id ?? 1) >> 8, (opts.id ?? 1) & 255]) : Buffer.alloc(0),
    payload,
  ]);
  const length = body.length + (opts.lengthDelta ?? 0);
  return Buffer.concat([
    Buffer.from([0x30 | (qos << 1)]),
    remainingLength(length),
    body.subarray(0, Math.max(0, length)),
  ]);
}

function remainingLength(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 128;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

/** Faults mqtt-packet reports: the reader must report the same, after the same packets. */
const BOTH_DETECT: Record<string, () => Buffer> = {
  'remaining length over four bytes': () => Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
  'QoS 3 PUBLISH': () => {
    const b = rawPublish(Buffer.from('devices/d1/messages/events/'));
    b[0] = 0x36;
    return b;
  },
  'PUBACK with flag bits': () => Buffer.from([0x41, 0x02, 0x00, 0x01]),
  'PINGREQ with flag bits': () => Buffer.from([0xc2, 0x00]),
  'SUBSCRIBE without its fixed flags': () => {
    const b = mqtt.generate({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: 'a', qos: 1 }] });
    b[0] = 0x80;
    return b;
  },
  'topic length past the packet': () => {
    const b = rawPublish(Buffer.from('devices/d1/messages/events/'), { qos: 0 });
    b[3] = 200;
    return b;
  },
  'remaining length too short for the topic length': () => Buffer.from([0x30, 0x01, 0x00]),
  'reserved packet type': () => Buffer.from([0x00, 0x00]),
  'AUTH in 3.1.1': () => Buffer.from([0xf0, 0x00]),
  'packet over the size limit': () => Buffer.concat([Buffer.from([0x30]), remainingLength(MAX + 1), Buffer.alloc(10)]),
};

/** Faults 3.1.1 says close the connection for, that mqtt-packet passes on: the reader stops there. */
const READER_DETECTS: Record<string, () => Buffer> = {
  'topic not UTF-8': () => rawPublish(Buffer.from([0x61, 0xff, 0x62])),
  'topic with an overlong encoding': () => rawPublish(Buffer.from([0x61, 0xc0, 0xaf])),
  'topic with a surrogate': () => rawPublish(Buffer.from([0x61, 0xed, 0xa0, 0x80])),
  'topic with U+0000': () => rawPublish(Buffer.from('devices/d1\u0000/messages/events/')),
  'empty topic': () => rawPublish(Buffer.alloc(0)),
  'QoS 1 packet id 0': () => rawPublish(Buffer.from('devices/d1/messages/events/'), { id: 0 }),
  'QoS 1 PUBLISH without room for its id': () =>
    rawPublish(Buffer.from('devices/d1/messages/events/'), { payload: Buffer.alloc(0), lengthDelta: -2 }),
  'PUBACK of three bytes': () => Buffer.from([0x40, 0x03, 0x00, 0x01, 0x00]),
  'PINGREQ with a body': () => Buffer.from([0xc0, 0x01, 0x00]),
};

test('faults mqtt-packet detects give the same error after the same packets, however the stream is cut', () => {
  for (const [name, bad] of Object.entries(BOTH_DETECT)) {
    for (let seed = 1; seed <= 60; seed++) {
      const r = rng(seed * 7919);
      const before = validStream(r, r(5));
      const stream = Buffer.concat([...before, bad(), ...validStream(r, r(3))]);
      const chunks = chop(stream, r);
      const old = viaMqttPacket(chunks);
      const now = viaReader(chunks);
      assert.ok(old.error, `${name}, seed ${seed}: mqtt-packet saw the fault`);
      assert.equal(now.error, old.error, `${name}, seed ${seed}`);
      assert.equal(now.packets.length, before.length, `${name}, seed ${seed}`);
      assert.deepStrictEqual(now.packets.map(handled), old.packets.map(handled), `${name}, seed ${seed}`);
    }
  }
});

test('faults only 3.1.1 names stop the reader at that packet, with the packets before it as mqtt-packet gives them', () => {
  for (const [name, bad] of Object.entries(READER_DETECTS)) {
    for (let seed = 1; seed <= 60; seed++) {
      const r = rng(seed * 104729);
      const before = validStream(r, r(5));
      const stream = Buffer.concat([...before, bad(), ...validStream(r, 1 + r(3))]);
      const chunks = chop(stream, r);
      const old = viaMqttPacket(chunks);
      const now = viaReader(chunks);
      assert.ok(now.error, `${name}, seed ${seed}: the reader saw the fault`);
      assert.equal(now.packets.length, before.length, `${name}, seed ${seed}`);
      assert.deepStrictEqual(now.packets, old.packets.slice(0, before.length), `${name}, seed ${seed}`);
      assert.ok(old.packets.length > before.length, `${name}, seed ${seed}: mqtt-packet let it through`);
    }
  }
});

/** An mqtt-packet packet that 3.1.1 says to close for, or one of a type the connection closes for. */
function closesAnyway(p: Record<string, unknown>): boolean {
  const topic = p.topic as string;
  switch (p.cmd) {
    case 'publish':
      return (
        topic === '' ||
        /[+#\uFFFD]/u.test(topic) ||
        topic.includes(String.fromCharCode(0)) ||
        ((p.qos as number) > 0 &&
          (p.messageId === 0 || p.messageId === -1 || (p.length as number) < Buffer.byteLength(topic) + 4))
      );
    case 'puback':
      return p.length !== 2;
    case 'pingreq':
      return p.length !== 0;
    case 'subscribe':
    case 'unsubscribe':
      return (p.length as number) < 2;
    case 'disconnect':
      return false;
    default:
      return true;
  }
}

test('random corruption: the reader gives a prefix of what mqtt-packet gives and stops no later', () => {
  let stricter = 0;
  let bothFailed = 0;
  for (let seed = 1; seed <= 3000; seed++) {
    const r = rng(seed * 31337);
    let stream = Buffer.concat(validStream(r, 1 + r(6)));
    if (r(3) === 0) {
      // Random bytes from a random point on.
      const tail = Buffer.alloc(1 + r(40));
      for (let i = 0; i < tail.length; i++) tail[i] = r(256);
      stream = Buffer.concat([stream.subarray(0, r(stream.length + 1)), tail]);
    } else {
      for (let i = 0, n = 1 + r(3); i < n; i++) stream[r(stream.length)] = r(256);
    }
    const chunks = chop(stream, r);
    const old = viaMqttPacket(chunks);
    const now = viaReader(chunks);
    const k = now.packets.length;
    const why = `seed ${seed}`;
    assert.ok(k <= old.packets.length, why);
    assert.deepStrictEqual(now.packets.map(handled), old.packets.slice(0, k).map(handled), why);
    if (old.error !== undefined && old.packets.length === k) {
      assert.ok(now.error !== undefined, `${why}: mqtt-packet failed (${old.error}), the reader did not`);
      bothFailed++;
    } else if (k < old.packets.length) {
      // The reader stopped where mqtt-packet went on: only for a packet that closes the connection anyway.
      assert.ok(now.error !== undefined, `${why}: the reader stopped without an error`);
      assert.ok(closesAnyway(old.packets[k]!), `${why}: stopped (${now.error}) at ${JSON.stringify(old.packets[k])}`);
      stricter++;
    } else {
      assert.equal(now.error, undefined, why);
    }
  }
  assert.ok(stricter > 0 && bothFailed > 0, `stricter ${stricter}, both failed ${bothFailed}`);
});

test('a packet over the limit is refused once its length is read, before its body arrives', () => {
  const errors: string[] = [];
  const reader = new PacketReader(
    {
      closed: false,
      packet: () => assert.fail('no packet'),
      frame: () => assert.fail('no frame'),
      malformed: (err) => errors.push(err.message),
      tooLarge: (n) => errors.push(`too large: ${n}`),
    },
    1000,
  );
  reader.feed(Buffer.from([0x32]));
  reader.feed(Buffer.from([0xe9]));
  assert.deepEqual(errors, []);
  reader.feed(Buffer.from([0x07]));
  assert.deepEqual(errors, ['too large: 1001']);
  reader.feed(Buffer.alloc(2000));
  assert.deepEqual(errors, ['too large: 1001'], 'nothing is read after the refusal');
});
