/** `strata device token`: a SAS token for a device or module, e.g. as the password a gateway's /v2/ takes. */
import type { Command } from 'commander';
import { createSasToken } from '../identity/sas.ts';
import { UserError } from '../util/errors.ts';
import { action } from './run.ts';
import { checkDeviceId, checkModuleId, emit, withHub, withHubFlags, type HubFlags } from './device-common.ts';

export function registerTokenCommand(device: Command): void {
  withHubFlags(device.command('token <id>'))
    .description(
      "print a SAS token for a device (or module): with the device id as user name, it signs in to a gateway's registry API (skopeo --creds ID:TOKEN)",
    )
    .option('--module <id>', 'for this module of the device')
    .option('--ttl <seconds>', 'how long the token is valid', '3600')
    .action(
      action(async (id: string, flags: HubFlags & { module?: string; ttl: string }) => {
        checkDeviceId(id);
        if (flags.module !== undefined) checkModuleId(flags.module);
        const ttl = Number(flags.ttl);
        if (!Number.isInteger(ttl) || ttl < 60 || ttl > 365 * 86_400)
          throw new UserError(`--ttl "${flags.ttl}" must be a whole number of seconds from 60 to 31536000`);
        await withHub(flags, async ({ client, hostName }) => {
          const identity =
            flags.module === undefined ? await client.getDevice(id) : await client.getModule(id, flags.module);
          const what = flags.module === undefined ? `device ${id}` : `module ${id}/${flags.module}`;
          const key = identity.authentication?.symmetricKey?.primaryKey;
          if (identity.authentication?.type !== 'sas' || !key)
            throw new UserError(
              `${what} has no SAS key to sign a token with (authentication: ${identity.authentication?.type ?? 'none'})`,
            );
          const path = flags.module === undefined ? '' : `/modules/${encodeURIComponent(flags.module)}`;
          const expiry = Math.floor(Date.now() / 1000) + ttl;
          const token = createSasToken(`${hostName}/devices/${encodeURIComponent(id)}${path}`, key, expiry);
          emit(flags, { token, expiresAt: new Date(expiry * 1000).toISOString() }, () => token);
        });
      }),
    );
}
