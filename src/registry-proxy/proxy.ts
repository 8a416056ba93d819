import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { type CacheWriter, type ContentCache, sha256Hex } from './cache.ts';
import type { ClientVerdict } from './client-auth.ts';
import { API_VERSION_HEADER, challengeHeader, type RegistryErrorCode, sendRegistryError } from './errors.ts';
import type { RegistryMetrics } from './metrics.ts';
import { type RegistryUpstream, UpstreamUnreachable } from './upstream.ts';

/**
 * A gateway's `/v2/`: the pull side of the OCI distribution API, answered from the cache or
 * passed one layer up. Blobs stream through (the last chunk is held back until the digest is
 * checked, so a corrupt blob never reaches a client whole and is never kept); manifests are
 * small and read whole, checked, kept by digest; a tag's digest is reused for `tagCacheMs`, and
 * after that only while the parent cannot be reached. Pushes are refused: this is a read-only
 * pull-through cache.
 */

export interface RegistryProxyOptions {
  cache: ContentCache;
  /** Undefined on a top layer without `[registry] upstream`; `noUpstream` then says why. */
  upstream?: RegistryUpstream;
  noUpstream?: string;
  authenticate(authorization: string | undefined): Promise<ClientVerdict>;
  metrics: RegistryMetrics;
  tagCacheMs: number;
  /** The Basic realm of the challenge (the gateway's host name). */
  realm: () => string;
  log: Logger;
}

const NAME = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^(sha256|sha384|sha512):([a-f0-9]{64,128})$/;
const MAX_MANIFEST = 4 * 1024 * 1024;
const WAIT_FOR_DOWNLOAD_MS = 15_000;
/** Tags remembered per gateway (the oldest forgotten first). */
const MAX_TAGS = 10_000;
const PASSED_HEADERS = [
  'content-type',
  'content-length',
  'content-range',
  'accept-ranges',
  'docker-content-digest',
  'etag',
  'link',
  'last-modified',
  'oci-subject',
  'oci-filters-applied',
];

class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: RegistryErrorCode,
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}

interface TagEntry {
  digest: string;
  mediaType: string;
  at: number;
}

export function registryProxy(o: RegistryProxyOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const { cache, metrics, log } = o;
  const tags = new Map<string, TagEntry>();
  /** Blob downloads under way, each resolving to whether the blob was kept. */
  const downloads = new Map<string, Promise<boolean>>();

  const refuse = (req: IncomingMessage, res: ServerResponse, r: Refusal, extra: Record<string, string> = {}) => {
    metrics.refusals.inc({ reason: r.reason });
    // A client's first request comes without credentials to learn the challenge: not worth a warning.
    const level = r.reason === 'unauthenticated' ? 'info' : 'warn';
    log[level]({ method: req.method, url: req.url, remote: req.socket.remoteAddress, status: r.status }, r.message);
    sendRegistryError(res, r.status, r.code, r.message, extra);
  };

  function upstream(): RegistryUpstream {
    if (!o.upstream)
      throw new Refusal(503, 'UNAVAILABLE', o.noUpstream ?? 'no upstream registry', 'upstream_unavailable');
    return o.upstream;
  }

  async function ask(path: string, method: 'GET' | 'HEAD', headers: Record<string, string | undefined>) {
    const up = upstream();
    try {
      return await up.request({ method, path, headers });
    } catch (err) {
      if (err instanceof UpstreamUnreachable)
        throw new Refusal(
          503,
          'UNAVAILABLE',
          `${err.message}: the image cannot be fetched now`,
          'upstream_unavailable',
        );
      throw err;
    }
  }

  /** An upstream answer passed on as it is (errors in the registry's JSON included). */
  async function passThrough(req: IncomingMessage, up: IncomingMessage, res: ServerResponse): Promise<void> {
    const headers: Record<string, string> = { ...API_VERSION_HEADER };
    for (const h of PASSED_HEADERS) {
      const v = up.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    const status = up.statusCode ?? 502;
    if (status === 401) {
      // The parent refused this gateway (or the registry refused the top layer's credentials).
      headers['www-authenticate'] = challengeHeader(o.realm());
      metrics.refusals.inc({ reason: 'upstream_refused' });
      log.warn(
        { url: req.url, upstream: o.upstream?.description },
        `${o.upstream?.description} refused this gateway's credentials (401)`,
      );
    }
    res.writeHead(status, headers);
    let n = 0;
    up.on('data', (c: Buffer) => {
      n += c.length;
    });
    try {
      await pipeline(up, res);
    } finally {
      if (status < 300) metrics.bytes.inc({ source: 'parent' }, n);
    }
  }

  function sendManifest(res: ServerResponse, head: boolean, body: Buffer, mediaType: string, digest: string) {
    res.writeHead(200, {
      ...API_VERSION_HEADER,
      'Content-Type': mediaType,
      'Content-Length': body.length,
      'Docker-Content-Digest': digest,
      ETag: `"${digest}"`,
    });
    res.end(head ? undefined : body);
  }

  async function manifest(req: IncomingMessage, res: ServerResponse, name: string, ref: string) {
    const head = req.method === 'HEAD';
    if (!head) metrics.pulls.inc();
    const accept = req.headers.accept;
    const byDigest = DIGEST.exec(ref);
    if (!byDigest && !TAG.test(ref))
      throw new Refusal(400, 'MANIFEST_INVALID', `"${ref}" is neither a tag nor a digest`, 'bad_request');
    const tagKey = `${name}:${ref}`;
    const known = byDigest ? undefined : tags.get(tagKey);
    const digestNow = byDigest ? ref : known && Date.now() - known.at < o.tagCacheMs ? known.digest : undefined;
    if (digestNow && (!known || acceptable(accept, known.mediaType))) {
      const kept = cache.readManifest(digestNow);
      if (kept) {
        metrics.hits.inc({ kind: 'manifest' });
        if (!head) metrics.bytes.inc({ source: 'cache' }, kept.body.length);
        return sendManifest(res, head, kept.body, kept.mediaType, digestNow);
      }
    }
    metrics.misses.inc({ kind: byDigest ? 'manifest' : 'tag' });
    let up: IncomingMessage;
    try {
      up = await ask(`/v2/${name}/manifests/${ref}`, 'GET', { accept });
    } catch (err) {
      // The parent is away: a tag seen before still names what it named.
      const stale = err instanceof Refusal && known ? cache.readManifest(known.digest) : undefined;
      if (!stale) throw err;
      log.warn(
        { image: tagKey, digest: known!.digest },
        `${(err as Error).message}; serving the digest this tag had last`,
      );
      metrics.hits.inc({ kind: 'manifest' });
      return sendManifest(res, head, stale.body, stale.mediaType, known!.digest);
    }
    if (up.statusCode !== 200) return passThrough(req, up, res);
    const body = await readLimited(up, MAX_MANIFEST);
    if (!body)
      throw new Refusal(
        502,
        'MANIFEST_INVALID',
        `the manifest of ${tagKey} from ${upstream().description} is larger than 4 MiB`,
        'bad_upstream',
      );
    const algo = byDigest?.[1] ?? 'sha256';
    const digest = `${algo}:${createHash(algo).update(body).digest('hex')}`;
    const claimed = byDigest ? ref : (up.headers['docker-content-digest'] as string | undefined);
    if (claimed && DIGEST.exec(claimed)?.[1] === algo && claimed !== digest) {
      throw new Refusal(
        502,
        'DIGEST_INVALID',
        `${upstream().description} sent a manifest for ${name}@${claimed} whose content has digest ${digest}; refused and not kept`,
        'digest_mismatch',
      );
    }
    const mediaType =
      (up.headers['content-type'] as string | undefined) ?? 'application/vnd.oci.image.manifest.v1+json';
    cache.putManifest(digest, body, mediaType);
    if (!byDigest) {
      tags.delete(tagKey);
      tags.set(tagKey, { digest, mediaType, at: Date.now() });
      if (tags.size > MAX_TAGS) tags.delete(tags.keys().next().value!);
    }
    if (!head) metrics.bytes.inc({ source: 'parent' }, body.length);
    sendManifest(res, head, body, mediaType, byDigest ? ref : digest);
  }

  async function blob(req: IncomingMessage, res: ServerResponse, name: string, digest: string) {
    if (!DIGEST.test(digest)) throw new Refusal(400, 'DIGEST_INVALID', `"${digest}" is not a digest`, 'bad_request');
    const head = req.method === 'HEAD';
    const range = req.headers.range;
    const fromCache = () => {
      const size = cache.lookup('blobs', digest);
      if (size === undefined) return undefined;
      metrics.hits.inc({ kind: 'blob' });
      return serveBlob(req, res, digest, size, head);
    };
    const kept = fromCache();
    if (kept) return kept;
    // Another client is fetching this blob now: one download per layer, then it comes from the cache.
    // The wait is bounded: a client hearing nothing for long gives up (a large layer on a slow link).
    const pending = downloads.get(digest);
    if (pending && (await Promise.race([pending, sleep(WAIT_FOR_DOWNLOAD_MS, false, { ref: false })]))) {
      const after = fromCache();
      if (after) return after;
    }
    metrics.misses.inc({ kind: 'blob' });
    const cacheable = !head && !range && sha256Hex(digest) !== undefined;
    let settle: ((kept: boolean) => void) | undefined;
    if (cacheable && !downloads.has(digest)) downloads.set(digest, new Promise((r) => (settle = r)));
    let committed = false;
    try {
      const up = await ask(`/v2/${name}/blobs/${digest}`, head ? 'HEAD' : 'GET', { range });
      if (!cacheable || up.statusCode !== 200) return await passThrough(req, up, res);
      committed = await streamVerified(req, up, res, digest);
    } finally {
      if (settle) {
        downloads.delete(digest);
        settle(committed);
      }
    }
  }

  async function serveBlob(req: IncomingMessage, res: ServerResponse, digest: string, size: number, head: boolean) {
    const base = {
      ...API_VERSION_HEADER,
      'Content-Type': 'application/octet-stream',
      'Docker-Content-Digest': digest,
      ETag: `"${digest}"`,
      'Accept-Ranges': 'bytes',
    };
    const range = parseRange(req.headers.range, size);
    if (range === 'unsatisfiable') {
      res.writeHead(416, { ...base, 'Content-Range': `bytes */${size}` });
      res.end();
      return;
    }
    if (range) {
      res.writeHead(206, {
        ...base,
        'Content-Length': range.end - range.start + 1,
        'Content-Range': `bytes ${range.start}-${range.end}/${size}`,
      });
    } else res.writeHead(200, { ...base, 'Content-Length': size });
    if (head) {
      res.end();
      return;
    }
    const file = cache.read('blobs', digest, range);
    let n = 0;
    file.on('data', (c) => {
      n += c.length;
    });
    try {
      await pipeline(file, res);
    } finally {
      metrics.bytes.inc({ source: 'cache' }, n);
    }
  }

  /** Streams a blob to the client and into the cache, the last chunk withheld until the digest matched. */
  async function streamVerified(
    req: IncomingMessage,
    up: IncomingMessage,
    res: ServerResponse,
    digest: string,
  ): Promise<boolean> {
    const writer = cache.blobWriter(digest) ?? hashOnly();
    const headers: Record<string, string> = {
      ...API_VERSION_HEADER,
      'Content-Type': 'application/octet-stream',
      'Docker-Content-Digest': digest,
      'Accept-Ranges': 'bytes',
    };
    const length = up.headers['content-length'];
    if (typeof length === 'string') headers['Content-Length'] = length;
    res.writeHead(200, headers);
    let held: Buffer | undefined;
    let n = 0;
    try {
      for await (const chunk of up as AsyncIterable<Buffer>) {
        if (res.destroyed) throw new Error('the client went away');
        await writer.write(chunk);
        if (held) {
          n += held.length;
          if (!res.write(held)) await drained(res);
        }
        held = chunk;
      }
    } catch (err) {
      writer.abort();
      up.destroy();
      res.destroy();
      log.info({ url: req.url, err: (err as Error).message }, 'blob transfer interrupted; nothing kept');
      return false;
    } finally {
      metrics.bytes.inc({ source: 'parent' }, n);
    }
    const got = writer.digest();
    if (got !== digest) {
      writer.abort();
      metrics.refusals.inc({ reason: 'digest_mismatch' });
      log.error(
        { url: req.url, expected: digest, got, upstream: o.upstream?.description },
        `${o.upstream?.description} sent a blob whose content does not match its digest; the transfer was cut and nothing kept`,
      );
      res.destroy();
      return false;
    }
    metrics.bytes.inc({ source: 'parent' }, held?.length ?? 0);
    res.end(held);
    return writer.commit();
  }

  return (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (err instanceof Refusal) return refuse(req, res, err);
      // A client that went away mid-answer is not the gateway's failure.
      if (res.headersSent)
        return void log.info({ url: req.url, err: (err as Error).message }, 'registry answer cut short');
      log.error({ err, url: req.url }, 'registry request failed');
      sendRegistryError(res, 500, 'UNKNOWN', 'the gateway failed to answer this registry request; see its log');
    });
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://gateway');
    const path = url.pathname;
    const verdict = await o.authenticate(req.headers.authorization);
    if (!verdict.ok) {
      const challenge: Record<string, string> =
        verdict.status === 401 ? { 'WWW-Authenticate': challengeHeader(o.realm()) } : {};
      return refuse(req, res, new Refusal(verdict.status, verdict.code, verdict.message, verdict.reason), challenge);
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      throw new Refusal(
        405,
        'UNSUPPORTED',
        `${req.method} is not supported: a gateway's registry is a read-only pull-through cache; push to the upstream registry`,
        'unsupported',
      );
    }
    if (path === '/v2/' || path === '/v2') {
      res.writeHead(200, { ...API_VERSION_HEADER, 'Content-Type': 'application/json', 'Content-Length': 2 });
      res.end(req.method === 'HEAD' ? undefined : '{}');
      return;
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    const name = m?.[1] ?? /^\/v2\/(.+)\/(?:tags|referrers)\//.exec(path)?.[1];
    if (name !== undefined && !NAME.test(name))
      throw new Refusal(400, 'NAME_INVALID', `"${name}" is not a valid repository name`, 'bad_request');
    if (m?.[2] === 'manifests') return manifest(req, res, m[1], decodeURIComponent(m[3]));
    if (m?.[2] === 'blobs') return blob(req, res, m[1], decodeURIComponent(m[3]));
    if (path.includes('/../') || path.includes('//'))
      throw new Refusal(400, 'NAME_INVALID', 'the path is not a registry API path', 'bad_request');
    // Tag lists, the catalog, referrers: asked upstream each time.
    const up = await ask(`${path}${url.search}`, req.method === 'HEAD' ? 'HEAD' : 'GET', {
      accept: req.headers.accept,
    });
    return passThrough(req, up, res);
  }
}

/** Whether a cached manifest's media type suits the client's Accept header. */
function acceptable(accept: string | undefined, mediaType: string): boolean {
  if (!accept) return true;
  const type = mediaType.split(';')[0].trim();
  return accept.split(',').some((a) => {
    const t = a.split(';')[0].trim();
    return t === type || t === '*/*';
  });
}

/** One `bytes=a-b` range (inclusive), undefined for none or several, 'unsatisfiable' past the end. */
export function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | 'unsatisfiable' | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header?.trim() ?? '');
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return 'unsatisfiable';
  return { start, end };
}

async function readLimited(stream: IncomingMessage, max: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of stream as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) {
      stream.destroy();
      return undefined;
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

function drained(res: ServerResponse): Promise<void> {
  // A client gone already has emitted its 'close': waiting for it would wait for ever.
  if (res.destroyed || res.writableEnded) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

/** When the cache cannot be written, the digest is still checked. */
function hashOnly(): CacheWriter {
  const hash = createHash('sha256');
  let d: string | undefined;
  return {
    write: async (c) => void hash.update(c),
    digest: () => (d ??= `sha256:${hash.digest('hex')}`),
    commit: async () => false,
    abort: () => {},
  };
}
