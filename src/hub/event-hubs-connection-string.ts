import { formatConnectionString, parseConnectionString } from '../identity/connection-string.ts';
import { eventHubsEntityName } from '../protocols/amqp/event-hubs/entity.ts';
import { hubConnectionString, readHubState } from './local.ts';

/** The port Event Hubs clients dial when the Endpoint names none. */
export const EVENT_HUBS_DEFAULT_PORT = 5671;

/**
 * `Endpoint=sb://{host}/;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath={hub}` for one
 * of a local hub's policies. The Endpoint carries the AMQP port only when it is not 5671 (the
 * clients' default); the hub then also accepts token audiences that name `{host}:{port}`.
 */
export function eventHubsConnectionString(dataDir: string, policyName = 'iothubowner'): string {
  const fields = parseConnectionString(hubConnectionString(dataDir, policyName));
  const host = fields.HostName!;
  const amqpPort = readHubState(dataDir)?.ports.amqp ?? EVENT_HUBS_DEFAULT_PORT;
  return formatConnectionString({
    Endpoint: `sb://${host}${amqpPort === EVENT_HUBS_DEFAULT_PORT ? '' : `:${amqpPort}`}/`,
    SharedAccessKeyName: fields.SharedAccessKeyName,
    SharedAccessKey: fields.SharedAccessKey,
    EntityPath: eventHubsEntityName(host),
  });
}
