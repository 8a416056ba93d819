import type { ClientConnection } from '../types.ts';

/** DISCONNECT: the client's orderly goodbye; its session ends as the client's doing. */
export function onDisconnect(conn: ClientConnection): void {
  conn.teardown('client');
}
