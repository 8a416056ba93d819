/**
 * The parent/child hierarchy, seen from the CLI. The hub enforces the hierarchy rules; the
 * checks here exist to explain a refusal in the user's terms before the hub says no.
 */
import { UserError } from '../util/errors.ts';
import type { DeviceJson, ServiceClient, TwinJson } from '../hub/service-client.ts';
import { checkDeviceId } from './device-common.ts';

/** IoT Edge allows at most this many layers of edge devices, the top one included. */
export const MAX_EDGE_LAYERS = 5;

/** A string literal for the query language. */
function quote(s: string): string {
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

export const isEdge = (d: { capabilities?: { iotEdge?: boolean } }) => d.capabilities?.iotEdge === true;

/** The scope of a device's parent: its parentScopes, or for a leaf its deviceScope. */
export function parentScopeOf(d: DeviceJson | TwinJson): string | undefined {
  const ps = d.parentScopes?.find(Boolean);
  if (ps) return ps;
  if (!isEdge(d) && d.deviceScope) return d.deviceScope;
  return undefined;
}

/** The edge devices of the hub, by scope: enough to walk up and down the hierarchy. */
export class EdgeMap {
  private readonly byScope = new Map<string, TwinJson>();

  private constructor(twins: TwinJson[]) {
    for (const t of twins) if (t.deviceScope) this.byScope.set(t.deviceScope, t);
  }

  static async load(client: ServiceClient): Promise<EdgeMap> {
    return new EdgeMap(await client.query('SELECT * FROM devices WHERE capabilities.iotEdge = true'));
  }

  idOf(scope: string): string | undefined {
    return this.byScope.get(scope)?.deviceId;
  }

  /** Ids from the device owning `scope` up to the top of its hierarchy. */
  chainFrom(scope: string): string[] {
    const chain: string[] = [];
    const seen = new Set<string>();
    let cur = this.byScope.get(scope);
    while (cur && !seen.has(cur.deviceId)) {
      seen.add(cur.deviceId);
      chain.push(cur.deviceId);
      const up = parentScopeOf(cur);
      cur = up ? this.byScope.get(up) : undefined;
    }
    return chain;
  }

  /** Layers of edge devices in the subtree under (and including) the edge device with `scope`. */
  height(scope: string, seen = new Set<string>()): number {
    if (seen.has(scope)) return 0;
    seen.add(scope);
    let below = 0;
    for (const t of this.byScope.values()) {
      if (t.deviceScope && parentScopeOf(t) === scope) below = Math.max(below, this.height(t.deviceScope, seen));
    }
    return 1 + below;
  }
}

export async function getEdge(client: ServiceClient, id: string, role: string): Promise<DeviceJson> {
  const d = await client.getDevice(checkDeviceId(id));
  if (!isEdge(d)) {
    throw new UserError(
      `only IoT Edge devices can be ${role}: ${id} is not an IoT Edge device`,
      'Create parents with `strata device create ID --edge`',
    );
  }
  if (!d.deviceScope)
    throw new UserError(
      `IoT Edge device ${id} has no device scope`,
      'The hub should have given it one; recreate the device',
    );
  return d;
}

/**
 * Checks that `child` may go under `parent`. Returns false when it already is there (nothing
 * to do), throws a UserError explaining why not, else returns true.
 */
export function checkMove(child: DeviceJson, parent: DeviceJson, force: boolean, edges: EdgeMap): boolean {
  const parentScope = parent.deviceScope!;
  if (child.deviceId === parent.deviceId) throw new UserError(`device ${child.deviceId} cannot be its own parent`);
  const current = parentScopeOf(child);
  if (current === parentScope) return false;
  if (current && !force) {
    const name = edges.idOf(current) ?? current;
    throw new UserError(`device ${child.deviceId} already has parent ${name}; use --force to move it`);
  }
  if (isEdge(child)) {
    const chain = edges.chainFrom(parentScope);
    const at = chain.indexOf(child.deviceId);
    if (at >= 0) {
      const path = chain
        .slice(0, at + 1)
        .reverse()
        .join(' > ');
      throw new UserError(
        `cannot make ${parent.deviceId} the parent of ${child.deviceId}: ${parent.deviceId} is below it (${path}), so that would make a cycle`,
      );
    }
    const layers = chain.length + edges.height(child.deviceScope ?? '');
    if (layers > MAX_EDGE_LAYERS) {
      throw new UserError(
        `cannot make ${parent.deviceId} the parent of ${child.deviceId}: that would make ${layers} layers of IoT Edge devices, at most ${MAX_EDGE_LAYERS} are allowed`,
      );
    }
  }
  return true;
}

/** Writes the new parent (or none) into the identity, guarded by its etag. */
export async function setParentScope(
  client: ServiceClient,
  child: DeviceJson,
  scope: string | undefined,
): Promise<DeviceJson> {
  const updated: DeviceJson = { ...child, parentScopes: scope ? [scope] : [] };
  // A leaf lives in its parent's scope; an edge device keeps the scope it was born with.
  if (!isEdge(child)) updated.deviceScope = scope ?? '';
  return client.updateDevice(updated, child.etag ?? '*');
}

export async function childrenOf(client: ServiceClient, parent: DeviceJson): Promise<TwinJson[]> {
  const rows = await client.query(
    `SELECT * FROM devices WHERE ARRAY_CONTAINS(parentScopes, ${quote(parent.deviceScope!)})`,
  );
  return rows.sort((a, b) => a.deviceId.localeCompare(b.deviceId));
}

export async function parentIdOf(client: ServiceClient, d: DeviceJson): Promise<string | undefined> {
  const scope = parentScopeOf(d);
  if (!scope) return undefined;
  const owners = await client.query(
    `SELECT * FROM devices WHERE deviceScope = ${quote(scope)} AND capabilities.iotEdge = true`,
  );
  if (owners.length === 0) {
    throw new UserError(
      `the parent scope of ${d.deviceId} (${scope}) belongs to no IoT Edge device`,
      `Was the parent deleted? Set a new one with \`strata device set-parent ${d.deviceId} --parent P --force\``,
    );
  }
  return owners[0]!.deviceId;
}
