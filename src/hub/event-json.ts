import type { StoredEvent } from '../model/events.ts';

/** One stored telemetry message, as `GET /events` returns it. */
export interface EventJson {
  /** The hub-wide sequence number: pass `from=` this + 1 to continue. */
  sequenceNumber: number;
  partition: number;
  partitionSequenceNumber: number;
  offset: number;
  /** ISO 8601. */
  enqueuedTime: string;
  deviceId: string;
  moduleId?: string;
  /** The payload, base64. */
  body: string;
  /** The message's system properties, under their AMQP / routing names. */
  systemProperties: Record<string, string | number>;
  /** What the hub stamped on the message, as IoT Hub's built-in endpoint annotates it. */
  annotations: Record<string, string | number>;
  /** Application properties. */
  properties: Record<string, string>;
}

export interface EventPageJson {
  events: EventJson[];
  /** Where to continue reading (`from=`). */
  nextSequenceNumber: number;
}

// Optional system properties: [JSON name, field of the message], in the order both writers use.
const SYSTEM: ReadonlyArray<[string, keyof StoredEvent['message']]> = [
  ['message-id', 'messageId'],
  ['correlation-id', 'correlationId'],
  ['user-id', 'userId'],
  ['to', 'to'],
  ['absolute-expiry-time', 'expiry'],
  ['content-type', 'contentType'],
  ['content-encoding', 'contentEncoding'],
  ['iothub-creation-time-utc', 'creationTime'],
  ['dt-subject', 'component'],
  ['iothub-interface-id', 'interfaceId'],
  ['iothub-outputname', 'outputName'],
];

// A module-level helper, not a closure: this runs for every event a reader is sent.
function putSystem(system: Record<string, string | number>, name: string, value: string | number | undefined): void {
  if (value !== undefined && value !== '') system[name] = value;
}

export function eventJson(e: StoredEvent): EventJson {
  const m = e.message;
  const system: Record<string, string | number> = {};
  for (const [name, field] of SYSTEM) putSystem(system, name, m[field] as string | number | undefined);
  const annotations: Record<string, string | number> = {
    'iothub-connection-device-id': e.deviceId,
  };
  if (e.moduleId !== undefined) annotations['iothub-connection-module-id'] = e.moduleId;
  annotations['iothub-connection-auth-method'] = e.authMethod;
  if (e.authGenerationId !== undefined) annotations['iothub-connection-auth-generation-id'] = e.authGenerationId;
  annotations['iothub-enqueuedtime'] = e.enqueuedTime;
  annotations['iothub-message-source'] = e.messageSource;
  annotations['x-opt-sequence-number'] = e.partitionSequenceNumber;
  annotations['x-opt-offset'] = String(e.offset);
  annotations['x-opt-enqueued-time'] = e.enqueuedTime;
  const out: EventJson = {
    sequenceNumber: e.sequenceNumber,
    partition: e.partition,
    partitionSequenceNumber: e.partitionSequenceNumber,
    offset: e.offset,
    enqueuedTime: new Date(e.enqueuedTime).toISOString(),
    deviceId: e.deviceId,
    body: m.body.toString('base64'),
    systemProperties: system,
    annotations,
    properties: { ...m.properties },
  };
  if (e.moduleId !== undefined) out.moduleId = e.moduleId;
  return out;
}

/**
 * Bytes of JSON written piece by piece into one growing buffer. Building an event's JSON as a
 * string and joining a page of them cost more than everything else the hub does for an event:
 * strings grown by concatenation are trees that must be flattened, then encoded again.
 */
export class JsonBytes {
  private buf: Buffer;
  private pos = 0;

  constructor(capacity = 64 * 1024) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  /** Text that is ASCII by construction (numbers, base64, fixed names, ISO times). */
  ascii(s: string): void {
    this.room(s.length);
    this.pos += this.buf.write(s, this.pos, 'latin1');
  }

  /** Any text, as UTF-8. */
  text(s: string): void {
    this.room(3 * s.length);
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }

  bytes(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(2 * this.buf.length, this.pos + n));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }
}

// The annotations naming the sender are the same for every event a connection sends, and the
// events of one commit share their enqueued time: both are made once and reused.
const senders = new Map<string, string>();
const SENDERS_KEPT = 10_000;
let lastTime = NaN;
let lastIso = '';

function senderAnnotations(e: StoredEvent): string {
  const key = `${e.deviceId}\u0000${e.moduleId ?? '\u0001'}\u0000${e.authMethod}\u0000${e.authGenerationId ?? '\u0001'}`;
  let text = senders.get(key);
  if (text === undefined) {
    text = `"iothub-connection-device-id":${JSON.stringify(e.deviceId)}`;
    if (e.moduleId !== undefined) text += `,"iothub-connection-module-id":${JSON.stringify(e.moduleId)}`;
    text += `,"iothub-connection-auth-method":${JSON.stringify(e.authMethod)}`;
    if (e.authGenerationId !== undefined)
      text += `,"iothub-connection-auth-generation-id":${JSON.stringify(e.authGenerationId)}`;
    if (senders.size >= SENDERS_KEPT) senders.clear();
    senders.set(key, text);
  }
  return text;
}

function isoTime(ms: number): string {
  if (ms !== lastTime) {
    lastTime = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

/**
 * Writes `JSON.stringify(eventJson(e))` straight into `w`: a reader that follows the stream is
 * sent every event. Same members in the same order (a unit test holds the two together).
 */
export function writeEventJson(w: JsonBytes, e: StoredEvent): void {
  const m = e.message;
  // Few, larger writes: each write call costs more than the short text it carries.
  w.text(
    `{"sequenceNumber":${e.sequenceNumber},"partition":${e.partition},"partitionSequenceNumber":${e.partitionSequenceNumber},"offset":${e.offset}` +
      `,"enqueuedTime":"${isoTime(e.enqueuedTime)}","deviceId":${JSON.stringify(e.deviceId)},"body":"`,
  );
  w.ascii(m.body.toString('base64'));
  let system = '';
  for (const [name, field] of SYSTEM) {
    const v = m[field] as string | number | undefined;
    if (v === undefined || v === '') continue;
    system += `${system ? ',' : ''}"${name}":${typeof v === 'number' ? String(v) : JSON.stringify(v)}`;
  }
  w.text(
    `","systemProperties":{${system}},"annotations":{${senderAnnotations(e)},"iothub-enqueuedtime":${e.enqueuedTime}` +
      `,"iothub-message-source":${JSON.stringify(e.messageSource)},"x-opt-sequence-number":${e.partitionSequenceNumber}` +
      `,"x-opt-offset":"${e.offset}","x-opt-enqueued-time":${e.enqueuedTime}},"properties":{`,
  );
  let first = true;
  for (const k in m.properties) {
    w.text(`${first ? '' : ','}${JSON.stringify(k)}:${JSON.stringify(m.properties[k]!)}`);
    first = false;
  }
  w.text(e.moduleId !== undefined ? `},"moduleId":${JSON.stringify(e.moduleId)}}` : '}}');
}

/** The same as text (tests, and callers that want one event). */
export function eventJsonText(e: StoredEvent): string {
  const w = new JsonBytes(1024);
  writeEventJson(w, e);
  return w.bytes().toString('utf8');
}
