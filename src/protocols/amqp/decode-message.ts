import rhea from 'rhea';
import type { Message } from '../../model/message.ts';
import { BatchError, readBatch } from './batch.ts';
import { binaryText, fromAmqp } from './message.ts';

/**
 * Reads AMQP messages straight into the engine's Message: the sections and value kinds device
 * SDKs and Strata gateways send (string, symbol, uuid and binary ids, string properties,
 * timestamps, data sections). rhea's generic decoder builds a wrapper object for every value and
 * was a quarter of what a hub allocated for each message of a gateway's batches. The result is
 * exactly what `fromAmqp(rhea.message.decode(bytes))` gives (a unit test compares the two);
 * anything this reader does not handle - other value kinds, other body sections, symbolic
 * descriptors, malformed bytes - goes to rhea, so errors and rare shapes read as before.
 */

/**
 * The messages of an IoT Hub batch and the batch's own annotations (see batch.ts); each message
 * is read by the fast path when it can be and by rhea otherwise (which throws on bad bytes).
 */
export function decodeBatch(batch: Buffer): { messages: Message[]; annotations: Record<string, unknown> | undefined } {
  const fast = readBatchFast(batch);
  if (fast) {
    const messages: Message[] = [];
    for (let i = 0; i < fast.parts.length; i += 2) {
      const from = fast.parts[i]!;
      const to = fast.parts[i + 1]!;
      let m = readFast(batch, from, to);
      if (!m) {
        try {
          m = fromAmqp(rhea.message.decode(batch.subarray(from, to)) as never);
        } catch (err) {
          throw new BatchError(`message ${i / 2} of the batch cannot be decoded: ${(err as Error).message}`);
        }
      }
      messages.push(m);
    }
    return { messages, annotations: fast.annotations };
  }
  const slow = readBatch(batch);
  return { messages: slow.messages.map(fromAmqp), annotations: slow.annotations };
}

const OUTPUT_NAME = 'iothub-outputname';
const MAX_DATE_MS = 8.64e15;

class Unhandled extends Error {}
const UNHANDLED = new Unhandled();

/** Byte reader over buf[pos, end); any step past `end` or any unhandled kind throws UNHANDLED. */
class Cursor {
  constructor(
    readonly buf: Buffer,
    public pos: number,
    readonly end: number,
  ) {}

  need(n: number): void {
    if (this.pos + n > this.end) throw UNHANDLED;
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** Length of a variable-width value whose constructor is `code` (8- or 32-bit size). */
  size(code: number): number {
    return (code & 0xf0) === 0xa0 || (code & 0xf0) === 0xc0 || (code & 0xf0) === 0xe0 ? this.u8() : this.u32();
  }

  /** A str8/str32/sym8/sym32 value, or undefined for null; anything else is unhandled. */
  text(code = this.u8()): string | undefined {
    if (code === 0x40) return undefined;
    if (code !== 0xa1 && code !== 0xb1 && code !== 0xa3 && code !== 0xb3) throw UNHANDLED;
    const n = this.size(code);
    this.need(n);
    const s = this.buf.toString('utf8', this.pos, this.pos + n);
    this.pos += n;
    return s;
  }

  binary(code: number): Buffer {
    const n = this.size(code);
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** A timestamp (ms), or undefined for null. */
  time(code = this.u8()): number | undefined {
    if (code === 0x40) return undefined;
    if (code !== 0x83) throw UNHANDLED;
    this.need(8);
    const ms = Number(this.buf.readBigInt64BE(this.pos));
    this.pos += 8;
    if (!(Math.abs(ms) <= MAX_DATE_MS)) throw UNHANDLED; // rhea's path decides what an impossible date means
    return ms;
  }

  /** Skips one value of any kind. */
  skip(code = this.u8()): void {
    if (code === 0x00) {
      this.skip(); // descriptor
      this.skip(); // described value
      return;
    }
    let n: number;
    switch (code >> 4) {
      case 0x4:
        n = 0;
        break;
      case 0x5:
        n = 1;
        break;
      case 0x6:
        n = 2;
        break;
      case 0x7:
        n = 4;
        break;
      case 0x8:
        n = 8;
        break;
      case 0x9:
        n = 16;
        break;
      case 0xa:
      case 0xb:
      case 0xc:
      case 0xd:
      case 0xe:
      case 0xf:
        n = this.size(code);
        break;
      default:
        throw UNHANDLED;
    }
    this.need(n);
    this.pos += n;
  }

  /** Count of a list or map (the entries follow); list0 has none. */
  compound(code: number, list: boolean): number {
    if (list && code === 0x45) return 0;
    const small = list ? 0xc0 : 0xc1;
    const large = list ? 0xd0 : 0xd1;
    if (code === small) {
      this.need(2);
      this.pos++; // size
      return this.buf[this.pos++]!;
    }
    if (code === large) {
      this.need(8);
      this.pos += 4; // size
      return this.u32();
    }
    throw UNHANDLED;
  }

  /** A message or correlation id as the engine keeps it (idToString), or undefined for null. */
  id(): string | undefined {
    const code = this.u8();
    if (code === 0x40) return undefined;
    if (code === 0x98) {
      this.need(16);
      const s = rhea.uuid_to_string(this.buf.subarray(this.pos, this.pos + 16));
      this.pos += 16;
      return s;
    }
    if (code === 0xa0 || code === 0xb0) return binaryText(this.binary(code));
    return this.text(code);
  }

  /** The section code after a section's descriptor (0x00 0x53 code, or 0x00 0x80 as a ulong). */
  section(): number {
    this.need(3);
    if (this.buf[this.pos] !== 0x00) throw UNHANDLED;
    const form = this.buf[this.pos + 1];
    if (form === 0x53) {
      const code = this.buf[this.pos + 2]!;
      this.pos += 3;
      return code;
    }
    if (form === 0x80) {
      this.need(10);
      if (this.buf.readUInt32BE(this.pos + 2) !== 0) throw UNHANDLED;
      const code = this.buf.readUInt32BE(this.pos + 6);
      this.pos += 10;
      return code;
    }
    throw UNHANDLED;
  }
}

function readFast(buf: Buffer, from: number, to: number): Message | undefined {
  try {
    return readMessage(new Cursor(buf, from, to));
  } catch (err) {
    if (err === UNHANDLED || err instanceof RangeError) return undefined;
    throw err;
  }
}

function readMessage(c: Cursor): Message {
  const properties: Record<string, string> = {};
  const out: Message = { body: EMPTY, properties };
  let outputName: string | undefined;
  let component: string | undefined;
  let interfaceId: string | undefined;
  let bodies: Buffer[] | undefined;
  let sawData = false;
  while (c.pos < c.end) {
    const section = c.section();
    switch (section) {
      case 0x70: // header
      case 0x71: // delivery annotations
      case 0x78: // footer
        c.skip();
        break;
      case 0x72: {
        // message annotations: two of them mean something to the hub
        const n = c.compound(c.u8(), false);
        for (let i = 0; i < n; i += 2) {
          const key = c.text();
          if (key === 'dt-subject') component = c.text() ?? '';
          else if (key === 'iothub-interface-id') interfaceId = c.text() ?? '';
          else c.skip();
        }
        break;
      }
      case 0x73:
        readProperties(c, out);
        break;
      case 0x74: {
        // application properties: string values only here
        const n = c.compound(c.u8(), false);
        for (let i = 0; i < n; i += 2) {
          const key = c.text();
          if (key === undefined) throw UNHANDLED;
          const value = c.text() ?? '';
          if (key === OUTPUT_NAME) outputName = value;
          else properties[key] = value;
        }
        break;
      }
      case 0x75: {
        // data
        const code = c.u8();
        if (code !== 0xa0 && code !== 0xb0) throw UNHANDLED;
        const b = c.binary(code);
        if (!sawData) out.body = b;
        else (bodies ??= [out.body]).push(b);
        sawData = true;
        break;
      }
      default: // amqp-value, amqp-sequence and anything else: rhea's reading applies
        throw UNHANDLED;
    }
  }
  if (bodies) out.body = Buffer.concat(bodies);
  // Field order as fromAmqp sets them, so the two results compare equal member by member.
  const ordered: Message = { body: out.body, properties };
  if (out.messageId !== undefined) ordered.messageId = out.messageId;
  if (out.correlationId !== undefined) ordered.correlationId = out.correlationId;
  if (out.userId !== undefined) ordered.userId = out.userId;
  if (out.to !== undefined) ordered.to = out.to;
  if (out.expiry !== undefined) ordered.expiry = out.expiry;
  if (out.contentType !== undefined) ordered.contentType = out.contentType;
  if (out.contentEncoding !== undefined) ordered.contentEncoding = out.contentEncoding;
  if (outputName) ordered.outputName = outputName;
  if (component !== undefined) ordered.component = component;
  if (interfaceId !== undefined) ordered.interfaceId = interfaceId;
  if (out.creationTime !== undefined) ordered.creationTime = out.creationTime;
  return ordered;
}

const EMPTY = Buffer.alloc(0);

/** The properties list: message-id, user-id, to, subject, reply-to, correlation-id, content-type, content-encoding, absolute-expiry-time, creation-time, ... */
function readProperties(c: Cursor, out: Message): void {
  const n = c.compound(c.u8(), true);
  for (let i = 0; i < n; i++) {
    switch (i) {
      case 0: {
        const id = c.id();
        if (id !== undefined) out.messageId = id;
        break;
      }
      case 1: {
        const code = c.u8();
        if (code === 0x40) break;
        if (code !== 0xa0 && code !== 0xb0) throw UNHANDLED;
        out.userId = binaryText(c.binary(code));
        break;
      }
      case 2: {
        const to = c.text();
        if (to) out.to = to;
        break;
      }
      case 5: {
        const id = c.id();
        if (id !== undefined) out.correlationId = id;
        break;
      }
      case 6: {
        const ct = c.text();
        if (ct) out.contentType = ct;
        break;
      }
      case 7: {
        const ce = c.text();
        if (ce) out.contentEncoding = ce;
        break;
      }
      case 8: {
        const exp = c.time();
        if (exp !== undefined) out.expiry = exp;
        break;
      }
      case 9: {
        const created = c.time();
        if (created !== undefined) out.creationTime = new Date(created).toISOString();
        break;
      }
      default:
        c.skip();
    }
  }
}

/** The outer batch: its annotations (string values) and where each data section's message lies. */
function readBatchFast(buf: Buffer): { annotations: Record<string, unknown> | undefined; parts: number[] } | undefined {
  try {
    const c = new Cursor(buf, 0, buf.length);
    let annotations: Record<string, unknown> | undefined;
    const parts: number[] = [];
    while (c.pos < c.end) {
      const section = c.section();
      if (section === 0x72) {
        const n = c.compound(c.u8(), false);
        annotations = {};
        for (let i = 0; i < n; i += 2) {
          const key = c.text();
          if (key === undefined) throw UNHANDLED;
          annotations[key] = c.text() ?? null;
        }
      } else if (section === 0x75) {
        const code = c.u8();
        if (code !== 0xa0 && code !== 0xb0) throw UNHANDLED;
        const n = c.size(code);
        c.need(n);
        parts.push(c.pos, c.pos + n);
        c.pos += n;
      } else if (section === 0x70 || section === 0x71 || section === 0x73 || section === 0x74 || section === 0x78) {
        c.skip();
      } else {
        throw UNHANDLED;
      }
    }
    return parts.length > 0 ? { annotations, parts } : undefined;
  } catch (err) {
    if (err === UNHANDLED || err instanceof RangeError) return undefined;
    throw err;
  }
}
