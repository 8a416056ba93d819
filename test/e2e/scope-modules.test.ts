/**
 * Module identities created at the hub through the parent chain, on behalf of an edge device,
 * as nested IoT Edge's agent does: a hub and three gateway layers as real processes (L1 under
 * the hub, L2 under L1, L3 under L2). `ParentModuleIdentities` signs as L2's `$edgeHub` and talks to L1 only;
 * L1 relays every request to the hub, which writes its registry. Checked with the official
 * `azure-iothub` Registry; then the official `ModuleClient` (Mqtt) connects to L2 with the
 * module's key and its output event reaches the hub. Refusals name their reason.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { edgeFiles } from '../../src/edge/local.ts';
import { ServiceClient } from '../../src/hub/service-client.ts';
import { scopePaths } from '../../src/scope/contract.ts';
import { ModuleIdentityError, ParentModuleIdentities } from '../../src/scope/module-identities.ts';
import { ScopeParentClient, ScopeSyncError, type ScopeParentOptions } from '../../src/scope/parent-client.ts';
import { waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import { newKey, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';
import { chainAddresses, startChain } from '../helpers/nested.ts';
import { eventually } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { ModuleClient, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const L1 = 'smod-l1';
const L2 = 'smod-l2';
const L3 = 'smod-l3';
/** An edge device below L2 that never runs. */
const L2B = 'smod-l2b';

let hub: HubProcess;
let sdk: ServiceSdk;
let svc: ServiceClient;
const out = {
  layers: [] as EdgeSetup[],
  gws: [] as Array<GatewayProcess | undefined>,
  cleanups: [] as Array<() => unknown>,
};
let l2Opts: ScopeParentOptions;
let ids: ParentModuleIdentities;

before(async () => {
  const addrs = chainAddresses();
  hub = await startChain('smod', addrs, out);
  svc = new ServiceClient(hub.connectionString, { ca: hub.caPem });
  out.cleanups.push(() => svc.close());
  sdk = await startServiceSdk(hub.caPath);
  out.cleanups.push(() => sdk.close());
  await sdk.open('owner', { connectionString: hub.connectionString });
  const l2 = out.layers[1]!;
  // What L2's gateway has to call its parent's scope API: L1's address, the trust bundle, its key.
  l2Opts = {
    parent: { host: out.layers[0]!.address, port: 443, ca: l2.rootPem },
    hubHostName: hub.hostname,
    edge: { deviceId: L2, key: l2.gatewayKey },
  };
  ids = new ParentModuleIdentities(l2Opts);
});

after(async () => {
  for (const fn of out.cleanups.reverse()) await fn();
});

/** The module as L2's scope cache holds it (read beside the running gateway). */
function cachedAtL2(moduleId: string): { authentication?: { symmetricKey?: { primaryKey?: string } } } | undefined {
  const db = new Database(edgeFiles(out.layers[1]!.dataDir).scopeDb, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT doc FROM scope_modules WHERE device_id = ? AND module_id = ?').get(L2, moduleId) as
      | { doc: string }
      | undefined;
    return row ? JSON.parse(row.doc) : undefined;
  } finally {
    db.close();
  }
}

async function refusal(p: Promise<unknown>): Promise<ModuleIdentityError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ModuleIdentityError, `a ModuleIdentityError, not ${String(err)}`);
    return err;
  }
  assert.fail('the request was not refused');
}

describe('module identities through the parent chain', { timeout: 180_000 }, () => {
  test('created at the hub on behalf of L2 through L1; get, list, update, delete; a ModuleClient connects to L2', async () => {
    const keys = await ids.ensure('filter');
    assert.equal(keys.moduleId, 'filter');
    assert.ok(keys.primaryKey && keys.secondaryKey && keys.generationId, 'keys and generationId are answered');

    // The hub has it, as the official service SDK sees it.
    const got = await sdk.must(sdk.call('owner', 'getModule', L2, 'filter'));
    assert.equal(got.body.deviceId, L2);
    assert.equal(got.body.managedBy, 'IotEdge');
    assert.equal(got.body.generationId, keys.generationId);
    assert.equal(got.body.authentication.symmetricKey.primaryKey, keys.primaryKey);
    assert.equal(got.body.authentication.symmetricKey.secondaryKey, keys.secondaryKey);

    // ensure again: the same identity, not a new one.
    assert.deepEqual(await ids.ensure('filter'), keys);
    const one = await ids.get('filter');
    assert.equal(one?.generationId, keys.generationId);
    assert.equal(await ids.get('absent'), undefined);
    const listed = await ids.list();
    assert.deepEqual(listed, ['filter']);
    const all = (await ids.listModules()).map((m) => m.moduleId).sort();
    assert.deepEqual(all, ['$edgeAgent', '$edgeHub', 'filter'], 'the raw listing has the system modules too');

    // L2's scope cache learns the module from the change feed (nothing has asked L2 for it).
    await eventually(
      'filter in L2 scope cache',
      () => cachedAtL2('filter')?.authentication?.symmetricKey?.primaryKey === keys.primaryKey,
      10_000,
    );

    // Update: a new primary key, the generation kept; the hub and L2's cache follow.
    const rotated = newKey();
    const updated = await ids.update('filter', { primaryKey: rotated, secondaryKey: keys.secondaryKey });
    assert.equal(updated.generationId, keys.generationId);
    assert.equal(updated.authentication.symmetricKey?.primaryKey, rotated);
    const after1 = await sdk.must(sdk.call('owner', 'getModule', L2, 'filter'));
    assert.equal(after1.body.authentication.symmetricKey.primaryKey, rotated);
    assert.equal((await ids.ensure('filter')).primaryKey, rotated);
    await eventually(
      'the new key in L2 scope cache',
      () => cachedAtL2('filter')?.authentication?.symmetricKey?.primaryKey === rotated,
      10_000,
    );

    // The official ModuleClient with the module's key, through L2: its output event reaches the hub.
    const cs = `HostName=${hub.hostname};DeviceId=${L2};ModuleId=filter;SharedAccessKey=${rotated};GatewayHostName=${out.layers[1]!.address}`;
    const client = ModuleClient.fromConnectionString(cs, Mqtt);
    await client.setOptions({ ca: hub.caPem });
    await client.open();
    try {
      const msg = new Message('filtered through two layers');
      await client.sendOutputEvent('output1', msg);
    } finally {
      await client.close();
    }
    const events = await waitForEvents(svc, { device: L2, from: '0' }, 1, 20_000);
    const ev = events.find((e) => e.moduleId === 'filter');
    assert.ok(ev, `an event of module filter at the hub: ${JSON.stringify(events)}`);
    assert.equal(ev.annotations['iothub-connection-module-id'], 'filter');
    assert.equal(Buffer.from(ev.body, 'base64').toString(), 'filtered through two layers');

    // Delete: gone at the hub and from L2's cache; deleting again is fine.
    await ids.remove('filter');
    const gone = await sdk.call('owner', 'getModule', L2, 'filter');
    assert.equal(gone.ok, false);
    if (!gone.ok) assert.equal(gone.error.statusCode, 404);
    await ids.remove('filter');
    assert.deepEqual(await ids.list(), []);
    await eventually('filter gone from L2 scope cache', () => cachedAtL2('filter') === undefined, 10_000);
  });

  test('the top layer asks the hub itself', async () => {
    const l1 = out.layers[0]!;
    const top = new ParentModuleIdentities({
      parent: { host: hub.address, port: hub.httpsPort, ca: l1.rootPem },
      hubHostName: hub.hostname,
      edge: { deviceId: L1, key: l1.gatewayKey },
    });
    const keys = await top.ensure('local');
    assert.equal((await svc.getModule(L1, 'local')).authentication?.symmetricKey?.primaryKey, keys.primaryKey);
    assert.deepEqual(await top.list(), ['local']);
    await top.remove('local');
    assert.deepEqual(await top.list(), []);
  });

  test('on behalf of an edge device below L2, through L2 and L1, until it is disabled', async () => {
    const l2 = (await svc.getDevice(L2)).deviceScope!;
    const l2b = await svc.createDevice({ deviceId: L2B, capabilities: { iotEdge: true }, parentScopes: [l2] });
    const forL2b = new ParentModuleIdentities(l2Opts, { targetDeviceId: L2B });
    const keys = await eventually(
      'a module of L2B created by L2',
      async () => {
        try {
          return await forL2b.ensure('sensor');
        } catch (err) {
          // L1 may not have heard of L2B for a moment: it asks the hub first, so this passes at once.
          if (err instanceof ModuleIdentityError && err.status === 403) return undefined;
          throw err;
        }
      },
      10_000,
    );
    assert.equal((await svc.getModule(L2B, 'sensor')).generationId, keys.generationId);

    await svc.updateDevice({ ...l2b, status: 'disabled' });
    const e = await eventually(
      'the refusal for a disabled L2B',
      async () => {
        const r = await refusal(forL2b.ensure('other'));
        return r.code === 'DeviceDisabled' ? r : undefined;
      },
      10_000,
    );
    assert.equal(e.kind, 'refused');
    assert.equal(e.status, 403);
    assert.match(e.message, /edge device smod-l2b is disabled/);
  });

  test('refusals: out of scope, not an edge device, system modules, a bad module id; each names why', async () => {
    // L1 is L2's parent, so not in L2's scope; another hierarchy's edge device is not known to L1 at all.
    const up = await refusal(new ParentModuleIdentities(l2Opts, { targetDeviceId: L1 }).ensure('x'));
    assert.equal(up.status, 403);
    assert.equal(up.code, 'DeviceNotInScope');
    assert.match(up.message, /smod-l1 is not in the scope of edge device smod-l2/);
    assert.match(up.message, /only the modules of this edge device, or of edge devices below it/, 'it says what to do');
    await svc.createDevice({ deviceId: 'smod-elsewhere', capabilities: { iotEdge: true } });
    const away = await refusal(new ParentModuleIdentities(l2Opts, { targetDeviceId: 'smod-elsewhere' }).list());
    assert.equal(away.code, 'DeviceNotInScope');
    assert.match(away.message, /smod-elsewhere is not in the scope of edge device smod-l2/);

    // A leaf in L2's scope has no modules managed on its behalf.
    await out.layers[1]!.createLeaf('smod-leaf');
    const leaf = await eventually(
      'the refusal for a leaf',
      async () => {
        const r = await refusal(new ParentModuleIdentities(l2Opts, { targetDeviceId: 'smod-leaf' }).ensure('x'));
        return r.code === 'DeviceNotEdge' ? r : undefined;
      },
      10_000,
    );
    assert.equal(leaf.status, 400);
    assert.match(leaf.message, /smod-leaf is not an IoT Edge device/);

    // The client refuses system modules and bad ids itself; the server does too, whatever sends them.
    assert.match((await refusal(ids.ensure('$edgeAgent'))).message, /\$edgeAgent is a system module/);
    assert.match((await refusal(ids.remove('$edgeHub'))).message, /\$edgeHub is a system module/);
    assert.match((await refusal(ids.ensure('bad/id'))).message, /module id "bad\/id" contains the character "\/"/);
    const raw = new ScopeParentClient(l2Opts);
    out.cleanups.push(() => raw.close());
    // Built on a client that already exists (as a gateway passes its scope sync's).
    assert.ok(Array.isArray(await new ParentModuleIdentities(raw).list()));
    const paths = scopePaths(L2);
    const serverSays = async (method: 'PUT' | 'POST', path: string, body: unknown) => {
      try {
        await raw.request(method, path, body, { what: 'a test request' });
      } catch (err) {
        assert.ok(err instanceof ScopeSyncError);
        return err;
      }
      assert.fail('the server accepted it');
    };
    const sys = await serverSays('PUT', paths.putModule, {
      authChain: L2,
      module: { deviceId: L2, moduleId: '$edgeAgent' },
    });
    assert.equal(sys.status, 400);
    assert.match(sys.message, /module\.moduleId: \$edgeAgent is a system module of the edge runtime of smod-l2/);
    const del = await serverSays('POST', paths.deleteModule, { authChain: L2, moduleId: '$edgeHub' });
    assert.equal(del.status, 400);
    assert.match(del.message, /moduleId: \$edgeHub is a system module/);
    const bad = await serverSays('PUT', paths.putModule, {
      authChain: L2,
      module: { deviceId: L2, moduleId: 'no spaces' },
    });
    assert.equal(bad.status, 400);
    assert.match(bad.message, /module\.moduleId: module id "no spaces" contains the character " "/);
    const other = await serverSays('PUT', paths.putModule, { authChain: L2, module: { deviceId: L1, moduleId: 'x' } });
    assert.equal(other.status, 400);
    assert.match(
      other.message,
      /module\.deviceId \(smod-l1\) does not match the target edge device of the auth chain \(smod-l2\)/,
    );
    assert.equal(
      (await svc.listModules(L2)).some((m) => m.moduleId === 'x' || m.moduleId === 'no spaces'),
      false,
    );

    // Each refusal is logged where it is decided (L1 checks the chain first).
    assert.match(out.gws[0]!.output(), /module identity request refused/);
  });

  test("L3's modules through L2 and L1: created at the hub, and a ModuleClient sends through all three", async () => {
    const l3 = out.layers[2]!;
    const l3Opts: ScopeParentOptions = {
      parent: { host: out.layers[1]!.address, port: 443, ca: l3.rootPem },
      hubHostName: hub.hostname,
      edge: { deviceId: L3, key: l3.gatewayKey },
    };
    const fromL3 = new ParentModuleIdentities(l3Opts);
    const keys = await fromL3.ensure('deep');
    const got = await sdk.must(sdk.call('owner', 'getModule', L3, 'deep'));
    assert.equal(got.body.managedBy, 'IotEdge');
    assert.equal(got.body.authentication.symmetricKey.primaryKey, keys.primaryKey);
    // L2 may act for L3 as well (L3 is in its scope), but not the other way round.
    assert.deepEqual(await new ParentModuleIdentities(l2Opts, { targetDeviceId: L3 }).list(), ['deep']);
    const upward = await refusal(new ParentModuleIdentities(l3Opts, { targetDeviceId: L2 }).list());
    assert.equal(upward.code, 'DeviceNotInScope');

    const cs = `HostName=${hub.hostname};DeviceId=${L3};ModuleId=deep;SharedAccessKey=${keys.primaryKey};GatewayHostName=${l3.address}`;
    const client = ModuleClient.fromConnectionString(cs, Mqtt);
    await client.setOptions({ ca: hub.caPem });
    await client.open();
    try {
      await client.sendOutputEvent('output1', new Message('from the bottom layer'));
    } finally {
      await client.close();
    }
    const events = await waitForEvents(svc, { device: L3, from: '0' }, 1, 20_000);
    assert.equal(events[0]!.annotations['iothub-connection-module-id'], 'deep');
    assert.equal(Buffer.from(events[0]!.body, 'base64').toString(), 'from the bottom layer');
    await fromL3.remove('deep');
    assert.deepEqual(await fromL3.list(), []);
  });

  test('a parent that cannot be reached is named as such', async () => {
    const nowhere = new ParentModuleIdentities({
      ...l2Opts,
      parent: { ...l2Opts.parent, port: 1 },
      requestTimeoutMs: 3000,
    });
    const e = await refusal(nowhere.ensure('filter'));
    assert.equal(e.kind, 'unreachable');
    assert.match(e.message, /cannot reach the parent .*ECONNREFUSED/);
  });

  // Last: the hub goes away for good.
  test('with the hub gone, L1 answers that it could not relay, and the client calls it unreachable', async () => {
    await hub.stop();
    const e = await refusal(ids.ensure('late'));
    assert.equal(e.kind, 'unreachable');
    assert.equal(e.status, 502);
    assert.equal(e.code, 'ParentUnreachable');
    assert.match(e.message, /gateway smod-l1 could not relay reading module late of smod-l2: cannot reach the parent/);
    // A target L1 does not know cannot be looked up either: unreachable, not "not in scope".
    const unknown = await refusal(new ParentModuleIdentities(l2Opts, { targetDeviceId: 'smod-new' }).list());
    assert.equal(unknown.kind, 'unreachable');
    assert.match(unknown.message, /device smod-new is not known here, and cannot reach the parent/);
  });
});
