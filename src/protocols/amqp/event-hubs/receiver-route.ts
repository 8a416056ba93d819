import rhea, { type Sender } from 'rhea';
import type { EventStreamReader } from '../../../model/events.ts';
import { AmqpRefusal, CONDITION } from '../errors.ts';
import type { LinkContext, LinkRoute } from '../types.ts';
import {
  isEntitySendAddress,
  parsePartitionAddress,
  partitionIndex,
  sameName,
  type PartitionAddress,
} from './entity.ts';
import {
  FilterError,
  SELECTOR_FILTER,
  SELECTOR_FILTER_CODE,
  describeStart,
  parseStartFilter,
  selectorOf,
} from './filter.ts';
import type { PartitionFeed } from './partition-feed.ts';
import { PartitionReceiver } from './partition-receiver.ts';
import type { PartitionOwnership } from './ownership.ts';

/** Link property a receiver names its owner level (epoch) with. */
export const EPOCH_PROPERTY = 'com.microsoft:epoch';
/** Capability a receiver asks for to get the partition's last-enqueued figures with each event. */
export const RUNTIME_METRIC_CAPABILITY = 'com.microsoft:enable-receiver-runtime-metric';

export interface ReceiverRouteDeps {
  entity: string;
  stream: EventStreamReader;
  feed: PartitionFeed;
  ownership: PartitionOwnership;
  /** The consumer group as created (its stored spelling), or undefined when there is none. */
  consumerGroup(name: string): string | undefined;
}

/** rhea internals: the attach we answer with. */
interface LocalAttach {
  snd_settle_mode?: number;
  offered_capabilities?: unknown;
}

function entityUrl(ctx: LinkContext, path: string): string {
  return `sb://${ctx.conn.shared.hostNames[0]}/${path}`;
}

function ownerLevelOf(properties: Record<string, unknown>): number | undefined {
  const v = properties[EPOCH_PROPERTY];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'bigint' ? Number(v) : Number((v as { valueOf(): unknown }).valueOf());
  if (!Number.isSafeInteger(n))
    throw new AmqpRefusal(CONDITION.argument, `${EPOCH_PROPERTY} must be a whole number, got ${String(v)}`);
  return n;
}

function desires(link: LinkContext['link'], capability: string): boolean {
  const caps = (link as unknown as { desired_capabilities?: unknown }).desired_capabilities;
  const list = Array.isArray(caps) ? caps : caps === undefined || caps === null ? [] : [caps];
  return list.some((c) => String(c) === capability);
}

function claimFor(ctx: LinkContext, a: PartitionAddress): boolean {
  const path = `/${a.entity}/ConsumerGroups/${a.consumerGroup}/Partitions/${a.partitionId}`;
  return ctx.conn.claims.policyWith(['ServiceConnect'], ctx.conn.shared.hostNames, path) !== undefined;
}

function openReceiver(ctx: LinkContext, a: PartitionAddress, deps: ReceiverRouteDeps): PartitionReceiver {
  const path = `${a.entity}/ConsumerGroups/${a.consumerGroup}/Partitions/${a.partitionId}`;
  if (!sameName(a.entity, deps.entity)) {
    throw new AmqpRefusal(
      CONDITION.notFound,
      `The messaging entity '${entityUrl(ctx, a.entity)}' could not be found: this hub's Event Hubs entity is '${deps.entity}'`,
    );
  }
  if (!claimFor(ctx, a)) {
    const held = ctx.conn.claims.allPolicies().map((p) => p.policy.keyName);
    throw new AmqpRefusal(
      CONDITION.unauthorized,
      `reading ${path} needs a shared access policy with ServiceConnect (e.g. iothubowner or service) put on $cbs for ${entityUrl(ctx, path)}` +
        (held.length > 0
          ? `; this connection holds ${[...new Set(held)].join(', ')}`
          : '; this connection has put no such token (device tokens cannot read it)'),
    );
  }
  const group = deps.consumerGroup(a.consumerGroup);
  if (group === undefined) {
    throw new AmqpRefusal(
      CONDITION.notFound,
      `The messaging entity '${entityUrl(ctx, `${a.entity}/ConsumerGroups/${a.consumerGroup}`)}' could not be found: there is no consumer group '${a.consumerGroup}' (create it with: strata hub consumer-group add ${a.consumerGroup})`,
    );
  }
  const count = deps.stream.partitionCount();
  const partition = partitionIndex(a.partitionId, count);
  if (partition === undefined) {
    throw new AmqpRefusal(
      CONDITION.notFound,
      `The messaging entity '${entityUrl(ctx, path)}' could not be found: partition '${a.partitionId}' does not exist, ${deps.entity} has partitions 0 to ${count - 1}`,
    );
  }
  const source = (ctx.link as Sender).source as { filter?: unknown } | undefined;
  let start;
  let expression: string | undefined;
  try {
    expression = selectorOf(source?.filter);
    start = parseStartFilter(source?.filter);
  } catch (err) {
    if (err instanceof FilterError) throw new AmqpRefusal(CONDITION.argument, err.message);
    throw err;
  }
  const ownerLevel = ownerLevelOf(ctx.properties);
  const runtimeMetrics = desires(ctx.link, RUNTIME_METRIC_CAPABILITY);

  // The attach answer: the source with the filter we honour; deliveries go out settled unless
  // the client insisted on settling them itself (reading has nothing to settle).
  const link = ctx.link as Sender;
  const terminus: Record<string, unknown> = { address: ctx.address };
  if (expression !== undefined)
    terminus.filter = { [SELECTOR_FILTER]: rhea.types.wrap_described(expression, SELECTOR_FILTER_CODE) };
  link.set_source(terminus as never);
  const local = (link as unknown as { local: { attach: LocalAttach } }).local.attach;
  const asked = (link as unknown as { remote: { attach?: { snd_settle_mode?: number } } }).remote.attach
    ?.snd_settle_mode;
  if (asked !== 0) local.snd_settle_mode = 1;
  if (runtimeMetrics) local.offered_capabilities = [RUNTIME_METRIC_CAPABILITY];

  // Last, as nothing after it may fail: a claimed partition is only given back by the handler's closed().
  let release = (): void => {};
  const receiver = new PartitionReceiver(ctx, {
    stream: deps.stream,
    feed: deps.feed,
    partition,
    start,
    runtimeMetrics,
    authorized: () => claimFor(ctx, a),
    onClosed: () => release(),
  });
  try {
    release = deps.ownership.claim(group, partition, {
      name: ctx.link.name,
      ownerLevel,
      displace: (description) => {
        ctx.conn.log.info({ address: ctx.address, reason: description }, 'receiver displaced by a higher owner level');
        ctx.detach({ condition: CONDITION.stolen, description });
      },
    });
  } catch (err) {
    receiver.closed();
    throw err;
  }
  ctx.conn.log.info(
    { address: ctx.address, consumerGroup: group, partition, start: describeStart(start), ownerLevel },
    'Event Hubs receiver attached',
  );
  return receiver;
}

export function receiverRoutes(deps: ReceiverRouteDeps): LinkRoute[] {
  const partitions: LinkRoute = {
    name: 'event hubs partition receiver',
    role: 'sender',
    match: (path) => parsePartitionAddress(path),
    open: (ctx, params) => openReceiver(ctx, params as PartitionAddress, deps),
  };
  // Producers have nothing to send to: devices are the only source of the built-in endpoint.
  const producers: LinkRoute = {
    name: 'event hubs producer (refused)',
    role: 'receiver',
    match: (path) => (isEntitySendAddress(path, deps.entity) ? true : undefined),
    open: (ctx) => {
      throw new AmqpRefusal(
        CONDITION.notAllowed,
        `${ctx.address} is read-only: the hub's Event Hubs compatible endpoint carries device telemetry and takes no events from clients`,
      );
    },
  };
  return [partitions, producers];
}
