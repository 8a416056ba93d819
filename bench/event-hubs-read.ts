/**
 * Read throughput of the Event Hubs compatible endpoint: a backlog of telemetry is written
 * straight into a hub's event stream (through the store, for speed), then one consumer per
 * partition reads its partition from the earliest event to the last, each in its own process.
 *
 *   node --import tsx bench/event-hubs-read.ts [--events 1000000] [--partitions 4] [--size 200]
 *        [--client sdk|rhea] [--batch 1000] [--prefetch 3000]
 *
 * `--client sdk` reads with the official EventHubConsumerClient (subscribe to one partition,
 * `maxBatchSize` = --batch); `--client rhea` with a bare AMQP receiver that keeps --prefetch
 * credit outstanding, which shows what the hub itself can serve. The hub runs as a real
 * `strata hub start` child process on its own loopback address. Prints one JSON line.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { EventStream } from '../src/store/event-stream.ts';
import { eventHubsConnectionString } from '../src/hub/local.ts';
import { startHubProcess } from '../test/helpers/hub.ts';

const { values: args } = parseArgs({
  options: {
    events: { type: 'string', default: '1000000' },
    partitions: { type: 'string', default: '4' },
    size: { type: 'string', default: '200' },
    client: { type: 'string', default: 'sdk' },
    batch: { type: 'string', default: '1000' },
    prefetch: { type: 'string', default: '3000' },
    /** Internal: run as the consumer of one partition (JSON settings). */
    consumer: { type: 'string' },
  },
});

interface ConsumerSettings {
  client: 'sdk' | 'rhea';
  connectionString: string;
  partition: string;
  expected: number;
  batch: number;
  prefetch: number;
  host: string;
  entity: string;
}

interface ConsumerResult {
  partition: string;
  count: number;
  startedAt: number;
  firstAt: number;
  doneAt: number;
  bytes: number;
}

if (args.consumer) {
  await runConsumer(JSON.parse(args.consumer) as ConsumerSettings);
} else {
  await main();
}

async function main(): Promise<void> {
  const EVENTS = Number(args.events);
  const PARTITIONS = Number(args.partitions);
  const SIZE = Number(args.size);
  const dataDir = await mkdtemp(join(tmpdir(), 'strata-eh-bench-'));

  // ---- the backlog: written through the store, as the engine would append device telemetry ----
  const fillStart = Date.now();
  const stream = new EventStream({ dir: dataDir, partitions: PARTITIONS });
  const body = randomBytes(SIZE);
  const devices = Array.from({ length: 1000 }, (_, i) => `bench-device-${i}`);
  const authMethod = JSON.stringify({ scope: 'device', type: 'sas', issuer: 'iothub', acceptingIpFilterRule: null });
  const CHUNK = 20_000;
  for (let done = 0; done < EVENTS; done += CHUNK) {
    const n = Math.min(CHUNK, EVENTS - done);
    await stream.appendAll(
      Array.from({ length: n }, (_, i) => ({
        deviceId: devices[(done + i) % devices.length]!,
        authMethod,
        authGenerationId: '638000000000000000',
        messageSource: 'Telemetry',
        message: {
          body,
          messageId: `m-${done + i}`,
          contentType: 'application/octet-stream',
          properties: { seq: String(done + i) },
        },
      })),
    );
  }
  const expected = Array.from(
    { length: stream.partitionCount() },
    (_, p) => stream.partitionInfo(p).lastSequenceNumber + 1,
  );
  await stream.close();
  const fillMs = Date.now() - fillStart;

  const hub = await startHubProcess({ dataDir });
  let results: ConsumerResult[] = [];
  try {
    const connectionString = eventHubsConnectionString(dataDir);
    const self = fileURLToPath(import.meta.url);
    results = await Promise.all(
      expected.map(
        (count, p) =>
          new Promise<ConsumerResult>((resolve, reject) => {
            const settings: ConsumerSettings = {
              client: args.client === 'rhea' ? 'rhea' : 'sdk',
              connectionString,
              partition: String(p),
              expected: count,
              batch: Number(args.batch),
              prefetch: Number(args.prefetch),
              host: hub.address,
              entity: hub.hostname,
            };
            const child = spawn(process.execPath, ['--import', 'tsx', self, '--consumer', JSON.stringify(settings)], {
              env: { ...process.env, NODE_EXTRA_CA_CERTS: hub.caPath, NODE_NO_WARNINGS: '1' },
              stdio: ['ignore', 'pipe', 'inherit'],
            });
            let result: ConsumerResult | undefined;
            createInterface({ input: child.stdout! }).on('line', (line) => {
              try {
                result = JSON.parse(line) as ConsumerResult;
              } catch {
                /* not ours */
              }
            });
            child.once('exit', (code) =>
              result
                ? resolve(result)
                : reject(new Error(`consumer of partition ${p} exited (${code}) without a result`)),
            );
          }),
      ),
    );
  } finally {
    await hub.stop();
    await rm(dataDir, { recursive: true, force: true });
  }

  const start = Math.min(...results.map((r) => r.startedAt));
  const end = Math.max(...results.map((r) => r.doneAt));
  const total = results.reduce((n, r) => n + r.count, 0);
  const seconds = (end - start) / 1000;
  process.stdout.write(
    `${JSON.stringify({
      bench: 'event-hubs-read',
      client: args.client,
      events: total,
      partitions: results.length,
      bodyBytes: SIZE,
      fillSeconds: +(fillMs / 1000).toFixed(1),
      readSeconds: +seconds.toFixed(2),
      eventsPerSecond: Math.round(total / seconds),
      mbPerSecond: +(results.reduce((n, r) => n + r.bytes, 0) / seconds / 1e6).toFixed(1),
      perPartition: results.map((r) => ({
        partition: r.partition,
        events: r.count,
        firstEventMs: r.firstAt - r.startedAt,
        eventsPerSecond: Math.round(r.count / ((r.doneAt - r.startedAt) / 1000)),
      })),
    })}\n`,
  );
}

async function runConsumer(s: ConsumerSettings): Promise<void> {
  const result: ConsumerResult = {
    partition: s.partition,
    count: 0,
    startedAt: Date.now(),
    firstAt: 0,
    doneAt: 0,
    bytes: 0,
  };
  const seen = (n: number, bytes: number): boolean => {
    if (result.count === 0) result.firstAt = Date.now();
    result.count += n;
    result.bytes += bytes;
    if (result.count < s.expected) return false;
    result.doneAt = Date.now();
    return true;
  };
  if (s.client === 'sdk') {
    const { EventHubConsumerClient, earliestEventPosition } = await import('@azure/event-hubs');
    const client = new EventHubConsumerClient('$Default', s.connectionString);
    result.startedAt = Date.now();
    await new Promise<void>((resolve, reject) => {
      const sub = client.subscribe(
        s.partition,
        {
          processEvents: async (events) => {
            let bytes = 0;
            for (const e of events) bytes += Buffer.isBuffer(e.body) ? e.body.length : 0;
            if (seen(events.length, bytes)) sub.close().then(resolve, reject);
          },
          processError: async (err) => reject(err),
        },
        {
          startPosition: earliestEventPosition,
          maxBatchSize: s.batch,
          maxWaitTimeInSeconds: 5,
          prefetchCount: s.prefetch,
          skipParsingBodyAsJson: true,
        },
      );
    });
    await client.close();
  } else {
    await rheaConsumer(s, result, seen);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

/** A bare AMQP receiver: CBS put-token, then a receiver that keeps `prefetch` credit outstanding. */
async function rheaConsumer(
  s: ConsumerSettings,
  result: ConsumerResult,
  seen: (n: number, bytes: number) => boolean,
): Promise<void> {
  const rhea = (await import('rhea')).default;
  const { parseConnectionString } = await import('../src/identity/connection-string.ts');
  const { createSasToken } = await import('../src/identity/sas.ts');
  const cs = parseConnectionString(s.connectionString);
  const audience = `sb://${s.entity}/${s.entity}`;
  const token = createSasToken(
    audience,
    cs.SharedAccessKey!,
    Math.floor(Date.now() / 1000) + 3600,
    cs.SharedAccessKeyName,
  );
  const conn = rhea
    .create_container()
    .connect({ host: s.host, port: 5671, transport: 'tls', reconnect: false, hostname: s.entity } as never);
  result.startedAt = Date.now();
  await new Promise<void>((resolve, reject) => {
    const cbsOut = conn.open_sender('$cbs');
    const cbsIn = conn.open_receiver('$cbs');
    cbsIn.on('message', (ctx) => {
      const status = Number((ctx.message!.application_properties as Record<string, unknown>)['status-code']);
      if (status !== 200) return reject(new Error(`put-token: ${status}`));
      const address = `${s.entity}/ConsumerGroups/$Default/Partitions/${s.partition}`;
      const r = conn.open_receiver({
        source: {
          address,
          filter: {
            'apache.org:selector-filter:string': rhea.types.wrap_described(
              "amqp.annotation.x-opt-offset > '-1'",
              0x468c00000004,
            ),
          },
        },
        credit_window: 0,
        autoaccept: false,
      });
      r.add_credit(s.prefetch);
      let pending = 0;
      r.on('message', (m) => {
        // Settling frees the session's incoming window (pre-settled deliveries still occupy it until then).
        m.delivery!.accept();
        const b = m.message!.body as { content?: Buffer };
        pending++;
        if (pending >= s.prefetch / 2) {
          r.add_credit(pending);
          pending = 0;
        }
        if (seen(1, b?.content?.length ?? 0)) {
          conn.close();
          resolve();
        }
      });
      r.on('receiver_error', (ctx) => reject(new Error(String(ctx.receiver?.error?.description))));
    });
    cbsOut.on('sendable', () => {
      if ((cbsOut as unknown as { sent?: boolean }).sent) return;
      (cbsOut as unknown as { sent?: boolean }).sent = true;
      cbsOut.send({
        message_id: 'put-1',
        reply_to: '$cbs',
        application_properties: { operation: 'put-token', type: 'servicebus.windows.net:sastoken', name: audience },
        body: token,
      });
    });
    conn.on('connection_error', (ctx) => reject(new Error(String(ctx.connection?.error?.description))));
  });
}
