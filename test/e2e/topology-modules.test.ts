/**
 * The demo's module pipeline through `strata topology up`: a topology file whose bottom gateway
 * declares the example sensor and filter modules (examples/modules/, ModuleClient over the
 * official SDK) and its routes. Its edge agent runs them as processes; the hub receives only
 * the filter's alerts (over the threshold) under the gateway's id, and the leaf's telemetry by
 * the file's leaf route; `$edgeAgent` reports both running; `topology status` lists them under
 * the gateway; `topology down` ends them with the gateways, and `up` again starts them afresh.
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
import { promisify } from 'node:util';
import { readLocalHub } from '../../src/hub/local.ts';
import { ServiceClient } from '../../src/hub/service-client.ts';
import type { EventJson, EventPageJson } from '../../src/hub/service-messaging.ts';
import { pidAlive } from '../../src/topology/processes.ts';
import { processesTopDown, readState, topologyPaths } from '../../src/topology/state.ts';
import { agentRunning } from '../helpers/edge.ts';
import { pollUntil } from '../helpers/poll.ts';

const run = promisify(execFile);
const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const EXAMPLES = fileURLToPath(new URL('../../examples/modules/', import.meta.url));

/** The strata CLI's exit code and output (stdout then stderr). */
async function cli(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await run(process.execPath, [STRATA, ...args], {
      timeout: 120_000,
      env: { ...process.env, STRATA_LOG_LEVEL: 'warn' },
    });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** Pids of the module processes: what the process runtime records under the gateway's data directory. */
function modulePids(dataDir: string): number[] {
  return ['sensor', 'filter'].flatMap((m) => {
    try {
      const s = JSON.parse(readFileSync(join(dataDir, 'agent', 'modules', m, 'state.json'), 'utf8')) as {
        pid?: number;
      };
      return s.pid ? [s.pid] : [];
    } catch {
      return [];
    }
  });
}

test('topology up with a module pipeline on the bottom gateway: filtered alerts at the hub, status, down', {
  timeout: 240_000,
}, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-topo-modules-'));
  const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
  const last = randomInt(2, 248);
  const [hubAddr, topAddr, lowAddr] = [0, 1, 2].map((i) => `${base}.${last + i}`);
  const file = join(dir, 'topology.yaml');
  await writeFile(
    file,
    `name: modules
hub:
  address: ${hubAddr}
gateways:
  - { id: gw-top, parent: hub, address: ${topAddr} }
  - id: gw-low
    parent: gw-top
    address: ${lowAddr}
    modules:
      sensor:
        run: ${join(EXAMPLES, 'sensor', 'index.js')}
        env: { INTERVAL_MS: 200 }
      filter:
        run: ${join(EXAMPLES, 'filter', 'index.js')}
        env: { THRESHOLD: 25 }
    routes:
      sensorToFilter: FROM /messages/modules/sensor/outputs/temperature INTO BrokeredEndpoint("/modules/filter/inputs/input1")
      filterToUpstream: FROM /messages/modules/filter/outputs/alerts INTO $upstream
      leaves: FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream
devices:
  - { id: leaf-low, parent: gw-low, protocol: mqtt, interval: 500ms }
`,
  );
  const topoDir = join(dir, 'run');
  let pids: number[] = [];
  t.after(async () => {
    // Whatever happened, nothing this test started may outlive it.
    await cli(['topology', 'down', '--dir', topoDir, '--grace', '3']);
    const state = readState(topoDir);
    for (const p of state ? processesTopDown(state) : [])
      if (p.record.pid && pidAlive(p.record.pid)) process.kill(p.record.pid, 'SIGKILL');
    for (const pid of pids) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  const up = await cli(['topology', 'up', file, '--dir', topoDir, '--timeout', '40']);
  assert.equal(up.code, 0, up.out);
  assert.match(up.out, /deployment of gw-low: modules sensor, filter, its own routes/);
  const state = readState(topoDir)!;
  const low = state.gateways.find((g) => g.id === 'gw-low')!;
  assert.match(readFileSync(low.config, 'utf8'), /^\[agent\]$/m, 'the gateway with modules runs its agent');
  assert.doesNotMatch(readFileSync(state.gateways.find((g) => g.id === 'gw-top')!.config, 'utf8'), /\[agent\]/);

  const local = readLocalHub(join(topoDir, 'hub'));
  const client = new ServiceClient(local.connectionString, { ca: readFileSync(state.rootCa, 'utf8') });
  t.after(() => client.close());
  const logs = () => readFileSync(join(topologyPaths(topoDir).logs, 'gw-low.log'), 'utf8').slice(-3000);

  await pollUntil(
    '$edgeAgent of gw-low: both modules running, 200',
    60_000,
    async () => {
      const r = await client.request<{ properties: { reported: unknown } }>('GET', '/twins/gw-low/modules/$edgeAgent');
      return agentRunning(r.body.properties.reported, ['sensor', 'filter']) ? true : undefined;
    },
    logs,
  );
  pids = modulePids(low.dataDir);
  assert.equal(pids.length, 2, 'both module processes recorded');

  const events = async (device: string): Promise<EventJson[]> =>
    (await client.request<EventPageJson>('GET', `/events?from=0&device=${device}&limit=1000`)).body.events;
  const alerts = await pollUntil(
    "the filter's alerts at the hub",
    60_000,
    async () => {
      const e = await events('gw-low');
      return e.length >= 3 ? e : undefined;
    },
    logs,
  );
  for (const e of alerts) {
    assert.equal(e.moduleId, 'filter', 'only the filter reaches the hub: the sensor goes to its input');
    assert.equal(e.annotations['iothub-connection-module-id'], 'filter');
    assert.equal(e.properties.alert, 'true');
    const body = JSON.parse(Buffer.from(e.body, 'base64').toString()) as { temperature: number; threshold: number };
    assert.ok(body.temperature > 25, `only readings over the threshold pass: ${body.temperature}`);
    assert.equal(body.threshold, 25);
  }
  await pollUntil('the leaf under gw-low at the hub (the leaves route)', 30_000, async () =>
    (await events('leaf-low')).length > 0 ? true : undefined,
  );

  const status = await cli(['topology', 'status', '--dir', topoDir, '--json']);
  assert.equal(status.code, 0, status.out);
  const report = JSON.parse(status.out) as { nodes: Array<{ id: string; modules?: Array<Record<string, string>> }> };
  const mods = report.nodes.find((n) => n.id === 'gw-low')!.modules ?? [];
  assert.deepEqual(mods.map((m) => [m.name, m.runtimeStatus]).sort(), [
    ['filter', 'running'],
    ['sensor', 'running'],
  ]);
  assert.equal(report.nodes.find((n) => n.id === 'gw-top')!.modules, undefined);
  const text = await cli(['topology', 'status', '--dir', topoDir]);
  assert.match(text.out, /▪ sensor\s+module of gw-low\s+running\s.*Up /);
  assert.match(text.out, /▪ filter\s+module of gw-low\s+running\s/);

  const down = await cli(['topology', 'down', '--dir', topoDir]);
  assert.equal(down.code, 0, down.out);
  assert.match(down.out, /gateway gw-low: modules (sensor, filter|filter, sensor) ended/);
  for (const pid of pids) assert.equal(pidAlive(pid), false, `module pid ${pid} still runs after down`);

  // up again: the agent starts the modules afresh.
  const again = await cli(['topology', 'up', file, '--dir', topoDir, '--timeout', '40']);
  assert.equal(again.code, 0, again.out);
  await pollUntil(
    'the modules running again',
    60_000,
    async () => {
      const now = modulePids(low.dataDir);
      return now.length === 2 && now.every((p) => pidAlive(p) && !pids.includes(p)) ? true : undefined;
    },
    logs,
  );
  pids = modulePids(low.dataDir);
});
