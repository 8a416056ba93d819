import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import rhea, { type Connection, type Receiver } from 'rhea';
import deviceSdk from 'azure-iot-device';
import mqttSdk from 'azure-iot-device-mqtt';
import type { HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { createSasToken } from '../../src/identity/sas.ts';
import { parseConnectionString } from '../../src/identity/connection-string.ts';
import { partitionOf } from '../../src/store/event-stream.ts';
import { createSasDevice, deviceToken, newKey, serviceClient } from '../fixtures/service-messaging-helpers.ts';
import { openReceiver, openSender, putToken, rheaConnect, waitFor } from '../fixtures/amqp-helpers.ts';
import { STRATA_BIN, startEventHubsClient, startHubWithFlags, type EhClient } from '../fixtures/event-hubs-helpers.ts';

/**
 * Who may read the Event Hubs compatible endpoint and what it refuses: wrong keys, device
 * tokens and policies without ServiceConnect are unauthorized for the official client; unknown
 * consumer groups and partitions are not found; `strata hub start --partitions`, `strata hub
 * connection-string --event-hubs` and `strata hub consumer-group`; and, with a raw AMQP client,
 * link credit, start filters and owner levels.
 */

const { Client, Message } = deviceSdk;

let hub: HubProcess;
let svc: ServiceClient;
let ownerCs: string;
const clients: EhClient[] = [];
const conns: Connection[] = [];
let device: { close(): Promise<unknown>; sendEvent(m: InstanceType<typeof Message>): Promise<unknown> } | undefined;
const DEVICE = 'eh-access-dev';
const AMQP_PORT = 5673;

function strata(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [STRATA_BIN, ...args],
      { env: { ...process.env, STRATA_LOG_LEVEL: 'warn' } },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

before(async () => {
  // Not the clients' default AMQP port: the connection string then names it (event-hubs.test.ts covers 5671).
  hub = await startHubWithFlags(['--partitions', '2', '--amqp-port', String(AMQP_PORT)], {
    STRATA_LOG_LEVEL: process.env.HUB_LOG ?? 'warn',
  });
  svc = serviceClient(hub);
  const cs = await strata('hub', 'connection-string', '--event-hubs', '--data', hub.dataDir);
  assert.equal(cs.code, 0, cs.stderr);
  ownerCs = cs.stdout.trim();
  // Ten events from one device: its partition has a backlog for the raw-AMQP tests.
  const made = await createSasDevice(svc, hub, DEVICE);
  const client = Client.fromConnectionString(made.cs, mqttSdk.Mqtt);
  device = client as never;
  await client.setOptions({ ca: hub.caPem });
  await client.open();
  for (let i = 0; i < 10; i++) await client.sendEvent(new Message(`event ${i}`));
});

after(async () => {
  for (const c of conns) c.close();
  await device?.close().catch(() => undefined);
  await Promise.all(clients.map((c) => c.stop().catch(() => undefined)));
  svc?.close();
  if (process.env.HUB_LOG) console.log(hub?.output());
  await hub?.stop();
});

function reader(connectionString: string, opts: { consumerGroup?: string } = {}): EhClient {
  const c = startEventHubsClient(hub, { connectionString, maxRetries: 0, timeoutInMs: 8000, ...opts });
  clients.push(c);
  return c;
}

const partitionOfDevice = () => String(partitionOf(DEVICE, 2));

test('connection-string --event-hubs names the endpoint (with its port), the key and the entity; --partitions fixed the partitions', async () => {
  const owner = parseConnectionString(hub.connectionString);
  assert.equal(
    ownerCs,
    `Endpoint=sb://${hub.hostname}:${AMQP_PORT}/;SharedAccessKeyName=iothubowner;SharedAccessKey=${owner.SharedAccessKey};EntityPath=${hub.hostname}`,
  );
  const service = await strata(
    'hub',
    'connection-string',
    '--event-hubs',
    '--policy',
    'service',
    '--data',
    hub.dataDir,
  );
  assert.match(
    service.stdout.trim(),
    new RegExp(
      `^Endpoint=sb://${hub.hostname.replace(/\./g, '\\.')}:${AMQP_PORT}/;SharedAccessKeyName=service;SharedAccessKey=[^;]+;EntityPath=`,
    ),
  );
  assert.match(
    hub.output(),
    new RegExp(`Event Hubs endpoint\\s+sb://\\S+:${AMQP_PORT}/ EntityPath=\\S+ \\(2 partitions`),
  );

  const c = reader(service.stdout.trim());
  const props = await c.must<{ partitionIds: string[] }>({ op: 'props' });
  assert.deepEqual(props.partitionIds, ['0', '1']);
});

test('a wrong key is refused as unauthorized', async () => {
  const wrong = ownerCs.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${newKey()}`);
  const c = reader(wrong);
  const a = await c.call({ op: 'props' });
  assert.equal(a.ok, false);
  assert.equal(a.error?.code, 'UnauthorizedError', JSON.stringify(a.error));
  await c.must({ op: 'subscribe', sub: 's', partitionId: partitionOfDevice(), startPosition: { offset: '-1' } });
  assert.equal((await c.waitForError('s')).code, 'UnauthorizedError');
  assert.equal(c.events('s').length, 0);
});

test("a device's key or token is refused as unauthorized", async () => {
  const { key } = await createSasDevice(svc, hub, 'eh-access-other');
  // The device key in place of a policy key: the signature does not match.
  const withDeviceKey = ownerCs.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${key}`);
  const a = await reader(withDeviceKey).call({ op: 'props' });
  assert.equal(a.error?.code, 'UnauthorizedError', JSON.stringify(a.error));

  // A valid device token: CBS takes it, but it does not let anyone read the endpoint.
  const token = deviceToken(hub, key, 'eh-access-other');
  const withDeviceToken = `Endpoint=sb://${hub.hostname}:${AMQP_PORT}/;SharedAccessSignature=${token};EntityPath=${hub.hostname}`;
  const c = reader(withDeviceToken);
  const b = await c.call({ op: 'props' });
  assert.equal(b.error?.code, 'UnauthorizedError', JSON.stringify(b.error));
  await c.must({ op: 'subscribe', sub: 's', partitionId: partitionOfDevice(), startPosition: { offset: '-1' } });
  assert.equal((await c.waitForError('s')).code, 'UnauthorizedError');
  assert.equal(c.events('s').length, 0);
});

test('a policy without ServiceConnect is refused as unauthorized', async () => {
  const deviceCs = (
    await strata('hub', 'connection-string', '--event-hubs', '--policy', 'device', '--data', hub.dataDir)
  ).stdout.trim();
  const c = reader(deviceCs);
  const a = await c.call({ op: 'props' });
  assert.equal(a.error?.code, 'UnauthorizedError', JSON.stringify(a.error));
  await c.must({ op: 'subscribe', sub: 's', partitionId: partitionOfDevice(), startPosition: { offset: '-1' } });
  assert.equal((await c.waitForError('s')).code, 'UnauthorizedError');
  assert.equal(c.events('s').length, 0);
});

test('consumer groups: unknown is not found; after `consumer-group add` it reads; list and remove', async () => {
  const before = reader(ownerCs, { consumerGroup: 'analytics' });
  await before.must({ op: 'subscribe', sub: 's', startPosition: { offset: '-1' } });
  const err = await before.waitForError('s');
  assert.equal(err.code, 'MessagingEntityNotFoundError', JSON.stringify(err));
  assert.match(err.message, /consumer group 'analytics'/);

  const add = await strata('hub', 'consumer-group', 'add', 'analytics', '--data', hub.dataDir);
  assert.equal(add.code, 0, add.stderr);
  const c = reader(ownerCs, { consumerGroup: 'analytics' });
  await c.must({ op: 'subscribe', sub: 's', startPosition: { offset: '-1' } });
  const got = await c.waitForEvents('s', 10);
  const text = (body: unknown) => Buffer.from((body as { base64: string }).base64, 'base64').toString();
  assert.deepEqual(
    got.map((e) => text(e.body)),
    [...Array(10).keys()].map((i) => `event ${i}`),
  );

  const [list, dup, bad, removeDefault] = await Promise.all([
    strata('hub', 'consumer-group', 'list', '--json', '--data', hub.dataDir),
    strata('hub', 'consumer-group', 'add', 'Analytics', '--data', hub.dataDir),
    strata('hub', 'consumer-group', 'add', 'no spaces!', '--data', hub.dataDir),
    strata('hub', 'consumer-group', 'remove', '$Default', '--data', hub.dataDir),
  ]);
  assert.deepEqual(
    (JSON.parse(list.stdout) as Array<{ name: string }>).map((g) => g.name),
    ['$Default', 'analytics'],
  );
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, /consumer group "analytics" already exists/);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /not valid/);
  assert.equal(removeDefault.code, 1);
  assert.match(removeDefault.stderr, /cannot be removed/);
  assert.equal((await strata('hub', 'consumer-group', 'remove', 'analytics', '--data', hub.dataDir)).code, 0);
  const gone = await strata('hub', 'consumer-group', 'remove', 'analytics', '--data', hub.dataDir);
  assert.match(gone.stderr, /no consumer group "analytics"/);
});

// ---- a raw AMQP client, for what the SDK does not let a test control ----

async function authorizedConnection(): Promise<Connection> {
  const conn = await rheaConnect(hub, { port: AMQP_PORT });
  conns.push(conn);
  const owner = parseConnectionString(hub.connectionString);
  const audience = `sb://${hub.hostname}/${hub.hostname}`;
  const token = createSasToken(audience, owner.SharedAccessKey!, Math.floor(Date.now() / 1000) + 600, 'iothubowner');
  const r = await putToken(conn, token, audience);
  assert.equal(r.status, 200, r.description);
  return conn;
}

function partitionAddress(partition: string, group = '$Default'): string {
  return `${hub.hostname}/ConsumerGroups/${group}/Partitions/${partition}`;
}

function selector(expression: string) {
  return { 'apache.org:selector-filter:string': rhea.types.wrap_described(expression, 0x468c00000004) };
}

async function refusal(p: Promise<unknown>): Promise<{ condition?: string; message: string }> {
  try {
    await p;
  } catch (err) {
    return err as { condition?: string; message: string };
  }
  throw new Error('the link was accepted');
}

/** Collects what a receiver gets; credit is ours to give. */
function collect(r: Receiver): Array<{ seq: number; body: string; message: rhea.Message; settled: boolean }> {
  const got: Array<{ seq: number; body: string; message: rhea.Message; settled: boolean }> = [];
  r.on('message', (ctx) => {
    const m = ctx.message!;
    const ann = m.message_annotations as Record<string, unknown>;
    const body = m.body as { content?: Buffer } | Buffer;
    const settled = Boolean((ctx.delivery as unknown as { remote_settled?: boolean }).remote_settled);
    got.push({
      seq: Number(ann['x-opt-sequence-number']),
      body: Buffer.from(Buffer.isBuffer(body) ? body : body.content!).toString(),
      message: m,
      settled,
    });
  });
  return got;
}

/** For what must NOT happen: a moment for a wrong delivery to show up. */
const settle = (ms = 200) => new Promise((r) => setTimeout(r, ms));

test('raw AMQP: no more deliveries than credit, and more when credit is added', async () => {
  const conn = await authorizedConnection();
  const r = await openReceiver(conn, partitionAddress(partitionOfDevice()), {
    credit_window: 0,
    autoaccept: true,
    source: { address: partitionAddress(partitionOfDevice()), filter: selector("amqp.annotation.x-opt-offset > '-1'") },
  });
  const got = collect(r);
  await settle();
  assert.equal(got.length, 0, 'nothing without credit');
  r.add_credit(3);
  await waitFor('3 events', () => got.length >= 3);
  await settle();
  assert.deepEqual(
    got.map((g) => g.seq),
    [0, 1, 2],
    'no more than the credit',
  );
  r.add_credit(4);
  await waitFor('7 events', () => got.length >= 7);
  await settle();
  assert.deepEqual(
    got.map((g) => g.seq),
    [0, 1, 2, 3, 4, 5, 6],
  );
  assert.equal(got[6]!.body, 'event 6');
  // The annotations with the AMQP types IoT Hub uses; deliveries come settled (nothing to settle when reading).
  const ann = got[6]!.message.message_annotations as Record<string, unknown>;
  assert.equal(ann['x-opt-sequence-number'], 6);
  assert.equal(typeof ann['x-opt-offset'], 'string');
  assert.ok(ann['x-opt-enqueued-time'] instanceof Date);
  assert.deepEqual(ann['iothub-enqueuedtime'], ann['x-opt-enqueued-time']);
  assert.equal(ann['iothub-connection-device-id'], DEVICE);
  assert.equal(ann['iothub-message-source'], 'Telemetry');
  assert.equal(JSON.parse(String(ann['iothub-connection-auth-method'])).type, 'sas');
  assert.equal(typeof ann['iothub-connection-auth-generation-id'], 'string');
  assert.ok(got.every((g) => g.settled));
});

test('raw AMQP: start filters by sequence number (inclusive and exclusive), offset and time', async () => {
  const conn = await authorizedConnection();
  const p = partitionOfDevice();
  // What a receiver with this filter gets: wait for `expect` events, then a moment for any extra.
  const from = async (expression: string, expect: number): Promise<number[]> => {
    const r = await openReceiver(conn, partitionAddress(p), {
      credit_window: 0,
      source: { address: partitionAddress(p), filter: selector(expression) },
    });
    const got = collect(r);
    r.add_credit(100);
    await waitFor(`${expect} events for ${expression}`, () => got.length >= expect);
    await settle(150);
    r.close();
    return got.map((g) => g.seq);
  };
  assert.deepEqual(await from("amqp.annotation.x-opt-sequence-number >= '7'", 3), [7, 8, 9]);
  assert.deepEqual(await from("amqp.annotation.x-opt-sequence-number > '7'", 2), [8, 9]);
  assert.deepEqual(await from("amqp.annotation.x-opt-offset > '@latest'", 0), []);
  assert.deepEqual(await from(`amqp.annotation.x-opt-enqueued-time > '${Date.now() + 60_000}'`, 0), []);
  assert.deepEqual(await from("amqp.annotation.x-opt-enqueued-time >= '0'", 10), [...Array(10).keys()]);
  // An offset names the event at that byte position: from the offset of event 4, inclusive and not.
  const all = await openReceiver(conn, partitionAddress(p), {
    credit_window: 0,
    source: { address: partitionAddress(p), filter: selector("amqp.annotation.x-opt-offset > '-1'") },
  });
  const events = collect(all);
  all.add_credit(10);
  await waitFor('10 events', () => events.length >= 10);
  all.close();
  const offset4 = String((events[4]!.message.message_annotations as Record<string, unknown>)['x-opt-offset']);
  assert.deepEqual(await from(`amqp.annotation.x-opt-offset >= '${offset4}'`, 6), [4, 5, 6, 7, 8, 9]);
  assert.deepEqual(await from(`amqp.annotation.x-opt-offset > '${offset4}'`, 5), [5, 6, 7, 8, 9]);

  const bad = await refusal(
    openReceiver(conn, partitionAddress(p), {
      source: { address: partitionAddress(p), filter: selector('amqp.annotation.x-opt-color = red') },
    }),
  );
  assert.equal(bad.condition, 'com.microsoft:argument-error');
  assert.match(bad.message, /unsupported start filter/);
});

test('raw AMQP: unknown partition or entity is not found, sending is not allowed, no token is unauthorized', async () => {
  const conn = await authorizedConnection();
  const partition = await refusal(openReceiver(conn, partitionAddress('7')));
  assert.equal(partition.condition, 'amqp:not-found');
  assert.match(partition.message, /partition '7' does not exist.*partitions 0 to 1/);
  const entity = await refusal(openReceiver(conn, 'otherhub/ConsumerGroups/$Default/Partitions/0'));
  assert.equal(entity.condition, 'amqp:not-found');
  assert.match(entity.message, /could not be found/);
  const send = await refusal(openSender(conn, hub.hostname));
  assert.equal(send.condition, 'amqp:not-allowed');

  const anonymous = await rheaConnect(hub, { port: AMQP_PORT });
  conns.push(anonymous);
  const noToken = await refusal(openReceiver(anonymous, partitionAddress('0')));
  assert.equal(noToken.condition, 'amqp:unauthorized-access');
});

test('raw AMQP: a higher owner level takes the partition, a lower one is refused', async () => {
  const conn = await authorizedConnection();
  const p = partitionOfDevice();
  const epoch = (n: number) => ({ properties: { 'com.microsoft:epoch': rhea.types.wrap_long(n) } });
  const shared = await openReceiver(conn, partitionAddress(p));
  const sharedGone = new Promise<string | undefined>((resolve) =>
    shared.once('receiver_close', (ctx) => resolve(ctx.receiver?.error?.condition)),
  );
  const one = await openReceiver(conn, partitionAddress(p), epoch(1));
  assert.equal(await sharedGone, 'amqp:link:stolen', 'an owner level takes it from readers without one');

  const lower = await refusal(openReceiver(conn, partitionAddress(p), epoch(0)));
  assert.equal(lower.condition, 'amqp:link:stolen');
  assert.match(lower.message, /higher owner level 1/);
  const none = await refusal(openReceiver(conn, partitionAddress(p)));
  assert.equal(none.condition, 'amqp:link:stolen');

  const oneGone = new Promise<string | undefined>((resolve) =>
    one.once('receiver_close', (ctx) => resolve(ctx.receiver?.error?.condition)),
  );
  const two = await openReceiver(conn, partitionAddress(p), epoch(2));
  assert.equal(await oneGone, 'amqp:link:stolen');
  // Give the partition back, so that later readers without an owner level may read it.
  await new Promise((resolve) => {
    two.once('receiver_close', resolve);
    two.close();
  });
});

test('raw AMQP: a receiver from @latest gets only what is sent after it attached', async () => {
  const conn = await authorizedConnection();
  const p = partitionOfDevice();
  const r = await openReceiver(conn, partitionAddress(p), {
    credit_window: 0,
    source: { address: partitionAddress(p), filter: selector("amqp.annotation.x-opt-offset > '@latest'") },
  });
  const got = collect(r);
  r.add_credit(10);
  await settle();
  assert.equal(got.length, 0, 'the backlog is not sent');
  await device!.sendEvent(new Message('event 10'));
  await waitFor('the new event', () => got.length >= 1);
  await settle();
  assert.deepEqual(
    got.map((g) => [g.seq, g.body]),
    [[10, 'event 10']],
  );
});
