import type mqtt from 'mqtt-packet';
import type { ClientConnection, InternalPacket } from '../types.ts';
import { onDisconnect } from './disconnect.ts';
import { onPingreq } from './ping.ts';
import { onPuback } from './puback.ts';
import { onPublish } from './publish.ts';
import { onSubscribe } from './subscribe.ts';
import { onUnsubscribe } from './unsubscribe.ts';

export { onConnect } from './connect.ts';

/**
 * One packet of a connected client, to the handler of its type (CONNECT is handled by the
 * connection's state machine before any of these).
 */
export function handle(conn: ClientConnection, p: InternalPacket): void {
  switch (p.cmd) {
    case 'publish':
      return onPublish(conn, p as unknown as mqtt.IPublishPacket);
    case 'puback':
      return onPuback(conn, p.messageId ?? 0);
    case 'subscribe':
      return onSubscribe(conn, p as unknown as mqtt.ISubscribePacket);
    case 'unsubscribe':
      return onUnsubscribe(conn, p as unknown as mqtt.IUnsubscribePacket);
    case 'pingreq':
      return onPingreq(conn);
    case 'disconnect':
      return onDisconnect(conn);
    case 'connect':
      return conn.protocolError('second CONNECT on the same connection');
    default:
      return conn.protocolError(`unexpected ${p.cmd.toUpperCase()} packet`);
  }
}
