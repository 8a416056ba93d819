import { InvalidArgumentError, type Command } from 'commander';
import { isAbsolute, relative, resolve } from 'node:path';
import { childLog } from '../util/log.ts';
import { localHubAccess } from './hub-access.ts';
import { action } from './run.ts';
import { topologyDown, requireState } from '../topology/down.ts';
import { readSensorConfig } from '../topology/sensor-files.ts';
import { DEFAULT_TOPOLOGY_DIR, httpsHost, topologyPaths, type TopologyState } from '../topology/state.ts';
import { TABLE_LEGEND, ratesBetween, renderTable, takeSnapshot } from '../topology/status.ts';
import { watchTopology } from '../topology/watch.ts';

/**
 * `strata topology up|down|status|validate`: a whole hierarchy (hub, gateways in layers,
 * simulated sensors) declared in one YAML file and run on this machine's loopback addresses.
 */

const log = childLog('cli-topology');
/** `status` looks twice, this far apart, for the rates: long enough to span a sensor's interval. */
const STATUS_WINDOW_MS = 2000;

function seconds(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+(\.\d+)?$/.test(value.trim()) || n <= 0 || n > 3600)
      throw new InvalidArgumentError(`${name} needs a number of seconds from 0 to 3600.`);
    return n * 1000;
  };
}

/** A path as the user would type it: relative when under the current directory. */
function pretty(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel === '' ? '.' : rel.startsWith('..') || isAbsolute(rel) ? path : rel;
}
const shown = (dir: string) => pretty(topologyPaths(dir).root);
const out = (line: string) => process.stdout.write(`${line}\n`);

function summary(state: TopologyState, dir: string): string {
  return [
    `  hub        https://${httpsHost(state, state.hub.address)} (MQTT 8883, AMQP 5671, HTTPS ${state.httpsPort ?? 443})`,
    ...state.gateways.map(
      (g) => `  ${'  '.repeat(g.layer - 1)}gateway ${g.id} on ${g.address} (layer ${g.layer}, parent ${g.parent})`,
    ),
    `  sensors    ${state.sensors.map((s) => `${s.id} (${s.protocol} via ${s.parent})`).join(', ') || 'none'}`,
    `  root CA    ${pretty(state.rootCa)}`,
    `  logs       ${pretty(topologyPaths(dir).logs)}/`,
    `  status:    strata topology status --dir ${shown(dir)}`,
    `  stop:      strata topology down --dir ${shown(dir)}`,
  ].join('\n');
}

/**
 * Aborts on the first SIGINT, SIGTERM or SIGHUP (a closed terminal), and, with `orphaned`, when
 * this process's parent goes away (npm killed with SIGKILL): the nodes are detached, so nothing
 * else would stop them. Later signals do not exit: under `npm start` one Ctrl-C arrives twice
 * (from the terminal and forwarded by npm), and leaving mid-way would strand running nodes.
 * Stopping is bounded anyway (SIGKILL after the grace period).
 */
function interruptSignal(o: { orphaned?: boolean } = {}): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  let firstAt = 0;
  const onSignal = () => {
    if (!controller.signal.aborted) {
      firstAt = Date.now();
      controller.abort();
    } else if (Date.now() - firstAt > 1000) {
      process.stderr.write('still stopping the topology; nodes that do not stop get SIGKILL after the grace period\n');
    }
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, onSignal);
  const parent = process.ppid;
  const orphanCheck = o.orphaned
    ? setInterval(() => {
        if (process.ppid !== parent && !controller.signal.aborted) {
          log.warn({ parent }, 'the parent process is gone: stopping the topology');
          onSignal();
        }
      }, 1000)
    : undefined;
  orphanCheck?.unref();
  return {
    signal: controller.signal,
    dispose: () => {
      for (const s of signals) process.off(s, onSignal);
      if (orphanCheck) clearInterval(orphanCheck);
    },
  };
}

interface UpFlags {
  dir: string;
  watch?: boolean;
  timeout?: number;
  grace?: number;
}

async function up(file: string, flags: UpFlags): Promise<void> {
  const interrupt = interruptSignal({ orphaned: flags.watch === true });
  try {
    // up.ts brings the certificate toolkit; `topology env` and `status` start without it.
    const { topologyUp } = await import('../topology/up.ts');
    const result = await topologyUp({
      file,
      dir: flags.dir,
      say: (line) => out(`  ${line}`),
      signal: interrupt.signal,
      readyTimeoutMs: flags.timeout,
      graceMs: flags.grace,
    });
    const { state } = result;
    const nodes = 1 + state.gateways.length + state.sensors.length;
    if (result.alreadyUp)
      out(`the topology in ${shown(flags.dir)} is already up (${nodes} nodes running, from ${state.file})`);
    else
      out(
        `topology${state.name ? ` "${state.name}"` : ''} is up: hub, ${state.gateways.length} gateways, ${state.sensors.length} sensors\n${summary(state, flags.dir)}`,
      );
    if (!flags.watch) return;
    await watchTopology(state, { out: process.stdout, signal: interrupt.signal, ctrlC: 'Ctrl-C stops everything' });
    out('\nstopping the topology...');
    await down(flags.dir, flags.grace);
  } finally {
    interrupt.dispose();
  }
}

async function down(dir: string, graceMs?: number): Promise<void> {
  const report = await topologyDown(dir, graceMs, (line) => out(`  ${line}`));
  const total = report.stopped.length + report.killed.length + report.notRunning.length;
  if (report.stopped.length + report.killed.length === 0)
    out(`nothing was running in ${shown(dir)} (${total} nodes recorded)`);
  else
    out(
      `topology in ${shown(dir)} is down: ${report.stopped.length} stopped, ${report.killed.length} killed, ${report.notRunning.length} already stopped`,
    );
}

async function status(flags: { dir: string; json?: boolean; watch?: boolean }): Promise<void> {
  const state = requireState(flags.dir);
  if (flags.watch) {
    const interrupt = interruptSignal();
    try {
      await watchTopology(state, { out: process.stdout, signal: interrupt.signal, ctrlC: 'Ctrl-C leaves it running' });
    } finally {
      interrupt.dispose();
    }
    return;
  }
  const { runningCount } = await import('../topology/up.ts');
  const { running, total } = runningCount(state);
  const first = await takeSnapshot(state);
  // Rates need two looks; skip the second when nothing runs.
  let second = first;
  if (running > 0) {
    await new Promise((r) => setTimeout(r, STATUS_WINDOW_MS));
    second = await takeSnapshot(state);
  }
  const rates = ratesBetween(first, second);
  if (flags.json) {
    out(
      JSON.stringify(
        {
          dir: topologyPaths(flags.dir).root,
          file: state.file,
          running,
          total,
          nodes: second.nodes.map((n) => ({ ...n, ...rates.get(`${n.kind}:${n.id}`) })),
        },
        null,
        2,
      ),
    );
    return;
  }
  out(`topology${state.name ? ` "${state.name}"` : ''} from ${state.file}: ${running} of ${total} nodes running`);
  out(renderTable(second, rates, { notes: true }));
  out(`\n${TABLE_LEGEND}`);
}

/** A value quoted for sh: inside single quotes nothing is special but the quote itself. */
const shQuote = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;

async function printEnv(dir: string): Promise<void> {
  const state = requireState(dir);
  const hub = await localHubAccess(state.hub.dataDir);
  const ca = resolve(state.rootCa);
  const lines = [
    `# the topology${state.name ? ` "${state.name}"` : ''} in ${topologyPaths(dir).root}; use: eval "$(strata topology env)"`,
    `export STRATA_HUB_CONNECTION_STRING=${shQuote(hub.connectionString)}`,
    `export STRATA_CA=${shQuote(ca)}`,
    '# Node programs using the Azure IoT SDKs (leaf devices, modules) trust the root CA through this:',
    `export NODE_EXTRA_CA_CERTS=${shQuote(ca)}`,
    '# gateways (a leaf connects to its gateway: strata device connection-string ID --gateway ADDRESS):',
    ...state.gateways.map((g) => `#   ${g.id}  layer ${g.layer}  ${g.address}`),
  ];
  out(lines.join('\n'));
}

export function registerTopologyCommands(program: Command): void {
  const topology = program
    .command('topology')
    .description(
      'run a whole hierarchy (hub, gateway layers, simulated sensors) from one YAML file on loopback addresses',
    );

  topology
    .command('up')
    .argument('<file>', 'topology YAML file (see examples/topology.yaml)')
    .description(
      'make the certificates and identities, then start the hub, the gateways (top layer first) and the sensors',
    )
    .option('--dir <dir>', 'where everything is kept (certificates, data, logs, pids)', DEFAULT_TOPOLOGY_DIR)
    .option('--watch', 'then show a live summary every second; Ctrl-C brings everything down')
    .option('--timeout <seconds>', 'how long each node may take to become ready (default 60)', seconds('--timeout'))
    .option('--grace <seconds>', 'when stopping, how long before SIGKILL (default 10)', seconds('--grace'))
    .action(action(up));

  topology
    .command('down')
    .description('stop every node of the topology (SIGTERM, then SIGKILL after the grace period)')
    .option('--dir <dir>', 'the directory `up` used', DEFAULT_TOPOLOGY_DIR)
    .option('--grace <seconds>', 'how long before SIGKILL (default 10)', seconds('--grace'))
    .action(action((flags: { dir: string; grace?: number }) => down(flags.dir, flags.grace)));

  topology
    .command('status')
    .description(
      'each node: running or not, connected children, messages in/out per second, queue length, upstream state',
    )
    .option('--dir <dir>', 'the directory `up` used', DEFAULT_TOPOLOGY_DIR)
    .option('--json', 'print JSON for scripts')
    .option('--watch', 'redraw every second until Ctrl-C (which leaves the topology running)')
    .action(action(status));

  topology
    .command('env')
    .description(
      'print shell exports for another shell: the hub connection string, STRATA_CA and NODE_EXTRA_CA_CERTS (for leaf programs)',
    )
    .option('--dir <dir>', 'the directory `up` used', DEFAULT_TOPOLOGY_DIR)
    .addHelpText('after', '\nUse: eval "$(strata topology env)"   (run where `npm start` runs, or give --dir)')
    .action(action((flags: { dir: string }) => printEnv(flags.dir)));

  topology
    .command('validate')
    .argument('<file>', 'topology YAML file')
    .description('check a topology file without starting anything')
    .action(
      action(async (file: string) => {
        const { readTopologyFile } = await import('../topology/up.ts');
        const t = readTopologyFile(file);
        const layers = Math.max(0, ...t.gateways.map((g) => g.layer));
        out(
          `${file} is valid: hub on ${t.hub.address}, ${t.gateways.length} gateways in ${layers} layers, ${t.devices.length} sensors`,
        );
      }),
    );

  // Started by `up`, once for the sensors under each gateway (one Node process costs ~150 MB); not meant to be typed.
  topology
    .command('sensor', { hidden: true })
    .requiredOption('--config <files...>', 'sensor settings written by `up`, one file per sensor')
    .action(
      action(async (flags: { config: string[] }) => {
        const configs = flags.config.map(readSensorConfig);
        for (const config of configs)
          log.info(
            { deviceId: config.deviceId, protocol: config.protocol, intervalMs: config.intervalMs },
            'sensor starting',
          );
        // The device SDK loads only here, so other strata commands start without it.
        const { runSensor } = await import('../topology/sensor.ts');
        const stop = new AbortController();
        process.on('SIGTERM', () => stop.abort());
        process.on('SIGINT', () => stop.abort());
        await Promise.all(configs.map((config) => runSensor(config, stop.signal)));
        process.exit(0);
      }),
    );
}
