import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { openNodeDb } from '../store/db.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { UserError } from '../util/errors.ts';
import { formatConnectionString, parseConnectionString } from '../identity/connection-string.ts';
import { EVENT_HUBS_DEFAULT_PORT, eventHubsEntityName } from '../protocols/amqp/event-hubs/entity.ts';

/**
 * A hub's data directory: `hub.db` (the SQLite registry), `pki/` (its certificates),
 * `hub.json` (where the last start listened, rewritten on every start) and `hub.lock` (the pid
 * of the running hub).
 */
export const DEFAULT_HUB_DIR = join('.strata', 'hub');

export function hubFiles(dataDir: string) {
  return { db: join(dataDir, 'hub.db'), state: join(dataDir, 'hub.json'), lock: join(dataDir, 'hub.lock') };
}

export interface HubState {
  hostname: string;
  bind: string;
  ports: { https: number; mqtt: number; amqp: number };
  caPath: string;
  pid: number;
  startedAt: string;
}

export function writeHubState(dataDir: string, state: HubState): void {
  writeFileAtomic(hubFiles(dataDir).state, `${JSON.stringify(state, null, 2)}\n`);
}

export function readHubState(dataDir: string): HubState | undefined {
  const { state } = hubFiles(dataDir);
  if (!existsSync(state)) return undefined;
  try {
    return JSON.parse(readFileSync(state, 'utf8')) as HubState;
  } catch {
    return undefined;
  }
}

function noHub(dataDir: string): UserError {
  return new UserError(`there is no hub in ${dataDir}`, `Run \`strata hub start --data ${dataDir}\` first`);
}

/** The connection string of one of the hub's shared access policies, read from its database. */
export function hubConnectionString(dataDir: string, policyName = 'iothubowner'): string {
  const files = hubFiles(dataDir);
  const state = readHubState(dataDir);
  if (!state || !existsSync(files.db)) throw noHub(dataDir);
  const db = openNodeDb(files.db, { readonly: true });
  try {
    const row = db.sqlite.prepare('SELECT key_name, primary_key FROM policies WHERE key_name = ?').get(policyName) as
      | { key_name: string; primary_key: string }
      | undefined;
    if (!row) {
      const names = (
        db.sqlite.prepare('SELECT key_name FROM policies ORDER BY rowid').all() as Array<{ key_name: string }>
      ).map((r) => r.key_name);
      throw new UserError(
        `the hub in ${dataDir} has no shared access policy "${policyName}"`,
        `Use one of ${names.join(', ')}`,
      );
    }
    return formatConnectionString({
      HostName: state.hostname,
      SharedAccessKeyName: row.key_name,
      SharedAccessKey: row.primary_key,
    });
  } finally {
    db.close();
  }
}

/** How to reach the hub kept in `dataDir` (which may be running or stopped). */
/** A service connection string whose HostName carries the port when it is not 443 (a client dials HostName). */
export function withHttpsPort(connectionString: string, httpsPort: number | undefined): string {
  if (!httpsPort || httpsPort === 443) return connectionString;
  return connectionString.replace(/HostName=([^;:]*)(?=;|$)/, `HostName=$1:${httpsPort}`);
}

export function readLocalHub(dataDir: string): {
  hostname: string;
  httpsPort: number;
  connectionString: string;
  caPath: string;
} {
  const dir = resolve(dataDir);
  const state = readHubState(dir);
  if (!state) throw noHub(dataDir);
  return {
    hostname: state.hostname,
    httpsPort: state.ports.https,
    connectionString: hubConnectionString(dir),
    caPath: state.caPath,
  };
}

/** The pid of a live hub holding `dataDir`, if any (a lock left by a killed hub is stale). */
export function runningHubPid(dataDir: string): number | undefined {
  const { lock } = hubFiles(dataDir);
  if (!existsSync(lock)) return undefined;
  const pid = Number(readFileSync(lock, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

export function takeHubLock(dataDir: string): void {
  const pid = runningHubPid(dataDir);
  if (pid !== undefined) {
    throw new UserError(
      `a hub is already running from ${dataDir} (pid ${pid})`,
      pid === process.pid ? 'Close it before starting another' : 'Stop it first, or use another --data directory',
    );
  }
  const { lock } = hubFiles(dataDir);
  try {
    writeFileSync(lock, `${process.pid}\n`);
  } catch (err) {
    // A lock without a pid (the disk was full) would only confuse the next start.
    rmSync(lock, { force: true });
    throw err;
  }
}

export function releaseHubLock(dataDir: string): void {
  const { lock } = hubFiles(dataDir);
  try {
    if (Number(readFileSync(lock, 'utf8').trim()) === process.pid) rmSync(lock, { force: true });
  } catch {
    // already gone
  }
}

/**
 * `Endpoint=sb://{host}/;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath={hub}` for one
 * of a local hub's policies. The Endpoint carries the AMQP port only when it is not 5671 (the
 * clients' default); the hub then also accepts token audiences that name `{host}:{port}`.
 */
export function eventHubsConnectionString(dataDir: string, policyName = 'iothubowner'): string {
  const fields = parseConnectionString(hubConnectionString(dataDir, policyName));
  const host = fields.HostName!;
  const amqpPort = readHubState(dataDir)?.ports.amqp ?? EVENT_HUBS_DEFAULT_PORT;
  return formatConnectionString({
    Endpoint: `sb://${host}${amqpPort === EVENT_HUBS_DEFAULT_PORT ? '' : `:${amqpPort}`}/`,
    SharedAccessKeyName: fields.SharedAccessKeyName,
    SharedAccessKey: fields.SharedAccessKey,
    EntityPath: eventHubsEntityName(host),
  });
}
