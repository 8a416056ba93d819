import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import deviceSdk from 'azure-iot-device';
import mqttSdk from 'azure-iot-device-mqtt';
import amqpSdk from 'azure-iot-device-amqp';
import { startHubProcess, type HubProcess } from '../helpers/hub.ts';
import type { ServiceClient } from '../../src/hub/service-client.ts';
import { eventHubsConnectionString } from '../../src/hub/local.ts';
import { createSasDevice, serviceClient } from '../fixtures/service-messaging-helpers.ts';
import {
  byPartition,
  eventKey,
  startEventHubsClient,
  type EhClient,
  type EhEvent,
} from '../fixtures/event-hubs-helpers.ts';

/**
 * The official @azure/event-hubs EventHubConsumerClient against a real hub process: the entity
 * and partition properties, telemetry from azure-iot-device clients over MQTT and AMQP with the
 * annotations IoT Hub readers rely on, order per device, start by enqueued time, resuming from
 * a checkpoint (sequence number and offset), and the same over AMQP WebSockets.
 */

const { Client, ModuleClient, Message } = deviceSdk;
type Sender = { sendEvent(m: InstanceType<typeof Message>): Promise<unknown>; close(): Promise<unknown> };

let hub: HubProcess;
let svc: ServiceClient;
let ehcs: string;
const clients: EhClient[] = [];
const devices: Sender[] = [];

before(async () => {
  hub = await startHubProcess({ env: { STRATA_LOG_LEVEL: process.env.HUB_LOG ?? 'warn' } });
  svc = serviceClient(hub);
  ehcs = eventHubsConnectionString(hub.dataDir);
});

after(async () => {
  for (const d of devices) await d.close().catch(() => undefined);
  await Promise.all(clients.map((c) => c.stop().catch(() => undefined)));
  svc?.close();
  if (process.env.HUB_LOG) console.log(hub?.output());
  await hub?.stop();
});

function reader(opts: { webSockets?: boolean } = {}): EhClient {
  const c = startEventHubsClient(hub, { connectionString: ehcs, ...opts });
  clients.push(c);
  return c;
}

interface Device {
  id: string;
  moduleId?: string;
  transport: 'Mqtt' | 'Amqp';
  client: Sender;
}

async function connectDevice(id: string, transport: 'Mqtt' | 'Amqp', moduleId?: string): Promise<Device> {
  const made = await createSasDevice(svc, hub, id, moduleId === undefined ? {} : { moduleId });
  const ctor = transport === 'Mqtt' ? mqttSdk.Mqtt : amqpSdk.Amqp;
  const client = (moduleId === undefined
    ? Client.fromConnectionString(made.cs, ctor)
    : ModuleClient.fromConnectionString(made.moduleCs!, ctor)) as unknown as Sender & {
    setOptions(o: unknown): Promise<unknown>;
    open(): Promise<unknown>;
  };
  devices.push(client);
  await client.setOptions({ ca: hub.caPem });
  await client.open();
  return { id, moduleId, transport, client };
}

/** Sends `count` messages from each device, one after the other per device, all devices at once. */
async function sendFrom(list: Device[], count: number, phase: string): Promise<void> {
  await Promise.all(
    list.map(async (d) => {
      for (let i = 0; i < count; i++) {
        const m = new Message(JSON.stringify({ device: d.id, phase, i }));
        m.messageId = `${d.id}${d.moduleId ? `/${d.moduleId}` : ''}-${phase}-${i}`;
        m.correlationId = `corr-${phase}`;
        m.contentType = 'application/json';
        m.contentEncoding = 'utf-8';
        m.properties.add('phase', phase);
        m.properties.add('i', String(i));
        await d.client.sendEvent(m);
      }
    }),
  );
}

const idOf = (e: EhEvent) => e.systemProperties['iothub-connection-device-id'] as string;
const bodyOf = (e: EhEvent) => e.body as { device: string; phase: string; i: number };

let fleet: Device[] = [];
let live: EhClient;
const PHASE1 = 12;

test('an empty hub: the entity has 4 partitions and partition 0 is empty', async () => {
  const c = reader();
  const props = await c.must<{ name: string; partitionIds: string[]; createdOn: string }>({ op: 'props' });
  // A hub addressed by an IP literal is its own entity name.
  assert.equal(props.name, hub.hostname);
  assert.deepEqual(props.partitionIds, ['0', '1', '2', '3']);
  assert.ok(Math.abs(Date.parse(props.createdOn) - Date.now()) < 5 * 60_000, `createdOn ${props.createdOn}`);
  const p0 = await c.must<Record<string, unknown>>({ op: 'partitionProps', partitionId: '0' });
  assert.equal(p0.isEmpty, true);
  assert.equal(p0.partitionId, '0');
  assert.equal(p0.eventHubName, hub.hostname);
  assert.equal(p0.lastEnqueuedSequenceNumber, -1);
});

test('telemetry over MQTT and AMQP arrives with its properties and the IoT Hub annotations, in order per device', async () => {
  fleet = await Promise.all([
    connectDevice('eh-mqtt-a', 'Mqtt'),
    connectDevice('eh-mqtt-b', 'Mqtt'),
    connectDevice('eh-mqtt-c', 'Mqtt'),
    connectDevice('eh-amqp-a', 'Amqp'),
    connectDevice('eh-amqp-b', 'Amqp'),
    connectDevice('eh-amqp-c', 'Amqp'),
    connectDevice('eh-mod-dev', 'Mqtt', 'filter'),
  ]);
  // Subscribed before anything is sent: these events reach it as they are appended.
  live = reader();
  await live.must({ op: 'subscribe', sub: 'live', startPosition: { offset: '-1' }, maxBatchSize: 50 });
  await sendFrom(fleet, PHASE1, 'p1');
  const events = await live.waitForEvents('live', fleet.length * PHASE1);

  const mqtt = events.find((e) => idOf(e) === 'eh-mqtt-a' && bodyOf(e).i === 3)!;
  assert.ok(mqtt, 'an event of eh-mqtt-a');
  assert.deepEqual(mqtt.body, { device: 'eh-mqtt-a', phase: 'p1', i: 3 });
  assert.equal(mqtt.messageId, 'eh-mqtt-a-p1-3');
  assert.equal(mqtt.correlationId, 'corr-p1');
  assert.equal(mqtt.contentType, 'application/json');
  assert.deepEqual(mqtt.properties, { phase: 'p1', i: '3' });
  const sys = mqtt.systemProperties;
  assert.equal(sys['iothub-connection-device-id'], 'eh-mqtt-a');
  assert.equal(sys['iothub-message-source'], 'Telemetry');
  assert.equal(sys.contentEncoding, 'utf-8');
  assert.match(String(sys['iothub-connection-auth-generation-id']), /\S/);
  assert.deepEqual(JSON.parse(String(sys['iothub-connection-auth-method'])).type, 'sas');
  // iothub-enqueuedtime is the same instant as the Event Hubs enqueued time.
  assert.equal(sys['iothub-enqueuedtime'], Date.parse(mqtt.enqueuedTimeUtc));
  assert.equal(typeof mqtt.sequenceNumber, 'number');
  assert.match(mqtt.offset, /^\d+$/);
  assert.equal(sys['iothub-connection-module-id'], undefined);

  const amqp = events.find((e) => idOf(e) === 'eh-amqp-b')!;
  assert.equal(amqp.systemProperties['iothub-message-source'], 'Telemetry');
  assert.equal(amqp.correlationId, 'corr-p1');
  assert.deepEqual(amqp.properties, { phase: 'p1', i: '0' });

  const mod = events.find((e) => idOf(e) === 'eh-mod-dev')!;
  assert.equal(mod.systemProperties['iothub-connection-module-id'], 'filter');

  // Each device lands in one partition, its events in the order sent, sequence numbers rising.
  const partitionsUsed = new Set<string>();
  for (const d of fleet) {
    const mine = events.filter((e) => idOf(e) === d.id);
    assert.equal(mine.length, PHASE1, `${d.id}: ${mine.length} events`);
    assert.equal(new Set(mine.map((e) => e.partitionId)).size, 1, `${d.id} stays in one partition`);
    partitionsUsed.add(mine[0]!.partitionId);
    assert.deepEqual(
      mine.map((e) => bodyOf(e).i),
      [...Array(PHASE1).keys()],
      `${d.id} in order`,
    );
    for (let i = 1; i < mine.length; i++) assert.ok(mine[i]!.sequenceNumber > mine[i - 1]!.sequenceNumber);
  }
  assert.ok(partitionsUsed.size > 1, 'the devices spread over several partitions');
  // Within a partition: sequence numbers 0, 1, 2 ... without gaps, offsets rising.
  for (const [p, list] of byPartition(events)) {
    assert.deepEqual(
      list.map((e) => e.sequenceNumber),
      [...Array(list.length).keys()],
      `partition ${p}`,
    );
    for (let i = 1; i < list.length; i++) assert.ok(Number(list[i]!.offset) > Number(list[i - 1]!.offset));
  }
});

test('partition properties report the first and last enqueued event', async () => {
  const events = live.events('live');
  const c = reader();
  for (const [p, list] of byPartition(events)) {
    const props = await c.must<Record<string, unknown>>({ op: 'partitionProps', partitionId: p });
    const last = list[list.length - 1]!;
    assert.equal(props.isEmpty, false);
    assert.equal(props.beginningSequenceNumber, 0);
    assert.equal(props.lastEnqueuedSequenceNumber, last.sequenceNumber);
    assert.equal(props.lastEnqueuedOffset, last.offset);
    assert.equal(props.lastEnqueuedOnUtc, last.enqueuedTimeUtc);
  }
});

test('subscribe from an enqueued time sees exactly what was enqueued after it', async () => {
  const since = new Date();
  await new Promise((r) => setTimeout(r, 5));
  const some = fleet.slice(0, 4);
  await sendFrom(some, 3, 'p2');
  const c = reader();
  await c.must({ op: 'subscribe', sub: 'since', startPosition: { enqueuedOn: since.getTime() } });
  const got = await c.waitForEvents('since', some.length * 3);
  await live.waitForEvents('live', fleet.length * PHASE1 + some.length * 3);
  await new Promise((r) => setTimeout(r, 300));
  const expected = live.events('live').filter((e) => Date.parse(e.enqueuedTimeUtc) > since.getTime());
  assert.deepEqual(got.map(eventKey).sort(), expected.map(eventKey).sort());
  assert.ok(
    got.every((e) => bodyOf(e).phase === 'p2'),
    'only events sent after the time',
  );
  // Event Hubs lets 5 receivers without an owner level read a partition of a consumer group at once.
  await c.stop();
});

test('a reader that resumes from a checkpoint sees nothing twice and misses nothing', async () => {
  const total = () => live.events('live').length;
  const before = total();
  const first = reader();
  await first.must({ op: 'subscribe', sub: 'first', startPosition: { offset: '-1' }, maxBatchSize: 7 });
  await first.waitForEvents('first', before);
  // The checkpoint: half-way through each partition, as if the reader had processed that far.
  const bySeq: Record<string, { sequenceNumber: number; isInclusive: false }> = {};
  const byOffset: Record<string, { offset: string }> = {};
  const cut = new Map<string, number>();
  for (const [p, list] of byPartition(first.events('first'))) {
    const at = list[Math.floor(list.length / 2)]!;
    bySeq[p] = { sequenceNumber: at.sequenceNumber, isInclusive: false };
    byOffset[p] = { offset: at.offset };
    cut.set(p, at.sequenceNumber);
  }
  await first.stop();

  // More telemetry while nobody reads.
  await sendFrom(fleet, 4, 'p3');
  await live.waitForEvents('live', before + fleet.length * 4);
  const expected = live
    .events('live')
    .filter((e) => e.sequenceNumber > (cut.get(e.partitionId) ?? -1))
    .map(eventKey)
    .sort();

  const bySeqReader = reader();
  const byOffsetReader = reader();
  await bySeqReader.must({ op: 'subscribe', sub: 'seq', startPosition: bySeq });
  await byOffsetReader.must({ op: 'subscribe', sub: 'off', startPosition: byOffset });
  const got = await bySeqReader.waitForEvents('seq', expected.length);
  const gotByOffset = await byOffsetReader.waitForEvents('off', expected.length);
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(got.map(eventKey).sort(), expected, 'from sequence numbers');
  assert.deepEqual(gotByOffset.map(eventKey).sort(), expected, 'from offsets');
  assert.equal(new Set(got.map(eventKey)).size, got.length, 'no duplicates');
  await Promise.all([bySeqReader.stop(), byOffsetReader.stop()]);
});

test('over AMQP WebSockets the same reader gets the same events, with the last-enqueued figures it asked for', async () => {
  const c = reader({ webSockets: true });
  const props = await c.must<{ partitionIds: string[] }>({ op: 'props' });
  assert.deepEqual(props.partitionIds, ['0', '1', '2', '3']);
  await c.must({
    op: 'subscribe',
    sub: 'ws',
    startPosition: { offset: '-1' },
    maxBatchSize: 100,
    trackLastEnqueuedEventProperties: true,
  });
  const want = live.events('live').map(eventKey).sort();
  const got = await c.waitForEvents('ws', want.length);
  assert.deepEqual(got.map(eventKey).sort(), want);
  for (const [p, list] of byPartition(live.events('live'))) {
    const last = list[list.length - 1]!;
    const metrics = c.lastEnqueued('ws', p);
    assert.equal(metrics?.sequenceNumber, last.sequenceNumber, `partition ${p}: ${JSON.stringify(metrics)}`);
    assert.equal(metrics?.offset, last.offset);
    assert.equal(metrics?.enqueuedOn, last.enqueuedTimeUtc);
  }
});
