import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { EdgeAgent } from '../agent/agent.ts';
import { DockerRuntime } from '../agent/docker-runtime.ts';
import { blobUploader } from '../agent/log-upload.ts';
import type { ModuleIdentities, ParentRegistryLogin } from '../agent/ports.ts';
import { ProcessRuntime } from '../agent/process-runtime.ts';
import { DEFAULT_RESTART_SETTINGS } from '../agent/restart-policy.ts';
import { WorkloadApi } from '../agent/workload-api.ts';
import { EDGE_AGENT, EDGE_HUB } from '../identity/device-id.ts';
import { createSasToken } from '../identity/sas.ts';
import type { ScopeCache } from '../scope/cache.ts';
import { MANAGED_BY_EDGE } from '../scope/contract.ts';
import { ParentModuleIdentities } from '../scope/module-identities.ts';
import type { ScopeSync } from '../scope/sync.ts';
import { directChildChain, type ParentLink } from '../upstream/index.ts';
import { childLog } from '../util/log.ts';
import type { EdgeConfig } from './config.ts';
import { coolOffUnitSetting } from './settings.ts';

/**
 * The edge agent inside `strata edge start`, when config.toml asks for one (an `[agent]` or a
 * `[moby_runtime]` section): process modules always, containers on the `[moby_runtime] uri`
 * engine. Its `$edgeAgent` twin and methods ride the gateway's upstream link, on behalf of the
 * edge device, as the `$edgeHub` twin does. Closing it leaves the modules running: a gateway
 * started again adopts them, as IoT Edge's modules outlive its agent.
 */

const log = childLog('agent');

export interface AgentHostParts {
  config: EdgeConfig;
  deviceId: string;
  hubHostName: string;
  /** The gateway's host name: where modules connect. */
  hostname: string;
  dataDir: string;
  trustPem: string;
  link: ParentLink;
  scope: ScopeCache;
  sync: ScopeSync;
  /** The key the gateway signs with (edge-hub-key.ts): the device's own, or its `$edgeHub` module's. */
  edgeKey: () => string;
  /** Default: created and removed at the hub through the parent chain. */
  identities?: ModuleIdentities;
}

/**
 * The agent's sign-in to the parent's registry API: user name = the edge device id, password = a
 * SAS token made now (as `strata device token` makes). A SAS-provisioned device signs its own
 * audience with its key; one provisioned by certificate has only its `$edgeHub` module's key,
 * so the token names that module (the parent takes a module's token under the device id).
 */
export function parentRegistryLogin(
  p: Pick<AgentHostParts, 'config' | 'deviceId' | 'hubHostName' | 'edgeKey'>,
): ParentRegistryLogin {
  const bySas = p.config.provisioning?.authentication?.method === 'sas';
  const device = `${p.hubHostName}/devices/${encodeURIComponent(p.deviceId)}`;
  const audience = bySas ? device : `${device}/modules/${encodeURIComponent(EDGE_HUB)}`;
  return () => ({
    username: p.deviceId,
    password: createSasToken(audience, p.edgeKey(), Math.floor(Date.now() / 1000) + 3600),
  });
}

export interface AgentHost {
  readonly agent: EdgeAgent;
  start(): void;
  close(): Promise<void>;
}

/**
 * The device's module identities at the hub, created on its behalf through the parent chain.
 * Only those the agent created (managedBy IotEdge, as IoT Edge marks them) are listed as its
 * own: a module identity a user made for something else is never removed.
 */
function agentIdentities(sync: ScopeSync): ModuleIdentities {
  const parent = new ParentModuleIdentities(sync.parentClient);
  return {
    ensure: (moduleId) => parent.ensure(moduleId),
    remove: (moduleId) => parent.remove(moduleId),
    list: async () =>
      (await parent.listModules())
        .filter((m) => m.managedBy === MANAGED_BY_EDGE && !m.moduleId.startsWith('$'))
        .map((m) => m.moduleId),
  };
}

export function agentEnabled(config: EdgeConfig): boolean {
  return config.agent !== undefined || config.mobyRuntime !== undefined;
}

/** Where the agent of the gateway with data directory `dataDir` keeps its process modules. */
const processModulesDir = (dataDir: string) => join(dataDir, 'agent', 'modules');

/**
 * Ends and forgets the process modules the agent of a stopped gateway left running (they
 * outlive it, to be adopted), for tearing the whole gateway down as `strata topology down`
 * does. The agent of the next start creates them again. Returns their names.
 */
export async function removeProcessModules(dataDir: string): Promise<string[]> {
  if (!existsSync(processModulesDir(dataDir))) return [];
  const runtime = new ProcessRuntime({ dir: processModulesDir(dataDir) });
  try {
    const names = (await runtime.list()).map((m) => m.name);
    for (const name of names) await runtime.remove(name);
    return names;
  } finally {
    await runtime.close();
  }
}

export function createAgentHost(p: AgentHostParts): AgentHost {
  const dir = join(p.dataDir, 'agent');
  const processRuntime = new ProcessRuntime({ dir: processModulesDir(p.dataDir) });
  const docker = p.config.mobyRuntime
    ? new DockerRuntime({ uri: p.config.mobyRuntime.uri, agentId: p.deviceId, log })
    : undefined;
  // Short: a unix socket path may not exceed 107 bytes.
  const workload = new WorkloadApi({ socketDir: join(dir, 'wl'), trustBundlePem: p.trustPem });
  const twin = p.link.openIdentity({
    deviceId: p.deviceId,
    moduleId: EDGE_AGENT,
    authChain:
      p.scope.authChainOf(p.deviceId, EDGE_AGENT) ??
      directChildChain({ deviceId: p.deviceId, moduleId: EDGE_AGENT }, p.deviceId),
  });
  const login = p.config.parentHostname ? parentRegistryLogin(p) : undefined;
  const agent = new EdgeAgent({
    settings: {
      deviceId: p.deviceId,
      iothubHostName: p.hubHostName,
      gatewayHostName: p.hostname,
      parentHostname: p.config.parentHostname,
      dataDir: dir,
    },
    twin,
    identities: p.identities ?? agentIdentities(p.sync),
    runtimes: { process: processRuntime, docker },
    workload,
    parentRegistryLogin: login,
    uploadBlob: blobUploader({ parentHostname: p.config.parentHostname, trustPem: p.trustPem, login }),
    restart: { ...DEFAULT_RESTART_SETTINGS, coolOffTimeUnitSecs: coolOffUnitSetting(p.config).value },
  });
  return {
    agent,
    start: () => {
      agent.start();
      log.info({ engine: p.config.mobyRuntime?.uri ?? 'none (process modules only)' }, 'edge agent started');
    },
    close: async () => {
      await agent.close();
      await twin.close().catch(() => undefined);
      await workload.close();
      await processRuntime.close();
      await docker?.close();
    },
  };
}
