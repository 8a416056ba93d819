import { isUtf8 } from 'node:buffer';

/** What a PacketReader hands its packets, errors and the frames it leaves to mqtt-packet to. */
export interface PacketSink {
  /** True once the connection is closed: the reader stops at the next packet boundary. */
  readonly closed: boolean;
  /** A PUBLISH, PUBACK or PINGREQ, as mqtt-packet's parser would have produced it. */
  packet(p: ReadPacket): void;
  /** One whole frame of any other type (CONNECT, SUBSCRIBE, DISCONNECT...), for mqtt-packet to parse. */
  frame(bytes: Buffer): void;
  /** Malformed input: nothing after it is read. */
  malformed(err: Error): void;
  /** A packet's remaining length is over the limit, known before its body is buffered. */
  tooLarge(length: number): void;
}

/** The fields of mqtt-packet's packet objects, in its order (the handlers read these). */
export interface ReadPacket {
  cmd: 'publish' | 'puback' | 'pingreq';
  retain: boolean;
  qos: number;
  dup: boolean;
  length: number;
  topic: string | null;
  payload: Buffer | null;
  messageId?: number;
}

/** Packet types (by the header's upper four bits) mqtt-packet names; the reader emits three itself. */
const TYPES = [
  'reserved',
  'connect',
  'connack',
  'publish',
  'puback',
  'pubrec',
  'pubrel',
  'pubcomp',
  'subscribe',
  'suback',
  'unsubscribe',
  'unsuback',
  'pingreq',
  'pingresp',
  'disconnect',
  'auth',
];
/** The fixed flag bits 3.1.1 requires per type (-1: none fixed); a PUBLISH's carry DUP, QoS and RETAIN. */
const REQUIRED_FLAGS = [-1, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0];
/** Types whose variable header starts with a packet identifier. */
const HAS_PACKET_ID = [false, false, false, false, true, true, true, true, true, true, true, true];

/**
 * Frames MQTT 3.1.1 packets from a connected client's byte stream and decodes the ones sent all the
 * time (PUBLISH, PUBACK, PINGREQ) without the intermediate copies, debug calls and per-packet state
 * of mqtt-packet's parser; every other type goes to mqtt-packet whole. Errors use mqtt-packet's
 * wording where it detects the same fault; this reader is stricter where 3.1.1 requires a close
 * and mqtt-packet lets the packet through (topic names, zero packet ids, lengths of fixed size).
 */
export class PacketReader {
  /** Bytes of an unfinished packet: views of the chunks they came in, until it is whole. */
  private parts: Buffer[] = [];
  private partBytes = 0;
  /** The unfinished packet's whole size (header included) once its length is known; -1 before. */
  private need = -1;
  private failed = false;

  constructor(
    private readonly sink: PacketSink,
    private readonly maxPacketBytes: number,
  ) {}

  /** True while part of a packet waits for more bytes. */
  get pending(): boolean {
    return this.partBytes > 0;
  }

  feed(chunk: Buffer): void {
    if (this.failed || chunk.length === 0) return;
    if (this.partBytes === 0) return this.scan(chunk, 0);
    if (this.need < 0) {
      // Only a header was left over (at most four bytes): join it to this chunk and start afresh.
      const joined = Buffer.concat([this.parts[0]!, chunk]);
      this.reset();
      return this.scan(joined, 0);
    }
    this.parts.push(chunk);
    this.partBytes += chunk.length;
    if (this.partBytes < this.need) return;
    const frame = Buffer.concat(this.parts, this.need);
    const rest = chunk.length - (this.partBytes - this.need);
    this.reset();
    this.scan(frame, 0);
    if (rest < chunk.length && !this.failed && !this.sink.closed) this.scan(chunk, rest);
  }

  private reset(): void {
    this.parts = [];
    this.partBytes = 0;
    this.need = -1;
  }

  private stash(buf: Buffer, off: number, need: number): void {
    this.parts = [off === 0 ? buf : buf.subarray(off)];
    this.partBytes = buf.length - off;
    this.need = need;
  }

  private fail(message: string): void {
    this.failed = true;
    this.reset();
    this.sink.malformed(new Error(message));
  }

  /** Reads the packets of `buf` from `off`; keeps an unfinished one for the next chunk. */
  private scan(buf: Buffer, off: number): void {
    const end = buf.length;
    while (off < end) {
      const first = buf[off]!;
      const type = first >> 4;
      const required = REQUIRED_FLAGS[type]!;
      if (required >= 0 ? (first & 15) !== required : (first & 6) === 6) {
        return this.fail(
          required >= 0
            ? `Invalid header flag bits, must be 0x${required.toString(16)} for ${TYPES[type]} packet`
            : 'Packet must not have both QoS bits set to 1',
        );
      }
      let length = 0;
      let mul = 1;
      let at = off + 1;
      let known = false;
      while (at < end && at - off <= 4) {
        const b = buf[at++]!;
        length += (b & 127) * mul;
        mul *= 128;
        if (b < 128) {
          known = true;
          break;
        }
      }
      if (!known) {
        if (at - off > 4) return this.fail('Invalid variable byte integer');
        return this.stash(buf, off, -1);
      }
      if (length > this.maxPacketBytes) {
        this.failed = true;
        this.reset();
        return this.sink.tooLarge(length);
      }
      const stop = at + length;
      if (stop > end) return this.stash(buf, off, stop - off);
      if (type === 3) {
        if (!this.publish(buf, first, at, stop)) return;
      } else if (type === 4) {
        if (length !== 2) return this.fail('Malformed puback, remaining length must be 2');
        this.sink.packet({
          cmd: 'puback',
          retain: false,
          qos: 0,
          dup: false,
          length,
          topic: null,
          payload: null,
          messageId: (buf[at]! << 8) | buf[at + 1]!,
        });
      } else if (type === 12) {
        if (length !== 0) return this.fail('Malformed pingreq, remaining length must be 0');
        this.sink.packet({
          cmd: 'pingreq',
          retain: false,
          qos: 0,
          dup: false,
          length,
          topic: null,
          payload: null,
        });
      } else {
        // mqtt-packet would read a missing identifier from the next packet's bytes.
        if (HAS_PACKET_ID[type] && length < 2) return this.fail('Cannot parse messageId');
        this.sink.frame(buf.subarray(off, stop));
      }
      if (this.failed || this.sink.closed) return;
      off = stop;
    }
  }

  /** Decodes the PUBLISH whose variable header starts at `at`; false after reporting it malformed. */
  private publish(buf: Buffer, first: number, at: number, stop: number): boolean {
    const qos = (first >> 1) & 3;
    if (stop - at < 2) {
      this.fail('Cannot parse topic');
      return false;
    }
    const topicEnd = at + 2 + ((buf[at]! << 8) | buf[at + 1]!);
    if (topicEnd > stop) {
      this.fail('Cannot parse topic');
      return false;
    }
    const topic = topicName(buf, at + 2, topicEnd);
    if (typeof topic !== 'string') {
      this.fail(topic.why);
      return false;
    }
    if (qos === 0) {
      this.sink.packet({
        cmd: 'publish',
        retain: (first & 1) !== 0,
        qos,
        dup: (first & 8) !== 0,
        length: stop - at,
        topic,
        payload: buf.subarray(topicEnd, stop),
      });
      return true;
    }
    if (topicEnd + 2 > stop) {
      this.fail('Cannot parse messageId');
      return false;
    }
    const messageId = (buf[topicEnd]! << 8) | buf[topicEnd + 1]!;
    if (messageId === 0) {
      this.fail(`a QoS ${qos} PUBLISH has packet identifier 0`);
      return false;
    }
    this.sink.packet({
      cmd: 'publish',
      retain: (first & 1) !== 0,
      qos,
      dup: (first & 8) !== 0,
      length: stop - at,
      topic,
      payload: buf.subarray(topicEnd + 2, stop),
      messageId,
    });
    return true;
  }
}

/**
 * A PUBLISH topic name: at least one character, well-formed UTF-8 (no surrogates, no overlong
 * forms), no U+0000; anything else is a reason to close. 3.1.1 also forbids the wildcards, but
 * they are let through as before: a property bag's `+` is read as a space (topics.ts), and some
 * device libraries write a space that way.
 */
export function topicName(buf: Buffer, start: number, end: number): string | { why: string } {
  if (start === end) return { why: 'empty topic name in PUBLISH' };
  // One native scan of the bytes as Latin-1 finds every byte that needs a second look.
  let topic = buf.toString('latin1', start, end);
  if (!NOT_PLAIN.test(topic)) return topic;
  if (topic.includes('\u0000')) return { why: 'U+0000 in the topic name of a PUBLISH' };
  if (!isUtf8(buf.subarray(start, end))) return { why: 'topic name of a PUBLISH is not well-formed UTF-8' };
  topic = buf.toString('utf8', start, end);
  return topic;
}

/** Bytes a plain ASCII topic name has none of: U+0000, anything over 0x7F. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: U+0000 is what 3.1.1 forbids in a topic name
const NOT_PLAIN = /[\u0000\u0080-\u00ff]/;
