import type { Engine } from '../engine/engine.ts';
import type { UpstreamTransport } from '../upstream/transport.ts';
import { childLog } from '../util/log.ts';
import type { EdgeConfig } from './config.ts';
import { loadEdgeConfigFile, type LoadedConfig } from './load-config.ts';
import { readAppliedConfig, writeReloadStatus, type ReloadStatus } from './local.ts';
import type { SecurityManager } from './security-manager.ts';
import { START_ONLY_SETTINGS, maxClientsSetting, upstreamTransport } from './settings.ts';

/**
 * `strata edge config apply`: a running gateway reads its config.toml again and applies what it
 * can without a restart (host name or Edge CA: a new server certificate on every listener;
 * MaxConnectedClients), names what only a restart changes, and writes the outcome for the CLI.
 */

const log = childLog('gateway');

/** The configuration in force; a reload replaces it. */
export interface RunningConfig {
  loaded: LoadedConfig;
  config: EdgeConfig;
  /** Where MaxConnectedClients came from (the start-up summary names it). */
  maxClientsSource: string;
}

export interface ReloadParts {
  dataDir: string;
  /** What the gateway started with, which only a restart changes. */
  started: {
    deviceId: string;
    hubHostName: string;
    parentHost: string;
    credentials: string;
    transport: UpstreamTransport;
  };
  env: NodeJS.ProcessEnv;
  security: SecurityManager;
  engine: Engine;
  /** The engine's own host names, changed in place. */
  extraHostNames: string[];
  running: RunningConfig;
}

export type Reload = (configPath?: string, requestId?: string) => Promise<ReloadStatus>;

export function configReloader(p: ReloadParts): Reload {
  const { dataDir, env, security, engine, extraHostNames, running } = p;
  const { deviceId, hubHostName, parentHost, transport } = p.started;
  const startedCredentials = p.started.credentials;
  return async (configPath?: string, requestId?: string): Promise<ReloadStatus> => {
    const path = configPath ?? readAppliedConfig(dataDir)?.configPath ?? running.loaded.path;
    const status: ReloadStatus = { requestId, ok: false, changes: [], errors: [], at: new Date().toISOString() };
    let next: LoadedConfig;
    try {
      next = loadEdgeConfigFile(path, { provisioning: true });
    } catch (err) {
      status.errors = (err as Error).message.split('\n');
      log.error(
        { config: path, errors: status.errors },
        'configuration not applied: it has errors; the running configuration stays',
      );
      writeReloadStatus(dataDir, status);
      return status;
    }
    const c = next.config;
    const restartFor: string[] = [];
    if (c.provisioning?.deviceId !== deviceId) restartFor.push('the edge device id');
    if (c.provisioning?.iothubHostname !== hubHostName) restartFor.push('the IoT hub host name');
    if ((c.parentHostname ?? hubHostName) !== parentHost) restartFor.push('parent_hostname');
    if (JSON.stringify(c.provisioning?.authentication) !== startedCredentials)
      restartFor.push("the edge device's credentials");
    try {
      if (upstreamTransport(c, env) !== transport) restartFor.push('UpstreamProtocol');
    } catch (err) {
      status.errors.push((err as Error).message);
    }
    for (const k of START_ONLY_SETTINGS) {
      if (JSON.stringify(c.settings[k]) !== JSON.stringify(running.config.settings[k]))
        restartFor.push(`[strata] ${k}`);
    }
    if (JSON.stringify(c.registry) !== JSON.stringify(running.config.registry)) restartFor.push('[registry]');
    if (JSON.stringify(c.blob) !== JSON.stringify(running.config.blob)) restartFor.push('[blob]');
    if (restartFor.length > 0) status.changes.push(`needs a restart to take effect: ${restartFor.join(', ')}`);
    try {
      const oldHost = security.currentHostname;
      if (await security.update({ hostname: c.hostname, edgeCa: next.files.edgeCa })) {
        if (c.hostname !== oldHost) {
          extraHostNames.splice(0, extraHostNames.length, c.hostname);
          status.changes.push(`hostname ${oldHost} -> ${c.hostname}`);
        }
        status.changes.push(
          `server certificate re-issued (CN ${c.hostname}, valid until ${security.identity.notAfter.toISOString()}) and swapped in on every listener`,
        );
      }
      const max = maxClientsSetting(c, env);
      if (max.value !== engine.maxConnectedClients) {
        const before = engine.maxConnectedClients;
        const closed = engine.setMaxConnectedClients(max.value);
        status.changes.push(
          `MaxConnectedClients ${before} -> ${max.value}${closed > 0 ? ` (closed ${closed} connection(s) over the new limit)` : ''}`,
        );
      }
      running.maxClientsSource = max.source;
    } catch (err) {
      status.errors.push((err as Error).message);
      writeReloadStatus(dataDir, status);
      log.error({ err: (err as Error).message }, 'applying the configuration failed');
      return status;
    }
    running.loaded = next;
    running.config = c;
    status.ok = true;
    if (status.changes.length === 0) status.changes.push('nothing changed');
    log.info({ config: path, changes: status.changes }, 'configuration applied');
    writeReloadStatus(dataDir, status);
    return status;
  };
}
