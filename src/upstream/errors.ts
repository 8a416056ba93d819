/**
 * What the parent refuses, whatever the protocol: the errors the links report to the gateway,
 * and the outcome of one message sent upstream.
 */

/** A refusal or failure the parent reported, with its AMQP condition. */
export class UpstreamError extends Error {
  /** When set, the pump tries again after this long rather than backing off further (routing/pump.ts). */
  retryAfterMs?: number;
  /** The parent's own words for a refusal it answered, for a gateway to pass on unchanged. */
  parentMessage?: string;

  constructor(
    message: string,
    readonly condition?: string,
    /** IoT Hub's HTTP-like status, for CBS and twin answers. */
    readonly status?: number,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }
}

/** A twin answer outside 2xx as an error carrying the parent's own text (its body is JSON with a message, or plain text). */
export function twinRefusal(operation: string, who: string, status: number, body: Buffer): UpstreamError {
  let text = body.toString('utf8');
  try {
    const parsed = JSON.parse(text) as { message?: string; Message?: string };
    text = parsed.message ?? parsed.Message ?? text;
  } catch {
    /* plain text */
  }
  const err = new UpstreamError(
    `twin ${operation} for ${who} refused by the parent (${status}): ${text}`,
    undefined,
    status,
  );
  err.parentMessage = text;
  return err;
}

/** The link or connection this operation relied on went away; retry once the link is up. */
export class UpstreamDownError extends UpstreamError {
  constructor(message: string) {
    super(message, 'amqp:connection:forced');
    this.name = 'UpstreamDownError';
  }
}

/** The error a down link reports to its callers. */
export function isUpstreamDown(err: unknown): boolean {
  return (
    err instanceof UpstreamDownError || (err instanceof UpstreamError && err.condition === 'amqp:connection:forced')
  );
}

/** The parent's answer to one message: taken, or refused with an AMQP condition (MQTT's refusals are mapped to one). */
export type SendOutcome = { ok: true } | { ok: false; condition: string; description: string; released?: boolean };

/** Refusals of a message that sending it again cannot cure. */
const PERMANENT_MESSAGE = new Set([
  'amqp:link:message-size-exceeded',
  'amqp:decode-error',
  'com.microsoft:argument-error',
  'amqp:invalid-field',
]);

export function isPermanentForMessage(outcome: SendOutcome): boolean {
  return !outcome.ok && PERMANENT_MESSAGE.has(outcome.condition);
}
