import { parseByteSize, type RegistryDiagnostic, sectionTable } from '../registry-proxy/config.ts';

/**
 * The `[blob]` section of config.toml: where the top layer keeps the blobs uploaded through the
 * hierarchy (the seeds' blob module on the top layer), and the largest one it takes. Lower layers
 * forward `/storage/` to their parent and keep nothing, so only the top layer names a directory.
 *
 * ```toml
 * [blob]
 * dir = "/var/lib/strata/blobs"   # top layer only; relative paths from the config's folder
 * max_size = "1GiB"                # default 1 GiB
 * ```
 */

export interface BlobSettings {
  /** Absolute directory (top layer only). */
  dir?: string;
  maxBytes: number;
}

export const DEFAULT_BLOB_MAX_BYTES = 1024 ** 3;
const KEYS = ['dir', 'max_size'];

/** Reads `[blob]` (undefined when absent); `resolvePath` turns `dir` into an absolute path. */
export function parseBlobSection(
  value: unknown,
  top: boolean,
  diags: RegistryDiagnostic[],
  resolvePath: (value: unknown, what: string) => string | undefined,
): BlobSettings | undefined {
  const error = (message: string, fix: string) => diags.push({ level: 'error', message, fix });
  const t = sectionTable('blob', value, KEYS, diags, 'dir = "/path/to/blobs"');
  if (!t) return undefined;
  const out: BlobSettings = { maxBytes: DEFAULT_BLOB_MAX_BYTES };
  if (t.dir !== undefined) {
    if (typeof t.dir !== 'string' || t.dir === '') error('blob.dir must be a non-empty string', 'Write dir = "/path"');
    else if (!top)
      error(
        'blob.dir is set on a gateway with a parent_hostname',
        'Only the top layer keeps uploaded blobs; lower layers forward /storage/ to their parent. Set it on the top layer',
      );
    else out.dir = resolvePath(t.dir, 'blob.dir');
  }
  if (t.max_size !== undefined) {
    const n = parseByteSize(t.max_size);
    if (n === undefined)
      error(`blob.max_size "${String(t.max_size)}" is not a size`, 'Write a number of bytes or a size such as "1GiB"');
    else out.maxBytes = n;
  }
  return out;
}
