import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { X509Certificate } from 'node:crypto';
import type { Command } from 'commander';
import { openEngineDatabase } from '../engine/databases.ts';
import { TrustedCas } from '../store/trusted-cas.ts';
import { UserError } from '../util/errors.ts';
import { hubDirOf } from './local-hub-dir.ts';
import { action } from './run.ts';

function openCas(dataDir: string): { cas: TrustedCas; close(): void } {
  const dir = resolve(dataDir);
  if (!existsSync(dir))
    throw new UserError(`no hub data directory at ${dir}`, 'Start the hub once (strata hub start) or pass --data DIR');
  const db = openEngineDatabase(dir);
  return { cas: new TrustedCas(db), close: () => db.close() };
}

/** A name from the certificate's CN: letters, digits, ".", "_" and "-". */
function defaultName(pem: string): string {
  try {
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(new X509Certificate(pem).subject)?.[1] ?? 'ca';
    return (
      cn
        .replace(/[^A-Za-z0-9._-]+/g, '-')
        .replace(/^-+|-+$/g, '')
        .slice(0, 64) || 'ca'
    );
  } catch {
    return 'ca';
  }
}

/** `strata hub ca add|list|remove`: the CAs X.509 CA-signed devices chain to. */
export function registerHubCaCommands(program: Command): void {
  const hub =
    program.commands.find((c) => c.name() === 'hub') ?? program.command('hub').description('run the root hub');
  const ca = hub
    .command('ca')
    .description('CA certificates the hub trusts for X.509 CA-signed devices (certificateAuthority)');

  ca.command('add')
    .description(
      'register a CA certificate (PEM); devices whose certificate chains to it and has CN = device id may connect',
    )
    .argument('<file>', 'CA certificate, PEM (root or intermediate)')
    .option('--name <name>', 'a name for it (default: from its CN)')
    .option(
      '--data <dir>',
      'data directory of the hub (default ./.strata/hub, else the hub of the topology in ./.strata/topology)',
    )
    .action(
      action((file: string, flags: { name?: string; data: string }) => {
        let pem: string;
        try {
          pem = readFileSync(file, 'utf8');
        } catch {
          throw new UserError(`cannot read ${file}`, 'Give the path of a PEM certificate file');
        }
        const { cas, close } = openCas(hubDirOf(flags));
        try {
          const entry = cas.add(flags.name ?? defaultName(pem), pem);
          process.stdout.write(
            `added CA "${entry.name}": ${entry.subject} (SHA-256 ${entry.thumbprint}, valid until ${entry.notAfter})\n`,
          );
        } catch (err) {
          throw new UserError(
            `cannot add ${file}: ${(err as Error).message}`,
            'Give a CA certificate (basicConstraints CA:TRUE) that is not registered yet',
          );
        } finally {
          close();
        }
      }),
    );

  ca.command('list')
    .description('list the registered CA certificates')
    .option(
      '--data <dir>',
      'data directory of the hub (default ./.strata/hub, else the hub of the topology in ./.strata/topology)',
    )
    .option('--json', 'JSON output')
    .action(
      action((flags: { data?: string; json?: boolean }) => {
        const { cas, close } = openCas(hubDirOf(flags));
        try {
          const list = cas
            .list()
            .map(({ pem: _pem, ...rest }) => ({ ...rest, addedAt: new Date(rest.addedAt).toISOString() }));
          if (flags.json) {
            process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
          } else if (list.length === 0) {
            process.stdout.write('no CA certificates registered (strata hub ca add FILE)\n');
          } else {
            for (const c of list)
              process.stdout.write(`${c.name}\t${c.subject}\t${c.thumbprint}\tvalid until ${c.notAfter}\n`);
          }
        } finally {
          close();
        }
      }),
    );

  ca.command('remove')
    .description('unregister a CA certificate; devices chaining only to it can no longer connect')
    .argument('<name>', 'name or SHA-256 thumbprint')
    .option(
      '--data <dir>',
      'data directory of the hub (default ./.strata/hub, else the hub of the topology in ./.strata/topology)',
    )
    .action(
      action((name: string, flags: { data?: string }) => {
        const { cas, close } = openCas(hubDirOf(flags));
        try {
          if (!cas.remove(name)) throw new UserError(`no registered CA named "${name}"`, 'See strata hub ca list');
          process.stdout.write(`removed CA "${name}"\n`);
        } finally {
          close();
        }
      }),
    );
}
