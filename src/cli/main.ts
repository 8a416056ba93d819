import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { registerCommands } from './commands.ts';

// package.json is two folders up from both src/cli/ and the compiled dist/cli/.
const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

const program = new Command();
program
  .name('strata')
  .description('Strata: an open, self-hosted, IoT-Hub-compatible hub and nested edge gateway')
  .version(version)
  .showHelpAfterError('(run with --help for usage)');

await registerCommands(program, process.argv.slice(2));

await program.parseAsync(process.argv);
