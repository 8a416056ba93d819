/**
 * `strata topology up|status|down` end to end: the real CLI brings up a hub and two gateway
 * layers with an official-SDK sensor on each layer, on this test's own loopback addresses;
 * telemetry from every sensor reaches the hub's event stream; status sees every node; down
 * leaves no process behind.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readLocalHub } from '../../src/hub/local.ts';
import { ServiceClient } from '../../src/hub/service-client.ts';
import type { EventPageJson } from '../../src/hub/service-messaging.ts';
import { pidAlive } from '../../src/topology/processes.ts';
import { processesTopDown, readState } from '../../src/topology/state.ts';

const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

function strata(args: string[], timeoutMs = 90_000): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [STRATA, ...args],
      { timeout: timeoutMs, env: { ...process.env, STRATA_LOG_LEVEL: 'warn' } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, out: `${stdout}${stderr}` });
      },
    );
  });
}

test('topology up: hub + two gateway layers (the lower one on an MQTT upstream) + a sensor per layer; telemetry at the hub; status; down stops every process', {
  timeout: 150_000,
}, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-topology-'));
  const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
  const last = randomInt(2, 248);
  const [hubAddr, gw1Addr, gw2Addr] = [0, 1, 2].map((i) => `${base}.${last + i}`);
  const file = join(dir, 'topology.yaml');
  await writeFile(
    file,
    `name: e2e
hub:
  address: ${hubAddr}
gateways:
  - { id: gw-top, parent: hub, address: ${gw1Addr} }
  - { id: gw-lower, parent: gw-top, address: ${gw2Addr}, upstream: mqtt }
devices:
  - { id: sensor-top, parent: gw-top, protocol: mqtt, interval: 300ms }
  - { id: sensor-lower, parent: gw-lower, protocol: amqp, interval: 300ms }
`,
  );
  const topoDir = join(dir, 'run');
  t.after(async () => {
    // Whatever happened, nothing this test started may outlive it.
    await strata(['topology', 'down', '--dir', topoDir, '--grace', '3'], 30_000);
    const state = readState(topoDir);
    for (const p of state ? processesTopDown(state) : []) {
      if (p.record.pid && pidAlive(p.record.pid)) process.kill(p.record.pid, 'SIGKILL');
    }
    await rm(dir, { recursive: true, force: true });
  });

  const up = await strata(['topology', 'up', file, '--dir', topoDir, '--timeout', '40']);
  assert.equal(up.code, 0, up.out);
  assert.match(up.out, /topology "e2e" is up: hub, 2 gateways, 2 sensors/);
  assert.doesNotMatch(up.out, /has not connected yet|not connected to its parent/, up.out);

  // The generated gateway configs: the lower layer points at its parent, the top one at nobody.
  const state = readState(topoDir)!;
  const top = readFileSync(state.gateways.find((g) => g.id === 'gw-top')!.config, 'utf8');
  const lower = readFileSync(state.gateways.find((g) => g.id === 'gw-lower')!.config, 'utf8');
  assert.match(top, new RegExp(`^hostname = "${gw1Addr.replace(/\./g, '\\.')}"$`, 'm'));
  assert.doesNotMatch(top, /parent_hostname/);
  assert.match(lower, new RegExp(`^parent_hostname = "${gw1Addr.replace(/\./g, '\\.')}"$`, 'm'));
  // The lower layer speaks MQTT to its parent (its sensor's telemetry below crosses it); the top one the default.
  assert.match(lower, /^\[strata\]\nupstream_protocol = "Mqtt"$/m);
  assert.doesNotMatch(top, /upstream_protocol/);

  // Telemetry from every sensor, under its own device id, in the hub's event stream.
  const local = readLocalHub(join(topoDir, 'hub'));
  const client = new ServiceClient(local.connectionString, { ca: readFileSync(state.rootCa, 'utf8') });
  t.after(() => client.close());
  for (const id of ['sensor-top', 'sensor-lower']) {
    const deadline = Date.now() + 30_000;
    let page: EventPageJson | undefined;
    while (Date.now() < deadline) {
      page = (await client.request<EventPageJson>('GET', `/events?from=0&device=${id}&limit=5&wait=2`)).body;
      if (page.events.length > 0) break;
    }
    assert.ok(page && page.events.length > 0, `no telemetry from ${id} reached the hub`);
    const e = page.events[0]!;
    assert.equal(e.deviceId, id);
    assert.equal(e.systemProperties['iothub-connection-device-id'] ?? e.deviceId, id);
    const body = JSON.parse(Buffer.from(e.body, 'base64').toString('utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(body).sort(), ['humidity', 'temperature']);
    assert.equal(typeof body.temperature, 'number');
  }

  // Running `up` again on a running topology changes nothing.
  const again = await strata(['topology', 'up', file, '--dir', topoDir]);
  assert.equal(again.code, 0, again.out);
  assert.match(again.out, /is already up \(5 nodes running/);

  // status: every node running, gateways healthy and linked up, sensors connected.
  const status = await strata(['topology', 'status', '--dir', topoDir, '--json']);
  assert.equal(status.code, 0, status.out);
  const report = JSON.parse(status.out) as {
    running: number;
    total: number;
    nodes: Array<{
      id: string;
      kind: string;
      running: boolean;
      healthy?: boolean;
      upstream?: string;
      children?: number;
      received?: number;
    }>;
  };
  assert.equal(report.total, 5);
  assert.equal(report.running, 5);
  for (const n of report.nodes) {
    assert.equal(n.running, true, `${n.kind} ${n.id} is not running`);
    if (n.kind !== 'sensor') assert.equal(n.healthy, true, `${n.kind} ${n.id} is not healthy`);
    if (n.kind !== 'hub') assert.equal(n.upstream, 'connected', `${n.kind} ${n.id}: upstream ${n.upstream}`);
  }
  const gwTop = report.nodes.find((n) => n.id === 'gw-top')!;
  assert.ok((gwTop.children ?? 0) >= 2, `gw-top should count its sensor and the lower gateway, got ${gwTop.children}`);
  assert.ok((report.nodes.find((n) => n.kind === 'hub')!.received ?? 0) > 0);
  const text = await strata(['topology', 'status', '--dir', topoDir]);
  assert.match(text.out, /5 of 5 nodes running/);
  for (const id of ['hub', 'gw-top', 'gw-lower', 'sensor-top', 'sensor-lower'])
    assert.match(text.out, new RegExp(`${id}\\s.*running`));

  // down: every recorded process is gone.
  const pids = processesTopDown(readState(topoDir)!).map((p) => p.record.pid!);
  assert.equal(pids.length, 5);
  const down = await strata(['topology', 'down', '--dir', topoDir]);
  assert.equal(down.code, 0, down.out);
  assert.match(down.out, /is down: 5 stopped, 0 killed/);
  for (const pid of pids) assert.equal(pidAlive(pid), false, `pid ${pid} still runs after down`);
  const after = await strata(['topology', 'status', '--dir', topoDir]);
  assert.match(after.out, /0 of 5 nodes running/);
});
