import type { EngineErrorCode } from './types.ts';

/** An engine refusal: `code` is what heads map to their wire; `message` is for people and logs. */
export class EngineError extends Error {
  constructor(readonly code: EngineErrorCode, message: string) {
    super(message);
    this.name = 'EngineError';
  }
}

export function isEngineError(err: unknown, code?: EngineErrorCode): err is EngineError {
  return err instanceof EngineError && (code === undefined || err.code === code);
}

const HTTP_STATUS: Record<EngineErrorCode, number> = {
  unauthorized: 401,
  'not-found': 404,
  disabled: 401,
  expired: 401,
  forbidden: 403,
  'bad-request': 400,
  'too-large': 413,
  'queue-full': 403,
  'not-connected': 404,
  timeout: 504,
  precondition: 412,
  throttled: 429,
  unavailable: 503,
  'parent-unreachable': 503,
  'store-full': 503,
  internal: 500,
};

/** The IoT Hub error code names the SDKs understand (sent as `ErrorCode:{name};...`). */
const IOTHUB_CODE: Record<EngineErrorCode, string> = {
  unauthorized: 'IotHubUnauthorizedAccess',
  'not-found': 'DeviceNotFound',
  disabled: 'IotHubUnauthorizedAccess',
  expired: 'IotHubUnauthorizedAccess',
  forbidden: 'IotHubUnauthorizedAccess',
  'bad-request': 'ArgumentInvalid',
  'too-large': 'MessageTooLarge',
  'queue-full': 'DeviceMaximumQueueDepthExceeded',
  'not-connected': 'DeviceNotOnline',
  timeout: 'GatewayTimeout',
  precondition: 'PreconditionFailed',
  throttled: 'ThrottlingException',
  unavailable: 'ServiceUnavailable',
  'parent-unreachable': 'ServiceUnavailable',
  // IoT Hub's answer when it cannot take more for now; the SDKs retry it.
  'store-full': 'ServerBusy',
  internal: 'ServerError',
};

export function httpStatusOf(err: unknown): number {
  return err instanceof EngineError ? HTTP_STATUS[err.code] : 500;
}

export function iotHubErrorCodeOf(err: unknown): string {
  return err instanceof EngineError ? IOTHUB_CODE[err.code] : 'ServerError';
}

/**
 * The engine code of an HTTP-like status a parent answered (twin and method replies carry
 * them), so a gateway passes a refusal on with the status it came with.
 */
export function engineCodeOfStatus(status: number): EngineErrorCode {
  switch (status) {
    case 400: return 'bad-request';
    case 401: return 'unauthorized';
    case 403: return 'forbidden';
    case 404: return 'not-found';
    case 412: return 'precondition';
    case 413: return 'too-large';
    case 429: return 'throttled';
    case 503: return 'unavailable';
    case 504: return 'timeout';
    default: return status >= 400 && status < 500 ? 'bad-request' : 'internal';
  }
}
