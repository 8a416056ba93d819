import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readProcStat } from '../../src/agent/process-identity.ts';
import { ProcessRuntime } from '../../src/agent/process-runtime.ts';
import type { ModuleSpec } from '../../src/agent/runtime.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const WORKER = path.resolve(import.meta.dirname, '../fixtures/process-runtime-worker.ts');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-proc-rt-'));

// The module: prints its environment and then, by its first argument, exits with a code, ticks,
// or ignores SIGTERM.
const SCRIPT = path.join(TMP, 'module.mjs');
fs.writeFileSync(
  SCRIPT,
  `const [mode, arg] = process.argv.slice(2);
console.log('hello ' + (process.env.GREETING ?? '-') + ' secret=' + (process.env.STRATA_TEST_AGENT_ONLY ?? 'none'));
console.error('to stderr');
if (mode === 'exit') setTimeout(() => process.exit(Number(arg)), 50);
if (mode === 'tick') { let i = 0; setInterval(() => console.log('tick ' + i++), Number(arg ?? 100)); }
if (mode === 'ignore-term') process.on('SIGTERM', () => console.log('ignoring SIGTERM'));
setInterval(() => {}, 1 << 30);
`,
);
// Set in the agent only: a module must not inherit the agent's environment beyond PATH and HOME.
process.env.STRATA_TEST_AGENT_ONLY = 'leaked';

const runtimes: ProcessRuntime[] = [];
const dirs: string[] = [];

function newRuntime(name: string, opts: { logMaxBytes?: number; pollMs?: number } = {}): ProcessRuntime {
  const dir = path.join(TMP, name);
  dirs.push(dir);
  const rt = new ProcessRuntime({ dir, ...opts });
  runtimes.push(rt);
  return rt;
}

function spec(name: string, args: string[], env: Record<string, string> = {}): ModuleSpec {
  return { name, type: 'process', command: process.execPath, args: [SCRIPT, ...args], env, specHash: `h-${name}` };
}

/** Every process group any runtime directory recorded: killed at the end, whatever happened. */
function recordedPids(): number[] {
  const pids: number[] = [];
  for (const dir of dirs) {
    if (!fs.existsSync(dir)) continue;
    for (const name of fs.readdirSync(dir)) {
      try {
        const st = JSON.parse(fs.readFileSync(path.join(dir, name, 'state.json'), 'utf8'));
        if (typeof st.pid === 'number') pids.push(st.pid);
      } catch {}
    }
  }
  return pids;
}

const extraPids: number[] = [];
after(async () => {
  for (const rt of runtimes) await rt.close();
  for (const pid of [...recordedPids(), ...extraPids]) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {}
  }
  fs.rmSync(TMP, { recursive: true, force: true });
});

/** Alive and not a zombie: an orphan's end is seen before its new parent reaps it. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const st = readProcStat(pid);
  return process.platform !== 'linux' || (st !== undefined && st.state !== 'Z' && st.state !== 'X');
}

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const line of it) out.push(line);
  return out;
}

async function stateOf(rt: ProcessRuntime, name: string) {
  return (await rt.list()).find((m) => m.name === name);
}

test('lifecycle: create records, start runs, stop ends without an exit report, remove forgets', async () => {
  const rt = newRuntime('lifecycle');
  const exits: Array<[string, number | undefined]> = [];
  rt.onExit((n, c) => exits.push([n, c]));
  await rt.create(spec('sensor', ['run'], { GREETING: 'world' }));
  let st = await stateOf(rt, 'sensor');
  assert.equal(st?.runtimeStatus, 'stopped', 'created, not started');
  assert.equal(st?.specHash, 'h-sensor');
  assert.equal(st?.id, undefined);
  await assert.rejects(rt.create(spec('sensor', [])), /already exists/);

  await rt.start('sensor');
  st = await stateOf(rt, 'sensor');
  assert.equal(st?.runtimeStatus, 'running');
  const pid = Number(st?.id);
  assert.ok(alive(pid));
  assert.ok(st?.startedAt && Date.now() - st.startedAt < 10_000);
  await rt.start('sensor'); // a no-op while running
  assert.equal((await stateOf(rt, 'sensor'))?.id, String(pid));

  const lines = await until('output', async () => {
    const l = await collect(rt.logs('sensor'));
    return l.length >= 2 ? l : undefined;
  });
  assert.ok(lines.includes('hello world secret=none'), `env from the spec only: ${lines}`);
  assert.ok(lines.includes('to stderr'), 'stderr goes to the log too');
  assert.deepEqual(await collect(rt.logs('sensor', { tail: 1 })), [lines.at(-1)]);

  await rt.stop('sensor', 5000);
  assert.equal(alive(pid), false);
  st = await stateOf(rt, 'sensor');
  assert.equal(st?.runtimeStatus, 'stopped', 'a stop is not a failure');
  assert.equal(st?.exitCode, 143, 'SIGTERM: 128 + 15');
  assert.ok(st?.exitedAt);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(exits, [], 'a stop is not an exit of its own');

  await rt.remove('sensor');
  assert.deepEqual(await rt.list(), []);
  assert.equal(fs.existsSync(path.join(TMP, 'lifecycle', 'sensor')), false);
});

test('an exit of its own is reported with its code, and the module can start again', async () => {
  const rt = newRuntime('exits');
  const exits: Array<[string, number | undefined]> = [];
  rt.onExit((n, c) => exits.push([n, c]));
  await rt.create(spec('crasher', ['exit', '3']));
  await rt.create(spec('clean', ['exit', '0']));
  await rt.start('crasher');
  await rt.start('clean');
  await until('two exits', () => exits.length === 2);
  assert.deepEqual(exits.sort(), [
    ['clean', 0],
    ['crasher', 3],
  ]);
  const crasher = await stateOf(rt, 'crasher');
  assert.equal(crasher?.runtimeStatus, 'failed');
  assert.equal(crasher?.exitCode, 3);
  const clean = await stateOf(rt, 'clean');
  assert.equal(clean?.runtimeStatus, 'stopped');
  assert.equal(clean?.exitCode, 0);

  const firstPid = crasher?.id;
  await rt.start('crasher');
  const again = await stateOf(rt, 'crasher');
  assert.equal(again?.runtimeStatus, 'running');
  assert.notEqual(again?.id, firstPid);
  assert.equal(again?.exitCode, undefined);
  await until('second exit', () => exits.length === 3);
  assert.deepEqual(exits[2], ['crasher', 3]);
  // Both runs' output is kept, in order.
  const lines = await collect(rt.logs('crasher'));
  assert.equal(lines.filter((l) => l.startsWith('hello')).length, 2);
});

test('bad input: a spec with a wrong field and a command that cannot start are named', async () => {
  const rt = newRuntime('bad');
  await assert.rejects(rt.create({ ...spec('x', []), command: '' }), /"x": command: must be a non-empty string/);
  await assert.rejects(rt.create({ ...spec('x', []), args: [1 as never] }), /"x": args: must be a list of strings/);
  await assert.rejects(rt.create({ ...spec('x', []), env: { A: 1 as never } }), /"x": env\.A: must be a string/);
  await assert.rejects(rt.create({ ...spec('../up', []) }), /name:/);
  await assert.rejects(rt.create({ ...spec('d', []), type: 'docker' }), /type: must be "process"/);
  await assert.rejects(rt.start('nobody'), /"nobody" does not exist/);

  await rt.create({ ...spec('nowhere', []), cwd: path.join(TMP, 'no-such-dir') });
  await assert.rejects(rt.start('nowhere'), /"nowhere": cwd: .*no-such-dir.* is not a directory/);
  await rt.create({ ...spec('missing', []), command: path.join(TMP, 'no-such-program') });
  await assert.rejects(rt.start('missing'), /"missing": cannot start .*no-such-program.*ENOENT/);
  const st = await stateOf(rt, 'missing');
  assert.equal(st?.runtimeStatus, 'stopped');
  assert.match((await collect(rt.logs('missing'))).join('\n'), /cannot start/);
});

test('logs: tail, follow until aborted, and a size cap with one rotation', async () => {
  const rt = newRuntime('logs', { logMaxBytes: 1000, pollMs: 100 });
  await rt.create(spec('ticker', ['tick', '10']));
  await rt.start('ticker');
  await until('20 ticks', async () => ((await collect(rt.logs('ticker'))).length > 20 ? true : undefined));
  const tail = await collect(rt.logs('ticker', { tail: 3 }));
  assert.equal(tail.length, 3);
  assert.match(tail[2]!, /^tick \d+$/);

  const ac = new AbortController();
  const followed: number[] = [];
  const started = Date.now();
  for await (const line of rt.logs('ticker', { tail: 0, follow: true, signal: ac.signal })) {
    const m = /^tick (\d+)$/.exec(line);
    if (m) followed.push(Number(m[1]));
    if (followed.length >= 300) ac.abort();
  }
  assert.ok(Date.now() - started < 20_000);
  // New lines only, in order; across rotations some may be lost (copy, then truncate), none repeated.
  for (let i = 1; i < followed.length; i++) assert.ok(followed[i]! > followed[i - 1]!, `in order: ${followed}`);
  assert.ok(followed[0]! >= Number(/\d+/.exec(tail[2]!)![0]), 'follow starts after what tail showed');

  const logFile = path.join(TMP, 'logs', 'ticker', 'output.log');
  assert.ok(fs.existsSync(`${logFile}.1`), 'rotated once');
  await until('under the cap after a poll', () => fs.statSync(logFile).size <= 1000 + 500 || undefined);
  assert.ok(fs.statSync(`${logFile}.1`).size <= 3000);
  assert.equal(fs.existsSync(`${logFile}.2`), false, 'one rotation only');
  await rt.stop('ticker', 2000);
});

test('stop escalates to SIGKILL for a module that ignores SIGTERM', async () => {
  const rt = newRuntime('stubborn');
  await rt.create(spec('stubborn', ['ignore-term']));
  await rt.start('stubborn');
  const pid = Number((await stateOf(rt, 'stubborn'))?.id);
  await until('handler installed', async () => ((await collect(rt.logs('stubborn'))).length >= 2 ? true : undefined));
  const t0 = Date.now();
  await rt.stop('stubborn', 800);
  const took = Date.now() - t0;
  assert.ok(took >= 750, `waited for the timeout first: ${took} ms`);
  assert.ok(took < 5000, `then killed: ${took} ms`);
  assert.equal(alive(pid), false);
  const st = await stateOf(rt, 'stubborn');
  assert.equal(st?.exitCode, 137, 'SIGKILL: 128 + 9');
  assert.equal(st?.runtimeStatus, 'stopped');
  assert.ok((await collect(rt.logs('stubborn'))).includes('ignoring SIGTERM'));
});

test('a pid recorded for the module but now held by another process is not the module', async () => {
  const rt = newRuntime('reused');
  await rt.create(spec('old', ['run']));
  // As if the module ran as pid P, ended while no agent watched, and P went to another process
  // (here: this test process, with a start time that is not its own).
  const stateFile = path.join(TMP, 'reused', 'old', 'state.json');
  fs.writeFileSync(stateFile, JSON.stringify({ pid: process.pid, startTime: '1', startedAt: Date.now() - 1000 }));
  const st = await stateOf(rt, 'old');
  if (process.platform !== 'linux') return; // no start time to tell them apart
  assert.equal(st?.runtimeStatus, 'stopped');
  // stop() must not signal the stranger (this process would die of it); start() starts anew.
  await rt.stop('old', 500);
  await rt.start('old');
  const now = await stateOf(rt, 'old');
  assert.equal(now?.runtimeStatus, 'running');
  assert.notEqual(now?.id, String(process.pid));
  await rt.stop('old', 2000);
});

test('an agent killed with -9: the next one adopts its running modules, strays included', async () => {
  const dir = path.join(TMP, 'adopt');
  dirs.push(dir);
  const worker = spawn(process.execPath, ['--import', 'tsx', WORKER, dir, SCRIPT, 'a', 'b'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, STRATA_LOG_LEVEL: 'warn' },
  });
  extraPids.push(worker.pid!);
  let out = '';
  worker.stdout!.on('data', (d) => (out += d));
  const pids = await until('worker started its modules', () =>
    out.includes('\n') ? (JSON.parse(out.split('\n')[0]!) as Record<string, string>) : undefined,
  );
  const exited = new Promise((r) => worker.once('exit', r));
  worker.kill('SIGKILL');
  await exited;
  const pa = Number(pids.a);
  const pb = Number(pids.b);
  assert.ok(alive(pa) && alive(pb), 'the modules outlive the agent');

  const rt = new ProcessRuntime({ dir });
  runtimes.push(rt);
  const exits: Array<[string, number | undefined]> = [];
  rt.onExit((n, c) => exits.push([n, c]));
  const listed = await rt.list();
  assert.deepEqual(
    listed.map((m) => [m.name, m.runtimeStatus, m.id, m.specHash]),
    [
      ['a', 'running', String(pa), 'hash-a'],
      ['b', 'running', String(pb), 'hash-b'],
    ],
  );
  await rt.start('a'); // adopted, so already running: nothing new starts
  assert.equal((await stateOf(rt, 'a'))?.id, String(pa));
  // Still writing to its log with no agent reading pipes.
  const before = (await collect(rt.logs('a'))).length;
  await until('more output', async () => ((await collect(rt.logs('a'))).length > before ? true : undefined));

  // An adopted module that dies is noticed within about a second, its exit code unknown.
  process.kill(pb, 'SIGKILL');
  await until('adopted exit', () => exits.length === 1, 5000);
  assert.deepEqual(exits, [['b', undefined]]);
  const b = await stateOf(rt, 'b');
  assert.equal(b?.runtimeStatus, 'stopped');
  assert.equal(b?.exitCode, undefined);
  assert.ok(b?.exitedAt);

  // An adopted module can be stopped (its group signalled), without an exit report.
  await rt.stop('a', 3000);
  assert.equal(alive(pa), false);
  assert.equal((await stateOf(rt, 'a'))?.runtimeStatus, 'stopped');
  await new Promise((r) => setTimeout(r, 1300));
  assert.equal(exits.length, 1);
  await rt.remove('a');
  await rt.remove('b');
  assert.deepEqual(await rt.list(), []);
});

test('an agent that died between spawning a module and recording its pid: the module is found, not doubled', async (t) => {
  if (process.platform !== 'linux') return t.skip('finding a process by its environment needs /proc');
  const dir = path.join(TMP, 'launch');
  dirs.push(dir);
  const first = new ProcessRuntime({ dir });
  await first.create(spec('orphan', ['tick', '200']));
  await first.create(spec('never-ran', ['tick', '200']));
  await first.close();
  // What startLocked leaves when killed right after spawn: a launch mark, no pid; and the process.
  const child = spawn(process.execPath, [SCRIPT, 'tick', '200'], {
    detached: true,
    stdio: 'ignore',
    env: { PATH: process.env.PATH ?? '', STRATA_MODULE_LAUNCH: 'mark-1' },
  });
  extraPids.push(child.pid!);
  child.unref();
  await new Promise((r) => child.once('spawn', r));
  fs.writeFileSync(path.join(dir, 'orphan', 'state.json'), JSON.stringify({ launching: 'mark-1' }));
  fs.writeFileSync(path.join(dir, 'never-ran', 'state.json'), JSON.stringify({ launching: 'mark-2' }));

  const rt = new ProcessRuntime({ dir });
  runtimes.push(rt);
  const orphan = await stateOf(rt, 'orphan');
  assert.equal(orphan?.runtimeStatus, 'running');
  assert.equal(orphan?.id, String(child.pid));
  await rt.start('orphan');
  assert.equal((await stateOf(rt, 'orphan'))?.id, String(child.pid), 'adopted, not started again');
  assert.equal((await stateOf(rt, 'never-ran'))?.runtimeStatus, 'stopped');
  await rt.start('never-ran');
  assert.equal((await stateOf(rt, 'never-ran'))?.runtimeStatus, 'running');
  await rt.remove('orphan');
  await rt.remove('never-ran');
  assert.equal(alive(child.pid!), false);
});
