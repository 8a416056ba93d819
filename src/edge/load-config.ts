import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { UserError } from '../util/errors.ts';
import { ConfigError, formatDiagnostic, parseEdgeConfig, type Diagnostic, type EdgeConfig } from './config.ts';
import { checkConfigFiles, type LoadedEdgeFiles } from './config-files.ts';

export interface LoadedConfig {
  path: string;
  config: EdgeConfig;
  files: LoadedEdgeFiles;
  /** Every finding, warnings included (errors only when `need` adds them; otherwise they throw). */
  diagnostics: Diagnostic[];
}

/** What a running gateway needs beyond a valid file (a config check alone does not). */
export interface GatewayNeeds {
  provisioning?: boolean;
}

/**
 * Reads a config.toml and every file it names. Throws ConfigError carrying every diagnostic
 * (each error on its own line, with the line number where it has one); the warnings are in
 * the result otherwise. `needs` adds the gateway's own requirements (an identity to run as,
 * with a key or an identity certificate, and a trust bundle to verify the parent).
 */
export function loadEdgeConfigFile(file: string, needs: GatewayNeeds = {}): LoadedConfig {
  const path = resolve(file);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new UserError(`config file not found: ${path}`, "Give the path of the gateway's config.toml with --config");
    if (code === 'EACCES')
      throw new UserError(`cannot read the config file ${path}: permission denied`, 'Run as a user who may read it');
    throw new UserError(`cannot read the config file ${path}: ${(err as Error).message}`);
  }
  const { config, diagnostics } = parseEdgeConfig(text, path, dirname(path));
  const { files, diagnostics: fileDiags } = checkConfigFiles(config);
  const all = [...diagnostics, ...fileDiags];
  if (needs.provisioning) {
    const p = config.provisioning;
    if (!p) {
      all.push({
        level: 'error',
        message: '[provisioning] is missing: the gateway needs the identity of its edge device to connect upstream',
        fix: 'Add [provisioning] with source = "manual" and connection_string = "HostName=...;DeviceId=...;SharedAccessKey=..." (from `strata device connection-string ID`)',
      });
    }
    if (!config.trustBundleCert) {
      all.push({
        level: 'error',
        message:
          'trust_bundle_cert is not set: the gateway cannot verify the certificate of its parent (the hub or parent gateway)',
        fix: 'Set trust_bundle_cert = "file:///.../root.ca.cert.pem" at the top of the file (before any [section])',
      });
    }
  }
  if (all.some((d) => d.level === 'error')) throw new ConfigError(path, all);
  return { path, config, files, diagnostics: all };
}

/** Every diagnostic as printed lines (warnings and errors). */
export function diagnosticLines(path: string, diagnostics: readonly Diagnostic[]): string[] {
  return diagnostics.map((d) => formatDiagnostic(path, d));
}
