/** Direct methods: what the service asks and what a device answers. */

export interface MethodInvokeRequest {
  methodName: string;
  /** Any JSON value (the service sends JSON). */
  payload?: unknown;
  /** Default 30 s. */
  responseTimeoutInSeconds?: number;
  /** How long to wait for the target to connect; default 0 (404 at once when offline). */
  connectTimeoutInSeconds?: number;
}

export interface MethodInvokeResult {
  status: number;
  payload: unknown;
}

/** A method call as a session receives it; answer with `session.methodResponse(requestId, ...)`. */
export interface MethodRequest {
  requestId: string;
  methodName: string;
  /** The JSON payload as bytes. */
  payload: Buffer;
}
