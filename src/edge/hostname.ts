import { isIP } from 'node:net';

export function isIpAddress(host: string): boolean {
  return isIP(host) !== 0;
}

/**
 * Why a host name cannot serve as a gateway's hostname, or undefined when it can: an IP address,
 * or an RFC 1035 name (labels of letters, digits and hyphens, not starting or ending with a hyphen)
 * shorter than 64 characters, because it becomes a certificate CN, which X.509 caps at 64.
 */
export function checkHostname(host: string): string | undefined {
  if (host.length === 0) return 'is empty';
  if (host.length >= 64) return `is ${host.length} characters long; it must be shorter than 64`;
  if (isIpAddress(host)) return undefined;
  for (const label of host.split('.')) {
    if (label.length === 0) return 'has an empty label (two dots in a row, or a dot at an end)';
    if (!/^[A-Za-z0-9-]+$/.test(label))
      return `has the label "${label}" with characters other than letters, digits and hyphens`;
    if (label.startsWith('-') || label.endsWith('-'))
      return `has the label "${label}" starting or ending with a hyphen`;
  }
  return undefined;
}
