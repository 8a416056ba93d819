import { dirname, isAbsolute, resolve } from 'node:path';
import type { EdgeConfig } from '../edge/config.ts';
import { loadEdgeConfigFile } from '../edge/load-config.ts';
import { UserError } from '../util/errors.ts';

/**
 * `[strata] data_dir` of a gateway's config.toml: where that gateway keeps its data, so that
 * `edge start`, `list`, `check` and `config apply` given only the config find the same
 * directory (a topology writes it for each gateway). A relative path is taken from the
 * config file's folder. Absent: undefined, and the commands use ./.strata/edge-{deviceId}.
 */
export function configuredDataDir(config: EdgeConfig, configPath: string): string | undefined {
  const v = config.settings.data_dir;
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.trim() === '') {
    throw new UserError(
      `[strata] data_dir in ${configPath} must be a directory path, got ${JSON.stringify(v)}`,
      "Give the gateway's data directory as a string, or leave it out for ./.strata/edge-{deviceId}",
    );
  }
  return isAbsolute(v) ? v : resolve(dirname(resolve(configPath)), v);
}

/** The data directory named in a config file, reading the file; undefined when it names none. */
export function dataDirOfConfigFile(configPath: string): string | undefined {
  return configuredDataDir(loadEdgeConfigFile(configPath).config, configPath);
}
