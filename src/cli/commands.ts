import type { Command } from 'commander';
import { registerDeviceCommands } from './device.ts';
import { registerHubCommands } from './hub.ts';
import { registerHubCaCommands } from './hub-ca.ts';
import { registerCertsCommands } from './certs.ts';
import { registerMonitorEventsCommand } from './monitor-events.ts';
import { registerDeviceSendCommand } from './device-send.ts';
import { registerEdgeCommands } from './edge.ts';
import { registerEdgeCheckCommand } from './edge-check.ts';
import { registerEdgeListCommand } from './edge-list.ts';
import { registerEdgeModuleCommands } from './edge-modules.ts';
import { registerSetModulesCommand } from './set-modules.ts';
import { registerConsumerGroupCommands } from './consumer-group.ts';
import { registerTopologyCommands } from './topology.ts';

/** Every command group registers itself here; keep one module per group. */
export function registerCommands(program: Command): void {
  registerHubCommands(program);
  registerHubCaCommands(program);
  registerDeviceCommands(program);
  registerCertsCommands(program);
  registerMonitorEventsCommand(program);
  registerDeviceSendCommand(program);
  registerEdgeCommands(program);
  registerEdgeCheckCommand(program.commands.find((c) => c.name() === 'edge'));
  registerEdgeListCommand(program.commands.find((c) => c.name() === 'edge'));
  registerEdgeModuleCommands(program.commands.find((c) => c.name() === 'edge'));
  registerSetModulesCommand(program);
  registerConsumerGroupCommands(program);
  registerTopologyCommands(program);
}
