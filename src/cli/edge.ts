import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { ConfigError, formatDiagnostic } from '../edge/config.ts';
import type { GatewayNode } from '../edge/gateway.ts';
import { loadEdgeConfigFile } from '../edge/load-config.ts';
import {
  defaultEdgeDataDir,
  readAppliedConfig,
  readReloadStatus,
  runningGatewayPid,
  writeAppliedConfig,
  type ReloadStatus,
} from '../edge/local.ts';
import { UserError } from '../util/errors.ts';
import { childLog } from '../util/log.ts';
import { configuredDataDir, dataDirOfConfigFile } from './edge-data-dir.ts';
import { action } from './run.ts';

const log = childLog('cli-edge');

function port(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n > 65535)
      throw new InvalidArgumentError(`${name} needs a whole number from 0 to 65535 (0 picks a free port).`);
    return n;
  };
}

interface StartFlags {
  config?: string;
  data?: string;
  bind?: string;
  mqttPort?: number;
  amqpPort?: number;
  httpsPort?: number;
  metricsPort?: number;
}

/** Prints the warnings a refused config also had (the error lines go out as the command's error). */
function withConfigWarnings<T>(fn: () => Promise<T>): Promise<T> {
  return fn().catch((err: unknown) => {
    if (err instanceof ConfigError) {
      for (const d of err.diagnostics)
        if (d.level === 'warning') process.stderr.write(`${formatDiagnostic(err.file, d)}\n`);
    }
    throw err;
  });
}

function dataDirFor(flags: { data?: string }, deviceId: string | undefined, configured: string | undefined): string {
  if (flags.data) return resolve(flags.data);
  if (configured) return configured;
  if (!deviceId) {
    throw new UserError(
      'cannot tell which gateway this configuration is for: it has no [provisioning] device id',
      "Give the gateway's data directory with --data DIR",
    );
  }
  return resolve(defaultEdgeDataDir(deviceId));
}

/** `strata edge start` and `strata edge config apply`. */
export function registerEdgeCommands(program: Command): void {
  const edge =
    program.commands.find((c) => c.name() === 'edge') ??
    program
      .command('edge')
      .description('run an edge gateway: a transparent gateway between downstream devices and the hub');

  edge
    .command('start')
    .description('start the gateway of an edge device from its config.toml (validated first; errors name their line)')
    .option('--config <file>', 'the config.toml (default: the one `strata edge config apply` recorded in --data)')
    .option('--data <dir>', 'data directory (default: [strata] data_dir of the config, else ./.strata/edge-{deviceId})')
    .option('--bind <addr>', 'address to listen on (default: the hostname if it is an IP address, else 127.0.0.1)')
    .option('--mqtt-port <n>', 'MQTT over TLS port', port('--mqtt-port'), 8883)
    .option('--amqp-port <n>', 'AMQP over TLS port', port('--amqp-port'), 5671)
    .option(
      '--https-port <n>',
      'HTTPS port: /health, /v2/ and MQTT/AMQP over WebSockets (default 443, or [strata] https_port; devices dial 443)',
      port('--https-port'),
    )
    .option(
      '--metrics-port <n>',
      'Prometheus /metrics port (default 9600, or [strata] metrics_port); it listens on 127.0.0.1 unless [strata] metrics_bind names another address',
      port('--metrics-port'),
    )
    .addHelpText(
      'after',
      [
        '',
        'Environment:',
        '  MaxConnectedClients  default 100; [strata] max_connected_clients wins',
        '  UpstreamProtocol     Amqp (default) | AmqpWs | Mqtt | MqttWs; [strata] upstream_protocol wins',
        '    Amqp, AmqpWs: one connection to the parent for every identity; each message is stored',
        '      once upstream (batches name their origin, so a resend after a lost acknowledgement',
        '      is recognised).',
        '    Mqtt, MqttWs: one connection per identity with traffic (MQTT cannot multiplex); at least',
        '      once: a message whose acknowledgement was lost in a reconnect is sent again and may be',
        '      stored twice upstream. C2D rejects reach the parent as completions (MQTT has no reject).',
        '`strata edge config apply` (or SIGHUP) makes a running gateway re-read its configuration.',
      ].join('\n'),
    )
    .action(
      action(async (flags: StartFlags) => {
        let configPath = flags.config;
        if (!configPath && flags.data) configPath = readAppliedConfig(resolve(flags.data))?.configPath;
        if (!configPath) throw new UserError('no configuration given', 'Pass --config config.toml');
        // The gateway (servers, container runtime, metrics) is loaded only to start one.
        const { startGateway } = await import('../edge/gateway.ts');
        const node = await withConfigWarnings(() =>
          startGateway({
            configPath,
            // A config that names its data directory ([strata] data_dir) is started there.
            dataDir: flags.data ?? dataDirOfConfigFile(configPath),
            bind: flags.bind,
            ports: { mqtt: flags.mqttPort, amqp: flags.amqpPort, https: flags.httpsPort, metrics: flags.metricsPort },
            print: (line) => process.stdout.write(`${line}\n`),
          }),
        );
        process.stdout.write(`${[...node.summary(), 'Press Ctrl+C to stop.'].join('\n')}\n`);
        handleSignals(node);
      }),
    );

  const config =
    edge.commands.find((c) => c.name() === 'config') ??
    edge.command('config').description('the gateway configuration (config.toml)');
  config
    .command('apply')
    .description(
      'validate a config.toml and make the gateway use it; a running gateway re-reads it at once (hostname or Edge CA changes re-issue its server certificate without dropping connections)',
    )
    .requiredOption('--config <file>', 'the config.toml')
    .option(
      '--data <dir>',
      'data directory of the gateway (default: [strata] data_dir of the config, else ./.strata/edge-{deviceId})',
    )
    .option('--timeout <s>', 'how long to wait for a running gateway to report back', (v) => Number(v), 15)
    .action(
      action(async (flags: { config: string; data?: string; timeout: number }) => {
        const loaded = await withConfigWarnings(async () => loadEdgeConfigFile(flags.config));
        for (const d of loaded.diagnostics) process.stderr.write(`${formatDiagnostic(loaded.path, d)}\n`);
        const dataDir = dataDirFor(
          flags,
          loaded.config.provisioning?.deviceId,
          configuredDataDir(loaded.config, loaded.path),
        );
        mkdirSync(dataDir, { recursive: true });
        const requestId = randomUUID();
        writeAppliedConfig(dataDir, { configPath: loaded.path, requestId, appliedAt: new Date().toISOString() });
        const pid = runningGatewayPid(dataDir);
        if (pid === undefined) {
          process.stdout.write(
            `${loaded.path} is valid and recorded for the gateway in ${dataDir}; it is not running: \`strata edge start --data ${dataDir}\` uses it\n`,
          );
          return;
        }
        process.kill(pid, 'SIGHUP');
        const status = await waitForReload(dataDir, requestId, flags.timeout * 1000);
        if (!status)
          throw new UserError(
            `the gateway (pid ${pid}) did not report back within ${flags.timeout} s`,
            'Look at its log',
          );
        if (!status.ok)
          throw new UserError(`the running gateway refused the configuration:\n${status.errors.join('\n')}`);
        process.stdout.write(
          `applied to the running gateway (pid ${pid}):\n${status.changes.map((c) => `  ${c}`).join('\n')}\n`,
        );
      }),
    );
}

async function waitForReload(dataDir: string, requestId: string, ms: number): Promise<ReloadStatus | undefined> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const s = readReloadStatus(dataDir);
    if (s?.requestId === requestId) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  return undefined;
}

function handleSignals(node: GatewayNode): void {
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping the gateway');
    node.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'error while stopping the gateway');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  let reloading = Promise.resolve();
  process.on('SIGHUP', () => {
    reloading = reloading
      .then(async () => {
        const applied = readAppliedConfig(node.dataDir);
        const status = await node.reload(applied?.configPath, applied?.requestId);
        process.stdout.write(
          `${status.ok ? 'configuration applied' : 'configuration refused'}: ${(status.ok ? status.changes : status.errors).join('; ')}\n`,
        );
      })
      .catch((err: unknown) => log.error({ err }, 'reload failed'));
  });
}
