/**
 * The parent/child rules of a nested edge hierarchy, in one place.
 *
 * IoT Hub expresses the hierarchy with scopes rather than parent ids: every edge device owns
 * the scope `ms-azure-iot-edge://{deviceId}-{generationId}`, made when it becomes an edge
 * device and never changed. A leaf child carries its parent's scope as `deviceScope` (and in
 * `parentScopes`); an edge child keeps its own `deviceScope` and names its parent's scope in
 * `parentScopes`. Everything here is pure: the caller supplies a view of the registry.
 */

export const EDGE_SCOPE_PREFIX = 'ms-azure-iot-edge://';
/** Edge devices stacked above and including the lowest one (the original caps nesting at 5). */
export const MAX_EDGE_LAYERS = 5;

export function edgeScopeFor(deviceId: string, generationId: string): string {
  return `${EDGE_SCOPE_PREFIX}${deviceId}-${generationId}`;
}

/** What the rules need to know about a device. */
export interface HierarchyNode {
  deviceId: string;
  isEdge: boolean;
  /** An edge device's own scope, or a leaf's parent scope; '' when none. */
  deviceScope: string;
  /** At most one entry: the parent edge device's scope. */
  parentScopes: string[];
}

/** Read access to the registry, as the rules need it. */
export interface HierarchyView {
  /** The edge device that owns `scope`, if any. */
  ownerOf(scope: string): HierarchyNode | undefined;
  /** Devices whose parent is the edge device owning `scope` (leaves and edge children). */
  childrenOf(scope: string): HierarchyNode[];
}

export type HierarchyErrorCode =
  | 'InvalidDeviceScope'
  | 'ParentNotEdge'
  | 'MultipleParents'
  | 'HierarchyCycle'
  | 'HierarchyTooDeep'
  | 'DeviceScopeImmutable'
  | 'DeviceHasChildren';

export class HierarchyError extends Error {
  constructor(
    readonly code: HierarchyErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'HierarchyError';
  }
}

/** The parent scope of a node, or '' for a device without a parent. */
export function parentScopeOf(node: HierarchyNode): string {
  if (node.isEdge) return node.parentScopes[0] ?? '';
  return node.deviceScope || node.parentScopes[0] || '';
}

/** A device may only be given as a parent when it is an edge device. */
export function checkCanBeParent(parent: HierarchyNode): void {
  if (!parent.isEdge) {
    throw new HierarchyError(
      'ParentNotEdge',
      `device ${parent.deviceId} is not an IoT Edge device, and only edge devices can be parents`,
    );
  }
}

/**
 * Edge layers from the top of the hierarchy down to and including `edge` (a top-level edge is
 * layer 1). Walks parent scopes; stops on a loop so a damaged registry cannot hang the caller.
 */
export function edgeLayerOf(view: HierarchyView, edge: HierarchyNode): number {
  let layers = 1;
  const seen = new Set<string>([edge.deviceId]);
  let scope = parentScopeOf(edge);
  while (scope) {
    const parent = view.ownerOf(scope);
    if (!parent || seen.has(parent.deviceId)) break;
    seen.add(parent.deviceId);
    layers++;
    scope = parentScopeOf(parent);
  }
  return layers;
}

/** Edge layers in the subtree rooted at `edge`, counting `edge` itself as one. */
export function edgeSubtreeHeight(view: HierarchyView, edge: HierarchyNode, seen = new Set<string>()): number {
  if (seen.has(edge.deviceId)) return 0;
  seen.add(edge.deviceId);
  let below = 0;
  for (const child of view.childrenOf(edge.deviceScope)) {
    if (child.isEdge && child.deviceId !== edge.deviceId) below = Math.max(below, edgeSubtreeHeight(view, child, seen));
  }
  return 1 + below;
}

/** Ids of `target` and its ancestors, nearest first: the auth chain `target;parent;...;top`. */
export function ancestry(view: HierarchyView, target: HierarchyNode): string[] {
  const chain = [target.deviceId];
  let scope = parentScopeOf(target);
  while (scope) {
    const parent = view.ownerOf(scope);
    if (!parent || chain.includes(parent.deviceId)) break;
    chain.push(parent.deviceId);
    scope = parentScopeOf(parent);
  }
  return chain;
}

/** A device being created or updated, with the scope fields the request carried. */
export interface ScopeRequest {
  deviceId: string;
  generationId: string;
  isEdge: boolean;
  /** As sent: undefined when the request did not mention it (keep what is stored). */
  deviceScope?: string | null;
  parentScopes?: string[] | null;
  /** The stored device, for an update. */
  existing?: HierarchyNode;
}

/**
 * Works out the scopes a device ends up with and enforces every rule: the parent scope must be
 * owned by an edge device, one parent only, no cycles, at most MAX_EDGE_LAYERS edge layers, an
 * edge device's own scope never changes, and an edge device with children stays an edge device.
 */
export function resolveScopes(view: HierarchyView, req: ScopeRequest): { deviceScope: string; parentScopes: string[] } {
  const requestedParents = req.parentScopes === null ? [] : req.parentScopes;
  if (requestedParents && requestedParents.filter((s) => s !== '').length > 1) {
    throw new HierarchyError(
      'MultipleParents',
      `device ${req.deviceId} lists ${requestedParents.length} parent scopes, but a device can have only one parent`,
    );
  }
  const requestedParent = requestedParents ? (requestedParents.find((s) => s !== '') ?? '') : undefined;
  const existing = req.existing;

  if (req.isEdge) {
    const own =
      existing?.isEdge && existing.deviceScope ? existing.deviceScope : edgeScopeFor(req.deviceId, req.generationId);
    if (req.deviceScope && req.deviceScope !== own) {
      throw new HierarchyError(
        'DeviceScopeImmutable',
        `edge device ${req.deviceId} owns the scope ${own}, which cannot be changed; to give it a parent, set parentScopes to the parent's scope`,
      );
    }
    // A leaf that becomes an edge device keeps its parent.
    const parent = requestedParent ?? (existing ? parentScopeOf(existing) : '');
    if (parent)
      checkEdgeParent(
        view,
        { deviceId: req.deviceId, isEdge: true, deviceScope: own, parentScopes: [parent] },
        parent,
        existing !== undefined,
      );
    return { deviceScope: own, parentScopes: parent ? [parent] : [] };
  }

  if (existing?.isEdge && existing.deviceScope) {
    const children = view.childrenOf(existing.deviceScope).filter((c) => c.deviceId !== req.deviceId);
    if (children.length > 0) {
      throw new HierarchyError(
        'DeviceHasChildren',
        `device ${req.deviceId} is the parent of ${children.map((c) => c.deviceId).join(', ')} and must stay an IoT Edge device until they are moved`,
      );
    }
  }
  // For a leaf the deviceScope is what counts (tools clear it to remove the parent); parentScopes
  // is only read when the request did not mention deviceScope.
  let parent: string;
  if (req.deviceScope !== undefined) {
    parent = req.deviceScope ?? '';
    // A body read from the hub and edited carries the old parentScopes: that is not a conflict.
    const stale = existing ? parentScopeOf(existing) : '';
    if (parent && requestedParent && requestedParent !== parent && requestedParent !== stale) {
      throw new HierarchyError(
        'MultipleParents',
        `device ${req.deviceId} names two different parents: deviceScope ${parent} and parentScopes ${requestedParent}`,
      );
    }
  } else if (requestedParent !== undefined) {
    parent = requestedParent;
  } else {
    parent = existing ? parentScopeOf(existing) : '';
  }
  if (parent) {
    const owner = requireOwner(view, req.deviceId, parent);
    checkCanBeParent(owner);
  }
  return { deviceScope: parent, parentScopes: parent ? [parent] : [] };
}

function requireOwner(view: HierarchyView, deviceId: string, scope: string): HierarchyNode {
  const owner = view.ownerOf(scope);
  if (!owner) {
    throw new HierarchyError(
      'InvalidDeviceScope',
      `the scope ${scope} given for device ${deviceId} does not belong to any IoT Edge device`,
    );
  }
  return owner;
}

function checkEdgeParent(
  view: HierarchyView,
  self: HierarchyNode,
  parentScope: string,
  mayHaveChildren: boolean,
): void {
  const owner = requireOwner(view, self.deviceId, parentScope);
  checkCanBeParent(owner);
  if (owner.deviceId === self.deviceId) {
    throw new HierarchyError('HierarchyCycle', `device ${self.deviceId} cannot be its own parent`);
  }
  const above = ancestry(view, owner);
  if (above.includes(self.deviceId)) {
    throw new HierarchyError(
      'HierarchyCycle',
      `making ${owner.deviceId} the parent of ${self.deviceId} would create a cycle (${owner.deviceId} is below ${self.deviceId}: ${above.slice(0, above.indexOf(self.deviceId) + 1).join(' -> ')})`,
    );
  }
  const parentLayer = edgeLayerOf(view, owner);
  const height = mayHaveChildren ? edgeSubtreeHeight(view, self) : 1;
  if (parentLayer + height > MAX_EDGE_LAYERS) {
    throw new HierarchyError(
      'HierarchyTooDeep',
      `placing ${self.deviceId} under ${owner.deviceId} (edge layer ${parentLayer}) would make ${parentLayer + height} edge layers, and at most ${MAX_EDGE_LAYERS} are allowed`,
    );
  }
}

/**
 * The children left without a parent when the edge device owning `scope` is deleted, with the
 * scopes each one keeps: leaves lose their deviceScope, edge children their parentScopes.
 */
export function orphansOf(
  view: HierarchyView,
  scope: string,
): Array<{ node: HierarchyNode; deviceScope: string; parentScopes: string[] }> {
  if (!scope) return [];
  return view.childrenOf(scope).map((node) => ({
    node,
    deviceScope: node.isEdge ? node.deviceScope : '',
    parentScopes: [],
  }));
}
