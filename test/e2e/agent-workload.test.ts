/**
 * The agent's workload API and module environment, end to end: a hub and a gateway as child
 * processes, module identities created at the hub under the gateway's edge device, the workload
 * API serving each module's key on its own listener, and the official
 * `ModuleClient.fromEnvironment`, unchanged, with the environment module-env.ts builds: Mqtt as a
 * process over the unix socket (then its module twin and a direct method), Amqp over the
 * loopback form, and Mqtt in a real container (Podman) with its socket bound at IoT Edge's path
 * (which still reaches a workload API restarted under it, as after an agent's kill -9).
 * Each sends an output event that the hub receives with `iothub-connection-module-id` = the
 * module; a BrokeredEndpoint route feeds one such module's output to another's input. A
 * workload API holding the wrong key gets the module refused at the gateway; one
 * module's socket refuses to sign for another module or a wrong generation id.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { moduleEnv, withWorkload, workloadUriFor } from '../../src/agent/module-env.ts';
import { WorkloadApi, type WorkloadTransport } from '../../src/agent/workload-api.ts';
import type { EventJson, EventPageJson } from '../../src/hub/event-json.ts';
import { newKey, setupEdge, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { containerMissing, moduleContainers } from '../helpers/module-container.ts';

const MODULE_SCRIPT = fileURLToPath(new URL('../fixtures/workload-module.cjs', import.meta.url));
const PROBE_SCRIPT = fileURLToPath(new URL('../fixtures/workload-probe.cjs', import.meta.url));
const API = '2018-06-28';

let hub: HubProcess;
let edge: EdgeSetup;
let gw: GatewayProcess;
let workload: WorkloadApi;
let sockDir: string;
const cleanups: Array<() => unknown> = [];

before(async () => {
  hub = await startHubProcess({ address: randomLoopback() });
  cleanups.push(() => hub.stop());
  // The default deployment routes every message, module outputs included, to $upstream.
  edge = await setupEdge(hub, {
    gatewayId: 'workload-edge',
    address: randomLoopback(),
    routes: {
      upstream: 'FROM /messages/* INTO $upstream',
      toDst: 'FROM /messages/modules/relay-src/outputs/* INTO BrokeredEndpoint("/modules/relay-dst/inputs/input1")',
    },
  });
  cleanups.push(() => edge.cleanup());
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address });
  cleanups.push(() => gw.stop());
  // A short directory: unix socket paths are limited to 107 bytes.
  sockDir = await mkdtemp(join(tmpdir(), 'wl-'));
  cleanups.push(() => rm(sockDir, { recursive: true, force: true }));
  workload = new WorkloadApi({ socketDir: join(sockDir, 'mnt'), trustBundlePem: edge.rootPem });
  cleanups.push(() => workload.close());
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

/** Creates module `moduleId` of the edge device at the hub and serves its key. */
async function deployModule(moduleId: string, transport: WorkloadTransport) {
  const primaryKey = newKey();
  const created = await edge.svc.createModule({
    deviceId: edge.gatewayId,
    moduleId,
    authentication: { type: 'sas', symmetricKey: { primaryKey, secondaryKey: newKey() } },
  } as never);
  assert.ok(created.generationId, 'the hub gives the module a generationId');
  const endpoint = await workload.serve({ moduleId, generationId: created.generationId, primaryKey }, transport);
  const env = moduleEnv({
    iothubHostName: hub.hostname,
    deviceId: edge.gatewayId,
    moduleId,
    generationId: created.generationId,
    gatewayHostName: edge.address,
    workloadUri: workloadUriFor(endpoint, 'process'),
    deploymentEnv: { SENSOR_MODE: 'test', IOTEDGE_MODULEID: 'not-me' },
  });
  const who = {
    iothubHostName: hub.hostname,
    deviceId: edge.gatewayId,
    generationId: created.generationId,
    gatewayHostName: edge.address,
  };
  return { endpoint, env, who, primaryKey, generationId: created.generationId };
}

interface ModuleRun {
  /** The script's first JSON line, or an error made up from its exit. */
  answer: Promise<{ sent?: boolean; error?: string }>;
  /** Its `{"ready":true}` line (with --stay). */
  ready: Promise<boolean>;
  /** The next line `pred` accepts after those `line` returned before (or an error line, or the exit). */
  line(pred: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  write(text: string): void;
  kill(): void;
}

interface Launch {
  file: string;
  args: string[];
  env: Record<string, string>;
}

/** The module script as a process on this machine, with `env` and nothing else of ours (no IOTEDGE_* or connection strings). */
function asProcess(env: Record<string, string>, args: string[]): Launch {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('IOTEDGE_') && !/ConnectionString$/.test(k)),
  ) as Record<string, string>;
  return {
    file: process.execPath,
    args: [MODULE_SCRIPT, ...args],
    env: { ...clean, ...env, NODE_EXTRA_CA_CERTS: edge.rootPath },
  };
}

function startModule(launch: Launch): ModuleRun {
  const p = spawn(launch.file, launch.args, { env: launch.env, stdio: ['pipe', 'pipe', 'pipe'] });
  cleanups.push(() => p.kill('SIGKILL'));
  const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
  p.on('exit', () => clearTimeout(timer));
  let out = '';
  let err = '';
  p.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const lines: Array<Record<string, unknown>> = [];
  const waiters: Array<() => void> = [];
  p.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    const parts = out.split('\n');
    out = parts.pop()!;
    for (const l of parts) if (l.startsWith('{')) lines.push(JSON.parse(l));
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<number | null>((res) => p.on('exit', (code) => res(code)));
  const lineWith = async (pred: (l: Record<string, unknown>) => boolean, from = 0) => {
    for (;;) {
      const at = lines.findIndex((l, i) => i >= from && pred(l));
      if (at >= 0) return { at, line: lines[at] };
      const more = new Promise<void>((res) => waiters.push(res));
      const code = await Promise.race([more.then(() => undefined), exited]);
      if (code !== undefined && lines.findIndex((l, i) => i >= from && pred(l)) < 0)
        return { at: lines.length, line: { error: `exit ${code}; stderr: ${err.slice(-2000)}` } };
    }
  };
  let cursor = 0;
  return {
    answer: lineWith((l) => 'sent' in l || 'error' in l).then((r) => r.line) as never,
    ready: lineWith((l) => 'ready' in l || 'error' in l).then((r) => r.line.ready === true),
    line: async (pred) => {
      const r = await lineWith((l) => pred(l) || 'error' in l, cursor);
      cursor = r.at + 1;
      return r.line;
    },
    write: (text: string) => p.stdin.write(text),
    kill: () => p.kill('SIGKILL'),
  };
}

/** The module's process, retried while the gateway may not yet know the new module identity. */
async function runUntilSent(launch: Launch): Promise<ModuleRun> {
  const deadline = Date.now() + 45_000;
  for (;;) {
    const run = startModule(launch);
    const r = await run.answer;
    if (r.sent) return run;
    run.kill();
    if (Date.now() > deadline) throw new Error(`the module never sent its output: ${r.error}\n${gw.output()}`);
    await new Promise((res) => setTimeout(res, 1000));
  }
}

function call(
  at: { socketPath?: string; uri: string },
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: any }> {
  const target = at.socketPath
    ? { socketPath: at.socketPath }
    : { host: '127.0.0.1', port: Number(new URL(at.uri).port) };
  return new Promise((resolve, reject) => {
    const req = http.request({ ...target, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

async function moduleEvents(moduleId: string, count: number): Promise<EventJson[]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const page = await edge.svc.request<EventPageJson>('GET', `/events?device=${edge.gatewayId}&from=0&limit=1000`);
    const mine = page.body.events.filter((e) => e.moduleId === moduleId);
    if (mine.length >= count) return mine;
    if (Date.now() > deadline) throw new Error(`${mine.length} of ${count} events of ${moduleId} at the hub`);
    await new Promise((res) => setTimeout(res, 300));
  }
}

describe('the workload API and module environment', { timeout: 180_000 }, () => {
  test('ModuleClient.fromEnvironment(Mqtt) over the unix socket: its output event reaches the hub as the module', async () => {
    const m = await deployModule('filter', 'unix');
    assert.match(m.env.IOTEDGE_WORKLOADURI, /^unix:\/\/\/.+\/filter\/workload\.sock$/);
    assert.equal(m.env.IOTEDGE_MODULEID, 'filter', 'the deployment cannot override the module id');
    assert.equal(m.env.SENSOR_MODE, 'test', "the deployment's env is passed on");
    assert.equal(m.env.IOTEDGE_AUTHSCHEME, 'sasToken');

    const run = await runUntilSent(asProcess(m.env, ['mqtt', 'output1', 'filtered over mqtt', '--stay']));
    const [ev] = await moduleEvents('filter', 1);
    assert.equal(ev.deviceId, edge.gatewayId);
    assert.equal(ev.annotations['iothub-connection-device-id'], edge.gatewayId);
    assert.equal(ev.annotations['iothub-connection-module-id'], 'filter');
    assert.equal(Buffer.from(ev.body, 'base64').toString(), 'filtered over mqtt');
    assert.equal(ev.properties.via, 'mqtt');

    // The same session, on the workload-signed token: module twin reported and a direct method.
    assert.equal(await run.ready, true, 'the module reported its twin');
    const twin = await edge.svc.getTwin(edge.gatewayId, 'filter');
    assert.equal((twin.properties?.reported as { sent?: string } | undefined)?.sent, 'filtered over mqtt');
    const r = await edge.svc.request<{ status: number; payload: unknown }>(
      'POST',
      `/twins/${edge.gatewayId}/modules/filter/methods`,
      { body: { methodName: 'whoami', payload: {}, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 } },
    );
    assert.deepEqual(r.body, { status: 200, payload: { moduleId: 'filter' } });
    run.kill();

    // A workload API holding a key that is not the module's: the same module is refused at the gateway.
    await workload.serve({ moduleId: 'filter', generationId: m.generationId, primaryKey: newKey() }, 'unix');
    const refused = await startModule(asProcess(m.env, ['mqtt', 'output1', 'signed with the wrong key'])).answer;
    assert.match(String(refused.error), /Not authorized/, 'a token signed with another key does not open');
    await workload.serve({ moduleId: 'filter', generationId: m.generationId, primaryKey: m.primaryKey }, 'unix');
  });

  test('ModuleClient.fromEnvironment(Amqp) over the loopback form: its output event reaches the hub as the module', async () => {
    const m = await deployModule('sensor', 'http');
    assert.match(m.env.IOTEDGE_WORKLOADURI, /^http:\/\/127\.0\.0\.1:\d+$/);
    await runUntilSent(asProcess(m.env, ['amqp', 'temperature', 'sensed over amqp']));
    const [ev] = await moduleEvents('sensor', 1);
    assert.equal(ev.annotations['iothub-connection-module-id'], 'sensor');
    assert.equal(Buffer.from(ev.body, 'base64').toString(), 'sensed over amqp');
  });

  test("ModuleClient.fromEnvironment(Mqtt) in a container, its socket bound at IoT Edge's path: its output reaches the hub; a restarted API is still reached", async (t) => {
    const missing = containerMissing();
    if (missing) return t.skip(missing);
    const containers = await moduleContainers();
    t.after(() => containers.cleanup());
    const m = await deployModule('boxed', 'unix');
    const spec = withWorkload(
      {
        name: 'boxed',
        type: 'docker' as 'docker' | 'process',
        env: { NODE_EXTRA_CA_CERTS: '/app/root.pem' } as Record<string, string>,
        createOptions: {} as Record<string, unknown>,
      },
      m.endpoint,
      m.who,
    );
    assert.equal(spec.env.IOTEDGE_WORKLOADURI, 'unix:///var/run/iotedge/workload.sock');
    const binds = (spec.createOptions!.HostConfig as { Binds: string[] }).Binds;
    const launch = containers.command({
      script: MODULE_SCRIPT,
      args: ['mqtt', 'output1', 'from a container'],
      env: spec.env,
      binds: [...binds, `${edge.rootPath}:/app/root.pem:ro`],
    });
    await runUntilSent(launch);
    const [ev] = await moduleEvents('boxed', 1);
    assert.equal(ev.annotations['iothub-connection-module-id'], 'boxed');
    assert.equal(Buffer.from(ev.body, 'base64').toString(), 'from a container');

    // The agent restarts (a new WorkloadApi makes a new socket): the running container still reaches it.
    const probe = startModule(containers.command({ script: PROBE_SCRIPT, args: [], env: spec.env, binds }));
    assert.equal(await probe.ready, true);
    probe.write('1\n');
    assert.deepEqual(await probe.line((l) => 'status' in l), { status: 200 });
    await workload.close();
    workload = new WorkloadApi({ socketDir: join(sockDir, 'mnt'), trustBundlePem: edge.rootPem });
    const again = await workload.serve({ moduleId: 'boxed', generationId: m.generationId, primaryKey: m.primaryKey });
    assert.equal(again.socketDir, m.endpoint.socketDir, 'the same directory, so the same mount');
    probe.write('2\n');
    const second = await probe.line((l) => 'status' in l);
    probe.kill();
    assert.deepEqual(second, { status: 200 }, 'the new socket is seen through the directory mount');
  });

  test('a BrokeredEndpoint route feeds one fromEnvironment module from another, as an input', async () => {
    const dst = await deployModule('relay-dst', 'unix');
    const src = await deployModule('relay-src', 'unix');
    const deadline = Date.now() + 45_000;
    let listener: ModuleRun;
    for (;;) {
      listener = startModule(asProcess(dst.env, ['mqtt', '--listen']));
      if (await listener.ready) break;
      listener.kill();
      if (Date.now() > deadline) throw new Error(`relay-dst never opened\n${gw.output()}`);
      await new Promise((res) => setTimeout(res, 1000));
    }
    await runUntilSent(asProcess(src.env, ['amqp', 'out1', 'to the filter']));
    const got = await listener.line((l) => 'input' in l);
    listener.kill();
    assert.deepEqual(got, { input: 'input1', body: 'to the filter' });
  });

  test("a module's socket signs only for that module and its generation id; the trust bundle is the gateway's", async () => {
    const a = await deployModule('mod-a', 'unix');
    const b = await deployModule('mod-b', 'unix');
    const data = Buffer.from('some%2Fresource\n1700000000').toString('base64');
    const sign = { keyId: 'primary', algo: 'HMACSHA256', data };

    const own = await call(a.endpoint, 'POST', `/modules/mod-a/genid/${a.generationId}/sign?api-version=${API}`, sign);
    assert.equal(own.status, 200);
    const expected = createHmac('sha256', Buffer.from(a.primaryKey, 'base64'))
      .update(Buffer.from(data, 'base64'))
      .digest('base64');
    assert.equal(own.body.digest, expected);

    const other = await call(
      a.endpoint,
      'POST',
      `/modules/mod-b/genid/${b.generationId}/sign?api-version=${API}`,
      sign,
    );
    assert.equal(other.status, 403);
    assert.match(other.body.message, /mod-a.*mod-b/);
    assert.equal(other.body.digest, undefined);

    const staleGen = await call(
      a.endpoint,
      'POST',
      `/modules/mod-a/genid/${b.generationId}x/sign?api-version=${API}`,
      sign,
    );
    assert.equal(staleGen.status, 404);
    assert.match(staleGen.body.message, /generation id/);

    const noVersion = await call(a.endpoint, 'POST', `/modules/mod-a/genid/${a.generationId}/sign`, sign);
    assert.equal(noVersion.status, 400);

    const trust = await call(b.endpoint, 'GET', `/trust-bundle?api-version=${API}`);
    assert.equal(trust.status, 200);
    assert.equal(trust.body.certificate, edge.rootPem);
  });
});
