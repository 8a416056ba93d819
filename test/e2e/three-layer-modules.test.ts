/**
 * A deployment on the bottom gateway of a three-layer hierarchy (a hub, L1 under it, L2 under
 * L1, L3 under L2, each a process on its own loopback address): applied at the hub with the
 * official azure-iothub `applyConfigurationContentOnDevice`, it runs two container modules on
 * a real engine (Podman's Docker API) beside L3, whose code uses `ModuleClient.fromEnvironment`
 * unchanged, the sensor's output routed to the filter's input (BrokeredEndpoint) and the
 * filter's output to $upstream. L3's agent creates the module identities at the hub through L2
 * and L1; the hub receives only the filter's output, under the filter's and L3's ids; L3's
 * `$edgeAgent` reported properties are read at the hub with the service SDK. Throughout, the
 * outbound TCP connections of every layer and of the modules are recorded (from /proc): each
 * layer connects only to its parent and the modules only to L3, as leaf traffic does.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { EventPageJson } from '../../src/hub/event-json.ts';
import { MANAGED_BY_EDGE } from '../../src/scope/contract.ts';
import {
  PIPELINE_ROUTES,
  agentRunning,
  deploymentManifest,
  type EdgeSetup,
  type GatewayProcess,
} from '../helpers/edge.ts';
import { startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';
import { pipelineContainers } from '../helpers/module-container.ts';
import { assertConnectsOnlyTo, chainAddresses, recordConnections, startChain } from '../helpers/nested.ts';
import { nodeMounts, podmanMissing, startPodman, type PodmanEngine } from '../helpers/podman.ts';
import { pollUntil } from '../helpers/poll.ts';

const skip = podmanMissing();

const [hubAddr, l1Addr, l2Addr, l3Addr] = chainAddresses();
const L3 = 'tlm-l3';
let hub: HubProcess;
let sdk: ServiceSdk;
let engine: PodmanEngine;
let recorder: ReturnType<typeof recordConnections>;
/** The host pids of the module containers, once they run. */
const modulePids: Record<string, number | undefined> = {};
const out = {
  layers: [] as EdgeSetup[],
  gws: [] as Array<GatewayProcess | undefined>,
  cleanups: [] as Array<() => unknown>,
};

const bottom = () => out.layers[2]!;

const waitFor = <T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> =>
  pollUntil(
    what,
    ms,
    probe,
    async () =>
      `${await engine.podman(['ps', '-a']).catch(() => '')}\n${out.gws.map((g, i) => `--- L${i + 1}\n${g?.output().slice(-2000) ?? ''}`).join('\n')}`,
  );

async function agentReported(): Promise<any> {
  const r = await sdk.must(sdk.call('owner', 'getModuleTwin', L3, '$edgeAgent'));
  return r.body.properties.reported;
}

before(async () => {
  if (skip) return;
  engine = await startPodman();
  out.cleanups.push(() => engine.stop());
  // Watch from before the first connection.
  recorder = recordConnections({
    l1: () => out.gws[0]?.proc.pid,
    l2: () => out.gws[1]?.proc.pid,
    l3: () => out.gws[2]?.proc.pid,
    sensor: () => modulePids.sensor,
    filter: () => modulePids.filter,
  });
  out.cleanups.push(() => recorder.stop());
  hub = await startChain('tlm', [hubAddr, l1Addr, l2Addr, l3Addr], out, (layer) =>
    layer === 3 ? `cool_off_time_unit_secs = 1\n\n[moby_runtime]\nuri = "${engine.uri}"` : undefined,
  );
  sdk = await startServiceSdk(hub.caPath);
  out.cleanups.push(() => sdk.close());
  await sdk.open('owner', { connectionString: hub.connectionString });
});

after(async () => {
  for (const fn of out.cleanups.reverse()) await fn();
});

describe('a deployment on the bottom of three gateway layers, modules on Podman', { skip, timeout: 300_000 }, () => {
  test('the modules run beside L3 and their identities are made at the hub through L2 and L1', async () => {
    const manifest = deploymentManifest({
      routes: PIPELINE_ROUTES,
      modules: pipelineContainers(engine.image, await nodeMounts(), 'three-down'),
    });
    await sdk.must(sdk.call('owner', 'applyConfigurationContentOnDevice', L3, manifest));

    const rep = await waitFor('both modules running at L3, status 200, read at the hub', 90_000, async () => {
      const r = await agentReported();
      return agentRunning(r, ['sensor', 'filter']) ? r : undefined;
    });
    assert.equal(rep.modules.sensor.settings.image, engine.image);
    assert.equal(rep.modules.filter.type, 'docker');

    const modules = await sdk.must(sdk.call('owner', 'getModulesOnDevice', L3));
    const made = (modules.body as Array<{ moduleId: string; managedBy?: string }>)
      .filter((m) => !m.moduleId.startsWith('$'))
      .map((m) => [m.moduleId, m.managedBy]);
    assert.deepEqual(made.sort(), [
      ['filter', MANAGED_BY_EDGE],
      ['sensor', MANAGED_BY_EDGE],
    ]);

    for (const name of ['sensor', 'filter']) {
      const pid = Number((await engine.podman(['inspect', '--format', '{{.State.Pid}}', name])).trim());
      assert.ok(pid > 0, `${name} has a host pid`);
      modulePids[name] = pid;
    }
  });

  test("the hub receives only the filter's output, under the filter's and L3's ids", async () => {
    const events = await waitFor('filtered messages at the hub', 60_000, async () => {
      const page = await bottom().svc.request<EventPageJson>('GET', `/events?device=${L3}&from=0&limit=1000`);
      return page.body.events.length >= 5 ? page.body.events : undefined;
    });
    for (const e of events) {
      assert.equal(e.moduleId, 'filter', 'only the filter output reaches the hub');
      assert.equal(e.annotations['iothub-connection-module-id'], 'filter');
      assert.equal(e.annotations['iothub-connection-device-id'], L3);
      const body = JSON.parse(Buffer.from(e.body, 'base64').toString());
      assert.equal(body.input, 'input1');
      assert.equal(body.filtered.label, 'three-down');
    }
  });

  test('network isolation: every layer connects only to its parent, the modules only to L3', (t) => {
    for (const n of ['l1', 'l2', 'l3', 'sensor', 'filter'])
      t.diagnostic(`${n} outbound: ${recorder.seen(n).join(', ')}`);
    assert.ok(recorder.samples() > 10, 'the recorder sampled');
    const only = (name: string, parent: string) => assertConnectsOnlyTo(recorder, name, parent);
    only('l1', hubAddr);
    only('l2', l1Addr);
    only('l3', l2Addr);
    only('sensor', l3Addr);
    only('filter', l3Addr);
  });
});
