import type { StoredEvent } from '../engine/types.ts';

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

// A module-level helper, not a closure: this runs for every event a reader is sent.
function putSystem(system: Record<string, string | number>, name: string, value: string | number | undefined): void {
  if (value !== undefined && value !== '') system[name] = value;
}

export function eventJson(e: StoredEvent): EventJson {
  const m = e.message;
  const system: Record<string, string | number> = {};
  putSystem(system, 'message-id', m.messageId);
  putSystem(system, 'correlation-id', m.correlationId);
  putSystem(system, 'user-id', m.userId);
  putSystem(system, 'to', m.to);
  putSystem(system, 'absolute-expiry-time', m.expiry);
  putSystem(system, 'content-type', m.contentType);
  putSystem(system, 'content-encoding', m.contentEncoding);
  putSystem(system, 'iothub-creation-time-utc', m.creationTime);
  putSystem(system, 'dt-subject', m.component);
  putSystem(system, 'iothub-interface-id', m.interfaceId);
  putSystem(system, 'iothub-outputname', m.outputName);
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

/** A JSON string value (quotes and escapes as JSON.stringify writes them). */
const str = JSON.stringify;

/** `"name":value` for a value that is a string or a number, after a comma unless first. */
function member(out: string, name: string, value: string | number): string {
  return `${out}${out.length > 1 ? ',' : ''}${str(name)}:${typeof value === 'number' ? String(value) : str(value)}`;
}

function putText(out: string, name: string, value: string | number | undefined): string {
  return value === undefined || value === '' ? out : member(out, name, value);
}

// The annotations naming the sender are the same for every event a connection sends, and the
// events of one commit share their enqueued time: both are written once and reused.
const senders = new Map<string, string>();
const SENDERS_KEPT = 10_000;
let lastTime = NaN;
let lastIso = '';

function senderAnnotations(e: StoredEvent): string {
  const key = `${e.deviceId}\u0000${e.moduleId ?? '\u0001'}\u0000${e.authMethod}\u0000${e.authGenerationId ?? '\u0001'}`;
  let text = senders.get(key);
  if (text === undefined) {
    text = member('{', 'iothub-connection-device-id', e.deviceId);
    if (e.moduleId !== undefined) text = member(text, 'iothub-connection-module-id', e.moduleId);
    text = member(text, 'iothub-connection-auth-method', e.authMethod);
    if (e.authGenerationId !== undefined) text = member(text, 'iothub-connection-auth-generation-id', e.authGenerationId);
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
 * `JSON.stringify(eventJson(e))`, written directly: a reader that follows the stream is sent
 * every event, and building the objects only to serialise them cost more than the rest of the
 * hub's work on an event. Same members in the same order (a unit test holds the two together).
 */
export function eventJsonText(e: StoredEvent): string {
  const m = e.message;
  let system = '{';
  system = putText(system, 'message-id', m.messageId);
  system = putText(system, 'correlation-id', m.correlationId);
  system = putText(system, 'user-id', m.userId);
  system = putText(system, 'to', m.to);
  system = putText(system, 'absolute-expiry-time', m.expiry);
  system = putText(system, 'content-type', m.contentType);
  system = putText(system, 'content-encoding', m.contentEncoding);
  system = putText(system, 'iothub-creation-time-utc', m.creationTime);
  system = putText(system, 'dt-subject', m.component);
  system = putText(system, 'iothub-interface-id', m.interfaceId);
  system = putText(system, 'iothub-outputname', m.outputName);
  let ann = senderAnnotations(e);
  ann = member(ann, 'iothub-enqueuedtime', e.enqueuedTime);
  ann = member(ann, 'iothub-message-source', e.messageSource);
  ann = member(ann, 'x-opt-sequence-number', e.partitionSequenceNumber);
  ann = member(ann, 'x-opt-offset', String(e.offset));
  ann = member(ann, 'x-opt-enqueued-time', e.enqueuedTime);
  let props = '{';
  for (const k in m.properties) props = member(props, k, m.properties[k]!);
  const moduleId = e.moduleId !== undefined ? `,"moduleId":${str(e.moduleId)}` : '';
  return (
    `{"sequenceNumber":${e.sequenceNumber},"partition":${e.partition},"partitionSequenceNumber":${e.partitionSequenceNumber},"offset":${e.offset}` +
    `,"enqueuedTime":"${isoTime(e.enqueuedTime)}","deviceId":${str(e.deviceId)},"body":"${m.body.toString('base64')}"` +
    `,"systemProperties":${system}},"annotations":${ann}},"properties":${props}}${moduleId}}`
  );
}
