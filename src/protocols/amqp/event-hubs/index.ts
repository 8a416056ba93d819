import type { Logger } from 'pino';
import { engineOf } from '../../../engine/hub-attach.ts';
import type { EventStreamReader } from '../../../model/events.ts';
import type { HubNode } from '../../../hub/hub.ts';
import { ConsumerGroups } from '../../../store/consumer-groups.ts';
import type { AmqpHead } from '../head.ts';
import type { LinkRoute } from '../links.ts';
import { eventHubsEntityName } from './entity.ts';
import { managementRoutes } from './management.ts';
import { PartitionOwnership } from './ownership.ts';
import { PartitionFeed } from './partition-feed.ts';
import { receiverRoutes } from './receiver-route.ts';

export { eventHubsEntityName } from './entity.ts';
export { parseStartExpression, type StartPosition } from './filter.ts';

/**
 * The hub's built-in endpoint as Event Hubs clients see it: on the AMQP port (and AMQP over
 * WebSockets), one entity named after the hub with the event stream's partitions, `$Default`
 * and the consumer groups of the hub database, `$management` READs, and partition receivers.
 * Authentication is the AMQP head's CBS with a shared access policy that has ServiceConnect.
 */
export interface EventHubsEndpointOptions {
  /** The hub host name (the Endpoint of the connection string). */
  hostName: string;
  /** The entity (EntityPath); default: from the host name, see `eventHubsEntityName`. */
  entity?: string;
  stream: EventStreamReader;
  log?: Logger;
  /** When the stream was created (epoch ms), reported as the entity's created_at. */
  createdAt(): number;
  /** The consumer group as created, or undefined when there is none. */
  consumerGroup(name: string): string | undefined;
}

export class EventHubsEndpoint {
  readonly entity: string;
  readonly feed: PartitionFeed;
  readonly ownership = new PartitionOwnership();
  readonly routes: LinkRoute[];

  constructor(opts: EventHubsEndpointOptions) {
    this.entity = opts.entity ?? eventHubsEntityName(opts.hostName);
    this.feed = new PartitionFeed(opts.stream, opts.log);
    this.routes = [
      ...managementRoutes({ entity: this.entity, stream: opts.stream, createdAt: opts.createdAt }),
      ...receiverRoutes({ entity: this.entity, stream: opts.stream, feed: this.feed, ownership: this.ownership, consumerGroup: opts.consumerGroup }),
    ];
  }

  close(): void {
    this.feed.close();
  }
}

/**
 * Adds the Event Hubs routes to a hub's AMQP head (called by `attachAmqp`) and lists the
 * endpoint among the hub's listeners.
 */
export function attachEventHubs(node: HubNode, head: AmqpHead): EventHubsEndpoint {
  const engine = engineOf(node);
  if (!engine) throw new Error('the Event Hubs endpoint needs the device engine: attach it first');
  const groups = new ConsumerGroups(node.db);
  const endpoint = new EventHubsEndpoint({
    hostName: node.hostname,
    stream: engine.events,
    log: head.log,
    createdAt: () => engine.eventStream.createdAt(),
    consumerGroup: (name) => groups.get(name)?.name,
  });
  head.addRoutes(endpoint.routes);
  node.onClose(() => endpoint.close());
  const port = node.ports.amqp === 5671 ? '' : `:${node.ports.amqp}`;
  node.listeners.push({
    name: 'Event Hubs endpoint',
    url: `sb://${node.hostname}${port}/ EntityPath=${endpoint.entity} (${engine.events.partitionCount()} partitions; strata hub connection-string --event-hubs)`,
  });
  return endpoint;
}
