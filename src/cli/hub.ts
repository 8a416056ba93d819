import { InvalidArgumentError, type Command } from 'commander';
import { resolve } from 'node:path';
import { DEFAULT_HUB_DIR, hubConnectionString } from '../hub/local.ts';
import { formatConnectionString } from '../identity/connection-string.ts';
import type { HubNode } from '../hub/hub.ts';
import { childLog } from '../util/log.ts';
import { hubDirOf } from './local-hub-dir.ts';
import { action } from './run.ts';
import { eventHubsConnectionString } from '../hub/local.ts';
import {
  DEFAULT_PRE_AUTH_LIMITS,
  PRE_AUTH_SETTINGS,
  preAuthLimitsFrom,
  type PreAuthLimits,
} from '../protocols/pre-auth.ts';
import { UserError } from '../util/errors.ts';

const log = childLog('cli-hub');

function port(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n > 65535)
      throw new InvalidArgumentError(`${name} needs a whole number from 0 to 65535 (0 picks a free port).`);
    return n;
  };
}

function partitionCount(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 32)
    throw new InvalidArgumentError('--partitions needs a whole number from 1 to 32.');
  return n;
}

interface StartFlags {
  data: string;
  hostname: string;
  bind?: string;
  httpsPort: number;
  mqttPort: number;
  amqpPort: number;
  partitions?: number;
  tlsCert?: string;
  tlsKey?: string;
  trust?: string;
  diskReserveMb?: number;
  strataLinks: boolean;
  [limitOption: string]: unknown;
}

/** `--tls-handshake-timeout` -> `tlsHandshakeTimeout`, as commander names the flag's value. */
function flagKey(option: string): string {
  return option.slice(2).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** The pre-authentication limits given on the command line (seconds for timeouts). */
function limitsFromFlags(flags: StartFlags): Partial<PreAuthLimits> {
  const byOption = new Map<string, string>(Object.values(PRE_AUTH_SETTINGS).map((s) => [s.setting, s.option]));
  try {
    return preAuthLimitsFrom(
      (setting) => flags[flagKey(byOption.get(setting)!)],
      (setting) => byOption.get(setting)!,
    );
  } catch (err) {
    throw new UserError(
      (err as Error).message,
      'Timeouts are seconds (e.g. 10 or 0.5); caps are whole numbers of connections',
    );
  }
}

function diskReserve(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0)
    throw new InvalidArgumentError('--disk-reserve-mb needs a number of MiB, 0 or more.');
  return n;
}

export function registerHubCommands(program: Command): void {
  const hub = program
    .command('hub')
    .description('run the root hub: device registry, twins and the IoT Hub service API');

  hub
    .command('start')
    .description('start a hub; creates its data directory, PKI and access policies on first start')
    .option('--data <dir>', 'data directory (SQLite database, certificates)', DEFAULT_HUB_DIR)
    .option(
      '--hostname <name>',
      'host name clients dial; the server certificate and token audiences use it',
      'localhost',
    )
    .option(
      '--bind <addr>',
      'address to listen on (default: the host name if it is an IP address, else 127.0.0.1; 0.0.0.0 for all interfaces)',
    )
    .option(
      '--https-port <n>',
      'HTTPS port: service API and device HTTPS (the azure-iothub SDK only dials 443)',
      port('--https-port'),
      443,
    )
    .option('--mqtt-port <n>', 'MQTT over TLS port', port('--mqtt-port'), 8883)
    .option('--amqp-port <n>', 'AMQP over TLS port', port('--amqp-port'), 5671)
    .option(
      '--partitions <n>',
      'event stream partitions, 1 to 32 (default 4); fixed on the first start, later values are ignored',
      partitionCount,
    )
    .option('--tls-cert <file>', "server certificate (PEM, full chain) instead of the hub's own PKI")
    .option('--tls-key <file>', 'private key of --tls-cert')
    .option('--trust <file>', 'root CA that clients trust for --tls-cert (printed at start-up)')
    .option(
      `${PRE_AUTH_SETTINGS.tlsHandshakeTimeoutMs.option} <secs>`,
      `close a connection whose TLS handshake takes longer (default ${DEFAULT_PRE_AUTH_LIMITS.tlsHandshakeTimeoutMs / 1000})`,
    )
    .option(
      `${PRE_AUTH_SETTINGS.mqttConnectTimeoutMs.option} <secs>`,
      `close an MQTT connection that sends no CONNECT for this long (default ${DEFAULT_PRE_AUTH_LIMITS.mqttConnectTimeoutMs / 1000})`,
    )
    .option(
      `${PRE_AUTH_SETTINGS.amqpAuthTimeoutMs.option} <secs>`,
      `close an AMQP connection with no accepted credential (header, SASL, CBS) after this long (default ${DEFAULT_PRE_AUTH_LIMITS.amqpAuthTimeoutMs / 1000})`,
    )
    .option(
      `${PRE_AUTH_SETTINGS.httpHeadersTimeoutMs.option} <secs>`,
      `close an HTTPS connection whose request head takes longer (default ${DEFAULT_PRE_AUTH_LIMITS.httpHeadersTimeoutMs / 1000})`,
    )
    .option(
      `${PRE_AUTH_SETTINGS.maxUnauthenticatedPerAddress.option} <n>`,
      `unauthenticated connections allowed from one address (default ${DEFAULT_PRE_AUTH_LIMITS.maxUnauthenticatedPerAddress})`,
    )
    .option(
      `${PRE_AUTH_SETTINGS.maxUnauthenticated.option} <n>`,
      `unauthenticated connections in total; one more closes the oldest (default ${DEFAULT_PRE_AUTH_LIMITS.maxUnauthenticated})`,
    )
    .option(
      '--disk-reserve-mb <n>',
      'free disk space (MiB) kept for checkpoints: telemetry is refused with "store full" below it (default 64, or env STRATA_DISK_RESERVE_MB)',
      diskReserve,
    )
    .option(
      '--no-strata-links',
      'answer gateways below as IoT Hub does: no relay or presence link, so they open links per device (to try a hierarchy the way it runs under IoT Hub)',
    )
    .action(
      action(async (flags: StartFlags) => {
        // The hub's servers are loaded only to start one, not for `hub connection-string`.
        const { startHub } = await import('../hub/hub.ts');
        const node = await startHub({
          dataDir: flags.data,
          hostname: flags.hostname,
          bind: flags.bind,
          httpsPort: flags.httpsPort,
          mqttPort: flags.mqttPort,
          amqpPort: flags.amqpPort,
          partitions: flags.partitions,
          tlsCert: flags.tlsCert,
          tlsKey: flags.tlsKey,
          trust: flags.trust,
          limits: limitsFromFlags(flags),
          diskReserveBytes:
            flags.diskReserveMb === undefined ? undefined : Math.round(flags.diskReserveMb * 1024 * 1024),
          strataLinks: flags.strataLinks,
        });
        printBanner(node);
        stopOnSignals(node);
      }),
    );

  hub
    .command('connection-string')
    .description("print a service connection string of a local hub's shared access policy")
    .option(
      '--data <dir>',
      'data directory of the hub (default ./.strata/hub, else the hub of the topology in ./.strata/topology)',
    )
    .option('--policy <name>', 'iothubowner, service, registryRead, registryReadWrite or device', 'iothubowner')
    .option('--event-hubs', 'the Event Hubs compatible endpoint instead (Endpoint=sb://...;EntityPath=...)')
    .action(
      action((flags: { data?: string; policy: string; eventHubs?: boolean }) => {
        const print = flags.eventHubs ? eventHubsConnectionString : hubConnectionString;
        process.stdout.write(`${print(resolve(hubDirOf(flags)), flags.policy)}\n`);
      }),
    );
}

function printBanner(node: HubNode): void {
  const lines = [
    `strata hub ${node.hostname} is running (data: ${node.dataDir}, listening on ${node.bind})`,
    ...node.listeners.map((l) => `  ${l.name.padEnd(24)} ${l.url}`),
    `  trust this CA:           ${node.caPath}`,
    `  iothubowner:             ${ownerConnectionString(node)}`,
    '  other policies:          strata hub connection-string --policy service|registryRead|registryReadWrite|device',
    'Press Ctrl+C to stop.',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

function ownerConnectionString(node: HubNode): string {
  const owner = node.registry.getPolicy('iothubowner');
  if (!owner) return '(no iothubowner policy in this hub)';
  return formatConnectionString({
    HostName: node.hostname,
    SharedAccessKeyName: owner.keyName,
    SharedAccessKey: owner.primaryKey,
  });
}

function stopOnSignals(node: HubNode): void {
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping the hub');
    node.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'error while stopping the hub');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
