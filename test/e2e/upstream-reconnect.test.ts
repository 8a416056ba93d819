import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { newKey, serviceClient, waitForEvents } from '../fixtures/service-messaging-helpers.ts';
import type { AuthResult } from '../../src/model/identity.ts';
import { MessageStore } from '../../src/store/message-store.ts';
import { EndpointPump } from '../../src/routing/pump.ts';
import { AmqpParentLink } from '../../src/upstream/index.ts';
import { storedMessageOf } from '../../src/store/sender-message.ts';

/**
 * The upstream link through a hub outage: it notices, keeps retrying on its own, comes back
 * ('up') as soon as the hub accepts connections again, the drain of the gateway's store resumes
 * within a second of that, everything queued during the outage arrives in order, and the
 * identities' subscriptions (direct methods here) are attached again without being asked.
 */

const cleanup: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
});

const auth = (deviceId: string): AuthResult => ({
  identity: { deviceId },
  kind: 'sas',
  authMethod: '{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}',
});

async function until(what: string, check: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('stop and restart the hub: the link reconnects by itself and the drain resumes within a second', async () => {
  const address = randomLoopback();
  const dataDir = await mkdtemp(join(tmpdir(), 'strata-upstream-hub-'));
  const storeDir = await mkdtemp(join(tmpdir(), 'strata-upstream-store-'));
  cleanup.push(
    () => rm(dataDir, { recursive: true, force: true }),
    () => rm(storeDir, { recursive: true, force: true }),
  );
  let hub: HubProcess = await startHubProcess({ address, dataDir });
  cleanup.push(() => hub.stop());

  let svc = serviceClient(hub);
  const edgeKey = newKey();
  const edge = await svc.createDevice({
    deviceId: 'gw',
    capabilities: { iotEdge: true },
    authentication: { type: 'sas', symmetricKey: { primaryKey: edgeKey, secondaryKey: newKey() } },
  } as never);
  for (const id of ['s1', 's2']) {
    await svc.createDevice({
      deviceId: id,
      deviceScope: edge.deviceScope,
      authentication: { type: 'sas', symmetricKey: { primaryKey: newKey(), secondaryKey: newKey() } },
    } as never);
  }

  const link = new AmqpParentLink({
    parentHost: hub.hostname,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'gw',
    edgeKey,
  });
  cleanup.push(() => link.close());
  const events: Array<{ at: number; kind: 'up' | 'down' }> = [];
  link.on('up', () => events.push({ at: Date.now(), kind: 'up' }));
  link.on('down', () => events.push({ at: Date.now(), kind: 'down' }));
  await link.start();
  assert.equal(link.connected, true);

  const s1 = link.openIdentity({ deviceId: 's1', authChain: 's1;gw' });
  s1.onMethod((req) => s1.methodResponse(req.requestId, 200, Buffer.from(JSON.stringify({ pong: req.methodName }))));
  await s1.ready();

  const store = MessageStore.open({ path: join(storeDir, 'store.db') });
  cleanup.push(async () => store.close());
  const pump = new EndpointPump(store, link.telemetryEndpoint());
  cleanup.push(() => pump.stop());
  pump.start();
  const target = [{ endpoint: '$upstream', priority: 0, ttlSecs: 0 }];
  let n = 0;
  const enqueue = async (count: number) => {
    const appends: Array<Promise<void>> = [];
    for (let i = 0; i < count; i++, n++) {
      const sender = n % 2 === 0 ? 's1' : 's2';
      appends.push(
        store.append({
          message: storedMessageOf(auth(sender), { body: Buffer.from(`${sender}:${n}`), properties: { n: String(n) } }),
          targets: target,
        }),
      );
    }
    await Promise.all(appends);
  };

  await enqueue(40);
  await until('the first messages to be delivered', () => pump.metrics().sent === 40, 10_000);

  // Outage: the hub goes away; the gateway keeps storing.
  await hub.stop();
  svc.close();
  await until("the 'down' event", () => events.some((e) => e.kind === 'down'), 5000);
  assert.equal(link.connected, false);
  await enqueue(200);
  // Long enough for the backoff to have grown past a second.
  await new Promise((r) => setTimeout(r, 3500));
  assert.equal(pump.metrics().sent, 40, 'nothing is delivered while the hub is down');
  assert.equal(store.queueLength('$upstream'), 200);

  hub = await startHubProcess({ address, dataDir });
  const ready = Date.now();
  svc = serviceClient(hub);
  cleanup.push(async () => svc.close());
  await until("'up' after the restart", () => events.at(-1)?.kind === 'up', 5000);
  const upAfter = events.at(-1)!.at - ready;
  await until('the drain to resume', () => pump.metrics().sent > 40, 5000);
  const resumedAfter = Date.now() - ready;
  assert.ok(upAfter < 1000, `'up' fired ${upAfter} ms after the hub accepted connections again`);
  assert.ok(resumedAfter < 1000, `the drain resumed ${resumedAfter} ms after the hub accepted connections again`);

  await until('the backlog to drain', () => store.queueLength('$upstream') === 0, 10_000);
  const s1Events = await waitForEvents(svc, { device: 's1' }, 120);
  const s2Events = await waitForEvents(svc, { device: 's2' }, 120);
  const numbers = (evs: typeof s1Events) => evs.map((e) => Number(e.properties.n));
  const expected = (odd: number) => Array.from({ length: 240 }, (_, i) => i).filter((i) => i % 2 === odd);
  assert.deepEqual(numbers(s1Events), expected(0), 's1: everything, in order, once');
  assert.deepEqual(numbers(s2Events), expected(1), 's2: everything, in order, once');
  for (const e of s1Events) assert.equal(e.annotations['iothub-connection-device-id'], 's1');

  // The method link was attached again on its own: the hub can call s1.
  await s1.ready();
  const r = await svc.request<{ status: number; payload: unknown }>('POST', '/twins/s1/methods', {
    body: { methodName: 'ping', responseTimeoutInSeconds: 10 },
  });
  assert.deepEqual(r.body, { status: 200, payload: { pong: 'ping' } });
});
