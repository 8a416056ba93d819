import { existsSync, readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { ServiceClient, parseServiceConnectionString } from '../hub/service-client.ts';
import { UserError } from '../util/errors.ts';
import { DEFAULT_DATA_DIR, findLocalHubDir } from './local-hub-dir.ts';
import { DEFAULT_TOPOLOGY_DIR } from '../topology/state.ts';

/** The flags that say which hub a service-side command talks to. */
export interface HubAccessFlags {
  hubConnectionString?: string;
  data?: string;
  ca?: string;
}

export function withHubAccessFlags(cmd: Command): Command {
  return cmd
    .option(
      '--hub-connection-string <cs>',
      'service connection string of the hub (else env STRATA_HUB_CONNECTION_STRING)',
    )
    .option(
      '--data <dir>',
      `data directory of a local hub (default: ./${DEFAULT_DATA_DIR}, else the hub of the topology in ./${DEFAULT_TOPOLOGY_DIR}, when no connection string is given)`,
    )
    .option(
      '--ca <file>',
      "PEM file of the CA that signed the hub's certificate (else the local hub's CA, or with a connection string env STRATA_CA, else the system store)",
    );
}

function readCa(file: string, from: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new UserError(
      `cannot read the CA file ${file} (${from}): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      'Give a PEM file with --ca FILE or STRATA_CA',
    );
  }
}

/**
 * A service client for the hub named by, in order: --hub-connection-string, --data,
 * STRATA_HUB_CONNECTION_STRING, ./.strata/hub or the hub of ./.strata/topology. `hostName` is the hub's name as its connection
 * string gives it, for building device connection strings.
 */
export async function openHubAccess(flags: HubAccessFlags): Promise<{ client: ServiceClient; hostName: string }> {
  if (flags.hubConnectionString !== undefined && flags.data !== undefined) {
    throw new UserError('give either --hub-connection-string or --data, not both');
  }
  const envCs = process.env.STRATA_HUB_CONNECTION_STRING;
  const flagCa = flags.ca ? readCa(flags.ca, '--ca') : undefined;
  const cs = flags.hubConnectionString ?? (flags.data === undefined && envCs ? envCs : undefined);
  if (cs !== undefined) {
    const ca = flagCa ?? (process.env.STRATA_CA ? readCa(process.env.STRATA_CA, 'STRATA_CA') : undefined);
    const client = new ServiceClient(cs, { ca });
    return { client, hostName: client.connection.hostName };
  }
  const dataDir = flags.data ?? findLocalHubDir();
  if (!existsSync(dataDir)) {
    throw new UserError(
      `no local hub in ${dataDir}`,
      'Start one with `strata hub start`, or give --hub-connection-string or STRATA_HUB_CONNECTION_STRING',
    );
  }
  const local = await localHubAccess(dataDir);
  // STRATA_CA belongs with STRATA_HUB_CONNECTION_STRING; a local hub brings its own CA.
  const client = new ServiceClient(local.connectionString, {
    ca: flagCa ?? readCa(local.caPath, `the CA of the hub in ${dataDir}`),
  });
  return { client, hostName: local.hostName };
}

/**
 * How a service client reaches the hub kept in `dataDir`: its iothubowner connection string
 * (HostName with the port when it is not 443), the hub's name, and the CA file it trusts.
 */
export async function localHubAccess(
  dataDir: string,
): Promise<{ connectionString: string; hostName: string; caPath: string }> {
  const { readLocalHub, withHttpsPort } = await import('../hub/local.ts');
  const local = readLocalHub(dataDir);
  const conn = parseServiceConnectionString(local.connectionString);
  // A local hub on a non-standard port: say so in HostName, which the client dials.
  const connectionString = withHttpsPort(local.connectionString, local.httpsPort);
  return { connectionString, hostName: conn.hostName, caPath: local.caPath };
}

export async function openServiceClient(flags: HubAccessFlags): Promise<ServiceClient> {
  return (await openHubAccess(flags)).client;
}
