/**
 * The README's newcomer path, run as written on a fresh copy of the project: `npm start`, then
 * in "another terminal" the commands of examples/README.md (the demo's bottom gateway swapped
 * for this test's): `strata device list` with no flags, a leaf created under the bottom gateway,
 * the example leaf (examples/leaf-device.mjs) run by sh exactly as the README says, its messages
 * seen with `strata hub monitor-events`, a C2D message back, the README's X.509 lines (AMQP, the
 * CA from NODE_EXTRA_CA_CERTS), then SIGINT to npm: nothing left running or listening.
 * And the same `npm start` where 443 cannot be bound: HTTPS on 8443, devices still reach the hub.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '../../src/topology/processes.ts';
import { processesTopDown, readState } from '../../src/topology/state.ts';
import { copyProject, npmStart, portFree, processesMentioning, shell, type Watched } from '../helpers/project-copy.ts';

const README = readFileSync(fileURLToPath(new URL('../../examples/README.md', import.meta.url)), 'utf8');

const MAIN_README = readFileSync(fileURLToPath(new URL('../../README.md', import.meta.url)), 'utf8');

/** The sh blocks of the README's leaf-device section, in order. */
function leafReadmeBlocks(): string[] {
  const section = README.slice(README.indexOf('## leaf-device.mjs'));
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

function addresses(n: number): string[] {
  const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
  const last = randomInt(2, 250 - n);
  return Array.from({ length: n }, (_, i) => `${base}.${last + i}`);
}

function run(copy: string, cmd: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) =>
    execFile(cmd, args, { cwd: copy, timeout: 60_000 }, (err, out, errOut) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out, err: errOut }),
    ),
  );
}

/** SIGINT to npm's own pid ends every process of the topology, and nothing of the copy runs after. */
async function stopWithSigint(npm: Watched, copy: string): Promise<void> {
  const state = readState(join(copy, '.strata', 'topology'))!;
  const pids = processesTopDown(state).map((p) => p.record.pid!);
  const exited = new Promise<number | null>((resolve) => npm.proc.once('exit', (code) => resolve(code)));
  process.kill(npm.proc.pid!, 'SIGINT');
  const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('timeout'), 40_000))]);
  assert.notEqual(code, 'timeout', `npm start did not end within 40 s of SIGINT:\n${npm.output().slice(-2000)}`);
  for (const pid of pids) assert.equal(pidAlive(pid), false, `pid ${pid} still runs`);
  assert.deepEqual(processesMentioning(copy), []);
}

/** No listener left on any node's ports (the hub's address has no 9600, which is free all the same). */
async function assertPortsFree(addresses: string[], httpsPort: number): Promise<void> {
  for (const host of addresses)
    for (const port of [httpsPort, 8883, 5671, 9600])
      assert.ok(await portFree(host, port), `${host}:${port} is still taken`);
}

/** SIGINT to a shell's process group (Ctrl-C in its terminal), then waits until no process of the group is left. */
async function stopGroup(w: Watched): Promise<void> {
  const groupAlive = () => {
    try {
      process.kill(-w.proc.pid!, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!groupAlive()) return;
  process.kill(-w.proc.pid!, 'SIGINT');
  const deadline = Date.now() + 15_000;
  while (groupAlive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.equal(groupAlive(), false, `still running 15 s after SIGINT:\n${w.output().slice(-1000)}`);
}

test('the newcomer path of the README: npm start, device list, a leaf of the example, monitor-events, SIGINT', {
  timeout: 300_000,
}, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-first-leaf-'));
  const [hub, top, low] = addresses(3);
  const copy = copyProject(
    dir,
    `hub:\n  address: ${hub}\ngateways:\n  - { id: gw-top, parent: hub, address: ${top} }\n  - { id: gw-low, parent: gw-top, address: ${low} }\n`,
  );
  const children: Watched[] = [];
  t.after(async () => {
    for (const c of children) await stopGroup(c).catch(() => undefined);
    for (const pid of processesMentioning(copy)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  // A user's environment: nothing of this test's own (no log level, no CA).
  const { STRATA_LOG_LEVEL: _l, NODE_EXTRA_CA_CERTS: _c, STRATA_HUB_CONNECTION_STRING: _s, ...env } = process.env;
  const npm = npmStart(copy, env);
  children.push(npm);
  await npm.waitFor(/is up: hub, 2 gateways/, 120_000);

  // In the directory where npm start runs, the CLI finds the hub with no flags.
  const list = await run(copy, 'npx', ['strata', 'device', 'list']);
  assert.equal(list.code, 0, `device list failed: ${list.err}${list.out}`);
  assert.match(list.out, /^gw-low\s/m);

  const [setup, monitor, x509] = leafReadmeBlocks();
  // The main README's next steps are the same commands (run in the background there).
  const nextSteps = /Next, your own device[\s\S]*?```sh\n([\s\S]*?)```/.exec(MAIN_README)?.[1] ?? '';
  const commandsOf = (block: string) =>
    block
      .split('\n')
      .map((l) => l.replace(/#.*$/, '').replace(/&\s*$/, '').trim())
      .filter(Boolean);
  assert.deepEqual(commandsOf(nextSteps), commandsOf(`${setup}${monitor}`));
  assert.ok(setup?.includes('node examples/leaf-device.mjs') && monitor?.includes('monitor-events'), README);
  const ours = (block: string) => block.replaceAll('gateway-l3', 'gw-low').replaceAll('127.10.0.4', low!);
  const leaf = shell(copy, ours(setup!), env);
  children.push(leaf);
  await leaf.waitFor(/^connected over mqtt \(SAS\)$/m, 90_000);
  await leaf.waitFor(/^sent 2: /m, 30_000);
  const events = shell(copy, ours(monitor!), env);
  children.push(events);
  // monitor-events starts at "now": the leaf's next messages, as JSON lines, from my-sensor.
  const line = await events.waitFor(
    /^\{"event":\{"origin":"my-sensor".*"payload":\{"temperature":[\d.]+,"seq":(\d+)\}/m,
    60_000,
  );
  assert.ok(Number(line[1]) >= 2, line[0]);

  const shown = await run(copy, 'npx', ['strata', 'device', 'list']);
  assert.match(shown.out, /^my-sensor\s+no\s+enabled\s+sas\s+gw-low\s+Connected\s*$/m, shown.out);
  // The README's promise: a cloud-to-device message reaches the example.
  const sent = await run(copy, 'npx', ['strata', 'device', 'send', 'my-sensor', '--body', 'hello']);
  assert.equal(sent.code, 0, sent.err);
  await leaf.waitFor(/^received: hello$/m, 30_000);

  await stopGroup(events);
  await stopGroup(leaf);
  assert.match(leaf.output(), /^stopped after \d+ messages$/m);

  // The README's X.509 lines: a certificate from the topology's root, over AMQP, the CA from NODE_EXTRA_CA_CERTS.
  assert.ok(x509?.includes('PROTOCOL=amqp node examples/leaf-device.mjs'), README);
  const certLeaf = shell(copy, `eval "$(npx strata topology env)"\n${ours(x509!)}`, env);
  children.push(certLeaf);
  await certLeaf.waitFor(/^connected over amqp \(X\.509\)$/m, 90_000);
  await certLeaf.waitFor(/^sent 1: /m, 30_000);
  await stopGroup(certLeaf);
  await stopWithSigint(npm, copy);
  await assertPortsFree([hub!, top!, low!], 443);
});

test('npm start where 443 cannot be bound: one line says so, HTTPS on 8443, sensors reach the hub from one process', {
  timeout: 300_000,
}, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-unprivileged-'));
  const [hub, gw] = addresses(2);
  const copy = copyProject(
    dir,
    `hub:\n  address: ${hub}\ngateways:\n  - { id: gw, parent: hub, address: ${gw} }\ndevices:\n  - { id: sensor, parent: gw, protocol: amqp, interval: 500ms }\n  - { id: sensor-b, parent: gw, protocol: mqtt, interval: 500ms }\n`,
  );
  t.after(async () => {
    for (const pid of processesMentioning(copy)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  // Tests run as root, where 443 binds: STRATA_UNPRIVILEGED=1 takes the path a user without root takes.
  const npm = npmStart(copy, { ...process.env, STRATA_UNPRIVILEGED: '1' });
  await npm.waitFor(/is up: hub, 1 gateways, 2 sensors/, 120_000);
  const fallback = npm
    .output()
    .split('\n')
    .filter((l) => l.includes('443'));
  assert.match(fallback[0] ?? '', /port 443 needs root or CAP_NET_BIND_SERVICE .*HTTPS on 8443 instead/, npm.output());
  for (const a of [hub!, gw!]) {
    assert.equal(await portFree(a, 443), true, `${a}:443 is taken`);
    assert.equal(await portFree(a, 8443), false, `${a}:8443 is free`);
  }
  // The CLI finds the hub's port by itself, and the sensor's messages are at the hub.
  const list = await run(copy, process.execPath, ['bin/strata.js', 'device', 'list']);
  assert.match(list.out, /^sensor\s.*gw\s+Connected\s*$/m, list.out + list.err);
  for (const id of ['sensor', 'sensor-b']) {
    const events = await run(copy, process.execPath, [
      ...['bin/strata.js', 'hub', 'monitor-events', '--device', id, '--count', '2', '--timeout', '30'],
    ]);
    assert.equal(events.out.trim().split('\n').length, 2, events.out + events.err);
    assert.match(events.out, new RegExp(`"origin":"${id}"`));
  }
  // edge check probes the parent (here the hub) where it serves HTTPS now.
  const config = readState(join(copy, '.strata', 'topology'))!.gateways[0]!.config;
  const check = await run(copy, process.execPath, ['bin/strata.js', 'edge', 'check', '--config', config, '--json']);
  const results = JSON.parse(check.out) as Array<{ id: string; status: string; title: string }>;
  const https = results.find((r) => r.id === 'upstream-443');
  assert.equal(https?.status, 'pass', check.out);
  assert.match(https!.title, new RegExp(`IoT hub ${hub!.replace(/\./g, '\\.')} answers on 8443 \\(HTTPS`));
  assert.equal(results.find((r) => r.id === 'clock')?.status, 'pass', check.out);
  // The sensors under one gateway run in one process (a Node process with the SDK costs ~150 MB).
  const sensors = readState(join(copy, '.strata', 'topology'))!.sensors;
  assert.equal(sensors.length, 2);
  assert.equal(sensors[0]!.pid, sensors[1]!.pid);
  assert.deepEqual(processesMentioning(join(copy, '.strata', 'topology', 'sensors')), [sensors[0]!.pid]);
  await stopWithSigint(npm, copy);
  await assertPortsFree([hub!, gw!], 8443);
});
