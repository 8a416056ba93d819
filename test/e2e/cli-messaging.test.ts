import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { createSasDevice, deviceToken, rawRequest, serviceClient } from '../fixtures/service-messaging-helpers.ts';

/**
 * `strata hub monitor-events` and `strata device send`, run as a user runs them, against a
 * real hub; devices talk to it over the HTTPS device API.
 */

const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

let hub: HubProcess;
let svc: ServiceClient;
let tmp: string;
const children = new Set<ChildProcess>();

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
  tmp = await mkdtemp(join(tmpdir(), 'strata-cli-messaging-'));
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  svc?.close();
  await hub?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts `strata ...`; `lines` fills as stdout lines arrive. */
function start(args: string[]): { child: ChildProcess; lines: string[]; done: Promise<Run> } {
  const child = spawn(process.execPath, [STRATA, ...args], {
    env: { ...process.env, STRATA_HUB_CONNECTION_STRING: undefined, STRATA_CA: undefined, STRATA_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const lines: string[] = [];
  let stdout = '';
  let stderr = '';
  let partial = '';
  child.stdout!.on('data', (c: Buffer) => {
    stdout += c.toString();
    partial += c.toString();
    const parts = partial.split('\n');
    partial = parts.pop()!;
    lines.push(...parts.filter((l) => l.trim()));
  });
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
  const done = new Promise<Run>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
  return { child, lines, done };
}

const run = (args: string[]) => start(args).done;
const remote = () => ['--hub-connection-string', hub.connectionString, '--ca', hub.caPath];

function oneLineRefusal(r: Run, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `should have failed; stdout: ${r.stdout}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
}

async function postTelemetry(
  deviceId: string,
  key: string,
  body: string,
  headers: Record<string, string> = {},
): Promise<void> {
  const res = await rawRequest(hub, {
    method: 'POST',
    path: `/devices/${deviceId}/messages/events?api-version=2021-04-12`,
    headers: { authorization: deviceToken(hub, key, deviceId), ...headers },
    body,
  });
  assert.equal(res.status, 204, res.text);
}

test('monitor-events --since prints each message of the device as az does, with --properties', async () => {
  const { key } = await createSasDevice(svc, hub, 'cli-mon-1');
  const { key: otherKey } = await createSasDevice(svc, hub, 'cli-mon-other');
  const since = new Date(Date.now() - 2000).toISOString();
  await postTelemetry('cli-mon-1', key, '{"temperature":20}', {
    'iothub-contenttype': 'application/json',
    'IoTHub-MessageId': 'm-1',
    'iothub-app-alert': 'none',
  });
  await postTelemetry('cli-mon-other', otherKey, 'not for this monitor');
  await postTelemetry('cli-mon-1', key, 'plain text', { 'iothub-app-alert': 'high' });

  const r = await run([
    'hub',
    'monitor-events',
    '--device',
    'cli-mon-1',
    '--since',
    since,
    '--properties',
    '--count',
    '2',
    '--timeout',
    '30',
    ...remote(),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 2, r.stdout);
  const [a, b] = lines.map((l) => JSON.parse(l));
  assert.equal(a.event.origin, 'cli-mon-1');
  assert.equal(a.event.module, '');
  assert.deepEqual(a.event.payload, { temperature: 20 });
  assert.equal(a.event.properties.system['message-id'], 'm-1');
  assert.equal(a.event.properties.system['content-type'], 'application/json');
  assert.deepEqual(a.event.properties.application, { alert: 'none' });
  assert.equal(a.event.annotations['iothub-connection-device-id'], 'cli-mon-1');
  assert.equal(typeof a.event.annotations['iothub-enqueuedtime'], 'number');
  assert.match(a.event.annotations['iothub-connection-auth-method'], /"type":"sas"/);
  assert.equal(b.event.payload, 'plain text');
  assert.deepEqual(b.event.properties.application, { alert: 'high' });
  assert.ok(b.event.annotations['x-strata-sequence-number'] > a.event.annotations['x-strata-sequence-number']);
});

test('monitor-events without --since starts at now, and --data finds a local hub', async () => {
  const { key } = await createSasDevice(svc, hub, 'cli-mon-2');
  await postTelemetry('cli-mon-2', key, 'old news');
  const mon = start([
    'hub',
    'monitor-events',
    '--device',
    'cli-mon-2',
    '--count',
    '1',
    '--timeout',
    '30',
    '--data',
    hub.dataDir,
  ]);
  // The monitor's first read marks "now"; keep sending until it has seen one.
  let n = 0;
  while (mon.lines.length === 0 && mon.child.exitCode === null && n < 100) {
    await postTelemetry('cli-mon-2', key, `fresh ${n++}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const r = await mon.done;
  assert.equal(r.code, 0, r.stderr);
  const event = JSON.parse(r.stdout.trim()).event;
  assert.match(event.payload, /^fresh \d+$/, 'what was sent before the monitor started is not printed');
  assert.equal(event.properties, undefined, 'properties only with --properties');
});

test('device send queues a C2D message with properties that the device receives over HTTPS', async () => {
  const { key } = await createSasDevice(svc, hub, 'cli-c2d-1');
  const r = await run([
    'device',
    'send',
    'cli-c2d-1',
    '--body',
    'turn on',
    '--props',
    'color=red',
    '--props',
    'eq=a=b',
    '--message-id',
    'cli-m-1',
    '--correlation-id',
    'cli-c-1',
    '--ack',
    'full',
    '--json',
    ...remote(),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { deviceId: 'cli-c2d-1', messageId: 'cli-m-1' });

  const file = join(tmp, 'payload.bin');
  await writeFile(file, Buffer.from([0, 1, 2, 254, 255]));
  const r2 = await run(['device', 'send', 'cli-c2d-1', '--body-file', file, '--data', hub.dataDir]);
  assert.equal(r2.code, 0, r2.stderr);
  assert.match(r2.stdout, /^queued message \S+ for cli-c2d-1\n$/);

  const receive = () =>
    rawRequest(hub, {
      method: 'GET',
      path: '/devices/cli-c2d-1/messages/devicebound?api-version=2021-04-12',
      headers: { authorization: deviceToken(hub, key, 'cli-c2d-1') },
    });
  const first = await receive();
  assert.equal(first.status, 200, first.text);
  assert.equal(first.text, 'turn on');
  assert.equal(first.headers['iothub-messageid'], 'cli-m-1');
  assert.equal(first.headers['iothub-correlationid'], 'cli-c-1');
  assert.equal(first.headers['iothub-app-color'], 'red');
  assert.equal(first.headers['iothub-app-eq'], 'a=b');
  assert.match(String(first.headers.etag), /^"[^"]+"$/);
  const second = await receive();
  assert.equal(second.status, 200);
  assert.deepEqual([...second.body], [0, 1, 2, 254, 255]);
});

test('device send refuses clearly: a full queue (50), an unknown device, bad flags', async () => {
  await createSasDevice(svc, hub, 'cli-c2d-full');
  for (let i = 0; i < 50; i++) {
    await svc.request('POST', '/devices/cli-c2d-full/messages/deviceBound', { body: { body: `m${i}` } });
  }
  oneLineRefusal(await run(['device', 'send', 'cli-c2d-full', '--body', 'one too many', ...remote()]), /50|queue/i);
  oneLineRefusal(await run(['device', 'send', 'cli-nobody', '--body', 'x', ...remote()]), /cli-nobody|DeviceNotFound/);
  oneLineRefusal(
    await run(['device', 'send', 'cli-c2d-full', '--props', 'novalue', '--body', 'x', ...remote()]),
    /key=value/,
  );
  oneLineRefusal(await run(['device', 'send', 'cli-c2d-full', ...remote()]), /no body/);
  oneLineRefusal(await run(['hub', 'monitor-events', '--since', 'the day before', ...remote()]), /--since/);
});
