import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNodeDb, type NodeDb } from '../../src/store/db.ts';
import { SqliteRegistryStore } from '../../src/store/registry-store.ts';
import { Registry } from '../../src/hub/registry.ts';
import { HubError } from '../../src/model/errors.ts';

function open(t: import('node:test').TestContext, dir?: string) {
  const dataDir = dir ?? mkdtempSync(join(tmpdir(), 'strata-registry-'));
  const db: NodeDb = openNodeDb(join(dataDir, 'hub.db'));
  const registry = new Registry(new SqliteRegistryStore(db), { hostname: 'hub.test' });
  const events: unknown[][] = [];
  registry.on('identity', (...a) => events.push(['identity', ...a]));
  registry.on('desired', (...a) => events.push(['desired', ...a]));
  registry.on('reported', (...a) => events.push(['reported', ...a]));
  if (!dir) t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  t.after(() => db.close());
  return { registry, db, dataDir, events };
}

function hubError(status: number, code: string, fn: () => unknown, messagePart?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof HubError, `expected HubError, got ${String(err)}`);
    assert.equal(err.status, status, err.message);
    assert.equal(err.code, code, err.message);
    if (messagePart) assert.match(err.message, messagePart);
    return true;
  });
}

test('creating a device generates SAS keys, a generation id and an etag', (t) => {
  const { registry, events } = open(t);
  const d = registry.putDevice('dev-1', { deviceId: 'dev-1' });
  assert.equal(d.authentication.type, 'sas');
  assert.equal(Buffer.from(d.authentication.symmetricKey.primaryKey!, 'base64').length, 32);
  assert.notEqual(d.authentication.symmetricKey.primaryKey, d.authentication.symmetricKey.secondaryKey);
  assert.match(d.generationId, /^\d{15,}$/);
  assert.ok(d.etag);
  assert.equal(d.status, 'enabled');
  assert.equal(d.connectionState, 'Disconnected');
  assert.deepEqual(d.capabilities, { iotEdge: false });
  assert.equal(d.deviceScope, '');
  assert.deepEqual(d.parentScopes, []);
  assert.deepEqual(events, [['identity', 'dev-1', undefined, 'created']]);
  const twin = registry.getTwin('dev-1')!;
  assert.equal(twin.version, 1);
  assert.equal(twin.etag, 'AAAAAAAAAAE=');
  assert.equal(twin.properties.desired.$version, 1);
  assert.equal(twin.properties.reported.$version, 1);
});

test('create refuses an existing id (409) and bad ids (400); update needs the device (404) and a fresh etag (412)', (t) => {
  const { registry, events } = open(t);
  const d = registry.putDevice('dev', {});
  hubError(409, 'DeviceAlreadyExists', () => registry.putDevice('dev', {}));
  hubError(400, 'ArgumentInvalid', () => registry.putDevice('bad/id', {}), /not allowed/);
  hubError(400, 'ArgumentInvalid', () => registry.putDevice('x'.repeat(129), {}), /129 characters/);
  hubError(400, 'ArgumentInvalid', () => registry.putDevice('a', { deviceId: 'b' }), /names device/);
  hubError(404, 'DeviceNotFound', () => registry.putDevice('ghost', {}, '*'));
  hubError(412, 'PreconditionFailed', () => registry.putDevice('dev', { status: 'disabled' }, '"stale"'));
  const before = events.length;
  const u = registry.putDevice('dev', { status: 'disabled', statusReason: 'maintenance' }, `"${d.etag}"`);
  assert.equal(u.status, 'disabled');
  assert.equal(u.statusReason, 'maintenance');
  assert.notEqual(u.etag, d.etag);
  assert.notEqual(u.statusUpdatedTime, d.statusUpdatedTime);
  // Keys survive an update that sends them empty (the SDK does that when the caller left them out).
  const again = registry.putDevice(
    'dev',
    { authentication: { type: 'sas', symmetricKey: { primaryKey: '', secondaryKey: '' } } },
    '*',
  );
  assert.deepEqual(again.authentication, d.authentication);
  assert.equal(again.status, 'disabled');
  assert.deepEqual(events.slice(before), [
    ['identity', 'dev', undefined, 'updated'],
    ['identity', 'dev', undefined, 'updated'],
  ]);
});

test('authentication: given keys are checked, selfSigned needs a thumbprint, CA auth has no secrets', (t) => {
  const { registry } = open(t);
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.putDevice('k', { authentication: { symmetricKey: { primaryKey: 'c2hvcnQ=', secondaryKey: '' } } }),
    /16 to 64 bytes/,
  );
  const key = Buffer.alloc(32, 7).toString('base64');
  const withKeys = registry.putDevice('k2', {
    authentication: { type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: key } },
  });
  assert.equal(withKeys.authentication.symmetricKey.primaryKey, key);
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.putDevice('x1', { authentication: { type: 'selfSigned' } }),
    /primaryThumbprint/,
  );
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.putDevice('x2', { authentication: { x509Thumbprint: { primaryThumbprint: 'nothex' } } }),
    /thumbprint/,
  );
  const thumb = 'AB'.repeat(20);
  const x = registry.putDevice('x3', { authentication: { x509Thumbprint: { primaryThumbprint: thumb } } });
  assert.equal(x.authentication.type, 'selfSigned');
  assert.equal(x.authentication.x509Thumbprint.primaryThumbprint, thumb);
  assert.equal(x.authentication.symmetricKey.primaryKey, null);
  // An update without authentication (the SDK sends a blank SAS block) keeps X.509 as it is.
  const kept = registry.putDevice(
    'x3',
    { status: 'disabled', authentication: { type: 'sas', symmetricKey: { primaryKey: '', secondaryKey: '' } } },
    '*',
  );
  assert.deepEqual(kept.authentication, x.authentication);
  const ca = registry.putDevice('x4', { authentication: { type: 'CertificateAuthority' } });
  assert.equal(ca.authentication.type, 'certificateAuthority');
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.putDevice('x5', { authentication: { type: 'password' } }),
    /must be one of/,
  );
});

test('an edge device gets $edgeAgent and $edgeHub, which cannot be deleted; $ ids are reserved', (t) => {
  const { registry } = open(t);
  registry.putDevice('edge', { capabilities: { iotEdge: true } });
  const modules = registry.listModules('edge');
  assert.deepEqual(
    modules.map((m) => m.moduleId),
    ['$edgeAgent', '$edgeHub'],
  );
  assert.ok(modules.every((m) => m.authentication.type === 'sas' && m.authentication.symmetricKey.primaryKey));
  hubError(400, 'ArgumentInvalid', () => registry.deleteModule('edge', '$edgeHub'), /edge runtime/);
  hubError(400, 'ArgumentInvalid', () => registry.putModule('edge', '$mine', {}), /reserved/);
  const m = registry.putModule('edge', 'filter', { managedBy: 'me' });
  assert.equal(m.managedBy, 'me');
  hubError(409, 'ModuleAlreadyExistsOnDevice', () => registry.putModule('edge', 'filter', {}));
  hubError(412, 'PreconditionFailed', () => registry.putModule('edge', 'filter', {}, 'nope'));
  hubError(404, 'ModuleNotFound', () => registry.deleteModule('edge', 'ghost'));
  hubError(404, 'DeviceNotFound', () => registry.putModule('ghost', 'm', {}));
  registry.deleteModule('edge', 'filter', m.etag);
  assert.equal(registry.getModule('edge', 'filter'), undefined);
  // Turning the device into a leaf takes the runtime modules away.
  registry.putDevice('edge', { capabilities: { iotEdge: false } }, '*');
  assert.deepEqual(registry.listModules('edge'), []);
});

test('twin PATCH merges tags and desired (null deletes), bumps versions, stamps metadata and emits the patch', (t) => {
  const { registry, events } = open(t);
  registry.putDevice('d', {});
  events.length = 0;
  const t1 = registry.updateTwin(
    'd',
    undefined,
    { tags: { site: 'a', floor: 1 }, properties: { desired: { fan: { speed: 3, mode: 'auto' } } } },
    'AAAAAAAAAAE=',
    'patch',
  );
  assert.deepEqual(t1.tags, { site: 'a', floor: 1 });
  assert.equal(t1.properties.desired.$version, 2);
  assert.equal(t1.version, 2);
  assert.equal(t1.etag, 'AAAAAAAAAAI=');
  const meta = t1.properties.desired.$metadata as Record<string, any>;
  assert.equal(meta.fan.speed.$lastUpdatedVersion, 2);
  assert.ok(meta.fan.$lastUpdated);
  const t2 = registry.updateTwin(
    'd',
    undefined,
    { tags: { floor: null }, properties: { desired: { fan: { mode: null }, light: true } } },
    '*',
    'patch',
  );
  assert.deepEqual(t2.tags, { site: 'a' });
  const { $metadata, $version, ...desired } = t2.properties.desired;
  assert.deepEqual(desired, { fan: { speed: 3 }, light: true });
  assert.equal($version, 3);
  assert.equal(($metadata as any).fan.mode, undefined);
  assert.equal(($metadata as any).light.$lastUpdatedVersion, 3);
  assert.deepEqual(events, [
    ['desired', 'd', undefined, { fan: { speed: 3, mode: 'auto' }, $version: 2 }],
    ['desired', 'd', undefined, { fan: { mode: null }, light: true, $version: 3 }],
  ]);
  hubError(412, 'PreconditionFailed', () => registry.updateTwin('d', undefined, { tags: { x: 1 } }, t1.etag, 'patch'));
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.updateTwin('d', undefined, { properties: { reported: { x: 1 } } }, '*', 'patch'),
    /device itself/,
  );
  hubError(404, 'DeviceNotFound', () => registry.updateTwin('ghost', undefined, {}, '*', 'patch'));
});

test('twin PATCH with desired: null (or tags: null) clears the whole section, bumps $version and emits a patch removing every property', (t) => {
  const { registry, events } = open(t);
  registry.putDevice('d', {});
  registry.updateTwin(
    'd',
    undefined,
    { tags: { site: 'a' }, properties: { desired: { foo: 1, bar: { baz: 2 } } } },
    '*',
    'patch',
  );
  events.length = 0;
  const cleared = registry.updateTwin('d', undefined, { tags: null, properties: { desired: null } }, '*', 'patch');
  const { $metadata, $version, ...desired } = cleared.properties.desired;
  assert.deepEqual(desired, {});
  assert.equal($version, 3);
  assert.deepEqual(
    Object.keys($metadata as object).filter((k) => !k.startsWith('$')),
    [],
  );
  assert.deepEqual(cleared.tags, {});
  assert.deepEqual(events, [['desired', 'd', undefined, { foo: null, bar: null, $version: 3 }]]);
  // Already empty: still a new version, told to the device.
  events.length = 0;
  assert.equal(
    registry.updateTwin('d', undefined, { properties: { desired: null } }, '*', 'patch').properties.desired.$version,
    4,
  );
  assert.deepEqual(events, [['desired', 'd', undefined, { $version: 4 }]]);
});

test('twin PUT replaces tags and desired and tells the device what went away', (t) => {
  const { registry, events } = open(t);
  registry.putDevice('d', {});
  registry.updateTwin('d', undefined, { tags: { a: 1 }, properties: { desired: { keep: 1, drop: 2 } } }, '*', 'patch');
  events.length = 0;
  const r = registry.updateTwin(
    'd',
    undefined,
    { tags: { b: 2 }, properties: { desired: { keep: 1, added: 'x' } } },
    '*',
    'replace',
  );
  assert.deepEqual(r.tags, { b: 2 });
  const { $metadata: _m, $version, ...desired } = r.properties.desired;
  assert.deepEqual(desired, { keep: 1, added: 'x' });
  assert.deepEqual(events, [['desired', 'd', undefined, { drop: null, added: 'x', $version }]]);
});

test('reported properties: merge patch from the device, $version +1, reported event', (t) => {
  const { registry, events } = open(t);
  registry.putDevice('d', {});
  registry.putModule('d', 'm', {});
  events.length = 0;
  assert.deepEqual(registry.updateReported('d', undefined, { fw: '1.0', net: { ip: '10.0.0.2' } }), { version: 2 });
  assert.deepEqual(registry.updateReported('d', undefined, { net: null }), { version: 3 });
  const twin = registry.getTwin('d')!;
  assert.equal(twin.properties.reported.fw, '1.0');
  assert.equal(twin.properties.reported.net, undefined);
  assert.equal(twin.version, 3);
  assert.deepEqual(registry.updateReported('d', 'm', { ok: true }), { version: 2 });
  assert.equal(registry.getTwin('d', 'm')!.properties.reported.ok, true);
  assert.equal(registry.getTwin('d', 'm')!.moduleId, 'm');
  assert.deepEqual(
    events.map((e) => e.slice(0, 3)),
    [
      ['reported', 'd', undefined],
      ['reported', 'd', undefined],
      ['reported', 'd', 'm'],
    ],
  );
  hubError(400, 'ArgumentInvalid', () => registry.updateReported('d', undefined, { 'a.b': 1 }), /not allow/);
  hubError(404, 'ModuleNotFound', () => registry.updateReported('d', 'ghost', {}));
});

test('twin limits: 10 levels, 32 KiB of desired, property names', (t) => {
  const { registry } = open(t);
  registry.putDevice('d', {});
  // IoT Hub's own example of the deepest legal twin: objects "one" to "ten" below the section.
  let legal: Record<string, unknown> = { property: 'value' };
  for (const n of ['ten', 'nine', 'eight', 'seven', 'six', 'five', 'four', 'three', 'two', 'one'])
    legal = { [n]: legal };
  registry.updateTwin('d', undefined, { tags: legal, properties: { desired: legal } }, '*', 'patch');
  assert.equal(registry.getTwin('d')!.version, 2);
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.updateTwin('d', undefined, { properties: { desired: { eleven: legal } } }, '*', 'patch'),
    /deeper than 10/,
  );
  // Arrays count as levels too.
  hubError(
    400,
    'ArgumentInvalid',
    () =>
      registry.updateTwin('d', undefined, { properties: { desired: { a: [[[[[[[[[[[1]]]]]]]]]]] } } }, '*', 'patch'),
    /deeper than 10/,
  );
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.updateReported('d', undefined, { a: JSON.parse('['.repeat(10_000) + ']'.repeat(10_000)) }),
    /deeper than 10/,
  );
  hubError(
    400,
    'ArgumentInvalid',
    () =>
      registry.updateTwin('d', undefined, { properties: { desired: { big: 'x'.repeat(33 * 1024) } } }, '*', 'patch'),
    /bytes/,
  );
  hubError(400, 'ArgumentInvalid', () =>
    registry.updateTwin('d', undefined, { tags: { 'has space': 1 } }, '*', 'patch'),
  );
  // A refused write changes nothing.
  assert.equal(registry.getTwin('d')!.version, 2);
});

test('a "__proto__" property name is refused at every depth and never reaches Object.prototype (found by test/fuzz/twin-patch)', (t) => {
  const { registry } = open(t);
  registry.putDevice('d', {});
  registry.putModule('d', 'm', { deviceId: 'd', moduleId: 'm' });
  const writes: Array<() => unknown> = [
    () => registry.updateReported('d', undefined, JSON.parse('{"a":{"__proto__":{"viaReported":1}}}')),
    () => registry.updateReported('d', 'm', JSON.parse('{"__proto__":{"viaReported":1}}')),
    () => registry.updateTwin('d', undefined, JSON.parse('{"tags":{"a":{"__proto__":{"viaTags":1}}}}'), '*', 'patch'),
    () =>
      registry.updateTwin(
        'd',
        undefined,
        JSON.parse('{"properties":{"desired":{"a":{"b":{"__proto__":{"viaDesired":1}}}}}}'),
        '*',
        'patch',
      ),
    () =>
      registry.updateTwin(
        'd',
        undefined,
        JSON.parse('{"properties":{"desired":{"a":[{"__proto__":{"viaArray":1}}]}}}'),
        '*',
        'replace',
      ),
  ];
  for (const write of writes) hubError(400, 'ArgumentInvalid', write, /__proto__/);
  const probe = {} as Record<string, unknown>;
  for (const k of ['viaReported', 'viaTags', 'viaDesired', 'viaArray', '$lastUpdated'])
    assert.equal(probe[k], undefined, `Object.prototype.${k}`);
  assert.equal(registry.getTwin('d')!.version, 1);
  // Other names that look like JavaScript internals are ordinary properties.
  registry.updateReported('d', undefined, { constructor: { prototype: 1 }, toString: 'x' });
  assert.deepEqual(registry.getTwin('d')!.properties?.reported?.constructor, { prototype: 1 });
});

test('deleting an edge parent orphans its children and reports which; events only after commit', (t) => {
  const { registry, events } = open(t);
  const top = registry.putDevice('top', { capabilities: { iotEdge: true } });
  registry.putDevice('mid', { capabilities: { iotEdge: true }, parentScopes: [top.deviceScope] });
  registry.putDevice('leaf', { deviceScope: top.deviceScope });
  assert.deepEqual(
    registry.getChildren('top').map((d) => d.deviceId),
    ['leaf', 'mid'],
  );
  assert.equal(registry.getParent('leaf')!.deviceId, 'top');
  events.length = 0;
  const { orphaned } = registry.deleteDevice('top', '*');
  assert.deepEqual(orphaned.sort(), ['leaf', 'mid']);
  assert.equal(registry.getDevice('leaf')!.deviceScope, '');
  assert.deepEqual(registry.getDevice('mid')!.parentScopes, []);
  assert.match(registry.getDevice('mid')!.deviceScope, /^ms-azure-iot-edge:\/\/mid-/);
  assert.equal(registry.getDevice('top'), undefined);
  assert.deepEqual(
    events
      .filter((e) => e[3] === 'deleted')
      .map((e) => `${e[1]}/${e[2] ?? ''}`)
      .sort(),
    ['top/', 'top/$edgeAgent', 'top/$edgeHub'],
  );
  assert.deepEqual(
    events
      .filter((e) => e[3] === 'updated')
      .map((e) => e[1])
      .sort(),
    ['leaf', 'mid'],
  );
  events.length = 0;
  hubError(404, 'DeviceNotFound', () => registry.deleteDevice('top'));
  hubError(412, 'PreconditionFailed', () => registry.deleteDevice('leaf', 'old'));
  assert.deepEqual(events, []);
});

test('a leaf given a scope nobody owns is refused with InvalidDeviceScope', (t) => {
  const { registry } = open(t);
  hubError(400, 'InvalidDeviceScope', () =>
    registry.putDevice('leaf', { deviceScope: 'ms-azure-iot-edge://ghost-123' }),
  );
  assert.equal(registry.getDevice('leaf'), undefined);
});

test('bulk: each device succeeds or fails on its own; duplicates and bad sizes refuse the request', (t) => {
  const { registry } = open(t);
  registry.putDevice('exists', {});
  const r = registry.bulk([
    { id: 'b1', importMode: 'create' },
    { id: 'exists', importMode: 'Create' },
    { id: 'b/2', importMode: 'create' },
    { id: 'b3', importMode: 'CREATE', capabilities: { iotEdge: true } },
  ]);
  assert.equal(r.isSuccessful, false);
  assert.deepEqual(
    r.errors.map((e) => [e.deviceId, e.errorCode]),
    [
      ['exists', 'DeviceAlreadyExists'],
      ['b/2', 'ArgumentInvalid'],
    ],
  );
  assert.ok(registry.getDevice('b1'));
  assert.equal(registry.getDevice('b3')!.capabilities.iotEdge, true);
  const upd = registry.bulk([
    { id: 'b1', importMode: 'UpdateIfMatchETag', etag: 'stale', status: 'disabled' },
    { id: 'b3', importMode: 'update', status: 'disabled' },
  ]);
  assert.deepEqual(
    upd.errors.map((e) => e.errorCode),
    ['PreconditionFailed'],
  );
  assert.equal(registry.getDevice('b3')!.status, 'disabled');
  const del = registry.bulk([
    { id: 'b1', importMode: 'delete' },
    { id: 'b3', importMode: 'DeleteIfMatchETag', eTag: registry.getDevice('b3')!.etag },
  ]);
  assert.deepEqual(del, { isSuccessful: true, errors: [], warnings: [] });
  hubError(400, 'DeviceDefinedMultipleTimes', () => registry.bulk([{ id: 'x' }, { id: 'x' }]));
  hubError(400, 'ArgumentInvalid', () => registry.bulk([]));
  hubError(400, 'ArgumentInvalid', () => registry.bulk({}));
});

test('applyConfigurationContent writes module desired properties and creates missing module identities', (t) => {
  const { registry, events } = open(t);
  registry.putDevice('edge', { capabilities: { iotEdge: true } });
  registry.putDevice('plain', {});
  events.length = 0;
  registry.applyConfigurationContent('edge', {
    modulesContent: {
      $edgeAgent: { 'properties.desired': { schemaVersion: '1.1', modules: {} } },
      $edgeHub: {
        'properties.desired': {
          schemaVersion: '1.1',
          routes: { up: 'FROM /messages/* INTO $upstream' },
          storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
        },
      },
      filter: { 'properties.desired': { threshold: 5 } },
    },
  });
  assert.equal(registry.getTwin('edge', '$edgeAgent')!.properties.desired.schemaVersion, '1.1');
  assert.deepEqual(registry.getTwin('edge', '$edgeHub')!.properties.desired.routes, {
    up: 'FROM /messages/* INTO $upstream',
  });
  assert.equal(registry.getModule('edge', 'filter')!.managedBy, 'IotEdge');
  assert.deepEqual(
    events.filter((e) => e[0] === 'desired').map((e) => e[2]),
    ['$edgeAgent', '$edgeHub', 'filter'],
  );
  // A second deployment replaces: what it leaves out is removed.
  registry.applyConfigurationContent('edge', {
    modulesContent: {
      $edgeHub: {
        'properties.desired': {
          schemaVersion: '1.1',
          routes: {},
          storeAndForwardConfiguration: { timeToLiveSecs: 7200 },
        },
      },
    },
  });
  assert.deepEqual(registry.getTwin('edge', '$edgeHub')!.properties.desired.routes, {});
  // $edgeHub desired properties a gateway could not use are refused, and change nothing.
  hubError(
    400,
    'InvalidConfigurationContent',
    () =>
      registry.applyConfigurationContent('edge', {
        modulesContent: { $edgeHub: { 'properties.desired': { routes: { up: 'FROM /messages/* INTO $upstream' } } } },
      }),
    /no schemaVersion/,
  );
  hubError(
    400,
    'ArgumentInvalid',
    () =>
      registry.updateTwin(
        'edge',
        '$edgeHub',
        { properties: { desired: { routes: { bad: 'FROM /nowhere INTO $upstream' } } } },
        undefined,
        'patch',
      ),
    /route "bad": position 6: source "\/nowhere" matches no message/,
  );
  assert.deepEqual(registry.getTwin('edge', '$edgeHub')!.properties.desired.routes, {});
  hubError(
    400,
    'ArgumentInvalid',
    () => registry.applyConfigurationContent('plain', { modulesContent: {} }),
    /not an IoT Edge device/,
  );
  hubError(404, 'DeviceNotFound', () => registry.applyConfigurationContent('ghost', {}));
});

test('connection state is runtime only and shows in device, module and twin JSON', (t) => {
  const { registry } = open(t);
  registry.putDevice('d', {});
  registry.putModule('d', 'm', {});
  registry.setConnectionState('d', undefined, true);
  assert.equal(registry.getDevice('d')!.connectionState, 'Connected');
  assert.notEqual(registry.getDevice('d')!.lastActivityTime, '0001-01-01T00:00:00Z');
  assert.equal(registry.getTwin('d')!.connectionState, 'Connected');
  assert.equal(registry.getModule('d', 'm')!.connectionState, 'Disconnected');
  registry.setConnectionState('d', 'm', true);
  assert.equal(registry.getModule('d', 'm')!.connectionState, 'Connected');
  registry.setConnectionState('d', undefined, false);
  assert.equal(registry.getDevice('d')!.connectionState, 'Disconnected');
});

test('everything is on disk: a reopened store has devices, keys, scopes and twins', (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'strata-registry-'));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const first = openNodeDb(join(dataDir, 'hub.db'));
  const r1 = new Registry(new SqliteRegistryStore(first), { hostname: 'hub.test' });
  const top = r1.putDevice('top', { capabilities: { iotEdge: true } });
  const leaf = r1.putDevice('leaf', { deviceScope: top.deviceScope });
  r1.updateTwin('leaf', undefined, { tags: { t: 1 }, properties: { desired: { d: 2 } } }, '*', 'patch');
  r1.updateReported('leaf', undefined, { r: 3 });
  first.close();
  const second = openNodeDb(join(dataDir, 'hub.db'));
  t.after(() => second.close());
  const r2 = new Registry(new SqliteRegistryStore(second), { hostname: 'hub.test' });
  assert.deepEqual(r2.getDevice('leaf'), leaf);
  assert.deepEqual(r2.getDevice('top'), top);
  const twin = r2.getTwin('leaf')!;
  assert.deepEqual([twin.tags.t, twin.properties.desired.d, twin.properties.reported.r, twin.version], [1, 2, 3, 3]);
  // Etags keep growing across restarts, so an old etag never matches a new write.
  const next = r2.putDevice('leaf', {}, '*');
  assert.notEqual(next.etag, leaf.etag);
});

test('the query source yields device twins and module twins', (t) => {
  const { registry } = open(t);
  registry.putDevice('a', { capabilities: { iotEdge: true } });
  registry.putDevice('b', {});
  const src = registry.querySource();
  assert.deepEqual(
    [...src.devices()].map((x) => x.deviceId),
    ['a', 'b'],
  );
  assert.deepEqual(
    [...src.modules()].map((x) => `${x.deviceId}/${x.moduleId}`),
    ['a/$edgeAgent', 'a/$edgeHub'],
  );
  assert.deepEqual(registry.statistics(), { totalDeviceCount: 2, enabledDeviceCount: 2, disabledDeviceCount: 0 });
});

test("the registry as the AMQP head's identity source: lookups kept in memory, frozen, until an identity changes", async (t) => {
  const { registryIdentitySource } = await import('../../src/hub/scope-api.ts');
  const { registry } = open(t);
  const edge = registry.putDevice('edge-1', { deviceId: 'edge-1', capabilities: { iotEdge: true } });
  registry.putDevice('leaf-1', { deviceId: 'leaf-1', parentScopes: [edge.deviceScope] });
  const source = registryIdentitySource(registry);
  const leaf = source.getDevice('leaf-1')!;
  assert.equal(source.getDevice('leaf-1'), leaf, 'the same object again');
  assert.throws(
    () => ((leaf.authentication as { type: string }).type = 'x509'),
    TypeError,
    'shared, so frozen through and through',
  );
  assert.equal(source.edgeByScope(edge.deviceScope!)?.deviceId, 'edge-1');
  assert.equal(source.getDevice('nobody'), undefined);

  const disabled = registry.putDevice('leaf-1', { ...registry.getDevice('leaf-1'), status: 'disabled' }, '*');
  assert.equal(disabled.status, 'disabled');
  assert.equal(source.getDevice('leaf-1')!.status, 'disabled', 'a change is seen at the next lookup');
  registry.putDevice('nobody', { deviceId: 'nobody' });
  assert.equal(source.getDevice('nobody')?.deviceId, 'nobody', 'so is a device created after a miss');
  registry.deleteDevice('leaf-1');
  assert.equal(source.getDevice('leaf-1'), undefined);
});
