import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Engine } from '../../src/engine/engine.ts';
import { eventStreamSink } from '../../src/hub/events.ts';
import { EventStream } from '../../src/store/event-stream.ts';
import { isEngineError } from '../../src/model/errors.ts';
import type { AuthResult, RegistryIdentity } from '../../src/model/identity.ts';
import type { C2DDelivery } from '../../src/model/c2d.ts';
import type { CloseReason, SessionHandler } from '../../src/engine/types.ts';
import type { MethodRequest } from '../../src/model/methods.ts';
import type { TwinCollection } from '../../src/model/twin.ts';
import { createSasToken } from '../../src/identity/sas.ts';

const KEY = Buffer.alloc(32, 9).toString('base64');

/** The registry surface the engine uses, kept in memory: the engine's own contract, not the hub's registry. */
class MemoryRegistry extends EventEmitter {
  devices = new Map<string, RegistryIdentity>();
  twins = new Map<string, { desired: TwinCollection; reported: TwinCollection }>();
  connected = new Map<string, boolean>();
  add(id: string): void {
    this.devices.set(id, {
      deviceId: id,
      status: 'enabled',
      authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: KEY } },
    });
    this.twins.set(id, { desired: { $version: 1 }, reported: { $version: 1 } });
  }
  getDevice(id: string) {
    return this.devices.get(id);
  }
  getModule() {
    return undefined;
  }
  getTwin(id: string) {
    const t = this.twins.get(id);
    return t && { properties: { desired: { ...t.desired, $metadata: {} }, reported: t.reported } };
  }
  updateReported(id: string, _m: string | undefined, patch: Record<string, unknown>) {
    const t = this.twins.get(id)!;
    Object.assign(t.reported, patch);
    t.reported.$version = (t.reported.$version ?? 1) + 1;
    return { version: t.reported.$version };
  }
  setConnectionState(id: string, _m: string | undefined, c: boolean) {
    this.connected.set(id, c);
  }
}

async function setup(t: { after(fn: () => unknown): void }) {
  const dir = await mkdtemp(join(tmpdir(), 'strata-engine-'));
  const registry = new MemoryRegistry();
  // As at the hub: telemetry goes to the event stream.
  const events = new EventStream({ dir });
  const engine = new Engine({ registry, dataDir: dir, hostName: 'hub.test', telemetrySink: eventStreamSink(events) });
  await engine.start();
  t.after(async () => {
    await engine.close();
    await events.close();
    await rm(dir, { recursive: true, force: true });
  });
  const login = async (id: string, ttl = 600): Promise<AuthResult> =>
    engine.authenticate({
      deviceId: id,
      sasToken: createSasToken(`hub.test/devices/${id}`, KEY, Math.floor(Date.now() / 1000) + ttl),
    });
  return { engine, events, registry, login };
}

function recorder() {
  const closed: Array<[CloseReason, string | undefined]> = [];
  const c2d: C2DDelivery[] = [];
  const desired: TwinCollection[] = [];
  const methods: MethodRequest[] = [];
  const handler: SessionHandler = {
    onC2D: (d) => c2d.push(d),
    onDesired: (p) => desired.push(p),
    onMethod: (m) => methods.push(m),
    close: (r, d) => closed.push([r, d]),
  };
  return { handler, closed, c2d, desired, methods };
}

const tick = () => new Promise((r) => setImmediate(r));

test('a new session for the same identity closes the old one; connection state follows the live one', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  const a = recorder();
  const s1 = await engine.connect(await login('d'), a.handler, { protocol: 'mqtt' });
  assert.equal(registry.connected.get('d'), true);
  const b = recorder();
  const s2 = await engine.connect(await login('d'), b.handler, { protocol: 'amqp' });
  assert.deepEqual(
    a.closed.map((c) => c[0]),
    ['replaced'],
  );
  assert.equal(s1.closed, true);
  assert.equal(registry.connected.get('d'), true, 'closing the replaced session leaves the state connected');
  assert.equal(engine.sessionOf({ deviceId: 'd' }), s2);
  s2.close();
  assert.equal(registry.connected.get('d'), false);
  assert.equal(b.closed.length, 0, 'a close from the head is not echoed back');
});

test('the engine closes a session when its token expires', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  const r = recorder();
  const auth = await login('d', 1);
  await engine.connect(auth, r.handler, { protocol: 'mqtt' });
  const deadline = Date.now() + 3000;
  while (r.closed.length === 0 && Date.now() < deadline) await new Promise((x) => setTimeout(x, 20));
  assert.deepEqual(
    r.closed.map((c) => c[0]),
    ['token-expired'],
  );
  assert.equal(engine.isConnected({ deviceId: 'd' }), false);
});

test('persistent sessions keep subscriptions; clean ones drop them', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  const s1 = await engine.connect(await login('d'), recorder().handler, { protocol: 'mqtt', cleanSession: false });
  s1.subscribe('c2d');
  s1.subscribe('desired');
  s1.close();
  const s2 = await engine.connect(await login('d'), recorder().handler, { protocol: 'mqtt', cleanSession: false });
  assert.equal(s2.resumed, true);
  assert.deepEqual([...s2.subscriptions].sort(), ['c2d', 'desired']);
  s2.close();
  const s3 = await engine.connect(await login('d'), recorder().handler, { protocol: 'mqtt', cleanSession: true });
  assert.equal(s3.resumed, false);
  assert.equal(s3.subscriptions.size, 0);
});

test('C2D is pushed to a subscribed session, settled by it, and what was not settled is released when it closes', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  await engine.sendC2D('d', { body: Buffer.from('1'), properties: {} });
  const r = recorder();
  const s = await engine.connect(await login('d'), r.handler, { protocol: 'mqtt' });
  assert.equal(r.c2d.length, 0, 'nothing before subscribing');
  s.subscribe('c2d');
  assert.equal(r.c2d.length, 1);
  await engine.sendC2D('d', { body: Buffer.from('2'), properties: {} });
  assert.deepEqual(
    r.c2d.map((d) => d.message.body.toString()),
    ['1', '2'],
  );
  await s.settleC2D(r.c2d[0].lockToken, 'complete');
  s.close();
  assert.equal(engine.c2d.depth('d'), 1);
  assert.ok(await engine.receiveC2D('d'), 'the unsettled message is available again');
  await assert.rejects(engine.sendC2D('nobody', { body: Buffer.alloc(0), properties: {} }), (e) =>
    isEngineError(e, 'not-found'),
  );
});

test('desired pushes only reach a subscribed session; twin reads drop $metadata', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  const r = recorder();
  const s = await engine.connect(await login('d'), r.handler, { protocol: 'mqtt' });
  registry.emit('desired', 'd', undefined, { a: 1, $version: 2 });
  assert.equal(r.desired.length, 0);
  s.subscribe('desired');
  registry.emit('desired', 'd', undefined, { a: 2, $version: 3 });
  assert.deepEqual(r.desired, [{ a: 2, $version: 3 }]);
  const twin = await s.twinGet();
  assert.equal('$metadata' in twin.desired, false);
  assert.deepEqual(await s.twinPatchReported({ x: 1 }), { version: 2 });
  await assert.rejects(s.twinPatchReported([] as unknown as Record<string, unknown>), (e) =>
    isEngineError(e, 'bad-request'),
  );
});

test('direct methods: 404 when not subscribed, round trip, connect timeout waits for the device', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  await assert.rejects(engine.invokeMethod({ deviceId: 'd' }, { methodName: 'm' }), (e) =>
    isEngineError(e, 'not-connected'),
  );
  const r = recorder();
  const pending = engine.invokeMethod(
    { deviceId: 'd' },
    { methodName: 'm', payload: { q: 1 }, connectTimeoutInSeconds: 5 },
  );
  const s = await engine.connect(await login('d'), r.handler, { protocol: 'mqtt' });
  s.subscribe('methods');
  await tick();
  await new Promise((x) => setTimeout(x, 10));
  assert.equal(r.methods.length, 1);
  assert.deepEqual(JSON.parse(r.methods[0].payload.toString()), { q: 1 });
  s.methodResponse(r.methods[0].requestId, 200, Buffer.from('{"ok":1}'));
  assert.deepEqual(await pending, { status: 200, payload: { ok: 1 } });
  await assert.rejects(engine.invokeMethod({ deviceId: 'd' }, { methodName: 'bad/name' }), (e) =>
    isEngineError(e, 'bad-request'),
  );
});

test('disabling or deleting an identity closes its session', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  const r = recorder();
  await engine.connect(await login('d'), r.handler, { protocol: 'mqtt' });
  registry.devices.get('d')!.status = 'disabled';
  registry.emit('identity', 'd', undefined, 'updated');
  await new Promise((x) => setTimeout(x, 20));
  assert.deepEqual(
    r.closed.map((c) => c[0]),
    ['identity-disabled'],
  );
  registry.add('e');
  const r2 = recorder();
  await engine.connect(await login('e'), r2.handler, { protocol: 'mqtt' });
  registry.devices.delete('e');
  registry.emit('identity', 'e', undefined, 'deleted');
  await new Promise((x) => setTimeout(x, 20));
  assert.deepEqual(
    r2.closed.map((c) => c[0]),
    ['identity-deleted'],
  );
});

test('telemetry over the size limit is refused before it is stored', async (t) => {
  const { engine, registry, login } = await setup(t);
  registry.add('d');
  const auth = await login('d');
  await assert.rejects(engine.sendTelemetry(auth, { body: Buffer.alloc(256 * 1024), properties: { k: 'v' } }), (e) =>
    isEngineError(e, 'too-large'),
  );
  const info = await engine.sendTelemetry(auth, { body: Buffer.alloc(256 * 1024), properties: {} });
  assert.equal(info.sequenceNumber, 1);
  const batch = await engine.sendTelemetryBatch(auth, [
    { body: Buffer.from('a'), properties: {} },
    { body: Buffer.from('b'), properties: {} },
  ]);
  assert.deepEqual(
    batch.map((b) => b.sequenceNumber),
    [2, 3],
  );
});

test('a forwarded batch sent again before the first copy is committed is stored once, and answered once that copy is on disk', async (t) => {
  const { engine, events: stream, registry, login } = await setup(t);
  registry.add('d');
  const auth = await login('d');
  const messages = ['a', 'b', 'c'].map((b) => ({ body: Buffer.from(b), properties: {} }));
  const origins = [11, 12, 13].map((seq, i) => ({ stream: 'child-gw|store-1/0', seq, prev: i === 0 ? 0 : seq - 1 }));
  // Both copies arrive in the same turn of the event loop: the first is not committed yet when
  // the second is looked at (a child whose link dropped sends again at once).
  const first = engine.sendTelemetryBatch(auth, messages, origins);
  const again = engine.sendTelemetryBatch(auth, messages, origins);
  let againDone = false;
  void again.then(() => (againDone = true));
  await first;
  await again;
  assert.equal(againDone, true);
  const { events } = await stream.read({ fromSequenceNumber: 1, limit: 100 });
  assert.deepEqual(
    events.map((e) => e.message.body.toString()),
    ['a', 'b', 'c'],
    'stored once',
  );
  // And after the commit, a third copy is recognised by the watermark alone.
  await engine.sendTelemetryBatch(auth, messages, origins);
  assert.equal((await stream.read({ fromSequenceNumber: 1, limit: 100 })).events.length, 3);
});
