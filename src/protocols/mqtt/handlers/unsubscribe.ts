import type mqtt from 'mqtt-packet';
import { parseSubscription } from '../topics.ts';
import type { ClientConnection } from '../types.ts';

/** UNSUBSCRIBE: filters that are not IoT Hub topics are acknowledged and ignored. */
export function onUnsubscribe(conn: ClientConnection, p: mqtt.IUnsubscribePacket): void {
  for (const f of p.unsubscriptions) {
    const sub = parseSubscription(f);
    if (sub) conn.session!.unsubscribe(sub.kind);
  }
  conn.send({ cmd: 'unsuback', messageId: p.messageId });
}
