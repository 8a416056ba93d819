/**
 * A refusal with IoT Hub's HTTP status and error code; the REST layer turns it into the
 * `{"Message":"ErrorCode:{code};{text}"}` body the service SDKs parse, and the protocol heads
 * into their own error replies.
 */
export class HubError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
    this.name = 'HubError';
  }
}

export const badRequest = (message: string, code = 'ArgumentInvalid') => new HubError(400, code, message);
export const deviceNotFound = (deviceId: string) => new HubError(404, 'DeviceNotFound', `device ${deviceId} does not exist`);
export const moduleNotFound = (deviceId: string, moduleId: string) =>
  new HubError(404, 'ModuleNotFound', `module ${moduleId} does not exist on device ${deviceId}`);
export const preconditionFailed = (what: string, given: string, current: string) =>
  new HubError(412, 'PreconditionFailed', `the etag ${given} given for ${what} is stale: the current etag is ${current}`);
