import type { Logger } from 'pino';
import type { EventStreamReader } from '../../../model/events.ts';
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
      ...receiverRoutes({
        entity: this.entity,
        stream: opts.stream,
        feed: this.feed,
        ownership: this.ownership,
        consumerGroup: opts.consumerGroup,
      }),
    ];
  }

  close(): void {
    this.feed.close();
  }
}
