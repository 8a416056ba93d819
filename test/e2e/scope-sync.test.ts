import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import Fastify, { type FastifyInstance } from 'fastify';
import { ScopeCache, type ScopeChangeKind } from '../../src/scope/cache.ts';
import { ScopeSync, ScopeSyncError } from '../../src/scope/sync.ts';
import { scopePaths } from '../../src/scope/contract.ts';
import { scopeApi } from '../../src/scope/plugin.ts';
import { ServiceClient, type DeviceJson } from '../../src/hub/service-client.ts';
import { authenticate } from '../../src/identity/authenticate.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import { createRootCa, createServerCert } from '../../src/pki/index.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';

// The scope a gateway authenticates its downstream devices from, synced from a real
// `strata hub start`: the listing, the live feed (changes within 2 s), refusals, offline use
// from disk, resuming, and a parent gateway serving the same API to its child from its cache.
//
//   A (edge) ── a1 (+ module mod1), a2
//   └─ B (edge) ── b1
//      └─ C (edge) ── c1
//   X (edge, another hierarchy) ── x1       loner (no parent)

const FAST_BACKOFF = { initialMs: 100, maxMs: 800 };

let hub: HubProcess;
let hubDir: string;
let work: string;
let svc: ServiceClient;
const devices = new Map<string, DeviceJson>();
const caches: ScopeCache[] = [];
const syncs: ScopeSync[] = [];
const servers: FastifyInstance[] = [];
let cacheA: ScopeCache;
let syncA: ScopeSync;

const keyOf = (id: string) => devices.get(id)!.authentication!.symmetricKey!.primaryKey!;

async function make(body: DeviceJson): Promise<DeviceJson> {
  const d = await svc.createDevice(body);
  devices.set(d.deviceId, d);
  return d;
}

const leaf = (id: string, parent: string) => make({ deviceId: id, deviceScope: devices.get(parent)!.deviceScope });
const edge = (id: string, parent?: string) =>
  make({
    deviceId: id,
    capabilities: { iotEdge: true },
    ...(parent ? { parentScopes: [devices.get(parent)!.deviceScope!] } : {}),
  });

function openCache(name: string, edgeDeviceId: string): ScopeCache {
  const c = ScopeCache.open(join(work, `${name}.db`), { edgeDeviceId });
  caches.push(c);
  return c;
}

function hubSync(cache: ScopeCache, extra: Partial<ConstructorParameters<typeof ScopeSync>[0]> = {}): ScopeSync {
  const s = new ScopeSync({
    cache,
    parent: { host: hub.hostname, port: hub.httpsPort, ca: hub.caPem },
    hubHostName: hub.hostname,
    edge: { deviceId: cache.edgeDeviceId, key: keyOf(cache.edgeDeviceId) },
    backoff: FAST_BACKOFF,
    ...extra,
  });
  syncs.push(s);
  return s;
}

/** Resolves with the ms from now until the cache reports `kind` for the identity. */
function nextChange(
  cache: ScopeCache,
  deviceId: string,
  moduleId: string | undefined,
  kind: ScopeChangeKind,
  timeoutMs = 5000,
): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cache.off('identity', on);
      reject(
        new Error(
          `no "${kind}" event for ${deviceId}${moduleId ? `/${moduleId}` : ''} in ${cache.edgeDeviceId}'s cache within ${timeoutMs} ms`,
        ),
      );
    }, timeoutMs);
    const on = (d: string, m: string | undefined, k: ScopeChangeKind) => {
      if (d !== deviceId || m !== moduleId || k !== kind) return;
      clearTimeout(timer);
      cache.off('identity', on);
      resolve(performance.now() - t0);
    };
    cache.on('identity', on);
  });
}

function keysOf(cache: ScopeCache): string[] {
  const all = cache.all();
  return [...all.devices.map((d) => d.deviceId), ...all.modules.map((m) => `${m.deviceId}/${m.moduleId}`)].sort();
}

/** A request to the hub's scope API with any token, to see what it refuses and how. */
function rawRequest(
  method: 'GET' | 'POST',
  path: string,
  token: string | undefined,
  body?: unknown,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = https.request(
      {
        method,
        host: hub.address,
        port: hub.httpsPort,
        path,
        ca: hub.caPem,
        headers: {
          ...(token ? { Authorization: token } : {}),
          ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

const edgeHubToken = (deviceId: string, key: string, audienceDevice = deviceId) =>
  createSasToken(
    `${hub.hostname}/devices/${audienceDevice}/modules/%24edgeHub`,
    key,
    Math.floor(Date.now() / 1000) + 600,
  );

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'strata-scope-sync-'));
  hubDir = await mkdtemp(join(tmpdir(), 'strata-scope-hub-'));
  hub = await startHubProcess({ dataDir: hubDir });
  svc = new ServiceClient(hub.connectionString, { ca: hub.caPem });
  await edge('A');
  await leaf('a1', 'A');
  await leaf('a2', 'A');
  await svc.createModule({ deviceId: 'a1', moduleId: 'mod1' });
  await edge('B', 'A');
  await leaf('b1', 'B');
  await edge('C', 'B');
  await leaf('c1', 'C');
  await edge('X');
  await leaf('x1', 'X');
  await make({ deviceId: 'loner' });
});

after(async () => {
  for (const s of syncs) await s.stop().catch(() => {});
  for (const app of servers) await app.close().catch(() => {});
  for (const c of caches) c.close();
  svc?.close();
  await hub?.stop();
  await rm(hubDir, { recursive: true, force: true });
  await rm(work, { recursive: true, force: true });
});

test('the gateway’s cache gets exactly the identities in its scope, with their keys', async () => {
  cacheA = openCache('A', 'A');
  syncA = hubSync(cacheA);
  syncA.start();
  await syncA.ready(10_000);
  await waitUntil(() => syncA.state === 'live', 'the feed to go live');

  const edgeModules = (id: string) => [`${id}/$edgeAgent`, `${id}/$edgeHub`];
  const expected = [
    'A',
    'B',
    'C',
    'a1',
    'a1/mod1',
    'a2',
    'b1',
    'c1',
    ...edgeModules('A'),
    ...edgeModules('B'),
    ...edgeModules('C'),
  ].sort();
  assert.deepEqual(keysOf(cacheA), expected, 'nothing of X, x1 or loner');

  // Keys and everything offline authentication needs come along.
  const a1 = cacheA.getDevice('a1')!;
  assert.equal(a1.authentication.symmetricKey.primaryKey, keyOf('a1'));
  assert.equal(
    a1.authentication.symmetricKey.secondaryKey,
    devices.get('a1')!.authentication!.symmetricKey!.secondaryKey,
  );
  assert.equal(a1.generationId, devices.get('a1')!.generationId);
  assert.equal(a1.status, 'enabled');
  assert.deepEqual(a1.parentScopes, [devices.get('A')!.deviceScope]);
  assert.equal(cacheA.getDevice('B')!.capabilities.iotEdge, true);
  const hubModule = await svc.getModule('B', '$edgeHub');
  assert.equal(
    cacheA.getModule('B', '$edgeHub')!.authentication.symmetricKey.primaryKey,
    hubModule.authentication!.symmetricKey!.primaryKey,
  );
  assert.ok(cacheA.has('a1', 'mod1'));
  assert.ok(!cacheA.has('x1'));

  // Chains end with this gateway, walking parentScopes.
  assert.equal(cacheA.authChainOf('a1'), 'a1;A');
  assert.equal(cacheA.authChainOf('c1'), 'c1;C;B;A');
  assert.equal(cacheA.authChainOf('B', '$edgeHub'), 'B/$edgeHub;B;A');
  assert.equal(cacheA.authChainOf('a1', 'mod1'), 'a1/mod1;a1;A');
  assert.equal(cacheA.authChainOf('x1'), undefined);
  const check = cacheA.check('x1');
  assert.equal(check.ok, false);
  assert.match(!check.ok ? check.message : '', /not in this gateway's scope/);
});

test('children created, disabled and deleted at the hub reach the cache within 2 seconds', async (t) => {
  // Created under the gateway, and two layers further down.
  let seen = nextChange(cacheA, 'a3', undefined, 'created');
  await leaf('a3', 'A');
  const createdMs = await seen;
  assert.ok(createdMs < 2000, `a3 took ${createdMs.toFixed(0)} ms`);
  assert.equal(cacheA.getDevice('a3')!.authentication.symmetricKey.primaryKey, keyOf('a3'));
  assert.equal(cacheA.authChainOf('a3'), 'a3;A');

  seen = nextChange(cacheA, 'c2', undefined, 'created');
  await leaf('c2', 'C');
  const deepMs = await seen;
  assert.ok(deepMs < 2000, `c2 took ${deepMs.toFixed(0)} ms`);
  assert.equal(cacheA.authChainOf('c2'), 'c2;C;B;A');

  // A new edge child brings its runtime modules.
  const hubModule = nextChange(cacheA, 'D', '$edgeHub', 'created');
  await edge('D', 'A');
  assert.ok((await hubModule) < 2000);
  assert.ok(cacheA.has('D', '$edgeAgent'));

  // Disabled: the event says so, the record says so.
  seen = nextChange(cacheA, 'a1', undefined, 'disabled');
  await svc.updateDevice({ ...(await svc.getDevice('a1')), status: 'disabled' });
  const disabledMs = await seen;
  assert.ok(disabledMs < 2000, `disabling a1 took ${disabledMs.toFixed(0)} ms`);
  assert.equal(cacheA.getDevice('a1')!.status, 'disabled');

  // Deleted: the device and its modules go.
  seen = nextChange(cacheA, 'a2', undefined, 'deleted');
  await svc.deleteDevice('a2');
  const deletedMs = await seen;
  assert.ok(deletedMs < 2000, `deleting a2 took ${deletedMs.toFixed(0)} ms`);
  t.diagnostic(
    `created ${createdMs.toFixed(0)} ms, two layers down ${deepMs.toFixed(0)} ms, disabled ${disabledMs.toFixed(0)} ms, deleted ${deletedMs.toFixed(0)} ms`,
  );
  assert.ok(!cacheA.has('a2'));

  seen = nextChange(cacheA, 'a1', 'mod1', 'deleted');
  await svc.deleteModule('a1', 'mod1');
  assert.ok((await seen) < 2000);

  // Disabling an edge device in the middle voids the chains below it; enabling restores them.
  seen = nextChange(cacheA, 'B', undefined, 'disabled');
  await svc.updateDevice({ ...(await svc.getDevice('B')), status: 'disabled' });
  assert.ok((await seen) < 2000);
  assert.equal(cacheA.authChainOf('c1'), undefined);
  const voided = cacheA.check('c1');
  assert.match(!voided.ok ? voided.message : '', /edge device B .* is disabled/);
  seen = nextChange(cacheA, 'B', undefined, 'updated');
  await svc.updateDevice({ ...(await svc.getDevice('B')), status: 'enabled' });
  await seen;
  assert.equal(cacheA.authChainOf('c1'), 'c1;C;B;A');

  // Moving a device out of the scope removes it from the cache.
  seen = nextChange(cacheA, 'a3', undefined, 'deleted');
  await svc.updateDevice({ ...(await svc.getDevice('a3')), deviceScope: devices.get('X')!.deviceScope });
  assert.ok((await seen) < 2000);
  assert.ok(!cacheA.has('a3'));
  assert.ok(syncA.stats.fullSyncs === 1, 'all of it came through the feed');
});

test('wrong credentials and foreign scopes are refused with a clear error', async () => {
  const paths = scopePaths('A');

  // A bad key: the listing (and so the whole sync) is refused, saying why.
  const stray = openCache('A-bad-key', 'A');
  const bad = hubSync(stray, { edge: { deviceId: 'A', key: keyOf('x1') } });
  await assert.rejects(bad.fullSync(), (err: unknown) => {
    assert.ok(err instanceof ScopeSyncError);
    assert.equal(err.status, 401);
    assert.match(err.message, /SAS token signature does not match its keys/);
    assert.match(err.message, /check the edge device id and key/);
    return true;
  });
  assert.deepEqual(keysOf(stray), [], 'nothing was stored');

  // Another edge's $edgeHub: its own token for A's path is for another identity...
  const xToken = edgeHubToken('X', keyOf('X'));
  let r = await rawRequest('POST', paths.list, xToken, { authChain: 'A' });
  assert.equal(r.status, 401);
  assert.match(JSON.parse(r.text).Message, /^ErrorCode:IotHubUnauthorizedAccess;.*audience .* is for another identity/);
  // ...and through its own path it may read only its own scope.
  r = await rawRequest('POST', scopePaths('X').list, xToken, { authChain: 'A' });
  assert.equal(r.status, 403);
  assert.match(
    JSON.parse(r.text).Message,
    /^ErrorCode:DeviceNotInScope;edge device X may only read its own scope, but the auth chain asks for A/,
  );
  r = await rawRequest('POST', scopePaths('X').onBehalfOf, xToken, { authChain: 'b1;X', targetDeviceId: 'b1' });
  assert.equal(r.status, 403);
  assert.match(JSON.parse(r.text).Message, /^ErrorCode:DeviceNotInScope;b1 is not in the scope of edge device X/);
  r = await rawRequest('GET', scopePaths('X').changes.replace('/X/', '/A/'), xToken);
  assert.equal(r.status, 401, 'the feed is guarded the same way');

  // A leaf is not an edge hub; nor is another module of the edge device.
  r = await rawRequest('POST', scopePaths('a3').list, edgeHubToken('x1', keyOf('x1')), { authChain: 'x1' });
  assert.equal(r.status, 401);
  r = await rawRequest('POST', scopePaths('x1').list, edgeHubToken('x1', keyOf('x1')), { authChain: 'x1' });
  assert.equal(r.status, 401);
  assert.match(JSON.parse(r.text).Message, /module x1\/\$edgeHub is not registered/);
  r = await rawRequest(
    'POST',
    '/devices/A/modules/$edgeAgent/devicesAndModulesInTargetDeviceScope',
    edgeHubToken('A', keyOf('A')),
    { authChain: 'A' },
  );
  assert.equal(r.status, 403);
  assert.match(JSON.parse(r.text).Message, /only an edge hub \(A\/\$edgeHub\) may use the scope API/);

  // No credentials at all; a malformed request.
  r = await rawRequest('POST', paths.list, undefined, { authChain: 'A' });
  assert.equal(r.status, 401);
  assert.match(JSON.parse(r.text).Message, /neither a SAS token nor a client certificate/);
  r = await rawRequest('POST', paths.list, edgeHubToken('A', keyOf('A')), { authChain: 'A;;B' });
  assert.equal(r.status, 400);
  assert.match(
    JSON.parse(r.text).Message,
    /^ErrorCode:ArgumentInvalid;authChain: the auth chain "A;;B" has an empty element/,
  );
  r = await rawRequest('POST', paths.list, edgeHubToken('A', keyOf('A')), {
    authChain: 'A',
    continuationLink: 'bogus',
  });
  assert.equal(r.status, 400);

  // The module's own key works as well as the device's.
  const hubModuleKey = (await svc.getModule('A', '$edgeHub')).authentication!.symmetricKey!.primaryKey!;
  r = await rawRequest('POST', paths.list, edgeHubToken('A', hubModuleKey), { authChain: 'A', pageSize: 2 });
  assert.equal(r.status, 200);
  const page = JSON.parse(r.text);
  assert.equal(page.devices.length + page.modules.length, 2);
  assert.equal(typeof page.continuationLink, 'string', 'paged');

  // On behalf of: in scope, out of scope, unknown.
  const found = await syncA.onDemand('b1');
  assert.equal(found.status, 'found');
  assert.equal(found.status === 'found' && found.authChain, 'b1;B;A');
  const foreign = await syncA.onDemand('x1');
  assert.deepEqual(
    [foreign.status, foreign.status !== 'found' && /x1 is not in the scope of edge device A/.test(foreign.message)],
    ['not-in-scope', true],
  );
  const ghost = await syncA.onDemand('ghost');
  assert.deepEqual(
    [ghost.status, ghost.status !== 'found' && /ghost is not registered/.test(ghost.message)],
    ['not-found', true],
  );
  const mod = await syncA.onDemand('C', '$edgeHub');
  assert.equal(mod.status === 'found' && mod.authChain, 'C/$edgeHub;C;B;A');
});

test('a parent gateway serves the same API from its cache: three layers, changes within 2 s, lookups asked further up', async (t) => {
  // TLS for the two gateways that serve children (A serves B, B serves C).
  const root = await createRootCa({ commonName: 'scope test root' });
  async function serve(cache: ScopeCache, sync: () => ScopeSync): Promise<{ host: string; port: number }> {
    const host = randomLoopback();
    const cert = await createServerCert({ hostname: host, issuer: root });
    const app = Fastify({
      https: { cert: cert.certPem, key: cert.keyPem },
      forceCloseConnections: true,
      logger: false,
    });
    servers.push(app);
    await app.register(scopeApi, {
      source: cache.identitySource({
        hostNames: [hub.hostname, host],
        fetchUpstream: (t, c) => sync().fetchUpstream(t, c),
      }),
      keepAliveMs: 1000,
    });
    await app.listen({ host, port: 0 });
    return { host, port: (app.server.address() as { port: number }).port };
  }
  const gatewaySync = (cache: ScopeCache, parent: { host: string; port: number }) => {
    const s = new ScopeSync({
      cache,
      parent: { ...parent, ca: root.certPem },
      hubHostName: hub.hostname,
      edge: { deviceId: cache.edgeDeviceId, key: keyOf(cache.edgeDeviceId) },
      backoff: FAST_BACKOFF,
    });
    syncs.push(s);
    return s;
  };

  // A keeps following the hub; a lookup-only client stands ready for when it has not heard yet.
  const lookupA = hubSync(cacheA);
  const atA = await serve(cacheA, () => lookupA);
  const cacheB = openCache('B', 'B');
  const syncB = gatewaySync(cacheB, atA);
  const atB = await serve(cacheB, () => syncB);
  const cacheC = openCache('C', 'C');
  const syncC = gatewaySync(cacheC, atB);
  syncB.start();
  syncC.start();
  await syncB.ready(10_000);
  await syncC.ready(10_000);
  await waitUntil(() => syncC.state === 'live' && syncB.state === 'live', 'both feeds to go live');

  const mods = (id: string) => [`${id}/$edgeAgent`, `${id}/$edgeHub`];
  assert.deepEqual(keysOf(cacheB), ['B', 'C', 'b1', 'c1', 'c2', ...mods('B'), ...mods('C')].sort());
  assert.deepEqual(keysOf(cacheC), ['C', 'c1', 'c2', ...mods('C')].sort());
  assert.equal(cacheC.authChainOf('c1'), 'c1;C');
  assert.equal(cacheB.authChainOf('c1'), 'c1;C;B');
  assert.equal(cacheC.getDevice('c1')!.authentication.symmetricKey.primaryKey, keyOf('c1'));

  // A device created under the third layer reaches that layer within 2 s: hub -> A -> B -> C.
  let seen = nextChange(cacheC, 'c3', undefined, 'created');
  await leaf('c3', 'C');
  const ms = await seen;
  assert.ok(ms < 2000, `c3 reached the third layer in ${ms.toFixed(0)} ms`);
  t.diagnostic(`hub -> A -> B -> C: ${ms.toFixed(0)} ms`);
  assert.ok(cacheA.has('c3') && cacheB.has('c3'));

  // Deletion travels the same way.
  seen = nextChange(cacheC, 'c1', undefined, 'deleted');
  await svc.deleteDevice('c1');
  assert.ok((await seen) < 2000);

  // The wrong child: B's credentials are good at A, but B cannot read C's scope or act for A's leaves.
  const asB = new ScopeSync({
    cache: openCache('C-as-B', 'C'),
    parent: { ...atA, ca: root.certPem },
    hubHostName: hub.hostname,
    edge: { deviceId: 'C', key: keyOf('B') },
  });
  syncs.push(asB);
  await assert.rejects(asB.fullSync(), (err: unknown) => err instanceof ScopeSyncError && err.status === 401);
  const notB = await syncB.onDemand('a3');
  assert.equal(notB.status, 'not-found', 'a3 left A’s scope earlier');
  const sibling = await syncB.onDemand('b1');
  assert.equal(sibling.status === 'found' && sibling.authChain, 'b1;B');
  const other = await syncC.onDemand('b1');
  assert.equal(other.status, 'not-in-scope', 'C may not act for its parent’s leaf');

  // A device nobody on the way has heard of: A stops following, the device is created, and C
  // asks for it; B and A ask further up in turn, and each layer keeps the answer.
  await syncA.stop();
  await leaf('c4', 'C');
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(!cacheA.has('c4') && !cacheB.has('c4') && !cacheC.has('c4'), 'no layer heard of c4');
  const t0 = performance.now();
  const fetched = await syncC.onDemand('c4');
  const lookupMs = performance.now() - t0;
  assert.equal(fetched.status, 'found');
  assert.equal(fetched.status === 'found' && fetched.authChain, 'c4;C');
  assert.ok(lookupMs < 2000, `the on-demand lookup took ${lookupMs.toFixed(0)} ms`);
  t.diagnostic(`on-demand lookup through three layers: ${lookupMs.toFixed(0)} ms`);
  assert.ok(cacheA.has('c4') && cacheB.has('c4') && cacheC.has('c4'));
  assert.equal(cacheC.getDevice('c4')!.authentication.symmetricKey.primaryKey, keyOf('c4'));

  // Resume A's feed for the tests that follow.
  syncA = hubSync(cacheA);
  syncA.start();
  await waitUntil(() => syncA.state === 'live', 'A’s feed to resume');
  await syncB.stop();
  await syncC.stop();
});

test('the feed resumes from the last applied change: what changed while the gateway was away arrives', async () => {
  await syncA.stop();
  const before = cacheA.position()!;
  await svc.deleteDevice('c2');
  await leaf('a4', 'A');
  await make({ deviceId: 'x2', deviceScope: devices.get('X')!.deviceScope });

  syncA = hubSync(cacheA);
  const created = nextChange(cacheA, 'a4', undefined, 'created');
  const deleted = nextChange(cacheA, 'c2', undefined, 'deleted');
  syncA.start();
  await Promise.all([created, deleted]);
  await waitUntil(() => syncA.state === 'live', 'the feed to go live');
  assert.equal(syncA.stats.fullSyncs, 0, 'resumed from the position, no full listing');
  assert.ok(!cacheA.has('x2'));
  const after = cacheA.position()!;
  assert.equal(after.epoch, before.epoch);
  assert.ok(after.sequence > before.sequence);
});

test('with the hub stopped the cache answers from disk and devices authenticate offline; a restarted hub resumes the feed', async () => {
  const address = hub.address;
  const failures: ScopeSyncError[] = [];
  syncA.on('failure', (e) => failures.push(e));
  await hub.kill9();
  await waitUntil(() => syncA.state === 'backoff' && failures.length > 0, 'the sync to notice the hub is gone');
  assert.match(failures.at(-1)!.message, /cannot reach the parent .* \(ECONNREFUSED\)/);

  // Reopen the cache from disk, as a restarted gateway would.
  await syncA.stop();
  const path = cacheA.path;
  cacheA.close();
  cacheA = openCache('A', 'A');
  assert.equal(cacheA.path, path);
  assert.ok(cacheA.has('a4') && cacheA.has('c4') && !cacheA.has('a2'));
  assert.equal(cacheA.authChainOf('c4'), 'c4;C;B;A');
  assert.throws(() => ScopeCache.open(path, { edgeDeviceId: 'B' }), /belongs to edge device A, not B/);

  const deps = {
    getDevice: (d: string) => cacheA.getDevice(d),
    getModule: (d: string, m: string) => cacheA.getModule(d, m),
    hostNames: [hub.hostname],
    trustedCas: () => [],
  };
  const tokenFor = (id: string) =>
    createSasToken(`${hub.hostname}/devices/${id}`, keyOf(id), Math.floor(Date.now() / 1000) + 600);
  const ok = await authenticate({ deviceId: 'a4', sasToken: tokenFor('a4') }, deps);
  assert.equal(ok.identity.deviceId, 'a4');
  await assert.rejects(authenticate({ deviceId: 'a1', sasToken: tokenFor('a1') }, deps), /device a1 is disabled/);
  await assert.rejects(
    authenticate({ deviceId: 'a4', sasToken: tokenFor('b1').replace(/sig=[^&]+/, 'sig=AAAA') }, deps),
    /does not match|audience/,
  );

  // The gateway starts while the hub is still down: it waits, then resumes when the hub is back.
  syncA = hubSync(cacheA);
  syncA.start();
  await waitUntil(() => syncA.state === 'backoff', 'the sync to wait for the hub');
  hub = await startHubProcess({ dataDir: hubDir, address });
  await waitUntil(() => syncA.state === 'live', 'the feed to resume after the hub restarted', 15_000);
  assert.equal(syncA.stats.fullSyncs, 1, 'a new hub process starts a new feed epoch, so the scope is read once');

  const seen = nextChange(cacheA, 'a5', undefined, 'created');
  await leaf('a5', 'A');
  const ms = await seen;
  assert.ok(ms < 2000, `a5 took ${ms.toFixed(0)} ms after the restart`);
});

async function waitUntil(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
