import assert from 'node:assert/strict';
import { test } from 'node:test';
import mqtt from 'mqtt-packet';
import { encodePublishQos1 } from '../../src/upstream/mqtt-connection.ts';

/** What mqtt-packet (the parser of Strata's MQTT head) reads from bytes. */
function parse(bytes: Buffer): mqtt.IPublishPacket[] {
  const parser = mqtt.parser({ protocolVersion: 4 });
  const out: mqtt.IPublishPacket[] = [];
  parser.on('packet', (p) => out.push(p as mqtt.IPublishPacket));
  parser.on('error', (err) => assert.fail(err));
  parser.parse(bytes);
  return out;
}

test('a hand-encoded QoS 1 PUBLISH reads back as sent, at every remaining-length size, and matches mqtt-packet byte for byte', () => {
  for (const size of [0, 1, 100, 127 - 12, 200, 16_383, 16_384, 300_000, 2_097_151 - 40]) {
    const payload = Buffer.alloc(size, size % 251);
    const topic = 'devices/dé/messages/events/%24.mid=1&k=v';
    const bytes = encodePublishQos1(topic, 513, payload);
    const [p] = parse(bytes);
    assert.equal(p!.topic, topic);
    assert.equal(p!.messageId, 513);
    assert.equal(p!.qos, 1);
    assert.equal(p!.dup, false);
    assert.equal(p!.retain, false);
    assert.ok(Buffer.from(p!.payload as Buffer).equals(payload), `payload of ${size} bytes`);
    assert.ok(
      bytes.equals(
        mqtt.generate({ cmd: 'publish', topic, payload, qos: 1, dup: false, retain: false, messageId: 513 }),
      ),
      `same bytes as mqtt-packet at ${size}`,
    );
  }
  assert.throws(() => encodePublishQos1('x'.repeat(70_000), 1, Buffer.alloc(0)), /at most 65535 bytes/);
});
