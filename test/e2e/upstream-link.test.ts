import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { newKey, serviceClient, waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import type { AuthResult } from '../../src/model/identity.ts';
import type { Message } from '../../src/model/message.ts';
import type { MethodRequest } from '../../src/model/methods.ts';
import type { TwinCollection } from '../../src/model/twin.ts';
import { MessageStore } from '../../src/store/message-store.ts';
import { EndpointPump } from '../../src/routing/pump.ts';
import { AmqpParentLink, type UpstreamC2DDelivery } from '../../src/upstream/index.ts';
import { storedMessageOf } from '../../src/store/sender-message.ts';
import { createRootCa } from '../../src/pki/index.ts';
import { encodeBatchOf } from '../../src/protocols/amqp/batch.ts';

/**
 * A gateway's upstream link against a real hub process: one AMQP connection carrying several
 * downstream identities on behalf of the edge device (`{edge}/$edgeHub` credential plus auth
 * chains), and the hub's acceptance (or refusal) of it.
 */

let hub: HubProcess;
let svc: ServiceClient;
let dir: string;
let edgeKey: string;
let proxy: CountingProxy;
let link: AmqpParentLink;
const closers: Array<() => Promise<unknown>> = [];

/** A TCP relay in front of the hub's AMQP port that counts the connections made through it. */
interface CountingProxy {
  port: number;
  connections: number;
  close(): Promise<void>;
}

async function countingProxy(address: string, targetPort: number): Promise<CountingProxy> {
  const sockets = new Set<net.Socket>();
  const p: CountingProxy = { port: 0, connections: 0, close: async () => {} };
  const server = net.createServer((client) => {
    p.connections++;
    const upstream = net.connect({ host: address, port: targetPort });
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  p.port = (server.address() as net.AddressInfo).port;
  p.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return p;
}

const sasAuth = () => ({ type: 'sas', symmetricKey: { primaryKey: newKey(), secondaryKey: newKey() } });

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
  dir = await mkdtemp(join(tmpdir(), 'strata-upstream-'));
  edgeKey = newKey();
  const edge = await svc.createDevice({
    deviceId: 'edge-1',
    capabilities: { iotEdge: true },
    authentication: { type: 'sas', symmetricKey: { primaryKey: edgeKey, secondaryKey: newKey() } },
  } as never);
  const other = await svc.createDevice({
    deviceId: 'edge-2',
    capabilities: { iotEdge: true },
    authentication: sasAuth(),
  } as never);
  for (const id of ['leaf-a', 'leaf-b'])
    await svc.createDevice({ deviceId: id, deviceScope: edge.deviceScope, authentication: sasAuth() } as never);
  await svc.createModule({ deviceId: 'leaf-a', moduleId: 'sensor', authentication: sasAuth() } as never);
  await svc.createDevice({ deviceId: 'leaf-x', deviceScope: other.deviceScope, authentication: sasAuth() } as never);
  proxy = await countingProxy(hub.address, 5671);
  link = new AmqpParentLink({
    parentHost: hub.hostname,
    port: proxy.port,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'edge-1',
    edgeKey,
  });
  closers.push(() => link.close());
  const up = new Promise<void>((resolve) => link.once('up', () => resolve()));
  await link.start();
  await up;
  assert.equal(link.connected, true);
});

after(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  await proxy?.close();
  svc?.close();
  await hub?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function deviceAuth(deviceId: string, moduleId?: string): AuthResult {
  return {
    identity: moduleId === undefined ? { deviceId } : { deviceId, moduleId },
    kind: 'sas',
    authMethod: '{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}',
  };
}

function telemetry(text: string, extra: Partial<Message> = {}): Message {
  return { body: Buffer.from(text), properties: { seq: text }, ...extra };
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('telemetry of two leaves and a module goes through one connection and arrives with their own ids, in order', async () => {
  const store = MessageStore.open({ path: join(dir, 'order.db') });
  closers.push(async () => store.close());
  const endpoint = link.telemetryEndpoint();
  const pump = new EndpointPump(store, endpoint);
  closers.push(() => pump.stop());
  pump.start();

  const N = 60;
  const target = [{ endpoint: '$upstream', priority: 0, ttlSecs: 0 }];
  const appends: Array<Promise<void>> = [];
  for (let i = 0; i < N; i++) {
    appends.push(
      store.append({
        message: storedMessageOf(
          deviceAuth('leaf-a'),
          telemetry(`a-${i}`, { messageId: `a-${i}`, contentType: 'application/json', contentEncoding: 'utf-8' }),
        ),
        targets: target,
      }),
    );
    appends.push(
      store.append({
        message: storedMessageOf(deviceAuth('leaf-b'), telemetry(`b-${i}`, { messageId: `b-${i}` })),
        targets: target,
      }),
    );
  }
  appends.push(
    store.append({
      message: storedMessageOf(deviceAuth('leaf-a', 'sensor'), telemetry('m-0', { outputName: 'out1' })),
      targets: target,
    }),
  );
  await Promise.all(appends);
  await until('the store to drain', () => store.queueLength('$upstream') === 0 && pump.metrics().sent === 2 * N + 1);

  const a = await waitForEvents(svc, { device: 'leaf-a' }, N + 1);
  const b = await waitForEvents(svc, { device: 'leaf-b' }, N);
  const fromA = a.filter((e) => e.moduleId === undefined);
  assert.deepEqual(
    fromA.map((e) => Buffer.from(e.body, 'base64').toString()),
    Array.from({ length: N }, (_, i) => `a-${i}`),
  );
  assert.deepEqual(
    b.map((e) => Buffer.from(e.body, 'base64').toString()),
    Array.from({ length: N }, (_, i) => `b-${i}`),
  );
  for (const e of fromA) {
    assert.equal(e.annotations['iothub-connection-device-id'], 'leaf-a');
    assert.equal(e.systemProperties['message-id'], Buffer.from(e.body, 'base64').toString());
    assert.equal(e.systemProperties['content-type'], 'application/json');
    assert.equal(e.properties.seq, Buffer.from(e.body, 'base64').toString());
  }
  for (const e of b) assert.equal(e.annotations['iothub-connection-device-id'], 'leaf-b');
  const fromModule = a.find((e) => e.moduleId === 'sensor');
  assert.ok(fromModule, 'the module message arrives');
  assert.equal(fromModule.annotations['iothub-connection-module-id'], 'sensor');
  assert.equal(fromModule.systemProperties['iothub-outputname'], 'out1');
  assert.equal(proxy.connections, 1, 'every identity shares the one upstream connection');
});

test('twin get, reported patch and desired pushes reach the upstream identity', async () => {
  const leaf = link.openIdentity({ deviceId: 'leaf-a', authChain: 'leaf-a;edge-1' });
  closers.push(() => leaf.close());
  const pushes: TwinCollection[] = [];
  leaf.onDesired((p) => pushes.push(p));
  await leaf.ready();

  await svc.updateTwin('leaf-a', { properties: { desired: { interval: 5 } } });
  await until('the desired push', () => pushes.some((p) => p.interval === 5));
  const twin = await leaf.twinGet();
  assert.equal(twin.desired.interval, 5);
  assert.equal(typeof twin.reported.$version, 'number');

  const { version } = await leaf.twinPatchReported({ firmware: '1.2.3', battery: 80 });
  assert.ok(version > (twin.reported.$version as number), `the reported version grows (${version})`);
  const atHub = await svc.getTwin('leaf-a');
  assert.equal((atHub.properties?.reported as Record<string, unknown> | undefined)?.firmware, '1.2.3');
  assert.equal(proxy.connections, 1);
});

test("the gateway's own $edgeHub twin (routes, TTL) is read and pushed over the same link", async () => {
  const self = link.openIdentity({ deviceId: 'edge-1', moduleId: '$edgeHub', authChain: 'edge-1/$edgeHub;edge-1' });
  closers.push(() => self.close());
  const pushes: TwinCollection[] = [];
  self.onDesired((p) => pushes.push(p));
  await self.ready();
  // A whole deployment: the hub refuses $edgeHub desired properties a gateway could not use.
  await svc.updateTwin(
    'edge-1',
    {
      properties: {
        desired: {
          schemaVersion: '1.1',
          routes: { all: 'FROM /messages/* INTO $upstream' },
          storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
        },
      },
    },
    '*',
    '$edgeHub',
  );
  await until('the $edgeHub desired push', () =>
    pushes.some((p) => (p.routes as Record<string, string> | undefined)?.all !== undefined),
  );
  const twin = await self.twinGet();
  assert.deepEqual(twin.desired.routes, { all: 'FROM /messages/* INTO $upstream' });
  assert.equal(proxy.connections, 1);
});

test('a direct method invoked at the hub reaches onMethod and the response returns', async () => {
  const leaf = link.openIdentity({ deviceId: 'leaf-b', authChain: 'leaf-b;edge-1' });
  closers.push(() => leaf.close());
  const calls: MethodRequest[] = [];
  leaf.onMethod((req) => {
    calls.push(req);
    const args = JSON.parse(req.payload.toString()) as { delay: number };
    leaf.methodResponse(req.requestId, 200, Buffer.from(JSON.stringify({ rebooting: true, delay: args.delay })));
  });
  await leaf.ready();
  const r = await svc.request<{ status: number; payload: unknown }>('POST', '/twins/leaf-b/methods', {
    body: { methodName: 'reboot', payload: { delay: 3 }, responseTimeoutInSeconds: 10 },
  });
  assert.deepEqual(r.body, { status: 200, payload: { rebooting: true, delay: 3 } });
  assert.equal(calls.length, 1);
  assert.equal(calls[0]!.methodName, 'reboot');
});

test('C2D sent to a leaf at the hub reaches onC2D; abandon redelivers, complete settles it at the hub', async () => {
  const leaf = link.openIdentity({ deviceId: 'leaf-b', authChain: 'leaf-b;edge-1' });
  closers.push(() => leaf.close());
  const got: UpstreamC2DDelivery[] = [];
  leaf.onC2D((d) => got.push(d));
  await leaf.ready();
  await svc.request('POST', '/devices/leaf-b/messages/deviceBound', {
    body: { body: 'open valve', messageId: 'c2d-1', properties: { valve: '7' } },
  });
  await until('the C2D delivery', () => got.length >= 1);
  assert.equal(got[0]!.message.body.toString(), 'open valve');
  assert.equal(got[0]!.message.messageId, 'c2d-1');
  assert.equal(got[0]!.message.properties.valve, '7');

  await leaf.settleC2D(got[0]!.lockToken, 'abandon');
  await until('the redelivery', () => got.length >= 2);
  assert.equal(got[1]!.message.messageId, 'c2d-1');
  await leaf.settleC2D(got[1]!.lockToken, 'complete');
  await until(
    'the hub to drop the completed message',
    async () => (await svc.getDevice('leaf-b')).cloudToDeviceMessageCount === 0,
  );
  await assert.rejects(leaf.settleC2D(got[1]!.lockToken, 'complete'), /no cloud-to-device delivery with lock token/);
});

test("one sender's messages go as IoT Hub batches; a batch holding an oversized message still delivers the others", async () => {
  const endpoint = link.telemetryEndpoint() as ReturnType<AmqpParentLink['telemetryEndpoint']>;
  const before = endpoint.metrics();
  const entry = (seq: number, m: Message) => ({
    seq,
    endpoint: '$upstream',
    priority: 0,
    enqueuedAt: Date.now(),
    expiresAt: Infinity,
    message: storedMessageOf(deviceAuth('leaf-b'), m),
  });
  // 40 small messages, one over the 256 KiB limit in the middle, 40 more: more than one batch by size.
  const batch = [];
  for (let i = 0; i < 40; i++) batch.push(entry(i, telemetry(`big-batch-${i}`, { body: Buffer.alloc(6000, i) })));
  batch.push(entry(40, telemetry('too-big', { body: Buffer.alloc(300 * 1024, 1) })));
  for (let i = 41; i < 81; i++) batch.push(entry(i, telemetry(`big-batch-${i}`, { body: Buffer.alloc(6000, i) })));
  await endpoint.send(batch);
  const after = endpoint.metrics();
  assert.equal(after.sent - before.sent, 80, 'every message but the oversized one was taken');
  assert.equal(after.undeliverable - before.undeliverable, 1, 'the oversized one is dropped and counted');
  let seqs: string[] = [];
  await until('the batch to arrive', async () => {
    const page = (
      await svc.request<{ events: Array<{ properties: Record<string, string> }> }>(
        'GET',
        '/events?device=leaf-b&from=0&limit=1000',
      )
    ).body.events;
    seqs = page.map((e) => e.properties.seq!).filter((v) => v.startsWith('big-batch-') || v === 'too-big');
    return seqs.length >= 80;
  });
  assert.deepEqual(
    seqs,
    [
      ...Array.from({ length: 40 }, (_, i) => `big-batch-${i}`),
      ...Array.from({ length: 40 }, (_, i) => `big-batch-${i + 41}`),
    ],
    'in order, without the oversized one',
  );
});

/** A second link of edge-1 naming a store id, as a gateway's link does: the one that uses the relay. */
async function storeLink(originId: string): Promise<AmqpParentLink> {
  const named = new AmqpParentLink({
    parentHost: hub.hostname,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'edge-1',
    edgeKey,
    originId,
  });
  closers.push(() => named.close());
  const up = new Promise<void>((resolve) => named.once('up', () => resolve()));
  await named.start();
  await up;
  return named;
}

test('batches name their origin: what is sent again after a restart is stored once, what is new is stored', async () => {
  // A second link of the same gateway, as after a restart, with its store's id.
  const named = await storeLink('store-under-test');
  const endpoint = named.telemetryEndpoint() as ReturnType<AmqpParentLink['telemetryEndpoint']>;
  const entry = (seq: number) => ({
    seq,
    endpoint: '$upstream',
    priority: 0,
    enqueuedAt: Date.now(),
    expiresAt: Infinity,
    message: storedMessageOf(deviceAuth('leaf-a'), telemetry(`once-${seq}`)),
  });
  const seqs = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
  await endpoint.send(seqs(1, 10).map(entry));
  // The gateway died before checkpointing: after its restart the pump reads from 1 again, and more has arrived.
  endpoint.rewind();
  await endpoint.send(seqs(1, 20).map(entry));
  // A batch sent twice in one run (its acknowledgement lost, the pump rewinds and sends it again).
  await endpoint.send(seqs(21, 25).map(entry));
  endpoint.rewind();
  await endpoint.send(seqs(21, 30).map(entry));
  let got: string[] = [];
  await until('the messages to arrive', async () => {
    const page = (
      await svc.request<{ events: Array<{ properties: Record<string, string> }> }>(
        'GET',
        '/events?device=leaf-a&from=0&limit=1000',
      )
    ).body.events;
    got = page.map((e) => e.properties.seq!).filter((v) => v.startsWith('once-'));
    return got.length >= 30;
  });
  await new Promise((r) => setTimeout(r, 300));
  const page = (
    await svc.request<{ events: Array<{ properties: Record<string, string> }> }>(
      'GET',
      '/events?device=leaf-a&from=0&limit=1000',
    )
  ).body.events;
  got = page.map((e) => e.properties.seq!).filter((v) => v.startsWith('once-'));
  assert.deepEqual(
    got,
    seqs(1, 30).map((n) => `once-${n}`),
    'each message once, in order',
  );
});

test('a leaf not in the gateway scope is refused, and its telemetry is dropped and counted', async () => {
  const outsider = link.openIdentity({ deviceId: 'leaf-x', authChain: 'leaf-x;edge-1' });
  closers.push(() => outsider.close());
  await assert.rejects(outsider.twinGet(), (err: Error) => {
    assert.match(err.message, /not in this gateway's scope/);
    return true;
  });
  const endpoint = link.telemetryEndpoint() as ReturnType<AmqpParentLink['telemetryEndpoint']>;
  const before = endpoint.metrics().undeliverable;
  await endpoint.send([
    {
      seq: 1,
      endpoint: '$upstream',
      priority: 0,
      enqueuedAt: Date.now(),
      expiresAt: Infinity,
      message: storedMessageOf(deviceAuth('leaf-x'), telemetry('x-0')),
    },
  ]);
  assert.equal(endpoint.metrics().undeliverable, before + 1);
  const events = (await svc.request<{ events: unknown[] }>('GET', '/events?device=leaf-x&from=0')).body.events;
  assert.equal(events.length, 0, 'nothing arrives for the outsider');
  assert.equal(link.connected, true, 'the refusal concerns the leaf only');
});

/** The events the hub holds for `deviceId` whose `seq` property starts with `prefix`, in order. */
async function eventsTagged(deviceId: string, prefix: string): Promise<Array<{ seq: string; moduleId?: string }>> {
  const page = (
    await svc.request<{ events: Array<{ moduleId?: string; properties: Record<string, string> }> }>(
      'GET',
      `/events?device=${deviceId}&from=0&limit=1000`,
    )
  ).body.events;
  return page
    .filter((e) => e.properties.seq?.startsWith(prefix))
    .map((e) =>
      e.moduleId === undefined ? { seq: e.properties.seq! } : { seq: e.properties.seq!, moduleId: e.moduleId },
    );
}

test('a batch of many senders goes on the relay link, each message under its sender, in order', async () => {
  const named = await storeLink('store-relay');
  const endpoint = named.telemetryEndpoint() as ReturnType<AmqpParentLink['telemetryEndpoint']>;
  const senders: Array<[string, string | undefined]> = [
    ['leaf-a', undefined],
    ['leaf-b', undefined],
    ['leaf-a', 'sensor'],
  ];
  const batch = Array.from({ length: 30 }, (_, i) => {
    const [deviceId, moduleId] = senders[i % 3]!;
    return {
      seq: i + 1,
      endpoint: '$upstream',
      priority: 0,
      enqueuedAt: Date.now(),
      expiresAt: Infinity,
      message: storedMessageOf(deviceAuth(deviceId, moduleId), telemetry(`relay-${i}`)),
    };
  });
  await endpoint.send(batch);
  assert.equal(endpoint.metrics().relayed, 30, 'all 30 went on the relay link');
  const want = (deviceId: string, moduleId?: string) =>
    batch
      .filter((_, i) => senders[i % 3]![0] === deviceId && senders[i % 3]![1] === moduleId)
      .map((q) => (moduleId === undefined ? { seq: `relay-${q.seq - 1}` } : { seq: `relay-${q.seq - 1}`, moduleId }));
  await until('the relayed messages', async () => (await eventsTagged('leaf-a', 'relay-')).length >= 20);
  const a = await eventsTagged('leaf-a', 'relay-');
  assert.deepEqual(
    a.filter((e) => e.moduleId === undefined),
    want('leaf-a'),
  );
  assert.deepEqual(
    a.filter((e) => e.moduleId !== undefined),
    want('leaf-a', 'sensor'),
  );
  assert.deepEqual(await eventsTagged('leaf-b', 'relay-'), want('leaf-b'));
  // Sent again (its acknowledgement lost): each message is still stored once.
  endpoint.rewind();
  await endpoint.send(batch);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await eventsTagged('leaf-b', 'relay-')).length, 10, 'a resent relay batch is not stored again');
});

test('on the relay link, a sender outside the scope is dropped and counted; the rest of its batch arrives', async () => {
  const named = await storeLink('store-relay-scope');
  const endpoint = named.telemetryEndpoint() as ReturnType<AmqpParentLink['telemetryEndpoint']>;
  const entry = (seq: number, deviceId: string) => ({
    seq,
    endpoint: '$upstream',
    priority: 0,
    enqueuedAt: Date.now(),
    expiresAt: Infinity,
    message: storedMessageOf(deviceAuth(deviceId), telemetry(`scoped-${seq}`)),
  });
  await endpoint.send([entry(1, 'leaf-b'), entry(2, 'leaf-x'), entry(3, 'leaf-b'), entry(4, 'leaf-x')]);
  const m = endpoint.metrics();
  assert.equal(m.undeliverable, 2, "leaf-x's two messages are dropped");
  assert.equal(m.relayed, 2);
  await until('leaf-b', async () => (await eventsTagged('leaf-b', 'scoped-')).length >= 2);
  assert.deepEqual(await eventsTagged('leaf-b', 'scoped-'), [{ seq: 'scoped-1' }, { seq: 'scoped-3' }]);
  assert.equal((await eventsTagged('leaf-x', 'scoped-')).length, 0);
});

test('a link naming its store attaches the relay link as it comes up, before any batch', async () => {
  const named = await storeLink('store-relay-early');
  await until('the relay link attached without a batch', () => named.relayAttached, 5000);
  assert.equal(link.relayAttached, false, "a link that names no store sends on its senders' links: no relay link");
});

test('the hub takes a relay batch only for senders the connection acts for', async () => {
  const named = await storeLink('store-relay-auth');
  assert.equal(named.direct.relayUsable(), true, 'a Strata hub offers the relay link');
  const payload = encodeBatchOf([telemetry('unasked-1')], {
    stream: 'raw',
    prev: 0,
    seqs: [1],
    senders: ['leaf-b'],
  });
  // No CBS put-token for leaf-b on this connection yet: refused, and nothing stored.
  const refused = await named.direct.sendRelay([], payload);
  assert.equal(refused.ok, false);
  assert.equal(!refused.ok && refused.condition, 'amqp:unauthorized-access');
  assert.match(!refused.ok ? refused.description : '', /not authorized to act for device leaf-b/);
  // Authorized first (as the gateway does), the same batch is taken.
  const taken = await named.direct.sendRelay([{ deviceId: 'leaf-b' }], payload);
  assert.deepEqual(taken, { ok: true });
  await until('the batch', async () => (await eventsTagged('leaf-b', 'unasked-')).length >= 1);
  // A batch that names no senders, or fewer than it holds, is unreadable.
  const unnamed = encodeBatchOf([telemetry('unnamed-1'), telemetry('unnamed-2')], {
    stream: 'raw',
    prev: 1,
    seqs: [2, 3],
    senders: ['leaf-b'],
  });
  const bad = await named.direct.sendRelay([{ deviceId: 'leaf-b' }], unnamed);
  assert.equal(!bad.ok && bad.condition, 'amqp:decode-error');
  assert.match(!bad.ok ? bad.description : '', /names 1 senders for 2 messages/);
  // Bytes that are no batch at all: refused as unreadable, and the link still takes the next batch.
  const garbage = await named.direct.sendRelay([{ deviceId: 'leaf-b' }], Buffer.from('not an AMQP batch'));
  assert.equal(!garbage.ok && garbage.condition, 'amqp:decode-error');
  assert.match(!garbage.ok ? garbage.description : '', /unreadable relay batch/);
  const after = encodeBatchOf([telemetry('after-garbage-1')], {
    stream: 'raw',
    prev: 1,
    seqs: [2],
    senders: ['leaf-b'],
  });
  assert.deepEqual(await named.direct.sendRelay([{ deviceId: 'leaf-b' }], after), { ok: true });
});

test('the hub checks the auth chain of each link', async () => {
  const liar = link.openIdentity({ deviceId: 'leaf-a', moduleId: 'sensor', authChain: 'leaf-b;edge-1' });
  closers.push(() => liar.close());
  await assert.rejects(liar.twinGet(), /auth chain "leaf-b;edge-1" does not fit module leaf-a\/sensor/);
});

test('a leaf moved to another gateway loses its on-behalf-of links at once', async () => {
  const edge1 = await svc.getDevice('edge-1');
  const edge2 = await svc.getDevice('edge-2');
  await svc.createDevice({ deviceId: 'leaf-c', deviceScope: edge1.deviceScope, authentication: sasAuth() } as never);
  const leaf = link.openIdentity({ deviceId: 'leaf-c', authChain: 'leaf-c;edge-1' });
  closers.push(() => leaf.close());
  leaf.onMethod((req) => leaf.methodResponse(req.requestId, 200, Buffer.from('{}')));
  await leaf.ready();
  assert.equal((await svc.getDevice('leaf-c')).connectionState, 'Connected');

  const moved = await svc.getDevice('leaf-c');
  await svc.updateDevice({ ...moved, deviceScope: edge2.deviceScope!, parentScopes: [edge2.deviceScope!] });
  await until(
    'the hub to drop the session of the moved leaf',
    async () => (await svc.getDevice('leaf-c')).connectionState === 'Disconnected',
  );
  await assert.rejects(leaf.twinGet(), /device leaf-c is not in this gateway's scope/);
  await assert.rejects(
    svc.request('POST', '/twins/leaf-c/methods', { body: { methodName: 'ping', responseTimeoutInSeconds: 5 } }),
    /404|not connected|DeviceNotOnline/i,
  );
});

test('tokens are renewed before they expire: the link stays up and keeps working', async () => {
  const short = new AmqpParentLink({
    parentHost: hub.hostname,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'edge-1',
    edgeKey,
    tokenTtlSecs: 3,
  });
  closers.push(() => short.close());
  let downs = 0;
  short.on('down', () => downs++);
  await short.start();
  // leaf-c moved away in an earlier test; leaf-a's session here is this link's only one.
  const leaf = short.openIdentity({ deviceId: 'leaf-a', moduleId: 'sensor', authChain: 'leaf-a/sensor;leaf-a;edge-1' });
  await leaf.twinGet();
  const connectedAt = (await svc.getModule('leaf-a', 'sensor')) as {
    connectionState?: string;
    connectionStateUpdatedTime?: string;
  };
  assert.equal(connectedAt.connectionState, 'Connected');
  const from = (await svc.request<{ nextSequenceNumber: number }>('GET', '/events?from=end')).body.nextSequenceNumber;
  await new Promise((r) => setTimeout(r, 4500));
  assert.equal(downs, 0, 'the connection was never dropped');
  const later = (await svc.getModule('leaf-a', 'sensor')) as {
    connectionState?: string;
    connectionStateUpdatedTime?: string;
  };
  assert.equal(later.connectionState, 'Connected');
  assert.equal(
    later.connectionStateUpdatedTime,
    connectedAt.connectionStateUpdatedTime,
    'the hub never ended the session: its credential was renewed in time',
  );
  await leaf.twinGet();
  await short.telemetryEndpoint().send([
    {
      seq: 1,
      endpoint: '$upstream',
      priority: 0,
      enqueuedAt: Date.now(),
      expiresAt: Infinity,
      message: storedMessageOf(deviceAuth('leaf-a', 'sensor'), telemetry('after-renewal')),
    },
  ]);
  const [e] = await waitForEvents(svc, { device: 'leaf-a', module: 'sensor', from: String(from) }, 1);
  assert.equal(Buffer.from(e!.body, 'base64').toString(), 'after-renewal');
  await short.close();
});

test('a wrong edge key is refused', async () => {
  const bad = new AmqpParentLink({
    parentHost: hub.hostname,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'edge-1',
    edgeKey: newKey(),
    minBackoffMs: 5000,
  });
  closers.push(() => bad.close());
  let refused: Error | undefined;
  bad.on('refused', (e: Error) => (refused ??= e));
  await assert.rejects(bad.start(), /refused the credentials of edge-1\/\$edgeHub \(401\)/);
  assert.equal(bad.connected, false);
  assert.ok(refused, "the 'refused' event fired");
  await bad.close();
});

test('AMQP over WebSockets carries the same on-behalf-of traffic', async () => {
  // A leaf of its own: another connection taking over an identity the shared link keeps attached would bounce between them.
  await svc.createDevice({
    deviceId: 'leaf-d',
    deviceScope: (await svc.getDevice('edge-1')).deviceScope,
    authentication: sasAuth(),
  } as never);
  const ws = new AmqpParentLink({
    parentHost: hub.hostname,
    transport: 'amqpws',
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'edge-1',
    edgeKey,
  });
  closers.push(() => ws.close());
  await ws.start();
  assert.equal(ws.connected, true);
  const from = (await svc.request<{ nextSequenceNumber: number }>('GET', '/events?from=end')).body.nextSequenceNumber;
  await ws.telemetryEndpoint().send([
    {
      seq: 1,
      endpoint: '$upstream',
      priority: 0,
      enqueuedAt: Date.now(),
      expiresAt: Infinity,
      message: storedMessageOf(deviceAuth('leaf-d'), telemetry('over-ws')),
    },
  ]);
  const [e] = await waitForEvents(svc, { device: 'leaf-d', from: String(from) }, 1);
  assert.equal(Buffer.from(e!.body, 'base64').toString(), 'over-ws');
  assert.equal(e!.annotations['iothub-connection-device-id'], 'leaf-d');
  const twin = await ws.openIdentity({ deviceId: 'leaf-d', authChain: 'leaf-d;edge-1' }).twinGet();
  assert.equal(typeof twin.desired.$version, 'number');
  await ws.close();
});

test('a parent certificate the trust bundle does not accept is refused', async () => {
  const stranger = await createRootCa({ commonName: 'Not the hub root' });
  const wrong = new AmqpParentLink({
    parentHost: hub.hostname,
    trustPem: stranger.certPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'edge-1',
    edgeKey,
    minBackoffMs: 5000,
  });
  closers.push(() => wrong.close());
  await assert.rejects(wrong.start(), /certificate the trust bundle does not accept/);
  assert.equal(wrong.connected, false);
  await wrong.close();
});
