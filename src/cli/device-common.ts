/** What every `strata device` command shares: hub access, output, id checks. */
import type { Command } from 'commander';
import { openHubAccess, withHubAccessFlags, type HubAccessFlags } from './hub-access.ts';
import { UserError } from '../util/errors.ts';
import { deviceIdProblem, moduleIdProblem } from '../identity/device-id.ts';
import type { ServiceClient } from '../hub/service-client.ts';

export interface HubFlags extends HubAccessFlags {
  json?: boolean;
}

export function withHubFlags(cmd: Command): Command {
  return withHubAccessFlags(cmd).option('--json', 'print JSON for scripts instead of tables');
}

// ---------------------------------------------------------------------------------------------
// Reaching the hub

export interface Hub {
  client: ServiceClient;
  /** HostName for device connection strings, as the service connection string names the hub. */
  hostName: string;
}

async function openHub(flags: HubFlags): Promise<Hub> {
  return openHubAccess(flags);
}

/** Opens the hub, runs `fn`, and always lets go of the connection so the process can exit. */
export async function withHub(flags: HubFlags, fn: (hub: Hub) => Promise<void>): Promise<void> {
  const hub = await openHub(flags);
  try {
    await fn(hub);
  } finally {
    hub.client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Output

export function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function emit(flags: HubFlags, json: unknown, human: () => string): void {
  out(flags.json ? JSON.stringify(json, null, 2) : human());
}

export function table(headers: string[], rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function keyValues(pairs: Array<[string, string | undefined]>): string {
  const shown = pairs.filter(([, v]) => v !== undefined && v !== '') as Array<[string, string]>;
  const width = Math.max(...shown.map(([k]) => k.length));
  return shown.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}

export const yesNo = (b: boolean | undefined) => (b ? 'yes' : 'no');

// ---------------------------------------------------------------------------------------------
// Ids

export function checkDeviceId(id: string): string {
  const problem = deviceIdProblem(id);
  if (problem) throw new UserError(problem);
  return id;
}

export function checkModuleId(id: string): string {
  const problem = moduleIdProblem(id);
  if (problem) throw new UserError(problem);
  return id;
}

export function idList(text: string, flag: string): string[] {
  const ids = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (ids.length === 0) throw new UserError(`${flag} names no devices`, `Write ${flag} a,b,c`);
  return [...new Set(ids.map(checkDeviceId))];
}
