import { type Command, InvalidArgumentError } from 'commander';
import { UserError } from '../util/errors.ts';
import { answerMessage, localGateway, localRequest, withLocalFlags, type LocalFlags } from './edge-local.ts';
import { action } from './run.ts';

/** `strata edge logs MODULE` and `strata edge restart MODULE`, as `iotedge logs` and `iotedge restart`. */
export function registerEdgeModuleCommands(edge: Command | undefined): void {
  if (!edge) throw new Error('the edge command group must be registered before edge logs');
  withLocalFlags(
    edge
      .command('logs')
      .description("print a module's output (stdout and stderr), as `iotedge logs`")
      .argument('<module>', 'the module name in the deployment'),
  )
    .option('--tail <n>', 'only the last N lines', (v) => {
      if (!/^\d+$/.test(v)) throw new InvalidArgumentError('--tail needs a whole number of lines.');
      return Number(v);
    })
    .option('-f, --follow', 'keep printing new lines until interrupted')
    .action(
      action(async (module: string, flags: LocalFlags & { tail?: number; follow?: boolean }) => {
        const gw = localGateway(flags);
        const q = new URLSearchParams();
        if (flags.tail !== undefined) q.set('tail', String(flags.tail));
        if (flags.follow) q.set('follow', 'true');
        const res = await localRequest(gw, 'GET', `/agent/modules/${encodeURIComponent(module)}/logs?${q}`, {
          onData: (c) => process.stdout.write(c),
        });
        if (res.status !== 200) throw new UserError(answerError(res.status, res.text));
      }),
    );

  withLocalFlags(
    edge
      .command('restart')
      .description('stop and start a module again, as `iotedge restart` (its restart count is not raised)')
      .argument('<module>', 'the module name in the deployment'),
  ).action(
    action(async (module: string, flags: LocalFlags) => {
      const gw = localGateway(flags);
      const res = await localRequest(gw, 'POST', `/agent/modules/${encodeURIComponent(module)}/restart`, {
        timeoutMs: 60_000,
      });
      if (res.status !== 200) throw new UserError(answerError(res.status, res.text));
      process.stdout.write(`${module} restarted\n`);
    }),
  );
}

function answerError(status: number, text: string): string {
  if (status === 404 && !text.includes('module'))
    return 'this gateway runs no edge agent (add [agent] or [moby_runtime] to its config.toml)';
  return answerMessage(text);
}
