/**
 * Twin sync through gateways, with official SDK leaves and one patch each, never sent again:
 * a desired patch sent right after the leaf's subscription is acknowledged reaches it through
 * one and three layers (AMQP upstream) and one and two layers (MQTT upstream), although the
 * subscription may not have reached the hub yet when the patch does; so does one made between
 * the leaf's twin read and its subscription (the gateway compares versions when the
 * subscription becomes live); and clearing all desired properties (`desired: null`, with and
 * without etag `*`, through the official azure-iothub Registry) reaches a leaf on the hub and
 * one three layers down as one patch that removes every property, with `$version` one up; a
 * device's `reported: null` is refused and changes nothing (it names each property as null). Last,
 * the top layer is stopped, a patch made and the layer started again: the leaf three layers
 * down gets the patch once the links are back.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import { newKey, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { startHubProcess, startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';
import { setupLayer } from '../helpers/nested.ts';
import { desiredPush, listenDesired, openSdkLeaf, updateReported } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Mqtt } = require('azure-iot-device-mqtt');
const { Amqp } = require('azure-iot-device-amqp');

const base = `127.${randomInt(2, 251)}.${randomInt(2, 251)}`;
const first = randomInt(2, 244);
const addr = (i: number) => `${base}.${first + i}`;

let hub: HubProcess;
let sdk: ServiceSdk;
/** AMQP upstream: L1 under the hub, L2 under L1, L3 under L2. */
const amqpLayers: EdgeSetup[] = [];
/** MQTT upstream: M1 under the hub, M2 under M1. */
const mqttLayers: EdgeSetup[] = [];
const cleanups: Array<() => unknown> = [];
/** The gateway processes by id. */
const gws = new Map<string, GatewayProcess>();

before(async () => {
  hub = await startHubProcess({ address: addr(0) });
  cleanups.push(() => hub.stop());
  sdk = await startServiceSdk(hub.caPath);
  cleanups.push(() => sdk.close());
  await sdk.open('owner', { connectionString: hub.connectionString });
  const starts: Array<() => Promise<GatewayProcess>> = [];
  for (let i = 0; i < 3; i++) {
    const edge = await setupLayer(hub, {
      gatewayId: `sync-l${i + 1}`,
      address: addr(1 + i),
      parent: amqpLayers[i - 1],
    });
    amqpLayers.push(edge);
    cleanups.push(() => edge.cleanup());
    starts.push(() =>
      startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address }),
    );
  }
  for (let i = 0; i < 2; i++) {
    const edge = await setupLayer(hub, {
      gatewayId: `sync-m${i + 1}`,
      address: addr(4 + i),
      parent: mqttLayers[i - 1],
    });
    mqttLayers.push(edge);
    cleanups.push(() => edge.cleanup());
    starts.push(() =>
      startGatewayProcess({
        configPath: edge.configPath,
        dataDir: edge.dataDir,
        address: edge.address,
        env: { UpstreamProtocol: 'Mqtt' },
      }),
    );
  }
  // Parents first: a layer connects to the one above it at start-up.
  for (const start of starts) {
    const gw = await start();
    const id = [...amqpLayers, ...mqttLayers].find((e) => e.address === gw.address)!.gatewayId;
    gws.set(id, gw);
    cleanups.push(() => gws.get(id)?.stop());
  }
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

const svc = () => amqpLayers[0].svc;
const transports = [
  { name: 'Mqtt', Transport: Mqtt },
  { name: 'Amqp', Transport: Amqp },
];

/** Registers a device under `edge` (or on the hub); its connection string. */
async function register(deviceId: string, edge?: EdgeSetup): Promise<string> {
  if (edge) return (await edge.createLeaf(deviceId)).connectionString;
  const key = newKey();
  await svc().createDevice({
    deviceId,
    authentication: { type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: newKey() } },
  });
  return `HostName=${hub.hostname};DeviceId=${deviceId};SharedAccessKey=${key}`;
}

/** The connection string of a registered device, through `edge` when given. */
async function connectionStringOf(deviceId: string, edge?: EdgeSetup): Promise<string> {
  const d = await svc().getDevice(deviceId);
  const key = d.authentication?.symmetricKey?.primaryKey;
  return `HostName=${hub.hostname};DeviceId=${deviceId};SharedAccessKey=${key}${edge ? `;GatewayHostName=${edge.address}` : ''}`;
}

/** A leaf of the official SDK under `edge` (or on the hub itself), with its twin read. */
async function leafWithTwin(
  t: { after(fn: () => unknown): void },
  deviceId: string,
  Transport: unknown,
  edge?: EdgeSetup,
  registered = false,
) {
  const cs = registered ? await connectionStringOf(deviceId, edge) : await register(deviceId, edge);
  const client = await openSdkLeaf(t, cs, Transport, hub.caPem);
  const twin = await client.getTwin();
  return { client, twin };
}

describe('a desired patch sent right after the leaf subscribes reaches it, sent once', { timeout: 120_000 }, () => {
  const placements = [
    { where: 'one layer (AMQP upstream)', edge: () => amqpLayers[0], tag: 'a1' },
    { where: 'three layers (AMQP upstream)', edge: () => amqpLayers[2], tag: 'a3' },
    { where: 'one layer (MQTT upstream)', edge: () => mqttLayers[0], tag: 'm1' },
    { where: 'two layers (MQTT upstream)', edge: () => mqttLayers[1], tag: 'm2' },
  ];
  for (const p of placements) {
    for (const { name, Transport } of transports) {
      test(`${name} leaf, ${p.where}`, async (t) => {
        // Several leaves, one after another: the window between the leaf's subscription and
        // the hub's is short through one layer, and each leaf gets one try at it.
        for (let round = 0; round < 3; round++) {
          const id = `sync-${p.tag}-${name.toLowerCase()}-${round}`;
          const { twin } = await leafWithTwin(t, id, Transport, p.edge());
          const v = twin.properties.desired.$version as number;
          const pushed = await listenDesired(twin);
          await svc().updateTwin(id, { properties: { desired: { mode: `after-subscribe-${round}` } } });
          const got = await desiredPush(pushed, v + 1);
          assert.equal(got.mode, `after-subscribe-${round}`);
          assert.equal(twin.properties.desired.mode, `after-subscribe-${round}`);
        }
      });
    }
  }
});

describe("a desired patch made between the leaf's twin read and its subscription reaches it through gateways", {
  timeout: 120_000,
}, () => {
  // On the hub itself such a patch is not pushed (the device reads its twin again when it
  // needs to); a gateway, like the original edge hub, compares on subscription and sends it.
  const placements = [
    { where: 'one layer (AMQP upstream)', edge: () => amqpLayers[0], tag: 'a1' },
    { where: 'three layers (AMQP upstream)', edge: () => amqpLayers[2], tag: 'a3' },
    { where: 'one layer (MQTT upstream)', edge: () => mqttLayers[0], tag: 'm1' },
    { where: 'two layers (MQTT upstream)', edge: () => mqttLayers[1], tag: 'm2' },
  ];
  for (const p of placements) {
    for (const { name, Transport } of transports) {
      test(`${name} leaf, ${p.where}`, async (t) => {
        const id = `between-${p.tag}-${name.toLowerCase()}`;
        const { twin } = await leafWithTwin(t, id, Transport, p.edge());
        const v = twin.properties.desired.$version as number;
        await svc().updateTwin(id, { properties: { desired: { mode: 'before-subscribe' } } });
        const pushed = await listenDesired(twin);
        const got = await desiredPush(pushed, v + 1);
        assert.deepEqual(got, { mode: 'before-subscribe', $version: v + 1 });
        assert.equal(twin.properties.desired.mode, 'before-subscribe');
        // Every layer compares when its subscription goes live; the leaf still gets it once.
        await new Promise((r) => setTimeout(r, 1000));
        assert.equal(pushed.filter((x) => x.$version === v + 1).length, 1, 'handed down once');
      });
    }
  }
});

describe('desired: null clears all desired properties and reaches the device', { timeout: 120_000 }, () => {
  const placements = [
    { where: 'on the hub', edge: () => undefined, tag: 'hub' },
    { where: 'three layers down', edge: () => amqpLayers[2], tag: 'l3' },
  ];
  for (const p of placements) {
    for (const { name, Transport } of transports) {
      for (const etag of [undefined, '*']) {
        test(`${name} leaf ${p.where}${etag ? ' (etag *)' : ''}`, async (t) => {
          const id = `clear-${p.tag}-${name.toLowerCase()}${etag ? '-star' : ''}`;
          const props = { foo: 1, bar: { baz: 2, tweedle: { dee: 3 } } };
          // Set before the leaf connects: it reads them with its twin.
          const edge = p.edge();
          if (edge) await edge.createLeaf(id);
          else
            await svc().createDevice({
              deviceId: id,
              authentication: { type: 'sas', symmetricKey: { primaryKey: newKey(), secondaryKey: newKey() } },
            });
          const set = await sdk.call('owner', 'updateTwin', id, { properties: { desired: props } }, '*');
          assert.ok(set.ok, JSON.stringify(set));
          const v0 = set.value.body.properties.desired.$version as number;
          const { twin } = await leafWithTwin(t, id, Transport, edge, true);
          assert.deepEqual({ foo: twin.properties.desired.foo, bar: twin.properties.desired.bar }, props);
          const pushed = await listenDesired(twin);

          const cleared = await sdk.call(
            'owner',
            'updateTwin',
            id,
            { properties: { desired: null } },
            etag ?? set.value.body.etag,
          );
          assert.ok(cleared.ok, JSON.stringify(cleared));
          assert.equal(cleared.value.body.properties.desired.$version, v0 + 1, 'the service sees $version one up');
          assert.deepEqual(
            Object.keys(cleared.value.body.properties.desired).filter((k) => !k.startsWith('$')),
            [],
            'the service sees no desired properties',
          );
          const patch = await desiredPush(pushed, v0 + 1);
          assert.deepEqual(patch, { foo: null, bar: null, $version: v0 + 1 }, 'one patch removing every property');
          assert.deepEqual(
            Object.keys(twin.properties.desired).filter((k) => !k.startsWith('$')),
            [],
            'the SDK twin has no desired properties left',
          );
          const read = await sdk.call('owner', 'getTwin', id);
          assert.ok(read.ok);
          assert.equal(read.value.body.properties.desired.$version, v0 + 1);
        });
      }
    }
  }
});

describe('reported: null from a device is refused with a clear error (IoT Hub refuses it too) and changes nothing', {
  timeout: 120_000,
}, () => {
  const placements = [
    { where: 'on the hub', edge: () => undefined, tag: 'hub' },
    { where: 'three layers down', edge: () => amqpLayers[2], tag: 'l3' },
  ];
  for (const p of placements) {
    for (const { name, Transport } of transports) {
      test(`${name} leaf ${p.where}`, async (t) => {
        const id = `reported-null-${p.tag}-${name.toLowerCase()}`;
        const { twin } = await leafWithTwin(t, id, Transport, p.edge());
        await updateReported(twin, { a: 1, b: { c: 2 } });
        const before = (await svc().getTwin(id)).properties!.reported!;
        const refused = await updateReported(twin, null as never).then(
          () => undefined,
          (e: Error) => e,
        );
        assert.match(refused?.message ?? 'not refused', /cannot be null; .* naming each of them as null/);
        const after = (await svc().getTwin(id)).properties!.reported!;
        assert.equal(after.$version, before.$version);
        assert.equal(after.a, 1);
        // What a device does instead: name each property as null.
        await updateReported(twin, { a: null, b: null });
        const cleared = (await svc().getTwin(id)).properties!.reported!;
        assert.deepEqual(
          Object.keys(cleared).filter((k) => !k.startsWith('$')),
          [],
        );
      });
    }
  }
});

describe('a link restored', { timeout: 180_000 }, () => {
  for (const { name, Transport } of transports) {
    test(`${name} leaf three layers down: a desired patch made while the top layer was stopped arrives once it is back`, async (t) => {
      const id = `restored-${name.toLowerCase()}`;
      const { twin } = await leafWithTwin(t, id, Transport, amqpLayers[2]);
      const v = twin.properties.desired.$version as number;
      const pushed = await listenDesired(twin);
      const l1 = amqpLayers[0];
      await gws.get(l1.gatewayId)!.stop();
      await svc().updateTwin(id, { properties: { desired: { mode: 'while-l1-was-down' } } });
      gws.set(
        l1.gatewayId,
        await startGatewayProcess({ configPath: l1.configPath, dataDir: l1.dataDir, address: l1.address }),
      );
      const got = await desiredPush(pushed, v + 1, 90_000);
      assert.deepEqual(got, { mode: 'while-l1-was-down', $version: v + 1 });
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(pushed.filter((x) => x.$version === v + 1).length, 1, 'handed down once');
    });
  }
});
