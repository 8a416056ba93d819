import { EngineError, httpStatusOf, iotHubErrorCodeOf } from '../../model/errors.ts';
import type { EngineErrorCode } from '../../model/errors.ts';
import { AccessDenied } from '../../identity/policies.ts';

/** An AMQP error as it goes into a detach, close or rejected outcome. */
export interface AmqpErrorInfo {
  condition: string;
  description: string;
}

/** The conditions IoT Hub uses and the device/service SDKs translate into their error types. */
export const CONDITION = {
  unauthorized: 'amqp:unauthorized-access',
  notFound: 'amqp:not-found',
  notAllowed: 'amqp:not-allowed',
  notImplemented: 'amqp:not-implemented',
  tooLarge: 'amqp:link:message-size-exceeded',
  resourceLimit: 'amqp:resource-limit-exceeded',
  internal: 'amqp:internal-error',
  decode: 'amqp:decode-error',
  invalidField: 'amqp:invalid-field',
  stolen: 'amqp:link:stolen',
  detachForced: 'amqp:link:detach-forced',
  connectionForced: 'amqp:connection:forced',
  framingError: 'amqp:connection:framing-error',
  argument: 'com.microsoft:argument-error',
  timeout: 'com.microsoft:timeout',
  precondition: 'com.microsoft:precondition-failed',
  throttled: 'com.microsoft:device-container-throttled',
  lockLost: 'com.microsoft:message-lock-lost',
  /** Ours, between Strata gateways: the parent gateway waits for its own parent; send again soon. */
  parentUnreachable: 'strata:parent-unreachable',
} as const;

const BY_ENGINE_CODE: Record<EngineErrorCode, string> = {
  unauthorized: CONDITION.unauthorized,
  disabled: CONDITION.unauthorized,
  expired: CONDITION.unauthorized,
  forbidden: CONDITION.unauthorized,
  'not-found': CONDITION.notFound,
  'not-connected': CONDITION.notFound,
  'bad-request': CONDITION.argument,
  'too-large': CONDITION.tooLarge,
  'queue-full': CONDITION.resourceLimit,
  timeout: CONDITION.timeout,
  precondition: CONDITION.precondition,
  throttled: CONDITION.throttled,
  unavailable: CONDITION.timeout,
  'parent-unreachable': CONDITION.parentUnreachable,
  'store-full': CONDITION.resourceLimit,
  internal: CONDITION.internal,
};

/**
 * The other way: a parent's refusal a gateway passes on to its child as an engine error, so the
 * child sees the same condition (a message too large, a sender unknown...). Conditions the child
 * must treat alike but we have no code for become 'unavailable' (sent again).
 */
const BY_CONDITION: Record<string, EngineErrorCode> = {
  [CONDITION.tooLarge]: 'too-large',
  [CONDITION.decode]: 'bad-request',
  [CONDITION.argument]: 'bad-request',
  [CONDITION.invalidField]: 'bad-request',
  [CONDITION.unauthorized]: 'unauthorized',
  [CONDITION.notFound]: 'not-found',
  [CONDITION.throttled]: 'throttled',
  // Relayed telemetry is refused with it only when the parent's store is full.
  [CONDITION.resourceLimit]: 'store-full',
  [CONDITION.parentUnreachable]: 'parent-unreachable',
};

export function engineCodeOfCondition(condition: string): EngineErrorCode {
  return BY_CONDITION[condition] ?? 'unavailable';
}

/** Maps an engine refusal (or anything thrown) to the AMQP error the client sees. */
export function amqpErrorOf(err: unknown): AmqpErrorInfo {
  if (err instanceof EngineError) return { condition: BY_ENGINE_CODE[err.code], description: err.message };
  if (err instanceof AccessDenied) return { condition: CONDITION.unauthorized, description: err.message };
  if (err instanceof AmqpRefusal) return { condition: err.condition, description: err.message };
  return { condition: CONDITION.internal, description: 'internal error' };
}

/** A refusal decided by the AMQP head itself (unknown address, wrong role, missing token). */
export class AmqpRefusal extends Error {
  constructor(
    readonly condition: string,
    message: string,
  ) {
    super(message);
    this.name = 'AmqpRefusal';
  }
}

/** IoT Hub's HTTP-like status for a refusal, as twin and CBS responses carry it. */
export function statusOf(err: unknown): number {
  if (err instanceof AccessDenied) return 401;
  return httpStatusOf(err);
}

/** The IoT Hub error code name for a refusal (`errorCode` in twin error bodies). */
export function errorCodeOf(err: unknown): string {
  if (err instanceof AccessDenied) return 'IotHubUnauthorizedAccess';
  return iotHubErrorCodeOf(err);
}
