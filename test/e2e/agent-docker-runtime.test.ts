/**
 * The Docker runtime against a real engine: Podman's Docker Engine API on a socket of its own,
 * running a busybox image built here. Containers are created, started, read, stopped, seen to
 * exit, adopted by a second runtime instance, listed when stray, and removed.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { DockerRuntime, LABEL_AGENT, LABEL_MODULE } from '../../src/agent/docker-runtime.ts';
import type { ModuleSpec } from '../../src/agent/runtime.ts';
import { podmanMissing, startPodman, type PodmanEngine } from '../helpers/podman.ts';
import { freePort, registryMissing, startRegistry, type LocalRegistry } from '../helpers/registry.ts';

const skip = podmanMissing();
const agentId = `edge-${randomBytes(3).toString('hex')}`;
const skipRegistry = skip ?? registryMissing();
let engine: PodmanEngine | undefined;
let registry: LocalRegistry | undefined;
let registryPort = 0;
let runtime: DockerRuntime;
let startupMs = 0;

before(async () => {
  if (skip) return;
  const t0 = Date.now();
  if (!skipRegistry) registryPort = await freePort();
  engine = await startPodman({ insecureRegistries: registryPort ? [`127.0.0.1:${registryPort}`] : [] });
  startupMs = Date.now() - t0;
  runtime = new DockerRuntime({ uri: engine.uri, agentId });
});
after(async () => {
  await runtime?.close();
  await engine?.stop();
  await registry?.stop();
});

/** A shell loop that counts, and exits 0 on SIGTERM (PID 1 ignores signals it does not trap). */
const LOOP =
  'trap "exit 0" TERM; echo "FOO=$FOO BAR=$BAR"; grep strata-test /etc/hosts; i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.1; done';

function spec(name: string, cmd: string, extra: Partial<ModuleSpec> = {}): ModuleSpec {
  return {
    name,
    type: 'docker',
    image: engine!.image,
    imagePullPolicy: 'never',
    createOptions: { Cmd: ['/bin/sh', '-c', cmd] },
    env: {},
    specHash: `hash-${name}`,
    ...extra,
  };
}

async function collect(it: AsyncIterable<string>, until: (lines: string[]) => boolean): Promise<string[]> {
  const lines: string[] = [];
  for await (const line of it) {
    lines.push(line);
    if (until(lines)) break;
  }
  return lines;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('the engine starts and answers', { skip }, async () => {
  const v = await runtime.version();
  assert.ok(v.apiVersion, JSON.stringify(v));
  console.log(`# podman start + image build: ${startupMs} ms (engine ${v.version}, API ${v.apiVersion})`);
});

test('create and start: env and createOptions merged, labels, logs tail and follow, stop', { skip }, async () => {
  await runtime.create(
    spec('counter', LOOP, {
      createOptions: {
        Cmd: ['/bin/sh', '-c', LOOP],
        Env: ['FOO=from-create', 'BAR=from-create'],
        Labels: { 'com.example.owner': 'tests' },
        HostConfig: { ExtraHosts: ['strata-test:10.1.2.3'] },
      },
      env: { FOO: 'from-deployment' },
    }),
  );
  const created = (await runtime.list()).find((m) => m.name === 'counter');
  assert.equal(created?.runtimeStatus, 'stopped');
  assert.equal(created?.specHash, 'hash-counter');
  assert.equal(created?.startedAt, undefined);

  await runtime.start('counter');
  const running = (await runtime.list()).find((m) => m.name === 'counter');
  assert.equal(running?.runtimeStatus, 'running');
  assert.equal(running?.image, engine!.image);
  assert.ok(running?.startedAt && Math.abs(running.startedAt - Date.now()) < 60_000, JSON.stringify(running));

  const labels = JSON.parse(await engine!.podman(['inspect', '--format', '{{json .Config.Labels}}', 'counter']));
  assert.equal(labels['com.example.owner'], 'tests');
  assert.equal(labels[LABEL_AGENT], agentId);
  assert.equal(labels[LABEL_MODULE], 'counter');

  // Follow: the lines the loop writes from now on arrive as they are written.
  const ac = new AbortController();
  const followed = await collect(runtime.logs('counter', { follow: true, signal: ac.signal }), (l) =>
    l.some((x) => x === 'line 15'),
  );
  ac.abort();
  assert.equal(followed[0], 'FOO=from-deployment BAR=from-create');
  assert.match(followed[1] ?? '', /^10\.1\.2\.3\s+strata-test/);
  assert.deepEqual(followed.slice(2, 5), ['line 0', 'line 1', 'line 2']);

  // Tail: only the last lines, and they are the loop's latest.
  const tail = await collect(runtime.logs('counter', { tail: 3 }), () => false);
  assert.equal(tail.length, 3, tail.join('|'));
  const n = Number(tail[2]?.replace('line ', ''));
  assert.ok(n >= 15, tail.join('|'));
  assert.deepEqual(tail, [`line ${n - 2}`, `line ${n - 1}`, `line ${n}`]);

  // since and until go to the engine, which knows when each line was written.
  const sinceLater = await collect(runtime.logs('counter', { since: Date.now() + 60_000 }), () => false);
  assert.deepEqual(sinceLater, []);
  const sinceStart = await collect(runtime.logs('counter', { since: running!.startedAt! - 60_000 }), () => false);
  assert.ok(sinceStart.includes('line 15'), sinceStart.join('|'));
  const untilBefore = await collect(runtime.logs('counter', { until: running!.startedAt! - 60_000 }), () => false);
  assert.deepEqual(untilBefore, []);

  // A stopped module is not an exit "by itself": no onExit.
  const exits: string[] = [];
  const off = runtime.onExit((name) => exits.push(name));
  await new Promise((r) => setTimeout(r, 300)); // the event stream is open
  const t0 = Date.now();
  await runtime.stop('counter', 5000);
  assert.ok(Date.now() - t0 < 4000, 'the loop traps SIGTERM: stop does not wait for the timeout');
  const stopped = (await runtime.list()).find((m) => m.name === 'counter');
  assert.equal(stopped?.runtimeStatus, 'stopped');
  assert.equal(stopped?.exitCode, 0);
  assert.ok(stopped?.exitedAt && stopped.startedAt && stopped.exitedAt >= stopped.startedAt);
  await runtime.stop('counter'); // stopping a stopped module is fine
  await new Promise((r) => setTimeout(r, 500));
  off();
  assert.deepEqual(exits, []);
});

test('a module that exits 3: onExit says so, list says failed with exit code 3', { skip }, async () => {
  const exits: Array<[string, number]> = [];
  const off = runtime.onExit((name, code) => exits.push([name, code]));
  await new Promise((r) => setTimeout(r, 300));
  await runtime.create(spec('quitter', 'sleep 0.3; exit 3'));
  await runtime.start('quitter');
  await waitFor('the exit event', async () => (exits.length > 0 ? true : undefined));
  off();
  assert.deepEqual(exits, [['quitter', 3]]);
  const state = (await runtime.list()).find((m) => m.name === 'quitter');
  assert.equal(state?.runtimeStatus, 'failed');
  assert.equal(state?.exitCode, 3);
  assert.ok(state?.exitedAt && state.startedAt && state.exitedAt >= state.startedAt, JSON.stringify(state));
});

test('a second runtime for the same agent adopts the containers; another agent sees none', { skip }, async () => {
  await runtime.create(spec('sleeper', 'trap "exit 0" TERM; while true; do sleep 0.1; done'));
  await runtime.start('sleeper');
  const countAll = async () => (await engine!.podman(['ps', '-a', '-q'])).trim().split('\n').filter(Boolean).length;
  const before = await countAll();
  const first = await runtime.list();

  const again = new DockerRuntime({ uri: engine!.uri, agentId });
  try {
    const adopted = await again.list();
    const view = (l: typeof first) => l.map((m) => `${m.name}:${m.id}:${m.runtimeStatus}:${m.specHash}`).sort();
    assert.deepEqual(view(adopted), view(first));
    assert.equal(adopted.find((m) => m.name === 'sleeper')?.runtimeStatus, 'running');
    await again.stop('sleeper', 2000); // the adopted container is driven through the new instance
    assert.equal((await again.list()).find((m) => m.name === 'sleeper')?.runtimeStatus, 'stopped');
    await again.start('sleeper');
  } finally {
    await again.close();
  }
  assert.equal(await countAll(), before, 'nothing was created');

  // Another agent on the same engine (a hierarchy on one machine) sees none of these, and with
  // its own container names runs a module of the same name beside them.
  const other = new DockerRuntime({ uri: engine!.uri, agentId: `${agentId}-other`, containerName: (m) => `l2-${m}` });
  try {
    assert.deepEqual(await other.list(), []);
    await other.create(spec('sleeper', 'true'));
    assert.deepEqual(
      (await other.list()).map((m) => m.name),
      ['sleeper'],
    );
    assert.match(await engine!.podman(['ps', '-a', '--format', '{{.Names}}']), /^l2-sleeper$/m);
    await other.remove('sleeper');
    assert.equal((await runtime.list()).find((m) => m.name === 'sleeper')?.runtimeStatus, 'running');
  } finally {
    await other.close();
  }
});

test('strays: containers labelled ours that no deployment made are listed, and removed', { skip }, async () => {
  // Two containers of one module, as a crash between creating a new one and removing the old leaves.
  for (const name of ['leftover', 'leftover-old']) {
    await engine!.podman([
      'create',
      '--name',
      name,
      '--label',
      `${LABEL_AGENT}=${agentId}`,
      '--label',
      `${LABEL_MODULE}=leftover`,
      engine!.image,
      'sleep',
      '30',
    ]);
  }
  await engine!.podman(['start', 'leftover-old']);
  await engine!.podman(['create', '--name', 'not-ours', engine!.image, 'true']);
  const names = (await runtime.list()).map((m) => m.name);
  assert.equal(names.filter((n) => n === 'leftover').length, 2, names.join(','));
  assert.ok(!names.includes('not-ours'), names.join(','));
  const t0 = Date.now();
  await runtime.remove('leftover'); // one of them runs `sleep`, which as PID 1 ignores SIGTERM
  assert.ok(Date.now() - t0 < 5000, `remove took ${Date.now() - t0} ms: it must not wait for a stop timeout`);
  assert.ok(!(await runtime.list()).some((m) => m.name === 'leftover'));
  assert.doesNotMatch(await engine!.podman(['ps', '-a', '--format', '{{.Names}}']), /^leftover/m);
});

test('remove: a running module is stopped and gone; removing it again is a no-op', { skip }, async () => {
  const exits: string[] = [];
  const off = runtime.onExit((name) => exits.push(name));
  await runtime.remove('sleeper');
  assert.ok(!(await runtime.list()).some((m) => m.name === 'sleeper'));
  assert.doesNotMatch(await engine!.podman(['ps', '-a', '--format', '{{.Names}}']), /^sleeper$/m);
  await runtime.remove('sleeper');
  await new Promise((r) => setTimeout(r, 500));
  off();
  assert.deepEqual(exits, [], 'a removed module did not exit by itself');
  await assert.rejects(runtime.start('sleeper'), /module sleeper: start failed: no container/);
});

test('exits are still reported after the engine API restarts; a killed module reports 137', { skip }, async () => {
  const exits: Array<[string, number]> = [];
  const off = runtime.onExit((name, code) => exits.push([name, code]));
  await runtime.create(spec('victim', 'while true; do sleep 0.1; done'));
  await runtime.start('victim');
  await runtime.create(spec('later', 'sleep 1; exit 7'));

  await engine!.restartService(); // the event stream breaks; the runtime reopens it
  await runtime.start('later');
  await engine!.podman(['kill', '--signal', 'KILL', 'victim']);
  await waitFor('both exits', async () => (exits.length >= 2 ? true : undefined), 15_000);
  await new Promise((r) => setTimeout(r, 300));
  off();
  assert.deepEqual(
    exits.sort((a, b) => a[0].localeCompare(b[0])),
    [
      ['later', 7],
      ['victim', 137],
    ],
  );
});

test('on-create pulls from a registry with the deployment credentials; wrong ones fail', {
  skip: skipRegistry,
}, async () => {
  registry = await startRegistry(registryPort);
  const image = `${registry.host}/strata/busybox:1`;
  await engine!.podman([
    'push',
    '--tls-verify=false',
    '--creds',
    `${registry.username}:${registry.password}`,
    engine!.image,
    image,
  ]);
  const auth = { username: registry.username, password: registry.password, serveraddress: registry.host };

  // Wrong credentials: refused by the registry (each failed pull costs Podman's three retries, ~3 s).
  await assert.rejects(
    runtime.create(
      spec('pulled', 'echo pulled', {
        image,
        imagePullPolicy: 'on-create',
        registryAuth: { ...auth, password: 'wrong' },
      }),
    ),
    /module pulled: create failed: pulling image .*(unauthorized|authentication required)/i,
  );

  await runtime.create(
    spec('pulled', 'echo pulled from the registry', { image, imagePullPolicy: 'on-create', registryAuth: auth }),
  );
  assert.match(await engine!.podman(['images', '--format', '{{.Repository}}:{{.Tag}}']), new RegExp(`^${image}$`, 'm'));
  const exits: string[] = [];
  const off = runtime.onExit((name) => exits.push(name));
  await runtime.start('pulled');
  await waitFor('the pulled module to exit', async () => (exits.includes('pulled') ? true : undefined));
  off();
  assert.deepEqual(await collect(runtime.logs('pulled'), () => false), ['pulled from the registry']);
  assert.equal((await runtime.list()).find((m) => m.name === 'pulled')?.image, image);
});

test('errors name the module and what the engine said', { skip }, async () => {
  await assert.rejects(
    runtime.create(spec('ghost', 'true', { image: 'localhost/strata-no-such-image:1' })),
    /module ghost: create failed: image localhost\/strata-no-such-image:1 is not on this machine and imagePullPolicy is never/,
  );
  // A registry that is not there: the pull fails, quickly, and says where.
  const t0 = Date.now();
  await assert.rejects(
    runtime.create(spec('unpullable', 'true', { image: '127.0.0.1:9/strata/none:1', imagePullPolicy: 'on-create' })),
    (err: Error) => {
      assert.match(err.message, /module unpullable: create failed: pulling image 127\.0\.0\.1:9\/strata\/none:1: .+/);
      return true;
    },
  );
  assert.ok(Date.now() - t0 < 30_000);
  // A name the engine already has: the engine's own words.
  await runtime.create(spec('twice', 'true'));
  await assert.rejects(runtime.create(spec('twice', 'true')), /module twice: create failed: .*(already|in use)/i);
  await runtime.remove('twice');
  assert.ok(!(await runtime.list()).some((m) => m.name === 'ghost' || m.name === 'unpullable'));
  // No engine behind the uri: said so, naming the uri.
  const nowhere = new DockerRuntime({ uri: `unix://${engine!.dir}/no-engine.sock`, agentId });
  try {
    await assert.rejects(nowhere.version(), /container engine at unix:\/\/.*no-engine\.sock did not answer: .*ENOENT/);
    await assert.rejects(nowhere.list(), /container engine at unix:\/\/.*no-engine\.sock: listing containers failed/);
  } finally {
    await nowhere.close();
  }
});
