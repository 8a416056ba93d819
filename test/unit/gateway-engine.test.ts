/**
 * The engine's plug points a gateway uses: the telemetry sink (acknowledged only once the sink
 * resolves; its refusal reaches the sender), MaxConnectedClients (every identity counted,
 * reconnects not counted twice, a lowered limit closing the newest sessions), the authorize
 * hook (refused before credentials are looked at, and re-run on identity changes), relayed
 * C2D and module input deliveries (settled by the device, handed back on disconnect) and the
 * subscription hook.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Engine } from '../../src/engine/engine.ts';
import { EngineError, isEngineError } from '../../src/model/errors.ts';
import type { AuthResult, IdentityRef, RegistryIdentity } from '../../src/model/identity.ts';
import type { C2DDelivery } from '../../src/model/c2d.ts';
import type {
  CloseReason,
  EngineOptions,
  SessionHandler,
  SubscriptionKind,
  TelemetryItem,
  TelemetrySink,
} from '../../src/engine/types.ts';
import type { Message } from '../../src/model/message.ts';
import { createSasToken } from '../../src/identity/sas.ts';

const KEY = Buffer.alloc(32, 5).toString('base64');

/** The registry surface the engine reads, in memory (the engine's own contract). */
class MemoryRegistry extends EventEmitter {
  devices = new Map<string, RegistryIdentity>();
  modules = new Map<string, RegistryIdentity>();
  add(id: string, moduleId?: string): void {
    const rec = {
      deviceId: id,
      moduleId,
      status: 'enabled',
      authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: KEY } },
    };
    if (moduleId === undefined) this.devices.set(id, rec);
    else this.modules.set(`${id}/${moduleId}`, rec);
  }
  getDevice(id: string) {
    return this.devices.get(id);
  }
  getModule(id: string, m: string) {
    return this.modules.get(`${id}/${m}`);
  }
  getTwin() {
    return { properties: { desired: {}, reported: {} } };
  }
  updateReported() {
    return { version: 2 };
  }
  setConnectionState() {}
}

/** A sink that hands every message to `take` and holds none (no resends to recognise). */
function sinkOf(take: (items: readonly TelemetryItem[]) => Promise<void>): TelemetrySink {
  return {
    append: take,
    whenDurable: async () => undefined,
    isForwardedStored: () => false,
    forwardedInFlight: () => undefined,
    storeFull: () => undefined,
  };
}

async function setup(t: { after(fn: () => unknown): void }, opts: Partial<EngineOptions> = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'strata-gw-engine-'));
  const registry = new MemoryRegistry();
  const engine = new Engine({
    registry,
    dataDir: dir,
    hostName: 'hub.test',
    extraHostNames: ['gw.test'],
    telemetrySink: sinkOf(async () => undefined),
    ...opts,
  });
  await engine.start();
  t.after(async () => {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });
  const login = (id: string, moduleId?: string): Promise<AuthResult> => {
    const audience = `gw.test/devices/${id}${moduleId ? `/modules/${moduleId}` : ''}`;
    return engine.authenticate({
      deviceId: id,
      moduleId,
      sasToken: createSasToken(audience, KEY, Math.floor(Date.now() / 1000) + 600),
    });
  };
  return { engine, registry, login };
}

function handler() {
  const closed: Array<[CloseReason, string | undefined]> = [];
  const c2d: C2DDelivery[] = [];
  const inputs: Array<[string, C2DDelivery]> = [];
  const h: SessionHandler = {
    onC2D: (d) => c2d.push(d),
    onInput: (name, d) => inputs.push([name, d]),
    close: (reason, detail) => closed.push([reason, detail]),
  };
  return { h, closed, c2d, inputs };
}

const msg = (text: string): Message => ({ body: Buffer.from(text), properties: {} });

test('telemetry goes to the sink; the device is acknowledged only when the sink resolves, and a sink refusal reaches it', async (t) => {
  let release!: () => void;
  const taken: string[] = [];
  let refuse = false;
  const { engine, registry, login } = await setup(t, {
    telemetrySink: sinkOf(async (items) => {
      if (refuse) throw new EngineError('throttled', "the gateway's message store is full");
      for (const i of items) taken.push(`${i.auth.identity.deviceId}:${i.message.body.toString()}`);
      await new Promise<void>((r) => (release = r));
    }),
  });
  registry.add('d1');
  const s = await engine.connect(await login('d1'), handler().h, { protocol: 'mqtt' });
  let acked = false;
  const p = s.sendTelemetry(msg('hello')).then(() => (acked = true));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(taken, ['d1:hello']);
  assert.equal(acked, false, 'not acknowledged before the sink resolved');
  release();
  await p;
  assert.equal(acked, true);
  refuse = true;
  await assert.rejects(
    s.sendTelemetry(msg('more')),
    (err: unknown) => isEngineError(err, 'throttled') && /store is full/.test((err as Error).message),
  );
});

test("a child gateway's resend is taken out before the sink appends: a stored one is answered once durable, one being stored once its first copy is", async (t) => {
  const stored = new Set<number>([1]);
  let releaseFirst!: () => void;
  const inFlight = new Map<number, Promise<void>>([[2, new Promise<void>((r) => (releaseFirst = r))]]);
  const offered: number[] = [];
  const appended: number[][] = [];
  let durableWaits = 0;
  const sink: TelemetrySink = {
    offer: (items) => {
      offered.push(items.length);
      return undefined;
    },
    append: async (items) => void appended.push(items.map((i) => i.origin!.seq)),
    whenDurable: async () => void durableWaits++,
    isForwardedStored: (o) => stored.has(o.seq),
    forwardedInFlight: (o) => inFlight.get(o.seq),
    storeFull: () => undefined,
  };
  const { engine, registry, login } = await setup(t, { telemetrySink: sink });
  registry.add('child');
  const auth = await login('child');
  const origins = [1, 2, 3].map((seq) => ({ stream: 'child|s/0', seq, prev: seq - 1 }));
  let answered = false;
  const p = engine
    .sendTelemetryBatch(auth, [msg('a'), msg('b'), msg('c')], origins, { payload: Buffer.alloc(0), stream: 's/0' })
    .then(() => (answered = true));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(offered, [3], 'the sink is offered the whole batch first');
  assert.deepEqual(appended, [[3]], 'only the new message is appended');
  assert.equal(durableWaits, 1, 'the stored one is answered once what is committed is on disk');
  assert.equal(answered, false, 'not answered before the first copy of the one in flight is stored');
  releaseFirst();
  await p;
});

test('a batch the sink takes when offered (passed on as it came) is not appended', async (t) => {
  const appended: number[] = [];
  const sink: TelemetrySink = {
    offer: (_items, batch) => (batch ? Promise.resolve() : undefined),
    append: async (items) => void appended.push(items.length),
    whenDurable: async () => undefined,
    isForwardedStored: () => false,
    forwardedInFlight: () => undefined,
    storeFull: () => undefined,
  };
  const { engine, registry, login } = await setup(t, { telemetrySink: sink });
  registry.add('child');
  const auth = await login('child');
  const origins = [{ stream: 'child|s/0', seq: 1, prev: 0 }];
  const infos = await engine.sendTelemetryBatch(auth, [msg('a')], origins, { payload: Buffer.alloc(0), stream: 's/0' });
  assert.equal(infos.length, 1);
  assert.deepEqual(appended, []);
  await engine.sendTelemetryBatch(auth, [msg('b')]);
  assert.deepEqual(appended, [1], 'without a batch it is appended');
});

test('MaxConnectedClients counts every identity, refuses the next one clearly, and a reconnect is not counted twice', async (t) => {
  const { engine, registry, login } = await setup(t, { maxConnectedClients: 2 });
  registry.add('a');
  registry.add('b');
  registry.add('c');
  registry.add('a', 'm1');
  await engine.connect(await login('a'), handler().h, { protocol: 'mqtt' });
  await engine.connect(await login('a', 'm1'), handler().h, { protocol: 'amqp' });
  await assert.rejects(engine.connect(await login('b'), handler().h, { protocol: 'mqtt' }), (err: unknown) => {
    assert.ok(isEngineError(err, 'throttled'));
    assert.match((err as Error).message, /gateway has reached MaxConnectedClients=2: device b refused/);
    return true;
  });
  // The same identity again replaces its session: still 2.
  await engine.connect(await login('a'), handler().h, { protocol: 'mqtt' });
  assert.equal(engine.connectedCount(), 2);
});

test('identities a child gateway connects on its behalf are not counted against MaxConnectedClients, nor closed when it is lowered', async (t) => {
  const { engine, registry, login } = await setup(t, { maxConnectedClients: 1 });
  for (const id of ['direct', 'other', 'below-1', 'below-2']) registry.add(id);
  await engine.connect(await login('direct'), handler().h, { protocol: 'mqtt' });
  const below = [handler(), handler()];
  await engine.connect(await login('below-1'), below[0]!.h, { protocol: 'amqp', viaGateway: true });
  await engine.connect(await login('below-2'), below[1]!.h, { protocol: 'amqp', viaGateway: true });
  assert.equal(engine.connectedCount(), 3);
  await assert.rejects(
    engine.connect(await login('other'), handler().h, { protocol: 'mqtt' }),
    /MaxConnectedClients=1: device other refused/,
  );
  assert.equal(engine.setMaxConnectedClients(0), 1, 'only the direct client is over the limit');
  assert.deepEqual(
    below.map((b) => b.closed.length),
    [0, 0],
  );
});

test('lowering MaxConnectedClients at runtime closes the most recent sessions over the new limit', async (t) => {
  const { engine, registry, login } = await setup(t);
  assert.equal(engine.maxConnectedClients, Infinity, 'unlimited unless set (the hub)');
  const hs = ['a', 'b', 'c', 'd'].map((id) => {
    registry.add(id);
    return { id, ...handler() };
  });
  for (const x of hs) await engine.connect(await login(x.id), x.h, { protocol: 'mqtt' });
  assert.equal(engine.setMaxConnectedClients(2), 2);
  assert.equal(engine.connectedCount(), 2);
  assert.deepEqual(
    hs.map((x) => x.closed.length),
    [0, 0, 1, 1],
  );
  assert.equal(hs[3].closed[0][0], 'over-limit');
  assert.match(hs[3].closed[0][1] ?? '', /MaxConnectedClients=2/);
  await assert.rejects(engine.connect(await login('c'), handler().h, { protocol: 'mqtt' }), /MaxConnectedClients=2/);
  assert.throws(() => engine.setMaxConnectedClients(-1), /whole number/);
});

test('the authorize hook refuses an identity before its credential is checked, and is re-run for live sessions on identity changes', async (t) => {
  const allowed = new Set(['child']);
  const asked: Array<[string, boolean]> = [];
  const { engine, registry, login } = await setup(t, {
    authorize: (id, { live }) => {
      asked.push([id.deviceId, live]);
      return allowed.has(id.deviceId) ? undefined : `device ${id.deviceId} is not in this gateway's scope`;
    },
  });
  registry.add('child');
  registry.add('stranger');
  await assert.rejects(
    login('stranger'),
    (err: unknown) => isEngineError(err, 'forbidden') && /not in this gateway's scope/.test((err as Error).message),
  );
  // Unknown to the registry too: the scope reason is what it hears, not "not registered".
  await assert.rejects(login('nobody'), /nobody is not in this gateway's scope/);
  const x = handler();
  await engine.connect(await login('child'), x.h, { protocol: 'mqtt' });
  allowed.delete('child');
  registry.emit('identity', 'someone-else', undefined, 'updated');
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(x.closed, [['forbidden', "device child is not in this gateway's scope"]]);
  assert.ok(asked.some(([d, live]) => d === 'child' && live));
});

test('relayed C2D: delivered to the subscribed session, settled by the device, handed back as abandon when the session ends', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  const x = handler();
  const s = await engine.connect(await login('d'), x.h, { protocol: 'amqp' });
  const outcomes: string[] = [];
  assert.equal(
    engine.relayC2D('d', { message: msg('m1') }, (o) => outcomes.push(`m1:${o}`)),
    false,
    'not subscribed yet',
  );
  s.subscribe('c2d');
  assert.equal(
    engine.relayC2D('d', { message: msg('m1'), ack: 'full', deliveryCount: 2 }, (o) => outcomes.push(`m1:${o}`)),
    true,
  );
  assert.equal(
    engine.relayC2D('d', { message: msg('m2') }, (o) => outcomes.push(`m2:${o}`)),
    true,
  );
  assert.deepEqual(
    x.c2d.map((d) => [d.message.body.toString(), d.ack, d.deliveryCount]),
    [
      ['m1', 'full', 2],
      ['m2', 'none', 1],
    ],
  );
  await s.settleC2D(x.c2d[0].lockToken, 'complete');
  s.close('client');
  assert.deepEqual(outcomes, ['m1:complete', 'm2:abandon']);
  assert.equal(
    engine.relayC2D('d', { message: msg('m3') }, () => undefined),
    false,
    'gone',
  );
});

test('module inputs: deliverInput reaches a module subscribed to its inputs; the subscription hook sees subscribe and unsubscribe', async (t) => {
  const changes: Array<[string, SubscriptionKind, boolean]> = [];
  const key = (id: IdentityRef) => (id.moduleId ? `${id.deviceId}/${id.moduleId}` : id.deviceId);
  const { engine, registry, login } = await setup(t, {
    onSubscriptionChange: (id, kind, on) => changes.push([key(id), kind, on]),
  });
  registry.add('gw');
  registry.add('gw', 'filter');
  const x = handler();
  const s = await engine.connect(await login('gw', 'filter'), x.h, { protocol: 'mqtt' });
  const id = { deviceId: 'gw', moduleId: 'filter' };
  assert.equal(
    engine.deliverInput(id, 'in1', { message: msg('x') }, () => undefined),
    false,
  );
  s.subscribe('inputs');
  assert.ok(engine.isSubscribed(id, 'inputs'));
  let outcome = '';
  assert.equal(
    engine.deliverInput(id, 'in1', { message: msg('x') }, (o) => (outcome = o)),
    true,
  );
  assert.equal(x.inputs[0][0], 'in1');
  await s.settleC2D(x.inputs[0][1].lockToken, 'reject');
  assert.equal(outcome, 'reject');
  s.unsubscribe('inputs');
  assert.deepEqual(changes, [
    ['gw/filter', 'inputs', true],
    ['gw/filter', 'inputs', false],
  ]);
});

test('the session hook hears each identity that opened a session, after its credential was checked', async (t) => {
  const opened: string[] = [];
  const { engine, registry, login } = await setup(t, {
    onSessionOpened: (id) => opened.push(id.moduleId ? `${id.deviceId}/${id.moduleId}` : id.deviceId),
  });
  registry.add('leaf1');
  registry.add('gw');
  registry.add('gw', 'filter');
  await assert.rejects(login('nobody'));
  assert.deepEqual(opened, [], 'a failed login opens nothing');
  const a = await engine.connect(await login('leaf1'), handler().h, { protocol: 'mqtt' });
  await engine.connect(await login('gw', 'filter'), handler().h, { protocol: 'amqp' });
  assert.deepEqual(opened, ['leaf1', 'gw/filter']);
  a.close('client');
  await engine.connect(await login('leaf1'), handler().h, { protocol: 'mqtt' });
  assert.deepEqual(opened, ['leaf1', 'gw/filter', 'leaf1'], 'a reconnect is heard again');
});

test("a route's module input endpoint delivers a stored batch in order to the module's session and succeeds once it is settled", async (t) => {
  const { ModuleInputEndpoint } = await import('../../src/edge/module-endpoint.ts');
  const { engine, registry, login } = await setup(t);
  registry.add('gw');
  registry.add('gw', 'filter');
  const ep = new ModuleInputEndpoint(engine, 'gw', 'filter', 'in1');
  assert.equal(ep.name, '/modules/filter/inputs/in1');
  let woke = 0;
  ep.onAvailable(() => woke++);
  const entry = (seq: number) => ({
    seq,
    endpoint: ep.name,
    priority: 0,
    enqueuedAt: Date.now(),
    expiresAt: Infinity,
    message: {
      body: Buffer.from(`m${seq}`),
      systemProperties: { messageId: `id${seq}` },
      appProperties: { k: 'v' },
      source: '/messages',
      sender: 'leaf',
    },
  });
  assert.equal(ep.isAvailable(), false);
  await assert.rejects(ep.send([entry(1)]), /module gw\/filter is not connected or has not subscribed to its inputs/);
  const x = handler();
  const s = await engine.connect(await login('gw', 'filter'), x.h, { protocol: 'mqtt' });
  s.subscribe('inputs');
  ep.poke();
  assert.equal(ep.isAvailable(), true);
  assert.equal(woke, 1, 'the pump is woken when the module subscribes');
  const sending = ep.send([entry(1), entry(2)]);
  assert.deepEqual(
    x.inputs.map(([name, d]) => [name, d.message.body.toString(), d.message.messageId, d.message.properties.k]),
    [
      ['in1', 'm1', 'id1', 'v'],
      ['in1', 'm2', 'id2', 'v'],
    ],
  );
  for (const [, d] of x.inputs) await s.settleC2D(d.lockToken, 'complete');
  await sending;
  // An abandon fails the batch, so the pump offers it again.
  const again = ep.send([entry(3)]);
  await s.settleC2D(x.inputs[2][1].lockToken, 'abandon');
  await assert.rejects(again, /abandoned/);
});
