import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { UserError } from '../util/errors.ts';

/**
 * A gateway's data directory: `scope.db` (identities in scope), `messages.db` (the durable
 * message store), `gateway.db` (twin cache), `engine.db` (sessions, C2D bookkeeping), `pki/`
 * (Edge CA when quickstart, server certificate), `gateway.json` (where the running gateway
 * listens), `gateway.pid` (the running gateway), `applied-config.json` (the config
 * `strata edge config apply` made current), `reload-status.json` (how the last reload went),
 * `routes.json` (the last `$edgeHub` route configuration that compiled, used at start-up until
 * the parent answers) and `health.token` (what `/health` wants for the connected identities).
 */

/** Default data directory of the gateway of an edge device. */
export function defaultEdgeDataDir(deviceId: string): string {
  return join('.strata', `edge-${deviceId.replace(/[^A-Za-z0-9._-]/g, '_')}`);
}

export function edgeFiles(dataDir: string) {
  return {
    scopeDb: join(dataDir, 'scope.db'),
    storeDb: join(dataDir, 'messages.db'),
    gatewayDb: join(dataDir, 'gateway.db'),
    state: join(dataDir, 'gateway.json'),
    pid: join(dataDir, 'gateway.pid'),
    applied: join(dataDir, 'applied-config.json'),
    reloadStatus: join(dataDir, 'reload-status.json'),
    routes: join(dataDir, 'routes.json'),
    healthToken: join(dataDir, 'health.token'),
  };
}

export interface GatewayState {
  deviceId: string;
  hostname: string;
  bind: string;
  /** Where /metrics listens (absent in state files of earlier versions: then `bind`). */
  metricsBind?: string;
  ports: { mqtt: number; amqp: number; https: number; metrics: number };
  configPath: string;
  upstream: string;
  pid: number;
  startedAt: string;
}

export interface AppliedConfig {
  configPath: string;
  /** Matches the reload status the running gateway writes back. */
  requestId: string;
  appliedAt: string;
}

export interface ReloadStatus {
  requestId?: string;
  ok: boolean;
  /** What changed, one line each. */
  changes: string[];
  /** Why the reload was refused (the running configuration stays). */
  errors: string[];
  at: string;
}

function writeJson(path: string, value: unknown): void {
  writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`);
}

function readJson<T>(path: string): T | undefined {
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export const writeGatewayState = (dir: string, s: GatewayState) => writeJson(edgeFiles(dir).state, s);
export const readGatewayState = (dir: string) => readJson<GatewayState>(edgeFiles(dir).state);
export const writeAppliedConfig = (dir: string, a: AppliedConfig) => writeJson(edgeFiles(dir).applied, a);
export const readAppliedConfig = (dir: string) => readJson<AppliedConfig>(edgeFiles(dir).applied);
export const writeReloadStatus = (dir: string, r: ReloadStatus) => writeJson(edgeFiles(dir).reloadStatus, r);
export const readReloadStatus = (dir: string) => readJson<ReloadStatus>(edgeFiles(dir).reloadStatus);

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The pid of the gateway running from this data directory, if one is. */
export function runningGatewayPid(dataDir: string): number | undefined {
  const { pid } = edgeFiles(dataDir);
  if (!existsSync(pid)) return undefined;
  const n = Number(readFileSync(pid, 'utf8').trim());
  return Number.isInteger(n) && n > 0 && processAlive(n) ? n : undefined;
}

/** One gateway per data directory: its stores are not shared. */
export function takeGatewayLock(dataDir: string): void {
  const other = runningGatewayPid(dataDir);
  if (other !== undefined && other !== process.pid) {
    throw new UserError(
      `a gateway is already running from ${dataDir} (pid ${other})`,
      'Stop it first, or give this one its own --data directory',
    );
  }
  const { pid } = edgeFiles(dataDir);
  try {
    writeFileSync(pid, `${process.pid}\n`);
  } catch (err) {
    // A pid file without a pid (the disk was full) would only confuse the next start.
    rmSync(pid, { force: true });
    throw err;
  }
}

export function releaseGatewayLock(dataDir: string): void {
  const { pid } = edgeFiles(dataDir);
  try {
    if (existsSync(pid) && Number(readFileSync(pid, 'utf8').trim()) === process.pid) rmSync(pid);
  } catch {
    /* best effort */
  }
}
