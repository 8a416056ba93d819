import rhea, { type Message as AmqpMessage } from 'rhea';
import type { StoredEvent } from '../../../engine/types.ts';

/**
 * A stored event as IoT Hub's built-in endpoint delivers it: the device's body and application
 * properties, its system properties as AMQP properties, and the hub's stamps as message
 * annotations (`x-opt-*` for the Event Hubs clients, `iothub-*` for IoT Hub readers).
 */

const wrapLong = rhea.types.wrap_long;

export function eventToAmqp(e: StoredEvent): AmqpMessage {
  const m = e.message;
  const enqueued = new Date(e.enqueuedTime);
  const annotations: Record<string, unknown> = {
    'x-opt-sequence-number': wrapLong(e.partitionSequenceNumber),
    'x-opt-offset': String(e.offset),
    'x-opt-enqueued-time': enqueued,
    'iothub-connection-device-id': e.deviceId,
  };
  if (e.moduleId !== undefined) annotations['iothub-connection-module-id'] = e.moduleId;
  annotations['iothub-connection-auth-method'] = e.authMethod;
  if (e.authGenerationId !== undefined) annotations['iothub-connection-auth-generation-id'] = e.authGenerationId;
  annotations['iothub-enqueuedtime'] = enqueued;
  annotations['iothub-message-source'] = e.messageSource;
  if (m.creationTime !== undefined) annotations['iothub-creation-time-utc'] = m.creationTime;
  if (m.component !== undefined) annotations['dt-subject'] = m.component;
  if (m.interfaceId !== undefined) annotations['iothub-interface-id'] = m.interfaceId;

  // Ids stay strings: readers compare them with what the device set, whatever their shape.
  const out: AmqpMessage = { body: rhea.message.data_section(m.body), message_annotations: annotations };
  if (m.messageId !== undefined) out.message_id = m.messageId;
  if (m.correlationId !== undefined) out.correlation_id = m.correlationId;
  if (m.userId !== undefined) out.user_id = Buffer.from(m.userId, 'utf8') as unknown as string;
  if (m.to !== undefined) out.to = m.to;
  if (m.expiry !== undefined) out.absolute_expiry_time = new Date(m.expiry);
  if (m.contentType !== undefined) out.content_type = m.contentType;
  if (m.contentEncoding !== undefined) out.content_encoding = m.contentEncoding;
  const props = m.properties;
  for (const _ in props) {
    out.application_properties = props;
    break;
  }
  return out;
}
