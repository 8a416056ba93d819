/**
 * A leaf that connected through a gateway is Connected at the hub as long as it stays, whether
 * or not it sends anything: the gateway announces it on its presence link when it connects
 * (presence-link.ts), which also puts its CBS authorization off its first message's path
 * (issue 20's open-loop tail), and withdraws it when it leaves.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import { startHubWithGateway, type EdgeSetup } from '../helpers/edge.ts';
import { eventually, openSdkLeaf } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Mqtt } = require('azure-iot-device-mqtt');

let edge: EdgeSetup;
const cleanups: Array<() => unknown> = [];

before(async () => {
  ({ edge } = await startHubWithGateway('gw-link-at-connect', cleanups));
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

test('a leaf that only connected through the gateway is Connected at the hub, and Disconnected once it leaves', async (t) => {
  const leaf = await edge.createLeaf('quiet-leaf');
  assert.equal((await edge.svc.getDevice(leaf.deviceId)).connectionState, 'Disconnected');
  const client = await openSdkLeaf(t, leaf.connectionString, Mqtt, edge.rootPem);
  await eventually('the leaf Connected at the hub', async () =>
    (await edge.svc.getDevice(leaf.deviceId)).connectionState === 'Connected' ? true : undefined,
  );
  await client.close();
  await eventually('the leaf Disconnected at the hub', async () =>
    (await edge.svc.getDevice(leaf.deviceId)).connectionState === 'Disconnected' ? true : undefined,
  );
});
