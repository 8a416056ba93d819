/**
 * The edge agent and its modules: a hub and one gateway (`strata edge start` with `[agent]`) as
 * child processes, deployments applied with the official azure-iothub
 * `applyConfigurationContentOnDevice`, process modules (`bench/modules-worker.cjs`, the official
 * `ModuleClient.fromEnvironment(Mqtt)`), so it needs no container engine; `--runtime docker`
 * runs them as containers on a Podman of its own instead (the test helpers' busybox image with
 * this machine's node bound in). Measures:
 *
 *   deploy   time from applyConfigurationContentOnDevice to every module reported running in
 *            `$edgeAgent` (read with getModuleTwin every 100 ms), for 2 and 10 modules, each
 *            round from a deployment with none;
 *   idle     CPU and RSS of the `strata edge start` process (gateway and agent) and, apart, of
 *            the modules, from /proc, over IDLE seconds with 10 idle modules connected;
 *   m2m      a sender module's output routed to a receiver module's input
 *            (BrokeredEndpoint): msg/s and latency percentiles at the receiver;
 *   upstream the sender's output routed to $upstream: msg/s and latency at the hub's event
 *            stream.
 *
 *   node --import tsx bench/modules.ts [--messages 10000] [--size 256] [--window 100] [--rate 0] [--runs 3] [--idle 30] [--only deploy,idle,m2m,upstream] [--runtime process]
 *
 * The sender keeps WINDOW sends awaiting their acknowledgement (closed loop) or, with --rate R,
 * sends R messages a second on a schedule (open loop: latency below saturation). Each round
 * prints a JSON line; with more than one round the medians follow.
 */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { deploymentManifest, setupEdge, startGatewayProcess, type EdgeSetup } from '../test/helpers/edge.ts';
import { randomLoopback, startHubProcess, startServiceSdk, type ServiceSdk } from '../test/helpers/hub.ts';
import { nodeMounts, podmanMissing, startPodman } from '../test/helpers/podman.ts';
import { cpuMsOf, followEvents, median, quantile } from './common.ts';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '10000' },
    size: { type: 'string', default: '256' },
    window: { type: 'string', default: '100' },
    rate: { type: 'string', default: '0' },
    runs: { type: 'string', default: '3' },
    idle: { type: 'string', default: '30' },
    only: { type: 'string', default: 'deploy,idle,m2m,upstream' },
    runtime: { type: 'string', default: 'process' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  process.stdout.write(`The edge agent's modules: deployment time, idle cost, module-to-module and module-to-$upstream.

  node --import tsx bench/modules.ts [options]

  --messages N   messages a round, m2m and upstream (default 10000)
  --size BYTES   message body size, at least 12 (default 256)
  --window N     sends awaiting acknowledgement at once, closed loop (default 100)
  --rate R       open loop: R msg/s on a schedule instead of windows (default 0)
  --runs N       rounds of each measurement; more than one ends with medians (default 3)
  --idle S       seconds the idle cost is measured over (default 30)
  --only LIST    which of deploy, idle, m2m, upstream (default all)
  --runtime R    process (default) or docker: containers on a Podman started for the run
`);
  process.exit(0);
}
const num = (name: string, min: number): number => {
  const v = Number(args[name as keyof typeof args]);
  if (!Number.isFinite(v) || v < min) {
    process.stderr.write(`--${name} must be a number >= ${min}, got ${args[name as keyof typeof args]}\n`);
    process.exit(2);
  }
  return v;
};
const MSGS = num('messages', 1);
const SIZE = num('size', 12);
const WINDOW = num('window', 1);
const RATE = num('rate', 0);
const RUNS = num('runs', 1);
const IDLE_S = num('idle', 1);
const ONLY = new Set(args.only!.split(','));
for (const o of ONLY)
  if (!['deploy', 'idle', 'm2m', 'upstream'].includes(o)) {
    process.stderr.write(`--only: ${o} is not one of deploy, idle, m2m, upstream\n`);
    process.exit(2);
  }

const RUNTIME = args.runtime!;
if (RUNTIME !== 'process' && RUNTIME !== 'docker') {
  process.stderr.write(`--runtime must be process or docker, got ${RUNTIME}\n`);
  process.exit(2);
}
if (RUNTIME === 'docker' && podmanMissing()) {
  process.stderr.write(`--runtime docker: ${podmanMissing()}\n`);
  process.exit(2);
}

const WORKER = fileURLToPath(new URL('./modules-worker.cjs', import.meta.url));
const CLK_TCK = 100;
const PAGE = 4096;

/** Where the modules run: the process runtime, or containers on a Podman of the run's own. */
interface Runner {
  settings: Record<string, unknown>;
  extra: Partial<Record<string, unknown>>;
  /** config.toml's [strata] text that turns the agent on with this runtime. */
  strata: string;
  pids(edge: EdgeSetup): Promise<number[]>;
  log(edge: EdgeSetup, module: string): Promise<string>;
  stop(): Promise<void>;
}

async function processRunner(): Promise<Runner> {
  return {
    settings: { command: process.execPath, args: [WORKER] },
    extra: {},
    strata: '[agent]\nname = "edgeAgent"\ntype = "docker"',
    pids: async (edge) => processModulePids(edge),
    log: async (edge, module) => {
      const file = join(edge.dataDir, 'agent', 'modules', module, 'output.log');
      return existsSync(file) ? readFileSync(file, 'utf8') : '';
    },
    stop: async () => undefined,
  };
}

async function dockerRunner(jobDir: string): Promise<Runner> {
  const engine = await startPodman();
  const mounts = await nodeMounts();
  return {
    settings: {
      image: engine.image,
      createOptions: JSON.stringify({
        Cmd: ['/usr/bin/node', '/app/module.cjs'],
        HostConfig: { Binds: [...mounts, `${WORKER}:/app/module.cjs:ro`, `${jobDir}:${jobDir}`], NetworkMode: 'host' },
      }),
    },
    extra: { imagePullPolicy: 'never' },
    strata: `[moby_runtime]\nuri = "${engine.uri}"`,
    // The containers' main processes (each also has a conmon beside it, not counted).
    pids: async (edge) => {
      const ids = (await engine.podman(['ps', '-q', '--filter', `label=net.strata.agent=${edge.gatewayId}`])).split(
        '\n',
      );
      const pids: number[] = [];
      for (const id of ids.filter(Boolean))
        pids.push(Number(await engine.podman(['inspect', '--format', '{{.State.Pid}}', id])));
      return pids.filter((p) => p > 0);
    },
    log: (_edge, module) => engine.podman(['logs', module]).catch(() => ''),
    stop: () => engine.stop(),
  };
}

/** A module running the worker in `role`. */
function workerModule(runner: Runner, role: string, jobDir: string): Record<string, unknown> {
  return {
    version: '1.0',
    type: RUNTIME,
    status: 'running',
    restartPolicy: 'always',
    ...runner.extra,
    settings: runner.settings,
    env: { BENCH_ROLE: { value: role }, BENCH_DIR: { value: jobDir } },
  };
}

function idleModules(runner: Runner, n: number, jobDir: string): Record<string, unknown> {
  return Object.fromEntries(
    Array.from({ length: n }, (_, i) => [`idle${i + 1}`, workerModule(runner, 'idle', jobDir)]),
  );
}

const ROUTES = {
  toReceiver: 'FROM /messages/modules/sender/outputs/m2m INTO BrokeredEndpoint("/modules/receiver/inputs/in")',
  toUpstream: 'FROM /messages/modules/sender/outputs/up INTO $upstream',
};

/** CPU ms and RSS bytes of a process, from /proc. */
function procStat(pid: number): { cpuMs: number; rss: number } {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { cpuMs: ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK, rss: Number(fields[21]) * PAGE };
}

/** The pids the process runtime recorded for the modules. */
function processModulePids(edge: EdgeSetup): number[] {
  const dir = join(edge.dataDir, 'agent', 'modules');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((m) => join(dir, m, 'state.json'))
    .filter((f) => existsSync(f))
    .map((f) => JSON.parse(readFileSync(f, 'utf8')).pid as number | undefined)
    .filter((p): p is number => p !== undefined && existsSync(`/proc/${p}`));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const jobDir = await mkdtemp(join(tmpdir(), 'strata-bench-jobs-'));
  let runner: Runner | undefined;
  let hub: Awaited<ReturnType<typeof startHubProcess>> | undefined;
  let edge: EdgeSetup | undefined;
  let sdk: ServiceSdk | undefined;
  let gw: Awaited<ReturnType<typeof startGatewayProcess>> | undefined;
  try {
    runner = RUNTIME === 'docker' ? await dockerRunner(jobDir) : await processRunner();
    hub = await startHubProcess({ address: randomLoopback() });
    edge = await setupEdge(hub, {
      gatewayId: 'bench-agent',
      address: randomLoopback(),
      deploy: false,
      strata: runner.strata,
    });
    sdk = await startServiceSdk(hub.caPath);
    await sdk.open('owner', { connectionString: hub.connectionString });
    gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address });
    const e = edge;
    const s = sdk;
    const r = runner;
    const apply = (modules: Record<string, unknown>) =>
      s.must(
        s.call(
          'owner',
          'applyConfigurationContentOnDevice',
          e.gatewayId,
          deploymentManifest({ routes: ROUTES, modules }),
        ),
      );
    const reported = async (): Promise<any> =>
      (await s.must(s.call('owner', 'getModuleTwin', e.gatewayId, '$edgeAgent'))).body.properties.reported;
    /** Polls the reported properties every 100 ms until `ok`; returns the ms it took. */
    const until = async (what: string, ok: (r: any) => boolean, timeoutMs = 120_000): Promise<number> => {
      const t0 = Date.now();
      for (;;) {
        if (ok(await reported())) return Date.now() - t0;
        if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
        await sleep(100);
      }
    };
    const allRunning = (names: string[]) => (r: any) =>
      r?.lastDesiredStatus?.code === 200 &&
      names.every((m) => r.modules?.[m]?.runtimeStatus === 'running') &&
      Object.keys(r.modules ?? {}).length === names.length;
    const none = (r: any) => r?.lastDesiredStatus?.code === 200 && Object.keys(r.modules ?? {}).length === 0;
    const emptyAgain = async () => {
      await apply({});
      await until('every module removed', none);
      while ((await r.pids(e)).length > 0) await sleep(100);
    };

    if (ONLY.has('deploy')) {
      for (const n of [2, 10]) {
        const times: number[] = [];
        for (let round = 0; round < RUNS; round++) {
          await emptyAgain();
          const mods = idleModules(runner, n, jobDir);
          const t0 = Date.now();
          await apply(mods);
          await until(`${n} modules running`, allRunning(Object.keys(mods)));
          times.push(Date.now() - t0);
          process.stdout.write(
            `${JSON.stringify({ bench: 'deploy', modules: n, round, ms_to_running: times.at(-1) })}\n`,
          );
        }
        if (RUNS > 1)
          process.stdout.write(`${JSON.stringify({ bench: 'deploy', modules: n, median_ms: median(times) })}\n`);
      }
    }

    if (ONLY.has('idle')) {
      await emptyAgain();
      const mods = idleModules(runner, 10, jobDir);
      await apply(mods);
      await until('10 idle modules running', allRunning(Object.keys(mods)));
      // Let the modules connect and the agent's first reports settle before measuring.
      await sleep(10_000);
      const rounds: Array<Record<string, number>> = [];
      for (let round = 0; round < RUNS; round++) {
        const pids = await runner.pids(e);
        const gw0 = procStat(gw.proc.pid!);
        const mod0 = pids.map(procStat);
        let gwRssMax = gw0.rss;
        for (let t = 0; t < IDLE_S; t++) {
          await sleep(1000);
          gwRssMax = Math.max(gwRssMax, procStat(gw.proc.pid!).rss);
        }
        const gw1 = procStat(gw.proc.pid!);
        const mod1 = pids.map(procStat);
        const r = {
          modules: pids.length,
          seconds: IDLE_S,
          gateway_cpu_pct: Number((((gw1.cpuMs - gw0.cpuMs) / (IDLE_S * 1000)) * 100).toFixed(2)),
          gateway_rss_mib: Number((gw1.rss / 2 ** 20).toFixed(1)),
          gateway_rss_max_mib: Number((gwRssMax / 2 ** 20).toFixed(1)),
          modules_cpu_pct: Number(
            ((mod1.reduce((a, m, i) => a + m.cpuMs - mod0[i]!.cpuMs, 0) / (IDLE_S * 1000)) * 100).toFixed(2),
          ),
          modules_rss_mib: Number((mod1.reduce((a, m) => a + m.rss, 0) / 2 ** 20).toFixed(1)),
        };
        rounds.push(r);
        process.stdout.write(`${JSON.stringify({ bench: 'idle', round, ...r })}\n`);
      }
      if (RUNS > 1)
        process.stdout.write(
          `${JSON.stringify({
            bench: 'idle',
            gateway_cpu_pct_median: median(rounds.map((r) => r.gateway_cpu_pct!)),
            gateway_rss_mib_median: median(rounds.map((r) => r.gateway_rss_mib!)),
            modules_cpu_pct_median: median(rounds.map((r) => r.modules_cpu_pct!)),
            modules_rss_mib_median: median(rounds.map((r) => r.modules_rss_mib!)),
          })}\n`,
        );
    }

    if (ONLY.has('m2m') || ONLY.has('upstream')) {
      await emptyAgain();
      const mods = {
        sender: workerModule(runner, 'sender', jobDir),
        receiver: workerModule(runner, 'receiver', jobDir),
      };
      await apply(mods);
      await until('sender and receiver running', allRunning(Object.keys(mods)));
      await waitForLine(() => r.log(e, 'receiver'), 'receiver receiver open');
      await waitForLine(() => r.log(e, 'sender'), 'sender sender open');
      const cs = Object.fromEntries(
        hub.connectionString.split(';').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]),
      );
      let job = 0;
      const results: Record<string, Array<{ msgs_per_s: number; p50_ms: number; p99_ms: number }>> = {
        m2m: [],
        upstream: [],
      };
      // A short warm-up of each path: the first messages open links and load code.
      const kinds = (['m2m', 'upstream'] as const).filter((k) => ONLY.has(k));
      for (let round = -1; round < RUNS; round++) {
        for (const kind of kinds) {
          const n = ++job;
          const count = round < 0 ? Math.min(500, MSGS) : MSGS;
          const r = await runJob(gw.proc.pid!, jobDir, n, kind, count, hub.address, hub.caPem, {
            host: cs.HostName!,
            key: cs.SharedAccessKey!,
            policy: cs.SharedAccessKeyName!,
          });
          if (round < 0) continue;
          results[kind]!.push(r);
          process.stdout.write(`${JSON.stringify({ bench: kind, round, messages: count, size: SIZE, ...r })}\n`);
        }
      }
      if (RUNS > 1)
        for (const kind of kinds)
          process.stdout.write(
            `${JSON.stringify({
              bench: kind,
              runs: RUNS,
              mode: RATE > 0 ? `open loop ${RATE} msg/s` : `window ${WINDOW}`,
              msgs_per_s_median: median(results[kind]!.map((r) => r.msgs_per_s)),
              p50_ms_median: median(results[kind]!.map((r) => r.p50_ms)),
              p99_ms_median: median(results[kind]!.map((r) => r.p99_ms)),
            })}\n`,
          );
    }
    // Leave no module behind: the agent removes them before the gateway stops.
    await emptyAgain();
  } finally {
    await gw?.stop();
    if (edge && RUNTIME === 'process') for (const pid of processModulePids(edge)) process.kill(-pid, 'SIGKILL');
    await runner?.stop();
    await sdk?.close();
    await hub?.stop();
    await edge?.cleanup();
    await rm(jobDir, { recursive: true, force: true });
  }
}

async function waitForLine(log: () => Promise<string>, line: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!(await log()).includes(line)) {
    if (Date.now() > deadline) throw new Error(`no module logged "${line}" within 60 s`);
    await sleep(200);
  }
}

async function runJob(
  gwPid: number,
  jobDir: string,
  n: number,
  kind: 'm2m' | 'upstream',
  count: number,
  hubAddress: string,
  hubCa: string,
  cs: { host: string; key: string; policy: string },
): Promise<{ msgs_per_s: number; p50_ms: number; p99_ms: number; max_ms: number; gateway_cpu_us_per_msg: number }> {
  let lat: number[] = [];
  let firstStamp = Infinity;
  let lastAt = 0;
  let done = (): void => undefined;
  const all = new Promise<void>((r) => (done = r));
  const reader =
    kind === 'upstream'
      ? followEvents(hubAddress, hubCa, cs, (body) => {
          if (body.length < 12 || body.readUInt32BE(8) !== n) return;
          const at = Date.now();
          const stamp = Number(body.readBigUInt64BE(0));
          lat.push(at - stamp);
          firstStamp = Math.min(firstStamp, stamp);
          lastAt = at;
          if (lat.length === count) done();
        })
      : undefined;
  await reader?.ready;
  const cpu0 = cpuMsOf(gwPid);
  writeFileSync(
    join(jobDir, `job-${n}.json`),
    JSON.stringify({ output: kind === 'm2m' ? 'm2m' : 'up', count, size: SIZE, window: WINDOW, rate: RATE }),
  );
  const deadline = Date.now() + 300_000;
  const recv = join(jobDir, `recv-${n}.json`);
  const sent = join(jobDir, `sent-${n}.json`);
  for (;;) {
    if (kind === 'm2m' && existsSync(recv)) {
      const r = JSON.parse(readFileSync(recv, 'utf8'));
      lat = r.latencies;
      firstStamp = r.firstStamp;
      lastAt = r.lastAt;
      break;
    }
    if (kind === 'upstream' && lat.length >= count) break;
    if (existsSync(sent)) {
      const s = JSON.parse(readFileSync(sent, 'utf8'));
      if (s.error) throw new Error(`the sender failed job ${n}: ${s.error}`);
    }
    if (Date.now() > deadline) throw new Error(`job ${n} (${kind}): ${lat.length}/${count} arrived within 300 s`);
    await Promise.race([all, sleep(50)]);
  }
  const cpuMs = cpuMsOf(gwPid) - cpu0;
  reader?.stop();
  lat.sort((a, b) => a - b);
  return {
    msgs_per_s: Math.round(count / ((lastAt - firstStamp) / 1000)),
    p50_ms: quantile(lat, 0.5),
    p99_ms: quantile(lat, 0.99),
    max_ms: lat.at(-1) ?? NaN,
    gateway_cpu_us_per_msg: Math.round((cpuMs * 1000) / count),
  };
}

await main();
process.exit(0);
