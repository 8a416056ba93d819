import type { Message } from '../../model/message.ts';
import { badRequest } from '../../model/errors.ts';

/**
 * IoT Hub's HTTPS message mapping: system properties travel in `IoTHub-*` / `iothub-*` headers
 * (or batch property names), application properties in `iothub-app-{name}`.
 */

export const APP_PREFIX = 'iothub-app-';

/** The content type that marks a telemetry batch. */
export const BATCH_CONTENT_TYPE = 'application/vnd.microsoft.iothub.json';

/** Without a prototype, so a property named `__proto__` is just a property. */
export function emptyProperties(): Record<string, string> {
  return Object.create(null) as Record<string, string>;
}

type SystemField =
  | 'messageId'
  | 'correlationId'
  | 'userId'
  | 'to'
  | 'expiry'
  | 'contentType'
  | 'contentEncoding'
  | 'component'
  | 'interfaceId'
  | 'creationTime';

/** Lower-cased header / batch property names that carry a system property. */
const SYSTEM_NAMES: Record<string, SystemField> = {
  'iothub-messageid': 'messageId',
  'iothub-correlationid': 'correlationId',
  'iothub-userid': 'userId',
  'iothub-to': 'to',
  'iothub-expiry': 'expiry',
  'iothub-contenttype': 'contentType',
  'iothub-contentencoding': 'contentEncoding',
  'dt-subject': 'component',
  'iothub-interface-id': 'interfaceId',
  'iothub-creation-time-utc': 'creationTime',
};

/**
 * Reads an absolute expiry as clients write it: epoch milliseconds, or any date text
 * `Date.parse` understands (the Node SDK stringifies a Date).
 */
export function parseExpiry(text: string, where: string): number {
  const t = text.trim();
  const ms = /^\d+$/.test(t) ? Number(t) : Date.parse(t);
  if (!Number.isFinite(ms))
    throw badRequest(`${where} "${text}" is not a date: write an ISO 8601 time or epoch milliseconds`);
  return ms;
}

/**
 * Builds the message one telemetry request carries. `rawHeaders` is Node's flat name/value
 * list, used because it keeps the case of application property names.
 */
export function messageFromHeaders(rawHeaders: string[], body: Buffer): Message {
  const message: Message = { body, properties: emptyProperties() };
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    const lower = name.toLowerCase();
    if (lower.startsWith(APP_PREFIX)) {
      const key = name.slice(APP_PREFIX.length);
      if (!key) throw badRequest(`header ${name} names no application property`);
      if (!(key in message.properties)) message.properties[key] = value;
      continue;
    }
    const field = SYSTEM_NAMES[lower];
    // The SDK also sends `iothub-to` with the request path; the path already says where it goes.
    if (field && field !== 'to') setSystem(message, field, value, `header ${name}`);
    else if (lower === 'iothub-to' && message.to === undefined && value !== '' && !/^\/devices\//i.test(value))
      message.to = value;
  }
  return message;
}

function setSystem(message: Message, field: SystemField, value: string, where: string): void {
  if (field === 'expiry') message.expiry = parseExpiry(value, where);
  else message[field] = value;
}

/**
 * Parses a batch body: `[{"body": "<base64>", "properties": {"iothub-app-k": "v", ...}}, ...]`.
 * Property names without the `iothub-app-` prefix that are not system names are taken as
 * application properties too, so hand-written batches work.
 */
export function messagesFromBatch(raw: Buffer): Message[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw badRequest(`the batch body is not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(parsed))
    throw badRequest('the batch body must be a JSON array of {"body": "<base64>", "properties": {...}}');
  if (parsed.length === 0) throw badRequest('the batch holds no messages');
  return parsed.map((item, index) => messageFromBatchItem(item, index));
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function messageFromBatchItem(item: unknown, index: number): Message {
  const where = `batch message ${index}`;
  if (!item || typeof item !== 'object' || Array.isArray(item)) throw badRequest(`${where} is not an object`);
  const { body, properties } = item as { body?: unknown; properties?: unknown };
  if (typeof body !== 'string') throw badRequest(`${where} has no "body" string (base64 of the payload)`);
  const compact = body.replace(/\s+/g, '');
  if (compact.length % 4 === 1 || !BASE64.test(compact)) throw badRequest(`${where} has a "body" that is not base64`);
  const message: Message = { body: Buffer.from(compact, 'base64'), properties: emptyProperties() };
  if (properties === undefined || properties === null) return message;
  if (typeof properties !== 'object' || Array.isArray(properties))
    throw badRequest(`${where} has "properties" that are not an object`);
  for (const [name, value] of Object.entries(properties as Record<string, unknown>)) {
    if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
      throw badRequest(`${where} property "${name}" must be a string`);
    }
    const text = String(value);
    const lower = name.toLowerCase();
    if (lower.startsWith(APP_PREFIX)) {
      const key = name.slice(APP_PREFIX.length);
      if (!key) throw badRequest(`${where} property "${name}" names no application property`);
      message.properties[key] = text;
      continue;
    }
    const field = SYSTEM_NAMES[lower];
    if (field) setSystem(message, field, text, `${where} property ${name}`);
    else message.properties[name] = text;
  }
  return message;
}

// ---------------------------------------------------------------------------------------------
// Writing a message into response headers (C2D over HTTPS)

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

export interface HeaderProblem {
  name: string;
  problem: string;
}

/** Whether `value` can travel in an HTTP header unchanged. */
export function headerValueOk(value: string): boolean {
  return HEADER_VALUE.test(value);
}

/**
 * The headers that carry `message` to a device. Application properties whose names cannot be
 * header names are left out, values that cannot be header values are percent-encoded; each
 * such case is reported in `problems` so the caller can log it.
 */
export function messageHeaders(
  message: Message,
  extra: { to?: string } = {},
): { headers: Record<string, string>; problems: HeaderProblem[] } {
  const headers: Record<string, string> = {};
  const problems: HeaderProblem[] = [];
  const put = (name: string, value: string | undefined) => {
    if (value === undefined) return;
    if (headerValueOk(value)) {
      headers[name] = value;
    } else {
      headers[name] = encodeURIComponent(value);
      problems.push({ name, problem: 'value holds characters HTTP headers cannot carry; sent percent-encoded' });
    }
  };
  put('iothub-messageid', message.messageId);
  put('iothub-correlationid', message.correlationId);
  put('iothub-userid', message.userId);
  put('iothub-to', message.to ?? extra.to);
  if (message.expiry !== undefined) headers['iothub-expiry'] = new Date(message.expiry).toISOString();
  put('iothub-contenttype', message.contentType);
  put('iothub-contentencoding', message.contentEncoding);
  put('iothub-creation-time-utc', message.creationTime);
  for (const [key, value] of Object.entries(message.properties)) {
    const name = `${APP_PREFIX}${key}`;
    if (!TOKEN.test(name)) {
      problems.push({ name, problem: 'property name cannot be an HTTP header name; left out' });
      continue;
    }
    put(name, value);
  }
  return { headers, problems };
}
