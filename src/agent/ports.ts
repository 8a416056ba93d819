import type { MethodRequest } from '../model/methods.ts';
import type { TwinCollection, TwinProperties } from '../model/twin.ts';

/**
 * What the agent is given by whoever hosts it (the gateway): its own `$edgeAgent` twin and
 * methods at the hub, the module identities of its edge device, and its settings. The agent
 * knows nothing of how these reach the hub (the gateway's upstream link, through the parents).
 */

/** The `$edgeAgent` module twin and its direct methods, as the hub sees them. */
export interface AgentTwinPort {
  twinGet(): Promise<TwinProperties>;
  /** A merge patch of the reported properties (null deletes). */
  twinPatchReported(patch: Record<string, unknown>): Promise<unknown>;
  /** Desired patches as they come; `onLive` each time the subscription is (re)confirmed. */
  onDesired(cb: (patch: TwinCollection) => void, onLive?: () => void): void;
  onMethod(cb: (req: MethodRequest) => void): void;
  methodResponse(requestId: string, status: number, payload: Buffer): void;
}

/** A module identity at the hub, as the agent needs it to let the module sign its tokens. */
export interface ModuleIdentity {
  moduleId: string;
  generationId: string;
  primaryKey: string;
  secondaryKey: string;
}

/** The module identities of the agent's edge device at the hub (system modules excluded). */
export interface ModuleIdentities {
  /** The module's identity, created when it does not exist yet. */
  ensure(moduleId: string): Promise<ModuleIdentity>;
  remove(moduleId: string): Promise<void>;
  list(): Promise<string[]>;
}

export interface AgentSettings {
  /** The edge device the agent runs modules for. */
  deviceId: string;
  /** The hub's host name (IOTEDGE_IOTHUBHOSTNAME). */
  iothubHostName: string;
  /** Where modules connect: the gateway's host name (IOTEDGE_GATEWAYHOSTNAME). */
  gatewayHostName: string;
  /** The parent's host name, for `$upstream` in image names; undefined at the top layer. */
  parentHostname?: string;
  /** The agent's own directory: the last deployment, restart records, workload sockets. */
  dataDir: string;
}

/**
 * How the agent signs in to its parent's registry API (`$upstream:443/...` images): the edge
 * device's own id and a SAS token made now, so a deployment needs no registryCredentials for it.
 */
export type ParentRegistryLogin = () => { username: string; password: string };
