/** `strata device create | show | list | delete`: device identities. */
import type { Command } from 'commander';
import { action } from './run.ts';
import { UserError } from '../util/errors.ts';
import { ServiceError, type DeviceJson } from '../hub/service-client.ts';
import { authLabel, authentication, withAuthFlags, type AuthFlags } from './device-auth.ts';
import {
  checkDeviceId,
  emit,
  keyValues,
  out,
  table,
  withHub,
  withHubFlags,
  yesNo,
  type HubFlags,
} from './device-common.ts';
import { EdgeMap, MAX_EDGE_LAYERS, childrenOf, getEdge, isEdge, parentIdOf, parentScopeOf } from './device-edges.ts';

function describeDevice(d: DeviceJson, parent: string | undefined): string {
  return keyValues([
    ['deviceId', d.deviceId],
    ['edge', yesNo(isEdge(d))],
    ['status', d.status],
    ['authentication', authLabel(d.authentication)],
    ['parent', parent ?? '-'],
    ['deviceScope', d.deviceScope],
    ['parentScopes', d.parentScopes?.length ? d.parentScopes.join(', ') : undefined],
    ['connectionState', d.connectionState],
    ['generationId', d.generationId],
    ['etag', d.etag],
  ]);
}

export function registerIdentityCommands(device: Command): void {
  withAuthFlags(withHubFlags(device.command('create <id>')))
    .description('create a device identity (keys are generated for sas)')
    .option('--edge', 'make it an IoT Edge device (it can then be a parent)')
    .option('--parent <id>', 'IoT Edge device to put it under')
    .action(
      action(async (id: string, flags: HubFlags & AuthFlags & { edge?: boolean; parent?: string }) => {
        checkDeviceId(id);
        const auth = authentication(flags);
        await withHub(flags, async ({ client }) => {
          const body: DeviceJson = {
            deviceId: id,
            status: 'enabled',
            authentication: auth,
            capabilities: { iotEdge: !!flags.edge },
          };
          if (flags.parent !== undefined) {
            const parent = await getEdge(client, flags.parent, 'parents');
            const scope = parent.deviceScope!;
            if (flags.edge) {
              const edges = await EdgeMap.load(client);
              const layers = edges.chainFrom(scope).length + 1;
              if (layers > MAX_EDGE_LAYERS) {
                throw new UserError(
                  `cannot put IoT Edge device ${id} under ${parent.deviceId}: that would make ${layers} layers of IoT Edge devices, at most ${MAX_EDGE_LAYERS} are allowed`,
                );
              }
              body.parentScopes = [scope];
            } else {
              body.deviceScope = scope;
              body.parentScopes = [scope];
            }
          }
          const created = await client.createDevice(body);
          emit(
            flags,
            created,
            () =>
              `created ${isEdge(created) ? 'IoT Edge device' : 'device'} ${created.deviceId}\n${describeDevice(created, flags.parent)}`,
          );
        });
      }),
    );

  withHubFlags(device.command('show <id>'))
    .description('show a device identity')
    .action(
      action(async (id: string, flags: HubFlags) => {
        await withHub(flags, async ({ client }) => {
          const d = await client.getDevice(checkDeviceId(id));
          if (flags.json) return emit(flags, d, () => '');
          const parent = await parentIdOf(client, d).catch((err: unknown) => {
            if (err instanceof UserError && !(err instanceof ServiceError))
              return '(unknown: the parent scope belongs to no device)';
            throw err;
          });
          out(describeDevice(d, parent));
        });
      }),
    );

  withHubFlags(device.command('list'))
    .description('list device identities')
    .option('--edge', 'only IoT Edge devices')
    .action(
      action(async (flags: HubFlags & { edge?: boolean }) => {
        await withHub(flags, async ({ client }) => {
          const all = (await client.listDevices()).sort((a, b) => a.deviceId.localeCompare(b.deviceId));
          const shown = flags.edge ? all.filter(isEdge) : all;
          const scopeOwner = new Map(
            all.filter((d) => isEdge(d) && d.deviceScope).map((d) => [d.deviceScope!, d.deviceId]),
          );
          emit(flags, shown, () => {
            if (shown.length === 0) return flags.edge ? 'no IoT Edge devices' : 'no devices';
            return table(
              ['DEVICE', 'EDGE', 'STATUS', 'AUTH', 'PARENT', 'CONNECTION'],
              shown.map((d) => {
                const ps = parentScopeOf(d);
                return [
                  d.deviceId,
                  yesNo(isEdge(d)),
                  d.status ?? '',
                  authLabel(d.authentication),
                  ps ? (scopeOwner.get(ps) ?? '?') : '-',
                  d.connectionState ?? '',
                ];
              }),
            );
          });
        });
      }),
    );

  withHubFlags(device.command('delete <id>'))
    .description('delete a device identity (its children are left without a parent)')
    .action(
      action(async (id: string, flags: HubFlags) => {
        await withHub(flags, async ({ client }) => {
          const d = await client.getDevice(checkDeviceId(id));
          const before = isEdge(d) && d.deviceScope ? (await childrenOf(client, d)).map((c) => c.deviceId) : [];
          const { orphaned } = await client.deleteDevice(id, d.etag ?? '*');
          const orphans = (orphaned ?? before).sort();
          emit(flags, { deleted: id, orphanedChildren: orphans }, () =>
            orphans.length
              ? `deleted ${id}; these devices no longer have a parent: ${orphans.join(', ')}`
              : `deleted ${id}`,
          );
        });
      }),
    );
}
