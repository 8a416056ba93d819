import type { AuthResult, Message } from '../engine/types.ts';
import type { StoredMessage } from '../store/message-store.ts';

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
  if (moduleId !== undefined && message.outputName !== undefined) return `/messages/modules/${moduleId}/outputs/${message.outputName}`;
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

/** The store's form of a message a device or module sent (`sender` = `d` or `d/m`). */
export function storedMessageOf(auth: AuthResult, message: Message, enqueuedTime = Date.now()): StoredMessage {
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
  put(s, 'connectionDeviceId', auth.identity.deviceId);
  put(s, 'connectionModuleId', auth.identity.moduleId);
  put(s, 'connectionAuthMethod', auth.authMethod);
  put(s, 'connectionDeviceGenerationId', auth.generationId);
  put(s, 'enqueuedTime', new Date(enqueuedTime).toISOString());
  const { deviceId, moduleId } = auth.identity;
  return {
    body: message.body,
    systemProperties: s,
    appProperties: { ...message.properties },
    source: routeSourceOf(auth, message),
    sender: moduleId === undefined ? deviceId : `${deviceId}/${moduleId}`,
  };
}

/** The message as its sender sent it (what goes upstream on the sender's behalf). */
export function messageOfStored(m: StoredMessage): Message {
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
