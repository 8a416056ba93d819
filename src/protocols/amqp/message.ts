import rhea, { type Message as AmqpMessage } from 'rhea';
import type { Message } from '../../model/message.ts';

/**
 * AMQP message <-> the engine's canonical Message. The mapping is the one IoT Hub documents:
 * AMQP properties carry the system properties, application properties the user's, and a few
 * message annotations carry what has no AMQP property (`dt-subject`, `iothub-interface-id`).
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Message and correlation ids arrive as string, uuid (16-byte Buffer), ulong or binary. */
export function idToString(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (Buffer.isBuffer(v)) return binaryText(v);
  return String(v);
}

/** Binary read as text the way the hub reads ids and properties: 16 bytes as a uuid, anything else as UTF-8. */
export function binaryText(b: Buffer): string {
  return b.length === 16 ? rhea.uuid_to_string(b) : b.toString('utf8');
}

/** An id for an outgoing message: uuid-shaped ids go out as AMQP uuids, as IoT Hub sends them. */
export function idToAmqp(id: string): string | Buffer {
  return UUID.test(id) ? rhea.string_to_uuid(id) : id;
}

/** Echoes an id exactly as the client typed it (twin and CBS clients match responses by identity). */
export function echoId(v: unknown): unknown {
  if (Buffer.isBuffer(v) && v.length !== 16) return rhea.types.wrap_binary(v);
  return v;
}

/** The bytes of a body: data section(s), an AMQP value holding binary or a string, or anything else as JSON. */
export function bodyBytes(body: unknown): Buffer {
  if (body === undefined || body === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof Uint8Array) return Buffer.from(body);
  const section = body as { typecode?: number; content?: unknown; multiple?: boolean };
  if (typeof section.typecode === 'number' && 'content' in section) {
    if (section.typecode === 0x75) {
      if (section.multiple && Array.isArray(section.content))
        return Buffer.concat(section.content.map((c) => bodyBytes(c)));
      return bodyBytes(section.content);
    }
    return Buffer.from(JSON.stringify(section.content) ?? '', 'utf8');
  }
  return Buffer.from(JSON.stringify(body) ?? '', 'utf8');
}

function propertyText(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'string') return v;
  if (v instanceof Date) return v.toISOString();
  if (Buffer.isBuffer(v)) return binaryText(v);
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function timeOf(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (v instanceof Date) return v.getTime();
  if (typeof v === 'number') return v;
  return undefined;
}

/** Application property names the hub reads as system properties rather than passing on. */
const OUTPUT_NAME = 'iothub-outputname';

/** A message a device or service sent, in the engine's terms. */
export function fromAmqp(msg: AmqpMessage): Message {
  const properties: Record<string, string> = {};
  let outputName: string | undefined;
  const app = msg.application_properties as Record<string, unknown> | undefined;
  if (app && typeof app === 'object') {
    for (const [k, v] of Object.entries(app)) {
      if (k === OUTPUT_NAME) outputName = propertyText(v);
      else properties[k] = propertyText(v);
    }
  }
  const ann = (msg.message_annotations ?? {}) as Record<string, unknown>;
  const out: Message = { body: bodyBytes(msg.body), properties };
  const mid = idToString(msg.message_id);
  if (mid !== undefined) out.messageId = mid;
  const cid = idToString(msg.correlation_id);
  if (cid !== undefined) out.correlationId = cid;
  if (msg.user_id !== undefined && msg.user_id !== null) out.userId = propertyText(msg.user_id);
  if (msg.to) out.to = String(msg.to);
  const exp = timeOf(msg.absolute_expiry_time);
  if (exp !== undefined) out.expiry = exp;
  if (msg.content_type) out.contentType = String(msg.content_type);
  if (msg.content_encoding) out.contentEncoding = String(msg.content_encoding);
  if (outputName) out.outputName = outputName;
  if (ann['dt-subject'] !== undefined) out.component = propertyText(ann['dt-subject']);
  if (ann['iothub-interface-id'] !== undefined) out.interfaceId = propertyText(ann['iothub-interface-id']);
  if (msg.creation_time instanceof Date) out.creationTime = msg.creation_time.toISOString();
  return out;
}

/** A message the hub sends to a device (C2D, module input) or to the service. */
export function toAmqp(m: Message, annotations?: Record<string, unknown>): AmqpMessage {
  const out: AmqpMessage = { body: rhea.message.data_section(m.body) };
  if (m.messageId !== undefined) out.message_id = idToAmqp(m.messageId);
  if (m.correlationId !== undefined) out.correlation_id = idToAmqp(m.correlationId);
  if (m.userId !== undefined) out.user_id = Buffer.from(m.userId, 'utf8') as unknown as string;
  if (m.to !== undefined) out.to = m.to;
  if (m.expiry !== undefined) out.absolute_expiry_time = new Date(m.expiry);
  if (m.contentType !== undefined) out.content_type = m.contentType;
  if (m.contentEncoding !== undefined) out.content_encoding = m.contentEncoding;
  const app: Record<string, unknown> = { ...m.properties };
  if (m.outputName !== undefined) app[OUTPUT_NAME] = m.outputName;
  if (Object.keys(app).length > 0) out.application_properties = app;
  const ann: Record<string, unknown> = { ...(annotations ?? {}) };
  if (m.component !== undefined) ann['dt-subject'] = m.component;
  if (m.interfaceId !== undefined) ann['iothub-interface-id'] = m.interfaceId;
  if (Object.keys(ann).length > 0) out.message_annotations = ann;
  return out;
}
