/**
 * A gateway attaches a leaf's telemetry link at its parent when the leaf connects, not when its
 * first message is forwarded: the first messages of many leaves then do not queue behind a
 * hundred attaches (issue 20's open-loop tail). The hub shows it as the leaf's connection
 * state: a leaf that has only connected through the gateway, sent nothing and subscribed to
 * nothing is Connected at the hub.
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

test('a leaf that only connected through the gateway has its link at the hub open: it is Connected there', async (t) => {
  const leaf = await edge.createLeaf('quiet-leaf');
  assert.equal((await edge.svc.getDevice(leaf.deviceId)).connectionState, 'Disconnected');
  await openSdkLeaf(t, leaf.connectionString, Mqtt, edge.rootPem);
  await eventually('the leaf Connected at the hub', async () =>
    (await edge.svc.getDevice(leaf.deviceId)).connectionState === 'Connected' ? true : undefined,
  );
});
