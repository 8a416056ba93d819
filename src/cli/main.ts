import 'reflect-metadata';
import { Command } from 'commander';
import { registerCommands } from './commands.ts';

const program = new Command();
program
  .name('strata')
  .description('Strata: an open, self-hosted, IoT-Hub-compatible hub and nested edge gateway')
  .version('0.1.0')
  .showHelpAfterError('(run with --help for usage)');

registerCommands(program);

await program.parseAsync(process.argv);
