/**
 * The edge agent inside `strata edge start`, with process modules (no container engine): a hub
 * and a gateway as child processes; deployments applied with the official azure-iothub
 * `Registry.applyConfigurationContentOnDevice`; two modules whose code uses the official
 * `ModuleClient.fromEnvironment(Mqtt)` unchanged, the sensor's output routed to the filter's
 * input (BrokeredEndpoint) and the filter's output to $upstream. Shown: the hub receives only the
 * filter's output, as the filter; `$edgeAgent` reported properties (read with the service SDK)
 * and `strata edge list` agree; a new deployment is reconciled within 10 s; restart policies
 * with back-off; bad modules named while the others run; built-in direct methods; `strata edge
 * logs` and `restart`; and a gateway killed with -9 adopts its modules when started again.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { EventPageJson } from '../../src/hub/event-json.ts';
import {
  PIPELINE_ROUTES,
  deploymentManifest,
  setupEdge,
  startGatewayProcess,
  type EdgeSetup,
  type GatewayProcess,
} from '../helpers/edge.ts';
import { pollUntil } from '../helpers/poll.ts';
import { randomLoopback, startHubProcess, startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const SENSOR = fileURLToPath(new URL('../fixtures/agent-modules/sensor.cjs', import.meta.url));
const FILTER = fileURLToPath(new URL('../fixtures/agent-modules/filter.cjs', import.meta.url));
const METHODS = fileURLToPath(new URL('../fixtures/service-methods-invoke.cjs', import.meta.url));

let hub: HubProcess;
let edge: EdgeSetup;
let gw: GatewayProcess;
let sdk: ServiceSdk;
const cleanups: Array<() => unknown> = [];

const node = (script: string, ...args: string[]) => ({ command: process.execPath, args: [script, ...args] });

interface ModuleDef {
  settings: Record<string, unknown>;
  type?: string;
  status?: string;
  restartPolicy?: string;
  env?: Record<string, string>;
  startupOrder?: number;
}

function manifest(modules: Record<string, ModuleDef>): Record<string, unknown> {
  const mods: Record<string, unknown> = {};
  for (const [name, m] of Object.entries(modules)) {
    mods[name] = {
      version: '1.0',
      type: m.type ?? 'process',
      status: m.status ?? 'running',
      restartPolicy: m.restartPolicy ?? 'always',
      ...(m.startupOrder !== undefined ? { startupOrder: m.startupOrder } : {}),
      settings: m.settings,
      ...(m.env ? { env: Object.fromEntries(Object.entries(m.env).map(([k, v]) => [k, { value: v }])) } : {}),
    };
  }
  return deploymentManifest({ routes: PIPELINE_ROUTES, modules: mods });
}

async function apply(content: Record<string, unknown>): Promise<void> {
  await sdk.must(sdk.call('owner', 'applyConfigurationContentOnDevice', edge.gatewayId, content));
}

async function agentReported(): Promise<any> {
  const r = await sdk.must(sdk.call('owner', 'getModuleTwin', edge.gatewayId, '$edgeAgent'));
  return r.body.properties.reported;
}

const waitFor = <T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> =>
  pollUntil(what, ms, probe, () => gw?.output().slice(-4000) ?? '');

/** Waits until the reported properties satisfy `ok`, returning them. */
function reportedWhen(what: string, ms: number, ok: (r: any) => boolean): Promise<any> {
  let last: any;
  return waitFor(what, ms, async () => {
    last = await agentReported();
    return ok(last) ? last : undefined;
  }).catch((err: Error) => {
    throw new Error(
      `${err.message}\nlast reported: ${JSON.stringify(last?.modules ?? last, null, 1)?.slice(0, 3000)} ${JSON.stringify(last?.lastDesiredStatus)}`,
    );
  });
}

type HubEvent = { moduleId?: string; body: string; annotations: Record<string, unknown> };
const seen: HubEvent[] = [];
let nextEvent = 0;

/** Every event of the edge device the hub has received so far (read on from where the last call stopped). */
async function hubEvents(): Promise<HubEvent[]> {
  for (;;) {
    const page = await edge.svc.request<EventPageJson>(
      'GET',
      `/events?device=${edge.gatewayId}&from=${nextEvent}&limit=1000`,
    );
    for (const e of page.body.events)
      seen.push({ moduleId: e.moduleId, body: Buffer.from(e.body, 'base64').toString(), annotations: e.annotations });
    if (page.body.events.length === 0 || page.body.nextSequenceNumber === nextEvent) return [...seen];
    nextEvent = page.body.nextSequenceNumber;
  }
}

async function cli(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [CLI, 'edge', ...args, '--data', edge.dataDir], {
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn' },
  });
  return stdout;
}

async function invokeAgent(methodName: string, payload: unknown): Promise<{ status: number; payload: any }> {
  const { stdout } = await run(
    process.execPath,
    [
      METHODS,
      JSON.stringify({
        connectionString: hub.connectionString,
        deviceId: edge.gatewayId,
        moduleId: '$edgeAgent',
        params: { methodName, payload, responseTimeoutInSeconds: 20, connectTimeoutInSeconds: 10 },
      }),
    ],
    { env: { ...process.env, NODE_EXTRA_CA_CERTS: hub.caPath } },
  );
  const r = JSON.parse(stdout);
  if (!r.ok) throw new Error(`${methodName}: ${JSON.stringify(r.error)}`);
  return r.result;
}

/** The pid the process runtime recorded for a module. */
function modulePid(name: string): number | undefined {
  const f = join(edge.dataDir, 'agent', 'modules', name, 'state.json');
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')).pid as number | undefined) : undefined;
}

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The filter's output keeps reaching the hub (a few more messages than now). */
async function flowing(what: string): Promise<void> {
  const count = (await hubEvents()).length;
  const moduleLog = (m: string) =>
    readFileSync(join(edge.dataDir, 'agent', 'modules', m, 'output.log'), 'utf8').slice(-1500);
  await waitFor(`messages flow ${what}`, 20_000, async () =>
    (await hubEvents()).length > count + 2 ? true : undefined,
  ).catch(async (err: Error) => {
    const metrics = (await gw.metrics())
      .split('\n')
      .filter((l) => /^edgehub_(messages|queue)/.test(l))
      .join('\n');
    throw new Error(`${err.message}\n${metrics}\nsensor: ${moduleLog('sensor')}\nfilter: ${moduleLog('filter')}`);
  });
}

const startGateway = (env?: Record<string, string>) =>
  startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address, env });

before(async () => {
  hub = await startHubProcess({ address: randomLoopback() });
  cleanups.push(() => hub.stop());
  edge = await setupEdge(hub, {
    gatewayId: 'agent-edge',
    address: randomLoopback(),
    deploy: false,
    // A short first cool-off keeps the back-off test quick; [agent] turns the agent on.
    strata: 'cool_off_time_unit_secs = 1\n\n[agent]\nname = "edgeAgent"\ntype = "docker"',
  });
  cleanups.push(() => edge.cleanup());
  sdk = await startServiceSdk(hub.caPath);
  cleanups.push(() => sdk.close());
  await sdk.open('owner', { connectionString: hub.connectionString });
  gw = await startGateway();
  cleanups.push(() => gw.stop());
});

after(async () => {
  // Modules outlive the gateway by design: end the ones this test started, while their state
  // files (in the data directory the cleanups remove) still name them.
  await gw?.stop();
  for (const name of ['sensor', 'filter', 'spare', 'pause', 'crasher', 'quitter']) {
    const pid = modulePid(name);
    if (alive(pid)) process.kill(-pid!, 'SIGKILL');
  }
  for (const fn of cleanups.reverse()) await fn();
});

const FIRST = {
  sensor: { settings: node(SENSOR), env: { SENSOR_LABEL: 'v1' } },
  filter: { settings: node(FILTER), startupOrder: 0 },
  spare: { settings: node('-e', 'setInterval(() => {}, 1000)'), restartPolicy: 'never' },
  pause: { settings: node('-e', 'setInterval(() => {}, 1000)') },
};

describe('the edge agent with process modules', { timeout: 300_000 }, () => {
  test('a deployment runs two ModuleClient modules; the hub receives only the filter output, as the filter', async () => {
    await apply(manifest(FIRST));
    const rep = await reportedWhen(
      'every module running, status 200',
      30_000,
      (r) =>
        ['sensor', 'filter', 'spare', 'pause'].every((m) => r?.modules?.[m]?.runtimeStatus === 'running') &&
        r.lastDesiredStatus?.code === 200,
    );
    assert.equal(rep.lastDesiredStatus.code, 200);
    // The agent created the module identities at the hub, through the gateway, marked as IoT Edge's.
    const ids = await edge.svc.listModules(edge.gatewayId);
    for (const m of ['sensor', 'filter', 'spare', 'pause'])
      assert.equal(ids.find((x) => x.moduleId === m)?.managedBy, 'IotEdge', `module identity ${m}`);
    assert.equal(rep.modules.sensor.type, 'process');
    assert.equal(rep.modules.sensor.restartPolicy, 'always');
    assert.match(rep.modules.sensor.lastStartTimeUtc, /^\d{4}-\d\d-\d\dT/);
    assert.equal(rep.systemModules.edgeHub.runtimeStatus, 'running');

    const events = await waitFor('filtered messages at the hub', 30_000, async () => {
      const evs = await hubEvents();
      return evs.filter((e) => e.moduleId === 'filter').length >= 3 ? evs : undefined;
    });
    assert.ok(
      events.every((e) => e.moduleId === 'filter'),
      `only the filter's output: ${events.map((e) => e.moduleId)}`,
    );
    const first = events[0]!;
    assert.equal(first.annotations['iothub-connection-module-id'], 'filter');
    assert.equal(first.annotations['iothub-connection-device-id'], edge.gatewayId);
    const body = JSON.parse(first.body);
    assert.equal(body.input, 'input1');
    assert.equal(body.filtered.label, 'v1');
  });

  test('strata edge list agrees with the reported properties', async () => {
    const text = await cli('list');
    for (const m of ['sensor', 'filter', 'spare', 'pause'])
      assert.match(
        text,
        new RegExp(
          `^${m}\\s+running\\s+Up \\d+ (second|minute)s?\\s+${process.execPath.replace(/[/.]/g, '\\$&')}`,
          'm',
        ),
        text,
      );
    const json = JSON.parse(await cli('list', '--json'));
    assert.deepEqual(
      json.agentModules.map((m: { name: string; runtimeStatus: string }) => `${m.name}:${m.runtimeStatus}`),
      ['filter:running', 'pause:running', 'sensor:running', 'spare:running'],
    );
  });

  test('a new deployment (changed env, one stopped, one removed, two that exit) is reconciled within 10 s', async () => {
    const oldSensor = modulePid('sensor');
    const filterPid = modulePid('filter');
    const sparePid = modulePid('spare');
    const applied = Date.now();
    await apply(
      manifest({
        sensor: { settings: node(SENSOR), env: { SENSOR_LABEL: 'v2' } },
        filter: FIRST.filter,
        pause: { ...FIRST.pause, status: 'stopped' },
        crasher: { settings: node('-e', 'process.exit(1)'), restartPolicy: 'always' },
        quitter: { settings: node('-e', 'process.exit(3)'), restartPolicy: 'never' },
      }),
    );
    const rep = await reportedWhen(
      'the second deployment reconciled',
      10_000,
      (r) =>
        r.modules?.sensor?.runtimeStatus === 'running' &&
        r.modules.pause?.runtimeStatus === 'stopped' &&
        r.modules.spare === undefined &&
        r.modules.quitter?.exitCode === 3 &&
        modulePid('sensor') !== oldSensor,
    );
    assert.ok(Date.now() - applied < 10_000);
    assert.equal(rep.lastDesiredStatus.code, 200);
    assert.ok(!alive(sparePid), 'the removed module is gone');
    assert.ok(!existsSync(join(edge.dataDir, 'agent', 'modules', 'spare')), 'and its directory');
    assert.equal(modulePid('filter'), filterPid, 'the unchanged module was left alone');
    await waitFor('the removed module identity deleted at the hub', 10_000, async () =>
      (await edge.svc.listModules(edge.gatewayId)).some((m) => m.moduleId === 'spare') ? undefined : true,
    );
    await waitFor('the new env in the filtered messages', 20_000, async () =>
      (await hubEvents()).some((e) => JSON.parse(e.body).filtered?.label === 'v2') ? true : undefined,
    );
  });

  test('exit 1 under always is restarted with a growing restartCount; under never it stays down with its exitCode', async () => {
    const rep = await reportedWhen(
      'crasher restarted at least twice',
      30_000,
      (r) => r.modules?.crasher?.restartCount >= 2 && r.modules.crasher.exitCode === 1,
    );
    assert.ok(['backoff', 'running', 'failed'].includes(rep.modules.crasher.runtimeStatus));
    assert.match(rep.modules.crasher.lastRestartTimeUtc, /^\d{4}-/);
    assert.equal(rep.modules.crasher.exitCode, 1);
    const later = await reportedWhen(
      'crasher restarted again',
      30_000,
      (r) => r.modules?.crasher?.restartCount > rep.modules.crasher.restartCount,
    );
    assert.ok(later.modules.crasher.restartCount > rep.modules.crasher.restartCount);
    assert.equal(later.modules.quitter.exitCode, 3);
    assert.equal(later.modules.quitter.restartCount, 0, 'never is never restarted');
    assert.ok(['failed', 'stopped'].includes(later.modules.quitter.runtimeStatus), later.modules.quitter.runtimeStatus);
    assert.ok(!alive(modulePid('quitter')));
  });

  test('bad modules are named in lastDesiredStatus while the others keep running', async () => {
    const sensorPid = modulePid('sensor');
    await apply(
      manifest({
        sensor: { settings: node(SENSOR), env: { SENSOR_LABEL: 'v2' } },
        filter: FIRST.filter,
        badopts: { type: 'docker', settings: { image: 'busybox', createOptions: '{"HostConfig": ' } },
        badpolicy: { settings: node('-e', '0'), restartPolicy: 'sometimes' },
        'bad#name': { settings: node('-e', '0') },
      }),
    );
    const rep = await reportedWhen('400 naming both bad modules', 10_000, (r) => r.lastDesiredStatus?.code === 400);
    assert.match(rep.lastDesiredStatus.description, /badopts/);
    assert.match(rep.lastDesiredStatus.description, /createOptions/);
    assert.match(rep.lastDesiredStatus.description, /badpolicy/);
    assert.match(rep.lastDesiredStatus.description, /restartPolicy/);
    assert.match(rep.lastDesiredStatus.description, /bad#name/, 'a name that is not a valid module identity');
    assert.equal(rep.modules.sensor.runtimeStatus, 'running');
    assert.equal(rep.modules.filter.runtimeStatus, 'running');
    assert.equal(modulePid('sensor'), sensorPid, 'the good modules keep running as they were');
    assert.ok(alive(sensorPid));
  });

  test('built-in direct methods on $edgeAgent: ping, RestartModule, GetModuleLogs', async () => {
    const ping = await invokeAgent('ping', {});
    assert.equal(ping.status, 200);
    assert.equal(ping.payload, null);

    const logs = await invokeAgent('GetModuleLogs', {
      schemaVersion: '1.0',
      items: [{ id: 'filter', filter: { tail: 5 } }],
      encoding: 'none',
      contentType: 'text',
    });
    assert.equal(logs.status, 200);
    assert.equal(logs.payload[0].id, 'filter');
    assert.match(logs.payload[0].payload, /filter filter open/);
    // IoT Edge's other filters: a regex, a level (an unprefixed line counts as 6), since.
    const narrowed = await invokeAgent('GetModuleLogs', {
      schemaVersion: '1.0',
      items: [{ id: 'filt.*', filter: { regex: 'open$', loglevel: 6, since: '1h' } }],
      contentType: 'json',
    });
    assert.equal(narrowed.status, 200);
    const texts = narrowed.payload[0].payload.map((l: { text: string }) => l.text);
    assert.ok(texts.length >= 1 && texts.every((t: string) => /open$/.test(t)), texts.join('|'));
    assert.deepEqual(
      (
        await invokeAgent('GetModuleLogs', {
          schemaVersion: '1.0',
          items: [{ id: 'filter', filter: { loglevel: 3 } }],
        })
      ).payload,
      [{ id: 'filter', payload: '' }],
      'no error lines',
    );
    const bad = await invokeAgent('GetModuleLogs', {
      schemaVersion: '1.0',
      items: [{ id: 'filter', filter: { since: 'whenever' } }],
    });
    assert.equal(bad.status, 400);
    assert.match(bad.payload.message, /items\[0\]\.filter\.since/);

    const before = modulePid('filter');
    const restarted = await invokeAgent('RestartModule', { schemaVersion: '1.0', id: 'filter' });
    assert.equal(restarted.status, 200);
    assert.notEqual(modulePid('filter'), before, 'a new process');
    assert.ok(!alive(before));
    const unknown = await invokeAgent('RestartModule', { schemaVersion: '1.0', id: 'nosuch' });
    assert.equal(unknown.status, 404);
    await flowing('through the restarted filter');
  });

  test('strata edge logs and strata edge restart', async () => {
    const text = await cli('logs', 'sensor', '--tail', '2');
    assert.match(text, /sensor sensor open, label v2/);
    assert.ok(text.trim().split('\n').length <= 2);
    // --follow: the restarted sensor's first line arrives while the command keeps reading.
    const follow = spawn(
      process.execPath,
      [CLI, 'edge', 'logs', 'sensor', '--tail', '0', '--follow', '--data', edge.dataDir],
      {
        env: { ...process.env, STRATA_LOG_LEVEL: 'warn' },
      },
    );
    cleanups.push(() => follow.kill('SIGKILL'));
    let followed = '';
    follow.stdout.on('data', (c: Buffer) => (followed += c.toString()));
    await new Promise((r) => setTimeout(r, 1000));
    const before = modulePid('sensor');
    assert.match(await cli('restart', 'sensor'), /sensor restarted/);
    assert.notEqual(modulePid('sensor'), before);
    await waitFor('the followed log shows the restart', 20_000, async () =>
      /sensor sensor open/.test(followed) ? true : undefined,
    );
    assert.equal(follow.exitCode, null, 'still following');
    follow.kill('SIGTERM');
    await assert.rejects(cli('logs', 'nosuch'), /no module named 'nosuch'/);
    await flowing('from the restarted sensor');
  });

  test('kill -9 of the gateway, then start: modules adopted, none twice, reporting resumes', async () => {
    const pids = { sensor: modulePid('sensor'), filter: modulePid('filter') };
    const before = await agentReported();
    await gw.kill9();
    assert.ok(alive(pids.sensor) && alive(pids.filter), 'modules outlive the gateway');
    gw = await startGateway();
    const rep = await reportedWhen(
      'a report from the new agent',
      20_000,
      (r) =>
        r.systemModules?.edgeAgent?.lastStartTimeUtc !== before.systemModules.edgeAgent.lastStartTimeUtc &&
        r.modules?.sensor?.runtimeStatus === 'running',
    );
    assert.equal(rep.modules.filter.runtimeStatus, 'running');
    assert.equal(modulePid('sensor'), pids.sensor, 'adopted, not started again');
    assert.equal(modulePid('filter'), pids.filter);
    await flowing('again through the new gateway');
  });

  test('with the parent away, a gateway started again runs the deployment kept on disk', async () => {
    const pids = { sensor: modulePid('sensor'), filter: modulePid('filter') };
    await gw.stop();
    assert.ok(alive(pids.sensor) && alive(pids.filter), 'modules outlive a gateway stopped with SIGTERM');
    // The hub goes (its files stay: the gateway's trust bundle is among them).
    await hub.kill9();
    gw = await startGateway();
    const json = JSON.parse(await cli('list', '--json'));
    const byName = Object.fromEntries(
      json.agentModules.map((m: { name: string; runtimeStatus: string }) => [m.name, m.runtimeStatus]),
    );
    assert.equal(byName.sensor, 'running');
    assert.equal(byName.filter, 'running');
    assert.equal(modulePid('sensor'), pids.sensor, 'adopted from the kept deployment, not restarted');
    assert.equal(modulePid('filter'), pids.filter);
  });
});
