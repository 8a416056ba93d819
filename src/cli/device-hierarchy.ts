/** `strata device set-parent | get-parent | add-children | list-children | remove-children`. */
import type { Command } from 'commander';
import { action } from './run.ts';
import { UserError } from '../util/errors.ts';
import type { DeviceJson } from '../hub/service-client.ts';
import { checkDeviceId, emit, idList, table, withHub, withHubFlags, yesNo, type HubFlags } from './device-common.ts';
import {
  EdgeMap,
  checkMove,
  childrenOf,
  getEdge,
  isEdge,
  parentIdOf,
  parentScopeOf,
  setParentScope,
} from './device-edges.ts';

export function registerHierarchyCommands(device: Command): void {
  withHubFlags(device.command('set-parent <id>'))
    .description('put a device under an IoT Edge parent')
    .requiredOption('--parent <id>', 'the IoT Edge device to become the parent')
    .option('--force', 'move the device even if it already has another parent')
    .action(
      action(async (id: string, flags: HubFlags & { parent: string; force?: boolean }) => {
        await withHub(flags, async ({ client }) => {
          const parent = await getEdge(client, flags.parent, 'parents');
          const child = await client.getDevice(checkDeviceId(id));
          const edges = await EdgeMap.load(client);
          const changed = checkMove(child, parent, !!flags.force, edges);
          const result = changed ? await setParentScope(client, child, parent.deviceScope) : child;
          emit(flags, result, () =>
            changed ? `${id} now has parent ${parent.deviceId}` : `${id} already has parent ${parent.deviceId}`,
          );
        });
      }),
    );

  withHubFlags(device.command('get-parent <id>'))
    .description("print a device's parent")
    .action(
      action(async (id: string, flags: HubFlags) => {
        await withHub(flags, async ({ client }) => {
          const d = await client.getDevice(checkDeviceId(id));
          const parent = await parentIdOf(client, d);
          emit(flags, { deviceId: id, parentId: parent ?? null }, () => parent ?? `${id} has no parent`);
        });
      }),
    );

  withHubFlags(device.command('add-children <parent>'))
    .description('put devices under an IoT Edge parent')
    .requiredOption('--children <ids>', 'comma-separated device ids')
    .option('--force', 'move devices that already have another parent')
    .action(
      action(async (parentId: string, flags: HubFlags & { children: string; force?: boolean }) => {
        const ids = idList(flags.children, '--children');
        await withHub(flags, async ({ client }) => {
          const parent = await getEdge(client, parentId, 'parents');
          const edges = await EdgeMap.load(client);
          const children = await Promise.all(ids.map((c) => client.getDevice(c)));
          // Check every child before changing any, so a refusal leaves nothing half done.
          const moves = children.filter((c) => checkMove(c, parent, !!flags.force, edges));
          for (const c of moves) await setParentScope(client, c, parent.deviceScope);
          emit(
            flags,
            {
              parentId: parent.deviceId,
              added: moves.map((c) => c.deviceId),
              unchanged: children.filter((c) => !moves.includes(c)).map((c) => c.deviceId),
            },
            () =>
              moves.length
                ? `added ${moves.map((c) => c.deviceId).join(', ')} as children of ${parent.deviceId}`
                : `nothing to do: already children of ${parent.deviceId}`,
          );
        });
      }),
    );

  withHubFlags(device.command('list-children <parent>'))
    .description('list the devices directly under an IoT Edge device')
    .action(
      action(async (parentId: string, flags: HubFlags) => {
        await withHub(flags, async ({ client }) => {
          const parent = await getEdge(client, parentId, 'parents');
          const children = await childrenOf(client, parent);
          emit(
            flags,
            children.map((c) => c.deviceId),
            () =>
              children.length
                ? table(
                    ['DEVICE', 'EDGE', 'STATUS'],
                    children.map((c) => [c.deviceId, yesNo(isEdge(c)), c.status ?? '']),
                  )
                : `${parentId} has no children`,
          );
        });
      }),
    );

  withHubFlags(device.command('remove-children <parent>'))
    .description('take devices out from under an IoT Edge device')
    .option('--children <ids>', 'comma-separated device ids')
    .option('--all', 'remove every child')
    .action(
      action(async (parentId: string, flags: HubFlags & { children?: string; all?: boolean }) => {
        if (!!flags.children === !!flags.all) throw new UserError('give either --children a,b or --all');
        const ids = flags.children ? idList(flags.children, '--children') : [];
        await withHub(flags, async ({ client }) => {
          const parent = await getEdge(client, parentId, 'parents');
          let children: DeviceJson[];
          if (flags.all) {
            children = await Promise.all((await childrenOf(client, parent)).map((t) => client.getDevice(t.deviceId)));
          } else {
            children = await Promise.all(ids.map((c) => client.getDevice(c)));
            const stranger = children.find((c) => parentScopeOf(c) !== parent.deviceScope);
            if (stranger)
              throw new UserError(
                `${stranger.deviceId} is not a child of ${parent.deviceId}`,
                `See the children with \`strata device list-children ${parent.deviceId}\``,
              );
          }
          for (const c of children) await setParentScope(client, c, undefined);
          const removed = children.map((c) => c.deviceId);
          emit(flags, { parentId: parent.deviceId, removed }, () =>
            removed.length
              ? `removed ${removed.join(', ')} from ${parent.deviceId}`
              : `${parent.deviceId} has no children`,
          );
        });
      }),
    );
}
