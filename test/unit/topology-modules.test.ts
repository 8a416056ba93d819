import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readAgentDesired } from '../../src/agent/manifest.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { gatewayDeployment } from '../../src/topology/gateway-modules.ts';
import { HubEventFollower } from '../../src/topology/hub-events.ts';
import { GATEWAY_DEPLOYMENT } from '../../src/topology/identities.ts';
import { parseTopology, TopologyError } from '../../src/topology/spec.ts';
import { moduleSamples, renderTable, type Snapshot } from '../../src/topology/status.ts';
import { eventsLine } from '../../src/topology/watch.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/topology.yaml', import.meta.url));
const EXAMPLES = dirname(EXAMPLE);
const GW = 'hub:\n  address: 127.10.0.1\ngateways:\n  - id: g\n    parent: hub\n    address: 127.10.0.2\n';

function problemsOf(text: string): string[] {
  try {
    parseTopology(text, EXAMPLE);
  } catch (err) {
    assert.ok(err instanceof TopologyError);
    return err.problems.map((p) => `${p.line}: ${p.message}`);
  }
  assert.fail('expected the topology to be refused');
}

test('the bundled example: gateway-l3 runs the sensor and filter modules joined by a BrokeredEndpoint route', () => {
  const t = parseTopology(readFileSync(EXAMPLE, 'utf8'), EXAMPLE);
  const l3 = t.gateways.find((g) => g.id === 'gateway-l3')!;
  assert.deepEqual(
    l3.modules!.map((m) => [m.name, m.run]),
    [
      ['sensor', join(EXAMPLES, 'modules', 'sensor', 'index.js')],
      ['filter', join(EXAMPLES, 'modules', 'filter', 'index.js')],
    ],
  );
  assert.match(l3.routes!.sensorToFilter!, /INTO BrokeredEndpoint\("\/modules\/filter\/inputs\/input1"\)$/);
  assert.match(l3.routes!.filterToUpstream!, /^FROM \/messages\/modules\/filter\/outputs\/\S+ INTO \$upstream$/);
  for (const g of t.gateways.filter((x) => x.id !== 'gateway-l3')) assert.equal(g.modules, undefined, g.id);
});

test("a gateway's deployment: process modules run by node, its routes; the agent's reader takes it", () => {
  const t = parseTopology(readFileSync(EXAMPLE, 'utf8'), EXAMPLE);
  const l3 = t.gateways.find((g) => g.id === 'gateway-l3')!;
  const d = gatewayDeployment(GATEWAY_DEPLOYMENT, l3, '/usr/bin/node');
  const desired = d.modulesContent.$edgeAgent['properties.desired'];
  const read = readAgentDesired(desired, {});
  assert.deepEqual(read.problems, []);
  const sensor = read.deployment!.modules.find((m) => m.name === 'sensor')!;
  assert.equal(sensor.type, 'process');
  assert.equal(sensor.restartPolicy, 'always');
  assert.equal(sensor.spec.command, '/usr/bin/node');
  assert.deepEqual(sensor.spec.args, [l3.modules![0]!.run]);
  assert.equal(sensor.env.INTERVAL_MS, '500');
  assert.deepEqual(d.modulesContent.$edgeHub['properties.desired'].routes, l3.routes);
  // The base is left as it was: the other gateways still get no modules and the upstream route.
  assert.deepEqual(GATEWAY_DEPLOYMENT.modulesContent.$edgeAgent['properties.desired'].modules, {});
  const plain = gatewayDeployment(GATEWAY_DEPLOYMENT, {});
  assert.deepEqual(plain, GATEWAY_DEPLOYMENT);
});

test('bad modules and routes: each named with its line, all at once', () => {
  const problems = problemsOf(
    `${GW}    modules:
      $bad:
        run: modules/sensor/index.js
      missing:
        run: modules/nowhere.js
      noRun:
        env: { A: 1 }
      extra:
        run: modules/filter/index.js
        image: x
      badEnv:
        run: modules/filter/index.js
        env: { "1A": x, B: [1] }
    routes:
      empty: ""
      typo: FROM /messages/* INTO $upstreem
`,
  );
  assert.deepEqual(
    problems.map((p) => p.replace(/ \S+nowhere\.js/, ' PATH')),
    [
      '8: gateway g: module name "$bad" may only use letters, digits, "-", "." and "_" (at most 64): it names the module identity',
      '11: gateway g module missing: run: PATH does not exist (a path is relative to the topology file)',
      '12: gateway g module noRun has no run',
      '16: gateway g module extra has an unknown key "image" (known keys: run, env)',
      '19: gateway g module badEnv: env name "1A" is not valid',
      '19: gateway g module badEnv: env B must be a plain value',
      '21: gateway g: route "empty" must be a route text (FROM ... INTO ...)',
      '22: gateway g: route "typo": position 23: unknown system endpoint "$upstreem"',
    ],
  );
  assert.match(problemsOf(`${GW}    modules: [a]\n`)[0]!, /modules must be a mapping of module names/);
  assert.match(problemsOf(`${GW}    routes: x\n`)[0]!, /routes must be a mapping of route names/);
});

test("the summary lists a running gateway's modules under it, with their state and description", () => {
  const snap: Snapshot = {
    at: 0,
    nodes: [
      { id: 'hub', kind: 'hub', layer: 0, running: true, at: 0 },
      {
        id: 'g',
        kind: 'gateway',
        parent: 'hub',
        address: '127.10.0.2',
        layer: 1,
        running: true,
        modules: moduleSamples([
          { name: 'sensor', runtimeStatus: 'running', statusDescription: 'Up 3 minutes', image: 'node' },
          { name: 'filter', runtimeStatus: 'backoff', statusDescription: 'Backing off for 40 seconds' },
          { nameless: true },
        ]),
        at: 0,
      },
    ],
  };
  const lines = renderTable(snap, new Map()).split('\n');
  assert.match(lines[2]!, /^└ g\s/);
  assert.match(lines[3]!, /^ {2}▪ sensor\s+module of g\s+running\s.*Up 3 minutes$/);
  assert.match(lines[4]!, /^ {2}▪ filter\s+module of g\s+backoff\s.*Backing off for 40 seconds$/);
  assert.equal(lines.length, 5);
});

test("the watch's hub line counts what modules sent, by device and module", () => {
  // Never started: only its counters are read.
  const follower = new HubEventFollower({} as ServiceClient);
  follower.total = 5;
  follower.byDevice.set('leaf', 2).set('gateway-l3', 3);
  follower.byModule.set('gateway-l3/filter', 3);
  const lines = eventsLine(follower, ['leaf'], undefined);
  assert.equal(lines[0], 'at the hub (event stream): 5 messages since the watch began, from 1 of 1 sensors');
  assert.equal(lines[1], '  from modules: gateway-l3/filter 3');
});
