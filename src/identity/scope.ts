/**
 * Which identities an edge device may act for, and the auth chains that prove it.
 *
 * An edge device's scope is itself, its modules, and every device below it (leaves and edge
 * devices, down the whole subtree, with their modules), at most MAX_EDGE_LAYERS edge layers
 * deep. Strata gives a gateway its whole subtree rather than only its direct children so that
 * a change anywhere below reaches every layer through the live scope feeds, hop by hop, with
 * no refresh cycle; on-behalf-of lookups only cover the moment between a create and its feed
 * event.
 *
 * An auth chain names an identity and the edge devices above it, nearest first, ending with
 * the edge device that acts for it: `leaf;edge2;edge1`, or `dev/mod;dev;edge1` for a module.
 * Everything here is pure: the caller supplies a view of what it knows (the hub's registry, or
 * a gateway's scope cache, whose knowledge ends at the gateway itself).
 */

import { MAX_EDGE_LAYERS } from './hierarchy.ts';
import { identityKey } from '../model/identity.ts';

export { MAX_EDGE_LAYERS } from './hierarchy.ts';

/** A device as the scope rules need it. */
export interface ScopeNode {
  deviceId: string;
  isEdge: boolean;
  /** An edge device's own scope, or a leaf's parent scope; '' when none. */
  deviceScope: string;
  /** At most one entry: the parent edge device's scope. */
  parentScopes: string[];
  status: 'enabled' | 'disabled' | string;
}

/** Read access to what a node knows about devices. */
export interface ScopeView {
  device(deviceId: string): ScopeNode | undefined;
  /** The edge device owning `scope`, if known. */
  ownerOf(scope: string): ScopeNode | undefined;
  /** Devices whose parent is the edge device owning `scope`. */
  childrenOf(scope: string): ScopeNode[];
}

export interface IdentityRef {
  deviceId: string;
  moduleId?: string;
}

/** What an identity record carries for offline authentication (the IoT Hub device JSON subset). */
export type ScopeAuthentication = {
  type: 'sas' | 'selfSigned' | 'certificateAuthority' | 'none';
  symmetricKey: { primaryKey: string | null; secondaryKey: string | null };
  x509Thumbprint: { primaryThumbprint: string | null; secondaryThumbprint: string | null };
};

export type ScopeDevice = {
  deviceId: string;
  generationId: string;
  etag?: string;
  status: 'enabled' | 'disabled';
  statusReason?: string | null;
  authentication: ScopeAuthentication;
  capabilities: { iotEdge: boolean };
  deviceScope: string;
  parentScopes: string[];
};

export type ScopeModule = {
  deviceId: string;
  moduleId: string;
  generationId: string;
  etag?: string;
  managedBy?: string;
  status?: 'enabled' | 'disabled';
  authentication: ScopeAuthentication;
};

/** Elements of the longest valid chain: a module, its leaf device, and MAX_EDGE_LAYERS edges. */
export const MAX_CHAIN_ELEMENTS = MAX_EDGE_LAYERS + 2;

export type ScopeErrorCode =
  | 'bad-chain' // not a well-formed chain
  | 'target-mismatch' // element 0 is not the identity asked for
  | 'actor-mismatch' // the last element is not the edge device making the request
  | 'not-found' // the target (or the actor) is unknown here
  | 'not-edge' // the actor is not an edge device
  | 'out-of-scope' // the actor is not above the target
  | 'too-deep' // more than MAX_EDGE_LAYERS edge devices between target and actor
  | 'void'; // an edge device on the chain is disabled

export class ScopeError extends Error {
  constructor(
    readonly code: ScopeErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ScopeError';
  }
}

export function parseIdentityKey(key: string): IdentityRef {
  const slash = key.indexOf('/');
  return slash < 0 ? { deviceId: key } : { deviceId: key.slice(0, slash), moduleId: key.slice(slash + 1) };
}

/** Splits `a;b;c`; refuses empty text, empty elements, repeats and chains no hierarchy can have. */
export function parseAuthChain(text: unknown): string[] {
  if (typeof text !== 'string' || text.trim() === '') throw new ScopeError('bad-chain', 'the auth chain is empty');
  const ids = text.split(';').map((s) => s.trim());
  if (ids.some((s) => s === '')) throw new ScopeError('bad-chain', `the auth chain "${text}" has an empty element`);
  if (ids.length > MAX_CHAIN_ELEMENTS) {
    throw new ScopeError(
      'too-deep',
      `the auth chain "${text}" has ${ids.length} elements, more than any hierarchy of ${MAX_EDGE_LAYERS} edge layers allows`,
    );
  }
  if (new Set(ids).size !== ids.length)
    throw new ScopeError('bad-chain', `the auth chain "${text}" names an identity twice`);
  if (ids.slice(1).some((s) => s.includes('/'))) {
    throw new ScopeError(
      'bad-chain',
      `only the first element of the auth chain "${text}" may be a module (device/module)`,
    );
  }
  return ids;
}

export function formatAuthChain(ids: readonly string[]): string {
  return ids.join(';');
}

export function toScopeNode(d: ScopeDevice): ScopeNode {
  return {
    deviceId: d.deviceId,
    isEdge: d.capabilities?.iotEdge === true,
    deviceScope: d.deviceScope ?? '',
    parentScopes: d.parentScopes ?? [],
    status: d.status,
  };
}

/** What a scope view needs of an identity store: the hub's registry, or a gateway's scope cache. */
export interface ScopeLookup {
  getDevice(deviceId: string): ScopeDevice | undefined;
  edgeByScope(scope: string): ScopeDevice | undefined;
  childrenOfScope(scope: string): ScopeDevice[];
}

export function scopeViewOf(source: ScopeLookup): ScopeView {
  return {
    device: (id) => {
      const d = source.getDevice(id);
      return d ? toScopeNode(d) : undefined;
    },
    ownerOf: (scope) => {
      const d = source.edgeByScope(scope);
      return d ? toScopeNode(d) : undefined;
    },
    childrenOf: (scope) => source.childrenOfScope(scope).map(toScopeNode),
  };
}

/** The parent scope of a device, or '' for a device without a parent. */
export function parentScopeOfNode(node: ScopeNode): string {
  if (node.isEdge) return node.parentScopes[0] ?? '';
  return node.deviceScope || node.parentScopes[0] || '';
}

/**
 * The devices of a chain from `node` upwards, nearest first: `node` and its known ancestors.
 * Stops where the view's knowledge ends, on a loop, and after enough steps that no valid
 * hierarchy could need more (so a damaged store cannot hang the caller).
 */
export function lineage(view: ScopeView, node: ScopeNode): ScopeNode[] {
  const out = [node];
  const seen = new Set([node.deviceId]);
  let scope = parentScopeOfNode(node);
  while (scope && out.length <= MAX_CHAIN_ELEMENTS) {
    const parent = view.ownerOf(scope);
    if (!parent?.isEdge || seen.has(parent.deviceId)) break;
    out.push(parent);
    seen.add(parent.deviceId);
    scope = parentScopeOfNode(parent);
  }
  return out;
}

/**
 * The edge devices whose scope holds `node`, nearest first: the device itself when it is an
 * edge device, then the edge devices above it, at most MAX_EDGE_LAYERS of them.
 */
export function scopeOwners(view: ScopeView, node: ScopeNode): string[] {
  return lineage(view, node)
    .filter((n) => n.isEdge)
    .slice(0, MAX_EDGE_LAYERS)
    .map((n) => n.deviceId);
}

/** Whether `target` (a device or module) is in the scope of the edge device `edgeId`. */
export function isInScope(view: ScopeView, edgeId: string, target: IdentityRef): boolean {
  const node = view.device(target.deviceId);
  return node !== undefined && scopeOwners(view, node).includes(edgeId);
}

/**
 * The devices in an edge device's scope: the edge device first, then everything below it,
 * breadth first, down to MAX_EDGE_LAYERS edge layers counted from `edgeId`. Empty when
 * `edgeId` is unknown or not an edge device. Modules are the caller's to add (every device
 * listed brings its modules).
 */
export function scopeMembers(view: ScopeView, edgeId: string): ScopeNode[] {
  const root = view.device(edgeId);
  if (!root?.isEdge) return [];
  const out: ScopeNode[] = [root];
  const seen = new Set([root.deviceId]);
  let layer: ScopeNode[] = [root];
  for (let depth = 1; layer.length > 0; depth++) {
    const next: ScopeNode[] = [];
    for (const edge of layer) {
      for (const child of view.childrenOf(edge.deviceScope)) {
        if (seen.has(child.deviceId) || parentScopeOfNode(child) !== edge.deviceScope) continue;
        seen.add(child.deviceId);
        if (child.isEdge && depth >= MAX_EDGE_LAYERS) continue;
        out.push(child);
        if (child.isEdge) next.push(child);
      }
    }
    layer = next;
  }
  return out;
}

/**
 * The auth chain of `target` ending at the acting edge device: `target;parent;...;actor`, with
 * a module as `dev/mod;dev;...`. Undefined when the target is unknown, the actor is not above
 * it (nor the target itself), or the chain would hold more than MAX_EDGE_LAYERS edge devices.
 * Disabled devices are not looked at here; see chainVoidReason.
 */
export function buildAuthChain(view: ScopeView, target: IdentityRef, actorEdgeId: string): string[] | undefined {
  const node = view.device(target.deviceId);
  if (!node) return undefined;
  const line = lineage(view, node);
  const at = line.findIndex((n) => n.deviceId === actorEdgeId);
  if (at < 0 || !line[at]!.isEdge) return undefined;
  const upToActor = line.slice(0, at + 1);
  if (upToActor.filter((n) => n.isEdge).length > MAX_EDGE_LAYERS) return undefined;
  const ids = upToActor.map((n) => n.deviceId);
  return target.moduleId ? [identityKey(target.deviceId, target.moduleId), ...ids] : ids;
}

/** Why a chain cannot be used: an edge device on it is disabled (or unknown). Undefined when usable. */
export function chainVoidReason(view: ScopeView, chain: readonly string[]): string | undefined {
  for (const key of chain) {
    if (key.includes('/')) continue;
    const node = view.device(key);
    if (!node) return `device ${key} on the auth chain ${formatAuthChain(chain)} is not known here`;
    if (node.isEdge && node.status === 'disabled')
      return `edge device ${key} on the auth chain ${formatAuthChain(chain)} is disabled`;
  }
  return undefined;
}

/**
 * Checks a chain presented by the edge device `actorEdgeId` on behalf of `target`: element 0
 * is the target, the last element is the actor, the actor appears in the target's chain as
 * this view knows it, at most MAX_EDGE_LAYERS edge layers, and no edge device on it disabled.
 * Returns the chain as this view knows it (which may differ from the claim in the middle when
 * the claimant guessed, e.g. for a device it has not yet heard of); throws ScopeError.
 */
export function validateAuthChain(
  view: ScopeView,
  claimed: string | readonly string[],
  actorEdgeId: string,
  target?: IdentityRef,
): string[] {
  const ids = typeof claimed === 'string' ? parseAuthChain(claimed) : parseAuthChain(formatAuthChain(claimed));
  const text = formatAuthChain(ids);
  const first = parseIdentityKey(ids[0]!);
  if (target && identityKey(target.deviceId, target.moduleId) !== ids[0]) {
    throw new ScopeError(
      'target-mismatch',
      `the auth chain ${text} starts with ${ids[0]}, not with ${identityKey(target.deviceId, target.moduleId)}`,
    );
  }
  if (ids[ids.length - 1] !== actorEdgeId) {
    throw new ScopeError(
      'actor-mismatch',
      `the auth chain ${text} must end with the acting edge device ${actorEdgeId}`,
    );
  }
  const actor = view.device(actorEdgeId);
  if (!actor) throw new ScopeError('not-found', `edge device ${actorEdgeId} is not known here`);
  if (!actor.isEdge)
    throw new ScopeError('not-edge', `device ${actorEdgeId} is not an IoT Edge device, so it cannot act for others`);
  const node = view.device(first.deviceId);
  if (!node) throw new ScopeError('not-found', `device ${first.deviceId} is not registered`);
  const line = lineage(view, node);
  const at = line.findIndex((n) => n.deviceId === actorEdgeId);
  if (at < 0) throw new ScopeError('out-of-scope', `${ids[0]} is not in the scope of edge device ${actorEdgeId}`);
  const real = buildAuthChain(view, first, actorEdgeId);
  if (!real) {
    throw new ScopeError('too-deep', `${ids[0]} is more than ${MAX_EDGE_LAYERS} edge layers below ${actorEdgeId}`);
  }
  const voided = chainVoidReason(view, real);
  if (voided) throw new ScopeError('void', voided);
  return real;
}
