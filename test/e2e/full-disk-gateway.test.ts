import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readGatewayState } from '../../src/edge/local.ts';
import type { EventPageJson } from '../../src/hub/service-messaging.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import { setupEdge, startGatewayProcess, type EdgeSetup, type GatewayProcess } from '../helpers/edge.ts';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { connectMqttLeaf } from '../helpers/mqtt-leaf.ts';
import { openSender, putToken, rheaConnect, sendAndSettle } from '../fixtures/amqp-helpers.ts';

/**
 * A gateway whose data directory is a small tmpfs, its hub away: leaf traffic fills the message
 * store's disk; the gateway refuses new telemetry (MQTT: close with a logged reason, then
 * CONNACK 3; AMQP: rejected, amqp:resource-limit-exceeded), /health and `strata edge check` say
 * "store full"; a restart on the full disk does not crash; once the hub is back and space is
 * freed, every acknowledged message reaches the hub and new ones are taken.
 */

/** Mounting the small tmpfs needs root (CI runs as root). */
const NOT_ROOT = process.getuid?.() !== 0 && 'mounting a tmpfs needs root';
const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const LEAF = 'gw-disk-leaf';
const PAD = 'x'.repeat(1000);

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: 'pipe' });
}

function gatewayHealth(gw: GatewayProcess, ca: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const state = readGatewayState(gw.dataDir)!;
  return new Promise((resolve, reject) => {
    https
      .get(
        {
          host: state.bind,
          port: state.ports.https,
          path: '/health',
          ca,
          servername: undefined,
          checkServerIdentity: () => undefined,
        },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }),
          );
        },
      )
      .on('error', reject);
  });
}

/** Publishes numbered QoS 1 messages to the gateway until it stops acknowledging. */
async function fill(
  gw: GatewayProcess,
  hubHostName: string,
  ca: string,
  key: string,
  from: number,
  acked: Set<number>,
): Promise<boolean> {
  // No keep-alive: mqtt.js re-arms its ping timer for publishes made as the server closes.
  const leaf = await connectMqttLeaf({ address: gw.address, ca, hubHostName, deviceId: LEAF, key, keepalive: 0 });
  let closed = false;
  leaf.client.on('close', () => (closed = true));
  const inFlight = new Set<Promise<void>>();
  const deadline = Date.now() + 120_000;
  for (let n = from; !closed && Date.now() < deadline; n++) {
    const i = n;
    const p = leaf.publish(Buffer.from(JSON.stringify({ n: i, pad: PAD }))).then(
      () => void acked.add(i),
      () => undefined,
    );
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
    if (inFlight.size >= 32) await Promise.race([...inFlight, new Promise((r) => setTimeout(r, 2000))]);
  }
  await Promise.race([Promise.all([...inFlight]), new Promise((r) => setTimeout(r, 3000))]);
  await leaf.end();
  return closed;
}

async function fillUntilFull(
  gw: GatewayProcess,
  hub: { hostname: string },
  ca: string,
  key: string,
  from: number,
  acked: Set<number>,
): Promise<void> {
  if ((await gatewayHealth(gw, ca)).body.status === 'ok')
    assert.ok(
      await fill(gw, hub.hostname, ca, key, from, acked),
      'the gateway closed the connection once its store was full',
    );
  const h = await gatewayHealth(gw, ca);
  assert.equal(h.status, 503);
  assert.equal(h.body.status, 'store full');
}

async function eventsAtHub(edge: EdgeSetup): Promise<Set<number>> {
  const seen = new Set<number>();
  let from = 0;
  for (;;) {
    const page = (await edge.svc.request<EventPageJson>('GET', `/events?device=${LEAF}&from=${from}&limit=1000`)).body;
    for (const e of page.events) seen.add((JSON.parse(Buffer.from(e.body, 'base64').toString()) as { n: number }).n);
    if (page.events.length === 0) return seen;
    from = page.nextSequenceNumber;
  }
}

test("full disk at a gateway: refused with each protocol's error, restart without a crash, every acknowledged message delivered upstream after space is freed", {
  skip: NOT_ROOT,
}, async (t) => {
  const hubDir = await mkdtemp(join(tmpdir(), 'strata-hub-gwdisk-'));
  const hubAddress = randomLoopback();
  let hub: HubProcess | undefined = await startHubProcess({ dataDir: hubDir, address: hubAddress });
  const address = randomLoopback();
  const edge = await setupEdge(hub, { gatewayId: 'gw-disk', address, strata: 'disk_reserve_mb = 1' });
  const mnt = await mkdtemp(join(tmpdir(), 'strata-gw-full-disk-'));
  sh('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
  const dataDir = join(mnt, 'data');
  let gw: GatewayProcess | undefined;
  t.after(async () => {
    await gw?.stop();
    await hub?.stop();
    await edge.cleanup();
    try {
      sh('umount', [mnt]);
    } catch {
      sh('umount', ['-l', mnt]);
    }
    await rm(mnt, { recursive: true, force: true });
    await rm(hubDir, { recursive: true, force: true });
  });
  const { key } = await edge.createLeaf(LEAF);
  const hubHost = hub.hostname;
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir, address });
  const ca = edge.rootPem;
  // The hub goes away: what the leaf sends stays in the gateway's store.
  await hub.stop();
  hub = undefined;
  const acked = new Set<number>();

  // ---- fill the disk ----
  await fillUntilFull(gw, { hostname: hubHost }, ca, key, 0, acked);
  assert.ok(acked.size > 1000, `a few thousand messages fit first (${acked.size} acknowledged)`);
  assert.match(
    gw.output(),
    /closing connection: telemetry not stored, the gateway's message store is full \(store full: the disk holding/,
  );
  // MQTT: "server unavailable" while full.
  await assert.rejects(
    connectMqttLeaf({ address, ca, hubHostName: hubHost, deviceId: LEAF, key }),
    (err: Error & { code?: number }) => err.code === 3,
  );
  // AMQP: rejected with resource-limit-exceeded.
  const asGateway = { address, caPem: ca, hostname: hubHost } as HubProcess;
  const conn = await rheaConnect(asGateway);
  const audience = `${asGateway.hostname}/devices/${LEAF}`;
  assert.equal(
    (await putToken(conn, createSasToken(audience, key, Math.floor(Date.now() / 1000) + 600), audience)).status,
    200,
  );
  const sender = await openSender(conn, `/devices/${LEAF}/messages/events`);
  const outcome = await sendAndSettle(sender, { body: JSON.stringify({ n: -1, pad: PAD }) });
  conn.close();
  assert.equal(outcome.outcome, 'rejected');
  assert.equal(outcome.condition, 'amqp:resource-limit-exceeded');
  assert.match(outcome.description ?? '', /store full/);
  // strata edge check.
  const check = spawnSync(
    process.execPath,
    [STRATA, 'edge', 'check', '--config', edge.configPath, '--data', dataDir, '--json'],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.match(check.stdout + check.stderr, /store full: the disk holding/);

  // ---- restart on the full disk ----
  await gw.stop();
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir, address });
  await fillUntilFull(gw, { hostname: hubHost }, ca, key, 500_000, acked);

  // ---- no byte left: a clear message, no crash, no temporary file ----
  await gw.stop();
  gw = undefined;
  const filler = join(mnt, 'filler');
  try {
    writeFileSync(filler, Buffer.alloc(16 * 1024 * 1024));
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
  }
  const failed = await startGatewayProcess({ configPath: edge.configPath, dataDir, address }).then(
    (g) => {
      gw = g;
      return '';
    },
    (err: Error) => err.message,
  );
  assert.match(failed, /cannot start the gateway: the disk holding .* is full/);
  assert.doesNotMatch(failed, /\n\s+at /, 'no stack trace');
  assert.deepEqual(
    readdirSync(dataDir).filter((f) => f.endsWith('.tmp')),
    [],
    'no temporary file left',
  );
  await rm(filler, { force: true });

  // ---- the hub is back: the store drains, and takes messages again ----
  gw = await startGatewayProcess({ configPath: edge.configPath, dataDir, address });
  hub = await startHubProcess({ dataDir: hubDir, address: hubAddress });
  const deadline = Date.now() + 120_000;
  let seen = new Set<number>();
  for (;;) {
    seen = await eventsAtHub(edge);
    if ([...acked].every((n) => seen.has(n))) break;
    assert.ok(
      Date.now() < deadline,
      `every acknowledged message reaches the hub (${[...acked].filter((n) => !seen.has(n)).length} of ${acked.size} missing)`,
    );
    await new Promise((r) => setTimeout(r, 500));
  }
  // Delivered is not yet deleted: the store takes messages again once its checkpoints committed.
  for (;;) {
    const h = await gatewayHealth(gw, ca);
    if (h.body.status === 'ok' && h.body.queued === 0) break;
    assert.ok(
      Date.now() < deadline,
      `health says ok once the store drained: ${JSON.stringify(h.body)}\n${gw.output().slice(-5000)}`,
    );
    await new Promise((r) => setTimeout(r, 200));
  }
  const leaf = await connectMqttLeaf({ address, ca, hubHostName: hubHost, deviceId: LEAF, key, keepalive: 0 });
  for (let i = 0; i < 100; i++) {
    // mqtt.js never answers a publish the server closed on: the close is the answer then.
    await Promise.race([
      leaf.publish(Buffer.from(JSON.stringify({ n: 1_000_000 + i, pad: PAD }))),
      new Promise((_, rej) =>
        leaf.client.once('close', () => rej(new Error(`closed before PUBACK of ${i}:\n${gw!.output().slice(-4000)}`))),
      ),
    ]);
    acked.add(1_000_000 + i);
  }
  await leaf.end();
  for (;;) {
    seen = await eventsAtHub(edge);
    if ([...acked].every((n) => seen.has(n))) break;
    assert.ok(Date.now() < deadline + 60_000, 'new messages reach the hub after recovery');
    await new Promise((r) => setTimeout(r, 500));
  }
});
