/**
 * The edge agent with container modules on a real engine (Podman's Docker API, its own storage,
 * an image built offline): a deployment applied with the official azure-iothub
 * `applyConfigurationContentOnDevice` starts two containers whose code uses
 * `ModuleClient.fromEnvironment(Mqtt)` unchanged (this machine's node and the SDK packages bound
 * read-only into a busybox image, the script as the module's program), the sensor's output routed
 * to the filter's input (BrokeredEndpoint) and the filter's output to $upstream. The hub receives
 * only the filter's output, as the filter; the filter's module twin and a direct method work;
 * `$edgeAgent` reports both running; a gateway killed with -9 adopts the containers.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { EventPageJson } from '../../src/hub/event-json.ts';
import {
  PIPELINE_ROUTES,
  agentRunning,
  deploymentManifest,
  setupEdge,
  startGatewayProcess,
  type EdgeSetup,
  type GatewayProcess,
} from '../helpers/edge.ts';
import { pollUntil } from '../helpers/poll.ts';
import { randomLoopback, startHubProcess, startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';
import { pipelineContainers } from '../helpers/module-container.ts';
import { nodeMounts, podmanMissing, startPodman, type PodmanEngine } from '../helpers/podman.ts';

const skip = podmanMissing();

let hub: HubProcess;
let edge: EdgeSetup;
let gw: GatewayProcess;
let sdk: ServiceSdk;
let engine: PodmanEngine;
let mounts: string[] = [];
const cleanups: Array<() => unknown> = [];

function manifest(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return deploymentManifest({
    routes: PIPELINE_ROUTES,
    modules: { ...pipelineContainers(engine.image, mounts, 'boxed'), ...extra },
  });
}

const waitFor = <T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> =>
  pollUntil(
    what,
    ms,
    probe,
    async () => `${await engine.podman(['ps', '-a']).catch(() => '')}\n${gw?.output().slice(-3000) ?? ''}`,
  );

async function agentReported(): Promise<any> {
  const r = await sdk.must(sdk.call('owner', 'getModuleTwin', edge.gatewayId, '$edgeAgent'));
  return r.body.properties.reported;
}

async function filterEvents(): Promise<Array<{ moduleId?: string; annotations: Record<string, unknown> }>> {
  const page = await edge.svc.request<EventPageJson>('GET', `/events?device=${edge.gatewayId}&from=0&limit=1000`);
  return page.body.events;
}

/** Container ids of this agent's modules, by module name (from the engine, by Strata's labels). */
async function containers(): Promise<Record<string, string>> {
  const out = await engine.podman([
    'ps',
    '--filter',
    `label=net.strata.agent=${edge.gatewayId}`,
    '--format',
    '{{.ID}} {{index .Labels "net.strata.module"}}',
  ]);
  const byName: Record<string, string> = {};
  for (const line of out.trim().split('\n').filter(Boolean)) {
    const [id, name] = line.split(' ');
    assert.equal(byName[name!], undefined, `one container per module: ${out}`);
    byName[name!] = id!;
  }
  return byName;
}

before(async () => {
  if (skip) return;
  engine = await startPodman();
  cleanups.push(() => engine.stop());
  mounts = await nodeMounts();

  hub = await startHubProcess({ address: randomLoopback() });
  cleanups.push(() => hub.stop());
  edge = await setupEdge(hub, {
    gatewayId: 'boxed-edge',
    address: randomLoopback(),
    deploy: false,
    strata: `cool_off_time_unit_secs = 1\n\n[moby_runtime]\nuri = "${engine.uri}"`,
  });
  cleanups.push(() => edge.cleanup());
  sdk = await startServiceSdk(hub.caPath);
  cleanups.push(() => sdk.close());
  await sdk.open('owner', { connectionString: hub.connectionString });
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address });
  cleanups.push(() => gw.stop());
});

after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

describe('the edge agent with container modules on Podman', { skip, timeout: 300_000 }, () => {
  test('two ModuleClient containers joined by a BrokeredEndpoint route; the hub receives only the filter', async () => {
    await sdk.must(sdk.call('owner', 'applyConfigurationContentOnDevice', edge.gatewayId, manifest()));
    const rep = await waitFor('both containers running, status 200', 60_000, async () => {
      const r = await agentReported();
      return agentRunning(r, ['sensor', 'filter']) ? r : undefined;
    });
    assert.equal(rep.modules.filter.settings.image, engine.image);
    const ids = await containers();
    assert.ok(ids.sensor && ids.filter, 'one container each');

    const events = await waitFor('filtered messages at the hub', 60_000, async () => {
      const evs = await filterEvents();
      return evs.length >= 3 ? evs : undefined;
    });
    assert.ok(
      events.every((e) => e.moduleId === 'filter'),
      'only the filter output reaches the hub',
    );
    assert.equal(events[0]!.annotations['iothub-connection-module-id'], 'filter');
  });

  test("the filter container's module twin and a direct method", async () => {
    await sdk.must(
      sdk.call(
        'owner',
        'updateModuleTwin',
        edge.gatewayId,
        'filter',
        { properties: { desired: { label: 'hello' } } },
        '*',
      ),
    );
    await waitFor('the filter reports what it saw', 30_000, async () => {
      const r = await sdk.must(sdk.call('owner', 'getModuleTwin', edge.gatewayId, 'filter'));
      return r.body.properties.reported.seen === 'hello' ? true : undefined;
    });
    const r = await edge.svc.request<{ status: number; payload: unknown }>(
      'POST',
      `/twins/${edge.gatewayId}/modules/filter/methods`,
      { body: { methodName: 'whoami', payload: {}, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 } },
    );
    assert.deepEqual(r.body, { status: 200, payload: { moduleId: 'filter' } });
  });

  test('kill -9 of the gateway, then start: the containers are adopted, none created twice', async () => {
    const before = await containers();
    const was = (await agentReported()).systemModules.edgeAgent.lastStartTimeUtc;
    await gw.kill9();
    gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address });
    await waitFor('a report from the new agent', 30_000, async () => {
      const r = await agentReported();
      return r.systemModules.edgeAgent.lastStartTimeUtc !== was && r.modules?.filter?.runtimeStatus === 'running'
        ? true
        : undefined;
    });
    assert.deepEqual(await containers(), before, 'the same containers, none created again');
  });

  test('an image that cannot be pulled: 500 naming the module and the image, the others keep running', async () => {
    const before = await containers();
    const ghost = {
      version: '1.0',
      type: 'docker',
      status: 'running',
      restartPolicy: 'always',
      // Nothing listens on port 1: the pull fails at once, without the internet.
      settings: { image: '127.0.0.1:1/strata/ghost:1', createOptions: '{}' },
    };
    await sdk.must(sdk.call('owner', 'applyConfigurationContentOnDevice', edge.gatewayId, manifest({ ghost })));
    const rep = await waitFor('500 naming the module', 60_000, async () => {
      const r = await agentReported();
      return r?.lastDesiredStatus?.code === 500 ? r : undefined;
    });
    assert.match(rep.lastDesiredStatus.description, /ghost/);
    assert.match(rep.lastDesiredStatus.description, /127\.0\.0\.1:1\/strata\/ghost:1/);
    assert.equal(rep.modules.sensor.runtimeStatus, 'running');
    assert.equal(rep.modules.filter.runtimeStatus, 'running');
    assert.deepEqual(await containers(), before, 'the good containers untouched');
  });

  test("the engine's health check: on-unhealthy restarts an unhealthy container, on-failure reports it", async () => {
    // A check that fails until /tmp/ok exists. Without systemd Podman runs no check on its own
    // (its timers are systemd units): the test runs each one as the timer would, with
    // `podman healthcheck run`.
    const checked = (restartPolicy: string) => ({
      version: '1.0',
      type: 'docker',
      status: 'running',
      restartPolicy,
      imagePullPolicy: 'never',
      settings: {
        image: engine.image,
        createOptions: JSON.stringify({
          Cmd: ['/bin/sh', '-c', 'trap "exit 0" TERM; while true; do sleep 1; done'],
          Healthcheck: { Test: ['CMD-SHELL', 'test -f /tmp/ok'], Interval: 1e9, Timeout: 2e9, Retries: 1 },
        }),
      },
    });
    await sdk.must(
      sdk.call(
        'owner',
        'applyConfigurationContentOnDevice',
        edge.gatewayId,
        manifest({ sick: checked('on-unhealthy'), patient: checked('on-failure') }),
      ),
    );
    const first = await waitFor('both checked modules running', 60_000, async () => {
      const r = await agentReported();
      const ids = await containers();
      return r.modules?.sick?.runtimeStatus === 'running' && ids.sick && ids.patient ? ids : undefined;
    });
    const startedAt = async (id: string) =>
      (await engine.podman(['inspect', '--format', '{{.State.StartedAt}}', id])).trim();
    const sickStarted = await startedAt(first.sick!);
    const check = async () => {
      const ids = await containers();
      for (const id of Object.values(ids)) await engine.podman(['healthcheck', 'run', id]).catch(() => undefined);
    };
    const rep = await waitFor('sick restarted twice, patient reported unhealthy', 90_000, async () => {
      await check();
      const r = await agentReported();
      return r.modules?.sick?.restartCount >= 2 && r.modules.patient?.runtimeStatus === 'unhealthy' ? r : undefined;
    });
    assert.match(rep.modules.sick.lastRestartTimeUtc, /^\d{4}-/);
    assert.equal(rep.modules.patient.restartCount, 0, 'on-failure does not restart for health');
    assert.match(rep.modules.patient.statusDescription, /^Up \d+ \w+ \(unhealthy\)$/);
    assert.equal(rep.modules.sensor.runtimeStatus, 'running', 'modules without a check are left alone');
    const now = await containers();
    assert.equal(now.sick, first.sick, 'restarted, not recreated');
    assert.equal(now.patient, first.patient);
    assert.notEqual(await startedAt(now.sick!), sickStarted, 'started again');
    // Healthy again: reported running, and no more restarts.
    for (const id of [now.sick!, now.patient!]) await engine.podman(['exec', id, 'touch', '/tmp/ok']);
    const healthy = await waitFor('both healthy', 30_000, async () => {
      await check();
      const r = await agentReported();
      return r.modules?.sick?.runtimeStatus === 'running' && r.modules.patient?.runtimeStatus === 'running'
        ? r
        : undefined;
    });
    assert.match(healthy.modules.patient.statusDescription, /^Up /);
  });
});
