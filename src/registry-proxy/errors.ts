import type { ServerResponse } from 'node:http';

/**
 * Errors in the registry API's own form (`{"errors":[{code,message,detail}]}`), which docker,
 * podman and skopeo print, and the Basic challenge a gateway answers an unauthenticated client with.
 */

export type RegistryErrorCode =
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'NAME_INVALID'
  | 'DIGEST_INVALID'
  | 'BLOB_UNKNOWN'
  | 'MANIFEST_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'UNAVAILABLE'
  | 'UNKNOWN';

export const API_VERSION_HEADER = { 'Docker-Distribution-API-Version': 'registry/2.0' };

export function challengeHeader(realm: string): string {
  return `Basic realm="${realm.replace(/["\\]/g, '')}"`;
}

export function errorBody(code: RegistryErrorCode, message: string, detail?: unknown): string {
  return JSON.stringify({ errors: [{ code, message, detail: detail ?? null }] });
}

/** Ends `res` with a registry error, unless its head has gone already (then the socket is cut). */
export function sendRegistryError(
  res: ServerResponse,
  status: number,
  code: RegistryErrorCode,
  message: string,
  extraHeaders: Record<string, string> = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = errorBody(code, message);
  res.writeHead(status, {
    ...API_VERSION_HEADER,
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    ...extraHeaders,
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
