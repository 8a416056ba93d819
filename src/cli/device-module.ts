/** `strata device module create | list | delete`: module identities. */
import type { Command } from 'commander';
import { action } from './run.ts';
import type { ModuleJson } from '../hub/service-client.ts';
import { authLabel, authentication, withAuthFlags, type AuthFlags } from './device-auth.ts';
import { checkDeviceId, checkModuleId, emit, table, withHub, withHubFlags, type HubFlags } from './device-common.ts';

export function registerModuleCommands(device: Command): void {
  const mod = device.command('module').description('module identities of a device');

  withAuthFlags(withHubFlags(mod.command('create <device> <module>')))
    .description('create a module identity')
    .action(
      action(async (deviceId: string, moduleId: string, flags: HubFlags & AuthFlags) => {
        checkDeviceId(deviceId);
        checkModuleId(moduleId);
        const auth = authentication(flags);
        await withHub(flags, async ({ client }) => {
          const created = await client.createModule({ deviceId, moduleId, authentication: auth });
          emit(
            flags,
            created,
            () => `created module ${deviceId}/${created.moduleId} (${authLabel(created.authentication)})`,
          );
        });
      }),
    );

  withHubFlags(mod.command('list <device>'))
    .description('list the modules of a device')
    .action(
      action(async (deviceId: string, flags: HubFlags) => {
        await withHub(flags, async ({ client }) => {
          const mods = (await client.listModules(checkDeviceId(deviceId))).sort((a, b) =>
            a.moduleId.localeCompare(b.moduleId),
          );
          emit(flags, mods, () =>
            mods.length
              ? table(
                  ['MODULE', 'AUTH', 'MANAGED BY', 'CONNECTION'],
                  mods.map((m: ModuleJson) => [
                    m.moduleId,
                    authLabel(m.authentication),
                    m.managedBy ?? '',
                    m.connectionState ?? '',
                  ]),
                )
              : `${deviceId} has no modules`,
          );
        });
      }),
    );

  withHubFlags(mod.command('delete <device> <module>'))
    .description('delete a module identity')
    .action(
      action(async (deviceId: string, moduleId: string, flags: HubFlags) => {
        checkDeviceId(deviceId);
        checkModuleId(moduleId);
        await withHub(flags, async ({ client }) => {
          await client.deleteModule(deviceId, moduleId);
          emit(flags, { deleted: `${deviceId}/${moduleId}` }, () => `deleted module ${deviceId}/${moduleId}`);
        });
      }),
    );
}
