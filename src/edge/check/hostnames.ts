/** The hostname group: hostname, parent_hostname, and whether both follow one pattern. */
import { hostname as osHostname } from 'node:os';
import { checkHostname, isIpAddress } from '../hostname.ts';
import { result, type CheckResult } from './checks.ts';
import { lineText, nestedKeyLine, type LoadedForCheck } from './configuration.ts';

export function checkHostnameSetting(loaded: LoadedForCheck): {
  check: CheckResult;
  hostname?: string;
  explicit: boolean;
} {
  const id = 'hostname';
  const fix =
    "Set hostname at the top of config.toml (before any [section]) to an FQDN or IP address shorter than 64 characters: it is the CN of the gateway's server certificate and the name downstream devices dial";
  if (!loaded.raw) return { check: result(id, 'skipped', 'the config file could not be parsed'), explicit: false };
  const value = loaded.raw.hostname;
  const line = loaded.topLines.get('hostname');
  if (value === undefined) {
    const name = osHostname();
    const problem = checkHostname(name);
    const nested = nestedKeyLine(loaded, 'hostname');
    const why = nested
      ? `the hostname on line ${nested} is inside a section, so there is no top-level hostname`
      : 'no hostname is set';
    if (problem)
      return {
        check: result(
          id,
          'error',
          `${why}; the gateway would use this machine's name "${name}", which ${problem}`,
          fix,
        ),
        explicit: false,
      };
    return {
      check: result(id, 'warning', `${why}; the gateway uses this machine's name "${name}"`, fix),
      hostname: name,
      explicit: false,
    };
  }
  if (typeof value !== 'string')
    return {
      check: result(
        id,
        'error',
        `${lineText(line)}hostname must be a string`,
        'Write hostname = "gateway.example.local"',
      ),
      explicit: true,
    };
  const problem = checkHostname(value);
  if (problem)
    return { check: result(id, 'error', `${lineText(line)}hostname "${value}" ${problem}`, fix), explicit: true };
  return {
    check: result(
      id,
      'pass',
      `"${value}" (${isIpAddress(value) ? 'IP address' : 'DNS name'}, ${value.length} characters)`,
    ),
    hostname: value,
    explicit: true,
  };
}

export function checkParentHostname(loaded: LoadedForCheck): { check: CheckResult; parent?: string } {
  const id = 'parent-hostname';
  if (!loaded.raw) return { check: result(id, 'skipped', 'the config file could not be parsed') };
  const value = loaded.raw.parent_hostname;
  const line = loaded.topLines.get('parent_hostname');
  const fix =
    "Set parent_hostname (at the top of config.toml) to the parent's hostname exactly as the parent's own config.toml sets it";
  if (value === undefined) {
    const nested = nestedKeyLine(loaded, 'parent_hostname');
    if (nested)
      return {
        check: result(
          id,
          'error',
          `the parent_hostname on line ${nested} is inside a section, so this gateway would connect to the IoT hub instead of its parent`,
          'Move it above the first [section]',
        ),
      };
    return { check: result(id, 'skipped', 'not set: this is a top-layer gateway; its upstream is the IoT hub') };
  }
  if (typeof value !== 'string')
    return { check: result(id, 'error', `${lineText(line)}parent_hostname must be a string`, fix) };
  const problem = checkHostname(value);
  if (problem) return { check: result(id, 'error', `${lineText(line)}parent_hostname "${value}" ${problem}`, fix) };
  return { check: result(id, 'pass', `"${value}" (${isIpAddress(value) ? 'IP address' : 'DNS name'})`), parent: value };
}

export function checkHostnamePattern(
  hostname: string | undefined,
  explicit: boolean,
  parent: string | undefined,
): CheckResult {
  const id = 'hostname-pattern';
  if (!hostname || !explicit || !parent)
    return result(id, 'skipped', 'needs both hostname and parent_hostname set and valid');
  if (isIpAddress(hostname) !== isIpAddress(parent)) {
    return result(
      id,
      'warning',
      `hostname "${hostname}" is ${isIpAddress(hostname) ? 'an IP address' : 'a name'} but parent_hostname "${parent}" is ${isIpAddress(parent) ? 'an IP address' : 'a name'}`,
      'Use one pattern across the whole hierarchy: FQDNs everywhere, or IP addresses everywhere',
    );
  }
  return result(id, 'pass', isIpAddress(hostname) ? 'both are IP addresses' : 'both are names');
}
