import type mqtt from 'mqtt-packet';
import { describeIdentity } from '../../../model/identity.ts';
import type { SubscriptionKind } from '../../../engine/types.ts';
import { childLog, wireText } from '../../../util/log.ts';
import { parseSubscription, sameIdentity } from '../topics.ts';
import type { ClientConnection } from '../types.ts';

const log = childLog('mqtt');

/** SUBSCRIBE: IoT Hub topic filters of the connected identity only; anything else is refused (0x80). */
export function onSubscribe(conn: ClientConnection, p: mqtt.ISubscribePacket): void {
  const session = conn.session!;
  const granted: number[] = [];
  const kinds: SubscriptionKind[] = [];
  for (const s of p.subscriptions) {
    const sub = parseSubscription(s.topic);
    if (!sub) {
      log.warn({ who: conn.who(), filter: wireText(s.topic) }, 'subscription refused: not an IoT Hub topic filter');
      granted.push(0x80);
      continue;
    }
    if (
      sub.identity &&
      !sameIdentity(sub.identity, {
        deviceId: session.identity.deviceId,
        moduleId: sub.kind === 'c2d' ? undefined : session.identity.moduleId,
      })
    ) {
      return conn.forbidden(`subscribed to ${describeIdentity(sub.identity)}'s topic "${wireText(s.topic)}"`);
    }
    if (
      (sub.kind === 'c2d' && session.identity.moduleId !== undefined) ||
      (sub.kind === 'inputs' && session.identity.moduleId === undefined)
    ) {
      log.warn(
        { who: conn.who(), filter: wireText(s.topic) },
        `subscription refused: ${sub.kind === 'c2d' ? 'modules do not receive C2D messages' : 'devices have no inputs'}`,
      );
      granted.push(0x80);
      continue;
    }
    granted.push(Math.min(s.qos, 1));
    kinds.push(sub.kind);
  }
  conn.send({ cmd: 'suback', messageId: p.messageId, granted });
  // After the SUBACK, so that resumed deliveries follow it on the wire.
  for (const k of kinds) session.subscribe(k);
}
