/**
 * The canonical message every head decodes into and encodes from, and what a forwarded
 * message carries about where it came from.
 */

/** The canonical message every head decodes into and encodes from. */
export interface Message {
  body: Buffer;
  /** `$.mid` / IoTHub-MessageId / AMQP message_id. */
  messageId?: string;
  /** `$.cid` / IoTHub-CorrelationId / AMQP correlation_id. */
  correlationId?: string;
  /** `$.uid` / IoTHub-UserId / AMQP user_id. */
  userId?: string;
  /** `$.to` / IoTHub-To / AMQP to. */
  to?: string;
  /** Absolute expiry, epoch ms (`$.exp` / IoTHub-Expiry / AMQP absolute_expiry_time). */
  expiry?: number;
  /** `$.ct` / iothub-contenttype / AMQP content_type. */
  contentType?: string;
  /** `$.ce` / iothub-contentencoding / AMQP content_encoding. */
  contentEncoding?: string;
  /** `$.on`: the module output the message was sent on. */
  outputName?: string;
  /** `$.sub`: the Plug and Play component. */
  component?: string;
  /** `$.ifid`: the Plug and Play interface id. */
  interfaceId?: string;
  /** `$.ctime` / iothub-creation-time-utc, as the sender wrote it. */
  creationTime?: string;
  /** Application properties, in the order received. */
  properties: Record<string, string>;
}

/** Default maximum size of one message: body plus property names and values. */
export const MAX_MESSAGE_BYTES = 256 * 1024;

/**
 * A child gateway numbers what it forwards (store/origin-watermarks.ts stores each once).
 * What a forwarded message says about its place in its stream.
 */
export interface ForwardedOrigin {
  stream: string;
  seq: number;
  /** The stream's message sent just before this one, or 0 when all before it were acknowledged. */
  prev: number;
}

/**
 * A child gateway's batch as it arrived (AMQP): the transfer's payload, and its stream as the
 * child named it (the items' origins carry the same stream prefixed with the sender). A gateway
 * may pass it on to its parent unchanged instead of storing it (edge/direct-forward.ts).
 */
export interface ForwardedBatch {
  payload: Buffer;
  stream: string;
  /** A relay batch (messages of many senders, each named in it): passed on only on a relay link. */
  relay?: true;
}
