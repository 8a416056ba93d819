import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/**
 * The top layer's blob target: a directory. A blob at `/storage/CONTAINER/NAME...` is the file
 * `DIR/CONTAINER/NAME...`, written to `DIR/.incoming/` while it streams in (hashed on the way)
 * and renamed into place only when every byte arrived and any Content-MD5 the client sent
 * matched, so a cut upload never leaves a partial blob.
 */

export class BlobTooLarge extends Error {}
export class BlobMd5Mismatch extends Error {}
export class BlobIncomplete extends Error {}

export interface StoredBlob {
  /** The file it became. */
  path: string;
  bytes: number;
  /** Base64, as Azure Storage's Content-MD5. */
  md5: string;
  sha256: string;
}

// Azure's container names (or a storage account name first): lowercase letters, digits, hyphens.
const FIRST_SEGMENT = /^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;

/**
 * The path segments of a blob below the directory, from the part of the URL path after
 * `/storage/` (still percent-encoded); a string naming what is wrong when it is no blob path.
 */
export function blobSegments(encodedPath: string): string[] | string {
  const raw = encodedPath.split('/');
  if (raw.length < 2) return 'the path names no blob: use /storage/CONTAINER/BLOB';
  const out: string[] = [];
  for (const r of raw) {
    let s: string;
    try {
      s = decodeURIComponent(r);
    } catch {
      return `"${r}" is not a valid percent-encoded path segment`;
    }
    if (s === '' || s === '.' || s === '..') return 'empty, "." and ".." path segments are not allowed in a blob name';
    if (/[\0/\\]/.test(s)) return `path segment "${s}" holds a slash, a backslash or a NUL`;
    out.push(s);
  }
  if (!FIRST_SEGMENT.test(out[0]))
    return `"${out[0]}" is not a container name (3-63 lowercase letters, digits and hyphens)`;
  return out;
}

export class BlobDirectory {
  constructor(
    readonly root: string,
    readonly maxBytes: number,
  ) {}

  async put(
    segments: string[],
    body: Readable,
    o: { contentLength?: number; contentMd5?: string } = {},
  ): Promise<StoredBlob> {
    const target = join(this.root, ...segments);
    if (!target.startsWith(this.root + sep)) throw new Error('blob path leaves the directory');
    const incoming = join(this.root, '.incoming');
    await mkdir(incoming, { recursive: true });
    const tmp = join(incoming, randomBytes(12).toString('hex'));
    const md5 = createHash('md5');
    const sha = createHash('sha256');
    let bytes = 0;
    const max = this.maxBytes;
    const count = new Transform({
      transform(chunk: Buffer, _enc, done) {
        bytes += chunk.length;
        if (bytes > max)
          return done(new BlobTooLarge(`the blob is larger than this gateway's [blob] max_size (${max} bytes)`));
        md5.update(chunk);
        sha.update(chunk);
        done(null, chunk);
      },
    });
    try {
      await pipeline(body, count, createWriteStream(tmp, { flags: 'wx', mode: 0o640 }));
      if (o.contentLength !== undefined && bytes !== o.contentLength)
        throw new BlobIncomplete(`received ${bytes} of the ${o.contentLength} bytes announced`);
      const digest = md5.digest('base64');
      if (o.contentMd5 !== undefined && o.contentMd5 !== digest)
        throw new BlobMd5Mismatch(`the body's MD5 is ${digest}, the request's Content-MD5 ${o.contentMd5}`);
      const fh = await open(tmp, 'r');
      await fh.sync();
      await fh.close();
      await mkdir(dirname(target), { recursive: true });
      await rename(tmp, target);
      return { path: target, bytes, md5: digest, sha256: sha.digest('hex') };
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }
}
