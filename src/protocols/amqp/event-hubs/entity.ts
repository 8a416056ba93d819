import { isIP } from 'node:net';

/**
 * Names and addresses of the hub's Event Hubs compatible endpoint. The endpoint serves one
 * entity (an "event hub") named after the hub: IoT Hub calls it the hub name, the first label
 * of `{name}.azure-devices.net`. A hub addressed by an IP literal has no such label, so its
 * entity is the whole address. Entity, consumer group and the fixed words of an address all
 * compare case-insensitively, as Event Hubs names do.
 */

/** The Event Hubs entity (EntityPath) of a hub with this host name. */
export function eventHubsEntityName(hostName: string): string {
  const host = hostName.trim();
  if (isIP(host)) return host;
  return host.split('.')[0]!;
}

export function sameName(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/** The path of an address without a leading slash: clients write `{entity}/...` or `amqps://host/{entity}/...`. */
function segments(path: string): string[] {
  return path.replace(/^\/+/, '').split('/');
}

/** `{entity}/ConsumerGroups/{group}/Partitions/{id}`: what a partition receiver attaches to. */
export interface PartitionAddress {
  entity: string;
  consumerGroup: string;
  /** As the client wrote it; checked against the partition count at attach. */
  partitionId: string;
}

export function parsePartitionAddress(path: string): PartitionAddress | undefined {
  const p = segments(path);
  if (p.length !== 5 || !p[0] || !p[2] || !p[4]) return undefined;
  if (p[1]!.toLowerCase() !== 'consumergroups' || p[3]!.toLowerCase() !== 'partitions') return undefined;
  return { entity: decode(p[0]), consumerGroup: decode(p[2]), partitionId: decode(p[4]) };
}

/** `$management` (what the clients attach to) or `{entity}/$management`; the entity when named. */
export function parseManagementAddress(path: string): { entity?: string } | undefined {
  const p = segments(path);
  if (p.length === 1 && p[0]!.toLowerCase() === '$management') return {};
  if (p.length === 2 && p[0] && p[1]!.toLowerCase() === '$management') return { entity: decode(p[0]) };
  return undefined;
}

/** `{entity}` or `{entity}/Partitions/{id}`: where an Event Hubs producer would send. */
export function isEntitySendAddress(path: string, entity: string): boolean {
  const p = segments(path);
  if (!p[0] || !sameName(decode(p[0]), entity)) return false;
  return p.length === 1 || (p.length === 3 && p[1]!.toLowerCase() === 'partitions' && p[2] !== '');
}

/** A partition id as Event Hubs writes it: a decimal number without sign or leading zeros. */
export function partitionIndex(id: string, count: number): number | undefined {
  if (!/^(0|[1-9][0-9]{0,8})$/.test(id)) return undefined;
  const n = Number(id);
  return n < count ? n : undefined;
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The port Event Hubs clients dial when the Endpoint names none. */
export const EVENT_HUBS_DEFAULT_PORT = 5671;
