/**
 * Store and forward through a gateway (`strata edge start` child process) with an official SDK
 * leaf: the hub goes away while the leaf sends 5,000 acknowledged messages, comes back, and
 * every one arrives in order (the leaf's twin read meanwhile is answered from the gateway's
 * cache); a message whose route gives it a 1-second time to live is
 * dropped and counted instead; the gateway is killed with SIGKILL mid-stream and restarted,
 * and no acknowledged message is lost.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { EventJson, EventPageJson } from '../../src/hub/service-messaging.ts';
import { metricValue, setupEdge, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { eventually } from '../helpers/sdk-leaf.ts';

const require = createRequire(import.meta.url);
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { NoRetry } = require('azure-iot-common');

const ROUTES = {
  // Everything goes upstream, except messages marked ttl=short, which get a route of their own with a 1 s time to live.
  upstream: 'FROM /messages/* WHERE NOT IS_DEFINED(ttl) INTO $upstream',
  short: { route: "FROM /messages/* WHERE ttl = 'short' INTO $upstream", priority: 0, timeToLiveSecs: 1 },
};

let hubDir: string;
let hubAddress: string;
let hub: HubProcess | undefined;
let edge: EdgeSetup;
let gw: GatewayProcess | undefined;

before(async () => {
  hubDir = await mkdtemp(join(tmpdir(), 'strata-hub-outage-'));
  hubAddress = randomLoopback();
  hub = await startHubProcess({ dataDir: hubDir, address: hubAddress });
  const address = randomLoopback();
  edge = await setupEdge(hub, { gatewayId: 'gw-outage', address, routes: ROUTES });
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address });
});
after(async () => {
  await gw?.stop();
  await hub?.stop();
  await edge?.cleanup();
  await rm(hubDir, { recursive: true, force: true });
});

/** Every event of a device at the hub so far (REST GET /events, paged). */
async function eventsOf(deviceId: string): Promise<EventJson[]> {
  const out: EventJson[] = [];
  let from = 0;
  for (;;) {
    const page = (
      await edge.svc.request<EventPageJson>(
        'GET',
        `/events?device=${encodeURIComponent(deviceId)}&from=${from}&limit=1000`,
      )
    ).body;
    out.push(...page.events);
    if (page.events.length === 0 || page.nextSequenceNumber === from) return out;
    from = page.nextSequenceNumber;
  }
}

const indexOf = (e: EventJson): number => JSON.parse(Buffer.from(e.body, 'base64').toString()).i as number;

async function openLeaf(connectionString: string): Promise<any> {
  const client = Client.fromConnectionString(connectionString, Mqtt);
  await client.setOptions({ ca: edge.rootPem });
  client.setRetryPolicy(new NoRetry());
  await client.open();
  return client;
}

function message(i: number, props: Record<string, string> = {}): any {
  const m = new Message(JSON.stringify({ i }));
  m.contentType = 'application/json';
  m.contentEncoding = 'utf-8';
  for (const [k, v] of Object.entries(props)) m.properties.add(k, v);
  return m;
}

describe('store and forward at the gateway', () => {
  test('hub down: 5,000 acknowledged messages are kept and all arrive in order when it is back; a message past its TTL is dropped and counted', async (t) => {
    const leaf = await edge.createLeaf('outage-leaf');
    await edge.svc.updateTwin(leaf.deviceId, { properties: { desired: { interval: 42 } } });
    const client = await openLeaf(leaf.connectionString);
    t.after(() => client.close().catch(() => undefined));
    assert.equal((await client.getTwin()).properties.desired.interval, 42);
    await client.sendEvent(message(-1));
    await eventually('the first message at the hub', async () => (await eventsOf(leaf.deviceId)).length === 1);

    await hub!.stop();
    hub = undefined;
    await eventually(
      'the gateway to see its upstream down',
      async () => metricValue(await gw!.metrics(), 'edgehub_upstream_connected') === 0,
    );

    // The twin is answered from the gateway's cache while the hub is away.
    assert.equal((await client.getTwin()).properties.desired.interval, 42);

    const shortSentAt = Date.now();
    await client.sendEvent(message(-2, { ttl: 'short' }));
    const N = 5000;
    for (let i = 0; i < N; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, N - i) }, (_, k) => client.sendEvent(message(i + k))));
    }
    const m1 = await gw!.metrics();
    assert.ok(
      (metricValue(m1, 'edgehub_queue_length', { endpoint: '$upstream' }) ?? 0) >= N,
      'all 5,000 are queued at the gateway',
    );
    // Past the short message's time to live before the hub returns.
    const wait = shortSentAt + 1200 - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));

    hub = await startHubProcess({ dataDir: hubDir, address: hubAddress });
    const events = await eventually(
      '5,001 messages at the hub',
      async () => {
        const e = await eventsOf(leaf.deviceId);
        return e.length >= N + 1 ? e : undefined;
      },
      40_000,
    );
    const indices = events.map(indexOf);
    assert.equal(indices[0], -1);
    const after = indices.slice(1);
    assert.equal(after.length, N, 'nothing lost, nothing duplicated');
    assert.deepEqual(
      after,
      Array.from({ length: N }, (_, i) => i),
      'in the order sent',
    );
    assert.ok(!indices.includes(-2), 'the message past its TTL was not delivered');
    const m2 = await gw!.metrics();
    assert.equal(metricValue(m2, 'edgehub_messages_expired_total', { endpoint: '$upstream' }), 1, 'and it was counted');
    assert.equal(metricValue(m2, 'edgehub_queue_length', { endpoint: '$upstream' }), 0);
  });

  test('kill -9 of the gateway mid-stream: after a restart no acknowledged message is lost', async (t) => {
    const leaf = await edge.createLeaf('kill-leaf');
    const client = await openLeaf(leaf.connectionString);
    t.after(() => client.close().catch(() => undefined));
    const acked = new Set<number>();
    let stop = false;
    let next = 0;
    const sender = (async () => {
      while (!stop) {
        const batch = Array.from({ length: 50 }, () => next++);
        const results = await Promise.allSettled(
          batch.map((i) => client.sendEvent(message(i)).then(() => acked.add(i))),
        );
        if (results.some((r) => r.status === 'rejected')) return;
      }
    })();
    await eventually('a stream under way', () => acked.size >= 1000);
    await gw!.kill9();
    gw = undefined;
    stop = true;
    await sender;
    assert.ok(acked.size >= 1000);

    gw = await startGatewayProcess({ configPath: edge.configPath, dataDir: edge.dataDir, address: edge.address });
    const received = await eventually(
      'every acknowledged message at the hub',
      async () => {
        const got = new Set((await eventsOf(leaf.deviceId)).map(indexOf));
        return [...acked].every((i) => got.has(i)) ? got : undefined;
      },
      30_000,
    );
    assert.ok(received.size >= acked.size);
  });
});
