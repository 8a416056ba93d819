import type { Connection } from 'rhea';

/*
 * Where a connection reaches into rhea's internals to keep one client from costing the process:
 * each guard says which rhea behaviour it works around.
 */

/** The most deliveries one disposition may settle (far above any session window). */
const MAX_DISPOSITION_RANGE = 65_536;

/**
 * rhea settles a disposition's range id by id, so one frame naming billions of deliveries
 * (first 0, last 4294967295) holds the event loop for minutes; a session never has more
 * deliveries in flight than its window. Found by the AMQP fuzzer.
 */
export function boundDispositions(connection: Connection): void {
  type DispositionFrame = { performative: { first: number; last?: number | null } };
  const rc = connection as unknown as { on_disposition(frame: DispositionFrame): void };
  const settle = rc.on_disposition.bind(rc);
  rc.on_disposition = (frame) => {
    const { first, last } = frame.performative;
    const count = last === undefined || last === null ? 1 : last - first + 1;
    if (count > MAX_DISPOSITION_RANGE) {
      // rhea answers a ProtocolError (recognised by name) by closing the connection, as for any malformed frame.
      throw Object.assign(
        new Error(
          `a disposition for ${count} deliveries (ids ${first} to ${last}) is over the ${MAX_DISPOSITION_RANGE} a session can have in flight`,
        ),
        { name: 'ProtocolError' },
      );
    }
    settle(frame);
  };
}

/**
 * rhea re-arms its idle timer (twice the idle timeout, minutes) on every input, also on input
 * that ends in a protocol error, and its disconnect handling does not always clear it: a
 * closed connection then stays in memory, and keeps the process up, until the timer fires.
 */
export function stopRheaTimers(connection: Connection): void {
  const rc = connection as unknown as { heartbeat_in?: NodeJS.Timeout; heartbeat_out?: NodeJS.Timeout };
  clearTimeout(rc.heartbeat_in);
  clearTimeout(rc.heartbeat_out);
  rc.heartbeat_in = undefined;
  rc.heartbeat_out = undefined;
}
