import { mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { readHubState, readLocalHub, withHttpsPort } from '../hub/local.ts';
import { ServiceClient } from '../hub/service-client.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import { ensureRootSet, issueEdgeCa, issueHubServerCert } from './certs.ts';
import { removeProcessModules } from '../edge/agent-host.ts';
import { writeGatewayConfig } from './gateway-config.ts';
import { provisionIdentities, type ProvisionedIdentities } from './identities.ts';
import { checkPortsFree, chooseHttpsPort } from './preflight.ts';
import { httpGet } from './probe.ts';
import { isRunning, logTail, spawnStrata, stopProcesses, type Spawned } from './processes.ts';
import { readSensorStatus, type SensorConfig } from './sensor-files.ts';
import { HUB_PARENT, parseTopology, type Topology } from './spec.ts';
import { httpsHost, processesTopDown, readState, topologyPaths, writeState, type TopologyState } from './state.ts';

/**
 * `strata topology up`: certificates, hub, identities, gateways top layer first (each healthy
 * before the next layer starts), then the sensors. A failure part-way stops what was started,
 * so a failed `up` leaves nothing running.
 */

const log = childLog('topology');

export interface UpOptions {
  file: string;
  dir: string;
  /** Progress lines for a person. */
  say?: (line: string) => void;
  /** Checked between steps; an aborted `up` stops what it started. */
  signal?: AbortSignal;
  /** Per node, how long to wait for it to become ready. */
  readyTimeoutMs?: number;
  graceMs?: number;
  /** Log level of the node processes (their logs go to DIR/logs). */
  logLevel?: string;
}

export interface UpResult {
  state: TopologyState;
  /** The topology was already running: nothing was started. */
  alreadyUp: boolean;
  /** Sensors that had not connected when `up` finished waiting (they keep trying). */
  slowSensors: string[];
}

export function readTopologyFile(file: string): Topology {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new UserError(
        `topology file not found: ${file}`,
        'Give the path of a YAML file such as examples/topology.yaml',
      );
    throw new UserError(`cannot read the topology file ${file}: ${code ?? (err as Error).message}`);
  }
  return parseTopology(text, file);
}

/** How many of the state's processes are running. */
export function runningCount(state: TopologyState): { running: number; total: number } {
  const all = processesTopDown(state);
  return { running: all.filter((p) => isRunning(p.record)).length, total: all.length };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class Aborted extends UserError {
  constructor() {
    super('interrupted');
  }
}

async function waitFor(
  what: string,
  proc: Spawned,
  logFile: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  ready: () => Promise<boolean> | boolean,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (signal?.aborted) throw new Aborted();
    if (proc.hasExited()) {
      throw new UserError(
        `${what} stopped while starting (${await proc.exited}). The end of its log (${logFile}):\n${logTail(logFile)}`,
      );
    }
    if (await ready()) return;
    if (Date.now() > deadline) {
      throw new UserError(
        `${what} was not ready within ${Math.round(timeoutMs / 1000)} s. The end of its log (${logFile}):\n${logTail(logFile)}`,
      );
    }
    await sleep(100);
  }
}

async function healthy(host: string, ca: string): Promise<boolean> {
  return (await health(host, ca)) !== undefined;
}

/** The /health body of a node (`host` is ADDRESS or ADDRESS:PORT) that answers 200, else undefined. */
async function health(host: string, ca: string): Promise<Record<string, unknown> | undefined> {
  try {
    const res = await httpGet(`https://${host}/health`, { ca, timeoutMs: 1000 });
    if (res.status !== 200) return undefined;
    try {
      return JSON.parse(res.body) as Record<string, unknown>;
    } catch {
      return {};
    }
  } catch {
    return undefined;
  }
}

/** How long `up` waits for a healthy gateway's link to its parent before going on without it. */
const UPSTREAM_WAIT_MS = 15_000;

export async function topologyUp(o: UpOptions): Promise<UpResult> {
  const say = o.say ?? (() => undefined);
  const readyTimeoutMs = o.readyTimeoutMs ?? 60_000;
  const file = resolve(o.file);
  const topology = readTopologyFile(o.file);
  const paths = topologyPaths(o.dir);

  const previous = readState(o.dir);
  if (previous) {
    const { running, total } = runningCount(previous);
    if (running === total) return { state: previous, alreadyUp: true, slowSensors: [] };
    if (running > 0) {
      throw new UserError(
        `the topology in ${paths.root} is partly running (${running} of ${total} nodes)`,
        `Run \`strata topology down --dir ${o.dir}\` first, then up again`,
      );
    }
  }
  const check = () => {
    if (o.signal?.aborted) throw new Aborted();
  };

  const https = await chooseHttpsPort(topology);
  if (https.fallback) say(https.fallback);
  await checkPortsFree(topology, https.port);
  check();
  mkdirSync(paths.root, { recursive: true });
  say(`certificates in ${paths.certs}`);
  const { set, created } = await ensureRootSet(paths.certs);
  log.debug(
    { rootCa: set.rootCert, created },
    created ? 'created the root CA of the topology' : 'reusing the root CA of the topology',
  );
  const hubCert = await issueHubServerCert(paths.certs, set, topology.hub.address);
  const edgeCas = new Map<string, Awaited<ReturnType<typeof issueEdgeCa>>>();
  for (const g of topology.gateways) edgeCas.set(g.id, await issueEdgeCa(paths.certs, set, g.id));
  check();

  const logFile = (name: string) => join(paths.logs, `${name}.log`);
  const state: TopologyState = {
    file,
    name: topology.name,
    startedAt: new Date().toISOString(),
    rootCa: set.rootCert,
    complete: false,
    ...(https.port !== 443 ? { httpsPort: https.port } : {}),
    hub: { address: topology.hub.address, dataDir: paths.hubDir, marker: paths.hubDir, log: logFile('hub') },
    gateways: topology.gateways.map((g) => {
      const dir = paths.gatewayDir(g.id);
      const config = join(dir, 'config.toml');
      return {
        id: g.id,
        parent: g.parent,
        address: g.address,
        layer: g.layer,
        config,
        dataDir: join(dir, 'data'),
        marker: config,
        log: logFile(`gateway-${g.id}`),
      };
    }),
    sensors: topology.devices.map((d) => {
      const dir = paths.sensorDir(d.id);
      const config = join(dir, 'sensor.json');
      return {
        id: d.id,
        parent: d.parent,
        protocol: d.protocol,
        intervalMs: d.intervalMs,
        config,
        statusFile: join(dir, 'status.json'),
        marker: config,
        // The sensors under one gateway share a process, and so its log.
        log: logFile(`sensors-${d.parent}`),
      };
    }),
  };
  writeState(o.dir, state);
  const env = { STRATA_LOG_LEVEL: o.logLevel ?? process.env.STRATA_LOG_LEVEL ?? 'info' };

  try {
    // --- hub ---
    say(`hub on ${topology.hub.address} (data: ${paths.hubDir})`);
    const hubProc = spawnStrata(
      [
        'hub',
        'start',
        '--data',
        paths.hubDir,
        '--hostname',
        topology.hub.address,
        '--bind',
        topology.hub.address,
        '--tls-cert',
        hubCert.fullChain,
        '--tls-key',
        hubCert.key,
        '--trust',
        set.rootCert,
        '--https-port',
        String(https.port),
      ],
      state.hub.log,
      env,
    );
    state.hub.pid = hubProc.pid;
    writeState(o.dir, state);
    await waitFor(
      'the hub',
      hubProc,
      state.hub.log,
      readyTimeoutMs,
      o.signal,
      () => readHubState(paths.hubDir)?.pid === hubProc.pid,
    );
    await waitFor('the hub', hubProc, state.hub.log, readyTimeoutMs, o.signal, () =>
      healthy(httpsHost(state, topology.hub.address), set.rootPem),
    );

    // --- identities ---
    const local = readLocalHub(paths.hubDir);
    const client = new ServiceClient(withHttpsPort(local.connectionString, local.httpsPort), { ca: set.rootPem });
    let identities: ProvisionedIdentities;
    try {
      identities = await provisionIdentities(client, local.hostname, topology);
    } finally {
      client.close();
    }
    say(
      `identities: ${topology.gateways.length} IoT Edge devices, ${topology.devices.length} leaf devices, routes FROM /messages/* INTO $upstream`,
    );
    for (const g of topology.gateways.filter((x) => x.modules))
      say(
        `deployment of ${g.id}: modules ${g.modules!.map((m) => m.name).join(', ') || 'none'}, ${g.routes ? 'its own routes' : 'routes to $upstream'}`,
      );
    check();

    // --- gateways, a layer at a time ---
    const addressOf = new Map(topology.gateways.map((g) => [g.id, g.address]));
    const upstreamOf = new Map(topology.gateways.map((g) => [g.id, g.upstream]));
    const withModules = new Set(topology.gateways.filter((g) => g.modules).map((g) => g.id));
    const layers = [...new Set(state.gateways.map((g) => g.layer))].sort((a, b) => a - b);
    for (const layer of layers) {
      const inLayer = state.gateways.filter((g) => g.layer === layer);
      await Promise.all(
        inLayer.map(async (g) => {
          const edgeCa = edgeCas.get(g.id)!;
          writeGatewayConfig(g.config, {
            hostname: g.address,
            parentHostname: g.parent === HUB_PARENT ? undefined : addressOf.get(g.parent),
            trustBundleCert: set.rootCert,
            connectionString: identities.gateways.get(g.id)!,
            edgeCaCert: edgeCa.fullChain,
            edgeCaKey: edgeCa.key,
            upstreamProtocol: upstreamOf.get(g.id),
            metricsBind: g.address,
            dataDir: g.dataDir,
            agent: withModules.has(g.id),
            ...(https.port !== 443 ? { httpsPort: https.port } : {}),
            source: file,
          });
          mkdirSync(g.dataDir, { recursive: true });
          const proc = spawnStrata(
            ['edge', 'start', '--config', g.config, '--data', g.dataDir, '--bind', g.address],
            g.log,
            env,
          );
          g.pid = proc.pid;
          writeState(o.dir, state);
          await waitFor(`gateway ${g.id}`, proc, g.log, readyTimeoutMs, o.signal, () =>
            healthy(httpsHost(state, g.address), set.rootPem),
          );
          // The layer below authenticates through this one, so give its link up a moment to come up.
          const linked = async () =>
            ((await health(httpsHost(state, g.address), set.rootPem))?.upstream as { connected?: unknown } | undefined)
              ?.connected === true;
          try {
            await waitFor(`gateway ${g.id}`, proc, g.log, Math.min(readyTimeoutMs, UPSTREAM_WAIT_MS), o.signal, linked);
            say(`gateway ${g.id} (layer ${g.layer}, parent ${g.parent}) on ${g.address}`);
          } catch (err) {
            if (proc.hasExited() || o.signal?.aborted) throw err;
            say(
              `gateway ${g.id} (layer ${g.layer}) on ${g.address} is running but not connected to its parent ${g.parent} yet (see ${g.log}); it keeps trying`,
            );
          }
        }),
      );
    }

    // --- sensors ---
    // The device SDK's AMQP client sets the TLS server name to the host even when it is an IP
    // address (Node's DEP0123); harmless here (the gateway's certificate names the IP), so not shown.
    // (--disable-warning exists from Node 20.11.)
    const sensorEnv = process.allowedNodeEnvironmentFlags.has('--disable-warning')
      ? { ...env, NODE_OPTIONS: [process.env.NODE_OPTIONS, '--disable-warning=DEP0123'].filter(Boolean).join(' ') }
      : env;
    for (const s of state.sensors) {
      const config: SensorConfig = {
        deviceId: s.id,
        connectionString: identities.devices.get(s.id)!,
        protocol: s.protocol,
        intervalMs: s.intervalMs,
        caFile: set.rootCert,
        statusFile: s.statusFile,
      };
      mkdirSync(dirname(s.config), { recursive: true, mode: 0o700 });
      writeFileSync(s.config, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
      chmodSync(s.config, 0o600);
    }
    // One process for the sensors under each gateway, not one each: a Node process with the SDK
    // costs ~150 MB, and a gateway's sensors come and go with it anyway.
    const procOf = new Map<string, Spawned>();
    for (const parent of new Set(state.sensors.map((s) => s.parent))) {
      const group = state.sensors.filter((s) => s.parent === parent);
      const proc = spawnStrata(
        ['topology', 'sensor', '--config', ...group.map((s) => s.config)],
        group[0]!.log,
        sensorEnv,
      );
      for (const s of group) {
        s.pid = proc.pid;
        procOf.set(s.id, proc);
      }
    }
    const procs = state.sensors.map((s) => procOf.get(s.id)!);
    writeState(o.dir, state);
    const slowSensors: string[] = [];
    await Promise.all(
      state.sensors.map(async (s, i) => {
        const connected = () => {
          const st = readSensorStatus(s.statusFile);
          return st !== undefined && st.pid === s.pid && (st.state === 'connected' || st.sent > 0);
        };
        try {
          await waitFor(`sensor ${s.id}`, procs[i]!, s.log, Math.min(readyTimeoutMs, 20_000), o.signal, connected);
          say(`sensor ${s.id} (${s.protocol}, every ${s.intervalMs} ms) through ${s.parent}`);
        } catch (err) {
          if (procs[i]!.hasExited() || o.signal?.aborted) throw err;
          slowSensors.push(s.id);
          say(`sensor ${s.id} has not connected yet (see ${s.log}); it keeps trying`);
        }
      }),
    );

    state.complete = true;
    writeState(o.dir, state);
    return { state, alreadyUp: false, slowSensors };
  } catch (err) {
    const started = processesTopDown(state)
      .reverse()
      .map((p) => p.record)
      .filter((r) => r.pid !== undefined);
    await stopProcesses(started, o.graceMs ?? 10_000);
    for (const g of state.gateways) await removeProcessModules(g.dataDir).catch(() => undefined);
    if (err instanceof Aborted) throw new UserError('interrupted: stopped everything `up` had started');
    if (err instanceof UserError)
      throw new UserError(`${err.message}\n(stopped everything \`up\` had started; logs in ${paths.logs})`, err.hint);
    throw err;
  }
}
