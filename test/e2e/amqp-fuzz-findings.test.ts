/**
 * Bugs test/fuzz/amqp-wire found, one test each.
 *
 * A client whose SASL PLAIN is refused and that then sends an AMQP
 * header is answered and cut off by rhea, which then stops reading: the client's own close was
 * never seen, and the hub kept the socket and the connection, with rhea's idle timer (twice the
 * idle timeout, 8 minutes) holding the process open. The hub now destroys a socket whose client
 * has not closed within 2 s of the hub closing its side, and clears rhea's timers on close.
 *
 * rhea settles a disposition's range id by id: one frame with ids 0 to 4294967295, sent by a
 * client that had not even authenticated (SASL ANONYMOUS, then open and begin), held the hub's
 * event loop for minutes. The hub now closes such a connection as malformed.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import { AWAIT_REPLY, writeAndEnd } from '../fuzz/wire.ts';
import { createSasDevice, deviceToken, startTestHub, type TestHub } from './mqtt-helpers.ts';

const require = createRequire(import.meta.url);
const frames = require('rhea/lib/frames.js') as any;

// Long timers created in this process, to see which outlive their connection.
const longTimers = new Set<NodeJS.Timeout>();
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
  const t = realSetTimeout(fn, ms, ...args);
  if ((ms ?? 0) >= 100_000) longTimers.add(t);
  return t;
}) as typeof setTimeout;
const liveLongTimers = () =>
  [...longTimers].filter((t) => !(t as unknown as { _destroyed: boolean })._destroyed && t.hasRef()).length;

let hub: TestHub;
let key: string;
const cleanups: Array<() => unknown> = [];
before(async () => {
  hub = await startTestHub({ after: (fn) => cleanups.push(fn) });
  key = createSasDevice(hub, 'timer').key;
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

for (const [what, token] of [
  ['refused', () => deviceToken(hub, 'timer', key).replace(/sig=[^&]+/, 'sig=bad')],
  ['accepted', () => deviceToken(hub, 'timer', key)],
] as const)
  test(`an AMQP connection ended by a protocol error after SASL (${what}) leaves no idle timer behind`, async () => {
    const user = `timer@sas.${hub.address.split('.')[0]}`;
    const plain = Buffer.concat([Buffer.from([0]), Buffer.from(user), Buffer.from([0]), Buffer.from(token())]);
    const chunks = [
      Buffer.from('AMQP\x03\x01\x00\x00', 'latin1'),
      frames.write_frame(
        frames.sasl_frame(frames.sasl_init({ mechanism: 'PLAIN', initial_response: plain })),
      ) as Buffer,
      AWAIT_REPLY,
      Buffer.from('AMQP\x00\x97\x00\x00', 'latin1'),
      frames.write_frame(frames.amqp_frame(0, frames.open({ container_id: 'timer', hostname: hub.address }))) as Buffer,
      AWAIT_REPLY,
    ];
    const before = liveLongTimers();
    for (let i = 0; i < 3; i++) {
      const out = await writeAndEnd({
        address: hub.address,
        port: hub.node.ports.amqp,
        ca: hub.caPem,
        chunks,
        closeWithinMs: 10_000,
      });
      assert.ok(out.closed, 'the hub closed the connection');
    }
    // The client's grace to close its side is 2 s.
    await new Promise((r) => realSetTimeout(r, 3000));
    assert.equal(liveLongTimers() - before, 0, 'long timers left behind by closed connections');
  });

test('a disposition naming four billion deliveries closes the connection at once, even unauthenticated', async () => {
  const chunks = [
    Buffer.from('AMQP\x03\x01\x00\x00', 'latin1'),
    frames.write_frame(frames.sasl_frame(frames.sasl_init({ mechanism: 'ANONYMOUS' }))) as Buffer,
    AWAIT_REPLY,
    Buffer.from('AMQP\x00\x01\x00\x00', 'latin1'),
    frames.write_frame(frames.amqp_frame(0, frames.open({ container_id: 'range', hostname: hub.address }))) as Buffer,
    frames.write_frame(
      frames.amqp_frame(0, frames.begin({ next_outgoing_id: 0, incoming_window: 2048, outgoing_window: 2048 })),
    ) as Buffer,
    AWAIT_REPLY,
    // The whole uint range: some seconds of work per frame for a hub without the bound.
    frames.write_frame(
      frames.amqp_frame(0, frames.disposition({ role: false, first: 0, last: 0xffffffff, settled: true })),
    ) as Buffer,
  ];
  const out = await writeAndEnd({
    address: hub.address,
    port: hub.node.ports.amqp,
    ca: hub.caPem,
    chunks,
    closeWithinMs: 10_000,
    lingerMs: 200,
  });
  assert.ok(out.closed, 'the hub closed the connection');
  // Its close says why (a hub without the bound says nothing, after seconds of work per frame).
  assert.match(out.received.toString('latin1'), /protocol error: a disposition for 4294967296 deliveries/);
});
