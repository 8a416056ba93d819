/**
 * An upstream link lets go of the attach frames rhea keeps once it is open (a gateway holds a
 * telemetry link per connected leaf), and still sends, settles and detaches as before. The peer
 * is a plain rhea container on loopback.
 */
import assert from 'node:assert/strict';
import type { AddressInfo, Server } from 'node:net';
import { test } from 'node:test';
import rhea, { type Connection, type EventContext } from 'rhea';
import { OutLink, whenAttached } from '../../src/upstream/amqp-links.ts';

interface Internals {
  local: { attach: Record<string, unknown> };
  remote: { attach?: Record<string, unknown> };
  options: Record<string, unknown>;
}

test('an open link keeps only role and settle modes of its attach, and still sends and detaches', async (t) => {
  const peer = rhea.create_container({ id: 'peer' });
  const received: unknown[] = [];
  let detached = 0;
  peer.on('message', (ctx: EventContext) => received.push(ctx.message!.body));
  peer.on('receiver_close', () => detached++);
  // Answers an attach with its target, as a parent does (rhea's default answer names none: a refusal).
  peer.on('receiver_open', (ctx: EventContext) => {
    const r = ctx.receiver as unknown as { target: { address: string }; set_target(f: object): void };
    r.set_target({ address: r.target.address });
  });
  const server = peer.listen({ port: 0, host: '127.0.0.1' }) as unknown as Server;
  await new Promise<void>((r) => server.once('listening', () => r()));
  const conn: Connection = rhea.create_container({ id: 'client' }).connect({
    port: (server.address() as AddressInfo).port,
    host: '127.0.0.1',
    reconnect: false,
  });
  t.after(() => {
    conn.close();
    server.close();
  });

  const sender = conn.open_sender({
    name: 'events-leaf-1',
    target: { address: '/devices/leaf/messages/events' },
    source: { address: 'events-leaf' },
    snd_settle_mode: 0,
    rcv_settle_mode: 0,
    properties: { 'com.microsoft:auth-chain': 'leaf;edge' },
  });
  await whenAttached(sender, 'sender', 'telemetry', 5000);
  await Promise.resolve();
  const l = sender as unknown as Internals;
  assert.deepEqual(Object.keys(l.local.attach).sort(), ['rcv_settle_mode', 'role', 'snd_settle_mode']);
  assert.equal(l.local.attach.role, false);
  assert.equal(l.local.attach.snd_settle_mode, 0);
  for (const gone of ['target', 'source', 'properties']) {
    assert.equal(l.remote.attach?.[gone], undefined, `the parent's ${gone}`);
    assert.equal(l.options[gone], undefined, `the option ${gone}`);
  }
  assert.equal(sender.is_sender(), true);

  const out = new OutLink(sender, 'telemetry');
  assert.deepEqual(await out.send({ body: 'one' }), { ok: true });
  assert.deepEqual(await out.send({ body: 'two' }), { ok: true });
  assert.deepEqual(received, ['one', 'two']);

  out.end('done');
  await new Promise<void>((resolve, reject) => {
    const until = Date.now() + 5000;
    const poll = () =>
      detached === 1 ? resolve() : Date.now() > until ? reject(new Error('no detach')) : setTimeout(poll, 10);
    poll();
  });
  assert.equal(sender.is_closed(), true);
});
