import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { SensorProtocol } from './spec.ts';

/**
 * Everything `strata topology up` made lives in one directory: the certificates, the hub's data,
 * one folder per gateway and per sensor, the logs, and `topology.json`, which records each
 * process so `down` and `status` find them again.
 */

export const DEFAULT_TOPOLOGY_DIR = join('.strata', 'topology');
export const STATE_FILE = 'topology.json';

export interface ProcessRecord {
  pid?: number;
  /** A string the process's command line contains, so a recycled pid is never mistaken for it. */
  marker: string;
  log: string;
}

export interface HubRecord extends ProcessRecord {
  address: string;
  dataDir: string;
}

export interface GatewayRecord extends ProcessRecord {
  id: string;
  parent: string;
  address: string;
  layer: number;
  config: string;
  dataDir: string;
}

export interface SensorRecord extends ProcessRecord {
  id: string;
  parent: string;
  protocol: SensorProtocol;
  intervalMs: number;
  config: string;
  statusFile: string;
}

export interface TopologyState {
  /** The topology file it was made from. */
  file: string;
  name?: string;
  startedAt: string;
  /** The shared root CA every node and device trusts. */
  rootCa: string;
  /** Set once every node has started. */
  complete: boolean;
  /** The HTTPS port every node serves; absent: 443. */
  httpsPort?: number;
  hub: HubRecord;
  gateways: GatewayRecord[];
  sensors: SensorRecord[];
}

export function topologyPaths(dir: string) {
  const root = resolve(dir);
  return {
    root,
    state: join(root, STATE_FILE),
    certs: join(root, 'certs'),
    hubDir: join(root, 'hub'),
    logs: join(root, 'logs'),
    gatewayDir: (id: string) => join(root, 'gateways', id),
    sensorDir: (id: string) => join(root, 'sensors', id),
  };
}

export function readState(dir: string): TopologyState | undefined {
  const path = topologyPaths(dir).state;
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as TopologyState;
  } catch {
    return undefined;
  }
}

export function writeState(dir: string, state: TopologyState): void {
  const path = topologyPaths(dir).state;
  mkdirSync(topologyPaths(dir).root, { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`);
  renameSync(tmp, path);
}

/** `host` with the state's HTTPS port when it is not 443, for https:// URLs. */
export function httpsHost(state: Pick<TopologyState, 'httpsPort'>, host: string): string {
  return state.httpsPort === undefined || state.httpsPort === 443 ? host : `${host}:${state.httpsPort}`;
}

/** Every process of the state: the hub, the gateways top layer first, then the sensors (the start order). */
export function processesTopDown(state: TopologyState): Array<{ name: string; record: ProcessRecord }> {
  return [
    { name: 'hub', record: state.hub },
    ...[...state.gateways]
      .sort((a, b) => a.layer - b.layer)
      .map((g) => ({ name: `gateway ${g.id}`, record: g as ProcessRecord })),
    ...state.sensors.map((s) => ({ name: `sensor ${s.id}`, record: s as ProcessRecord })),
  ];
}
