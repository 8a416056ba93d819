import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomLoopback, startHubProcess, type HubProcess } from '../helpers/hub.ts';
import { connectMqttLeaf } from '../helpers/mqtt-leaf.ts';
import { createSasDevice, deviceToken, rawRequest, serviceClient } from '../fixtures/service-messaging-helpers.ts';
import { openSender, putToken, rheaConnect, sendAndSettle } from '../fixtures/amqp-helpers.ts';
import { startEventHubsClient } from '../fixtures/event-hubs-helpers.ts';
import { eventHubsConnectionString } from '../../src/hub/local.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import type { EventPageJson } from '../../src/hub/service-messaging.ts';

/**
 * A hub whose data directory is a small tmpfs: leaf traffic fills it; the hub refuses new
 * telemetry with each protocol's error (MQTT: close with a logged reason, then CONNACK 3; HTTP:
 * 503 ServerBusy; AMQP: rejected, amqp:resource-limit-exceeded), /health says "store full";
 * a restart on the full disk does not crash; once space is freed every acknowledged message is
 * readable by every reader (REST /events, monitor-events, Event Hubs) and new ones are taken.
 */

/** Mounting the small tmpfs needs root (CI runs as root). */
const NOT_ROOT = process.getuid?.() !== 0 && 'mounting a tmpfs needs root';
const STRATA = fileURLToPath(new URL('../../bin/strata.js', import.meta.url));
const DEVICE = 'disk-filler';
const PAD = 'x'.repeat(1000);

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: 'pipe' });
}

async function health(hub: HubProcess): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await rawRequest(hub, { method: 'GET', path: '/health' });
  return { status: res.status, body: JSON.parse(res.text) as Record<string, unknown> };
}

/** Publishes numbered QoS 1 messages until the hub stops acknowledging; returns the numbers acknowledged. */
async function fillOverMqtt(
  hub: HubProcess,
  key: string,
  from: number,
  acked: Set<number>,
): Promise<{ closed: boolean }> {
  // No keep-alive: mqtt.js re-arms its ping timer for publishes made as the server closes, and
  // that timer would keep this process alive for a minute after the test.
  const leaf = await connectMqttLeaf({
    address: hub.address,
    ca: hub.caPem,
    hubHostName: hub.hostname,
    deviceId: DEVICE,
    key,
    keepalive: 0,
  });
  let closed = false;
  leaf.client.on('close', () => (closed = true));
  let n = from;
  const window = 32;
  const inFlight = new Set<Promise<void>>();
  const deadline = Date.now() + 120_000;
  while (!closed && Date.now() < deadline) {
    const i = n++;
    const p = leaf.publish(Buffer.from(JSON.stringify({ n: i, pad: PAD }))).then(
      () => void acked.add(i),
      () => undefined,
    );
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
    if (inFlight.size >= window) await Promise.race([...inFlight, new Promise((r) => setTimeout(r, 2000))]);
  }
  // Acknowledgements already on their way are counted; the rest never came.
  await Promise.race([Promise.all([...inFlight]), new Promise((r) => setTimeout(r, 3000))]);
  await leaf.end();
  return { closed };
}

/**
 * After a restart: a clean stop empties the write-ahead log into the database, so a little room
 * may be back; fills it, and ends with the store full.
 */
async function fillAgain(hub: HubProcess, key: string, from: number, acked: Set<number>): Promise<void> {
  if ((await health(hub)).body.status === 'ok') {
    const again = await fillOverMqtt(hub, key, from, acked);
    assert.ok(again.closed, 'closed again once the store is full');
  }
  assert.equal((await health(hub)).body.status, 'store full');
}

async function readAllRest(hub: HubProcess): Promise<Set<number>> {
  const svc = serviceClient(hub);
  const seen = new Set<number>();
  try {
    let from = '0';
    for (;;) {
      const page = (
        await svc.request<EventPageJson>(
          'GET',
          `/events?${new URLSearchParams({ from, limit: '1000', device: DEVICE })}`,
        )
      ).body;
      for (const e of page.events) seen.add((JSON.parse(Buffer.from(e.body, 'base64').toString()) as { n: number }).n);
      if (page.events.length === 0) break;
      from = String(page.nextSequenceNumber);
    }
  } finally {
    svc.close();
  }
  return seen;
}

function monitorEvents(
  hub: HubProcess,
  count: number,
): Promise<{ code: number | null; seen: Set<number>; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        STRATA,
        'hub',
        'monitor-events',
        '--device',
        DEVICE,
        '--since',
        '1d',
        '--count',
        String(count),
        '--timeout',
        '120',
        '--hub-connection-string',
        hub.connectionString,
        '--ca',
        hub.caPath,
      ],
      {
        env: {
          ...process.env,
          STRATA_HUB_CONNECTION_STRING: undefined,
          STRATA_CA: undefined,
          STRATA_LOG_LEVEL: 'warn',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const seen = new Set<number>();
      for (const line of stdout.split('\n'))
        if (line.trim()) seen.add((JSON.parse(line) as { event: { payload: { n: number } } }).event.payload.n);
      resolve({ code, seen, stderr });
    });
  });
}

function missing(acked: Set<number>, seen: Set<number>): number[] {
  return [...acked].filter((n) => !seen.has(n));
}

test("full disk at the hub: refused with each protocol's error, restart without a crash, every acknowledged message readable after space is freed", {
  skip: NOT_ROOT,
}, async (t) => {
  const mnt = await mkdtemp(join(tmpdir(), 'strata-full-disk-'));
  sh('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
  const dataDir = join(mnt, 'hub');
  const address = randomLoopback();
  const env = { STRATA_DISK_RESERVE_MB: '1' };
  let hub: HubProcess | undefined;
  t.after(async () => {
    await hub?.stop();
    try {
      sh('umount', [mnt]);
    } catch {
      sh('umount', ['-l', mnt]);
    }
    await rm(mnt, { recursive: true, force: true });
  });

  hub = await startHubProcess({ address, dataDir, env });
  const svc = serviceClient(hub);
  const { key } = await createSasDevice(svc, hub, DEVICE);
  svc.close();
  const acked = new Set<number>();

  // ---- fill the disk over MQTT until the hub stops acknowledging ----
  const first = await fillOverMqtt(hub, key, 0, acked);
  assert.ok(first.closed, 'the hub closed the MQTT connection once it could not store');
  assert.ok(acked.size > 1000, `a few thousand messages fit first (${acked.size} acknowledged)`);
  assert.match(
    hub.output(),
    /closing connection: telemetry not stored, store full: the disk holding .* under the reserve of 1\.0 MiB/,
  );

  // MQTT: a new CONNECT is refused with "server unavailable" while the store is full.
  await assert.rejects(
    connectMqttLeaf({ address: hub.address, ca: hub.caPem, hubHostName: hub.hostname, deviceId: DEVICE, key }),
    (err: Error & { code?: number }) => err.code === 3,
  );
  // HTTP: 503 with IoT Hub's ServerBusy error.
  const post = await rawRequest(hub, {
    method: 'POST',
    path: `/devices/${DEVICE}/messages/events?api-version=2021-04-12`,
    headers: { authorization: deviceToken(hub, key, DEVICE) },
    body: JSON.stringify({ n: -1, pad: PAD }),
  });
  assert.equal(post.status, 503, post.text);
  assert.match(JSON.parse(post.text).Message, /^ErrorCode:ServerBusy;store full/);
  // AMQP: the transfer is rejected with resource-limit-exceeded and the reason.
  const conn = await rheaConnect(hub);
  assert.equal(
    (
      await putToken(
        conn,
        createSasToken(`${hub.hostname}/devices/${DEVICE}`, key, Math.floor(Date.now() / 1000) + 600),
        `${hub.hostname}/devices/${DEVICE}`,
      )
    ).status,
    200,
  );
  const sender = await openSender(conn, `/devices/${DEVICE}/messages/events`);
  const outcome = await sendAndSettle(sender, { body: JSON.stringify({ n: -2, pad: PAD }) });
  conn.close();
  assert.equal(outcome.outcome, 'rejected');
  assert.equal(outcome.condition, 'amqp:resource-limit-exceeded');
  assert.match(outcome.description ?? '', /store full/);
  // Health.
  const h = await health(hub);
  assert.equal(h.status, 503);
  assert.equal(h.body.status, 'store full');

  // ---- restart on the full disk: it starts, takes what the reserve allows, and refuses again ----
  await hub.stop();
  hub = await startHubProcess({ address, dataDir, env });
  await fillAgain(hub, key, 500_000, acked);
  assert.match(hub.output(), /store full: the disk holding/);

  // ---- a disk with no byte left (another program filled it): a clear message, no crash, no temp file ----
  await hub.stop();
  hub = undefined;
  const filler = join(mnt, 'filler');
  try {
    writeFileSync(filler, Buffer.alloc(16 * 1024 * 1024));
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
  }
  const stateBefore = statSync(join(dataDir, 'hub.json')).size;
  const failed = await startHubProcess({ address, dataDir, env }).then(
    (h) => {
      hub = h;
      return '';
    },
    (err: Error) => err.message,
  );
  assert.match(failed, /cannot start the hub: the disk holding .* is full/);
  assert.doesNotMatch(failed, /\n\s+at /, 'no stack trace');
  assert.deepEqual(
    readdirSync(dataDir).filter((f) => f.endsWith('.tmp')),
    [],
    'no temporary file left',
  );
  assert.equal(statSync(join(dataDir, 'hub.json')).size, stateBefore, 'hub.json kept whole');
  assert.ok(
    !existsSync(join(dataDir, 'hub.lock')) || statSync(join(dataDir, 'hub.lock')).size > 0,
    'no empty lock file',
  );
  await rm(filler, { force: true });

  // ---- free space: more room, and the hub takes messages again without a restart ----
  hub = await startHubProcess({ address, dataDir, env });
  await fillAgain(hub, key, 600_000, acked);
  sh('mount', ['-o', 'remount,size=32m', mnt]);
  const deadline = Date.now() + 15_000;
  while ((await health(hub)).body.status !== 'ok') {
    assert.ok(Date.now() < deadline, 'health says ok once space is back');
    await new Promise((r) => setTimeout(r, 200));
  }
  const before = acked.size;
  const second = await (async () => {
    const leaf = await connectMqttLeaf({
      address: hub!.address,
      ca: hub!.caPem,
      hubHostName: hub!.hostname,
      deviceId: DEVICE,
      key,
    });
    for (let i = 0; i < 200; i++) {
      await leaf.publish(Buffer.from(JSON.stringify({ n: 1_000_000 + i, pad: PAD })));
      acked.add(1_000_000 + i);
    }
    await leaf.end();
    return acked.size - before;
  })();
  assert.equal(second, 200, 'new messages accepted after recovery');

  // ---- every acknowledged message, by every reader ----
  const rest = await readAllRest(hub);
  assert.deepEqual(
    missing(acked, rest),
    [],
    `REST /events has every acknowledged message (${rest.size} read, ${acked.size} acknowledged)`,
  );

  const mon = await monitorEvents(hub, rest.size);
  assert.equal(mon.code, 0, mon.stderr);
  assert.deepEqual(
    missing(acked, mon.seen),
    [],
    `monitor-events printed every acknowledged message (${mon.seen.size})`,
  );

  const eh = startEventHubsClient(hub, { connectionString: eventHubsConnectionString(hub.dataDir) });
  t.after(() => eh.stop());
  await eh.must({ op: 'subscribe', sub: 'all', startPosition: { offset: '-1' }, maxBatchSize: 500 });
  const events = await eh.waitForEvents('all', rest.size, 60_000);
  const ehSeen = new Set(events.map((e) => (e.body as { n: number }).n));
  assert.deepEqual(missing(acked, ehSeen), [], `Event Hubs delivered every acknowledged message (${ehSeen.size})`);
});
