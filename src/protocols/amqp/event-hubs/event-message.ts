import type { StoredEvent } from '../../../model/events.ts';

/**
 * A stored event as IoT Hub's built-in endpoint delivers it, encoded straight into AMQP 1.0
 * sections: the hub's stamps as message annotations (`x-opt-*` for the Event Hubs clients,
 * `iothub-*` for IoT Hub readers), the device's system properties as AMQP properties, its
 * application properties, and the body as one data section.
 *
 * Reading a backlog sends every event once per reader, so this skips building a generic message
 * object for rhea to encode (that was most of the cost of a read) and writes the bytes directly;
 * rhea sends them as a pre-encoded payload.
 */

/** The partition's newest event, for receivers that asked for runtime metrics (delivery annotations). */
export interface RuntimeInfo {
  lastSequenceNumber: number;
  lastOffset: number;
  lastEnqueuedTime: number;
  retrievedAt: number;
}

// AMQP 1.0 type codes used here.
const NULL = 0x40;
const LONG = 0x81;
const TIMESTAMP = 0x83;
const VBIN8 = 0xa0;
const VBIN32 = 0xb0;
const STR8 = 0xa1;
const STR32 = 0xb1;
const SYM8 = 0xa3;
const SYM32 = 0xb3;
const LIST32 = 0xd0;
const MAP32 = 0xd1;
const SMALL_ULONG_DESCRIPTOR = [0x00, 0x53];
const SECTION = {
  deliveryAnnotations: 0x71,
  messageAnnotations: 0x72,
  properties: 0x73,
  applicationProperties: 0x74,
  data: 0x75,
} as const;

/** A growable write buffer reused across messages; `take()` copies out one message. */
class Writer {
  private buf = Buffer.allocUnsafe(64 * 1024);
  pos = 0;

  reset(): void {
    this.pos = 0;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  byte(b: number): void {
    this.room(1);
    this.buf[this.pos++] = b;
  }

  uint32At(at: number, v: number): void {
    this.buf.writeUInt32BE(v, at);
  }

  /** Reserves 4 bytes to fill in later; returns their position. */
  reserve32(): number {
    this.room(4);
    const at = this.pos;
    this.pos += 4;
    return at;
  }

  int64(v: number): void {
    this.room(8);
    this.buf.writeBigInt64BE(BigInt(Math.trunc(v)), this.pos);
    this.pos += 8;
  }

  bytes(b: Buffer): void {
    this.room(b.length);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
  }

  /** A string or symbol: the 8-bit length form when it fits. */
  text(s: string, small: number, large: number): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.room(n + 5);
    if (n < 256) {
      this.buf[this.pos++] = small;
      this.buf[this.pos++] = n;
    } else {
      this.buf[this.pos++] = large;
      this.buf.writeUInt32BE(n, this.pos);
      this.pos += 4;
    }
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }

  string(s: string): void {
    this.text(s, STR8, STR32);
  }

  symbol(s: string): void {
    this.text(s, SYM8, SYM32);
  }

  binary(b: Buffer): void {
    this.room(b.length + 5);
    if (b.length < 256) {
      this.buf[this.pos++] = VBIN8;
      this.buf[this.pos++] = b.length;
    } else {
      this.buf[this.pos++] = VBIN32;
      this.buf.writeUInt32BE(b.length, this.pos);
      this.pos += 4;
    }
    this.bytes(b);
  }

  long(v: number): void {
    this.byte(LONG);
    this.int64(v);
  }

  timestamp(ms: number): void {
    this.byte(TIMESTAMP);
    this.int64(ms);
  }

  section(code: number): void {
    this.room(3);
    this.buf[this.pos++] = SMALL_ULONG_DESCRIPTOR[0]!;
    this.buf[this.pos++] = SMALL_ULONG_DESCRIPTOR[1]!;
    this.buf[this.pos++] = code;
  }

  /** Starts a map32/list32: returns where its size goes; `end` fills in size and count. */
  begin(code: number): number {
    this.byte(code);
    const at = this.reserve32();
    this.reserve32();
    return at;
  }

  end(at: number, count: number): void {
    this.uint32At(at, this.pos - at - 4);
    this.uint32At(at + 4, count);
  }

  take(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}

const w = new Writer();

/** The AMQP encoding of one event (sections in the order the specification puts them). */
export function encodeEvent(e: StoredEvent, runtime?: RuntimeInfo): Buffer {
  const m = e.message;
  w.reset();

  if (runtime) {
    w.section(SECTION.deliveryAnnotations);
    const at = w.begin(MAP32);
    w.symbol('last_enqueued_sequence_number');
    w.long(runtime.lastSequenceNumber);
    w.symbol('last_enqueued_offset');
    w.string(String(runtime.lastOffset));
    w.symbol('last_enqueued_time_utc');
    w.timestamp(runtime.lastEnqueuedTime);
    w.symbol('runtime_info_retrieval_time_utc');
    w.timestamp(runtime.retrievedAt);
    w.end(at, 8);
  }

  w.section(SECTION.messageAnnotations);
  let at = w.begin(MAP32);
  // Seven annotations always, the rest when the event has them.
  let pairs = 7;
  w.symbol('x-opt-sequence-number');
  w.long(e.partitionSequenceNumber);
  w.symbol('x-opt-offset');
  w.string(String(e.offset));
  w.symbol('x-opt-enqueued-time');
  w.timestamp(e.enqueuedTime);
  w.symbol('iothub-connection-device-id');
  w.string(e.deviceId);
  if (e.moduleId !== undefined) {
    w.symbol('iothub-connection-module-id');
    pairs++;
    w.string(e.moduleId);
  }
  w.symbol('iothub-connection-auth-method');
  w.string(e.authMethod);
  if (e.authGenerationId !== undefined) {
    w.symbol('iothub-connection-auth-generation-id');
    pairs++;
    w.string(e.authGenerationId);
  }
  w.symbol('iothub-enqueuedtime');
  w.timestamp(e.enqueuedTime);
  w.symbol('iothub-message-source');
  w.string(e.messageSource);
  if (m.creationTime !== undefined) {
    w.symbol('iothub-creation-time-utc');
    pairs++;
    w.string(m.creationTime);
  }
  if (m.component !== undefined) {
    w.symbol('dt-subject');
    pairs++;
    w.string(m.component);
  }
  if (m.interfaceId !== undefined) {
    w.symbol('iothub-interface-id');
    pairs++;
    w.string(m.interfaceId);
  }
  w.end(at, pairs * 2);

  // properties: message-id, user-id, to, subject, reply-to, correlation-id, content-type,
  // content-encoding, absolute-expiry-time; trailing absent fields are left out. Ids stay
  // strings: readers compare them with what the device set, whatever their shape.
  const present = [
    m.messageId,
    m.userId,
    m.to,
    undefined,
    undefined,
    m.correlationId,
    m.contentType,
    m.contentEncoding,
    m.expiry,
  ];
  let count = present.length;
  while (count > 0 && present[count - 1] === undefined) count--;
  if (count > 0) {
    w.section(SECTION.properties);
    at = w.begin(LIST32);
    for (let i = 0; i < count; i++) {
      const v = present[i];
      if (v === undefined) w.byte(NULL);
      else if (i === 1) w.binary(Buffer.from(v as string, 'utf8'));
      else if (i === 6 || i === 7) w.symbol(v as string);
      else if (i === 8) w.timestamp(v as number);
      else w.string(v as string);
    }
    w.end(at, count);
  }

  const props = m.properties;
  if (Object.keys(props).length > 0) {
    w.section(SECTION.applicationProperties);
    at = w.begin(MAP32);
    pairs = 0;
    for (const [k, v] of Object.entries(props)) {
      w.string(k);
      w.string(v);
      pairs++;
    }
    w.end(at, pairs * 2);
  }

  w.section(SECTION.data);
  w.binary(m.body);
  return w.take();
}
