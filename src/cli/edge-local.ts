import { readFileSync } from 'node:fs';
import https from 'node:https';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { readHealthToken } from '../edge/health-access.ts';
import { loadEdgeConfigFile } from '../edge/load-config.ts';
import { defaultEdgeDataDir, edgeFiles, readGatewayState, runningGatewayPid } from '../edge/local.ts';
import { edgePkiPaths } from '../edge/security-manager.ts';
import { splitPemCertificates } from '../pki/index.ts';
import { UserError } from '../util/errors.ts';
import { configuredDataDir } from './edge-data-dir.ts';

/**
 * How `strata edge list`, `logs` and `restart` reach the gateway running on this machine: its
 * data directory (given, or from config.toml's device id) names its address and port, its
 * server chain's root is trusted, and its health token (readable by the data directory's owner)
 * is shown.
 */

export interface LocalFlags {
  config?: string;
  data?: string;
}

export interface LocalGateway {
  dataDir: string;
  base: string;
  ca: string;
  token?: string;
}

export function withLocalFlags(cmd: Command): Command {
  return cmd
    .option(
      '--config <file>',
      "the gateway's config.toml (finds its data directory from [strata] data_dir, else the device id)",
    )
    .option(
      '--data <dir>',
      "the gateway's data directory (default: [strata] data_dir of the config, else ./.strata/edge-{deviceId})",
    );
}

export function localGateway(flags: LocalFlags): LocalGateway {
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
    throw new UserError(`no gateway state in ${dataDir}`, 'Start it with `strata edge start --config config.toml`');
  // Trust the root of the very chain this gateway serves: a local read of a process we own.
  const chain = splitPemCertificates(readFileSync(edgePkiPaths(dataDir).serverCert, 'utf8'));
  return {
    dataDir,
    base: `https://${state.bind}:${state.ports.https}`,
    ca: chain[chain.length - 1] ?? '',
    token: readHealthToken(edgeFiles(dataDir).healthToken),
  };
}

/** One request to the local gateway; `onData` streams the body instead of collecting it. */
export function localRequest(
  gw: LocalGateway,
  method: 'GET' | 'POST',
  path: string,
  opts: { onData?: (chunk: string) => void; timeoutMs?: number } = {},
): Promise<{ status: number; text: string }> {
  const url = `${gw.base}${path}`;
  return new Promise((done, fail) => {
    // The gateway's hostname may not resolve here; its address is dialled and the name checked against the certificate.
    const req = https.request(
      url,
      {
        method,
        ca: gw.ca,
        timeout: opts.timeoutMs ?? 5000,
        headers: gw.token ? { authorization: `Bearer ${gw.token}` } : {},
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        if (opts.onData) req.setTimeout(0);
        res.on('data', (c: string) => (opts.onData && res.statusCode === 200 ? opts.onData(c) : (text += c)));
        res.on('end', () => done({ status: res.statusCode ?? 0, text }));
        res.on('error', fail);
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
    req.end();
  });
}

/** The message of a JSON error answer, or the text itself. */
export function answerMessage(text: string): string {
  try {
    const m = (JSON.parse(text) as { message?: string }).message;
    return typeof m === 'string' ? m : text;
  } catch {
    return text;
  }
}
