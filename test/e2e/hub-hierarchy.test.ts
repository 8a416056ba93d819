import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startHubProcess, startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';

// A nested hierarchy built with the official azure-iothub Registry, the way back-end code sets
// up a gateway deployment: edge parent, edge child, leaf under the edge child.

let hub: HubProcess;
let sdk: ServiceSdk;

before(async () => {
  hub = await startHubProcess();
  sdk = await startServiceSdk(hub.caPath);
  await sdk.open('owner', { connectionString: hub.connectionString });
});

after(async () => {
  await sdk?.close();
  await hub?.stop();
});

const get = async (id: string) => (await sdk.must(sdk.call('owner', 'get', id))).body;

test('three levels: edge parent, edge child, leaf under the edge child', async () => {
  const top = (await sdk.must(sdk.call('owner', 'create', { deviceId: 'L1-gateway', capabilities: { iotEdge: true } })))
    .body;
  assert.equal(top.deviceScope, `ms-azure-iot-edge://L1-gateway-${top.generationId}`);
  assert.deepEqual(top.parentScopes, []);

  const mid = (
    await sdk.must(
      sdk.call('owner', 'create', {
        deviceId: 'L2-gateway',
        capabilities: { iotEdge: true },
        parentScopes: [top.deviceScope],
      }),
    )
  ).body;
  assert.equal(
    mid.deviceScope,
    `ms-azure-iot-edge://L2-gateway-${mid.generationId}`,
    'an edge child keeps its own scope',
  );
  assert.deepEqual(mid.parentScopes, [top.deviceScope]);

  const leaf = (await sdk.must(sdk.call('owner', 'create', { deviceId: 'L3-sensor', deviceScope: mid.deviceScope })))
    .body;
  assert.equal(leaf.deviceScope, mid.deviceScope, 'a leaf takes its parent scope');
  assert.deepEqual(leaf.parentScopes, [mid.deviceScope]);

  // Read back as stored, and in the twins the query language sees.
  assert.deepEqual((await get('L3-sensor')).parentScopes, [mid.deviceScope]);
  const twin = (await sdk.must(sdk.call('owner', 'getTwin', 'L2-gateway'))).body;
  assert.deepEqual(
    [twin.deviceScope, twin.parentScopes, twin.capabilities.iotEdge],
    [mid.deviceScope, [top.deviceScope], true],
  );
  const underMid = await sdk.must(
    sdk.query(
      'owner',
      `SELECT * FROM devices WHERE deviceScope = '${mid.deviceScope}' AND capabilities.iotEdge = false`,
    ),
  );
  assert.deepEqual(
    underMid.pages.flat().map((t: { deviceId: string }) => t.deviceId),
    ['L3-sensor'],
  );

  // Each edge device got its runtime modules.
  const modules = (await sdk.must(sdk.call('owner', 'getModulesOnDevice', 'L2-gateway'))).body.map(
    (m: { moduleId: string }) => m.moduleId,
  );
  assert.deepEqual(modules, ['$edgeAgent', '$edgeHub']);

  // The scope of an edge device is immutable: an update that tries to replace it is refused.
  const r = await sdk.call('owner', 'update', { ...(await get('L2-gateway')), deviceScope: top.deviceScope });
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.error.statusCode, 400);
  assert.equal((await get('L2-gateway')).deviceScope, mid.deviceScope);
});

test('a leaf given a random scope is refused with InvalidDeviceScope', async () => {
  const r = await sdk.call('owner', 'create', {
    deviceId: 'stray-leaf',
    deviceScope: 'ms-azure-iot-edge://nobody-637000000000000000',
  });
  assert.equal(r.ok, false);
  if (r.ok) return;
  assert.equal(r.error.statusCode, 400);
  assert.equal(r.error.name, 'ArgumentError');
  assert.match(r.error.body!, /ErrorCode:InvalidDeviceScope;/);
  const missing = await sdk.call('owner', 'get', 'stray-leaf');
  assert.equal(missing.ok, false, 'nothing was created');
});

test('a leaf cannot be a parent, a device has one parent, and a cycle is refused', async () => {
  const a = (await sdk.must(sdk.call('owner', 'create', { deviceId: 'cyc-a', capabilities: { iotEdge: true } }))).body;
  const b = (
    await sdk.must(
      sdk.call('owner', 'create', {
        deviceId: 'cyc-b',
        capabilities: { iotEdge: true },
        parentScopes: [a.deviceScope],
      }),
    )
  ).body;
  const lonely = (await sdk.must(sdk.call('owner', 'create', { deviceId: 'lonely-leaf' }))).body;
  assert.equal(lonely.deviceScope, '', 'an unparented leaf owns no scope anyone could name');

  const twoParents = await sdk.call('owner', 'create', {
    deviceId: 'greedy',
    capabilities: { iotEdge: true },
    parentScopes: [a.deviceScope, b.deviceScope],
  });
  assert.equal(!twoParents.ok && twoParents.error.statusCode, 400);

  const cycle = await sdk.call('owner', 'update', { ...a, parentScopes: [b.deviceScope] });
  assert.equal(cycle.ok, false);
  assert.match(!cycle.ok ? cycle.error.message : '', /cycle/);
  assert.deepEqual((await get('cyc-a')).parentScopes, []);
});

test('moving a leaf to another parent and removing its parent via update', async () => {
  const p1 = (await sdk.must(sdk.call('owner', 'create', { deviceId: 'mv-p1', capabilities: { iotEdge: true } }))).body;
  const p2 = (await sdk.must(sdk.call('owner', 'create', { deviceId: 'mv-p2', capabilities: { iotEdge: true } }))).body;
  await sdk.must(sdk.call('owner', 'create', { deviceId: 'mv-leaf', deviceScope: p1.deviceScope }));
  const moved = (
    await sdk.must(sdk.call('owner', 'update', { ...(await get('mv-leaf')), deviceScope: p2.deviceScope }))
  ).body;
  assert.deepEqual([moved.deviceScope, moved.parentScopes], [p2.deviceScope, [p2.deviceScope]]);
  const freed = (await sdk.must(sdk.call('owner', 'update', { ...(await get('mv-leaf')), deviceScope: '' }))).body;
  assert.deepEqual([freed.deviceScope, freed.parentScopes], ['', []]);
});

test('deleting a parent orphans its children and names them', async () => {
  const top = (await sdk.must(sdk.call('owner', 'create', { deviceId: 'del-top', capabilities: { iotEdge: true } })))
    .body;
  await sdk.must(
    sdk.call('owner', 'create', {
      deviceId: 'del-edge-child',
      capabilities: { iotEdge: true },
      parentScopes: [top.deviceScope],
    }),
  );
  await sdk.must(sdk.call('owner', 'create', { deviceId: 'del-leaf', deviceScope: top.deviceScope }));
  const del = await sdk.must(sdk.call('owner', 'delete', 'del-top'));
  assert.equal(del.statusCode, 204);
  assert.deepEqual(String(del.headers['x-strata-orphaned-children']).split(',').sort(), ['del-edge-child', 'del-leaf']);
  const edgeChild = await get('del-edge-child');
  assert.deepEqual(edgeChild.parentScopes, []);
  assert.match(edgeChild.deviceScope, /^ms-azure-iot-edge:\/\/del-edge-child-/);
  assert.equal((await get('del-leaf')).deviceScope, '');
});

test('a sixth edge layer is refused', async () => {
  let parentScope: string | undefined;
  for (let layer = 1; layer <= 5; layer++) {
    const d = (
      await sdk.must(
        sdk.call('owner', 'create', {
          deviceId: `layer-${layer}`,
          capabilities: { iotEdge: true },
          ...(parentScope ? { parentScopes: [parentScope] } : {}),
        }),
      )
    ).body;
    parentScope = d.deviceScope;
  }
  const sixth = await sdk.call('owner', 'create', {
    deviceId: 'layer-6',
    capabilities: { iotEdge: true },
    parentScopes: [parentScope],
  });
  assert.equal(sixth.ok, false);
  assert.match(!sixth.ok ? sixth.error.message : '', /at most 5/);
  // A leaf below the fifth layer is fine.
  await sdk.must(sdk.call('owner', 'create', { deviceId: 'layer-5-leaf', deviceScope: parentScope }));
});
