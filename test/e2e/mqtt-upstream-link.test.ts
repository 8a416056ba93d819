/**
 * The gateway's MQTT upstream (MqttParentLink) in this process against a real hub process: its
 * refusals (a wrong edge key, a parent certificate outside the trust bundle, a leaf outside
 * the edge device's scope, whose telemetry is dropped and counted), C2D settlement as MQTT
 * allows it, connections opened per identity on demand and closed when idle, and re-made with a
 * fresh token before the old one expires.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { AuthResult } from '../../src/model/identity.ts';
import type { Message } from '../../src/model/message.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import type { EventPageJson } from '../../src/hub/service-messaging.ts';
import { createRootCa } from '../../src/pki/index.ts';
import { storedMessageOf } from '../../src/store/sender-message.ts';
import { MqttParentLink, type UpstreamC2DDelivery } from '../../src/upstream/index.ts';
import { newKey, serviceClient, waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';

let hub: HubProcess;
let svc: ServiceClient;
const edgeKey = newKey();
const sas = () => ({ type: 'sas', symmetricKey: { primaryKey: newKey(), secondaryKey: newKey() } });

before(async () => {
  hub = await startHubProcess();
  svc = serviceClient(hub);
  const edge = await svc.createDevice({
    deviceId: 'mu-edge',
    capabilities: { iotEdge: true },
    authentication: { type: 'sas', symmetricKey: { primaryKey: edgeKey, secondaryKey: newKey() } },
  } as never);
  const other = await svc.createDevice({
    deviceId: 'mu-other',
    capabilities: { iotEdge: true },
    authentication: sas(),
  } as never);
  for (const id of ['mu-leaf', 'mu-c2d'])
    await svc.createDevice({
      deviceId: id,
      deviceScope: edge.deviceScope,
      parentScopes: [edge.deviceScope],
      authentication: sas(),
    } as never);
  await svc.createDevice({
    deviceId: 'mu-outsider',
    deviceScope: other.deviceScope,
    parentScopes: [other.deviceScope],
    authentication: sas(),
  } as never);
});

after(async () => {
  svc?.close();
  await hub?.stop();
});

/**
 * A link closed when its test ends: each acts as mu-edge/$edgeHub, and two MQTT connections of
 * one client id take turns at the parent (each new one closes the other), as two gateways
 * configured with one identity would.
 */
function link(
  t: { after(fn: () => unknown): void },
  o: Partial<ConstructorParameters<typeof MqttParentLink>[0]> = {},
): MqttParentLink {
  const l = new MqttParentLink({
    parentHost: hub.hostname,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'mu-edge',
    edgeKey,
    ...o,
  });
  t.after(() => l.close());
  return l;
}

const deviceAuth = (deviceId: string): AuthResult => ({
  identity: { deviceId },
  kind: 'sas',
  authMethod: '{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}',
});
const queued = (seq: number, deviceId: string, m: Message) => ({
  seq,
  endpoint: '$upstream',
  priority: 0,
  enqueuedAt: Date.now(),
  expiresAt: Infinity,
  message: storedMessageOf(deviceAuth(deviceId), m),
});

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('a wrong edge key is refused: start() rejects and the refused event fires', async (t) => {
  const bad = link(t, { edgeKey: newKey(), minBackoffMs: 5000 });
  let refused: Error | undefined;
  bad.on('refused', (e: Error) => (refused ??= e));
  await assert.rejects(bad.start(), /the parent refused the credentials of mu-edge\/\$edgeHub: .*not authorized/);
  assert.equal(bad.connected, false);
  assert.ok(refused);
});

test('a parent certificate the trust bundle does not accept is refused', async (t) => {
  const stranger = await createRootCa({ commonName: 'Not the hub root' });
  await assert.rejects(
    link(t, { trustPem: stranger.certPem, minBackoffMs: 5000 }).start(),
    /certificate the trust bundle does not accept/,
  );
});

test('telemetry of a leaf outside the scope is dropped and counted; a leaf inside gets its messages through on its own connection', async (t) => {
  const l = link(t, { idleMs: 600 });
  await l.start();
  assert.equal(l.connected, true);
  assert.equal(l.describeParent(), `mqtts://${hub.hostname}:8883`);
  const ep = l.telemetryEndpoint();
  await ep.send([
    queued(1, 'mu-outsider', { body: Buffer.from('x'), properties: {} }),
    queued(2, 'mu-leaf', { body: Buffer.from('in'), properties: { k: 'v' }, messageId: 'mid-1' }),
  ]);
  assert.deepEqual(ep.metrics(), { sent: 1, undeliverable: 1, failedBatches: 0, relayed: 0 });
  const [e] = await waitForEvents(svc, { device: 'mu-leaf' }, 1);
  assert.equal(e!.annotations['iothub-connection-device-id'], 'mu-leaf');
  assert.equal(e!.systemProperties['message-id'], 'mid-1');
  assert.equal(e!.properties.k, 'v');
  assert.equal((await svc.getDevice('mu-leaf')).connectionState, 'Connected');
  await until(
    'the idle connection of the leaf to close',
    async () => (await svc.getDevice('mu-leaf')).connectionState === 'Disconnected',
  );
});

test('C2D: abandon withholds the acknowledgement (delivered again on the next connection), complete acknowledges and the hub drops it', async (t) => {
  const l = link(t);
  await l.start();
  const ch = l.openIdentity({ deviceId: 'mu-c2d', authChain: 'mu-c2d;mu-edge' });
  const got: UpstreamC2DDelivery[] = [];
  ch.onC2D((d) => got.push(d));
  await ch.ready();
  await svc.request('POST', '/devices/mu-c2d/messages/deviceBound', {
    body: { body: 'open valve', messageId: 'c2d-1', properties: { valve: '7' } },
  });
  await until('the C2D delivery', () => got.length >= 1);
  assert.equal(got[0]!.message.body.toString(), 'open valve');
  assert.equal(got[0]!.message.messageId, 'c2d-1');
  assert.equal(got[0]!.message.properties.valve, '7');
  await ch.settleC2D(got[0]!.lockToken, 'abandon');
  assert.equal((await svc.getDevice('mu-c2d')).cloudToDeviceMessageCount, 1, 'still queued at the hub');

  // A new channel after the old one closed: the connection is re-made, and the hub delivers the message again.
  await ch.close();
  const again = l.openIdentity({ deviceId: 'mu-c2d', authChain: 'mu-c2d;mu-edge' });
  again.onC2D((d) => got.push(d));
  (l as unknown as { proxies: Map<string, { close(why: string): void }> }).proxies
    .get('mu-c2d')!
    .close('test: re-make the connection');
  await until('the redelivery', () => got.length >= 2, 15_000);
  assert.equal(got[1]!.message.messageId, 'c2d-1');
  await again.settleC2D(got[1]!.lockToken, 'complete');
  await until(
    'the hub to drop the completed message',
    async () => (await svc.getDevice('mu-c2d')).cloudToDeviceMessageCount === 0,
  );
  await assert.rejects(again.settleC2D(got[1]!.lockToken, 'complete'), /no cloud-to-device delivery with lock token/);
});

test('a connection is re-made with a fresh token before the old one expires: no loss, pushes keep coming', async (t) => {
  // Five-second tokens: renewed at four, while the hub would end the session at five.
  const l = link(t, { tokenTtlSecs: 5 });
  await l.start();
  const ch = l.openIdentity({ deviceId: 'mu-leaf', authChain: 'mu-leaf;mu-edge' });
  const desired: Array<Record<string, unknown>> = [];
  ch.onDesired((patch) => desired.push(patch));
  await ch.ready();
  const line = (l as unknown as { proxies: Map<string, { nextDown(): Promise<string> }> }).proxies.get('mu-leaf')!;
  let lostWhy: string | undefined;
  void line.nextDown().then((why) => (lostWhy = why));
  // Sampled through two renewals: a renewal swaps the connection, and is never reported as down.
  let downAt: number | undefined;
  const started = Date.now();
  const sampler = setInterval(() => {
    if (!l.connected && downAt === undefined) downAt = Date.now() - started;
  }, 20);
  await new Promise((r) => setTimeout(r, 7000));
  clearInterval(sampler);
  assert.equal(lostWhy, undefined, 'the connection was never lost');
  assert.equal(downAt, undefined, "the gateway's own connection was renewed without being reported down");
  await svc.updateTwin('mu-leaf', { properties: { desired: { after: 'renewal' } } });
  await until('the desired push on the renewed connection', () => desired.some((p) => p.after === 'renewal'));
  const earlier = (await svc.request<EventPageJson>('GET', '/events?device=mu-leaf&from=0&limit=1000')).body.events
    .length;
  await l.telemetryEndpoint().send([queued(10, 'mu-leaf', { body: Buffer.from('after renewal'), properties: {} })]);
  const events = await waitForEvents(svc, { device: 'mu-leaf' }, earlier + 1);
  assert.equal(Buffer.from(events.at(-1)!.body, 'base64').toString(), 'after renewal');
});
