import type { ServerResponse } from 'node:http';

/**
 * Errors in Azure Storage's form (XML `<Error><Code>..</Code><Message>..</Message></Error>`, the
 * code also in `x-ms-error-code`), which the Azure Storage SDKs read and show.
 */

export type BlobErrorCode =
  | 'AuthenticationFailed'
  | 'AuthorizationFailure'
  | 'InvalidUri'
  | 'InvalidHeaderValue'
  | 'MissingRequiredHeader'
  | 'Md5Mismatch'
  | 'RequestBodyTooLarge'
  | 'UnsupportedHttpVerb'
  | 'NotImplemented'
  | 'ServerBusy'
  | 'InternalError';

const escapeXml = (s: string) =>
  s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] ?? c);

/** Ends `res` with a storage error, unless its head has gone already (then the socket is cut). */
export function sendBlobError(
  res: ServerResponse,
  status: number,
  code: BlobErrorCode,
  message: string,
  extraHeaders: Record<string, string> = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = `<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>${escapeXml(message)}</Message></Error>`;
  res.writeHead(status, {
    'Content-Type': 'application/xml',
    'Content-Length': Buffer.byteLength(body),
    'x-ms-error-code': code,
    ...extraHeaders,
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
