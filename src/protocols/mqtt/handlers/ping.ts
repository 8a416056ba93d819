import type { ClientConnection } from '../types.ts';

/** PINGREQ: its arrival already renewed the keep-alive; the answer tells the client we are there. */
export function onPingreq(conn: ClientConnection): void {
  conn.send({ cmd: 'pingresp' });
}
