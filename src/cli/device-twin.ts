/** `strata device twin show | update`: device and module twins. */
import type { Command } from 'commander';
import { action } from './run.ts';
import { UserError } from '../util/errors.ts';
import { checkDeviceId, checkModuleId, emit, out, withHub, withHubFlags, type HubFlags } from './device-common.ts';

function jsonObject(text: string, flag: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UserError(
      `${flag} is not valid JSON: ${(err as Error).message}`,
      `Quote it for the shell, e.g. ${flag} '{"key": 1}'`,
    );
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new UserError(`${flag} must be a JSON object`, `e.g. ${flag} '{"key": 1}'`);
  }
  return value as Record<string, unknown>;
}

export function registerTwinCommands(device: Command): void {
  const twin = device.command('twin').description('device and module twins');

  withHubFlags(twin.command('show <device>'))
    .description('print the twin (JSON)')
    .option('--module <id>', "the module's twin instead of the device's")
    .action(
      action(async (deviceId: string, flags: HubFlags & { module?: string }) => {
        checkDeviceId(deviceId);
        if (flags.module !== undefined) checkModuleId(flags.module);
        await withHub(flags, async ({ client }) => {
          out(JSON.stringify(await client.getTwin(deviceId, flags.module), null, 2));
        });
      }),
    );

  withHubFlags(twin.command('update <device>'))
    .description('merge desired properties and/or tags into the twin')
    .option('--module <id>', "the module's twin instead of the device's")
    .option('--desired <json>', 'desired properties to merge (null deletes a property)')
    .option('--tags <json>', 'tags to merge (null deletes a tag)')
    .option('--etag <etag>', 'only update if the twin still has this etag')
    .action(
      action(
        async (
          deviceId: string,
          flags: HubFlags & { module?: string; desired?: string; tags?: string; etag?: string },
        ) => {
          checkDeviceId(deviceId);
          if (flags.module !== undefined) checkModuleId(flags.module);
          if (flags.desired === undefined && flags.tags === undefined)
            throw new UserError('nothing to update', 'Give --desired JSON and/or --tags JSON');
          const patch: Record<string, unknown> = {};
          if (flags.tags !== undefined) patch.tags = jsonObject(flags.tags, '--tags');
          if (flags.desired !== undefined) patch.properties = { desired: jsonObject(flags.desired, '--desired') };
          await withHub(flags, async ({ client }) => {
            const updated = await client.updateTwin(deviceId, patch, flags.etag ?? '*', flags.module);
            const who = flags.module === undefined ? deviceId : `${deviceId}/${flags.module}`;
            emit(
              flags,
              updated,
              () =>
                `updated the twin of ${who} (desired $version ${String(updated.properties?.desired?.$version ?? '?')})`,
            );
          });
        },
      ),
    );
}
