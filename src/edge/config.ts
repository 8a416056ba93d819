import { hostname as osHostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parse as parseToml, TomlError } from 'smol-toml';
import { parseBlobSection, type BlobSettings } from '../blob-relay/config.ts';
import { parseRegistrySection, type RegistrySettings } from '../registry-proxy/config.ts';
import { UserError } from '../util/errors.ts';
import { checkHostname, isIpAddress } from './hostname.ts';

/** A finding about a config file: errors stop a start, warnings are printed and ignored. */
export interface Diagnostic {
  level: 'error' | 'warning';
  message: string;
  /** 1-based line in the file, when the finding has one. */
  line?: number;
  /** What to do about it. */
  fix?: string;
}

export type ProvisioningAuth =
  | { method: 'sas'; deviceIdPk: string }
  | { method: 'x509'; identityCert: string; identityPk: string };

export interface Provisioning {
  source: 'manual';
  /** Set when the identity comes from a connection string. */
  connectionString?: string;
  iothubHostname: string;
  deviceId: string;
  /** Absent when a connection string carries the key. */
  authentication?: ProvisioningAuth;
}

export interface EdgeConfig {
  hostname: string;
  /** Whether `hostname` came from the file or (as the original does) from the machine's name. */
  hostnameFromFile: boolean;
  parentHostname?: string;
  /** Path of the root CA bundle every node of the hierarchy trusts. */
  trustBundleCert?: string;
  provisioning?: Provisioning;
  /** Absent: a quickstart Edge CA is made and kept (valid 90 days). */
  edgeCa?: { cert: string; pk: string };
  agent?: { name?: string; type?: string; image?: string; env: Record<string, string> };
  /** `[moby_runtime] uri`: the container engine the agent runs `docker` modules on (absent: process modules only). */
  mobyRuntime?: { uri: string };
  /** Strata's own settings under [strata]: values the original takes from edge hub environment variables. */
  settings: Record<string, unknown>;
  /** `[registry]`: the upstream registry (top layer) and the pull-through cache's limits. */
  registry?: RegistrySettings;
  /** `[blob]`: where the top layer keeps blobs uploaded through `/storage/`. */
  blob?: BlobSettings;
}

const TOP_LEVEL_KEYS = [
  'hostname',
  'parent_hostname',
  'trust_bundle_cert',
  'local_gateway_hostname',
  'allow_elevated_docker_permissions',
  'auto_reprovisioning_mode',
  'homedir',
];
const KNOWN_SECTIONS = [
  'provisioning',
  'edge_ca',
  'agent',
  'connect',
  'listen',
  'moby_runtime',
  'watchdog',
  'cert_issuance',
  'aziot_keys',
  'preloaded_cert',
  'preloaded_key',
  'principal',
  'image_garbage_collection',
  'strata',
  'registry',
  'blob',
];

export class ConfigError extends UserError {
  constructor(
    readonly file: string,
    readonly diagnostics: Diagnostic[],
  ) {
    const errors = diagnostics.filter((d) => d.level === 'error');
    super(errors.map((d) => formatDiagnostic(file, d)).join('\n'));
    this.name = 'ConfigError';
  }
}

export function formatDiagnostic(file: string, d: Diagnostic): string {
  const where = d.line ? `${file} line ${d.line}` : file;
  return `${where}: ${d.level}: ${d.message}${d.fix ? `. ${d.fix}` : ''}`;
}

/**
 * Turns `file:///a/b` into `/a/b`; a plain path is taken as it is, relative paths from the config's folder.
 */
export function fileUriToPath(value: string, baseDir: string): string {
  if (value.startsWith('file://')) return fileURLToPath(value);
  if (/^[a-z]+:\/\//i.test(value)) throw new Error(`"${value}" is not a file URI`);
  return value.startsWith('/') ? value : `${baseDir.replace(/\/$/, '')}/${value}`;
}

/**
 * The seeds' own examples write `image: "..."` under [agent.config], which is not TOML. Rather than
 * fail on text copied from the documentation, accept that one form and say how to write it.
 */
function mendColonAssignments(lines: string[], diags: Diagnostic[]): string[] {
  return lines.map((line, i) => {
    const m = /^(\s*)([A-Za-z0-9_-]+)\s*:\s*(".*"|'.*')\s*$/.exec(line);
    if (!m) return line;
    diags.push({
      level: 'warning',
      line: i + 1,
      message: `"${m[2]}: ..." uses a colon; TOML needs "${m[2]} = ..."`,
      fix: 'Read as if written with "="; change the colon to "=" to silence this',
    });
    return `${m[1]}${m[2]} = ${m[3]}`;
  });
}

/** The section header in force at each line (`''` before the first header). */
function sectionsByLine(lines: string[]): { section: string[]; firstHeaderLine?: number } {
  const section: string[] = [];
  let current = '';
  let firstHeaderLine: number | undefined;
  lines.forEach((line, i) => {
    const m = /^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$/.exec(line);
    if (m) {
      current = m[1];
      firstHeaderLine ??= i + 1;
    }
    section.push(current);
  });
  return { section, firstHeaderLine };
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function table(v: unknown): Record<string, unknown> | undefined {
  return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/**
 * Parses the text of a config.toml. Throws ConfigError with every error found (each naming its line
 * where it has one); returns the config with the warnings otherwise. Files named in it are not
 * read here: see `checkConfigFiles`.
 */
export function parseEdgeConfig(
  text: string,
  file = 'config.toml',
  baseDir = '.',
): { config: EdgeConfig; diagnostics: Diagnostic[] } {
  const diags: Diagnostic[] = [];
  const lines = mendColonAssignments(text.split(/\r?\n/), diags);
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(lines.join('\n')) as Record<string, unknown>;
  } catch (err) {
    const line = err instanceof TomlError ? err.line : undefined;
    const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
    diags.push({
      level: 'error',
      line,
      message: `not valid TOML: ${msg}`,
      fix: 'Fix the syntax at that line (strings need quotes, keys are written key = value)',
    });
    throw new ConfigError(file, diags);
  }

  // The classic mistake the seeds warn about: a top-level key written after a [section] header.
  const { section, firstHeaderLine } = sectionsByLine(lines);
  lines.forEach((line, i) => {
    const m = /^\s*([A-Za-z_]+)\s*=/.exec(line);
    if (!m || !TOP_LEVEL_KEYS.includes(m[1]) || section[i] === '') return;
    diags.push({
      level: 'error',
      line: i + 1,
      message: `"${m[1]}" is inside the section [${section[i]}], so it is read as ${section[i]}.${m[1]}, not as the top-level setting`,
      fix: `Move the line above the first section header (line ${firstHeaderLine})`,
    });
  });

  for (const key of Object.keys(doc)) {
    if (TOP_LEVEL_KEYS.includes(key) || KNOWN_SECTIONS.includes(key)) continue;
    const line =
      lines.findIndex((l) => new RegExp(`^\\s*\\[?\\s*${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\b`).test(l)) + 1 ||
      undefined;
    diags.push({
      level: 'warning',
      line,
      message: `unknown setting "${key}" is ignored`,
      fix: 'Check its spelling against the documented settings',
    });
  }

  const lineOf = (key: string) => {
    const idx = lines.findIndex((l, i) => section[i] === '' && new RegExp(`^\\s*${key}\\s*=`).test(l));
    return idx >= 0 ? idx + 1 : undefined;
  };

  const hostnameValue = str(doc.hostname);
  const hostname = hostnameValue ?? osHostname();
  if (doc.hostname !== undefined && hostnameValue === undefined) {
    diags.push({
      level: 'error',
      line: lineOf('hostname'),
      message: 'hostname must be a string',
      fix: 'Write hostname = "gateway.example.local"',
    });
  }
  const hostProblem = checkHostname(hostname);
  if (hostProblem) {
    diags.push({
      level: 'error',
      line: lineOf('hostname'),
      message: `hostname "${hostname}" ${hostProblem}`,
      fix: "Use an FQDN or an IP address shorter than 64 characters: it becomes the CN of the gateway's server certificate",
    });
  }
  if (hostnameValue === undefined) {
    diags.push({
      level: 'warning',
      message: `no hostname set; using this machine's name "${hostname}"`,
      fix: 'Set hostname = "..." at the top of the file to the name downstream devices dial',
    });
  }

  const parentHostname = str(doc.parent_hostname);
  if (doc.parent_hostname !== undefined) {
    const p = parentHostname === undefined ? 'must be a string' : checkHostname(parentHostname);
    if (p)
      diags.push({
        level: 'error',
        line: lineOf('parent_hostname'),
        message: `parent_hostname "${String(doc.parent_hostname)}" ${p}`,
        fix: "Use the parent's hostname exactly as its own config.toml sets it",
      });
    else if (parentHostname && hostnameValue && isIpAddress(parentHostname) !== isIpAddress(hostnameValue)) {
      diags.push({
        level: 'warning',
        line: lineOf('parent_hostname'),
        message: 'hostname and parent_hostname mix an IP address and a domain name',
        fix: 'Use one pattern (all FQDNs or all IP addresses) across the hierarchy',
      });
    }
  }

  const paths = (value: unknown, what: string, line?: number): string | undefined => {
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || value === '') {
      diags.push({
        level: 'error',
        line,
        message: `${what} must be a file URI string`,
        fix: 'Write it as "file:///path/to/file.pem"',
      });
      return undefined;
    }
    try {
      return fileUriToPath(value, baseDir);
    } catch (err) {
      diags.push({
        level: 'error',
        line,
        message: `${what}: ${(err as Error).message}`,
        fix: 'Write it as "file:///path/to/file.pem"',
      });
      return undefined;
    }
  };

  const trustBundleCert = paths(doc.trust_bundle_cert, 'trust_bundle_cert', lineOf('trust_bundle_cert'));

  const config: EdgeConfig = {
    hostname,
    hostnameFromFile: hostnameValue !== undefined,
    parentHostname,
    trustBundleCert,
    settings: table(doc.strata) ?? {},
  };

  config.registry = parseRegistrySection(doc.registry, parentHostname === undefined, diags);
  config.blob = parseBlobSection(doc.blob, parentHostname === undefined, diags, (v, what) => paths(v, what));

  const prov = table(doc.provisioning);
  if (doc.provisioning !== undefined) config.provisioning = parseProvisioning(prov, diags, paths);

  const ca = table(doc.edge_ca);
  if (ca) {
    const cert = paths(ca.cert, 'edge_ca.cert');
    const pk = paths(ca.pk, 'edge_ca.pk');
    if (ca.cert === undefined || ca.pk === undefined) {
      diags.push({
        level: 'error',
        message: '[edge_ca] needs both cert and pk',
        fix: 'Give cert = "file:///...full-chain.cert.pem" and pk = "file:///...key.pem", or remove [edge_ca] for a quickstart Edge CA',
      });
    } else if (cert && pk) config.edgeCa = { cert, pk };
  }

  const agent = table(doc.agent);
  if (agent) {
    const cfg = table(agent.config) ?? {};
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(table(agent.env) ?? {})) env[k] = String(v);
    config.agent = { name: str(agent.name), type: str(agent.type), image: str(cfg.image), env };
  }

  if (doc.moby_runtime !== undefined) config.mobyRuntime = parseMobyRuntime(doc.moby_runtime, diags, lines);

  if (diags.some((d) => d.level === 'error')) throw new ConfigError(file, diags);
  return { config, diagnostics: diags };
}

/** `[moby_runtime] uri = "unix:///var/run/docker.sock"` (or tcp://host:port), as IoT Edge's config.toml has it. */
function parseMobyRuntime(v: unknown, diags: Diagnostic[], lines: string[]): { uri: string } | undefined {
  const headerLine = lines.findIndex((l) => /^\s*\[\s*moby_runtime\s*\]/.test(l)) + 1 || undefined;
  const fix =
    'Write [moby_runtime] with uri = "unix:///var/run/docker.sock" (or the Podman socket, or tcp://host:port)';
  const t = table(v);
  if (!t) {
    diags.push({ level: 'error', line: headerLine, message: '[moby_runtime] must be a section', fix });
    return undefined;
  }
  const uri = t.uri;
  if (typeof uri !== 'string' || uri === '') {
    diags.push({ level: 'error', line: headerLine, message: '[moby_runtime] needs uri, a string', fix });
    return undefined;
  }
  let scheme: string;
  try {
    const u = new URL(uri);
    scheme = u.protocol;
    if (scheme === 'unix:' && !u.pathname.startsWith('/')) throw new Error('no socket path');
  } catch {
    diags.push({ level: 'error', line: headerLine, message: `moby_runtime.uri "${uri}" is not a URI`, fix });
    return undefined;
  }
  if (scheme !== 'unix:' && scheme !== 'tcp:' && scheme !== 'http:') {
    diags.push({
      level: 'error',
      line: headerLine,
      message: `moby_runtime.uri "${uri}": ${scheme.replace(/:$/, '')} is not supported (use unix:// or tcp://)`,
      fix,
    });
    return undefined;
  }
  return { uri };
}

function parseProvisioning(
  prov: Record<string, unknown> | undefined,
  diags: Diagnostic[],
  paths: (value: unknown, what: string) => string | undefined,
): Provisioning | undefined {
  const fail = (message: string, fix: string) => {
    diags.push({ level: 'error', message, fix });
    return undefined;
  };
  if (!prov) return fail('[provisioning] must be a section', 'Write [provisioning] with source = "manual"');
  if (prov.source !== 'manual') {
    return fail(
      `provisioning source "${String(prov.source)}" is not supported`,
      'Use source = "manual" with a connection_string, or iothub_hostname + device_id + [provisioning.authentication]',
    );
  }
  const cs = str(prov.connection_string);
  if (cs) {
    const fields = Object.fromEntries(
      cs
        .split(';')
        .filter(Boolean)
        .map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]),
    );
    if (!fields.HostName || !fields.DeviceId || !fields.SharedAccessKey) {
      return fail(
        'provisioning.connection_string must carry HostName, DeviceId and SharedAccessKey',
        "Copy the edge device's connection string from `strata device connection-string ID`",
      );
    }
    return {
      source: 'manual',
      connectionString: cs,
      iothubHostname: fields.HostName,
      deviceId: fields.DeviceId,
      authentication: { method: 'sas', deviceIdPk: fields.SharedAccessKey },
    };
  }
  const iothubHostname = str(prov.iothub_hostname);
  const deviceId = str(prov.device_id);
  if (!iothubHostname || !deviceId) {
    return fail(
      '[provisioning] needs connection_string, or iothub_hostname and device_id',
      'Add connection_string = "HostName=...;DeviceId=...;SharedAccessKey=..."',
    );
  }
  const auth = table(prov.authentication);
  if (!auth)
    return fail(
      '[provisioning.authentication] is missing',
      'Add method = "sas" with device_id_pk, or method = "x509" with identity_cert and identity_pk',
    );
  if (auth.method === 'sas') {
    const pk = auth.device_id_pk;
    const value = typeof pk === 'string' ? pk : str(table(pk)?.value);
    if (!value)
      return fail(
        'provisioning.authentication.device_id_pk is missing',
        'Write device_id_pk = { value = "<base64 key>" }',
      );
    return { source: 'manual', iothubHostname, deviceId, authentication: { method: 'sas', deviceIdPk: value } };
  }
  if (auth.method === 'x509') {
    const identityCert = paths(auth.identity_cert, 'provisioning.authentication.identity_cert');
    const identityPk = paths(auth.identity_pk, 'provisioning.authentication.identity_pk');
    if (!identityCert || !identityPk)
      return fail('x509 provisioning needs identity_cert and identity_pk', 'Give both as file URIs');
    return { source: 'manual', iothubHostname, deviceId, authentication: { method: 'x509', identityCert, identityPk } };
  }
  return fail(`provisioning.authentication.method "${String(auth.method)}" is not supported`, 'Use "sas" or "x509"');
}
