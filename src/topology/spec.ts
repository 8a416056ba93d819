import { isIPv4 } from 'node:net';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node as YamlNode, type YAMLMap } from 'yaml';
import { UserError } from '../util/errors.ts';
import { readModules, readRoutes, type TopologyModule } from './gateway-modules.ts';

/**
 * The topology file: a hub, the gateways above one another (each naming its parent) and the
 * leaf devices under them. Parsing never stops at the first problem: every problem found is
 * reported with its line, so a user fixes the file in one go.
 */

export type SensorProtocol = 'mqtt' | 'amqp';

/** What a gateway speaks to its parent (its `UpstreamProtocol`), spelled as the gateway setting is. */
export type UpstreamProtocol = 'Amqp' | 'AmqpWs' | 'Mqtt' | 'MqttWs';
export const UPSTREAM_PROTOCOLS: readonly UpstreamProtocol[] = ['Amqp', 'AmqpWs', 'Mqtt', 'MqttWs'];
export const SENSOR_PROTOCOLS: readonly SensorProtocol[] = ['mqtt', 'amqp'];

/** IoT Edge nests at most this many layers of gateways below the hub. */
export const MAX_GATEWAY_LAYERS = 5;
/** The parent name that means "directly under the hub". */
export const HUB_PARENT = 'hub';

export const DEFAULT_INTERVAL_MS = 5000;
const MIN_INTERVAL_MS = 100;
const MAX_INTERVAL_MS = 3_600_000;

export interface GatewaySpec {
  id: string;
  /** `hub` or another gateway's id. */
  parent: string;
  address: string;
  /** 1 for a gateway under the hub, 2 under a layer-1 gateway, and so on. */
  layer: number;
  /** Absent: the gateway's default (Amqp). */
  upstream?: UpstreamProtocol;
  /** Modules its edge agent runs (gateway-modules.ts); absent: no agent. */
  modules?: TopologyModule[];
  /** Its `$edgeHub` routes; absent: everything upstream. */
  routes?: Record<string, string>;
}

export interface DeviceSpec {
  id: string;
  /** The gateway it connects through. */
  parent: string;
  protocol: SensorProtocol;
  intervalMs: number;
}

export interface Topology {
  name?: string;
  hub: { address: string };
  /** `ports:` of the file: the HTTPS port every node serves (absent: 443, or the unprivileged fallback). */
  ports?: { https: number };
  /** Top layer first; within a layer in file order. */
  gateways: GatewaySpec[];
  devices: DeviceSpec[];
}

export interface TopologyProblem {
  line?: number;
  message: string;
}

export class TopologyError extends UserError {
  constructor(
    readonly file: string,
    readonly problems: TopologyProblem[],
  ) {
    super(
      problems.length === 1
        ? `${where(file, problems[0]!)}: ${problems[0]!.message}`
        : `${file} has ${problems.length} problems:\n${problems.map((p) => `  ${where(file, p)}: ${p.message}`).join('\n')}`,
    );
    this.name = 'TopologyError';
  }
}

function where(file: string, p: TopologyProblem): string {
  return p.line ? `${file} line ${p.line}` : file;
}

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const TOP_KEYS = ['name', 'ports', 'hub', 'gateways', 'devices'];
const PORT_KEYS = ['https', 'mqtt', 'amqp'];
const HUB_KEYS = ['address'];
const GATEWAY_KEYS = ['id', 'parent', 'address', 'upstream', 'modules', 'routes'];
const DEVICE_KEYS = ['id', 'parent', 'protocol', 'interval'];

/** `500ms`, `2s`, `1.5s`, `1m`, or a bare number of seconds. */
export function parseInterval(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? Math.round(value * 1000) : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/i.exec(value);
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000 }[(m[2] ?? 's').toLowerCase() as 'ms' | 's' | 'm'];
  return Math.round(Number(m[1]) * unit);
}

/** Why `address` cannot be a node's address, or undefined. */
export function addressProblem(address: string): string | undefined {
  if (!isIPv4(address))
    return `"${address}" is not an IPv4 address; every node listens on its own loopback address such as 127.10.0.2`;
  if (!address.startsWith('127.'))
    return `${address} is not a loopback address; the whole topology runs on this machine, so use 127.x.y.z`;
  if (address === '127.0.0.0' || address === '127.255.255.255')
    return `${address} is the loopback network's own or broadcast address; pick another 127.x.y.z`;
  return undefined;
}

class Reader {
  readonly problems: TopologyProblem[] = [];
  constructor(private readonly lines: LineCounter) {}

  lineOf(node: YamlNode | null | undefined): number | undefined {
    const offset = node?.range?.[0];
    return offset === undefined ? undefined : this.lines.linePos(offset).line;
  }

  problem(node: YamlNode | null | undefined, message: string): void {
    this.problems.push({ line: this.lineOf(node), message });
  }

  /** The entries of a mapping, with unknown keys reported. */
  entries(map: YAMLMap, known: string[], what: string): Map<string, YamlNode | null> {
    const out = new Map<string, YamlNode | null>();
    for (const pair of map.items) {
      const keyNode = pair.key as YamlNode | null;
      const key = isScalar(keyNode) ? String(keyNode.value) : undefined;
      if (key === undefined) {
        this.problem(keyNode, `${what} has a key that is not a plain name`);
        continue;
      }
      if (!known.includes(key)) {
        this.problem(keyNode, `${what} has an unknown key "${key}" (known keys: ${known.join(', ')})`);
        continue;
      }
      out.set(key, pair.value as YamlNode | null);
    }
    return out;
  }

  /** A required (or optional) scalar string field. */
  text(
    fields: Map<string, YamlNode | null>,
    key: string,
    what: string,
    owner: YamlNode,
    required = true,
  ): { value?: string; node?: YamlNode } {
    if (!fields.has(key)) {
      if (required) this.problem(owner, `${what} has no ${key}`);
      return {};
    }
    const node = fields.get(key) ?? undefined;
    if (!isScalar(node) || node.value === null || typeof node.value === 'object' || String(node.value).trim() === '') {
      this.problem(node ?? owner, `${what}: ${key} must be a non-empty text value`);
      return { node };
    }
    return { value: String(node.value).trim(), node };
  }
}

function listOf(r: Reader, node: YamlNode | null | undefined, key: string, required: boolean): YamlNode[] {
  if (node === undefined || node === null || (isScalar(node) && node.value === null)) {
    if (required) r.problems.push({ message: `the file declares no ${key}; add a "${key}:" list` });
    return [];
  }
  if (!isSeq(node)) {
    r.problem(node, `${key} must be a list (each entry starting with "- ")`);
    return [];
  }
  return node.items as YamlNode[];
}

interface RawGateway {
  id: string;
  parent?: string;
  address?: string;
  upstream?: UpstreamProtocol;
  modules?: TopologyModule[];
  routes?: Record<string, string>;
  node: YamlNode;
  parentNode?: YamlNode;
}

/**
 * Parses and checks a topology file's text. Throws TopologyError listing every problem; on
 * success the gateways come top layer first.
 */
export function parseTopology(text: string, file = 'topology.yaml'): Topology {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const r = new Reader(lines);
  if (doc.errors.length > 0) {
    throw new TopologyError(
      file,
      doc.errors.map((e) => ({
        line: lines.linePos(e.pos[0]).line,
        message: `not valid YAML: ${e.message.split('\n')[0]}`,
      })),
    );
  }
  const root = doc.contents as YamlNode | null;
  if (!isMap(root)) {
    throw new TopologyError(file, [
      { line: r.lineOf(root), message: 'the file must be a mapping with hub:, gateways: and devices:' },
    ]);
  }
  const top = r.entries(root, TOP_KEYS, 'the file');

  let name: string | undefined;
  if (top.has('name')) name = r.text(top, 'name', 'the file', root).value;

  // --- ports ---
  let ports: Topology['ports'];
  const portsNode = top.get('ports');
  if (top.has('ports')) {
    if (!isMap(portsNode)) r.problem(portsNode ?? root, 'ports must be a mapping such as ports: { https: 8443 }');
    else {
      const fields = r.entries(portsNode, PORT_KEYS, 'ports');
      // The official device SDKs dial only 8883 and 5671, which need no privilege anyway.
      for (const key of ['mqtt', 'amqp'])
        if (fields.has(key))
          r.problem(
            fields.get(key) ?? portsNode,
            `ports: ${key} cannot move: the device SDKs dial MQTT 8883 and AMQP 5671 (no root needed); only https can be set`,
          );
      const node = fields.get('https') ?? undefined;
      if (fields.has('https')) {
        const v = isScalar(node) ? node.value : undefined;
        if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535)
          r.problem(node ?? portsNode, 'ports: https must be a port number from 1 to 65535, e.g. 8443');
        else ports = { https: v };
      }
    }
  }

  // --- hub ---
  let hubAddress: string | undefined;
  const hubNode = top.get('hub');
  if (!top.has('hub')) r.problems.push({ message: 'the file declares no hub; add "hub:" with an address' });
  else if (!isMap(hubNode))
    r.problem(hubNode ?? root, 'hub must be a mapping with an address (hub:\\n  address: 127.10.0.1)');
  else {
    const fields = r.entries(hubNode, HUB_KEYS, 'hub');
    const a = r.text(fields, 'address', 'hub', hubNode);
    if (a.value !== undefined) {
      const p = addressProblem(a.value);
      if (p) r.problem(a.node, `hub address ${p}`);
      else hubAddress = a.value;
    }
  }

  const ids = new Map<string, number | undefined>();
  const claimId = (id: string, node: YamlNode | undefined, what: string): boolean => {
    if (!ID_PATTERN.test(id)) {
      r.problem(
        node,
        `${what} id "${id}" may only use letters, digits, "-", "." and "_" (starting with a letter or digit, at most 128 characters): it names the device identity and its files`,
      );
      return false;
    }
    if (ids.has(id)) {
      const first = ids.get(id);
      r.problem(
        node,
        `the id "${id}" is used twice${first ? ` (first on line ${first})` : ''}; every gateway and device needs its own id`,
      );
      return false;
    }
    ids.set(id, r.lineOf(node));
    return true;
  };
  const addresses = new Map<string, string>();
  if (hubAddress) addresses.set(hubAddress, 'the hub');

  // --- gateways ---
  const rawGateways: RawGateway[] = [];
  listOf(r, top.get('gateways'), 'gateways', true).forEach((g, i) => {
    const what = `gateway ${i + 1}`;
    if (!isMap(g)) {
      r.problem(g, `${what} must be a mapping with id, parent and address`);
      return;
    }
    const fields = r.entries(g, GATEWAY_KEYS, what);
    const id = r.text(fields, 'id', what, g);
    const label = id.value ? `gateway ${id.value}` : what;
    const parent = r.text(fields, 'parent', label, g);
    const address = r.text(fields, 'address', label, g);
    const upstreamText = r.text(fields, 'upstream', label, g, false);
    let upstream: UpstreamProtocol | undefined;
    if (upstreamText.value !== undefined) {
      upstream = UPSTREAM_PROTOCOLS.find((u) => u.toLowerCase() === upstreamText.value!.toLowerCase());
      if (!upstream)
        r.problem(
          upstreamText.node,
          `${label}: upstream "${upstreamText.value}" is not one of ${UPSTREAM_PROTOCOLS.join(', ')}`,
        );
    }
    const modules = fields.has('modules') ? readModules(r, fields.get('modules'), label, file) : undefined;
    const routes = fields.has('routes') ? readRoutes(r, fields.get('routes'), label) : undefined;
    if (id.value === undefined) return;
    if (id.value === HUB_PARENT) {
      r.problem(id.node, `a gateway cannot be called "${HUB_PARENT}": parent: ${HUB_PARENT} means the hub`);
      return;
    }
    if (!claimId(id.value, id.node, 'gateway')) return;
    let addr: string | undefined;
    if (address.value !== undefined) {
      const p = addressProblem(address.value);
      if (p) r.problem(address.node, `${label}: address ${p}`);
      else if (addresses.has(address.value))
        r.problem(
          address.node,
          `${label} has the address ${address.value}, which ${addresses.get(address.value)} already has; every node needs its own address`,
        );
      else {
        addresses.set(address.value, label);
        addr = address.value;
      }
    }
    rawGateways.push({
      id: id.value,
      parent: parent.value,
      address: addr,
      ...(upstream ? { upstream } : {}),
      ...(modules ? { modules } : {}),
      ...(routes ? { routes } : {}),
      node: g,
      parentNode: parent.node,
    });
  });

  const byId = new Map(rawGateways.map((g) => [g.id, g]));
  const gatewayIds = rawGateways.map((g) => g.id);
  const known = gatewayIds.length ? `gateways: ${gatewayIds.join(', ')}` : 'no gateways are declared';

  // Layers: walk each gateway's parents up to the hub, reporting unknown parents and cycles once.
  const layers = new Map<string, number>();
  const reportedCycles = new Set<string>();
  for (const g of rawGateways) {
    if (g.parent === undefined) continue;
    if (g.parent === g.id) {
      r.problem(
        g.parentNode,
        `gateway ${g.id} names itself as its parent; use parent: ${HUB_PARENT} or another gateway`,
      );
      continue;
    }
    if (g.parent !== HUB_PARENT && !byId.has(g.parent)) {
      r.problem(
        g.parentNode,
        `gateway ${g.id} names the parent "${g.parent}", which is neither ${HUB_PARENT} nor a gateway of this file (${known})`,
      );
      continue;
    }
    const chain: string[] = [g.id];
    let cur = g;
    let ok = true;
    while (cur.parent !== HUB_PARENT) {
      const next = cur.parent === undefined ? undefined : byId.get(cur.parent);
      if (!next || next.parent === undefined || next.parent === next.id) {
        ok = false; // reported on that gateway
        break;
      }
      if (chain.includes(next.id)) {
        const loop = [...chain.slice(chain.indexOf(next.id)), next.id];
        const key = [...new Set(loop)].sort().join(',');
        if (!reportedCycles.has(key)) {
          reportedCycles.add(key);
          r.problem(
            byId.get(loop[0]!)!.parentNode,
            `gateways ${loop.join(' -> ')} form a cycle; the top gateway needs parent: ${HUB_PARENT}`,
          );
        }
        ok = false;
        break;
      }
      chain.push(next.id);
      cur = next;
    }
    if (!ok) continue;
    layers.set(g.id, chain.length);
    if (chain.length > MAX_GATEWAY_LAYERS) {
      r.problem(
        g.parentNode,
        `gateway ${g.id} would be in layer ${chain.length} (${[HUB_PARENT, ...chain.reverse()].join(' -> ')}); at most ${MAX_GATEWAY_LAYERS} layers of gateways are allowed`,
      );
    }
  }

  // --- devices ---
  const devices: DeviceSpec[] = [];
  listOf(r, top.get('devices'), 'devices', false).forEach((d, i) => {
    const what = `device ${i + 1}`;
    if (!isMap(d)) {
      r.problem(d, `${what} must be a mapping with id, parent, protocol and interval`);
      return;
    }
    const fields = r.entries(d, DEVICE_KEYS, what);
    const id = r.text(fields, 'id', what, d);
    const label = id.value ? `device ${id.value}` : what;
    const parent = r.text(fields, 'parent', label, d);
    const protocol = r.text(fields, 'protocol', label, d, false);
    let ok = id.value !== undefined && claimId(id.value, id.node, 'device');
    if (parent.value !== undefined && !byId.has(parent.value)) {
      r.problem(
        parent.node,
        parent.value === HUB_PARENT
          ? `${label}: leaf devices connect through a gateway, so parent must be one of the gateways (${known})`
          : `${label} names the parent "${parent.value}", which is not a gateway of this file (${known})`,
      );
      ok = false;
    }
    let proto: SensorProtocol = 'mqtt';
    if (protocol.value !== undefined) {
      const p = protocol.value.toLowerCase();
      if ((SENSOR_PROTOCOLS as readonly string[]).includes(p)) proto = p as SensorProtocol;
      else {
        r.problem(
          protocol.node,
          `${label}: protocol "${protocol.value}" is not supported; use ${SENSOR_PROTOCOLS.join(' or ')}`,
        );
        ok = false;
      }
    }
    let intervalMs = DEFAULT_INTERVAL_MS;
    if (fields.has('interval')) {
      const node = fields.get('interval') ?? undefined;
      const ms = isScalar(node) ? parseInterval(node.value) : undefined;
      if (ms === undefined || ms < MIN_INTERVAL_MS || ms > MAX_INTERVAL_MS) {
        const shown = isScalar(node) ? JSON.stringify(node.value) : 'this value';
        r.problem(
          node ?? d,
          `${label}: interval ${shown} is not a time between ${MIN_INTERVAL_MS}ms and 1h; write e.g. 500ms, 2s or 1m`,
        );
        ok = false;
      } else intervalMs = ms;
    }
    if (ok && id.value !== undefined && parent.value !== undefined)
      devices.push({ id: id.value, parent: parent.value, protocol: proto, intervalMs });
  });

  if (r.problems.length > 0) {
    r.problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
    throw new TopologyError(file, r.problems);
  }
  const gateways = rawGateways
    .map(
      (g): GatewaySpec => ({
        id: g.id,
        parent: g.parent!,
        address: g.address!,
        layer: layers.get(g.id)!,
        ...(g.upstream ? { upstream: g.upstream } : {}),
        ...(g.modules ? { modules: g.modules } : {}),
        ...(g.routes ? { routes: g.routes } : {}),
      }),
    )
    .sort((a, b) => a.layer - b.layer);
  return { name, ...(ports ? { ports } : {}), hub: { address: hubAddress! }, gateways, devices };
}

/** The gateway ids from `id` up to the top layer, `id` first. */
export function chainToHub(topology: Topology, id: string): string[] {
  const byId = new Map(topology.gateways.map((g) => [g.id, g]));
  const chain: string[] = [];
  for (let g = byId.get(id); g; g = g.parent === HUB_PARENT ? undefined : byId.get(g.parent)) chain.push(g.id);
  return chain;
}
