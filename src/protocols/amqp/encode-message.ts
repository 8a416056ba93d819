import type { Message } from '../../model/message.ts';

/**
 * Encodes a message straight into AMQP bytes: the same sections and values as rhea would write
 * for `toAmqp(m)` (properties, application properties, message annotations, one data section),
 * in a single buffer. A gateway encodes every message it forwards, and rhea's generic encoder
 * (type wrapping, growing buffers) costs several times as much per message.
 *
 * Every variable-size value uses its 32-bit form (str32, sym32, vbin32, list32, map32), so each
 * size is known once its bytes are written; any AMQP reader accepts them.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const OUTPUT_NAME = 'iothub-outputname';

const NULL = 0x40;
const UUID_CODE = 0x98;
const TIMESTAMP = 0x83;
const VBIN32 = 0xb0;
const STR32 = 0xb1;
export const SYM32 = 0xb3;
const LIST32 = 0xd0;
const MAP32 = 0xd1;
export const SECTION = { properties: 0x73, applicationProperties: 0x74, messageAnnotations: 0x72, data: 0x75 };

/** Writes AMQP values into a buffer sized beforehand (see `textBound`). */
export class AmqpWriter {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  byte(b: number): void {
    this.buf[this.pos++] = b;
  }

  u32(n: number): void {
    this.buf.writeUInt32BE(n, this.pos);
    this.pos += 4;
  }

  section(code: number): void {
    this.byte(0x00);
    this.byte(0x53);
    this.byte(code);
  }

  /** str32 (or sym32): the text after a 4-byte length written once the text is. */
  text(code: number, s: string): void {
    this.byte(code);
    const at = this.pos;
    const n = this.buf.write(s, at + 4, 'utf8');
    this.buf.writeUInt32BE(n, at);
    this.pos = at + 4 + n;
  }

  binary(b: Buffer): void {
    this.byte(VBIN32);
    this.u32(b.length);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
  }

  id(id: string): void {
    if (UUID.test(id)) {
      this.byte(UUID_CODE);
      this.buf.write(id.replace(/-/g, ''), this.pos, 'hex');
      this.pos += 16;
    } else {
      this.text(STR32, id);
    }
  }

  timestamp(ms: number): void {
    this.byte(TIMESTAMP);
    this.buf.writeBigInt64BE(BigInt(Math.trunc(ms)), this.pos);
    this.pos += 8;
  }

  /** A section holding a map32 of string values. */
  stringMap(section: number, keyCode: number, entries: ReadonlyArray<[string, string]>): void {
    this.section(section);
    const done = this.compound(MAP32);
    for (const [k, v] of entries) {
      this.text(keyCode, k);
      this.text(STR32, v);
    }
    done(entries.length * 2);
  }

  /** list32/map32: reserve size and count, return a function that fills them in. */
  compound(code: number): (count: number) => void {
    this.byte(code);
    const at = this.pos;
    this.pos += 8;
    return (count) => {
      this.buf.writeUInt32BE(this.pos - at - 4, at);
      this.buf.writeUInt32BE(count, at + 4);
    };
  }
}

/** Bytes a string may take in UTF-8 (3 per UTF-16 unit at most) plus its 32-bit header. */
export function textBound(s: string | undefined): number {
  return s === undefined ? 0 : 5 + 3 * s.length;
}

export function encodeMessage(m: Message): Buffer {
  const w = new AmqpWriter(Buffer.allocUnsafe(messageBound(m)));
  writeMessage(w, m);
  return w.buf.subarray(0, w.pos);
}

/** Bytes `writeMessage` may take for `m`, at most. */
export function messageBound(m: Message): number {
  let bound = 64 + m.body.length + 9 * 16;
  bound +=
    textBound(m.messageId) +
    textBound(m.correlationId) +
    textBound(m.userId) +
    textBound(m.to) +
    textBound(m.contentType) +
    textBound(m.contentEncoding);
  for (const k in m.properties) bound += textBound(k) + textBound(m.properties[k]);
  bound += textBound(OUTPUT_NAME) + textBound(m.outputName);
  bound +=
    textBound('dt-subject') + textBound(m.component) + textBound('iothub-interface-id') + textBound(m.interfaceId);
  return bound;
}

/**
 * Several messages, each in a data section, one after the other in one buffer (the body of an
 * IoT Hub batch): message `i` is `buf.subarray(at[i] + DATA_HEADER, at[i + 1])`, its section
 * `buf.subarray(at[i], at[i + 1])`, and consecutive sections are a batch body as they are.
 */
export interface DataSections {
  buf: Buffer;
  at: number[];
}

/** Section descriptor and vbin32 header in front of each message in DataSections. */
export const DATA_HEADER = 8;

/** `headRoom` bytes are left free in front of the first section (for a batch head). */
export function encodeDataSections(messages: readonly Message[], headRoom = 0): DataSections {
  let bound = headRoom;
  for (const m of messages) bound += DATA_HEADER + messageBound(m);
  const w = new AmqpWriter(Buffer.allocUnsafe(bound));
  w.pos = headRoom;
  const at = [headRoom];
  for (const m of messages) {
    w.section(SECTION.data);
    w.byte(VBIN32);
    const len = w.pos;
    w.pos += 4;
    writeMessage(w, m);
    w.buf.writeUInt32BE(w.pos - len - 4, len);
    at.push(w.pos);
  }
  return { buf: w.buf.subarray(0, w.pos), at };
}

/** Writes `m` as one AMQP message (sections only, no framing) at the writer's position. */
export function writeMessage(w: AmqpWriter, m: Message): void {
  const app: Array<[string, string]> = [];
  for (const k in m.properties) app.push([k, m.properties[k]!]);
  if (m.outputName !== undefined) app.push([OUTPUT_NAME, m.outputName]);
  const ann: Array<[string, string]> = [];
  if (m.component !== undefined) ann.push(['dt-subject', m.component]);
  if (m.interfaceId !== undefined) ann.push(['iothub-interface-id', m.interfaceId]);

  // properties: message-id, user-id, to, subject, reply-to, correlation-id, content-type,
  // content-encoding, absolute-expiry-time; trailing absent fields are left out. (Written field
  // by field rather than through a list of closures: this runs for every message forwarded.)
  const last =
    m.expiry !== undefined
      ? 8
      : m.contentEncoding !== undefined
        ? 7
        : m.contentType !== undefined
          ? 6
          : m.correlationId !== undefined
            ? 5
            : m.to !== undefined
              ? 2
              : m.userId !== undefined
                ? 1
                : m.messageId !== undefined
                  ? 0
                  : -1;
  if (last >= 0) {
    w.section(SECTION.properties);
    const done = w.compound(LIST32);
    if (m.messageId !== undefined) w.id(m.messageId);
    else w.byte(NULL);
    if (last >= 1) {
      if (m.userId !== undefined) w.binary(Buffer.from(m.userId, 'utf8'));
      else w.byte(NULL);
    }
    if (last >= 2) {
      if (m.to !== undefined) w.text(STR32, m.to);
      else w.byte(NULL);
    }
    if (last >= 5) {
      w.byte(NULL); // subject
      w.byte(NULL); // reply-to
      if (m.correlationId !== undefined) w.id(m.correlationId);
      else w.byte(NULL);
    }
    if (last >= 6) {
      if (m.contentType !== undefined) w.text(SYM32, m.contentType);
      else w.byte(NULL);
    }
    if (last >= 7) {
      if (m.contentEncoding !== undefined) w.text(SYM32, m.contentEncoding);
      else w.byte(NULL);
    }
    if (last >= 8) w.timestamp(m.expiry!);
    done(last + 1);
  }
  // Application properties have string keys; message annotations symbol keys.
  if (app.length > 0) w.stringMap(SECTION.applicationProperties, STR32, app);
  if (ann.length > 0) w.stringMap(SECTION.messageAnnotations, SYM32, ann);
  w.section(SECTION.data);
  w.binary(m.body);
}
