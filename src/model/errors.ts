/**
 * The error vocabulary every layer shares. `EngineError` is a refusal by the engine or a layer
 * below it, named by a code; `HubError` carries an IoT Hub status and error code as they are,
 * for the registry and service API. Heads map both to their wire.
 */

/**
 * Why the engine refused or failed an operation. Heads map the code to their wire
 * (MQTT CONNACK code, AMQP error condition, HTTP status + IoT Hub error code) with the
 * catalogue below.
 */
export type EngineErrorCode =
  | 'unauthorized' // bad credential: wrong key, bad signature, wrong audience, unknown certificate
  | 'not-found' // no such device/module, or no such lock token / message
  | 'disabled' // the identity exists but is disabled
  | 'expired' // the credential's lifetime is over
  | 'forbidden' // authenticated, but acting for another identity (e.g. another device's topic)
  | 'bad-request' // malformed input (properties, JSON, ids)
  | 'too-large' // message over the size limit
  | 'queue-full' // C2D queue at its maximum depth
  | 'not-connected' // direct method / delivery target not connected (or not subscribed)
  | 'timeout' // direct method response did not arrive in time
  | 'precondition' // stale etag / version
  | 'throttled'
  | 'unavailable' // shutting down, store closed
  | 'parent-unreachable' // a gateway cannot take this now without its parent: send it again soon
  | 'store-full' // the node's store cannot take messages now (its disk is under the free-space reserve)
  | 'internal';

/** An engine refusal: `code` is what heads map to their wire; `message` is for people and logs. */
export class EngineError extends Error {
  constructor(
    readonly code: EngineErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'EngineError';
  }
}

export function isEngineError(err: unknown, code?: EngineErrorCode): err is EngineError {
  return err instanceof EngineError && (code === undefined || err.code === code);
}

/**
 * One entry per code: the status IoT Hub answers with (HTTP status on REST; the same number
 * travels in MQTT twin responses and AMQP status annotations) and the IoT Hub error code name
 * the SDKs understand (sent as `ErrorCode:{name};...`). AMQP conditions and MQTT CONNACK codes
 * are mapped by their heads.
 */
export const ERROR_CATALOGUE: Readonly<Record<EngineErrorCode, { status: number; iotHub: string }>> = {
  unauthorized: { status: 401, iotHub: 'IotHubUnauthorizedAccess' },
  'not-found': { status: 404, iotHub: 'DeviceNotFound' },
  disabled: { status: 401, iotHub: 'IotHubUnauthorizedAccess' },
  expired: { status: 401, iotHub: 'IotHubUnauthorizedAccess' },
  forbidden: { status: 403, iotHub: 'IotHubUnauthorizedAccess' },
  'bad-request': { status: 400, iotHub: 'ArgumentInvalid' },
  'too-large': { status: 413, iotHub: 'MessageTooLarge' },
  'queue-full': { status: 403, iotHub: 'DeviceMaximumQueueDepthExceeded' },
  'not-connected': { status: 404, iotHub: 'DeviceNotOnline' },
  timeout: { status: 504, iotHub: 'GatewayTimeout' },
  precondition: { status: 412, iotHub: 'PreconditionFailed' },
  throttled: { status: 429, iotHub: 'ThrottlingException' },
  unavailable: { status: 503, iotHub: 'ServiceUnavailable' },
  'parent-unreachable': { status: 503, iotHub: 'ServiceUnavailable' },
  // IoT Hub's answer when it cannot take more for now; the SDKs retry it.
  'store-full': { status: 503, iotHub: 'ServerBusy' },
  internal: { status: 500, iotHub: 'ServerError' },
};

export function httpStatusOf(err: unknown): number {
  return err instanceof EngineError ? ERROR_CATALOGUE[err.code].status : 500;
}

export function iotHubErrorCodeOf(err: unknown): string {
  return err instanceof EngineError ? ERROR_CATALOGUE[err.code].iotHub : 'ServerError';
}

/**
 * The engine code of an HTTP-like status a parent answered (twin and method replies carry
 * them), so a gateway passes a refusal on with the status it came with.
 */
export function engineCodeOfStatus(status: number): EngineErrorCode {
  switch (status) {
    case 400:
      return 'bad-request';
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not-found';
    case 412:
      return 'precondition';
    case 413:
      return 'too-large';
    case 429:
      return 'throttled';
    case 503:
      return 'unavailable';
    case 504:
      return 'timeout';
    default:
      return status >= 400 && status < 500 ? 'bad-request' : 'internal';
  }
}

/**
 * A refusal with IoT Hub's HTTP status and error code; the REST layer turns it into the
 * `{"Message":"ErrorCode:{code};{text}"}` body the service SDKs parse, and the protocol heads
 * into their own error replies.
 */
export class HubError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'HubError';
  }
}

export const badRequest = (message: string, code = 'ArgumentInvalid') => new HubError(400, code, message);
export const deviceNotFound = (deviceId: string) =>
  new HubError(404, 'DeviceNotFound', `device ${deviceId} does not exist`);
export const moduleNotFound = (deviceId: string, moduleId: string) =>
  new HubError(404, 'ModuleNotFound', `module ${moduleId} does not exist on device ${deviceId}`);
export const preconditionFailed = (what: string, given: string, current: string) =>
  new HubError(
    412,
    'PreconditionFailed',
    `the etag ${given} given for ${what} is stale: the current etag is ${current}`,
  );
