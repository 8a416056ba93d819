/**
 * The `[registry]` section of config.toml: where the top layer's registry API goes (as the seeds'
 * registry module is set with REGISTRY_PROXY_REMOTEURL/USERNAME/PASSWORD) and the pull-through
 * cache's limits. Lower layers forward to their parent, so they may not name an upstream or hold
 * the registry's credentials.
 */

/** The shape of edge/config.ts's findings, repeated here so that this layer imports nothing above it. */
export interface RegistryDiagnostic {
  level: 'error' | 'warning';
  message: string;
  fix?: string;
}

export interface RegistrySettings {
  /** `https://host[:port]` or `http://...` (top layer only). */
  upstream?: string;
  username?: string;
  password?: string;
  /** Size cap of the pull-through cache. */
  cacheMaxBytes: number;
  /** How long a tag's digest is reused before the parent is asked again (0: every time). */
  tagCacheSecs: number;
}

export const DEFAULT_CACHE_MAX_BYTES = 2 * 1024 ** 3;
export const DEFAULT_TAG_CACHE_SECS = 60;
const KEYS = ['upstream', 'username', 'password', 'cache_max_size', 'tag_cache_secs'];
const UNITS: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2 };
Object.assign(UNITS, { g: 1e9, gb: 1e9, gib: 1024 ** 3, t: 1e12, tb: 1e12, tib: 1024 ** 4 });

/** "2GiB", "500 MB", "1048576" or a number of bytes; undefined when unreadable. */
export function parseByteSize(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v > 0 ? v : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v);
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) return undefined;
  const n = Math.floor(Number(m[1]) * unit);
  return n > 0 ? n : undefined;
}

/**
 * A config.toml section as a table (undefined when absent or not a table, which is reported), with
 * a warning for each key not in `keys`.
 */
export function sectionTable(
  name: string,
  value: unknown,
  keys: readonly string[],
  diags: RegistryDiagnostic[],
  example: string,
): Record<string, unknown> | undefined {
  if (value === undefined) return undefined;
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    diags.push({
      level: 'error',
      message: `[${name}] must be a table`,
      fix: `Write it as a [${name}] section with ${example}`,
    });
    return undefined;
  }
  const t = value as Record<string, unknown>;
  for (const key of Object.keys(t)) {
    if (!keys.includes(key))
      diags.push({
        level: 'warning',
        message: `unknown setting ${name}.${key} is ignored`,
        fix: `The [${name}] settings are ${keys.join(', ')}`,
      });
  }
  return t;
}

/**
 * Reads `[registry]` (undefined when the file has none); `top` is true for a gateway whose
 * parent is the hub. Findings go to `diags`.
 */
export function parseRegistrySection(
  value: unknown,
  top: boolean,
  diags: RegistryDiagnostic[],
): RegistrySettings | undefined {
  const error = (message: string, fix: string) => diags.push({ level: 'error', message, fix });
  const t = sectionTable('registry', value, KEYS, diags, 'upstream = "https://..."');
  if (!t) return undefined;
  const out: RegistrySettings = { cacheMaxBytes: DEFAULT_CACHE_MAX_BYTES, tagCacheSecs: DEFAULT_TAG_CACHE_SECS };
  for (const key of ['upstream', 'username', 'password'] as const) {
    const v = t[key];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v === '') {
      error(`registry.${key} must be a non-empty string`, `Write ${key} = "..."`);
      continue;
    }
    if (!top) {
      error(
        `registry.${key} is set on a gateway with a parent_hostname`,
        "Only the top layer names the upstream registry and holds its credentials; lower layers pull through their parent's /v2/. Remove it here and set it on the top layer",
      );
      continue;
    }
    out[key] = v;
  }
  if (out.upstream !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(out.upstream);
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:') || url.search || url.hash) {
      error(
        `registry.upstream "${out.upstream}" is not an http(s) URL`,
        'Write it as upstream = "https://myregistry.example:5000"',
      );
      out.upstream = undefined;
    } else {
      if (url.protocol === 'http:')
        diags.push({
          level: 'warning',
          message: `registry.upstream ${out.upstream} is plain HTTP: the registry credentials and images travel unencrypted`,
          fix: 'Use https:// unless the registry is on this machine or a trusted network',
        });
      out.upstream = url.href.replace(/\/+$/, '');
    }
  }
  if ((out.username === undefined) !== (out.password === undefined))
    error('registry.username and registry.password go together', 'Give both, or neither for an anonymous registry');
  if (out.username !== undefined && out.upstream === undefined && top)
    error('registry.username is set without registry.upstream', 'Name the registry with upstream = "https://..."');
  if (t.cache_max_size !== undefined) {
    const n = parseByteSize(t.cache_max_size);
    if (n === undefined)
      error(
        `registry.cache_max_size "${String(t.cache_max_size)}" is not a size`,
        'Write a number of bytes or a size such as "2GiB" or "500MB"',
      );
    else out.cacheMaxBytes = n;
  }
  if (t.tag_cache_secs !== undefined) {
    const v = t.tag_cache_secs;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 86_400)
      error('registry.tag_cache_secs must be a whole number of seconds from 0 to 86400', 'Write tag_cache_secs = 60');
    else out.tagCacheSecs = v;
  }
  return out;
}

/** The settings a gateway runs with when its config.toml has no [registry]. */
export function defaultRegistrySettings(): RegistrySettings {
  return { cacheMaxBytes: DEFAULT_CACHE_MAX_BYTES, tagCacheSecs: DEFAULT_TAG_CACHE_SECS };
}
