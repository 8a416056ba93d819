import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { hubFiles } from '../hub/local.ts';
import { hubDirOf } from './local-hub-dir.ts';
import { ConsumerGroupError, ConsumerGroups } from '../store/consumer-groups.ts';
import { openNodeDb } from '../store/db.ts';
import { UserError } from '../util/errors.ts';
import { action } from './run.ts';

/** Opens the consumer groups of the hub kept in `dataDir` (running or not: receivers look them up at attach). */
function openGroups(dataDir: string): { groups: ConsumerGroups; close(): void } {
  const dir = resolve(dataDir);
  const { db: file } = hubFiles(dir);
  if (!existsSync(file))
    throw new UserError(`there is no hub in ${dir}`, 'Start the hub once (strata hub start) or pass --data DIR');
  const db = openNodeDb(file);
  try {
    return { groups: new ConsumerGroups(db), close: () => db.close() };
  } catch (err) {
    db.close();
    throw err;
  }
}

function userErrorOf(err: unknown): unknown {
  if (!(err instanceof ConsumerGroupError)) return err;
  const hint =
    err.code === 'invalid'
      ? 'For example: strata hub consumer-group add analytics'
      : err.code === 'not-found'
        ? 'See the existing ones with: strata hub consumer-group list'
        : undefined;
  return new UserError(err.message, hint);
}

/** `strata hub consumer-group add|list|remove`: consumer groups of the Event Hubs compatible endpoint. */
export function registerConsumerGroupCommands(program: Command): void {
  const hub =
    program.commands.find((c) => c.name() === 'hub') ?? program.command('hub').description('run the root hub');
  const cg = hub
    .command('consumer-group')
    .description('consumer groups of the built-in Event Hubs compatible endpoint ($Default always exists)');

  cg.command('add')
    .description('create a consumer group; each group reads every partition independently')
    .argument('<name>', '1 to 50 letters, digits, ".", "-" or "_"')
    .option(
      '--data <dir>',
      'data directory of the hub (default ./.strata/hub, else the hub of the topology in ./.strata/topology)',
    )
    .action(
      action((name: string, flags: { data?: string }) => {
        const { groups, close } = openGroups(hubDirOf(flags));
        try {
          const g = groups.add(name);
          process.stdout.write(`added consumer group "${g.name}"\n`);
        } catch (err) {
          throw userErrorOf(err);
        } finally {
          close();
        }
      }),
    );

  cg.command('list')
    .description('list the consumer groups')
    .option(
      '--data <dir>',
      'data directory of the hub (default ./.strata/hub, else the hub of the topology in ./.strata/topology)',
    )
    .option('--json', 'JSON output')
    .action(
      action((flags: { data?: string; json?: boolean }) => {
        const { groups, close } = openGroups(hubDirOf(flags));
        try {
          const list = groups.list();
          if (flags.json) {
            const json = list.map((g) => ({
              name: g.name,
              createdAt: g.createdAt ? new Date(g.createdAt).toISOString() : null,
            }));
            process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
          } else {
            for (const g of list)
              process.stdout.write(
                `${g.name}${g.createdAt ? `\tcreated ${new Date(g.createdAt).toISOString()}` : ''}\n`,
              );
          }
        } finally {
          close();
        }
      }),
    );

  cg.command('remove')
    .description('delete a consumer group (receivers already attached keep reading until they detach)')
    .argument('<name>', 'the consumer group')
    .option(
      '--data <dir>',
      'data directory of the hub (default ./.strata/hub, else the hub of the topology in ./.strata/topology)',
    )
    .action(
      action((name: string, flags: { data?: string }) => {
        const { groups, close } = openGroups(hubDirOf(flags));
        try {
          groups.remove(name);
          process.stdout.write(`removed consumer group "${name}"\n`);
        } catch (err) {
          throw userErrorOf(err);
        } finally {
          close();
        }
      }),
    );
}
