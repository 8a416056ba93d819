/**
 * What an open upstream link keeps: the attach frames rhea holds are let go once it is open (a
 * gateway holds a telemetry link per connected leaf), and an attach leaves nothing waiting on
 * the connection once it settled; links still send, settle and detach as before. The peer is a
 * plain rhea container on loopback that answers every attach with its terminus.
 */
import assert from 'node:assert/strict';
import { connect, type AddressInfo, type Server } from 'node:net';
import { test, type TestContext } from 'node:test';
import pino from 'pino';
import rhea, { type Connection, type EventContext } from 'rhea';
import { AmqpConnection } from '../../src/upstream/amqp-connection.ts';
import { OutLink, whenAttached } from '../../src/upstream/amqp-links.ts';
import { UpstreamDownError } from '../../src/upstream/errors.ts';

interface Internals {
  local: { attach: Record<string, unknown> };
  remote: { attach?: Record<string, unknown> };
  options: Record<string, unknown>;
}

interface Peer {
  port: number;
  received: unknown[];
  detached: () => number;
}

async function startPeer(t: TestContext): Promise<Peer> {
  const peer = rhea.create_container({ id: 'peer' });
  const received: unknown[] = [];
  let detached = 0;
  peer.on('message', (ctx: EventContext) => received.push(ctx.message!.body));
  peer.on('receiver_close', () => detached++);
  // rhea's own answer to an attach names no terminus (a refusal): answer as a parent does.
  type Terminus = { address: string };
  peer.on('receiver_open', (ctx: EventContext) => {
    const r = ctx.receiver as unknown as { target: Terminus; set_target(f: Terminus): void };
    r.set_target({ address: r.target.address });
  });
  peer.on('sender_open', (ctx: EventContext) => {
    const s = ctx.sender as unknown as { source: Terminus; set_source(f: Terminus): void };
    s.set_source({ address: s.source.address });
  });
  const server = peer.listen({ port: 0, host: '127.0.0.1' }) as unknown as Server;
  await new Promise<void>((r) => server.once('listening', () => r()));
  t.after(() => server.close());
  return { port: (server.address() as AddressInfo).port, received, detached: () => detached };
}

async function until(what: string, ok: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('an open link keeps only role and settle modes of its attach, and still sends and detaches', async (t) => {
  const peer = await startPeer(t);
  const conn: Connection = rhea.create_container({ id: 'client' }).connect({
    port: peer.port,
    host: '127.0.0.1',
    reconnect: false,
  });
  t.after(() => conn.close());

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
  assert.deepEqual(peer.received, ['one', 'two']);

  out.end('done');
  await until('the detach', () => peer.detached() === 1);
  assert.equal(sender.is_closed(), true);
});

test('a settled attach leaves nothing waiting on the connection; one under way fails when it goes', async (t) => {
  const peer = await startPeer(t);
  const socket = connect(peer.port, '127.0.0.1');
  await new Promise<void>((r) => socket.once('connect', () => r()));
  const pc = await AmqpConnection.open(socket, {
    containerId: 'gateway-upstream',
    hubHostName: 'hub.example',
    idleTimeoutMs: 30_000,
    operationTimeoutMs: 5000,
    log: pino({ level: 'silent' }),
  });
  t.after(() => pc.end('test over'));
  const waiting = () => (pc as unknown as { attachWaiters: Set<unknown> }).attachWaiters.size;

  for (let i = 0; i < 5; i++) {
    const link = await pc.openSender(
      { name: `events-${i}`, target: { address: `/devices/d${i}/messages/events` }, source: { address: `e${i}` } },
      `telemetry ${i}`,
    );
    assert.deepEqual(await link.send({ body: `m${i}` }), { ok: true });
  }
  assert.equal(waiting(), 0, 'no attach waits on the connection once settled');

  const underWay = pc.openSender({ name: 'late', target: { address: '/devices/late/messages/events' } }, 'late');
  assert.equal(waiting(), 1);
  pc.end('the parent went away');
  await assert.rejects(underWay, (err: unknown) => {
    assert.ok(err instanceof UpstreamDownError, String(err));
    assert.match((err as Error).message, /the parent went away/);
    return true;
  });
  assert.equal(waiting(), 0);
  await assert.rejects(
    pc.openSender({ name: 'after', target: { address: '/x' } }, 'after'),
    (err: unknown) => err instanceof UpstreamDownError,
  );
});
