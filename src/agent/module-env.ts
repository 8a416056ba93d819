import type { WorkloadEndpoint } from './workload-api.ts';

/**
 * The environment IoT Edge gives a module, from which `ModuleClient.fromEnvironment` builds its
 * connection: who it is, where edgeHub is, and where the workload API signs for it.
 */

/** Where a container finds its workload socket (the path IoT Edge gives it), in its mounted directory. */
export const CONTAINER_WORKLOAD_DIR = '/var/run/iotedge';
export const CONTAINER_WORKLOAD_SOCKET = `${CONTAINER_WORKLOAD_DIR}/workload.sock`;

/** The workload API version advertised to modules; every version the routes accept answers alike. */
export const ADVERTISED_WORKLOAD_API_VERSION = '2019-01-30';

/** The only scheme IoT Edge gives modules: SAS tokens signed by the workload API. */
export const AUTH_SCHEME = 'sasToken';

export interface ModuleEnvInput {
  /** The hub's host name (the edge device's connection string HostName). */
  iothubHostName: string;
  /** The edge device the module runs on. */
  deviceId: string;
  moduleId: string;
  /** The module identity's generationId at the hub. */
  generationId: string;
  /** The gateway's host name (config.toml `hostname`): where the module's client connects. */
  gatewayHostName: string;
  /** The workload URI as the module sees it: see workloadUriFor. */
  workloadUri: string;
  /** The deployment's `env` for the module (values already unwrapped from `{ value }`). */
  deploymentEnv?: Record<string, string>;
}

/** The names the agent sets; a deployment cannot override them (the module would lose its identity). */
export const RESERVED_ENV = [
  'IOTEDGE_IOTHUBHOSTNAME',
  'IOTEDGE_DEVICEID',
  'IOTEDGE_MODULEID',
  'IOTEDGE_MODULEGENERATIONID',
  'IOTEDGE_GATEWAYHOSTNAME',
  'IOTEDGE_WORKLOADURI',
  'IOTEDGE_APIVERSION',
  'IOTEDGE_AUTHSCHEME',
] as const;

/** The module's environment: the deployment's variables, then IoT Edge's, which win. */
export function moduleEnv(o: ModuleEnvInput): Record<string, string> {
  return {
    ...o.deploymentEnv,
    IOTEDGE_IOTHUBHOSTNAME: o.iothubHostName,
    IOTEDGE_DEVICEID: o.deviceId,
    IOTEDGE_MODULEID: o.moduleId,
    IOTEDGE_MODULEGENERATIONID: o.generationId,
    IOTEDGE_GATEWAYHOSTNAME: o.gatewayHostName,
    IOTEDGE_WORKLOADURI: o.workloadUri,
    IOTEDGE_APIVERSION: ADVERTISED_WORKLOAD_API_VERSION,
    IOTEDGE_AUTHSCHEME: AUTH_SCHEME,
  };
}

/** Deployment variables that moduleEnv overrides, for a warning naming them. */
export function overriddenEnv(deploymentEnv: Record<string, string> = {}): string[] {
  return RESERVED_ENV.filter((k) => k in deploymentEnv);
}

/**
 * The workload URI a module is given: a container sees its socket at the mount path; a process
 * on this machine uses the endpoint as served (socket path or loopback port).
 */
export function workloadUriFor(endpoint: WorkloadEndpoint, runtime: 'docker' | 'process'): string {
  if (runtime === 'docker') {
    if (!endpoint.socketDir)
      throw new Error(`module '${endpoint.moduleId}': a container needs a unix workload socket, not ${endpoint.uri}`);
    return `unix://${CONTAINER_WORKLOAD_SOCKET}`;
  }
  return endpoint.uri;
}

/**
 * The bind mount that puts a module's workload socket where its container looks for it: the
 * module's socket directory, so a socket made anew by a restarted agent is seen inside too.
 */
export function workloadBind(endpoint: WorkloadEndpoint): string {
  if (!endpoint.socketDir) throw new Error(`module '${endpoint.moduleId}' has no workload socket to mount`);
  return `${endpoint.socketDir}:${CONTAINER_WORKLOAD_DIR}`;
}

/** Who a module is, as the agent learned it when it created the module identity at the hub. */
export interface ModuleIdentityFacts {
  iothubHostName: string;
  deviceId: string;
  generationId: string;
  gatewayHostName: string;
}

/**
 * A runtime's view of a module with IoT Edge's additions: the IOTEDGE_* environment and, for a
 * container, its workload socket bound at the path IoT Edge uses (HostConfig.Binds, kept after
 * the deployment's own binds).
 */
export function withWorkload<
  T extends {
    name: string;
    type: 'docker' | 'process';
    env: Record<string, string>;
    createOptions?: Record<string, unknown>;
  },
>(spec: T, endpoint: WorkloadEndpoint, who: ModuleIdentityFacts): T {
  const env = moduleEnv({
    ...who,
    moduleId: spec.name,
    workloadUri: workloadUriFor(endpoint, spec.type),
    deploymentEnv: spec.env,
  });
  if (spec.type !== 'docker') return { ...spec, env };
  const opts = spec.createOptions ?? {};
  const hostConfig = (opts.HostConfig ?? {}) as Record<string, unknown>;
  const binds = Array.isArray(hostConfig.Binds) ? (hostConfig.Binds as string[]) : [];
  const own = workloadBind(endpoint);
  return {
    ...spec,
    env,
    createOptions: { ...opts, HostConfig: { ...hostConfig, Binds: [...binds.filter((b) => b !== own), own] } },
  };
}
