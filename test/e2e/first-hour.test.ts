/**
 * A newcomer's first hour, end to end on a fresh copy of the project in a temp directory:
 * `npm start` there (its topology file on this test's own loopback addresses), then, with no
 * flags, `strata device list` in the same directory finds the topology's hub; `strata topology
 * env` gives another shell what it needs; `strata edge list/check --config` find the data
 * directory the topology gave the gateway; the running watch view leaks no listener; SIGINT to
 * npm's own pid stops every process of the topology and frees every port.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pidAlive } from '../../src/topology/processes.ts';
import { copyProject, portFree } from '../helpers/project-copy.ts';
import { processesTopDown, readState, type TopologyState } from '../../src/topology/state.ts';

let dir: string;
let copy: string;
let npm: ChildProcess;
let output = '';
let upAt = 0;
let state: TopologyState;
const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
const last = randomInt(2, 248);
const [hubAddr, gwTopAddr, gwLowAddr] = [0, 1, 2].map((i) => `${base}.${last + i}`);

function strata(
  args: string[],
  o: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(copy, 'bin', 'strata.js'), ...args],
      { cwd: o.cwd ?? copy, timeout: 60_000, env: o.env ?? { ...process.env, STRATA_LOG_LEVEL: 'warn' } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, out: stdout, err: stderr });
      },
    );
  });
}

/** Every process whose command line names the copy: what the topology started, wherever it was started from. */
function processesOfCopy(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8');
      if (cmd.includes(copy) && pidAlive(Number(name))) pids.push(Number(name));
    } catch {
      // gone already
    }
  }
  return pids;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-first-hour-'));
  copy = copyProject(
    dir,
    `name: first-hour
hub:
  address: ${hubAddr}
gateways:
  - { id: gw-top, parent: hub, address: ${gwTopAddr} }
  - { id: gw-low, parent: gw-top, address: ${gwLowAddr} }
devices:
  - { id: sensor-low, parent: gw-low, protocol: mqtt, interval: 500ms }
  - { id: sensor-top, parent: gw-top, protocol: amqp, interval: 1s }
`,
  );
  npm = spawn('npm', ['start'], { cwd: copy, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  npm.stdout!.setEncoding('utf8').on('data', (c: string) => (output += c));
  npm.stderr!.setEncoding('utf8').on('data', (c: string) => (output += c));
  const deadline = Date.now() + 120_000;
  while (!/is up: hub, 2 gateways, 2 sensors/.test(output)) {
    if (npm.exitCode !== null || Date.now() > deadline) throw new Error(`npm start did not come up:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  upAt = Date.now();
  state = readState(join(copy, '.strata', 'topology'))!;
});

after(async () => {
  // Whatever happened, nothing this test started may outlive it.
  if (npm.exitCode === null) npm.kill('SIGKILL');
  for (const pid of processesOfCopy()) process.kill(pid, 'SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

// First, before the tests below poke the nodes (edge check's TLS probes, a stopped sensor).
test('a healthy start is quiet: no warning, no 404 lines, no deprecation warning, no JSON on the terminal', () => {
  const logs = readdirSync(join(copy, '.strata', 'topology', 'logs'));
  assert.equal(logs.length, 5, logs.join(' '));
  for (const name of logs) {
    const text = readFileSync(join(copy, '.strata', 'topology', 'logs', name), 'utf8');
    const loud = text
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: number; status?: number; msg: string })
      .filter((l) => l.level >= 40 || l.status === 404);
    assert.deepEqual(loud, [], `${name}`);
    assert.doesNotMatch(text, /DEP0\d+|DeprecationWarning|Warning:/, name);
  }
  // The terminal of `npm start` shows the progress and the summary, not log objects.
  assert.deepEqual(
    output.split('\n').filter((l) => l.trimStart().startsWith('{')),
    [],
  );
  assert.doesNotMatch(output, /DeprecationWarning/);
});

test('strata device list with no flags, where npm start runs, finds the topology hub', async () => {
  const r = await strata(['device', 'list']);
  assert.equal(r.code, 0, r.err);
  for (const id of ['gw-top', 'gw-low', 'sensor-low']) assert.match(r.out, new RegExp(`^${id}\\s`, 'm'), r.out);
  const cs = await strata(['hub', 'connection-string']);
  assert.equal(cs.code, 0, cs.err);
  assert.match(cs.out, new RegExp(`^HostName=${hubAddr.replace(/\./g, '\\.')};SharedAccessKeyName=iothubowner;`));
});

test('strata topology env: its exports let another shell (elsewhere) reach the hub and trust its CA', async () => {
  const r = await strata(['topology', 'env']);
  assert.equal(r.code, 0, r.err);
  const env: Record<string, string> = {};
  for (const m of r.out.matchAll(/^export (\w+)='([^']*)'$/gm)) env[m[1]!] = m[2]!;
  assert.deepEqual(Object.keys(env).sort(), ['NODE_EXTRA_CA_CERTS', 'STRATA_CA', 'STRATA_HUB_CONNECTION_STRING']);
  assert.equal(env.STRATA_CA, state.rootCa);
  assert.equal(env.NODE_EXTRA_CA_CERTS, state.rootCa);
  assert.match(r.out, new RegExp(`gw-low\\s+layer 2\\s+${gwLowAddr.replace(/\./g, '\\.')}`));
  // What sh makes of the output is what the parse above found.
  const sh = await new Promise<string>((resolve, reject) =>
    execFile('sh', ['-c', `${r.out}\nprintf %s "$STRATA_HUB_CONNECTION_STRING"`], (err, out) =>
      err ? reject(err) : resolve(out),
    ),
  );
  assert.equal(sh, env.STRATA_HUB_CONNECTION_STRING);

  const elsewhere = await mkdtemp(join(dir, 'elsewhere-'));
  const withEnv = await strata(['device', 'list'], {
    cwd: elsewhere,
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn', ...env },
  });
  assert.equal(withEnv.code, 0, withEnv.err);
  assert.match(withEnv.out, /^sensor-low\s/m);
  // --ca says the same as STRATA_CA.
  const { STRATA_CA: _ca, ...noCa } = env;
  const withFlag = await strata(['device', 'list', '--ca', state.rootCa], {
    cwd: elsewhere,
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn', ...noCa },
  });
  assert.equal(withFlag.code, 0, withFlag.err);
  assert.match(withFlag.out, /^sensor-low\s/m);
  // The connection string without the CA: the error says how to give it.
  const untrusted = await strata(['device', 'list'], {
    cwd: elsewhere,
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn', STRATA_HUB_CONNECTION_STRING: env.STRATA_HUB_CONNECTION_STRING },
  });
  assert.notEqual(untrusted.code, 0);
  assert.match(untrusted.err, /certificate this machine does not trust[\s\S]*--ca FILE or STRATA_CA/);
  // Nothing here and no exports: the error says where it looked and what to do.
  const bare = await strata(['device', 'list'], { cwd: elsewhere });
  assert.notEqual(bare.code, 0);
  assert.match(bare.err, /no local hub here/);
  assert.match(bare.err, /strata topology env/);
});

test('strata edge list/check --config find the data directory the topology gave the gateway', async () => {
  const low = state.gateways.find((g) => g.id === 'gw-low')!;
  const config = readFileSync(low.config, 'utf8');
  assert.match(config, new RegExp(`^data_dir = "${low.dataDir.replace(/[.\\]/g, '\\$&')}"$`, 'm'));
  const list = await strata(['edge', 'list', '--config', low.config, '--json']);
  assert.equal(list.code, 0, list.err);
  const listed = JSON.parse(list.out) as { deviceId: string; connected: Array<{ deviceId: string }> };
  assert.equal(listed.deviceId, 'gw-low');
  assert.ok(
    listed.connected.some((c) => c.deviceId === 'sensor-low'),
    list.out,
  );
  const check = await strata(['edge', 'check', '--config', low.config, '--json']);
  const results = JSON.parse(check.out) as Array<{ id: string; status: string; detail: string }>;
  const storage = results.find((r) => r.id.includes('storage'));
  assert.ok(storage, check.out);
  // The check looked at the topology's data directory (under /tmp here, which it rightly warns about).
  assert.ok(storage.detail.includes(low.dataDir), JSON.stringify(storage));
  assert.notEqual(storage.status, 'error', JSON.stringify(storage));
  assert.doesNotMatch(check.out, /edge-gw-low/);
  // Its probes (TLS to the parent, the gateway's own served certificate) leave no warning behind.
  await new Promise((r) => setTimeout(r, 1500));
  for (const g of state.gateways) {
    const warned = readFileSync(g.log, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{') && (JSON.parse(l) as { level: number }).level >= 40);
    assert.deepEqual(warned, [], `${g.id} after edge check`);
  }
});

test('connection state: running gateways and the leaf behind them are Connected, at the service API and in device list', async () => {
  const ids = ['gw-top', 'gw-low', 'sensor-low'];
  const env = (await strata(['topology', 'env'])).out;
  const cs = /^export STRATA_HUB_CONNECTION_STRING='([^']*)'$/m.exec(env)![1]!;
  // The official service SDK, in its own process, trusting the root CA as a newcomer's program would.
  const script = join(copy, 'registry-get.cjs');
  writeFileSync(
    script,
    `const { Registry } = require('azure-iothub');
const registry = Registry.fromConnectionString(process.argv[2]);
(async () => {
  const out = {};
  for (const id of process.argv.slice(3)) out[id] = (await registry.get(id)).responseBody.connectionState;
  process.stdout.write(JSON.stringify(out));
})().catch((err) => { process.stderr.write(String(err)); process.exit(1); });
`,
  );
  const viaSdk = await new Promise<Record<string, string>>((resolve, reject) =>
    execFile(
      process.execPath,
      [script, cs, ...ids],
      { env: { ...process.env, NODE_EXTRA_CA_CERTS: state.rootCa }, timeout: 30_000 },
      (err, out, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(JSON.parse(out))),
    ),
  );
  assert.deepEqual(viaSdk, { 'gw-top': 'Connected', 'gw-low': 'Connected', 'sensor-low': 'Connected' });

  const list = await strata(['device', 'list', '--json']);
  assert.equal(list.code, 0, list.err);
  const listed = JSON.parse(list.out) as Array<{ deviceId: string; connectionState?: string }>;
  for (const id of ids)
    assert.equal(listed.find((d) => d.deviceId === id)?.connectionState, 'Connected', `${id} in ${list.out}`);
  const table = await strata(['device', 'list']);
  for (const id of ids) assert.match(table.out, new RegExp(`^${id}\\s.*Connected\\s*$`, 'm'), table.out);

  // The leaf goes away two layers down: the hub says so.
  const sensor = state.sensors.find((x) => x.id === 'sensor-low')!;
  process.kill(sensor.pid!, 'SIGTERM');
  const deadline = Date.now() + 30_000;
  let seen = '';
  while (Date.now() < deadline) {
    const r = await strata(['device', 'show', 'sensor-low', '--json']);
    seen = (JSON.parse(r.out) as { connectionState?: string }).connectionState ?? '';
    if (seen === 'Disconnected') break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(seen, 'Disconnected', 'sensor-low still shows Connected at the hub 30 s after it stopped');
  const after = await strata(['device', 'list', '--json']);
  const gws = (JSON.parse(after.out) as Array<{ deviceId: string; connectionState?: string }>).filter((d) =>
    d.deviceId.startsWith('gw-'),
  );
  assert.deepEqual(
    gws.map((d) => d.connectionState),
    ['Connected', 'Connected'],
  );
});

test('the watch view runs over 12 s without a listener leak warning', async () => {
  const wait = upAt + 13_000 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  assert.doesNotMatch(output, /MaxListenersExceededWarning|Possible EventTarget memory leak/);
  assert.match(output, /at the hub \(event stream\)/);
  // The columns are explained on the screen.
  assert.match(output, /CHILDREN {2}identities connected now/);
});

test('SIGINT to the npm start process stops every process of the topology and frees its ports', async () => {
  const nodes = processesTopDown(state);
  assert.equal(nodes.length, 5);
  // sensor-low was stopped by the connection-state test; the rest runs.
  for (const p of nodes.filter((n) => n.name !== 'sensor sensor-low'))
    assert.ok(pidAlive(p.record.pid!), `${p.name} is not running before the signal`);
  const pids = nodes.map((p) => p.record.pid!);
  const exited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
  process.kill(npm.pid!, 'SIGINT');
  const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('timeout'), 40_000))]);
  assert.notEqual(code, 'timeout', `npm start did not end within 40 s of SIGINT:\n${output.slice(-2000)}`);
  for (const pid of pids) assert.equal(pidAlive(pid), false, `pid ${pid} still runs`);
  assert.deepEqual(processesOfCopy(), []);
  for (const [host, port] of [
    [hubAddr, 443],
    [hubAddr, 8883],
    [hubAddr, 5671],
    [gwTopAddr, 443],
    [gwTopAddr, 8883],
    [gwTopAddr, 5671],
    [gwTopAddr, 9600],
    [gwLowAddr, 443],
    [gwLowAddr, 8883],
    [gwLowAddr, 5671],
    [gwLowAddr, 9600],
  ] as const)
    assert.ok(await portFree(host, port), `${host}:${port} is still taken`);
});
