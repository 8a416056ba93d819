import { childLog } from '../../../util/log.ts';
import type { ClientConnection } from '../types.ts';

const log = childLog('mqtt');

/** PUBACK for a C2D message or module input we sent: completes it in the engine. */
export function onPuback(conn: ClientConnection, packetId: number): void {
  const lockToken = conn.awaitingAck?.get(packetId);
  if (lockToken === undefined) return;
  conn.awaitingAck!.delete(packetId);
  conn
    .session!.settleC2D(lockToken, 'complete')
    .catch((err: unknown) => log.warn({ err, who: conn.who() }, 'C2D completion failed'));
}
