/**
 * Leaf -> gateway(s) -> hub: PUBLISHERS leaves publish QoS 1 messages of SIZE bytes over TLS to
 * the bottom of a chain of LAYERS gateways (`strata edge start`, each the parent of the one
 * below, the top one a child of the hub), each storing and forwarding over its upstream link;
 * a message counts when it is readable in the hub's event stream (REST server-sent events), with
 * the send time stamped in its first 8 bytes. Every node has its own loopback address; TLS on
 * every hop. In the same run, the anchor: a Mosquitto chain with as many bridges
 * (../shared/anchors/mosquitto-chain.sh DIR LAYERS BASE) measured by
 * ../shared/anchors/chain-bench.mjs with the same shape (publishers, size, QoS 1, windows of 100
 * awaited acknowledgements). Prints one JSON line per side, the CPU time each Strata process
 * spent per message, the disk's fdatasync p50/p99 just before each Strata round
 * (`disk_fdatasync_ms`), and the ratio.
 *
 * `--profile` writes V8 CPU profiles, whose sampler also counts the time a process waited for a
 * core after waking a peer (a socket write, a sync handed to the thread pool). On a busy machine
 * `perf record -e cpu-clock` of a process run with NODE_OPTIONS=--perf-basic-prof shows where
 * the CPU itself goes.
 *
 *   node --import tsx bench/gateway.ts [--layers 1] [--messages 50000] [--publishers 100] [--size 256] [--rate R] [--runs 1] [--anchors DIR] [--skip-anchor] [--profile DIR] [--upstream Amqp]
 *
 * With `--rate R` both sides run open loop: the publishers together offer R messages a second
 * on a fixed schedule (publisher i sends every PUBLISHERS/R seconds, offset by i/R) without
 * waiting for acknowledgements, so the latency figures are those below saturation.
 *
 * On a shared machine one run of either side can be 20% off the next: `--runs N` alternates the
 * two sides N times and ends with the medians and the median of the per-round ratios.
 *
 * Needs `mosquitto` (apt-get install -y mosquitto) for the anchor, and the `mqtt` client version
 * 5 that chain-bench.mjs is written for: installed on first use into a cache directory outside
 * the repository (the repository's own `mqtt` is the older one the device SDK depends on).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { edgeFiles } from '../src/edge/local.ts';
import { createSasToken } from '../src/identity/sas.ts';
import { cpuMsOf, diskSyncProbe, followEvents, median, quantile } from './common.ts';
import { openNodeDb } from '../src/store/db.ts';
import { createLeavesBulk, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../test/helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../test/helpers/hub.ts';
import { setupLayer } from '../test/helpers/nested.ts';

const { values: args } = parseArgsOrExit({
  options: {
    messages: { type: 'string', default: '50000' },
    layers: { type: 'string', default: '1' },
    publishers: { type: 'string', default: '100' },
    size: { type: 'string', default: '256' },
    anchors: { type: 'string' },
    'skip-anchor': { type: 'boolean', default: false },
    /** Rounds of both sides, alternating; with more than one, a summary of medians follows. */
    runs: { type: 'string', default: '1' },
    /** Open loop: R messages a second in all, on a fixed schedule; 0 (default) is windows of 100. */
    rate: { type: 'string', default: '0' },
    /** Each process records how old a message is at each point of its way (util/latency-trace.ts); printed per process. */
    trace: { type: 'boolean', default: false },
    /** Write a V8 CPU profile of the gateway process into this directory. */
    profile: { type: 'string' },
    /** What each gateway speaks to its parent: Amqp (default), AmqpWs, Mqtt or MqttWs. */
    upstream: { type: 'string', default: 'Amqp' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
function parseArgsOrExit<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\nrun with --help for the options\n`);
    process.exit(2);
  }
}
if (args.help) {
  process.stdout.write(`Leaf -> gateway(s) -> hub throughput and latency, beside a Mosquitto chain of as many bridges.

  node --import tsx bench/gateway.ts [options]

  --layers N        gateway layers between the leaves and the hub, 1 to 5 (default 1)
  --messages N      messages in all (default 50000)
  --publishers N    leaf devices publishing at once, windows of 100 QoS 1 messages each (default 100)
  --size BYTES      message body size (default 256)
  --rate R          open loop: the publishers together send R msg/s on a schedule (default 0: windows of 100)
  --runs N          rounds of both sides, alternating; more than one ends with medians (default 1)
  --anchors DIR     where mosquitto-chain.sh and chain-bench.mjs are (default ../shared/anchors beside the checkout)
  --skip-anchor     measure Strata only
  --trace           print per process how old messages are at each point of their way (p50/p99/max ms)
  --profile DIR     write V8 CPU profiles of the hub and each gateway into DIR/hub, DIR/l1, ...
  --upstream P      each gateway's UpstreamProtocol: Amqp (default), AmqpWs, Mqtt, MqttWs
`);
  process.exit(0);
}
const UPSTREAMS = ['Amqp', 'AmqpWs', 'Mqtt', 'MqttWs'];
if (!UPSTREAMS.includes(args.upstream!)) {
  process.stderr.write(
    `--upstream ${args.upstream} is not one of ${UPSTREAMS.join(', ')}\nrun with --help for the options\n`,
  );
  process.exit(2);
}
const MSGS = Number(args.messages);
const PUBS = Number(args.publishers);
const SIZE = Number(args.size);
const WINDOW = 100;
/** The steady-state figure leaves out the messages sent in the first seconds. */
const STEADY_AFTER_S = 2;
const RUNS = Number(args.runs);
if (!Number.isInteger(RUNS) || RUNS < 1 || RUNS > 20) throw new Error(`--runs must be 1 to 20, got ${args.runs}`);
const RATE = Number(args.rate);
if (!Number.isFinite(RATE) || RATE < 0)
  throw new Error(`--rate must be a number of messages a second >= 0, got ${args.rate}`);
const LAYERS = Number(args.layers);
if (!Number.isInteger(LAYERS) || LAYERS < 1 || LAYERS > 5)
  throw new Error(`--layers must be 1 to 5, got ${args.layers}`);
const here = dirname(fileURLToPath(import.meta.url));

// What must not outlive the benchmark, undone synchronously at exit: the helpers SIGKILL the hub
// and gateways they started then, but temp directories and the Mosquitto chain are ours.
const atExit = new Set<() => void>();
process.once('exit', () => {
  for (const undo of atExit) {
    try {
      undo();
    } catch {
      /* best effort */
    }
  }
});
// A signal's default action skips 'exit' handlers; go through process.exit so they run.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    process.stderr.write(`${sig}: stopping every process the benchmark started\n`);
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}
const removeAtExit = (dir: string) => {
  const undo = () => rmSync(dir, { recursive: true, force: true });
  atExit.add(undo);
  return () => atExit.delete(undo);
};
const anchorsDir = resolve(args.anchors ?? join(here, '..', '..', 'shared', 'anchors'));

/** mqtt@5 in a cache directory (the anchor's client; the repository keeps the SDK's mqtt@4). */
function mqtt5Dir(): string {
  const dir = join(tmpdir(), 'strata-bench-deps');
  const pkg = join(dir, 'node_modules', 'mqtt', 'package.json');
  if (!existsSync(pkg) || !/^5\./.test(JSON.parse(readFileSync(pkg, 'utf8')).version)) {
    mkdirSync(dir, { recursive: true });
    process.stderr.write(`installing mqtt@5 for the benchmark clients into ${dir}\n`);
    execFileSync(
      'npm',
      ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--prefix', dir, 'mqtt@5'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
  }
  return dir;
}

interface Result {
  msgs: number;
  pubs: number;
  size: number;
  publish_s: number;
  end_to_end_s: number;
  msgs_per_s: number;
  p50_ms: number;
  p99_ms: number;
  p999_ms: number;
  /** Strata only: p99 of the messages sent after the first 2 s, and the worst latency of each second. */
  p99_after_2s_ms?: number;
  worst_ms_by_second?: string;
  /** Strata only: the worst latency of each 100 ms of the first 2 s (where a start-up tail shows). */
  worst_ms_by_100ms_first_2s?: string;
  max_ms: number;
  /** CPU per message of each process (the anchor: its brokers together, over the whole client run). */
  cpu_us_per_msg?: Record<string, number>;
  /** Strata only: the disk's fdatasync times just before the round (common.ts diskSyncProbe). */
  disk_fdatasync_ms?: { p50: number; p99: number };
}

async function runStrata(mqtt: any): Promise<
  Result & {
    cpu_us_per_msg: Record<string, number>;
    cpu_us_per_msg_after_2s: Record<string, number>;
    cpu_us_per_msg_first_2s: Record<string, number>;
  }
> {
  const profiled = (name: string) =>
    args.profile ? ['--cpu-prof', `--cpu-prof-dir=${resolve(args.profile, name)}`] : undefined;
  const hub = await startHubProcess({ nodeArgs: profiled('hub') });
  const forget = [removeAtExit(hub.dataDir)];
  const layers: EdgeSetup[] = [];
  const gws: GatewayProcess[] = [];
  try {
    for (let i = 0; i < LAYERS; i++) {
      layers.push(
        await setupLayer(hub, { gatewayId: `bench-l${i + 1}`, address: randomLoopback(), parent: layers[i - 1] }),
      );
      forget.push(removeAtExit(layers[i]!.dir));
    }
    for (const [i, l] of layers.entries()) {
      gws.push(
        await startGatewayProcess({
          configPath: l.configPath,
          dataDir: l.dataDir,
          address: l.address,
          nodeArgs: profiled(`l${i + 1}`),
          env: { UpstreamProtocol: args.upstream! },
        }),
      );
    }
    const result = await measure(mqtt, hub, layers, gws);
    if (traceDir) {
      // Warnings say whether a wait was a retry (a failed batch backs its pump off).
      for (const [i, g] of gws.entries()) {
        const warned = g
          .output()
          .split('\n')
          .filter((l) => /"level":(40|50)/.test(l));
        if (warned.length > 0)
          process.stderr.write(`l${i + 1} warned ${warned.length}x, first: ${warned.slice(0, 3).join('\n')}\n`);
      }
    }
    return result;
  } finally {
    // Bottom first: a parent going first would only make its children reconnect.
    for (const g of [...gws].reverse()) await g.stop();
    await hub.stop();
    for (const l of layers) await l.cleanup();
    for (const f of forget) f();
  }
}

/**
 * Waits until the bottom gateway's scope cache, fed from its parent (and that one's from its
 * own), holds every leaf: then no connect waits on an identity lookup up the chain, and a feed
 * that never arrives is an error here rather than a slow first second in the figures. Read
 * straight from the gateway's scope database (read-only; WAL lets it read beside the writer).
 */
async function waitForScope(edge: EdgeSetup, ids: string[], timeoutMs = 60_000): Promise<void> {
  const path = edgeFiles(edge.dataDir).scopeDb;
  const deadline = Date.now() + timeoutMs;
  let have = 0;
  for (;;) {
    if (existsSync(path)) {
      const db = openNodeDb(path, { readonly: true });
      try {
        have = (
          db.sqlite
            .prepare('SELECT count(*) AS n FROM scope_devices WHERE device_id IN (SELECT value FROM json_each(?))')
            .get(JSON.stringify(ids)) as { n: number }
        ).n;
      } catch {
        // The gateway has not made its tables yet.
      } finally {
        db.close();
      }
    }
    if (have === ids.length) return;
    if (Date.now() > deadline)
      throw new Error(
        `the scope feed brought ${have} of ${ids.length} leaves to ${edge.gatewayId} within ${timeoutMs / 1000} s`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function measure(
  mqtt: any,
  hub: HubProcess,
  layers: EdgeSetup[],
  gws: GatewayProcess[],
): Promise<
  Result & {
    cpu_us_per_msg: Record<string, number>;
    cpu_us_per_msg_after_2s: Record<string, number>;
    cpu_us_per_msg_first_2s: Record<string, number>;
  }
> {
  const edge = layers[layers.length - 1]!;
  const address = edge.address;
  const { ids, key } = await createLeavesBulk(edge, 'bench-leaf-', PUBS);
  const cs = Object.fromEntries(
    hub.connectionString.split(';').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]),
  );
  let got = 0;
  const lat: number[] = [];
  // Latencies by the second they were sent in: is a tail one start-up stall or steady?
  const bySecond: number[][] = [];
  const first2sBy100ms: number[] = [];
  let t0 = Infinity;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  const reader = followEvents(
    hub.address,
    hub.caPem,
    { host: cs.HostName!, key: cs.SharedAccessKey!, policy: cs.SharedAccessKeyName! },
    (body) => {
      if (body.length < 8) return;
      const stamped = Number(body.readBigUInt64BE(0));
      lat.push(Date.now() - stamped);
      (bySecond[Math.max(0, Math.floor((stamped - t0) / 1000))] ??= []).push(Date.now() - stamped);
      const tenth = Math.max(0, Math.floor((stamped - t0) / 100));
      if (tenth < 20) first2sBy100ms[tenth] = Math.max(first2sBy100ms[tenth] ?? 0, Date.now() - stamped);
      if (++got === MSGS) done();
    },
  );
  await reader.ready;
  const tScope = Date.now();
  await waitForScope(edge, ids);
  process.stderr.write(`scope feed: ${ids.length} leaves known at ${edge.gatewayId} after ${Date.now() - tScope} ms\n`);
  // With --trace: each process's CPU every 100 ms from the leaves' connecting to 3 s into the
  // sending, to tell a start-up cascade or cold code from a backlog.
  const cpuTimeline: Array<[number, number[]]> = [];
  const tracedPids = [hub.proc.pid!, ...gws.map((g) => g.proc.pid!)];
  const cpuSampler = traceDir
    ? setInterval(() => {
        cpuTimeline.push([Date.now(), [...tracedPids.map(cpuMsOf), process.cpuUsage().user / 1000]]);
        if (Date.now() > t0 + 3000) clearInterval(cpuSampler);
      }, 100)
    : undefined;
  const pubs = await Promise.all(
    ids.map((id) =>
      mqtt.connectAsync(`mqtts://${address}:8883`, {
        ca: edge.rootPem,
        clientId: id,
        username: `${hub.hostname}/${id}/?api-version=2021-04-12`,
        password: createSasToken(`${hub.hostname}/devices/${id}`, key, Math.floor(Date.now() / 1000) + 3600),
        protocolVersion: 4,
        clean: true,
        reconnectPeriod: 0,
        rejectUnauthorized: true,
      }),
    ),
  );
  const procs: Array<[string, number]> = [
    ['hub', hub.proc.pid!],
    ...gws.map((g, i): [string, number] => [`l${i + 1}`, g.proc.pid!]),
  ];
  const cpu0 = procs.map(([, pid]) => cpuMsOf(pid));
  const own0 = process.cpuUsage();
  t0 = Date.now();
  // CPU from the steady-state mark on, as for the latency: the first seconds also pay for JIT
  // compiling and the links every layer opens for the leaves that just connected.
  let cpuSteady0: number[] | undefined;
  const steadyMark = setTimeout(() => {
    cpuSteady0 = procs.map(([, pid]) => cpuMsOf(pid));
  }, STEADY_AFTER_S * 1000);
  await Promise.all(
    pubs.map(async (c: any, i: number) => {
      const per = Math.floor(MSGS / PUBS) + (i < MSGS % PUBS ? 1 : 0);
      let inflight: Array<Promise<unknown>> = [];
      // Open loop: publisher i's k-th message is due at t0 + (k + i/PUBS) * period, whatever
      // the acknowledgements are doing (the same schedule as chain-bench.mjs with RATE).
      const period = RATE > 0 ? (PUBS * 1000) / RATE : 0;
      const start = t0 + (period * i) / PUBS;
      for (let k = 0; k < per; k++) {
        if (RATE > 0) {
          const w = start + k * period - Date.now();
          if (w > 0) await new Promise((r) => setTimeout(r, w));
        }
        const p = Buffer.alloc(SIZE);
        p.writeBigUInt64BE(BigInt(Date.now()), 0);
        inflight.push(c.publishAsync(`devices/${ids[i]}/messages/events/`, p, { qos: 1 }));
        if (RATE === 0 && inflight.length >= WINDOW) {
          await Promise.all(inflight);
          inflight = [];
        }
      }
      await Promise.all(inflight);
    }),
  );
  const tPub = Date.now();
  const timeout = new Promise<never>((_, rej) =>
    setTimeout(() => rej(new Error(`timeout: ${got}/${MSGS} arrived`)), 180_000).unref(),
  );
  await Promise.race([all, timeout]);
  const t1 = Date.now();
  clearTimeout(steadyMark);
  const cpuEnd = procs.map(([, pid]) => cpuMsOf(pid));
  const cpu_us_per_msg: Record<string, number> = {};
  procs.forEach(([name], i) => (cpu_us_per_msg[name] = Math.round(((cpuEnd[i]! - cpu0[i]!) * 1000) / MSGS)));
  const own = process.cpuUsage(own0);
  cpu_us_per_msg.bench_clients = Math.round((own.user + own.system) / MSGS);
  const worstBySecond = bySecond.map((xs) => (xs ? xs.reduce((a, b) => Math.max(a, b)) : NaN));
  if (traceDir) {
    // The processes write their figures every second.
    await new Promise((r) => setTimeout(r, 1500));
    for (const [name, pid] of procs) {
      const f = join(traceDir, `${pid}.json`);
      if (existsSync(f)) process.stderr.write(`trace ${name}: ${relativeTo(t0, readFileSync(f, 'utf8'))}\n`);
    }
    clearInterval(cpuSampler);
    const names = [...procs.map(([name]) => name), 'bench(user)'];
    process.stderr.write('CPU ms per 100 ms (ms from the first send):\n');
    for (let i = 1; i < cpuTimeline.length; i++) {
      const [t, now] = cpuTimeline[i]!;
      const before = cpuTimeline[i - 1]![1];
      const used = now.map((v, j) => Math.round(v - before[j]!));
      process.stderr.write(
        `  ${t - t0}: ${names.map((n, j) => `${n} ${used[j]}`).join(' ')} total ${used.reduce((a, b) => a + b)}\n`,
      );
    }
  }
  reader.stop();
  await Promise.all(pubs.map((c: any) => c.endAsync()));
  lat.sort((a, b) => a - b);
  const steady = bySecond
    .slice(STEADY_AFTER_S)
    .flat()
    .sort((a, b) => a - b);
  const cpu_us_per_msg_after_2s: Record<string, number> = {};
  if (cpuSteady0 && steady.length > 0)
    procs.forEach(
      ([name], i) =>
        (cpu_us_per_msg_after_2s[name] = Math.round(((cpuEnd[i]! - cpuSteady0![i]!) * 1000) / steady.length)),
    );
  // The same for the messages sent in the first 2 s: what cold code and start-up work cost.
  const cpu_us_per_msg_first_2s: Record<string, number> = {};
  const early = lat.length - steady.length;
  if (cpuSteady0 && early > 0)
    procs.forEach(
      ([name], i) => (cpu_us_per_msg_first_2s[name] = Math.round(((cpuSteady0![i]! - cpu0[i]!) * 1000) / early)),
    );
  return {
    msgs: MSGS,
    pubs: PUBS,
    size: SIZE,
    publish_s: (tPub - t0) / 1000,
    end_to_end_s: (t1 - t0) / 1000,
    msgs_per_s: Math.round(MSGS / ((t1 - t0) / 1000)),
    p50_ms: quantile(lat, 0.5),
    p99_ms: quantile(lat, 0.99),
    p999_ms: quantile(lat, 0.999),
    // A short run's tail can be its first seconds (code warming up, links opening); this one is not.
    p99_after_2s_ms: quantile(steady, 0.99),
    worst_ms_by_second: worstBySecond.join(' '),
    worst_ms_by_100ms_first_2s: Array.from(first2sBy100ms, (x) => x ?? NaN).join(' '),
    max_ms: lat[lat.length - 1] ?? NaN,
    cpu_us_per_msg,
    cpu_us_per_msg_after_2s,
    cpu_us_per_msg_first_2s,
  };
}

/** A process's trace with its times (stalls, spans) as ms from the first send, `t0`. */
function relativeTo(t0: number, json: string): string {
  const r = JSON.parse(json) as Record<string, any>;
  if (Array.isArray(r.stalls)) r.stalls = r.stalls.map(([t, ms]: [number, number]) => `${t - t0}:${ms}`).join(' ');
  // Where the first send falls on the monotonic clock of the process's V8 CPU profile (us).
  if (r.clocks) r.clocks = { t0MonoUs: r.clocks.monoUs - (r.clocks.epochMs - t0) * 1000 };
  for (const v of Object.values(r))
    if (v && Array.isArray(v.span)) v.span = v.span.map((t: number) => t - t0).join('..');
  // Per second (from t0, whole seconds): count/mean/max.
  for (const v of Object.values(r))
    if (v && Array.isArray(v.perSecond))
      v.perSecond = v.perSecond
        .map(([t, n, mean, max]: number[]) => `${Math.floor((t! - t0) / 1000)}s:${n}/${mean}/${max}`)
        .join(' ');
  return JSON.stringify(r);
}

async function runAnchor(depsDir: string): Promise<Result | { error: string }> {
  const chain = join(anchorsDir, 'mosquitto-chain.sh');
  const bench = join(anchorsDir, 'chain-bench.mjs');
  if (!existsSync(chain) || !existsSync(bench)) return { error: `no anchors at ${anchorsDir} (give --anchors DIR)` };
  try {
    execFileSync('mosquitto', ['-h'], { stdio: 'ignore' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      return { error: 'mosquitto is not installed: apt-get install -y mosquitto' };
  }
  const dir = await mkdtemp(join(tmpdir(), 'strata-anchor-'));
  const brokerPids = (): number[] => {
    try {
      return readFileSync(join(dir, 'pids'), 'utf8').split('\n').filter(Boolean).map(Number);
    } catch {
      return []; // never started
    }
  };
  const signalBrokers = (sig: NodeJS.Signals): number[] =>
    brokerPids().filter((pid) => {
      try {
        process.kill(pid, sig);
        return true;
      } catch {
        return false; // gone
      }
    });
  let benchProc: ReturnType<typeof spawn> | undefined;
  const undo = () => {
    benchProc?.kill('SIGKILL');
    signalBrokers('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  atExit.add(undo);
  const base = 20000 + Math.floor(Math.random() * 20000);
  // chain-bench.mjs imports 'mqtt'; resolve it from the cache directory (mqtt@5).
  const hooks = join(dir, 'hooks.mjs');
  writeFileSync(
    hooks,
    `export async function resolve(s, c, next) { return s === 'mqtt' ? next(s, { ...c, parentURL: ${JSON.stringify(pathToFileURL(join(depsDir, 'x.mjs')).href)} }) : next(s, c); }\n`,
  );
  const register = join(dir, 'register.mjs');
  writeFileSync(
    register,
    `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`,
  );
  try {
    execFileSync('bash', [chain, dir, String(LAYERS), String(base)], { stdio: 'ignore' });
    const brokersCpuMs = () => brokerPids().reduce((sum, pid) => sum + cpuMsOf(pid), 0);
    const brokersCpu0 = brokersCpuMs();
    const out = await new Promise<string>((resolveOut, reject) => {
      const p = (benchProc = spawn(
        process.execPath,
        [
          '--import',
          pathToFileURL(register).href,
          bench,
          join(dir, 'certs', 'ca.pem'),
          String(base + LAYERS),
          String(base),
          String(MSGS),
          String(PUBS),
          String(SIZE),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RATE: String(RATE) } },
      ));
      let text = '';
      p.stdout.on('data', (c: Buffer) => {
        text += c.toString();
        // The result line is all we need: its clients closing can take a minute under load.
        if (/^\{.*\}\n/m.test(text)) {
          resolveOut(text);
          p.kill('SIGTERM');
        }
      });
      p.on('error', reject);
      p.on('close', () => resolveOut(text));
    });
    const line = out.trim().split('\n').pop() ?? '';
    // The brokers' CPU over the whole client run (their connections included), for comparison.
    const brokersUs = (brokersCpuMs() - brokersCpu0) * 1000;
    try {
      const r = JSON.parse(line) as Result;
      return { ...r, cpu_us_per_msg: { brokers: Math.round(brokersUs / MSGS) } };
    } catch {
      return { error: `chain-bench: ${line}` };
    }
  } finally {
    // Let the brokers exit (they write their persistence files on SIGTERM) before their directory goes.
    let running = signalBrokers('SIGTERM');
    for (const deadline = Date.now() + 5000; running.length > 0 && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 50));
      // Exited brokers are children of whatever reaps orphans here; a zombie counts as gone.
      running = running.filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0] !== 'Z';
        } catch {
          return false;
        }
      });
    }
    signalBrokers('SIGKILL');
    await rm(dir, { recursive: true, force: true });
    atExit.delete(undo);
  }
}

const traceDir = args.trace ? await mkdtemp(join(tmpdir(), 'strata-trace-')) : undefined;
if (traceDir) {
  // Inherited by the hub and gateway processes the helpers start.
  process.env.STRATA_LATENCY_TRACE = traceDir;
  removeAtExit(traceDir);
}
const depsDir = mqtt5Dir();
const mqtt = createRequire(join(depsDir, 'x.js'))('mqtt');
const path =
  ['leaf', ...Array.from({ length: LAYERS }, (_, i) => (LAYERS === 1 ? 'gateway' : `L${LAYERS - i}`)), 'hub'].join(
    ' -> ',
  ) +
  (args.upstream === 'Amqp' ? '' : ` (upstream ${args.upstream})`) +
  (RATE > 0 ? ` (open loop, ${RATE} msg/s offered)` : '');
const rounds: Array<{ strata: Result; anchor?: Result }> = [];
for (let round = 0; round < RUNS; round++) {
  // The disk's state beside each round: two fdatasyncs are on every message's way.
  const disk = diskSyncProbe();
  const strata = { ...(await runStrata(mqtt)), disk_fdatasync_ms: disk };
  process.stdout.write(`${JSON.stringify({ bench: `strata ${path}`, ...strata })}\n`);
  let anchor: Result | undefined;
  if (!args['skip-anchor']) {
    const a = await runAnchor(depsDir);
    process.stdout.write(
      `${JSON.stringify({ bench: `mosquitto chain, ${LAYERS} bridge${LAYERS === 1 ? '' : 's'} (anchor)`, ...a })}\n`,
    );
    if ('msgs_per_s' in a) {
      anchor = a;
      process.stdout.write(
        `${JSON.stringify({ ratio_msgs_per_s: Number((strata.msgs_per_s / a.msgs_per_s).toFixed(2)), ratio_p99: Number((strata.p99_ms / a.p99_ms).toFixed(2)) })}\n`,
      );
    }
  }
  rounds.push({ strata, anchor });
}
if (RUNS > 1) {
  const paired = rounds.filter((r): r is { strata: Result; anchor: Result } => r.anchor !== undefined);
  process.stdout.write(
    `${JSON.stringify({
      runs: RUNS,
      strata_msgs_per_s_median: median(rounds.map((r) => r.strata.msgs_per_s)),
      strata_p99_ms_median: median(rounds.map((r) => r.strata.p99_ms)),
      strata_p99_after_2s_ms_median: median(rounds.map((r) => r.strata.p99_after_2s_ms ?? NaN)),
      disk_fdatasync_p99_ms_median: Number(
        median(rounds.map((r) => r.strata.disk_fdatasync_ms?.p99 ?? Number.NaN)).toFixed(2),
      ),
      ...(paired.length > 0
        ? {
            anchor_msgs_per_s_median: median(paired.map((r) => r.anchor.msgs_per_s)),
            anchor_p99_ms_median: median(paired.map((r) => r.anchor.p99_ms)),
            ratio_p99_median: Number(median(paired.map((r) => r.strata.p99_ms / r.anchor.p99_ms)).toFixed(2)),
            ratio_msgs_per_s_median: Number(
              median(paired.map((r) => r.strata.msgs_per_s / r.anchor.msgs_per_s)).toFixed(2),
            ),
          }
        : {}),
    })}\n`,
  );
}
process.exit(0);
