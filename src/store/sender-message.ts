import type { AuthResult } from '../model/identity.ts';
import type { Message } from '../model/message.ts';
import type { StoredMessage } from './message-store/types.ts';
import { compactAuthMethod, expandAuthMethod } from '../identity/auth-method.ts';
import { encodeMessageMeta, messageOfMeta } from '../model/message-codec.ts';

/**
 * Telemetry as the gateway's durable store keeps it, and back. System properties are keyed by
 * the route language's names (routing/message.ts), so routes read them directly; what the
 * route language has no name for (expiry, interface id) rides along under names of our own.
 * The two functions are exact inverses for every field of Message, so what a leaf sent is what
 * the parent receives.
 */

/** System property keys beyond the route language's, for fields routes cannot query. */
const EXPIRY = 'absoluteExpiryTime';
const INTERFACE_ID = 'interfaceId';

/** Route source of downstream device telemetry (module outputs: /messages/modules/{m}/outputs/{o}). */
export function routeSourceOf(auth: Pick<AuthResult, 'identity'>, message: Pick<Message, 'outputName'>): string {
  const { moduleId } = auth.identity;
  if (moduleId !== undefined && message.outputName !== undefined)
    return `/messages/modules/${moduleId}/outputs/${message.outputName}`;
  if (moduleId !== undefined) return `/messages/modules/${moduleId}`;
  return '/messages';
}

// Module-level helpers rather than closures: these run for every message a gateway forwards.
function put(s: Record<string, string | undefined>, k: string, v: string | undefined): void {
  if (v !== undefined) s[k] = v;
}

function get(s: Record<string, unknown>, k: string): string | undefined {
  const v = s[k];
  return v === undefined || v === null ? undefined : String(v);
}

/** Who sent a message, as the gateway's store keeps it. */
interface Sender {
  deviceId: string;
  moduleId?: string;
  authMethod: string;
  generationId?: string;
}

/** A sender with what every one of its messages repeats, worked out once. */
class KnownSender {
  /** `d` or `d/m`. */
  readonly name: string;
  /** The start of each record, up to the arrival time. */
  readonly head: string;

  constructor(readonly who: Sender) {
    this.name = who.moduleId === undefined ? who.deviceId : `${who.deviceId}/${who.moduleId}`;
    this.head =
      `${recordPrefixOf(who.deviceId, who.moduleId)}${JSON.stringify(compactAuthMethod(who.authMethod))},` +
      `${who.generationId === undefined ? 'null' : JSON.stringify(who.generationId)},`;
  }
}

/** A session's AuthResult stays the same object while it lasts (renewal brings a new one). */
const knownSenders = new WeakMap<AuthResult, KnownSender>();

/**
 * A message a device or module sent, as the gateway stores and forwards it: the message as
 * sent plus who sent it and when it arrived. Routes see it as a StoredMessage; its system
 * properties are only built when a route condition reads them, and the store keeps it as one
 * short text (`record`) rather than JSON of every property, because this runs for every
 * message a gateway takes.
 */
export class SenderMessage implements StoredMessage {
  private system: Record<string, string | undefined> | undefined;
  readonly source: string;

  /** `message` is shared, not copied: nothing downstream of the store may change it. */
  constructor(
    readonly message: Message,
    private readonly from: KnownSender,
    readonly enqueuedTime: number,
  ) {
    this.source = routeSourceOf({ identity: from.who }, message);
  }

  get sender(): string {
    return this.from.name;
  }

  get body(): Buffer {
    return this.message.body;
  }

  get appProperties(): Record<string, string> {
    return this.message.properties;
  }

  get systemProperties(): Record<string, string | undefined> {
    return (this.system ??= systemPropertiesOf(this.message, this.from.who, this.enqueuedTime));
  }

  /** `1` and a JSON array: device, module, auth method, generation, arrival, the message's own meta. */
  record(): string {
    return `${this.from.head}${this.enqueuedTime},${encodeMessageMeta(this.message)}]`;
  }
}

/** Never `{`: the store tells these records from its JSON by the first character. */
const RECORD_V1 = '1';

/** How every stored record of a sender begins (the store finds a sender's rows by it). */
export function recordPrefixOf(deviceId: string, moduleId: string | undefined): string {
  return `${RECORD_V1}[${JSON.stringify(deviceId)},${moduleId === undefined ? 'null' : JSON.stringify(moduleId)},`;
}

/** A `SenderMessage.record` text and its body as the message again (the store reads its rows with it). */
export function reviveSenderMessage(record: string, body: Buffer): SenderMessage {
  if (!record.startsWith(RECORD_V1)) throw new Error(`unknown stored message form "${record.slice(0, 8)}"`);
  const [deviceId, moduleId, authMethod, generationId, enqueuedTime, meta] = JSON.parse(
    record.slice(RECORD_V1.length),
  ) as [string, string | null, string, string | null, number, Record<string, unknown>];
  const who: Sender = { deviceId, authMethod: expandAuthMethod(authMethod) };
  if (moduleId !== null) who.moduleId = moduleId;
  if (generationId !== null) who.generationId = generationId;
  return new SenderMessage(messageOfMeta(meta, body), new KnownSender(who), enqueuedTime);
}

function systemPropertiesOf(message: Message, who: Sender, enqueuedTime: number): Record<string, string | undefined> {
  const s: Record<string, string | undefined> = {};
  put(s, 'messageId', message.messageId);
  put(s, 'correlationId', message.correlationId);
  put(s, 'userId', message.userId);
  put(s, 'to', message.to);
  put(s, 'contentType', message.contentType);
  put(s, 'contentEncoding', message.contentEncoding);
  put(s, 'outputName', message.outputName);
  put(s, 'creationTime', message.creationTime);
  put(s, 'dt-subject', message.component);
  put(s, INTERFACE_ID, message.interfaceId);
  put(s, EXPIRY, message.expiry === undefined ? undefined : String(message.expiry));
  put(s, 'connectionDeviceId', who.deviceId);
  put(s, 'connectionModuleId', who.moduleId);
  put(s, 'connectionAuthMethod', who.authMethod);
  put(s, 'connectionDeviceGenerationId', who.generationId);
  put(s, 'enqueuedTime', new Date(enqueuedTime).toISOString());
  return s;
}

/** The store's form of a message a device or module sent (`sender` = `d` or `d/m`). */
export function storedMessageOf(auth: AuthResult, message: Message, enqueuedTime = Date.now()): SenderMessage {
  let from = knownSenders.get(auth);
  if (!from) {
    const { deviceId, moduleId } = auth.identity;
    const who: Sender = { deviceId, authMethod: auth.authMethod };
    if (moduleId !== undefined) who.moduleId = moduleId;
    if (auth.generationId !== undefined) who.generationId = auth.generationId;
    from = new KnownSender(who);
    knownSenders.set(auth, from);
  }
  return new SenderMessage(message, from, enqueuedTime);
}

/**
 * The message as its sender sent it (what goes upstream on the sender's behalf). For a
 * SenderMessage that is the very object received: read it, do not change it.
 */
export function messageOfStored(m: StoredMessage): Message {
  if (m instanceof SenderMessage) return m.message;
  const s = m.systemProperties ?? {};
  const out: Message = { body: m.body, properties: { ...(m.appProperties ?? {}) } };
  const messageId = get(s, 'messageId');
  if (messageId !== undefined) out.messageId = messageId;
  const correlationId = get(s, 'correlationId');
  if (correlationId !== undefined) out.correlationId = correlationId;
  const userId = get(s, 'userId');
  if (userId !== undefined) out.userId = userId;
  const to = get(s, 'to');
  if (to !== undefined) out.to = to;
  const contentType = get(s, 'contentType');
  if (contentType !== undefined) out.contentType = contentType;
  const contentEncoding = get(s, 'contentEncoding');
  if (contentEncoding !== undefined) out.contentEncoding = contentEncoding;
  const outputName = get(s, 'outputName');
  if (outputName !== undefined) out.outputName = outputName;
  const creationTime = get(s, 'creationTime');
  if (creationTime !== undefined) out.creationTime = creationTime;
  const component = get(s, 'dt-subject');
  if (component !== undefined) out.component = component;
  const interfaceId = get(s, INTERFACE_ID);
  if (interfaceId !== undefined) out.interfaceId = interfaceId;
  const expiry = get(s, EXPIRY);
  if (expiry !== undefined && Number.isFinite(Number(expiry))) out.expiry = Number(expiry);
  return out;
}

/** `d` or `d/m` (a StoredMessage's sender) as an identity. */
export function senderIdentity(sender: string): { deviceId: string; moduleId?: string } {
  const slash = sender.indexOf('/');
  return slash < 0 ? { deviceId: sender } : { deviceId: sender.slice(0, slash), moduleId: sender.slice(slash + 1) };
}
