import type { C2DAck } from '../../model/c2d.ts';
import type { IdentityRef } from '../../model/identity.ts';
import type { Message } from '../../model/message.ts';
import type { SubscriptionKind } from '../../engine/types.ts';

/** What a PUBLISH from a device asks for, decided by its topic name. */
export type PublishTarget =
  | { kind: 'telemetry'; identity: IdentityRef; bag: string }
  | { kind: 'twin-get'; rid: string }
  | { kind: 'twin-patch-reported'; rid: string }
  | { kind: 'method-response'; rid: string; status: number }
  | { kind: 'unknown'; why: string };

/** Splits `path/?a=b&c=d` (or `path?a=b`) into its path and decoded query values. */
function splitQuery(topic: string): { path: string; query: Map<string, string> } {
  const q = topic.indexOf('?');
  const path = q < 0 ? topic : topic.slice(0, q);
  const query = new Map<string, string>();
  if (q >= 0) {
    for (const part of topic.slice(q + 1).split('&')) {
      if (!part) continue;
      const eq = part.indexOf('=');
      const k = safeDecode(eq < 0 ? part : part.slice(0, eq));
      const v = safeDecode(eq < 0 ? '' : part.slice(eq + 1));
      if (k !== undefined && v !== undefined) query.set(k, v);
    }
  }
  return { path: path.endsWith('/') ? path.slice(0, -1) : path, query };
}

function safeDecode(s: string): string | undefined {
  if (s.indexOf('%') < 0 && s.indexOf('+') < 0) return s;
  try {
    return decodeURIComponent(s.replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

/** The property bag after the fixed segments; the Node SDK ends output-event topics with a `/`. */
function bagOf(parts: string[], from: number): string {
  const bag = parts.slice(from).join('/');
  return bag.endsWith('/') ? bag.slice(0, -1) : bag;
}

/** Classifies a device's PUBLISH topic. */
export function parsePublishTopic(topic: string): PublishTarget {
  if (topic.startsWith('devices/')) {
    // devices/{d}/messages/events/{bag}  |  devices/{d}/modules/{m}/messages/events/{bag}
    const parts = topic.split('/');
    if (parts.length >= 4 && parts[2] === 'messages' && parts[3] === 'events') {
      return { kind: 'telemetry', identity: { deviceId: parts[1] }, bag: bagOf(parts, 4) };
    }
    if (parts.length >= 6 && parts[2] === 'modules' && parts[4] === 'messages' && parts[5] === 'events') {
      return { kind: 'telemetry', identity: { deviceId: parts[1], moduleId: parts[3] }, bag: bagOf(parts, 6) };
    }
    return { kind: 'unknown', why: `"${topic}" is not a telemetry topic` };
  }
  if (topic.startsWith('$iothub/')) {
    const { path, query } = splitQuery(topic);
    const rid = query.get('$rid');
    if (path === '$iothub/twin/GET') {
      return rid ? { kind: 'twin-get', rid } : { kind: 'unknown', why: 'twin GET without $rid' };
    }
    if (path === '$iothub/twin/PATCH/properties/reported') {
      return rid
        ? { kind: 'twin-patch-reported', rid }
        : { kind: 'unknown', why: 'reported properties PATCH without $rid' };
    }
    const m = /^\$iothub\/methods\/res\/(\d{3})$/.exec(path);
    if (m)
      return rid
        ? { kind: 'method-response', rid, status: Number(m[1]) }
        : { kind: 'unknown', why: 'method response without $rid' };
  }
  return { kind: 'unknown', why: `"${topic}" is not an IoT Hub topic` };
}

/** Maps a SUBSCRIBE filter to what it asks for, with the identity it concerns (device topics). */
export function parseSubscription(filter: string): { kind: SubscriptionKind; identity?: IdentityRef } | undefined {
  switch (filter) {
    case '$iothub/twin/res/#':
      return { kind: 'twin-responses' };
    case '$iothub/twin/PATCH/properties/desired/#':
      return { kind: 'desired' };
    case '$iothub/methods/POST/#':
      return { kind: 'methods' };
  }
  const parts = filter.split('/');
  if (parts[0] !== 'devices') return undefined;
  if (parts.length === 5 && parts[2] === 'messages' && parts[3] === 'devicebound' && parts[4] === '#') {
    return { kind: 'c2d', identity: { deviceId: parts[1] } };
  }
  if (parts.length === 6 && parts[2] === 'modules' && parts[4] === 'inputs' && parts[5] === '#') {
    return { kind: 'inputs', identity: { deviceId: parts[1], moduleId: parts[3] } };
  }
  return undefined;
}

export class BagError extends Error {}

const SYSTEM_KEYS = new Set([
  '$.mid',
  '$.cid',
  '$.uid',
  '$.to',
  '$.exp',
  '$.ct',
  '$.ce',
  '$.on',
  '$.sub',
  '$.ifid',
  '$.ctime',
]);

/** Decodes a telemetry property bag (`k=v&k2=v2`, URL-encoded) into a message around `body`. */
export function decodeBag(bag: string, body: Buffer): Message {
  const msg: Message = { body, properties: {} };
  if (!bag) return msg;
  for (const part of bag.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const k = safeDecode(eq < 0 ? part : part.slice(0, eq));
    const v = safeDecode(eq < 0 ? '' : part.slice(eq + 1));
    if (k === undefined || v === undefined)
      throw new BagError(`property "${part.slice(0, 64)}" has invalid URL encoding`);
    if (k === '') throw new BagError('a property without a name');
    if (!SYSTEM_KEYS.has(k)) {
      msg.properties[k] = v;
      continue;
    }
    switch (k) {
      case '$.mid':
        msg.messageId = v;
        break;
      case '$.cid':
        msg.correlationId = v;
        break;
      case '$.uid':
        msg.userId = v;
        break;
      case '$.to':
        msg.to = v;
        break;
      case '$.exp': {
        const t = Date.parse(v);
        if (!Number.isFinite(t)) throw new BagError(`$.exp "${v.slice(0, 64)}" is not a date`);
        msg.expiry = t;
        break;
      }
      case '$.ct':
        msg.contentType = v;
        break;
      case '$.ce':
        msg.contentEncoding = v;
        break;
      case '$.on':
        msg.outputName = v;
        break;
      case '$.sub':
        msg.component = v;
        break;
      case '$.ifid':
        msg.interfaceId = v;
        break;
      case '$.ctime':
        msg.creationTime = v;
        break;
    }
  }
  return msg;
}

/** Encodes a message's properties as the bag of a devicebound topic. */
export function encodeBag(m: Message, ack?: C2DAck): string {
  const parts: string[] = [];
  const add = (k: string, v: string | undefined): void => {
    if (v !== undefined) parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  };
  add('$.mid', m.messageId);
  add('$.to', m.to);
  add('$.exp', m.expiry === undefined ? undefined : new Date(m.expiry).toISOString());
  add('$.cid', m.correlationId);
  add('$.uid', m.userId);
  add('$.ct', m.contentType);
  add('$.ce', m.contentEncoding);
  if (ack && ack !== 'none') add('iothub-ack', ack);
  for (const k in m.properties) add(k, m.properties[k]);
  return parts.join('&');
}

/** A telemetry bag key, as the device SDKs write it (`$` escaped). */
function bagKey(k: string): string {
  return encodeURIComponent(k);
}

const K_MID = bagKey('$.mid');
const K_CID = bagKey('$.cid');
const K_UID = bagKey('$.uid');
const K_TO = bagKey('$.to');
const K_EXP = bagKey('$.exp');
const K_CT = bagKey('$.ct');
const K_CE = bagKey('$.ce');
const K_ON = bagKey('$.on');
const K_SUB = bagKey('$.sub');
const K_IFID = bagKey('$.ifid');
const K_CTIME = bagKey('$.ctime');

/**
 * Encodes a message's system and application properties as the bag of a telemetry topic, the
 * way the device SDKs do (URL-encoded, `$` as `%24`): the exact inverse of decodeBag, which is
 * what a gateway forwarding over MQTT relies on.
 */
export function encodeTelemetryBag(m: Message): string {
  let out = '';
  const add = (k: string, v: string): void => {
    out += `${out === '' ? '' : '&'}${k}=${encodeURIComponent(v)}`;
  };
  if (m.messageId !== undefined) add(K_MID, m.messageId);
  if (m.correlationId !== undefined) add(K_CID, m.correlationId);
  if (m.userId !== undefined) add(K_UID, m.userId);
  if (m.to !== undefined) add(K_TO, m.to);
  if (m.expiry !== undefined && Number.isFinite(m.expiry)) add(K_EXP, new Date(m.expiry).toISOString());
  if (m.contentType !== undefined) add(K_CT, m.contentType);
  if (m.contentEncoding !== undefined) add(K_CE, m.contentEncoding);
  if (m.outputName !== undefined) add(K_ON, m.outputName);
  if (m.component !== undefined) add(K_SUB, m.component);
  if (m.interfaceId !== undefined) add(K_IFID, m.interfaceId);
  if (m.creationTime !== undefined) add(K_CTIME, m.creationTime);
  for (const k in m.properties) add(bagKey(k), String(m.properties[k]));
  return out;
}

/** The topic a device or module publishes `m` to: `devices/{d}[/modules/{m}]/messages/events/{bag}`. */
export function telemetryTopic(id: IdentityRef, m: Message): string {
  const base =
    id.moduleId === undefined
      ? `devices/${id.deviceId}/messages/events/`
      : `devices/${id.deviceId}/modules/${id.moduleId}/messages/events/`;
  return base + encodeTelemetryBag(m);
}

/** What a PUBLISH from the parent to a device or module (the client side) carries, decided by its topic. */
export type ParentPublish =
  | { kind: 'twin-response'; status: number; rid: string; version?: number }
  | { kind: 'desired'; version?: number }
  | { kind: 'method'; methodName: string; rid: string }
  | { kind: 'c2d'; deviceId: string; bag: string }
  | { kind: 'input'; deviceId: string; moduleId: string; inputName: string; bag: string }
  | { kind: 'unknown'; why: string };

function versionOf(query: Map<string, string>): number | undefined {
  const v = query.get('$version');
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** Classifies a PUBLISH the parent sends: the inverse of twinResponse / pushDesired / pushMethod / c2dTopic / inputTopic. */
export function parseParentPublish(topic: string): ParentPublish {
  if (topic.startsWith('$iothub/')) {
    const { path, query } = splitQuery(topic);
    const rid = query.get('$rid');
    const res = /^\$iothub\/twin\/res\/(\d{3})$/.exec(path);
    if (res)
      return rid !== undefined
        ? { kind: 'twin-response', status: Number(res[1]), rid, version: versionOf(query) }
        : { kind: 'unknown', why: 'twin response without $rid' };
    if (path === '$iothub/twin/PATCH/properties/desired') return { kind: 'desired', version: versionOf(query) };
    const method = /^\$iothub\/methods\/POST\/([^/]+)$/.exec(path);
    if (method)
      return rid !== undefined
        ? { kind: 'method', methodName: method[1]!, rid }
        : { kind: 'unknown', why: 'method request without $rid' };
    return { kind: 'unknown', why: `"${topic}" is not an IoT Hub topic` };
  }
  const parts = topic.split('/');
  if (parts[0] === 'devices' && parts.length >= 4 && parts[2] === 'messages' && parts[3] === 'devicebound') {
    return { kind: 'c2d', deviceId: parts[1]!, bag: parts.slice(4).join('/') };
  }
  if (parts[0] === 'devices' && parts.length >= 6 && parts[2] === 'modules' && parts[4] === 'inputs') {
    return {
      kind: 'input',
      deviceId: parts[1]!,
      moduleId: parts[3]!,
      inputName: parts[5]!,
      bag: parts.slice(6).join('/'),
    };
  }
  return { kind: 'unknown', why: `"${topic}" is not an IoT Hub topic` };
}

export function c2dTopic(deviceId: string, m: Message, ack?: C2DAck): string {
  return `devices/${deviceId}/messages/devicebound/${encodeBag(m, ack)}`;
}

export function inputTopic(deviceId: string, moduleId: string, inputName: string, m: Message, ack?: C2DAck): string {
  return `devices/${deviceId}/modules/${moduleId}/inputs/${inputName}/${encodeBag(m, ack)}`;
}

/**
 * The MQTT client id names the identity: `{deviceId}` or `{deviceId}/{moduleId}`.
 * Returns undefined when it cannot.
 */
export function identityFromClientId(clientId: string): IdentityRef | undefined {
  if (!clientId) return undefined;
  const slash = clientId.indexOf('/');
  if (slash < 0) return { deviceId: clientId };
  const deviceId = clientId.slice(0, slash);
  const moduleId = clientId.slice(slash + 1);
  if (!deviceId || !moduleId || moduleId.includes('/')) return undefined;
  return { deviceId, moduleId };
}

/**
 * Reads the MQTT user name `{host}/{clientId}/?api-version=...&DeviceClientType=...`
 * (3 or 4 segments, with or without the `?`). Returns the host, the client id it names, and
 * the query values.
 */
export function parseUsername(
  username: string,
): { host: string; clientId: string; query: Map<string, string> } | undefined {
  const slash = username.indexOf('/');
  if (slash <= 0) return undefined;
  const host = username.slice(0, slash);
  let rest = username.slice(slash + 1);
  let queryText = '';
  const q = rest.indexOf('?');
  if (q >= 0) {
    queryText = rest.slice(q + 1);
    rest = rest.slice(0, q);
  } else {
    // Without `?`, the query is the last segment when it holds `=`.
    const last = rest.lastIndexOf('/');
    if (last >= 0 && rest.slice(last + 1).includes('=')) {
      queryText = rest.slice(last + 1);
      rest = rest.slice(0, last);
    }
  }
  if (rest.endsWith('/')) rest = rest.slice(0, -1);
  const query = new Map<string, string>();
  for (const part of queryText.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const k = safeDecode(eq < 0 ? part : part.slice(0, eq));
    const v = safeDecode(eq < 0 ? '' : part.slice(eq + 1));
    if (k !== undefined && v !== undefined) query.set(k, v);
  }
  return { host, clientId: rest, query };
}

export function sameIdentity(a: IdentityRef, b: IdentityRef): boolean {
  return a.deviceId === b.deviceId && a.moduleId === b.moduleId;
}
