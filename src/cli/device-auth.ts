/** How a device or module authenticates: the --auth flags, and the label shown for it. */
import { Option, type Command } from 'commander';
import { UserError } from '../util/errors.ts';
import type { DeviceJson } from '../hub/service-client.ts';

type AuthChoice = 'sas' | 'x509-thumbprint' | 'x509-ca';

export interface AuthFlags {
  auth: AuthChoice;
  primaryThumbprint?: string;
  secondaryThumbprint?: string;
}

export function withAuthFlags(cmd: Command): Command {
  return cmd
    .addOption(
      new Option('--auth <type>', 'how the identity authenticates')
        .choices(['sas', 'x509-thumbprint', 'x509-ca'])
        .default('sas'),
    )
    .option('--primary-thumbprint <hex>', 'SHA-1 or SHA-256 thumbprint of the certificate (x509-thumbprint)')
    .option('--secondary-thumbprint <hex>', 'thumbprint of a second certificate (x509-thumbprint)');
}

function thumbprint(value: string | undefined, flag: string): string | undefined {
  if (value === undefined) return undefined;
  const hex = value.replace(/:/g, '');
  if (!/^(?:[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$/.test(hex)) {
    throw new UserError(
      `${flag} "${value}" is not a certificate thumbprint`,
      'Give 40 (SHA-1) or 64 (SHA-256) hex digits',
    );
  }
  return hex.toUpperCase();
}

export function authentication(flags: AuthFlags): NonNullable<DeviceJson['authentication']> {
  const primary = thumbprint(flags.primaryThumbprint, '--primary-thumbprint');
  const secondary = thumbprint(flags.secondaryThumbprint, '--secondary-thumbprint');
  if (flags.auth !== 'x509-thumbprint' && (primary || secondary)) {
    throw new UserError('thumbprints only go with --auth x509-thumbprint');
  }
  switch (flags.auth) {
    case 'sas':
      return { type: 'sas', symmetricKey: { primaryKey: '', secondaryKey: '' } };
    case 'x509-thumbprint':
      if (!primary)
        throw new UserError(
          '--auth x509-thumbprint needs --primary-thumbprint',
          "Give the SHA-1 or SHA-256 thumbprint of the device's certificate",
        );
      return {
        type: 'selfSigned',
        x509Thumbprint: { primaryThumbprint: primary, secondaryThumbprint: secondary ?? primary },
      };
    case 'x509-ca':
      return { type: 'certificateAuthority', x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null } };
  }
}

export function authLabel(a: DeviceJson['authentication']): string {
  switch (a?.type) {
    case 'sas':
      return 'sas';
    case 'selfSigned':
      return 'x509-thumbprint';
    case 'certificateAuthority':
      return 'x509-ca';
    default:
      return a?.type ?? 'none';
  }
}
