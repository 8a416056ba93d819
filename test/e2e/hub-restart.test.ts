import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomLoopback, startHubProcess, startServiceSdk, type HubProcess, type ServiceSdk } from '../helpers/hub.ts';

// Devices, keys, scopes and twins survive a clean restart and a kill -9 of `strata hub start`.

test('restart and kill -9 keep devices, keys, scopes, twins, policies and the CA', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'strata-hub-restart-'));
  const address = randomLoopback();
  let hub: HubProcess | undefined;
  let sdk: ServiceSdk | undefined;
  t.after(async () => {
    await sdk?.close();
    await hub?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  const boot = async () => {
    await sdk?.close();
    hub = await startHubProcess({ address, dataDir });
    sdk = await startServiceSdk(hub.caPath);
    await sdk.open('owner', { connectionString: hub.connectionString });
    return { hub, sdk };
  };
  const snapshot = async (s: ServiceSdk, ids: string[]) => {
    const out: Record<string, { device: unknown; twin: unknown }> = {};
    for (const id of ids) {
      const device = (await s.must(s.call('owner', 'get', id))).body;
      const twin = (await s.must(s.call('owner', 'getTwin', id))).body;
      out[id] = { device, twin };
    }
    return out;
  };

  // First life: a hierarchy with keys, tags and desired properties.
  let { hub: h, sdk: s } = await boot();
  const first = { connectionString: h.connectionString, caPem: h.caPem };
  const gw = (await s.must(s.call('owner', 'create', { deviceId: 'gw', capabilities: { iotEdge: true } }))).body;
  await s.must(s.call('owner', 'create', { deviceId: 'leaf', deviceScope: gw.deviceScope }));
  await s.must(
    s.call('owner', 'updateTwin', 'leaf', { tags: { line: 4 }, properties: { desired: { period: 10 } } }, '*'),
  );
  await s.must(s.call('owner', 'addModule', { deviceId: 'gw', moduleId: 'filter' }));
  const before = await snapshot(s, ['gw', 'leaf']);

  // Clean restart (SIGTERM).
  await h.stop();
  ({ hub: h, sdk: s } = await boot());
  assert.equal(h.connectionString, first.connectionString, 'policy keys are kept');
  assert.equal(h.caPem, first.caPem, 'the root CA is kept');
  assert.deepEqual(await snapshot(s, ['gw', 'leaf']), before);
  assert.equal((await s.must(s.call('owner', 'getModule', 'gw', 'filter'))).body.moduleId, 'filter');

  // Write, and kill -9 right after the acknowledgement: what was acknowledged is on disk.
  await s.must(s.call('owner', 'create', { deviceId: 'late', deviceScope: gw.deviceScope }));
  await s.must(s.call('owner', 'updateTwin', 'leaf', { properties: { desired: { period: 20 } } }, '*'));
  const acknowledged = await snapshot(s, ['gw', 'leaf', 'late']);
  await h.kill9();
  assert.equal(h.proc.signalCode, 'SIGKILL');

  ({ hub: h, sdk: s } = await boot());
  assert.equal(h.connectionString, first.connectionString);
  const after = await snapshot(s, ['gw', 'leaf', 'late']);
  assert.deepEqual(after, acknowledged);
  const leafTwin = after.leaf!.twin as {
    properties: { desired: { period: number; $version: number } };
    tags: { line: number };
  };
  assert.equal(leafTwin.properties.desired.period, 20);
  assert.equal(leafTwin.tags.line, 4);
  const late = after.late!.device as { deviceScope: string; parentScopes: string[] };
  assert.deepEqual([late.deviceScope, late.parentScopes], [gw.deviceScope, [gw.deviceScope]]);

  // And the hub still takes writes after recovering.
  await s.must(s.call('owner', 'delete', 'late'));
});
