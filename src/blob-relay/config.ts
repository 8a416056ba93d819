import { parseByteSize, type RegistryDiagnostic } from '../registry-proxy/config.ts';

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
  if (value === undefined) return undefined;
  const error = (message: string, fix: string) => diags.push({ level: 'error', message, fix });
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    error('[blob] must be a table', 'Write it as a [blob] section with dir = "/path/to/blobs"');
    return undefined;
  }
  const t = value as Record<string, unknown>;
  for (const key of Object.keys(t)) {
    if (!KEYS.includes(key))
      diags.push({
        level: 'warning',
        message: `unknown setting blob.${key} is ignored`,
        fix: `The [blob] settings are ${KEYS.join(', ')}`,
      });
  }
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
