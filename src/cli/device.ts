import type { Command } from 'commander';
import { registerConnectionStringCommand } from './device-connection-string.ts';
import { registerHierarchyCommands } from './device-hierarchy.ts';
import { registerIdentityCommands } from './device-identity.ts';
import { registerModuleCommands } from './device-module.ts';
import { registerTwinCommands } from './device-twin.ts';
import { registerTokenCommand } from './device-token.ts';

/**
 * `strata device ...`: identities and the parent/child hierarchy, as the seeds' CLI offers them.
 * Each subcommand group lives in its own device-*.ts file (`send` in device-send.ts).
 */
export function registerDeviceCommands(program: Command): void {
  const device = program
    .command('device')
    .description('device and module identities, the parent/child hierarchy, twins and connection strings');
  registerIdentityCommands(device);
  registerHierarchyCommands(device);
  registerConnectionStringCommand(device);
  registerTokenCommand(device);
  registerModuleCommands(device);
  registerTwinCommands(device);
}
