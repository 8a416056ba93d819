import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  createReadStream,
  createWriteStream,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
  type ReadStream,
  type WriteStream,
  openSync,
} from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';

/**
 * A gateway's content-addressed pull-through cache: blobs and manifests kept by their sha256
 * digest under the data directory, each written to a temporary file and renamed into place only
 * once its content hashed to its name, so a crash or a corrupt download leaves nothing behind.
 * The files' mtimes record last use (so the order survives restarts); past the size cap the
 * least recently used entries go. A manifest's media type is kept beside it.
 */

export type EntryKind = 'blobs' | 'manifests';

const DIGEST = /^sha256:([a-f0-9]{64})$/;

/** The hex of a sha256 digest, or undefined for anything else (other algorithms are not cached). */
export function sha256Hex(digest: string): string | undefined {
  return DIGEST.exec(digest)?.[1];
}

interface Entry {
  size: number;
  used: number;
}

export interface CacheWriter {
  /** Writes a chunk (hashing it); resolves once the file took it (back-pressure). */
  write(chunk: Buffer): Promise<void>;
  /** The digest of what was written so far, as `sha256:hex`. */
  digest(): string;
  /** Keeps the file when its content matches; returns whether it did. */
  commit(): Promise<boolean>;
  abort(): void;
}

export class ContentCache {
  private readonly entries = new Map<string, Entry>();
  private total = 0;

  constructor(
    private readonly dir: string,
    private readonly capBytes: number,
    private readonly log: Logger,
  ) {
    for (const kind of ['blobs', 'manifests', 'tmp'] as const) mkdirSync(join(dir, kind), { recursive: true });
    // Downloads a previous run did not finish.
    for (const f of readdirSync(join(dir, 'tmp'))) rmSync(join(dir, 'tmp', f), { force: true });
    for (const kind of ['blobs', 'manifests'] as const) {
      for (const f of readdirSync(join(dir, kind))) {
        if (!/^[a-f0-9]{64}$/.test(f)) continue;
        try {
          const st = statSync(join(dir, kind, f));
          this.entries.set(`${kind}/${f}`, { size: st.size, used: st.mtimeMs });
          this.total += st.size;
        } catch {
          // Removed meanwhile.
        }
      }
    }
    this.evict();
  }

  get bytes(): number {
    return this.total;
  }

  get count(): number {
    return this.entries.size;
  }

  private file(kind: EntryKind, hex: string): string {
    return join(this.dir, kind, hex);
  }

  /** The size of a kept entry, marking it used; undefined when absent. */
  lookup(kind: EntryKind, digest: string): number | undefined {
    const hex = sha256Hex(digest);
    if (!hex) return undefined;
    const key = `${kind}/${hex}`;
    const e = this.entries.get(key);
    if (!e) return undefined;
    e.used = Date.now();
    try {
      const t = new Date(e.used);
      utimesSync(this.file(kind, hex), t, t);
    } catch {
      // Deleted behind our back: forget it.
      this.forget(key);
      return undefined;
    }
    return e.size;
  }

  /** A stream of a kept entry (optionally a byte range, inclusive). */
  read(kind: EntryKind, digest: string, range?: { start: number; end: number }): ReadStream {
    return createReadStream(this.file(kind, sha256Hex(digest)!), range);
  }

  readManifest(digest: string): { body: Buffer; mediaType: string } | undefined {
    const hex = sha256Hex(digest);
    if (!hex || this.lookup('manifests', digest) === undefined) return undefined;
    try {
      const body = readFileSync(this.file('manifests', hex));
      const mediaType = readFileSync(`${this.file('manifests', hex)}.type`, 'utf8');
      // Verified once more: a manifest is small, and what it names is trusted from then on.
      if (createHash('sha256').update(body).digest('hex') !== hex) {
        this.log.error({ digest }, 'a cached manifest no longer matches its digest; removed');
        this.forget(`manifests/${hex}`);
        return undefined;
      }
      return { body, mediaType };
    } catch {
      this.forget(`manifests/${hex}`);
      return undefined;
    }
  }

  /** Keeps a manifest whose digest the caller has checked. */
  putManifest(digest: string, body: Buffer, mediaType: string): void {
    const hex = sha256Hex(digest);
    if (!hex || this.entries.has(`manifests/${hex}`)) return;
    const tmp = join(this.dir, 'tmp', `${hex}.${randomBytes(4).toString('hex')}`);
    try {
      writeFileSync(`${this.file('manifests', hex)}.type`, mediaType);
      writeFileSync(tmp, body);
      renameSync(tmp, this.file('manifests', hex));
      this.add(`manifests/${hex}`, body.length);
    } catch (err) {
      rmSync(tmp, { force: true });
      this.log.warn({ err, digest }, 'could not keep a manifest in the cache');
    }
  }

  /** A writer for a blob that is kept only if its content hashes to `digest`. */
  blobWriter(digest: string): CacheWriter | undefined {
    const hex = sha256Hex(digest);
    if (!hex) return undefined;
    const tmp = join(this.dir, 'tmp', `${hex}.${randomBytes(4).toString('hex')}`);
    let out: WriteStream;
    try {
      closeSync(openSync(tmp, 'w'));
      out = createWriteStream(tmp);
    } catch (err) {
      this.log.warn({ err, digest }, 'cannot write to the registry cache; serving without keeping');
      return undefined;
    }
    const hash = createHash('sha256');
    let size = 0;
    let failed = false;
    out.on('error', (err) => {
      if (!failed) this.log.warn({ err, digest }, 'writing a blob to the registry cache failed; not kept');
      failed = true;
    });
    let computed: string | undefined;
    const digestNow = () => (computed ??= `sha256:${hash.digest('hex')}`);
    return {
      write: (chunk) => {
        hash.update(chunk);
        size += chunk.length;
        if (failed) return Promise.resolve();
        return out.write(chunk) ? Promise.resolve() : new Promise((r) => out.once('drain', r));
      },
      digest: digestNow,
      commit: async () => {
        await new Promise<void>((r) => out.end(r));
        if (failed || digestNow() !== digest) {
          rmSync(tmp, { force: true });
          return false;
        }
        try {
          renameSync(tmp, this.file('blobs', hex));
        } catch (err) {
          this.log.warn({ err, digest }, 'could not keep a blob in the cache');
          rmSync(tmp, { force: true });
          return false;
        }
        if (!this.entries.has(`blobs/${hex}`)) this.add(`blobs/${hex}`, size);
        return true;
      },
      abort: () => {
        failed = true;
        out.destroy();
        rmSync(tmp, { force: true });
      },
    };
  }

  private add(key: string, size: number): void {
    this.entries.set(key, { size, used: Date.now() });
    this.total += size;
    this.evict();
  }

  private forget(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    this.total -= e.size;
    const path = join(this.dir, key);
    rmSync(path, { force: true });
    if (key.startsWith('manifests/')) rmSync(`${path}.type`, { force: true });
  }

  /** Drops least recently used entries until the total fits the cap. A reader of a removed file keeps reading it. */
  private evict(): void {
    if (this.total <= this.capBytes) return;
    const byAge = [...this.entries.entries()].sort((a, b) => a[1].used - b[1].used);
    for (const [key, e] of byAge) {
      if (this.total <= this.capBytes) break;
      this.forget(key);
      this.log.info(
        { entry: key, size: e.size, cacheBytes: this.total, cap: this.capBytes },
        'evicted from the registry cache',
      );
    }
  }
}
