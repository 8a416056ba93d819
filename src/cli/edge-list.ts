import { readFileSync } from 'node:fs';
import https from 'node:https';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { loadEdgeConfigFile } from '../edge/load-config.ts';
import { readHealthToken } from '../edge/health-access.ts';
import { defaultEdgeDataDir, edgeFiles, readGatewayState, runningGatewayPid } from '../edge/local.ts';
import { edgePkiPaths } from '../edge/security-manager.ts';
import { splitPemCertificates } from '../pki/index.ts';
import { UserError } from '../util/errors.ts';
import { configuredDataDir } from './edge-data-dir.ts';
import { action } from './run.ts';

interface ListFlags {
  config?: string;
  data?: string;
  json?: boolean;
}

interface HealthAnswer {
  deviceId: string;
  hostname: string;
  modules?: string[];
  connected?: Array<{ deviceId: string; moduleId?: string; protocol: string }>;
  upstream?: { parent: string; connected: boolean };
}

function getJson(url: string, ca: string, token: string | undefined): Promise<HealthAnswer> {
  return new Promise((done, fail) => {
    // The gateway's hostname may not resolve here; its address is dialled and the name checked against the certificate.
    const req = https.get(
      url,
      { ca, timeout: 3000, headers: token ? { authorization: `Bearer ${token}` } : {} },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          try {
            done(JSON.parse(text) as HealthAnswer);
          } catch {
            fail(
              new UserError(`the gateway answered /health with something other than JSON (status ${res.statusCode})`),
            );
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) =>
      fail(
        new UserError(
          `cannot ask the gateway at ${url}: ${err.message}`,
          'Is it running? Check with `strata edge check`',
        ),
      ),
    );
  });
}

/** `strata edge list`: the gateway's modules and the downstream identities connected to it now. */
export function registerEdgeListCommand(edge: Command | undefined): void {
  if (!edge) throw new Error('the edge command group must be registered before edge list');
  edge
    .command('list')
    .description("list the gateway's modules and the downstream devices and modules connected to it now")
    .option(
      '--config <file>',
      "the gateway's config.toml (finds its data directory from [strata] data_dir, else the device id)",
    )
    .option(
      '--data <dir>',
      "the gateway's data directory (default: [strata] data_dir of the config, else ./.strata/edge-{deviceId})",
    )
    .option('--json', 'print JSON for scripts')
    .action(
      action(async (flags: ListFlags) => {
        let dataDir = flags.data;
        if (!dataDir) {
          if (!flags.config) throw new UserError('say which gateway: give --config config.toml or --data DIR');
          const { config, path } = loadEdgeConfigFile(resolve(flags.config));
          const id = config.provisioning?.deviceId;
          dataDir = configuredDataDir(config, path);
          if (!dataDir && !id)
            throw new UserError(
              `${flags.config} has no [provisioning] device id`,
              "Give the gateway's data directory with --data DIR",
            );
          dataDir ??= defaultEdgeDataDir(id!);
        }
        dataDir = resolve(dataDir);
        if (!runningGatewayPid(dataDir))
          throw new UserError(
            `no gateway is running from ${dataDir}`,
            'Start it with `strata edge start --config config.toml`',
          );
        const state = readGatewayState(dataDir);
        if (!state)
          throw new UserError(
            `no gateway state in ${dataDir}`,
            'Start it with `strata edge start --config config.toml`',
          );
        // Trust the root of the very chain this gateway serves: a local read of a process we own.
        const chain = splitPemCertificates(readFileSync(edgePkiPaths(dataDir).serverCert, 'utf8'));
        // The connected identities are for the holder of the gateway's health token (edge/health-access.ts).
        const token = readHealthToken(edgeFiles(dataDir).healthToken);
        const health = await getJson(
          `https://${state.bind}:${state.ports.https}/health`,
          chain[chain.length - 1] ?? '',
          token,
        );
        if (flags.json) {
          process.stdout.write(
            `${JSON.stringify({ deviceId: health.deviceId, modules: health.modules ?? [], connected: health.connected ?? [] }, null, 2)}\n`,
          );
          return;
        }
        const lines = [
          `gateway ${health.deviceId} (${health.hostname}), upstream ${health.upstream?.parent ?? '?'}: ${health.upstream?.connected ? 'connected' : 'not connected'}`,
          '',
          'MODULE',
        ];
        for (const m of health.modules ?? []) lines.push(`  ${m}`);
        lines.push('', `CONNECTED (${health.connected?.length ?? 0})`);
        for (const c of health.connected ?? [])
          lines.push(`  ${c.moduleId ? `${c.deviceId}/${c.moduleId}` : c.deviceId}  ${c.protocol}`);
        process.stdout.write(`${lines.join('\n')}\n`);
      }),
    );
}
