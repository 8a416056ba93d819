/** `strata device connection-string`: what a device or module puts in its connection string. */
import type { Command } from 'commander';
import { action } from './run.ts';
import { UserError } from '../util/errors.ts';
import { formatConnectionString } from '../identity/connection-string.ts';
import { checkDeviceId, checkModuleId, emit, withHub, withHubFlags, type HubFlags } from './device-common.ts';

export function registerConnectionStringCommand(device: Command): void {
  withHubFlags(device.command('connection-string <id>'))
    .description('print the connection string a device (or module) uses')
    .option('--module <id>', 'for this module of the device')
    .option('--gateway <host>', 'connect through this gateway (adds GatewayHostName)')
    .action(
      action(async (id: string, flags: HubFlags & { module?: string; gateway?: string }) => {
        checkDeviceId(id);
        if (flags.module !== undefined) checkModuleId(flags.module);
        if (flags.gateway !== undefined && !/^[A-Za-z0-9.\-:[\]]+$/.test(flags.gateway)) {
          throw new UserError(`--gateway "${flags.gateway}" is not a host name`);
        }
        await withHub(flags, async ({ client, hostName }) => {
          const identity =
            flags.module === undefined ? await client.getDevice(id) : await client.getModule(id, flags.module);
          const what = flags.module === undefined ? `device ${id}` : `module ${id}/${flags.module}`;
          const auth = identity.authentication;
          const key = auth?.symmetricKey?.primaryKey;
          let secret: Record<string, string>;
          if (auth?.type === 'sas' && key) secret = { SharedAccessKey: key };
          else if (auth?.type === 'selfSigned' || auth?.type === 'certificateAuthority') secret = { x509: 'true' };
          else
            throw new UserError(
              `${what} has no key to put in a connection string (authentication: ${auth?.type ?? 'none'})`,
            );
          const cs = formatConnectionString({
            HostName: hostName,
            DeviceId: id,
            ModuleId: flags.module,
            ...secret,
            GatewayHostName: flags.gateway,
          });
          emit(flags, { connectionString: cs }, () => cs);
        });
      }),
    );
}
