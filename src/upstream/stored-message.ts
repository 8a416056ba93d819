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

/** The store's form of a message a device or module sent (`sender` = `d` or `d/m`). */
export function storedMessageOf(auth: AuthResult, message: Message, enqueuedTime = Date.now()): StoredMessage {
  const s: Record<string, string | undefined> = {};
  const put = (k: string, v: string | undefined) => {
    if (v !== undefined) s[k] = v;
  };
  put('messageId', message.messageId);
  put('correlationId', message.correlationId);
  put('userId', message.userId);
  put('to', message.to);
  put('contentType', message.contentType);
  put('contentEncoding', message.contentEncoding);
  put('outputName', message.outputName);
  put('creationTime', message.creationTime);
  put('dt-subject', message.component);
  put(INTERFACE_ID, message.interfaceId);
  put(EXPIRY, message.expiry === undefined ? undefined : String(message.expiry));
  put('connectionDeviceId', auth.identity.deviceId);
  put('connectionModuleId', auth.identity.moduleId);
  put('connectionAuthMethod', auth.authMethod);
  put('connectionDeviceGenerationId', auth.generationId);
  put('enqueuedTime', new Date(enqueuedTime).toISOString());
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
  const get = (k: string): string | undefined => {
    const v = s[k];
    return v === undefined || v === null ? undefined : String(v);
  };
  const messageId = get('messageId');
  if (messageId !== undefined) out.messageId = messageId;
  const correlationId = get('correlationId');
  if (correlationId !== undefined) out.correlationId = correlationId;
  const userId = get('userId');
  if (userId !== undefined) out.userId = userId;
  const to = get('to');
  if (to !== undefined) out.to = to;
  const contentType = get('contentType');
  if (contentType !== undefined) out.contentType = contentType;
  const contentEncoding = get('contentEncoding');
  if (contentEncoding !== undefined) out.contentEncoding = contentEncoding;
  const outputName = get('outputName');
  if (outputName !== undefined) out.outputName = outputName;
  const creationTime = get('creationTime');
  if (creationTime !== undefined) out.creationTime = creationTime;
  const component = get('dt-subject');
  if (component !== undefined) out.component = component;
  const interfaceId = get(INTERFACE_ID);
  if (interfaceId !== undefined) out.interfaceId = interfaceId;
  const expiry = get(EXPIRY);
  if (expiry !== undefined && Number.isFinite(Number(expiry))) out.expiry = Number(expiry);
  return out;
}

/** `d` or `d/m` (a StoredMessage's sender) as an identity. */
export function senderIdentity(sender: string): { deviceId: string; moduleId?: string } {
  const slash = sender.indexOf('/');
  return slash < 0 ? { deviceId: sender } : { deviceId: sender.slice(0, slash), moduleId: sender.slice(slash + 1) };
}
