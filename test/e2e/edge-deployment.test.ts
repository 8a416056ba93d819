/**
 * Deployments are checked where they enter, and a gateway never acknowledges a message it then
 * drops for want of routes (issue 17, finding 5):
 * - the hub's REST API refuses `$edgeHub` desired properties a gateway cannot compile
 *   (applyConfigurationContent and module twin updates, through the official azure-iothub
 *   Registry), with IoT Hub's error shape, and `strata hub set-modules` refuses them first;
 * - a gateway keeps its last good routes on disk and routes with them after a restart, even
 *   when its cached `$edgeHub` twin is bad (as a hub that took a broken deployment leaves it)
 *   and its parent is away; the message is stored, not dropped, and reaches the hub later;
 * - a gateway that has never seen a deployment sends telemetry upstream by the default route.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { edgeFiles } from '../../src/edge/local.ts';
import { TwinCache } from '../../src/edge/twin-cache.ts';
import { waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import {
  deploymentManifest,
  metricValue,
  setupEdge,
  startGatewayProcess,
  UPSTREAM_ROUTES,
  type EdgeSetup,
  type GatewayProcess,
} from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';
import { eventually, openSdkLeaf } from '../helpers/sdk-leaf.ts';
import { exec } from '../helpers/tls.ts';

const require = createRequire(import.meta.url);
const { Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const STRATA_BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));

let hubDir: string;
let hubAddress: string;
let hub: HubProcess;
let sdk: ServiceSdk;
let edge: EdgeSetup;
let gw: GatewayProcess | undefined;
const cleanups: Array<() => unknown> = [];

const startHub = () => startHubProcess({ dataDir: hubDir, address: hubAddress });

before(async () => {
  hubDir = await mkdtemp(join(tmpdir(), 'strata-hub-deploy-'));
  hubAddress = randomLoopback();
  hub = await startHub();
  sdk = await startServiceSdk(hub.caPath);
  await sdk.open('owner', { connectionString: hub.connectionString });
  edge = await setupEdge(hub, { gatewayId: 'gw-deploy', address: randomLoopback() });
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
  await gw?.stop();
  await sdk?.close();
  await hub?.stop();
  await edge?.cleanup();
  await rm(hubDir, { recursive: true, force: true });
});

/** $edgeHub desired properties, valid apart from what `change` does. */
function edgeHubDesired(change: (d: Record<string, any>) => void): Record<string, any> {
  const d: Record<string, any> = {
    schemaVersion: '1.1',
    routes: { ...UPSTREAM_ROUTES },
    storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
  };
  change(d);
  return d;
}

const BROKEN: Array<{ what: string; desired: Record<string, any>; says: RegExp }> = [
  {
    what: 'a source no message comes from',
    desired: edgeHubDesired((d) => (d.routes.bad = 'FROM /nowhere INTO $upstream')),
    says: /route "bad": position 6: source "\/nowhere" matches no message/,
  },
  {
    what: 'a condition that does not parse',
    desired: edgeHubDesired((d) => (d.routes.bad = 'FROM /messages/* WHER x = 1 INTO $upstream')),
    says: /route "bad": position 18: expected WHERE or INTO, found "WHER"/,
  },
  {
    what: 'an unknown sink',
    desired: edgeHubDesired((d) => (d.routes.bad = 'FROM /messages/* INTO $nowhere')),
    says: /route "bad": position 23: unknown system endpoint "\$nowhere"/,
  },
  {
    what: 'priority 10',
    desired: edgeHubDesired((d) => (d.routes.bad = { route: 'FROM /messages/* INTO $upstream', priority: 10 })),
    says: /route "bad": priority 10 is invalid/,
  },
  {
    what: 'a route TTL of -1',
    desired: edgeHubDesired((d) => (d.routes.bad = { route: 'FROM /messages/* INTO $upstream', timeToLiveSecs: -1 })),
    says: /route "bad": timeToLiveSecs -1 is invalid/,
  },
  {
    what: 'an unknown schemaVersion',
    desired: edgeHubDesired((d) => (d.schemaVersion = '9.0')),
    says: /unsupported \$edgeHub schemaVersion "9\.0"/,
  },
];

const withEdgeHub = (desired: Record<string, unknown>) => {
  const m = deploymentManifest() as { modulesContent: Record<string, Record<string, unknown>> };
  m.modulesContent.$edgeHub = { 'properties.desired': desired };
  return m;
};

describe('a broken deployment is refused where it enters', () => {
  test('the hub REST API answers 400 with the route named (applyConfigurationContent and $edgeHub twin updates, official Registry); the deployment in force is unchanged', async () => {
    for (const b of BROKEN) {
      const r = await sdk.call('owner', 'applyConfigurationContentOnDevice', 'gw-deploy', withEdgeHub(b.desired));
      assert.equal(r.ok, false, `${b.what}: accepted`);
      if (r.ok) continue;
      assert.equal(r.error.statusCode, 400, `${b.what}: ${JSON.stringify(r.error)}`);
      const message = (JSON.parse(r.error.body ?? '{}') as { Message?: string }).Message ?? '';
      assert.match(
        message,
        /^ErrorCode:InvalidConfigurationContent;the \$edgeHub desired properties are not a deployment a gateway can use: /,
        b.what,
      );
      assert.match(message, b.says, b.what);
    }
    // A patch of one route, and a replacement of the whole twin: the merged result is checked.
    const patch = await sdk.call(
      'owner',
      'updateModuleTwin',
      'gw-deploy',
      '$edgeHub',
      { properties: { desired: { routes: { bad: 'FROM /nowhere INTO $upstream' } } } },
      '*',
    );
    assert.equal(patch.ok, false, 'the twin patch was accepted');
    if (!patch.ok) {
      assert.equal(patch.error.statusCode, 400);
      const message = (JSON.parse(patch.error.body ?? '{}') as { Message?: string }).Message ?? '';
      assert.match(
        message,
        /^ErrorCode:ArgumentInvalid;the \$edgeHub desired properties are not a deployment a gateway can use: route "bad": position 6: source "\/nowhere" matches no message/,
      );
    }
    const replaced = await edge.svc
      .request('PUT', '/twins/gw-deploy/modules/$edgeHub', {
        body: {
          properties: { desired: edgeHubDesired((d) => (d.routes.upstream = 'FROM /messages/* INTO $nowhere')) },
        },
      })
      .then(
        () => undefined,
        (err: { status?: number; code?: string }) => err,
      );
    assert.equal(replaced?.status, 400);
    assert.equal(replaced?.code, 'ArgumentInvalid');

    const twin = await edge.svc.request<{ properties: { desired: Record<string, unknown> } }>(
      'GET',
      '/twins/gw-deploy/modules/$edgeHub',
    );
    assert.deepEqual(twin.body.properties.desired.routes, UPSTREAM_ROUTES);
    // Other modules' twins are not deployments of routes: anything goes there.
    const other = await sdk.call('owner', 'applyConfigurationContentOnDevice', 'gw-deploy', {
      modulesContent: {
        ...withEdgeHub(edgeHubDesired(() => undefined)).modulesContent,
        filter: { 'properties.desired': { routes: 'FROM /nowhere' } },
      },
    });
    assert.equal(other.ok, true, JSON.stringify(other));
  });

  test('`strata hub set-modules` refuses them before sending anything', async () => {
    const file = join(edge.dir, 'broken-deployment.json');
    for (const b of BROKEN) {
      await writeFile(file, JSON.stringify(withEdgeHub(b.desired)));
      const r = await exec(process.execPath, [
        STRATA_BIN,
        'hub',
        'set-modules',
        '--device',
        'gw-deploy',
        '--content',
        file,
        '--hub-connection-string',
        hub.connectionString,
        '--ca',
        hub.caPath,
      ]);
      assert.equal(r.code, 1, `${b.what}: ${r.stdout}`);
      assert.match(r.stderr, /the \$edgeHub routes of .*broken-deployment\.json do not compile: /, b.what);
      assert.match(r.stderr, b.says, b.what);
    }
  });
});

describe('the last good routes survive a restart', () => {
  test("restarted with a bad cached $edgeHub twin and the hub away, the gateway routes with the routes it kept: the leaf's message is stored, not dropped, and reaches the hub", async (t) => {
    const files = edgeFiles(edge.dataDir);
    gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address });
    await eventually('the routes kept on disk', () => existsSync(files.routes));
    assert.deepEqual(JSON.parse(readFileSync(files.routes, 'utf8')).desired.routes, UPSTREAM_ROUTES);
    // The gateway says how the deployment went, where the original edge hub does.
    await eventually('lastDesiredStatus 200 in the $edgeHub reported properties', async () => {
      const twin = await edge.svc.request<{ properties: { reported: Record<string, any> } }>(
        'GET',
        '/twins/gw-deploy/modules/$edgeHub',
      );
      return twin.body.properties.reported.lastDesiredStatus?.code === 200;
    });
    const leaf = await edge.createLeaf('restart-leaf');
    const first = await openSdkLeaf(t, leaf.connectionString, Mqtt, edge.rootPem);
    await first.sendEvent(new Message('before the restart'));
    await waitForEvents(edge.svc, { device: leaf.deviceId }, 1);
    await first.close();
    await gw.stop();
    await hub.stop();

    // What a broken deployment accepted by a hub leaves in the gateway's twin cache.
    const cache = TwinCache.open(files.gatewayDb);
    cache.put('gw-deploy', '$edgeHub', {
      desired: { ...edgeHubDesired((d) => (d.routes = { upstream: 'FROM /nowhere INTO $upstream' })), $version: 99 },
      reported: {},
    });
    cache.close();

    gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address });
    const second = await openSdkLeaf(t, leaf.connectionString, Mqtt, edge.rootPem);
    await second.sendEvent(new Message('while the hub is away'));
    const m = await gw.metrics();
    assert.equal(
      metricValue(m, 'edgehub_messages_dropped_total', { reason: 'no_route' }) ?? 0,
      0,
      'no message dropped for want of routes',
    );
    assert.equal(metricValue(m, 'edgehub_queue_length', { endpoint: '$upstream' }), 1, 'the message waits for the hub');

    hub = await startHub();
    const events = await waitForEvents(edge.svc, { device: leaf.deviceId }, 2, 60_000);
    assert.deepEqual(
      events.map((e) => Buffer.from(e.body, 'base64').toString()),
      ['before the restart', 'while the hub is away'],
    );
  });

  test('a gateway that has never seen a deployment sends device telemetry upstream by the default route', async (t) => {
    const bare = await setupEdge(hub, { gatewayId: 'gw-bare', address: randomLoopback(), deploy: false });
    cleanups.push(() => bare.cleanup());
    const bareGw = await startGatewayProcess({
      configPath: bare.configPath,
      dataDir: bare.dataDir,
      address: bare.address,
    });
    cleanups.push(() => bareGw.stop());
    assert.match(
      bareGw.output(),
      /routes\s+the default route until a deployment is read \(FROM \/messages\/\* INTO \$upstream\)/,
    );
    const leaf = await bare.createLeaf('bare-leaf');
    const client = await openSdkLeaf(t, leaf.connectionString, Mqtt, bare.rootPem);
    await client.sendEvent(new Message('no deployment yet'));
    const [ev] = await waitForEvents(bare.svc, { device: leaf.deviceId }, 1);
    assert.equal(Buffer.from(ev.body, 'base64').toString(), 'no deployment yet');
    assert.equal(metricValue(await bareGw.metrics(), 'edgehub_messages_dropped_total', { reason: 'no_route' }) ?? 0, 0);
  });
});
