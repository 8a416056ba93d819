import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:https';
import { createSasToken } from '../../src/identity/sas.ts';
import { parseConnectionString } from '../../src/identity/connection-string.ts';
import { startHubProcess, startServiceSdk, type HubProcess, type SdkResult, type ServiceSdk } from '../helpers/hub.ts';

// The official azure-iothub Registry against `strata hub start` over TLS: every Registry call
// issue 3 lists, the error codes the SDK maps to its error classes, and policy permissions.

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

function failed(r: SdkResult, status: number, errorClass: string, code?: string): void {
  assert.equal(r.ok, false, `expected a ${status} failure, got ${JSON.stringify(r)}`);
  if (r.ok) return;
  assert.equal(r.error.statusCode, status, JSON.stringify(r.error));
  assert.equal(r.error.name, errorClass, JSON.stringify(r.error));
  if (code) assert.match(r.error.body ?? '', new RegExp(`"Message":"ErrorCode:${code};`), r.error.body ?? '');
}

/** A raw HTTPS request to the hub (for what the SDK cannot send). */
function raw(
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: hub.address, port: hub.httpsPort, method, path, headers, ca: hub.caPem }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('create, get, update, list and delete a device', async () => {
  const created = await sdk.must(sdk.call('owner', 'create', { deviceId: 'sdk-dev-1' }));
  assert.equal(created.statusCode, 200);
  assert.equal(created.body.deviceId, 'sdk-dev-1');
  assert.equal(created.body.status, 'enabled');
  assert.equal(created.body.authentication.type, 'sas');
  assert.ok(created.body.authentication.symmetricKey.primaryKey, 'the hub generates keys');
  assert.ok(created.body.generationId);
  assert.ok(created.body.etag);

  const got = await sdk.must(sdk.call('owner', 'get', 'sdk-dev-1'));
  assert.deepEqual(got.body.authentication.symmetricKey, created.body.authentication.symmetricKey);
  assert.match(got.headers['content-type'], /^application\/json/);

  // The SDK's update sends the device back with If-Match "*".
  const updated = await sdk.must(
    sdk.call('owner', 'update', { ...got.body, status: 'disabled', statusReason: 'testing' }),
  );
  assert.equal(updated.body.status, 'disabled');
  assert.equal(updated.body.statusReason, 'testing');
  assert.notEqual(updated.body.etag, created.body.etag);
  assert.deepEqual(updated.body.authentication.symmetricKey, created.body.authentication.symmetricKey);

  const list = await sdk.must(sdk.call('owner', 'list'));
  assert.ok(
    list.body.some((d: { deviceId: string; status: string }) => d.deviceId === 'sdk-dev-1' && d.status === 'disabled'),
  );

  const del = await sdk.must(sdk.call('owner', 'delete', 'sdk-dev-1'));
  assert.equal(del.statusCode, 204);
  failed(await sdk.call('owner', 'get', 'sdk-dev-1'), 404, 'DeviceNotFoundError', 'DeviceNotFound');
});

test('device ids with the special characters IoT Hub allows round-trip through the path', async () => {
  const id = "odd-id.%_*?!(),:=@$'x";
  const created = await sdk.must(sdk.call('owner', 'create', { deviceId: id }));
  assert.equal(created.body.deviceId, id);
  assert.equal((await sdk.must(sdk.call('owner', 'get', id))).body.deviceId, id);
  await sdk.must(sdk.call('owner', 'delete', id));
});

test('addDevices, updateDevices and removeDevices (bulk)', async () => {
  const ids = ['bulk-1', 'bulk-2', 'bulk-3'];
  const add = await sdk.must(
    sdk.call(
      'owner',
      'addDevices',
      ids.map((deviceId) => ({ deviceId })),
    ),
  );
  assert.deepEqual(add.body, { isSuccessful: true, errors: [], warnings: [] });

  const again = await sdk.must(sdk.call('owner', 'addDevices', [{ deviceId: 'bulk-1' }, { deviceId: 'bulk-4' }]));
  assert.equal(again.body.isSuccessful, false);
  assert.deepEqual(
    again.body.errors.map((e: { deviceId: string; errorCode: string }) => [e.deviceId, e.errorCode]),
    [['bulk-1', 'DeviceAlreadyExists']],
  );

  const upd = await sdk.must(
    sdk.call(
      'owner',
      'updateDevices',
      ids.map((deviceId) => ({ deviceId, status: 'disabled' })),
      true,
    ),
  );
  assert.equal(upd.body.isSuccessful, true);
  assert.equal((await sdk.must(sdk.call('owner', 'get', 'bulk-2'))).body.status, 'disabled');

  // Without force the etag must match.
  const stale = await sdk.must(
    sdk.call('owner', 'updateDevices', [{ deviceId: 'bulk-1', etag: 'c3RhbGU=', status: 'enabled' }], false),
  );
  assert.deepEqual(
    stale.body.errors.map((e: { errorCode: string }) => e.errorCode),
    ['PreconditionFailed'],
  );

  const rm = await sdk.must(
    sdk.call(
      'owner',
      'removeDevices',
      [...ids, 'bulk-4'].map((deviceId) => ({ deviceId })),
      true,
    ),
  );
  assert.equal(rm.body.isSuccessful, true);
  failed(await sdk.call('owner', 'get', 'bulk-3'), 404, 'DeviceNotFoundError');
});

test('getTwin and updateTwin: merge, versions, etag and 412 on a stale etag', async () => {
  await sdk.must(sdk.call('owner', 'create', { deviceId: 'twin-dev' }));
  const twin = (await sdk.must(sdk.call('owner', 'getTwin', 'twin-dev'))).body;
  assert.equal(twin.deviceId, 'twin-dev');
  assert.equal(twin.properties.desired.$version, 1);
  assert.equal(twin.properties.reported.$version, 1);

  const patched = (
    await sdk.must(
      sdk.call(
        'owner',
        'updateTwin',
        'twin-dev',
        { tags: { site: 'plant-7' }, properties: { desired: { interval: 30, mode: { a: 1 } } } },
        twin.etag,
      ),
    )
  ).body;
  assert.equal(patched.tags.site, 'plant-7');
  assert.equal(patched.properties.desired.interval, 30);
  assert.equal(patched.properties.desired.$version, 2);
  assert.equal(patched.properties.desired.$metadata.interval.$lastUpdatedVersion, 2);
  assert.notEqual(patched.etag, twin.etag);

  failed(
    await sdk.call('owner', 'updateTwin', 'twin-dev', { tags: { site: 'x' } }, twin.etag),
    412,
    'InvalidEtagError',
    'PreconditionFailed',
  );

  const removed = (
    await sdk.must(sdk.call('owner', 'updateTwin', 'twin-dev', { properties: { desired: { mode: null } } }, '*'))
  ).body;
  assert.equal(removed.properties.desired.mode, undefined);
  assert.equal(removed.properties.desired.interval, 30);
  failed(await sdk.call('owner', 'getTwin', 'no-such-twin'), 404, 'DeviceNotFoundError', 'DeviceNotFound');
});

test('addModule, getModulesOnDevice, getModule, updateModule, removeModule and module twins', async () => {
  await sdk.must(sdk.call('owner', 'create', { deviceId: 'mod-host' }));
  const added = await sdk.must(sdk.call('owner', 'addModule', { deviceId: 'mod-host', moduleId: 'sensor' }));
  assert.equal(added.body.moduleId, 'sensor');
  assert.ok(added.body.authentication.symmetricKey.primaryKey);
  failed(
    await sdk.call('owner', 'addModule', { deviceId: 'mod-host', moduleId: 'sensor' }),
    409,
    'DeviceAlreadyExistsError',
    'ModuleAlreadyExistsOnDevice',
  );

  const list = await sdk.must(sdk.call('owner', 'getModulesOnDevice', 'mod-host'));
  assert.deepEqual(
    list.body.map((m: { moduleId: string }) => m.moduleId),
    ['sensor'],
  );
  const got = (await sdk.must(sdk.call('owner', 'getModule', 'mod-host', 'sensor'))).body;
  assert.equal(got.etag, added.body.etag);

  const upd = await sdk.must(sdk.call('owner', 'updateModule', { ...got, managedBy: 'ops' }, false));
  assert.equal(upd.body.managedBy, 'ops');
  failed(
    await sdk.call('owner', 'updateModule', { ...got, managedBy: 'late' }, false),
    412,
    'InvalidEtagError',
    'PreconditionFailed',
  );

  const mtwin = (await sdk.must(sdk.call('owner', 'getModuleTwin', 'mod-host', 'sensor'))).body;
  assert.equal(mtwin.moduleId, 'sensor');
  const mpatched = (
    await sdk.must(
      sdk.call('owner', 'updateModuleTwin', 'mod-host', 'sensor', { properties: { desired: { rate: 5 } } }, mtwin.etag),
    )
  ).body;
  assert.equal(mpatched.properties.desired.rate, 5);

  const modQuery = await sdk.must(sdk.query('owner', "SELECT * FROM devices.modules WHERE deviceId = 'mod-host'"));
  assert.deepEqual(
    modQuery.pages
      .flat()
      .map((t: { moduleId: string; properties: { desired: { rate: number } } }) => [
        t.moduleId,
        t.properties.desired.rate,
      ]),
    [['sensor', 5]],
  );

  const rm = await sdk.must(sdk.call('owner', 'removeModule', 'mod-host', 'sensor'));
  assert.equal(rm.statusCode, 204);
  failed(await sdk.call('owner', 'getModule', 'mod-host', 'sensor'), 404, 'Error', 'ModuleNotFound');
});

test('createQuery pages with continuation tokens and ends after the last page', async () => {
  const ids = ['q-1', 'q-2', 'q-3', 'q-4', 'q-5'];
  await sdk.must(
    sdk.call(
      'owner',
      'addDevices',
      ids.map((deviceId) => ({ deviceId })),
    ),
  );
  await sdk.must(sdk.call('owner', 'updateTwin', 'q-3', { tags: { role: 'probe' } }, '*'));
  const paged = await sdk.must(sdk.query('owner', "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'q-')", 2));
  assert.deepEqual(
    paged.pages.map((p) => p.length),
    [2, 2, 1],
  );
  assert.deepEqual(
    paged.pages
      .flat()
      .map((t: { deviceId: string }) => t.deviceId)
      .sort(),
    ids,
  );
  const probes = await sdk.must(sdk.query('owner', "SELECT * FROM devices WHERE tags.role = 'probe'"));
  assert.deepEqual(
    probes.pages.flat().map((t: { deviceId: string }) => t.deviceId),
    ['q-3'],
  );
  const bad = await sdk.query('owner', 'SELECT * FROM nowhere');
  failed(bad, 400, 'ArgumentError');
});

test('error codes: 400 on an invalid id, 409 on a duplicate, 404 on a missing device', async () => {
  failed(await sdk.call('owner', 'create', { deviceId: 'bad#id' }), 400, 'ArgumentError', 'ArgumentInvalid');
  failed(await sdk.call('owner', 'create', { deviceId: 'bad/id' }), 400, 'ArgumentError', 'ArgumentInvalid');
  failed(await sdk.call('owner', 'create', { deviceId: 'x'.repeat(129) }), 400, 'ArgumentError', 'ArgumentInvalid');
  await sdk.must(sdk.call('owner', 'create', { deviceId: 'dup' }));
  failed(
    await sdk.call('owner', 'create', { deviceId: 'dup' }),
    409,
    'DeviceAlreadyExistsError',
    'DeviceAlreadyExists',
  );
  failed(await sdk.call('owner', 'delete', 'never-was'), 404, 'DeviceNotFoundError', 'DeviceNotFound');
  failed(await sdk.call('owner', 'update', { deviceId: 'never-was' }), 404, 'DeviceNotFoundError', 'DeviceNotFound');
});

test('401 for a wrong key and an expired token', async () => {
  const cs = parseConnectionString(hub.connectionString);
  const wrongKey = Buffer.alloc(32, 9).toString('base64');
  await sdk.open('wrong', {
    connectionString: `HostName=${cs.HostName};SharedAccessKeyName=iothubowner;SharedAccessKey=${wrongKey}`,
  });
  failed(await sdk.call('wrong', 'get', 'dup'), 401, 'UnauthorizedError', 'IotHubUnauthorizedAccess');
  const expired = createSasToken(cs.HostName!, cs.SharedAccessKey!, Math.floor(Date.now() / 1000) - 60, 'iothubowner');
  await sdk.open('expired', { sharedAccessSignature: expired });
  const r = await sdk.call('expired', 'list');
  failed(r, 401, 'UnauthorizedError', 'IotHubUnauthorizedAccess');
  assert.match(r.ok ? '' : r.error.body!, /expired/);
});

test('registryRead can read but not write; service cannot touch the registry; a device key is refused', async () => {
  const hubDir = hub.dataDir;
  const { hubConnectionString } = await import('../../src/hub/local.ts');
  await sdk.open('reader', { connectionString: hubConnectionString(hubDir, 'registryRead') });
  await sdk.open('service', { connectionString: hubConnectionString(hubDir, 'service') });
  await sdk.open('device', { connectionString: hubConnectionString(hubDir, 'device') });
  assert.equal((await sdk.must(sdk.call('reader', 'get', 'dup'))).body.deviceId, 'dup');
  assert.equal((await sdk.must(sdk.call('reader', 'getTwin', 'dup'))).body.deviceId, 'dup');
  failed(
    await sdk.call('reader', 'create', { deviceId: 'by-reader' }),
    401,
    'UnauthorizedError',
    'IotHubUnauthorizedAccess',
  );
  failed(await sdk.call('reader', 'delete', 'dup'), 401, 'UnauthorizedError');
  failed(await sdk.call('reader', 'updateTwin', 'dup', { tags: { a: 1 } }, '*'), 401, 'UnauthorizedError');
  failed(await sdk.call('reader', 'addDevices', [{ deviceId: 'r1' }]), 401, 'UnauthorizedError');
  failed(await sdk.call('service', 'create', { deviceId: 'by-service' }), 401, 'UnauthorizedError');
  // ServiceConnect may write twins.
  await sdk.must(sdk.call('service', 'updateTwin', 'dup', { properties: { desired: { by: 'service' } } }, '*'));
  failed(await sdk.call('device', 'list'), 401, 'UnauthorizedError');
  failed(await sdk.call('owner', 'get', 'by-reader'), 404, 'DeviceNotFoundError');

  // A device's own SAS token is not a service credential.
  const dev = (await sdk.must(sdk.call('owner', 'get', 'dup'))).body;
  const deviceToken = createSasToken(
    `${hub.hostname}/devices/dup`,
    dev.authentication.symmetricKey.primaryKey,
    Math.floor(Date.now() / 1000) + 600,
  );
  const res = await raw('GET', '/devices/dup?api-version=2021-04-12', { authorization: deviceToken });
  assert.equal(res.status, 401);
  assert.match(res.body, /ErrorCode:IotHubUnauthorizedAccess;.*not a device key/);
});

test('GET /health needs no credentials; unknown paths get a JSON 404', async () => {
  const health = await raw('GET', '/health');
  assert.equal(health.status, 200);
  assert.deepEqual(JSON.parse(health.body).status, 'ok');
  const none = await raw('GET', '/nothing/here');
  assert.equal(none.status, 404);
  assert.match(String(none.headers['content-type']), /application\/json/);
  assert.match(none.body, /ErrorCode:NotFound/);
  // Malformed JSON is a clear 400, not a crash.
  const owner = parseConnectionString(hub.connectionString);
  const token = createSasToken(
    owner.HostName!,
    owner.SharedAccessKey!,
    Math.floor(Date.now() / 1000) + 600,
    'iothubowner',
  );
  const bad = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(
      {
        host: hub.address,
        port: hub.httpsPort,
        method: 'PUT',
        path: '/devices/broken',
        ca: hub.caPem,
        headers: { authorization: token, 'content-type': 'application/json' },
      },
      (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      },
    );
    req.on('error', reject);
    req.end('{"deviceId": ');
  });
  assert.equal(bad.status, 400);
  assert.match(bad.body, /ErrorCode:ArgumentInvalid;/);
  assert.equal((await raw('GET', '/health')).status, 200, 'the hub is still up');
});
