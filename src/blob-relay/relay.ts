import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import type { ClientVerdict } from '../registry-proxy/client-auth.ts';
import { challengeHeader } from '../registry-proxy/errors.ts';
import { type BlobDirectory, BlobIncomplete, BlobMd5Mismatch, BlobTooLarge, blobSegments } from './blob-dir.ts';
import { sendBlobError } from './errors.ts';
import type { BlobMetrics } from './metrics.ts';

/**
 * `/storage/...` on a gateway's 443, as IoT Edge's API proxy routes blob uploads: a lower layer
 * forwards the request, path and query unchanged, to its parent's `/storage/`; the top layer
 * drops the `/storage` prefix (as the proxy does before its blob module) and keeps the blob in
 * its `[blob] dir`. Clients sign in as for `/v2/` (Basic: an IoT Edge device of the scope and a
 * SAS token for it); each layer signs in to its parent as itself. Bodies stream through, never
 * held whole. Only Put Blob of a block blob (one request per blob) is taken.
 */

export type BlobTarget =
  | { kind: 'dir'; dir: BlobDirectory }
  | { kind: 'parent'; base: URL; agent: https.Agent; auth: () => string; description: string }
  | { kind: 'none'; why: string };

export interface BlobRelayDeps {
  target: BlobTarget;
  authenticate(authorization: string | undefined): Promise<ClientVerdict>;
  realm: () => string;
  metrics?: BlobMetrics;
  log: Logger;
}

// Not passed on: they describe this hop, or carry the client's sign-in here.
const HOP_HEADERS = new Set([
  'authorization',
  'expect',
  'host',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
]);

function forwardHeaders(h: IncomingMessage['headers']): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP_HEADERS.has(k)) out[k] = v;
  return out;
}

export function blobRelay(d: BlobRelayDeps): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    // Every answer but a 201 counts as refused (4xx) or failed (5xx or cut).
    res.once('finish', () => {
      if (res.statusCode >= 400) d.metrics?.uploads.inc({ result: res.statusCode < 500 ? 'refused' : 'failed' });
    });
    handle(d, req, res).catch((err: unknown) => {
      d.log.error({ err: (err as Error).message, url: req.url }, 'blob upload failed');
      sendBlobError(res, 500, 'InternalError', 'the gateway could not handle the upload');
    });
  };
}

async function handle(d: BlobRelayDeps, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'https://gateway');
  const rest = url.pathname.replace(/^\/storage\/?/, '');
  if (req.method !== 'PUT') {
    req.resume();
    return sendBlobError(res, 405, 'UnsupportedHttpVerb', `${req.method} is not taken here: upload a blob with PUT`, {
      Allow: 'PUT',
    });
  }
  const verdict = await d.authenticate(req.headers.authorization);
  if (!verdict.ok) {
    req.resume();
    d.log.warn({ reason: verdict.reason, url: url.pathname }, `blob upload refused: ${verdict.message}`);
    if (verdict.status === 401)
      return sendBlobError(res, 401, 'AuthenticationFailed', verdict.message, {
        'WWW-Authenticate': challengeHeader(d.realm()),
      });
    return sendBlobError(res, 403, 'AuthorizationFailure', verdict.message);
  }
  if (url.searchParams.has('comp')) {
    req.resume();
    return sendBlobError(
      res,
      501,
      'NotImplemented',
      `comp=${url.searchParams.get('comp')} is not relayed: upload each blob whole with one Put Blob request`,
    );
  }
  const segments = blobSegments(rest);
  if (typeof segments === 'string') {
    req.resume();
    return sendBlobError(res, 400, 'InvalidUri', segments);
  }
  const blobType = req.headers['x-ms-blob-type'];
  if (blobType !== 'BlockBlob') {
    req.resume();
    return blobType === undefined
      ? sendBlobError(res, 400, 'MissingRequiredHeader', 'x-ms-blob-type is missing: send x-ms-blob-type: BlockBlob')
      : sendBlobError(res, 400, 'InvalidHeaderValue', `x-ms-blob-type ${blobType} is not taken: only BlockBlob`);
  }
  const t = d.target;
  if (t.kind === 'none') {
    req.resume();
    return sendBlobError(res, 501, 'NotImplemented', t.why);
  }
  if (t.kind === 'parent') return forward(d, t, req, res, verdict.who);
  return store(d, t.dir, segments, req, res, verdict.who);
}

async function store(
  d: BlobRelayDeps,
  dir: BlobDirectory,
  segments: string[],
  req: IncomingMessage,
  res: ServerResponse,
  who: string,
): Promise<void> {
  const length = req.headers['content-length'];
  const contentLength = length === undefined ? undefined : Number(length);
  if (contentLength !== undefined && contentLength > dir.maxBytes) {
    req.resume();
    return sendBlobError(
      res,
      413,
      'RequestBodyTooLarge',
      `the blob is larger than [blob] max_size (${dir.maxBytes} bytes)`,
    );
  }
  const md5 = req.headers['content-md5'];
  try {
    const kept = await dir.put(segments, req, { contentLength, contentMd5: typeof md5 === 'string' ? md5 : undefined });
    d.log.info({ who, blob: segments.join('/'), bytes: kept.bytes, sha256: kept.sha256 }, 'blob kept');
    d.metrics?.uploads.inc({ result: 'kept' });
    d.metrics?.bytes.inc({ result: 'kept' }, kept.bytes);
    res.writeHead(201, {
      ETag: `"0x${kept.sha256.slice(0, 16).toUpperCase()}"`,
      'Last-Modified': new Date().toUTCString(),
      'Content-MD5': kept.md5,
      'x-ms-content-sha256': kept.sha256,
      'x-ms-request-server-encrypted': 'false',
      ...(req.headers['x-ms-version'] ? { 'x-ms-version': String(req.headers['x-ms-version']) } : {}),
      'Content-Length': 0,
    });
    res.end();
  } catch (err) {
    d.log.warn({ who, blob: segments.join('/'), err: (err as Error).message }, 'blob upload not kept');
    if (err instanceof BlobTooLarge) return sendBlobError(res, 413, 'RequestBodyTooLarge', err.message);
    if (err instanceof BlobMd5Mismatch) return sendBlobError(res, 400, 'Md5Mismatch', err.message);
    if (err instanceof BlobIncomplete) return sendBlobError(res, 400, 'InvalidHeaderValue', err.message);
    // The client went away mid-body: nothing to answer.
    if (req.destroyed || (err as NodeJS.ErrnoException).code === 'ECONNRESET') return void res.destroy();
    throw err;
  }
}

async function forward(
  d: BlobRelayDeps,
  t: Extract<BlobTarget, { kind: 'parent' }>,
  req: IncomingMessage,
  res: ServerResponse,
  who: string,
): Promise<void> {
  const target = new URL(req.url ?? '/', t.base);
  const headers = { ...forwardHeaders(req.headers), Authorization: t.auth() };
  const up = https.request(target, { method: 'PUT', agent: t.agent, headers });
  const answered = new Promise<IncomingMessage>((resolve, reject) => {
    up.once('response', resolve);
    up.once('error', reject);
  });
  // The body goes up as it comes; a client that stops mid-body cuts the upload above too.
  const sent = pipeline(req, up).catch((err: Error) => err);
  let answer: IncomingMessage;
  try {
    answer = await answered;
  } catch (err) {
    req.resume();
    d.log.warn({ who, err: (err as Error).message }, `blob upload: cannot reach ${t.description}`);
    return sendBlobError(
      res,
      503,
      'ServerBusy',
      `cannot reach ${t.description} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
  const passHeaders: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(answer.headers))
    if (v !== undefined && !HOP_HEADERS.has(k) && k !== 'www-authenticate') passHeaders[k] = v;
  // A 401 from above is this gateway's credentials, not the client's: the client is told to sign in here.
  if (answer.statusCode === 401) passHeaders['www-authenticate'] = challengeHeader(d.realm());
  res.writeHead(answer.statusCode ?? 502, passHeaders);
  await pipeline(answer, res).catch(() => res.destroy());
  const err = await sent;
  if (err instanceof Error) d.log.debug({ who, err: err.message }, 'blob upload body cut');
  else if (answer.statusCode === 201) {
    d.metrics?.uploads.inc({ result: 'forwarded' });
    d.metrics?.bytes.inc({ result: 'forwarded' }, Number(req.headers['content-length'] ?? 0) || 0);
  }
  d.log.info({ who, path: target.pathname, status: answer.statusCode }, 'blob upload forwarded');
}
