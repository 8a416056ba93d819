import type { Command } from 'commander';

/**
 * The top-level command groups. Each group's modules are imported only when its command runs
 * (or its help is asked for), so `strata device list` does not load the hub's servers, the
 * gateway or the certificate toolkit. The descriptions are repeated here for the root help; a
 * test checks they match what each group registers.
 */
export interface CommandGroup {
  name: string;
  description: string;
  register(program: Command): Promise<void>;
}

export const COMMAND_GROUPS: CommandGroup[] = [
  {
    name: 'hub',
    description: 'run the root hub: device registry, twins and the IoT Hub service API',
    async register(program) {
      const [hub, ca, monitor, setModules, consumerGroups] = await Promise.all([
        import('./hub.ts'),
        import('./hub-ca.ts'),
        import('./monitor-events.ts'),
        import('./set-modules.ts'),
        import('./consumer-group.ts'),
      ]);
      hub.registerHubCommands(program);
      ca.registerHubCaCommands(program);
      monitor.registerMonitorEventsCommand(program);
      setModules.registerSetModulesCommand(program);
      consumerGroups.registerConsumerGroupCommands(program);
    },
  },
  {
    name: 'device',
    description: 'device and module identities, the parent/child hierarchy, twins and connection strings',
    async register(program) {
      const [device, send] = await Promise.all([import('./device.ts'), import('./device-send.ts')]);
      device.registerDeviceCommands(program);
      send.registerDeviceSendCommand(program);
    },
  },
  {
    name: 'certs',
    description: 'create and check the certificates of a gateway hierarchy (root, Edge CAs, servers, devices)',
    async register(program) {
      (await import('./certs.ts')).registerCertsCommands(program);
    },
  },
  {
    name: 'edge',
    description: 'run an edge gateway: a transparent gateway between downstream devices and the hub',
    async register(program) {
      const [edge, check, list, modules] = await Promise.all([
        import('./edge.ts'),
        import('./edge-check.ts'),
        import('./edge-list.ts'),
        import('./edge-modules.ts'),
      ]);
      edge.registerEdgeCommands(program);
      const group = program.commands.find((c) => c.name() === 'edge');
      check.registerEdgeCheckCommand(group);
      list.registerEdgeListCommand(group);
      modules.registerEdgeModuleCommands(group);
    },
  },
  {
    name: 'topology',
    description:
      'run a whole hierarchy (hub, gateway layers, simulated sensors) from one YAML file on loopback addresses',
    async register(program) {
      (await import('./topology.ts')).registerTopologyCommands(program);
    },
  },
];

/**
 * The group the arguments name (`strata device list`, `strata help device`), if any. The root
 * has no option that takes a value, so the first word that is not an option is the command.
 */
export function groupNamed(args: string[]): CommandGroup | undefined {
  const words = args.filter((a) => !a.startsWith('-'));
  const name = words[0] === 'help' ? words[1] : words[0];
  return COMMAND_GROUPS.find((g) => g.name === name);
}

/**
 * Registers the group the arguments name in full and every other group as a name and a
 * description, which is all the root help and commander's "unknown command" hint need.
 * With no group named (`strata --help`), nothing heavy is loaded at all.
 */
export async function registerCommands(program: Command, args: string[]): Promise<void> {
  const wanted = groupNamed(args);
  for (const group of COMMAND_GROUPS) {
    if (group === wanted) await group.register(program);
    else program.command(group.name).description(group.description);
  }
}

/** Every group in full: for tests and tools that walk the whole command tree. */
export async function registerAllCommands(program: Command): Promise<void> {
  for (const group of COMMAND_GROUPS) await group.register(program);
}
