import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { randomInt } from 'node:crypto';
import { createSasToken } from '../../src/identity/sas.ts';
import { newKey, setupEdge, startGatewayProcess, type EdgeSetup, type GatewayProcess } from './edge.ts';
import { startHubProcess, type HubProcess } from './hub.ts';

/**
 * Gateway layers under a hub (each gateway's identity a child of the layer above, its config
 * naming the layer above in parent_hostname), and a recorder of the TCP connections a process
 * opens, read from /proc, for the network-isolation checks.
 */

/** Four neighbouring loopback addresses of their own: the hub's and three gateway layers'. */
export function chainAddresses(): [string, string, string, string] {
  const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
  const first = randomInt(2, 246);
  return [0, 1, 2, 3].map((i) => `${base}.${first + i}`) as [string, string, string, string];
}

/**
 * A hub and gateway layers under it on `addrs` (the hub's first), ids `${prefix}-l1`.. : the
 * layers and running gateways go into `out`, their stops into `out.cleanups` (run in reverse).
 * `strata` gives a layer (1 is the top) extra config.toml text after `[strata]`.
 */
export async function startChain(
  prefix: string,
  addrs: readonly string[],
  out: { layers: EdgeSetup[]; gws: Array<GatewayProcess | undefined>; cleanups: Array<() => unknown> },
  strata: (layer: number) => string | undefined = () => undefined,
): Promise<HubProcess> {
  const hub = await startHubProcess({ address: addrs[0] });
  out.cleanups.push(() => hub.stop());
  for (let i = 1; i < addrs.length; i++) {
    const edge = await setupLayer(hub, {
      gatewayId: `${prefix}-l${i}`,
      address: addrs[i]!,
      parent: out.layers[i - 2],
      strata: strata(i),
    });
    out.layers.push(edge);
    out.cleanups.push(() => edge.cleanup());
  }
  await startLayers(out);
  return hub;
}

/** Starts each layer's gateway process, parents first; each stop goes to `out.cleanups`. */
export async function startLayers(out: {
  layers: EdgeSetup[];
  gws: Array<GatewayProcess | undefined>;
  cleanups: Array<() => unknown>;
}): Promise<void> {
  for (let i = 0; i < out.layers.length; i++) {
    const l = out.layers[i]!;
    out.gws[i] = await startGatewayProcess({ configPath: l.configPath, dataDir: l.dataDir, address: l.address });
    out.cleanups.push(() => out.gws[i]?.stop());
  }
}

/** Registers `gatewayId` at the hub under `parent` (or directly under the hub) and points its config at the parent. */
export async function setupLayer(
  hub: HubProcess,
  o: { gatewayId: string; address: string; parent?: EdgeSetup; strata?: string },
): Promise<EdgeSetup> {
  const edge = await setupEdge(hub, { gatewayId: o.gatewayId, address: o.address, strata: o.strata });
  if (o.parent) {
    const svc: ServiceClient = edge.svc;
    const device = await svc.getDevice(o.gatewayId);
    const updated = await svc.updateDevice({ ...device, parentScopes: [o.parent.gateway.deviceScope!] });
    edge.gateway.parentScopes = updated.parentScopes;
    // A top-level key must come before the first [section].
    const text = await readFile(edge.configPath, 'utf8');
    await writeFile(edge.configPath, text.replace(/^(hostname = .*)$/m, `$1\nparent_hostname = "${o.parent.address}"`));
  }
  return edge;
}

/** A SAS token for a device, valid an hour: what `strata device token ID` prints. */
export function deviceToken(hubHostname: string, deviceId: string, key: string): string {
  return createSasToken(`${hubHostname}/devices/${deviceId}`, key, Math.floor(Date.now() / 1000) + 3600);
}

/** An IoT Edge device registered under `parent` (in its scope), and a SAS token for it. */
export async function edgeDeviceUnder(
  hub: HubProcess,
  parent: EdgeSetup,
  deviceId: string,
): Promise<{ deviceId: string; token: string }> {
  const key = newKey();
  await parent.svc.createDevice({
    deviceId,
    capabilities: { iotEdge: true },
    authentication: { type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: newKey() } },
    parentScopes: [parent.gateway.deviceScope!],
  });
  return { deviceId, token: deviceToken(hub.hostname, deviceId, key) };
}

function hexToIpv4(hex: string): string {
  // /proc/net/tcp prints the address as one 32-bit word in host (little-endian) order.
  const n = Number.parseInt(hex, 16);
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join('.');
}

function parseEndpoint(s: string): { ip: string; port: number } {
  const [a, p] = s.split(':');
  let ip: string;
  if (a.length === 8) ip = hexToIpv4(a);
  else if (/^0{16}0000FFFF/i.test(a)) ip = hexToIpv4(a.slice(24));
  else ip = `ipv6:${a}`;
  return { ip, port: Number.parseInt(p, 16) };
}

interface SocketRow {
  local: { ip: string; port: number };
  remote: { ip: string; port: number };
  state: string;
  inode: string;
}

function tcpTable(pid: number): SocketRow[] {
  const rows: SocketRow[] = [];
  for (const f of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${f}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length < 10) continue;
      rows.push({ local: parseEndpoint(c[1]), remote: parseEndpoint(c[2]), state: c[3], inode: c[9] });
    }
  }
  return rows;
}

function socketInodes(pid: number): Set<string> {
  const out = new Set<string>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) out.add(m[1]);
    } catch {
      // The descriptor closed between the listing and the read.
    }
  }
  return out;
}

/** The outbound TCP connections (SYN_SENT or ESTABLISHED, from a port the process does not listen on) of `pid` now. */
export function outboundConnections(pid: number): Array<{ ip: string; port: number }> {
  const mine = socketInodes(pid);
  const rows = tcpTable(pid).filter((r) => mine.has(r.inode));
  const listening = new Set(rows.filter((r) => r.state === '0A').map((r) => r.local.port));
  return rows
    .filter((r) => (r.state === '01' || r.state === '02') && !listening.has(r.local.port))
    .map((r) => r.remote);
}

/**
 * Polls the outbound connections of named processes every `intervalMs`; `pidOf` is asked each
 * time, so a restarted process keeps being watched under its name.
 */
export function recordConnections(pidOf: Record<string, () => number | undefined>, intervalMs = 25) {
  const seen = new Map<string, Set<string>>(Object.keys(pidOf).map((k) => [k, new Set<string>()]));
  let samples = 0;
  const sample = () => {
    samples++;
    for (const [name, get] of Object.entries(pidOf)) {
      const pid = get();
      if (!pid) continue;
      for (const c of outboundConnections(pid)) seen.get(name)!.add(`${c.ip}:${c.port}`);
    }
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  timer.unref();
  return {
    /** "ip:port" of every outbound connection seen so far, per name. */
    seen: (name: string): string[] => [...seen.get(name)!],
    samples: () => samples,
    stop: () => clearInterval(timer),
  };
}

/** Asserts that `name` was seen connecting out, and only ever to `parent` (any port). */
export function assertConnectsOnlyTo(
  recorder: ReturnType<typeof recordConnections>,
  name: string,
  parent: string,
): void {
  const seen = recorder.seen(name);
  assert.ok(seen.length > 0, `${name} was seen connecting upstream`);
  const elsewhere = seen.filter((s) => !s.startsWith(`${parent}:`));
  assert.deepEqual(elsewhere, [], `${name} connected only to ${parent}; saw ${seen.join(', ')}`);
}
