import type { Message } from './message.ts';

/**
 * Compact JSON for a message's properties as stored next to its body: system properties
 * under their short MQTT names, application properties under `p`.
 */
export function encodeMessageMeta(m: Message): string {
  const o: Record<string, unknown> = { p: m.properties };
  if (m.messageId !== undefined) o.mid = m.messageId;
  if (m.correlationId !== undefined) o.cid = m.correlationId;
  if (m.userId !== undefined) o.uid = m.userId;
  if (m.to !== undefined) o.to = m.to;
  if (m.expiry !== undefined) o.exp = m.expiry;
  if (m.contentType !== undefined) o.ct = m.contentType;
  if (m.contentEncoding !== undefined) o.ce = m.contentEncoding;
  if (m.outputName !== undefined) o.on = m.outputName;
  if (m.component !== undefined) o.sub = m.component;
  if (m.interfaceId !== undefined) o.ifid = m.interfaceId;
  if (m.creationTime !== undefined) o.ctime = m.creationTime;
  return JSON.stringify(o);
}

export function decodeMessageMeta(text: string, body: Buffer): Message {
  return messageOfMeta(JSON.parse(text) as Record<string, unknown>, body);
}

/** The message an already parsed `encodeMessageMeta` object describes. */
export function messageOfMeta(o: Record<string, unknown>, body: Buffer): Message {
  const m: Message = { body, properties: (o.p as Record<string, string>) ?? {} };
  if (o.mid !== undefined) m.messageId = o.mid as string;
  if (o.cid !== undefined) m.correlationId = o.cid as string;
  if (o.uid !== undefined) m.userId = o.uid as string;
  if (o.to !== undefined) m.to = o.to as string;
  if (o.exp !== undefined) m.expiry = o.exp as number;
  if (o.ct !== undefined) m.contentType = o.ct as string;
  if (o.ce !== undefined) m.contentEncoding = o.ce as string;
  if (o.on !== undefined) m.outputName = o.on as string;
  if (o.sub !== undefined) m.component = o.sub as string;
  if (o.ifid !== undefined) m.interfaceId = o.ifid as string;
  if (o.ctime !== undefined) m.creationTime = o.ctime as string;
  return m;
}

/** Size as IoT Hub counts it: body plus the names and values of all properties (UTF-8 bytes). */
export function messageSize(m: Message): number {
  // Straight-line rather than a helper closure: this runs for every message a head accepts.
  let n = m.body.length;
  if (m.messageId !== undefined) n += 5 + Buffer.byteLength(m.messageId);
  if (m.correlationId !== undefined) n += 5 + Buffer.byteLength(m.correlationId);
  if (m.userId !== undefined) n += 5 + Buffer.byteLength(m.userId);
  if (m.to !== undefined) n += 4 + Buffer.byteLength(m.to);
  if (m.expiry !== undefined) n += 5 + 24; // an ISO 8601 time
  if (m.contentType !== undefined) n += 4 + Buffer.byteLength(m.contentType);
  if (m.contentEncoding !== undefined) n += 4 + Buffer.byteLength(m.contentEncoding);
  if (m.outputName !== undefined) n += 4 + Buffer.byteLength(m.outputName);
  if (m.component !== undefined) n += 5 + Buffer.byteLength(m.component);
  if (m.interfaceId !== undefined) n += 6 + Buffer.byteLength(m.interfaceId);
  if (m.creationTime !== undefined) n += 7 + Buffer.byteLength(m.creationTime);
  const props = m.properties;
  for (const k in props) n += Buffer.byteLength(k) + Buffer.byteLength(String(props[k]));
  return n;
}
