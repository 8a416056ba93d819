import { readFileSync } from 'node:fs';
import { ServiceClient } from '../hub/service-client.ts';
import type { EventPageJson } from '../hub/service-messaging.ts';
import { readLocalHub, withHttpsPort } from '../hub/local.ts';
import { readHealthToken } from '../edge/health-access.ts';
import { edgeFiles } from '../edge/local.ts';
import { isRunning } from './processes.ts';
import { httpGet, parsePrometheus, sumOf, type MetricSample } from './probe.ts';
import { readSensorStatus } from './sensor-files.ts';
import { HUB_PARENT } from './spec.ts';
import { httpsHost, type GatewayRecord, type SensorRecord, type TopologyState } from './state.ts';

/**
 * One look at every node of a running topology: process alive, health, and the counters its
 * metrics (or, for a sensor, its status file; for the hub, its event stream) expose. Two looks
 * a moment apart give the per-second rates.
 */

export const GATEWAY_METRICS_PORT = 9600;

export interface NodeSample {
  /** `hub`, or the gateway's or sensor's id. */
  id: string;
  kind: 'hub' | 'gateway' | 'sensor';
  address?: string;
  parent?: string;
  layer: number;
  running: boolean;
  /** Answered /health (the hub and gateways). */
  healthy?: boolean;
  /** Downstream clients connected to it. */
  children?: number;
  /** Cumulative counters: messages taken in from below, and sent on (up, or for a sensor, to its gateway). */
  received?: number;
  sent?: number;
  queue?: number;
  /** connected / disconnected / ... ; for the hub, "-" (it is the top). */
  upstream?: string;
  /** Why a value is missing, or what went wrong. */
  note?: string;
  /** A gateway's modules, as its edge agent sees them (running, backoff, ...). */
  modules?: ModuleSample[];
  at: number;
}

export interface ModuleSample {
  name: string;
  runtimeStatus: string;
  statusDescription: string;
}

export interface Snapshot {
  at: number;
  nodes: NodeSample[];
}

export interface Rates {
  inPerSec?: number;
  outPerSec?: number;
}

// ---------------------------------------------------------------------------------------------
// Gateways

/** The counters of a gateway's metrics that the summary shows. */
export function gatewayCounters(
  samples: MetricSample[],
): Pick<NodeSample, 'children' | 'received' | 'sent' | 'queue' | 'upstream'> {
  const up = sumOf(samples, 'edgehub_upstream_connected');
  // Labelled counters and gauges have no sample until their first value: absent means zero here.
  return {
    children: sumOf(samples, 'edgehub_connected_clients') ?? 0,
    received: sumOf(samples, 'edgehub_messages_received_total') ?? 0,
    sent: sumOf(samples, 'edgehub_messages_sent_total') ?? 0,
    queue: sumOf(samples, 'edgehub_queue_length') ?? 0,
    upstream: up === undefined ? undefined : up > 0 ? 'connected' : 'disconnected',
  };
}

async function sampleGateway(state: TopologyState, g: GatewayRecord, ca: string): Promise<NodeSample> {
  const s: NodeSample = {
    id: g.id,
    kind: 'gateway',
    address: g.address,
    parent: g.parent,
    layer: g.layer,
    running: isRunning(g),
    at: Date.now(),
  };
  if (!s.running) return s;
  // The token (in the data directory the topology made) lets /health name the agent's modules.
  const token = readHealthToken(edgeFiles(g.dataDir).healthToken);
  const [health, metrics] = await Promise.allSettled([
    httpGet(`https://${httpsHost(state, g.address)}/health`, {
      ca,
      timeoutMs: 1500,
      headers: token ? { authorization: `Bearer ${token}` } : {},
    }),
    httpGet(`http://${g.address}:${GATEWAY_METRICS_PORT}/metrics`, { timeoutMs: 1500 }),
  ]);
  s.healthy = health.status === 'fulfilled' && health.value.status === 200;
  if (health.status === 'fulfilled' && s.healthy) {
    try {
      const body = JSON.parse(health.value.body) as { upstream?: { connected?: unknown }; agentModules?: unknown };
      const u = body.upstream;
      if (typeof u?.connected === 'boolean') s.upstream = u.connected ? 'connected' : 'disconnected';
      if (Array.isArray(body.agentModules)) s.modules = moduleSamples(body.agentModules);
    } catch {
      // health without a JSON body still counts as healthy
    }
  } else {
    s.note =
      health.status === 'rejected'
        ? `health: ${(health.reason as Error).message}`
        : `health: HTTP ${health.value.status}`;
  }
  if (metrics.status === 'fulfilled' && metrics.value.status === 200) {
    const c = gatewayCounters(parsePrometheus(metrics.value.body));
    Object.assign(s, { ...c, upstream: s.upstream ?? c.upstream });
  } else if (!s.note) {
    s.note =
      metrics.status === 'rejected'
        ? `metrics: ${(metrics.reason as Error).message}`
        : `metrics: HTTP ${metrics.value.status}`;
  }
  return s;
}

/** The agent's module views from /health, kept to what the summary shows. */
export function moduleSamples(views: unknown[]): ModuleSample[] {
  return views.flatMap((v) => {
    const m = v as Partial<Record<keyof ModuleSample, unknown>>;
    if (typeof m?.name !== 'string') return [];
    return [
      {
        name: m.name,
        runtimeStatus: typeof m.runtimeStatus === 'string' ? m.runtimeStatus : 'unknown',
        statusDescription: typeof m.statusDescription === 'string' ? m.statusDescription : '',
      },
    ];
  });
}

// ---------------------------------------------------------------------------------------------
// Sensors

function sampleSensor(r: SensorRecord, layerOf: Map<string, number>): NodeSample {
  const s: NodeSample = {
    id: r.id,
    kind: 'sensor',
    parent: r.parent,
    layer: (layerOf.get(r.parent) ?? 0) + 1,
    running: isRunning(r),
    at: Date.now(),
  };
  if (!s.running) return s;
  const st = readSensorStatus(r.statusFile);
  if (!st || st.pid !== r.pid) {
    s.note = 'starting';
    return s;
  }
  s.sent = st.sent;
  s.upstream = st.state;
  if (st.state !== 'connected' && st.lastError) s.note = st.lastError;
  return s;
}

// ---------------------------------------------------------------------------------------------
// The hub

/** A service client for the topology's hub, trusting the topology's root. */
export function hubClient(state: TopologyState): ServiceClient {
  const local = readLocalHub(state.hub.dataDir);
  return new ServiceClient(withHttpsPort(local.connectionString, local.httpsPort), {
    ca: readFileSync(state.rootCa, 'utf8'),
    timeoutMs: 3000,
  });
}

/** The hub's event stream position: how many messages it has taken in since it was created. */
export async function hubEventCount(client: ServiceClient): Promise<number> {
  const page = (await client.request<EventPageJson>('GET', '/events?from=end&limit=1&wait=0')).body;
  return page.nextSequenceNumber;
}

async function sampleHub(state: TopologyState, client: ServiceClient | undefined): Promise<NodeSample> {
  const s: NodeSample = {
    id: 'hub',
    kind: 'hub',
    address: state.hub.address,
    layer: 0,
    running: isRunning(state.hub),
    upstream: '-',
    at: Date.now(),
  };
  if (!s.running) return s;
  try {
    const c = client ?? hubClient(state);
    try {
      s.received = await hubEventCount(c);
      s.healthy = true;
    } finally {
      if (!client) c.close();
    }
  } catch (err) {
    s.healthy = false;
    s.note = (err as Error).message;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------

export async function takeSnapshot(state: TopologyState, o: { hubClient?: ServiceClient } = {}): Promise<Snapshot> {
  const ca = readFileSync(state.rootCa, 'utf8');
  const layerOf = new Map(state.gateways.map((g) => [g.id, g.layer]));
  const [hub, ...gateways] = await Promise.all([
    sampleHub(state, o.hubClient),
    ...state.gateways.map((g) => sampleGateway(state, g, ca)),
  ]);
  const sensors = state.sensors.map((r) => sampleSensor(r, layerOf));
  // The hub's children are the top-layer gateways whose link up to it is connected.
  if (hub!.running)
    hub!.children = gateways.filter((g) => g.parent === HUB_PARENT && g.upstream === 'connected').length;
  // A gateway's sensors count among its connected children when its metrics do not say.
  return { at: Date.now(), nodes: [hub!, ...gateways, ...sensors] };
}

function perSecond(a: number | undefined, b: number | undefined, dtMs: number): number | undefined {
  if (a === undefined || b === undefined || dtMs <= 0) return undefined;
  return Math.max(0, ((b - a) * 1000) / dtMs);
}

export function ratesBetween(prev: Snapshot | undefined, cur: Snapshot): Map<string, Rates> {
  const out = new Map<string, Rates>();
  for (const n of cur.nodes) {
    const p = prev?.nodes.find((x) => x.kind === n.kind && x.id === n.id);
    if (!p) {
      out.set(`${n.kind}:${n.id}`, {});
      continue;
    }
    const dt = n.at - p.at;
    out.set(`${n.kind}:${n.id}`, {
      inPerSec: perSecond(p.received, n.received, dt),
      outPerSec: perSecond(p.sent, n.sent, dt),
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The table

/** Hub, then each gateway followed by its sensors and the gateways below it. */
export function treeOrder(nodes: NodeSample[]): NodeSample[] {
  const out: NodeSample[] = [];
  const hub = nodes.find((n) => n.kind === 'hub');
  if (hub) out.push(hub);
  const visit = (parent: string) => {
    for (const s of nodes.filter((n) => n.kind === 'sensor' && n.parent === parent)) out.push(s);
    for (const g of nodes.filter((n) => n.kind === 'gateway' && n.parent === parent)) {
      out.push(g);
      visit(g.id);
    }
  };
  visit(HUB_PARENT);
  for (const n of nodes) if (!out.includes(n)) out.push(n);
  return out;
}

const num = (v: number | undefined) => (v === undefined ? '-' : String(v));
const rate = (v: number | undefined) => (v === undefined ? '-' : v >= 100 ? v.toFixed(0) : v.toFixed(1));

function stateOf(n: NodeSample): string {
  if (!n.running) return 'stopped';
  if (n.healthy === false) return 'unhealthy';
  return 'running';
}

/** What the columns count, printed under the table. */
export const TABLE_LEGEND = [
  'CHILDREN  identities connected now: at a gateway its devices, the gateway below as its $edgeHub, and those',
  '          the gateway below acts for; at the hub its top-layer gateways linked up',
  'IN/s      messages received a second    OUT/s  sent to the parent a second    QUEUE  stored, not yet sent up',
  '▪ NAME    a module the gateway runs: running, backoff, stopped or failed, and since when',
].join('\n');

export function renderTable(snapshot: Snapshot, rates: Map<string, Rates>, o: { notes?: boolean } = {}): string {
  const headers = ['NODE', 'ADDRESS', 'STATE', 'CHILDREN', 'IN/s', 'OUT/s', 'QUEUE', 'UPSTREAM'];
  const rows = treeOrder(snapshot.nodes).flatMap((n) => {
    const r = rates.get(`${n.kind}:${n.id}`) ?? {};
    const label =
      n.kind === 'hub' ? 'hub' : `${'  '.repeat(Math.max(0, n.layer - 1))}${n.kind === 'sensor' ? '· ' : '└ '}${n.id}`;
    const address = n.kind === 'sensor' ? `via ${n.parent}` : (n.address ?? '');
    const cells = [
      label,
      address,
      stateOf(n),
      num(n.children),
      n.kind === 'sensor' ? '-' : rate(r.inPerSec),
      n.kind === 'hub' ? '-' : rate(r.outPerSec),
      num(n.queue),
      n.running ? (n.upstream ?? '-') : '-',
    ];
    if (o.notes && n.note && n.running)
      cells[7] = `${cells[7]}  (${n.note.length > 100 ? `${n.note.slice(0, 97)}...` : n.note})`;
    // A gateway's modules under it: their state, and what it means in the last column.
    const modules = (n.running ? (n.modules ?? []) : []).map((m) => [
      `${'  '.repeat(n.layer)}▪ ${m.name}`,
      `module of ${n.id}`,
      m.runtimeStatus,
      '-',
      '-',
      '-',
      '-',
      m.statusDescription,
    ]);
    return [cells, ...modules];
  });
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}
