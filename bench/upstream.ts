/**
 * Batch throughput of a gateway's upstream link: a backlog of stored telemetry from many leaves
 * drains through one AMQP connection (on behalf of each leaf) into a real hub, as after an
 * outage. Every message counts only once the hub has it durably (AMQP accepted).
 *
 *   node --import tsx bench/upstream.ts [--leaves 100] [--messages 20000] [--size 256] [--batch 500] [--transport amqp|amqpws]
 *
 * Prints one JSON line: msgs/s of the drain and the batch time percentiles.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MessageStore, type QueuedMessage } from '../src/store/message-store.ts';
import { EndpointPump, type DeliveryEndpoint } from '../src/routing/pump.ts';
import { AmqpParentLink } from '../src/upstream/index.ts';
import { storedMessageOf } from '../src/store/sender-message.ts';
import { ServiceClient } from '../src/hub/service-client.ts';
import { startHubProcess } from '../test/helpers/hub.ts';

const { values: args } = parseArgs({
  options: {
    leaves: { type: 'string', default: '100' },
    messages: { type: 'string', default: '20000' },
    size: { type: 'string', default: '256' },
    batch: { type: 'string', default: '500' },
    transport: { type: 'string', default: 'amqp' },
  },
});
const LEAVES = Number(args.leaves);
const MESSAGES = Number(args.messages);
const SIZE = Number(args.size);
const BATCH = Number(args.batch);
const TRANSPORT = args.transport === 'amqpws' ? 'amqpws' : 'amqp';

const key = () => randomBytes(32).toString('base64');

const hub = await startHubProcess();
const dir = await mkdtemp(join(tmpdir(), 'strata-bench-upstream-'));
try {
  const svc = new ServiceClient(hub.connectionString, { ca: hub.caPem });
  const edgeKey = key();
  const edge = await svc.createDevice({
    deviceId: 'bench-edge',
    capabilities: { iotEdge: true },
    authentication: { type: 'sas', symmetricKey: { primaryKey: edgeKey, secondaryKey: key() } },
  } as never);
  const leaves = Array.from({ length: LEAVES }, (_, i) => `leaf-${i}`);
  await svc.request('POST', '/devices', {
    body: leaves.map((id) => ({
      id,
      importMode: 'create',
      deviceScope: edge.deviceScope,
      authentication: { type: 'sas', symmetricKey: { primaryKey: key(), secondaryKey: key() } },
    })),
  });

  const store = MessageStore.open({ path: join(dir, 'store.db') });
  const body = randomBytes(SIZE);
  const target = [{ endpoint: '$upstream', priority: 0, ttlSecs: 0 }];
  const appends: Array<Promise<void>> = [];
  for (let i = 0; i < MESSAGES; i++) {
    const sender = leaves[i % LEAVES]!;
    appends.push(
      store.append({
        message: storedMessageOf(
          { identity: { deviceId: sender }, kind: 'sas', authMethod: '{}' },
          { body, messageId: String(i), properties: { n: String(i) } },
        ),
        targets: target,
      }),
    );
  }
  await Promise.all(appends);

  const link = new AmqpParentLink({
    parentHost: hub.hostname,
    transport: TRANSPORT,
    trustPem: hub.caPem,
    hubHostName: hub.hostname,
    edgeDeviceId: 'bench-edge',
    edgeKey,
    maxBatch: BATCH,
  });
  await link.start();
  // Time each batch the pump hands over.
  const inner = link.telemetryEndpoint();
  const batchMs: number[] = [];
  const timed: DeliveryEndpoint = {
    name: inner.name,
    maxBatch: inner.maxBatch,
    maxInFlight: inner.maxInFlight,
    isAvailable: () => inner.isAvailable!(),
    onAvailable: (l) => inner.onAvailable!(l),
    send: async (batch: readonly QueuedMessage[]) => {
      const t = performance.now();
      await inner.send(batch);
      batchMs.push(performance.now() - t);
    },
  };
  const pump = new EndpointPump(store, timed);
  const started = performance.now();
  pump.start();
  while (store.queueLength('$upstream') > 0 || pump.metrics().sent < MESSAGES) {
    if (pump.metrics().consecutiveFailures > 3) throw new Error(`drain failing: ${pump.metrics().lastError}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const seconds = (performance.now() - started) / 1000;
  await pump.stop();
  await link.close();
  store.close();
  svc.close();
  batchMs.sort((a, b) => a - b);
  const pct = (p: number) =>
    Math.round(batchMs[Math.min(batchMs.length - 1, Math.floor(p * batchMs.length))]! * 10) / 10;
  console.log(
    JSON.stringify({
      bench: 'upstream-drain',
      transport: TRANSPORT,
      leaves: LEAVES,
      messages: MESSAGES,
      size: SIZE,
      maxBatch: BATCH,
      seconds: Math.round(seconds * 100) / 100,
      msgsPerSec: Math.round(MESSAGES / seconds),
      batches: batchMs.length,
      batchMsP50: pct(0.5),
      batchMsP99: pct(0.99),
    }),
  );
} finally {
  await hub.stop();
  await rm(dir, { recursive: true, force: true });
}
