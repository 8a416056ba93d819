/**
 * A hub and three gateway layers (L1 under the hub, L2 under L1, L3 under L2), each a child
 * process on its own loopback address with the standard ports and every certificate from the
 * hub's root: official device SDK leaves (Mqtt, Amqp) under L3 send telemetry that reaches the
 * hub under their own ids, and twin, direct method and C2D from the hub round-trip three
 * layers down; a leaf's module (ModuleClient) does the same under its module id; L2 is killed
 * with SIGKILL while a leaf streams acknowledged messages and restarted, and so is the hub, and
 * every acknowledged message arrives once, in order (the middle layers pass L3's batches on
 * without storing them while their parent answers); throughout, the outbound TCP
 * connections of every gateway (from /proc) are recorded, and L2 and L3 only ever connect to
 * their parent.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import type { EventJson, EventPageJson } from '../../src/hub/service-messaging.ts';
import { waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import { startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { assertConnectsOnlyTo, recordConnections, setupLayer, startLayers } from '../helpers/nested.ts';
import { desiredPush, eventually, listenDesired, openSdkLeaf, updateReported } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Message, ModuleClient } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');

const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
const first = randomInt(2, 246);
const [hubAddr, l1Addr, l2Addr, l3Addr] = [0, 1, 2, 3].map((i) => `${base}.${first + i}`);

let hub: HubProcess;
let hubDir: string;
const layers: EdgeSetup[] = [];
const gws: Array<GatewayProcess | undefined> = [];
let recorder: ReturnType<typeof recordConnections>;
const cleanups: Array<() => unknown> = [];

before(async () => {
  // Its own directory, so that a test can stop it and start it again.
  hubDir = await mkdtemp(join(tmpdir(), 'strata-nested-hub-'));
  cleanups.push(() => rm(hubDir, { recursive: true, force: true }));
  hub = await startHubProcess({ address: hubAddr, dataDir: hubDir });
  cleanups.push(() => hub.stop());
  const addrs = [l1Addr, l2Addr, l3Addr];
  for (let i = 0; i < 3; i++) {
    const edge = await setupLayer(hub, { gatewayId: `nested-l${i + 1}`, address: addrs[i], parent: layers[i - 1] });
    layers.push(edge);
    cleanups.push(() => edge.cleanup());
  }
  // Watch from before the first connection.
  recorder = recordConnections({ l1: () => gws[0]?.proc.pid, l2: () => gws[1]?.proc.pid, l3: () => gws[2]?.proc.pid });
  cleanups.push(() => recorder.stop());
  await startLayers({ layers, gws, cleanups });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

const bottom = () => layers[2];
const svc = () => layers[0].svc;

async function eventsOf(deviceId: string): Promise<EventJson[]> {
  const out: EventJson[] = [];
  let from = 0;
  for (;;) {
    const page = (
      await svc().request<EventPageJson>(
        'GET',
        `/events?device=${encodeURIComponent(deviceId)}&from=${from}&limit=1000`,
      )
    ).body;
    out.push(...page.events);
    if (page.events.length === 0 || page.nextSequenceNumber === from) return out;
    from = page.nextSequenceNumber;
  }
}

const openLeaf = (
  t: { after(fn: () => unknown): void },
  connectionString: string,
  Transport: unknown,
  setup?: (c: any) => void,
) => openSdkLeaf(t, connectionString, Transport, bottom().rootPem, setup);

describe('a hub and three gateway layers', { timeout: 90_000 }, () => {
  for (const { name, Transport } of [
    { name: 'Mqtt', Transport: Mqtt },
    { name: 'Amqp', Transport: Amqp },
  ]) {
    test(`${name} leaf under L3: telemetry at the hub with its own id; twin reported/desired, direct method and C2D from the hub`, async (t) => {
      const leaf = await bottom().createLeaf(`nested-leaf-${name.toLowerCase()}`);
      const id = leaf.deviceId;
      await svc().updateTwin(id, { properties: { desired: { interval: 7 } } });
      const c2d: any[] = [];
      const client = await openLeaf(t, leaf.connectionString, Transport, (c) =>
        c.on('message', (m: any) => {
          c2d.push(m);
          c.complete(m, () => undefined);
        }),
      );

      const msg = new Message(JSON.stringify({ layer: 3, via: name }));
      msg.messageId = `nested-${name}`;
      await client.sendEvent(msg);
      const [ev] = await waitForEvents(svc(), { device: id }, 1);
      assert.equal(ev.deviceId, id);
      assert.equal(ev.annotations['iothub-connection-device-id'], id);
      assert.equal(Buffer.from(ev.body, 'base64').toString(), JSON.stringify({ layer: 3, via: name }));

      const twin = await client.getTwin();
      assert.equal(twin.properties.desired.interval, 7);
      await updateReported(twin, { firmware: `fw-${name}` });
      await eventually(
        'the reported patch at the hub',
        async () => (await svc().getTwin(id)).properties?.reported?.firmware === `fw-${name}`,
      );
      // One patch, sent as soon as the subscription is acknowledged, must arrive.
      const pushed = await listenDesired(twin);
      const dv = twin.properties.desired.$version as number;
      await svc().updateTwin(id, { properties: { desired: { mode: 'm1' } } });
      assert.equal((await desiredPush(pushed, dv + 1)).mode, 'm1');

      client.onDeviceMethod('echo', (req: any, res: any) =>
        res.send(200, { got: req.payload, via: name }, () => undefined),
      );
      const r = await svc().request<{ status: number; payload: unknown }>('POST', `/twins/${id}/methods`, {
        body: { methodName: 'echo', payload: { x: 3 }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 },
      });
      assert.deepEqual(r.body, { status: 200, payload: { got: { x: 3 }, via: name } });

      await svc().request('POST', `/devices/${id}/messages/deviceBound`, {
        body: { body: 'three layers down', messageId: `c2d-${name}`, properties: { colour: 'green' } },
      });
      await eventually('the C2D message at the leaf', () => c2d.length >= 1);
      assert.equal(c2d[0].data.toString(), 'three layers down');
      assert.equal(c2d[0].messageId, `c2d-${name}`);
      assert.equal(c2d[0].properties.getValue('colour'), 'green');
    });
  }

  test('a module of a leaf under L3 (ModuleClient, Mqtt): telemetry at the hub with its module id, twin, and a direct method to the module', async (t) => {
    const leaf = await bottom().createLeaf('nested-module-host');
    const moduleKey = Buffer.from(Array.from({ length: 32 }, () => randomInt(0, 256))).toString('base64');
    await svc().createModule({
      deviceId: leaf.deviceId,
      moduleId: 'sensor',
      authentication: { type: 'sas', symmetricKey: { primaryKey: moduleKey, secondaryKey: moduleKey } },
    } as never);
    const cs = leaf.connectionString.replace(/SharedAccessKey=[^;]+/, `ModuleId=sensor;SharedAccessKey=${moduleKey}`);
    // The gateway learns of the new module from the scope feed (or asks its parent on first connect).
    const client = ModuleClient.fromConnectionString(cs, Mqtt);
    t.after(() => client.close().catch(() => undefined));
    await client.setOptions({ ca: bottom().rootPem });
    await eventually('the module connecting through L3', async () =>
      client.open().then(
        () => true,
        () => false,
      ),
    );

    const m = new Message('from a module three layers down');
    m.properties.add('kind', 'module');
    await client.sendEvent(m);
    const events = await eventually('the module telemetry at the hub', async () => {
      const e = (await eventsOf(leaf.deviceId)).filter((x) => x.moduleId === 'sensor');
      return e.length > 0 ? e : undefined;
    });
    assert.equal(events[0]!.annotations['iothub-connection-module-id'], 'sensor');
    assert.equal(events[0]!.annotations['iothub-connection-device-id'], leaf.deviceId);
    assert.equal(Buffer.from(events[0]!.body, 'base64').toString(), 'from a module three layers down');

    const twin = await client.getTwin();
    await updateReported(twin, { layer: 3 });
    await eventually('the module twin reported at the hub', async () => {
      const r = await svc().request<{ properties?: { reported?: { layer?: number } } }>(
        'GET',
        `/twins/${leaf.deviceId}/modules/sensor`,
      );
      return r.body.properties?.reported?.layer === 3;
    });

    client.onMethod('where', (_req: any, res: any) => res.send(200, { module: 'sensor' }, () => undefined));
    const r = await eventually('the module method answering', async () => {
      const res = await svc().request<{ status: number; payload: unknown }>(
        'POST',
        `/twins/${leaf.deviceId}/modules/sensor/methods`,
        {
          body: { methodName: 'where', payload: {}, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 10 },
        },
      );
      return res.status === 200 ? res : undefined;
    });
    assert.deepEqual(r.body, { status: 200, payload: { module: 'sensor' } });
  });

  /**
   * A leaf under L3 sends one message at a time while `disrupt` takes part of the chain away and
   * brings it back; then every acknowledged message must be at the hub, in order, and nothing
   * duplicated past L3's store.
   */
  async function streamThrough(
    t: { after(fn: () => unknown): void; diagnostic(m: string): void },
    leafId: string,
    disrupt: (acked: () => number) => Promise<void>,
  ): Promise<void> {
    const leaf = await bottom().createLeaf(leafId);
    const client = await openLeaf(t, leaf.connectionString, Mqtt);
    // What L3 takes in from its leaves (a leaf that resends after a lost acknowledgement is at
    // least once on that hop, as with IoT Hub): duplicates past L3's store would be ours.
    const receivedAtL3 = async () => {
      const text = await gws[2]!.metrics();
      return [...text.matchAll(/^edgehub_messages_received_total(?:\{[^}]*\})? (\d+)/gm)].reduce(
        (n, m) => n + Number(m[1]),
        0,
      );
    };
    const l3Before = await receivedAtL3();
    const acked: number[] = [];
    let stop = false;
    let next = 0;
    let sendError: unknown;
    const sender = (async () => {
      while (!stop) {
        // One at a time, so the acknowledgement order is the send order.
        const i = next++;
        const m = new Message(JSON.stringify({ i }));
        try {
          await client.sendEvent(m);
          acked.push(i);
        } catch (err) {
          sendError = err;
          return;
        }
      }
    })();
    t.after(async () => {
      stop = true;
      await sender;
    });
    await eventually(
      'a stream under way through all layers',
      async () => acked.length >= 50 && (await eventsOf(leaf.deviceId)).length >= 20,
    );
    await disrupt(() => acked.length);
    stop = true;
    await sender;
    assert.equal(sendError, undefined, `the leaf's send failed: ${String(sendError)}`);

    const events = await eventually(
      'every acknowledged message at the hub',
      async () => {
        const e = await eventsOf(leaf.deviceId);
        const got = new Set(e.map((x) => JSON.parse(Buffer.from(x.body, 'base64').toString()).i as number));
        return acked.every((i) => got.has(i)) ? e : undefined;
      },
      30_000,
    );
    const indices = events.map((x) => JSON.parse(Buffer.from(x.body, 'base64').toString()).i as number);
    const firstSeen = indices.filter((v, k) => indices.indexOf(v) === k);
    const duplicates = indices.length - firstSeen.length;
    const twice = indices.filter((v, k) => indices.indexOf(v) !== k);
    t.diagnostic(
      `${acked.length} acknowledged, ${indices.length} at the hub, ${duplicates} duplicates${twice.length ? `: ${twice.map((v) => `${v} at positions ${indices.flatMap((x, k) => (x === v ? [k] : [])).join(' and ')}`).join('; ')}` : ''}`,
    );
    assert.deepEqual(firstSeen.slice(0, acked.length), acked, 'no loss and in the order sent');
    // A batch sent again after a lost answer is recognised upstream by its origin (the store and
    // number of the gateway that stored it) and stored once.
    const leafRepeats = Math.max(0, (await receivedAtL3()) - l3Before - next);
    t.diagnostic(
      `L3 took ${(await receivedAtL3()) - l3Before} message(s) from the leaf for ${next} sent: ${leafRepeats} repeated`,
    );
    assert.ok(
      duplicates <= leafRepeats,
      `nothing duplicated past the store: ${duplicates} duplicate(s) at the hub, ${leafRepeats} repeat(s) taken from the leaf`,
    );
  }

  const passedOn = async (gw: GatewayProcess) =>
    Number(/^edgehub_messages_passed_on_total(?:\{[^}]*\})? (\d+)/m.exec(await gw.metrics())?.[1] ?? 0);

  test('L2 killed with SIGKILL mid-stream and restarted: every acknowledged message from a leaf under L3 reaches the hub once, in order', async (t) => {
    await streamThrough(t, 'nested-outage-leaf', async (acked) => {
      await gws[1]!.kill9();
      gws[1] = undefined;
      const atKill = acked();
      // L3 keeps acknowledging: it buffers while its parent is gone.
      await eventually('acknowledged messages while L2 is down', () => acked() >= atKill + 200, 15_000);
      gws[1] = await startGatewayProcess({
        configPath: layers[1].configPath,
        dataDir: layers[1].dataDir,
        address: l2Addr,
      });
      await eventually('more acknowledged messages after L2 is back', () => acked() >= atKill + 300);
    });
  });

  // Around the hub's SIGKILL a batch passed on can fail while the next one waits for the parent;
  // the next must then be refused, not sent ahead of the first's resend (direct-forward.ts).
  test("the middle layers pass L3's batches on without storing them; with the hub killed with SIGKILL mid-stream and started again, every acknowledged message arrives once, in order", async (t) => {
    const before = await Promise.all([passedOn(gws[0]!), passedOn(gws[1]!), passedOn(gws[2]!)]);
    await streamThrough(t, 'nested-hub-outage-leaf', async (acked) => {
      const passing = await Promise.all([passedOn(gws[0]!), passedOn(gws[1]!), passedOn(gws[2]!)]);
      t.diagnostic(
        `passed on since the test began: L1 ${passing[0] - before[0]}, L2 ${passing[1] - before[1]}, L3 ${passing[2] - before[2]}`,
      );
      assert.ok(passing[0] > before[0] && passing[1] > before[1], 'L1 and L2 pass batches of the layer below on');
      assert.equal(passing[2], before[2], 'L3 stores what its leaves send (they send no batches)');
      // Killed, so that batches the hub stored may never be answered.
      await hub.kill9();
      const atStop = acked();
      await eventually('acknowledged messages while the hub is down', () => acked() >= atStop + 200, 15_000);
      hub = await startHubProcess({ address: hubAddr, dataDir: hubDir });
      await eventually('more acknowledged messages after the hub is back', () => acked() >= atStop + 300, 30_000);
    });
  });

  test('network isolation: L2 and L3 connect only to their parent; L1 only to the hub', (t) => {
    for (const n of ['l1', 'l2', 'l3']) t.diagnostic(`${n} outbound: ${recorder.seen(n).join(', ')}`);
    assert.ok(recorder.samples() > 10, 'the recorder sampled');
    const only = (name: string, parent: string) => assertConnectsOnlyTo(recorder, name, parent);
    only('l1', hubAddr);
    only('l2', l1Addr);
    only('l3', l2Addr);
  });
});
