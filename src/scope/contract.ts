import type { X509Certificate } from 'node:crypto';
import type { AuthenticateDeps } from '../identity/authenticate.ts';
import { EDGE_HUB } from '../identity/device-id.ts';
import type { ScopeDevice, ScopeModule } from '../identity/scope.ts';
import type { IdentityRef } from '../model/identity.ts';

/**
 * The scope API a parent serves to the edge hubs below it: the identities in the caller's
 * scope (paged), one identity on behalf of an auth chain, and a live change feed of the scope.
 * The hub serves it from its registry; a parent gateway serves it, unchanged, from its scope
 * cache. Callers authenticate as `{edge}/$edgeHub`.
 *
 * Paths follow the original's nested scope API where it has one:
 *   POST /devices/{edge}/modules/$edgeHub/devicesAndModulesInTargetDeviceScope
 *        {authChain, pageSize?, continuationLink?} -> {devices, modules, continuationLink, feed}
 *   POST /devices/{edge}/modules/$edgeHub/getDeviceAndModuleOnBehalfOf
 *        {authChain, targetDeviceId, targetModuleId?} -> {devices, modules, authChain}
 *   GET  /devices/{edge}/modules/$edgeHub/deviceScopeChanges?since={epoch}:{sequence}
 *        text/event-stream of `upsert`, `remove`, `position`, `resync` and `bye` events.
 *
 * Module identities of an edge device, written on its behalf (what an edge agent below the
 * top layer uses to create its modules' identities at the hub). The target edge device is the
 * first element of `authChain`: the caller itself, or an edge device in its scope. The hub
 * answers from its registry; every gateway checks the chain against its cache and relays the
 * request to its parent with the chain extended by itself, never answering from the cache.
 *   PUT  /devices/{edge}/modules/$edgeHub/putModuleOnBehalfOf   [If-Match: etag|*]
 *        {authChain, module: {deviceId, moduleId, managedBy?, authentication?}} -> module
 *        (without If-Match: create, 409 if it exists; with If-Match: update, keys kept unless given)
 *   POST /devices/{edge}/modules/$edgeHub/getModuleOnBehalfOf      {authChain, targetModuleId} -> module
 *   POST /devices/{edge}/modules/$edgeHub/getModulesOnTargetDevice {authChain} -> module[]
 *   POST /devices/{edge}/modules/$edgeHub/deleteModuleOnBehalfOf   {authChain, moduleId} -> 204
 * `module` is IoT Hub's module JSON, SAS keys included. `$edgeAgent` and `$edgeHub` cannot be
 * created or deleted this way.
 */

export const SCOPE_API_VERSION = '2020-06-30-preview';
export const DEFAULT_SCOPE_PAGE = 500;
export const MAX_SCOPE_PAGE = 1000;

export function scopePaths(edgeDeviceId: string) {
  const base = `/devices/${encodeURIComponent(edgeDeviceId)}/modules/${EDGE_HUB}`;
  return {
    list: `${base}/devicesAndModulesInTargetDeviceScope`,
    onBehalfOf: `${base}/getDeviceAndModuleOnBehalfOf`,
    changes: `${base}/deviceScopeChanges`,
    putModule: `${base}/putModuleOnBehalfOf`,
    getModule: `${base}/getModuleOnBehalfOf`,
    listModules: `${base}/getModulesOnTargetDevice`,
    deleteModule: `${base}/deleteModuleOnBehalfOf`,
  };
}

/** Where a reader is in a change feed. The epoch changes whenever the feed starts over (a restart). */
export interface FeedPosition {
  epoch: string;
  sequence: number;
}

export function formatPosition(p: FeedPosition): string {
  return `${p.epoch}:${p.sequence}`;
}

export function parsePosition(text: string): FeedPosition | undefined {
  const m = /^([A-Za-z0-9_-]{1,64}):(\d{1,15})$/.exec(text.trim());
  return m ? { epoch: m[1]!, sequence: Number(m[2]) } : undefined;
}

export interface ScopeListRequest {
  authChain: string;
  pageSize?: number;
  continuationLink?: string | null;
}

export interface ScopeListResult {
  devices: ScopeDevice[];
  modules: ScopeModule[];
  /** Pass back to get the next page; null on the last one. */
  continuationLink: string | null;
  /** The feed position this page was read at: follow the feed from the first page's. */
  feed: FeedPosition;
}

export interface OnBehalfOfRequest {
  authChain: string;
  targetDeviceId: string;
  targetModuleId?: string | null;
}

export interface OnBehalfOfResult {
  /** The target device and the edge devices between it and the caller. */
  devices: ScopeDevice[];
  modules: ScopeModule[];
  /** The target's chain as the server knows it, ending with the caller. */
  authChain: string;
}

/** A module identity as the module routes answer it: IoT Hub's module JSON (the fields a caller needs). */
export interface ModuleOnBehalfOfJson {
  deviceId: string;
  moduleId: string;
  generationId: string;
  etag: string;
  managedBy: string;
  authentication: {
    type: string;
    symmetricKey?: { primaryKey: string | null; secondaryKey: string | null };
    x509Thumbprint?: { primaryThumbprint: string | null; secondaryThumbprint: string | null };
  };
  [field: string]: unknown;
}

/** The module routes' body, by route. */
export interface PutModuleOnBehalfOfRequest {
  authChain: string;
  module: { deviceId: string; moduleId: string; managedBy?: string; authentication?: unknown; etag?: string };
}
export interface GetModuleOnBehalfOfRequest {
  authChain: string;
  targetModuleId: string;
}
export interface ListModulesOnBehalfOfRequest {
  authChain: string;
}
export interface DeleteModuleOnBehalfOfRequest {
  authChain: string;
  moduleId: string;
}

/**
 * Where the module routes go once the caller and the chain are checked: the hub's registry, or
 * a gateway's parent (relayed). `chain` is the target's auth chain as this node knows it, from
 * the target edge device up to the caller. Refusals are HubErrors with the status to answer.
 */
export interface ModuleIdentityBackend {
  put(chain: readonly string[], module: Record<string, unknown>, ifMatch?: string): Promise<ModuleOnBehalfOfJson>;
  get(chain: readonly string[], moduleId: string): Promise<ModuleOnBehalfOfJson>;
  list(chain: readonly string[]): Promise<ModuleOnBehalfOfJson[]>;
  delete(chain: readonly string[], moduleId: string, ifMatch?: string): Promise<void>;
}

/** managedBy of module identities an edge agent creates, as IoT Edge sets it. */
export const MANAGED_BY_EDGE = 'IotEdge';

/** Feed events, as carried in the `data:` line (the SSE event name is `op`). */
export type FeedEvent =
  | { op: 'upsert'; sequence: number; device: ScopeDevice }
  | { op: 'upsert'; sequence: number; module: ScopeModule }
  | { op: 'remove'; sequence: number; deviceId: string; moduleId?: string }
  | { op: 'position'; sequence: number; epoch: string }
  | { op: 'resync'; reason: string; epoch: string; sequence: number }
  | { op: 'bye'; reason: string };

/**
 * Where a scope API gets its identities: the hub's registry, or a gateway's scope cache.
 * Everything is synchronous except fetchUpstream, which only gateways have.
 */
export interface IdentitySource {
  /** Host names a `$edgeHub` SAS token may name as its audience host. */
  readonly hostNames: readonly string[];
  getDevice(deviceId: string): ScopeDevice | undefined;
  getModule(deviceId: string, moduleId: string): ScopeModule | undefined;
  listModules(deviceId: string): ScopeModule[];
  allDevices(): Iterable<ScopeDevice>;
  /** The edge device whose own scope is `scope`. */
  edgeByScope(scope: string): ScopeDevice | undefined;
  /** Devices whose parent is the edge device owning `scope`. */
  childrenOfScope(scope: string): ScopeDevice[];
  /** Called after every committed change of a device or module; returns the unsubscribe. */
  onIdentity(listener: (deviceId: string, moduleId: string | undefined) => void): () => void;
  /** CA certificates for `certificateAuthority` edge devices. */
  trustedCas?(): X509Certificate[];
  /**
   * A gateway asks its own parent for an identity it does not know yet, on behalf of a child
   * (`claimedChain` is the chain the child presented). Resolves once stored (or found absent).
   */
  fetchUpstream?(target: IdentityRef, claimedChain: readonly string[]): Promise<void>;
}

/** Authentication against what an IdentitySource knows (the hub's registry, a gateway's scope cache). */
export function authDepsOf(source: IdentitySource): AuthenticateDeps {
  return {
    getDevice: (d) => source.getDevice(d),
    getModule: (d, m) => source.getModule(d, m),
    get hostNames() {
      return [...source.hostNames];
    },
    trustedCas: () => source.trustedCas?.() ?? [],
  };
}
