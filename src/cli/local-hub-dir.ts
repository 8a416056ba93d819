import { existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import { runningHubPid } from '../hub/local.ts';
import { DEFAULT_TOPOLOGY_DIR, readState } from '../topology/state.ts';
import { UserError } from '../util/errors.ts';

/** Where `strata hub start` keeps a local hub unless told otherwise. */
export const DEFAULT_DATA_DIR = join('.strata', 'hub');

/**
 * The hub a command with no --data means, in the current directory: a hub started with
 * `strata hub start` (./.strata/hub) or the hub of a topology (`npm start`, ./.strata/topology).
 * A running one wins over a stopped one; with both stopped, the plain hub.
 */
export function localHubDirs(): string[] {
  const dirs = [DEFAULT_DATA_DIR];
  const topology = readState(DEFAULT_TOPOLOGY_DIR);
  if (topology) dirs.push(relative(process.cwd(), topology.hub.dataDir) || topology.hub.dataDir);
  return dirs;
}

export function findLocalHubDir(): string {
  const dirs = localHubDirs();
  const found = dirs.find((d) => runningHubPid(d) !== undefined) ?? dirs.find((d) => existsSync(d));
  if (found === undefined) {
    throw new UserError(
      `no local hub here: neither ./${DEFAULT_DATA_DIR} nor a topology in ./${DEFAULT_TOPOLOGY_DIR}`,
      'Start one (`npm start` or `strata hub start`), run this where it runs, give --data DIR or --hub-connection-string, or in another shell `eval "$(strata topology env --dir DIR)"`',
    );
  }
  return found;
}

/** `--data` when given, else the local hub found here. */
export function hubDirOf(flags: { data?: string }): string {
  return flags.data ?? findLocalHubDir();
}
