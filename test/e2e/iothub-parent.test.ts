/**
 * A gateway under a parent that offers none of Strata's own links, as IoT Hub does (a hub
 * started with --no-strata-links): its leaves' telemetry goes up on a link per identity, and a
 * leaf is Connected at the parent while it is connected below, by its own link attached when it
 * connects, and Disconnected once it left.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { rm } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { startHubWithGateway, type EdgeSetup } from '../helpers/edge.ts';
import { eventually, openSdkLeaf } from '../helpers/sdk-leaf.ts';
import { openSender, putToken, rheaConnect } from '../fixtures/amqp-helpers.ts';
import { deviceToken, serviceClient, waitForEvents } from '../fixtures/service-messaging-helpers.ts';

const require = createRequire(import.meta.url);
const { Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');

let hub: HubProcess;
let edge: EdgeSetup;
const cleanups: Array<() => unknown> = [];
const HUB_OPTIONS = { args: ['--no-strata-links'], env: { STRATA_LOG_LEVEL: 'debug' } };

before(async () => {
  ({ hub, edge } = await startHubWithGateway('gw-under-iothub', cleanups, HUB_OPTIONS));
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

let svc = () => edge.svc;
const stateOf = async (deviceId: string) => (await svc().getDevice(deviceId)).connectionState;

test("leaves' telemetry reaches the parent on a link per leaf, with no relay or presence link", async (t) => {
  const leaves = [await edge.createLeaf('iot-leaf-mqtt'), await edge.createLeaf('iot-leaf-amqp')];
  const clients = [
    await openSdkLeaf(t, leaves[0].connectionString, Mqtt, edge.rootPem),
    await openSdkLeaf(t, leaves[1].connectionString, Amqp, edge.rootPem),
  ];
  for (const [i, client] of clients.entries())
    for (let n = 0; n < 3; n++) await client.sendEvent(new Message(`${leaves[i].deviceId} #${n}`));
  for (const leaf of leaves) {
    const events = await waitForEvents(edge.svc, { device: leaf.deviceId }, 3);
    assert.deepEqual(
      events.map((e) => Buffer.from(e.body, 'base64').toString()),
      [0, 1, 2].map((n) => `${leaf.deviceId} #${n}`),
      'each message once, in order',
    );
    for (const e of events) assert.equal(e.annotations['iothub-connection-device-id'], leaf.deviceId);
  }
  const log = hub.output();
  for (const leaf of leaves) assert.match(log, new RegExp(`devices/${leaf.deviceId}/messages/events`));
  assert.doesNotMatch(log, /"route":"(relay|presence)"/, 'the gateway never asks for a link it was not offered');
  for (const client of clients) await client.close();
});

test('a leaf that only connected through the gateway is Connected at the parent, and Disconnected once it leaves', async (t) => {
  const leaf = await edge.createLeaf('iot-quiet-leaf');
  assert.equal(await stateOf(leaf.deviceId), 'Disconnected');
  const client = await openSdkLeaf(t, leaf.connectionString, Mqtt, edge.rootPem);
  await eventually('the leaf Connected at the parent', async () =>
    (await stateOf(leaf.deviceId)) === 'Connected' ? true : undefined,
  );
  // By its own telemetry link (the hub's log line may come a moment after the state).
  const link = new RegExp(`devices/${leaf.deviceId}/messages/events`);
  await eventually("the hub logging the leaf's link", () => link.test(hub.output()));
  await client.close();
  await eventually('the leaf Disconnected at the parent', async () =>
    (await stateOf(leaf.deviceId)) === 'Disconnected' ? true : undefined,
  );
});

test('the open offers no capability, and a child that asks for the relay or presence link anyway is refused as not found', async () => {
  const conn = await rheaConnect(hub);
  try {
    const offered = (conn as unknown as { remote: { open: { offered_capabilities?: unknown } } }).remote.open
      .offered_capabilities;
    assert.equal(offered ?? undefined, undefined, 'no com.strata capability in the open');
    const own = await putToken(
      conn,
      deviceToken(hub, edge.gatewayKey, edge.gatewayId, '$edgeHub'),
      `${hub.hostname}/devices/${edge.gatewayId}/modules/$edgeHub`,
    );
    assert.equal(own.status, 200, own.description);
    for (const link of ['relay', 'presence']) {
      const address = `/devices/${edge.gatewayId}/modules/$edgeHub/${link}`;
      await assert.rejects(openSender(conn, address), (err: Error & { condition?: string }) => {
        assert.equal(err.condition, 'amqp:not-found');
        assert.match(err.message, new RegExp(`no target node "${address.replace(/\$/g, '\\$')}" on this hub`));
        return true;
      });
    }
    // The connection lives on: the gateway's own telemetry link still opens on it.
    await openSender(conn, `/devices/${edge.gatewayId}/modules/$edgeHub/messages/events`);
  } finally {
    conn.close();
  }
});

test('after the parent restarts, a leaf still connected below is Connected there again without sending', async (t) => {
  const leaf = await edge.createLeaf('iot-staying-leaf');
  await openSdkLeaf(t, leaf.connectionString, Mqtt, edge.rootPem);
  await eventually('the leaf Connected at the parent', async () =>
    (await stateOf(leaf.deviceId)) === 'Connected' ? true : undefined,
  );
  const { address, dataDir } = hub;
  await hub.kill9();
  hub = await startHubProcess({ ...HUB_OPTIONS, address, dataDir });
  // Cleanups run last first: the restarted hub stops, then its directory goes.
  cleanups.push(
    () => rm(dataDir, { recursive: true, force: true }),
    () => hub.stop(),
  );
  const restarted = serviceClient(hub);
  svc = () => restarted;
  await eventually(
    'the leaf Connected at the restarted parent',
    async () => ((await stateOf(leaf.deviceId).catch(() => undefined)) === 'Connected' ? true : undefined),
    30_000,
  );
});
