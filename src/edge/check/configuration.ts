/** The configuration group: the config file itself, and the identity it provisions. */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { ConfigError, parseEdgeConfig, type Diagnostic, type EdgeConfig } from '../config.ts';
import { result, type CheckResult } from './checks.ts';

/** Replaces a refused hostname while the rest of the config is read; never dialled or compared. */
const STAND_IN_HOST = 'refused-hostname.invalid';

/** Lines of the top-level keys (those before the first [section]): key -> 1-based line. */
function topLevelKeyLines(text: string): Map<string, number> {
  const lines = new Map<string, number>();
  const all = text.split(/\r?\n/);
  for (let i = 0; i < all.length; i++) {
    if (/^\s*\[/.test(all[i])) break;
    const m = /^\s*([A-Za-z0-9_-]+)\s*=/.exec(all[i]);
    if (m && !lines.has(m[1])) lines.set(m[1], i + 1);
  }
  return lines;
}

export function lineText(line: number | undefined): string {
  return line ? `line ${line}: ` : '';
}

export interface LoadedForCheck {
  path: string;
  /** The parsed config when the file was accepted. */
  config?: EdgeConfig;
  /** The raw TOML document when the text parses (even if the config was refused). */
  raw?: Record<string, unknown>;
  topLines: Map<string, number>;
  /** Why the dependent checks cannot run, when the config was refused. */
  refusedBecause?: string;
}

/** Diagnostics about hostname / parent_hostname belong to the hostname checks, not to the file check. */
function isHostnameDiagnostic(d: Diagnostic, topLines: Map<string, number>): boolean {
  if (d.line !== undefined) return d.line === topLines.get('hostname') || d.line === topLines.get('parent_hostname');
  return /^no hostname set/.test(d.message);
}

export function checkConfigFile(configPath: string): { check: CheckResult; loaded: LoadedForCheck } {
  const id = 'config-file';
  const path = resolve(configPath);
  const loaded: LoadedForCheck = { path, topLines: new Map() };
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    loaded.refusedBecause = 'the config file could not be read';
    const detail =
      code === 'ENOENT'
        ? `config file not found: ${path}`
        : code === 'EACCES' || code === 'EPERM'
          ? `cannot read ${path}: permission denied`
          : code === 'EISDIR'
            ? `${path} is a directory`
            : `cannot read ${path}: ${(err as Error).message}`;
    const fix =
      code === 'EACCES' || code === 'EPERM'
        ? 'Run the check as a user who may read it (the gateway must read it too)'
        : "Pass the gateway's config.toml with --config";
    return { check: result(id, 'error', detail, fix), loaded };
  }
  loaded.topLines = topLevelKeyLines(text);
  try {
    loaded.raw = parseToml(text) as Record<string, unknown>;
  } catch {
    // Reported through parseEdgeConfig's line-numbered diagnostic below.
  }
  let diagnostics: Diagnostic[];
  try {
    const parsed = parseEdgeConfig(text, path, dirname(path));
    loaded.config = parsed.config;
    diagnostics = parsed.diagnostics;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    diagnostics = err.diagnostics;
  }
  // Only a document that parses has hostname findings of its own; a syntax error stays here.
  const own = loaded.raw ? diagnostics.filter((d) => !isHostnameDiagnostic(d, loaded.topLines)) : diagnostics;
  const errors = own.filter((d) => d.level === 'error');
  const warnings = own.filter((d) => d.level === 'warning');
  if (!loaded.config && errors.length === 0) {
    // Only the hostname settings were refused: read the rest with stand-ins so the other checks still run.
    const lines = text.split(/\r?\n/);
    for (const key of ['hostname', 'parent_hostname']) {
      const line = loaded.topLines.get(key);
      if (line) lines[line - 1] = `${key} = "${STAND_IN_HOST}"`;
    }
    try {
      loaded.config = parseEdgeConfig(lines.join('\n'), path, dirname(path)).config;
    } catch {
      /* the dependent checks are skipped below */
    }
  }
  if (!loaded.raw && loaded.config) {
    // Accepted only after mending (a `key: "value"` line): take the hostnames from the parsed config.
    loaded.raw = {
      hostname: loaded.config.hostnameFromFile ? loaded.config.hostname : undefined,
      parent_hostname: loaded.config.parentHostname,
    };
  }
  if (!loaded.config) {
    loaded.refusedBecause =
      errors.length > 0
        ? 'the config file has errors (see "config file" above)'
        : 'the hostname settings are refused (see above)';
  }
  const describe = (ds: Diagnostic[]) => ds.map((d) => `${lineText(d.line)}${d.message}`).join('\n');
  const fixes = (ds: Diagnostic[]) =>
    [...new Set(ds.filter((d) => d.fix).map((d) => `${lineText(d.line)}${d.fix}`))].join('\n');
  if (errors.length > 0)
    return {
      check: result(id, 'error', `${path}:\n${describe([...errors, ...warnings])}`, fixes([...errors, ...warnings])),
      loaded,
    };
  if (warnings.length > 0)
    return { check: result(id, 'warning', `${path}:\n${describe(warnings)}`, fixes(warnings)), loaded };
  return { check: result(id, 'pass', `${path} parses; every setting is where it belongs`), loaded };
}

/** Where a top-level key was written inside a section instead (so it is not in force). */
export function nestedKeyLine(loaded: LoadedForCheck, key: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(loaded.path, 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.split(/\r?\n/);
  const first = lines.findIndex((l) => /^\s*\[/.test(l));
  if (first < 0) return undefined;
  const idx = lines.findIndex((l, i) => i > first && new RegExp(`^\\s*${key}\\s*=`).test(l));
  return idx >= 0 ? idx + 1 : undefined;
}

export function checkProvisioning(config: EdgeConfig): CheckResult {
  const id = 'provisioning';
  const p = config.provisioning;
  if (!p) {
    return result(
      id,
      'error',
      '[provisioning] is missing: the gateway has no identity to connect upstream with',
      'Add [provisioning] source = "manual" with connection_string = "HostName=...;DeviceId=...;SharedAccessKey=..." (from `strata device connection-string ID`)',
    );
  }
  if (p.authentication?.method === 'x509') {
    return result(
      id,
      'pass',
      `edge device "${p.deviceId}" at IoT hub ${p.iothubHostname} (X.509 certificate; the gateway reads its ${'$'}edgeHub key from its parent with it)`,
    );
  }
  return result(id, 'pass', `edge device "${p.deviceId}" at IoT hub ${p.iothubHostname} (SAS key)`);
}
